//! Encryption of secrets at rest: the device identity, prekeys and group states are sealed with
//! XChaCha20-Poly1305 under a store key, which is either a random key in its own file (mode
//! 0600) or derived from the user's passphrase with Argon2id.
//!
//! Every sealed value is bound to its place (table and row key) through the associated data,
//! so rows cannot be swapped or replayed into another slot unnoticed.

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use dspring_proto::Secret;

use crate::error::OpenError;

pub const KEY_LEN: usize = 32;
/// XChaCha20's 192-bit nonce: random nonces never collide in practice, so no counter has to
/// survive crashes.
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
/// Sealed values start with a version byte, so the scheme can change later.
const SEAL_VERSION: u8 = 1;

/// Argon2id parameters for passphrases (RFC 9106's second recommended option, one lane):
/// 64 MiB and 3 passes, about a third of a second here, costly for an attacker's guesses.
pub const ARGON2_MEMORY_KIB: u32 = 64 * 1024;
pub const ARGON2_PASSES: u32 = 3;
pub const ARGON2_LANES: u32 = 1;
/// Bounds on parameters read back from a database file: a corrupt or hostile file must not
/// make opening allocate without limit.
pub const MAX_ARGON2_MEMORY_KIB: u32 = 4 * 1024 * 1024;
pub const MAX_ARGON2_PASSES: u32 = 64;
pub const SALT_LEN: usize = 16;

/// Where the store key comes from.
#[non_exhaustive]
pub enum KeySource<'a> {
    /// A random key in this file, created with mode 0600 along with a new database.
    KeyFile(PathBuf),
    /// Derived from a passphrase with Argon2id; the salt is kept in the database. Borrowed:
    /// the store keeps only the derived key, and the caller wipes the passphrase.
    Passphrase(&'a [u8]),
}

impl std::fmt::Debug for KeySource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::KeyFile(path) => f.debug_tuple("KeyFile").field(path).finish(),
            Self::Passphrase(_) => f.write_str("Passphrase(..)"),
        }
    }
}

/// The key that seals secrets at rest.
pub(crate) struct StoreKey(Secret);

impl std::fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreKey(..)")
    }
}

impl StoreKey {
    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new(self.0.expose().into())
    }

    /// Seals `plaintext` for the slot named by `place`.
    pub(crate) fn seal(&self, place: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Randomness)?;
        let ciphertext = self
            .cipher()
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &aad(place),
                },
            )
            .map_err(|_| SealError::Cipher)?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend(ciphertext);
        Ok(out)
    }

    /// Opens a value sealed for `place`. The plaintext comes back in a buffer that is wiped
    /// when dropped.
    pub(crate) fn open(
        &self,
        place: &[u8],
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, SealError> {
        let (&version, rest) = sealed.split_first().ok_or(SealError::Truncated)?;
        if version != SEAL_VERSION {
            return Err(SealError::UnknownVersion(version));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Truncated);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Truncated)?;
        self.cipher()
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad(place),
                },
            )
            .map(zeroize::Zeroizing::new)
            .map_err(|_| SealError::Authentication)
    }
}

fn aad(place: &[u8]) -> Vec<u8> {
    let mut aad = b"dspring-store/v1/".to_vec();
    aad.extend_from_slice(place);
    aad
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SealError {
    #[error("sealed value is truncated")]
    Truncated,
    #[error("sealed value has unknown version {0}")]
    UnknownVersion(u8),
    #[error("sealed value does not authenticate (wrong key, or altered)")]
    Authentication,
    #[error("encryption failed")]
    Cipher,
    #[error("the operating system's random number generator failed")]
    Randomness,
}

pub(crate) fn random_bytes<const N: usize>() -> Result<[u8; N], std::io::Error> {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).map_err(std::io::Error::other)?;
    Ok(out)
}

