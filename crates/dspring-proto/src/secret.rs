//! The one type that holds secret bytes.

use core::fmt;

use rand_core::CryptoRng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Length of every secret in the protocol core: seeds, member secrets, ratchet and chain keys,
/// X25519 and Ed25519 secret keys are all 32 bytes.
pub const SECRET_LEN: usize = 32;

/// 32 secret bytes: zeroized on drop, never printed, compared in constant time.
///
/// There is deliberately no `Copy` and no accessor that returns an owned array, so that copies
/// of the value are visible in the code.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Secret([u8; SECRET_LEN]);

impl Secret {
    /// Wraps bytes; the caller should zeroize its own copy.
    pub fn from_bytes(bytes: [u8; SECRET_LEN]) -> Self {
        Self(bytes)
    }

    /// Fresh random secret from the injected generator.
    pub fn random(rng: &mut impl CryptoRng) -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Borrow the secret bytes, for key derivation and encryption only.
    pub fn expose(&self) -> &[u8; SECRET_LEN] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for Secret {}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        impl serde::de::Visitor<'_> for SecretVisitor {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{SECRET_LEN} secret bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Secret, E> {
                let bytes: [u8; SECRET_LEN] = v
                    .try_into()
                    .map_err(|_| E::invalid_length(v.len(), &self))?;
                Ok(Secret(bytes))
            }
        }
        deserializer.deserialize_bytes(SecretVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_prints_nothing_of_the_value() {
        let secret = Secret::from_bytes([0xAB; SECRET_LEN]);
        let printed = format!("{secret:?} {:#?}", secret);
        assert!(!printed.to_lowercase().contains("ab"), "{printed}");
        assert!(!printed.contains("171"), "{printed}");
    }

    #[test]
    fn equality_compares_all_bytes() {
        let a = Secret::from_bytes([1; SECRET_LEN]);
        let mut other = [1; SECRET_LEN];
        assert_eq!(a, Secret::from_bytes(other));
        other[31] = 2;
        assert_ne!(a, Secret::from_bytes(other));
    }

    #[test]
    fn serde_round_trip() {
        let a = Secret::from_bytes([7; SECRET_LEN]);
        let bytes = postcard::to_allocvec(&a).unwrap();
        let b: Secret = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(a, b);
        assert!(postcard::from_bytes::<Secret>(&bytes[..10]).is_err());
    }
}
