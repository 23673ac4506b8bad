//! Ed25519 identities and signing keys, and X25519 prekeys for first contact (spec §9).

use core::fmt;
use std::collections::BTreeMap;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};

use crate::codec::{DecodeError, Reader, Writer};
use crate::ids::MemberId;
use crate::secret::Secret;

/// A signature did not verify (or its key is not a valid Ed25519 point).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum SignatureError {
    #[error("invalid signature")]
    Invalid,
}

/// An Ed25519 signature.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Signature(pub [u8; 64]);

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct VerifyingKey(pub [u8; 32]);

/// A public key decompressed once, for keys that verify many signatures (decompression is
/// about a quarter of the cost of a verification). Serializes as its 32 bytes.
#[derive(Clone, Copy, Debug)]
pub struct ParsedKey {
    bytes: VerifyingKey,
    key: ed25519_dalek::VerifyingKey,
}

impl ParsedKey {
    /// Refuses bytes that are not a point, and weak (small-order) keys.
    pub fn parse(bytes: VerifyingKey) -> Result<Self, SignatureError> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes.0)
            .map_err(|_| SignatureError::Invalid)?;
        if key.is_weak() {
            return Err(SignatureError::Invalid);
        }
        Ok(Self { bytes, key })
    }

    pub fn bytes(&self) -> VerifyingKey {
        self.bytes
    }

    /// RFC 8032 verification (cofactorless, comparing encodings), which every verifier
    /// decides identically; weak keys were refused at parse, which is what `verify_strict`
    /// adds for keys. Skipping its small-order check of `R` saves a point decompression.
    pub fn verify(&self, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        use ed25519_dalek::Verifier;
        let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
        self.key
            .verify(message, &signature)
            .map_err(|_| SignatureError::Invalid)
    }
}

impl PartialEq for ParsedKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for ParsedKey {}

impl Serialize for ParsedKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.bytes.serialize(s)
    }
}

impl<'de> Deserialize<'de> for ParsedKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = VerifyingKey::deserialize(d)?;
        ParsedKey::parse(bytes).map_err(|_| serde::de::Error::custom("invalid verification key"))
    }
}

impl From<MemberId> for VerifyingKey {
    fn from(id: MemberId) -> Self {
        VerifyingKey(id.0)
    }
}

/// An Ed25519 key pair: the device identity, and the rotating per-group signing keys.
///
/// Keeps the expanded key next to its seed: expanding costs a SHA-512 and a scalar
/// multiplication, which would otherwise double the cost of every signature.
#[derive(Clone)]
pub struct SigningKey {
    seed: Secret,
    expanded: ed25519_dalek::SigningKey,
}

impl Serialize for SigningKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.seed.serialize(s)
    }
}

impl<'de> Deserialize<'de> for SigningKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::from_secret(Secret::deserialize(d)?))
    }
}

impl SigningKey {
    pub fn generate(rng: &mut impl CryptoRng) -> Self {
        Self::from_secret(Secret::random(rng))
    }

    pub fn from_secret(seed: Secret) -> Self {
        let expanded = ed25519_dalek::SigningKey::from_bytes(seed.expose());
        Self { seed, expanded }
    }

    pub fn secret(&self) -> &Secret {
        &self.seed
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        VerifyingKey(self.expanded.verifying_key().to_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        use ed25519_dalek::Signer;
        Signature(self.expanded.sign(message).to_bytes())
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({:?})", self.verifying_key())
    }
}

/// Verifies an Ed25519 signature (strict: no malleable or small-order encodings).
pub fn verify(
    key: &VerifyingKey,
    message: &[u8],
    signature: &Signature,
) -> Result<(), SignatureError> {
    let key =
        ed25519_dalek::VerifyingKey::from_bytes(&key.0).map_err(|_| SignatureError::Invalid)?;
    let signature = ed25519_dalek::Signature::from_bytes(&signature.0);
    key.verify_strict(message, &signature)
        .map_err(|_| SignatureError::Invalid)
}

/// An X25519 prekey as published: its id and public key.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PublicPrekey {
    pub id: u32,
    pub key: [u8; 32],
}

/// What someone needs to start a two-party channel with a device that may be offline.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PrekeyBundle {
    pub identity: MemberId,
    pub signed_prekey: PublicPrekey,
    /// By `identity`, over a domain label and the signed prekey.
    pub signature: Signature,
    /// A one-time prekey, used by whoever contacts the device first with this bundle.
    pub one_time: Option<PublicPrekey>,
}

const PREKEY_SIGNATURE_DOMAIN: &[u8] = b"dspring/v1/signed-prekey";

fn prekey_signing_input(prekey: &PublicPrekey) -> Vec<u8> {
    let mut input = PREKEY_SIGNATURE_DOMAIN.to_vec();
    input.extend_from_slice(&prekey.id.to_be_bytes());
    input.extend_from_slice(&prekey.key);
    input
}

impl Serialize for Signature {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes: Vec<u8> = serde::Deserialize::deserialize(d)?;
        let array: [u8; 64] = bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("signature must be 64 bytes"))?;
        Ok(Signature(array))
    }
}

impl PrekeyBundle {
    pub fn verify(&self) -> Result<(), SignatureError> {
        verify(
            &VerifyingKey(self.identity.0),
            &prekey_signing_input(&self.signed_prekey),
            &self.signature,
        )
    }