/// Reads the key file, or creates it (mode 0600, never overwriting) when `create` is set.
pub(crate) fn key_from_file(path: &Path, create: bool) -> Result<StoreKey, OpenError> {
    let io = |action: &'static str| {
        move |source: std::io::Error| OpenError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    };
    if create && !path.exists() {
        let key: [u8; KEY_LEN] = random_bytes().map_err(io("generating a key for"))?;
        let key = Secret::from_bytes(key);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io("creating key file"))?;
        file.write_all(key.expose())
            .map_err(io("writing key file"))?;
        file.sync_all().map_err(io("syncing key file"))?;
        if let Some(dir) = path.parent() {
            sync_dir(dir).map_err(io("syncing directory of"))?;
        }
        return Ok(StoreKey(key));
    }
    let metadata = match fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OpenError::KeyFileMissing(path.to_path_buf()));
        }
        Err(e) => return Err(io("reading key file")(e)),
    };
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(OpenError::KeyFilePermissions {
            path: path.to_path_buf(),
            mode,
        });
    }
    if metadata.len() != KEY_LEN as u64 {
        return Err(OpenError::KeyFileInvalid(path.to_path_buf()));
    }
    let mut key = [0u8; KEY_LEN];
    fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut key))
        .map_err(io("reading key file"))?;
    let secret = Secret::from_bytes(key);
    zeroize::Zeroize::zeroize(&mut key);
    Ok(StoreKey(secret))
}

/// Stored Argon2id parameters and salt of a passphrase-protected database.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct PassphraseParams {
    pub memory_kib: u32,
    pub passes: u32,
    pub lanes: u32,
    pub salt: [u8; SALT_LEN],
}

impl PassphraseParams {
    pub(crate) fn new_random() -> Result<Self, std::io::Error> {
        Ok(Self {
            memory_kib: ARGON2_MEMORY_KIB,
            passes: ARGON2_PASSES,
            lanes: ARGON2_LANES,
            salt: random_bytes()?,
        })
    }

    pub(crate) fn within_bounds(&self) -> bool {
        self.memory_kib <= MAX_ARGON2_MEMORY_KIB
            && self.passes <= MAX_ARGON2_PASSES
            && (1..=16).contains(&self.lanes)
    }
}

pub(crate) fn key_from_passphrase(
    passphrase: &[u8],
    params: &PassphraseParams,
) -> Result<StoreKey, String> {
    let argon_params = argon2::Params::new(
        params.memory_kib,
        params.passes,
        params.lanes,
        Some(KEY_LEN),
    )
    .map_err(|e| e.to_string())?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut key = [0u8; KEY_LEN];
    argon
        .hash_password_into(passphrase, &params.salt, &mut key)
        .map_err(|e| e.to_string())?;
    let secret = Secret::from_bytes(key);
    zeroize::Zeroize::zeroize(&mut key);
    Ok(StoreKey(secret))
}

/// Makes a directory entry (a new file's name) durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> StoreKey {
        StoreKey(Secret::from_bytes([7; KEY_LEN]))
    }

    #[test]
    fn sealed_values_open_only_in_their_place_and_with_their_key() {
        let sealed = key().seal(b"group/1", b"state").unwrap();
        assert_eq!(&key().open(b"group/1", &sealed).unwrap()[..], b"state");
        assert!(matches!(
            key().open(b"group/2", &sealed),
            Err(SealError::Authentication)
        ));
        let other = StoreKey(Secret::from_bytes([8; KEY_LEN]));
        assert!(other.open(b"group/1", &sealed).is_err());
        for cut in 0..sealed.len() {
            assert!(key().open(b"group/1", &sealed[..cut]).is_err());
        }
        let mut flipped = sealed.clone();
        flipped[30] ^= 1;
        assert!(key().open(b"group/1", &flipped).is_err());
    }

    #[test]
    fn key_file_is_private_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.key");
        assert!(matches!(
            key_from_file(&path, false),
            Err(OpenError::KeyFileMissing(_))
        ));
        let created = key_from_file(&path, true).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let read = key_from_file(&path, false).unwrap();
        assert_eq!(created.0.expose(), read.0.expose());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            key_from_file(&path, false),
            Err(OpenError::KeyFilePermissions { mode: 0o644, .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, b"short").unwrap();
        assert!(matches!(
            key_from_file(&path, false),
            Err(OpenError::KeyFileInvalid(_))
        ));
    }

    #[test]
    fn debug_never_shows_the_key() {
        assert_eq!(format!("{:?}", key()), "StoreKey(..)");
        assert_eq!(
            format!("{:?}", KeySource::Passphrase(b"hunter2")),
            "Passphrase(..)"
        );
    }
}
