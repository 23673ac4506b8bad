//! Where a profile keeps its data: the node's store, the API token, and the address the
//! running daemon listens on.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The token file: 32 random bytes in hex, readable by the owner only.
const TOKEN_FILE: &str = "api-token";
/// The running daemon's API address (`127.0.0.1:PORT`), written once it listens.
const ADDRESS_FILE: &str = "api-address";
/// The node's own files (store, keys) live here, apart from the daemon's.
const NODE_DIR: &str = "node";
/// A token file larger than this is not ours.
const MAX_TOKEN_FILE: u64 = 256;

#[derive(Debug, thiserror::Error)]
pub enum HomeError {
    #[error(
        "no data directory: set --data-dir or DSPRING_HOME (neither XDG_DATA_HOME nor HOME is set)"
    )]
    NoHome,
    #[error("profile names are letters, digits, '-' and '_' (at most 64): {0:?}")]
    BadProfile(String),
    #[error("{path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0}: not a token this daemon wrote")]
    BadToken(PathBuf),
    #[error("no daemon is running for {0} (start one with `dspring daemon`)")]
    NotRunning(PathBuf),
}

/// One profile's directory.
#[derive(Clone, Debug)]
pub struct Home {
    dir: PathBuf,
}

impl Home {
    /// `--data-dir` (or `DSPRING_HOME`) if given, else `$XDG_DATA_HOME/dspring/<profile>`, else
    /// `~/.local/share/dspring/<profile>`.
    pub fn locate(data_dir: Option<PathBuf>, profile: &str) -> Result<Self, HomeError> {
        if profile.is_empty()
            || profile.len() > 64
            || !profile
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(HomeError::BadProfile(profile.to_owned()));
        }
        let dir = match data_dir {
            Some(dir) => dir,
            None => {
                let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
                    Some(xdg) => PathBuf::from(xdg),
                    None => std::env::var_os("HOME")
                        .filter(|v| !v.is_empty())
                        .map(|home| PathBuf::from(home).join(".local/share"))
                        .ok_or(HomeError::NoHome)?,
                };
                base.join("dspring").join(profile)
            }
        };
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn node_dir(&self) -> PathBuf {
        self.dir.join(NODE_DIR)
    }

    /// Creates the directory, owner-only, if it does not exist (an existing one, perhaps
    /// given with `--data-dir`, keeps its permissions; the token file is 0600 either way).
    pub fn create(&self) -> Result<(), HomeError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| self.io(&self.dir, e))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| self.io(&self.dir, e))
    }

    /// The API token, created (mode 0600) on first use.
    pub fn token_or_create(&self) -> Result<String, HomeError> {
        match self.token() {
            Ok(token) => return Ok(token),
            Err(HomeError::Io { error, .. }) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(other) => return Err(other),
        }
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| self.io(&self.dir, std::io::Error::other(e.to_string())))?;
        let token = hex::encode(bytes);
        let path = self.dir.join(TOKEN_FILE);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| self.io(&path, e))?;
        file.write_all(token.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| self.io(&path, e))?;
        Ok(token)
    }

    /// The API token the daemon of this profile accepts.
    pub fn token(&self) -> Result<String, HomeError> {
        use std::io::Read;
        let path = self.dir.join(TOKEN_FILE);
        // Opened without following a symbolic link, and checked on the open file: what is
        // checked is what is read.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(code) if code == rustix::io::Errno::LOOP.raw_os_error() => {
                    HomeError::BadToken(path.clone())
                }
                _ => self.io(&path, e),
            })?;
        let metadata = file.metadata().map_err(|e| self.io(&path, e))?;
        // Only a plain file of ours that nobody else can read or write: a token another
        // user could plant or read would hand them the daemon.
        if !metadata.is_file()
            || metadata.len() > MAX_TOKEN_FILE
            || metadata.permissions().mode() & 0o077 != 0
            || metadata.uid() != rustix::process::geteuid().as_raw()
        {
            return Err(HomeError::BadToken(path));
        }
        let mut token = String::new();
        file.take(MAX_TOKEN_FILE)
            .read_to_string(&mut token)
            .map_err(|e| self.io(&path, e))?;
        let token = token.trim().to_owned();
        if token.len() != 64 || !token.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(HomeError::BadToken(path));
        }
        Ok(token)
    }

    pub fn write_address(&self, address: std::net::SocketAddr) -> Result<(), HomeError> {
        let path = self.dir.join(ADDRESS_FILE);
        let temporary = self.dir.join(format!("{ADDRESS_FILE}.new"));
        std::fs::write(&temporary, address.to_string())
            .and_then(|()| std::fs::rename(&temporary, &path))
            .map_err(|e| self.io(&path, e))
    }

    pub fn remove_address(&self) {
        let _ = std::fs::remove_file(self.dir.join(ADDRESS_FILE));
    }

    /// Where the running daemon listens.
    pub fn address(&self) -> Result<std::net::SocketAddr, HomeError> {
        let path = self.dir.join(ADDRESS_FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|_| HomeError::NotRunning(self.dir.clone()))?;
        text.trim()
            .parse::<std::net::SocketAddr>()
            .ok()
            .filter(|a| a.ip().is_loopback())
            .ok_or(HomeError::NotRunning(self.dir.clone()))
    }

    fn io(&self, path: &Path, error: std::io::Error) -> HomeError {
        HomeError::Io {
            path: path.to_owned(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_token_is_owner_only_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::locate(Some(dir.path().join("p")), "default").unwrap();
        home.create().unwrap();
        let token = home.token_or_create().unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(home.token_or_create().unwrap(), token);
        let mode = std::fs::metadata(home.dir().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn bad_profiles_and_tokens_are_refused() {
        assert!(matches!(
            Home::locate(None, "../x"),
            Err(HomeError::BadProfile(_))
        ));
        let dir = tempfile::tempdir().unwrap();
        let home = Home::locate(Some(dir.path().to_owned()), "default").unwrap();
        std::fs::write(dir.path().join(TOKEN_FILE), "not hex").unwrap();
        assert!(matches!(home.token(), Err(HomeError::BadToken(_))));
        // A well-formed owner-only token of another user (needs the right to chown, which CI
        // has: it runs as root).
        std::fs::remove_file(dir.path().join(TOKEN_FILE)).unwrap();
        let token = home.token_or_create().unwrap();
        assert_eq!(home.token().unwrap(), token);
        let path = dir.path().join(TOKEN_FILE);
        let other = rustix::process::geteuid().as_raw() + 1;
        if std::os::unix::fs::chown(&path, Some(other), None).is_ok() {
            assert!(matches!(home.token(), Err(HomeError::BadToken(_))));
        } else {
            eprintln!("not checked: the owner check needs the right to chown (root)");
        }
        // A symbolic link, even to a good token, is refused.
        std::fs::remove_file(&path).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let real = Home::locate(Some(elsewhere.path().to_owned()), "default").unwrap();
        real.token_or_create().unwrap();
        std::os::unix::fs::symlink(elsewhere.path().join(TOKEN_FILE), &path).unwrap();
        assert!(matches!(home.token(), Err(HomeError::BadToken(_))));
        assert!(matches!(home.address(), Err(HomeError::NotRunning(_))));
    }
}