    pub fn encode(&self, w: &mut Writer) {
        w.raw(self.identity.as_bytes());
        w.varint(u64::from(self.signed_prekey.id));
        w.raw(&self.signed_prekey.key);
        w.raw(&self.signature.0);
        match &self.one_time {
            Some(prekey) => {
                w.u8(1);
                w.varint(u64::from(prekey.id));
                w.raw(&prekey.key);
            }
            None => w.u8(0),
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let identity = MemberId(r.array("bundle identity")?);
        let signed_prekey = PublicPrekey {
            id: r.bounded("prekey id", u64::from(u32::MAX))? as u32,
            key: r.array("signed prekey")?,
        };
        let signature = Signature(r.array("prekey signature")?);
        let one_time = match r.u8("one-time flag")? {
            0 => None,
            1 => Some(PublicPrekey {
                id: r.bounded("prekey id", u64::from(u32::MAX))? as u32,
                key: r.array("one-time prekey")?,
            }),
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "one-time flag",
                    tag,
                });
            }
        };
        Ok(Self {
            identity,
            signed_prekey,
            signature,
            one_time,
        })
    }
}

/// Most unused one-time prekeys a device keeps: enough for many first contacts while offline,
/// small enough that publishing and storing them stays cheap.
pub const MAX_ONE_TIME_PREKEYS: usize = 1000;

/// A device's prekey secrets.
#[derive(Clone, Serialize, Deserialize)]
pub struct DevicePrekeys {
    signed: BTreeMap<u32, Secret>,
    current_signed: u32,
    one_time: BTreeMap<u32, Secret>,
    next_id: u32,
}

impl fmt::Debug for DevicePrekeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevicePrekeys")
            .field("signed", &self.signed.len())
            .field("one_time", &self.one_time.len())
            .finish()
    }
}

fn public_of(secret: &Secret) -> [u8; 32] {
    X25519Public::from(&StaticSecret::from(*secret.expose())).to_bytes()
}

impl DevicePrekeys {
    pub fn generate(identity: &SigningKey, one_time_count: u32, rng: &mut impl CryptoRng) -> Self {
        let _ = identity;
        let mut prekeys = Self {
            signed: BTreeMap::new(),
            current_signed: 0,
            one_time: BTreeMap::new(),
            next_id: 1,
        };
        prekeys.signed.insert(0, Secret::random(rng));
        prekeys.add_one_time(one_time_count, rng);
        prekeys
    }

    /// Adds up to `count` one-time prekeys, staying within [`MAX_ONE_TIME_PREKEYS`].
    pub fn add_one_time(&mut self, count: u32, rng: &mut impl CryptoRng) {
        for _ in 0..count {
            if self.one_time.len() >= MAX_ONE_TIME_PREKEYS {
                return;
            }
            self.one_time.insert(self.next_id, Secret::random(rng));
            self.next_id = self.next_id.wrapping_add(1);
        }
    }

    pub fn one_time_ids(&self) -> Vec<u32> {
        self.one_time.keys().copied().collect()
    }

    /// Takes the one-time prekey secrets out, for storage apart from the rest (a store keeps
    /// each in its own row, so that using one deletes exactly that row).
    pub fn take_one_time(&mut self) -> BTreeMap<u32, Secret> {
        std::mem::take(&mut self.one_time)
    }

    /// Puts back a one-time prekey secret read from storage.
    pub fn restore_one_time(&mut self, id: u32, secret: Secret) {
        // Never hand out this id again for a new key.
        if id >= self.next_id {
            self.next_id = id.wrapping_add(1);
        }
        self.one_time.insert(id, secret);
    }

    /// Deletes a one-time prekey after a committed receive used it.
    pub fn remove_one_time(&mut self, id: u32) -> bool {
        self.one_time.remove(&id).is_some()
    }

    /// The published bundle, with one-time prekey `one_time` if it still exists.
    pub fn bundle(&self, identity: &SigningKey, one_time: Option<u32>) -> PrekeyBundle {
        let signed_prekey = PublicPrekey {
            id: self.current_signed,
            key: self
                .signed
                .get(&self.current_signed)
                .map(public_of)
                .unwrap_or_default(),
        };
        let signature = identity.sign(&prekey_signing_input(&signed_prekey));
        PrekeyBundle {
            identity: MemberId(identity.verifying_key().0),
            signed_prekey,
            signature,
            one_time: one_time.and_then(|id| {
                self.one_time.get(&id).map(|secret| PublicPrekey {
                    id,
                    key: public_of(secret),
                })
            }),
        }
    }

    pub(crate) fn signed_secret(&self, id: u32) -> Option<&Secret> {
        self.signed.get(&id)
    }

    pub(crate) fn one_time_secret(&self, id: u32) -> Option<&Secret> {
        self.one_time.get(&id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn sign_and_verify() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let key = SigningKey::generate(&mut rng);
        let sig = key.sign(b"hello");
        verify(&key.verifying_key(), b"hello", &sig).unwrap();
        assert!(verify(&key.verifying_key(), b"hellO", &sig).is_err());
        let mut bad = sig;
        bad.0[5] ^= 1;
        assert!(verify(&key.verifying_key(), b"hello", &bad).is_err());
        let printed = format!("{key:?}");
        assert!(!printed.contains(&format!("{:?}", key.secret().expose())));
    }

    #[test]
    fn bundle_round_trip_and_tamper() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let identity = SigningKey::generate(&mut rng);
        let prekeys = DevicePrekeys::generate(&identity, 3, &mut rng);
        let bundle = prekeys.bundle(&identity, prekeys.one_time_ids().first().copied());
        bundle.verify().unwrap();
        assert!(bundle.one_time.is_some());
        let mut w = Writer::new();
        bundle.encode(&mut w);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        assert_eq!(PrekeyBundle::decode(&mut r).unwrap(), bundle);
        r.finish().unwrap();
        let mut tampered = bundle.clone();
        tampered.signed_prekey.key[0] ^= 1;
        assert!(tampered.verify().is_err());
        for cut in 0..bytes.len() {
            assert!(PrekeyBundle::decode(&mut Reader::new(&bytes[..cut])).is_err());
        }
    }
}
