//! The DHT record that makes a member addable by its id alone: its signed prekey (no one-time
//! prekey: a public record is read by anyone, so a one-time key in it would be used twice), its
//! addresses and mailboxes, and an expiry, all signed by its identity key. Nodes store such a
//! record for others only if it verifies, under the key derived from the member's id.

use dspring_proto::identity::{Signature, VerifyingKey, verify};
use dspring_proto::{Device, MemberId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::card::{ContactCard, MAX_CARD_ADDRESSES, MAX_CARD_MAILBOXES, MAX_CARD_TEXT, MailboxRef};

/// A record's lifetime: a day, republished well before (see the node's refresh).
pub const RECORD_LIFETIME: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
/// Largest record accepted: what a card may hold.
pub const MAX_RECORD_BYTES: usize = MAX_CARD_TEXT;

const KEY_DOMAIN: &[u8] = b"dspring/v1/prekey-record-key";
const SIGNATURE_DOMAIN: &[u8] = b"dspring/v1/prekey-record";

/// The DHT key of a member's record.
pub fn key(member: &MemberId) -> Vec<u8> {
    let mut hash = Sha256::new();
    hash.update(KEY_DOMAIN);
    hash.update(member.0);
    hash.finalize().to_vec()
}

#[derive(Serialize, Deserialize)]
struct Signed {
    bundle: dspring_proto::identity::PrekeyBundle,
    addresses: Vec<String>,
    mailboxes: Vec<MailboxRef>,
    expires_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct Record {
    signed: Vec<u8>,
    signature: Signature,
}

fn signing_input(signed: &[u8]) -> Vec<u8> {
    let mut input = SIGNATURE_DOMAIN.to_vec();
    input.extend_from_slice(signed);
    input
}

/// This device's record, valid until `expires_ms`.
pub(crate) fn make(
    device: &Device,
    addresses: Vec<String>,
    mailboxes: Vec<MailboxRef>,
    expires_ms: u64,
) -> Option<Vec<u8>> {
    let signed = postcard::to_allocvec(&Signed {
        bundle: device.bundle(None),
        addresses,
        mailboxes,
        expires_ms,
    })
    .ok()?;
    let signature = device.identity.sign(&signing_input(&signed));
    postcard::to_allocvec(&Record { signed, signature }).ok()
}

/// The card a record stands for, if it is well-formed, signed by the member its key names,
/// and not expired at `now_ms`.
pub fn check(key_bytes: &[u8], value: &[u8], now_ms: u64) -> Option<ContactCard> {
    if value.len() > MAX_RECORD_BYTES {
        return None;
    }
    let record: Record = postcard::from_bytes(value).ok()?;
    let signed: Signed = postcard::from_bytes(&record.signed).ok()?;
    let member = signed.bundle.identity;
    if key(&member) != key_bytes
        || signed.expires_ms <= now_ms
        || signed.bundle.one_time.is_some()
        || signed.addresses.len() > MAX_CARD_ADDRESSES
        || signed.mailboxes.len() > MAX_CARD_MAILBOXES
        || signed
            .mailboxes
            .iter()
            .any(|m| m.addresses.len() > MAX_CARD_ADDRESSES)
    {
        return None;
    }
    verify(
        &VerifyingKey::from(member),
        &signing_input(&record.signed),
        &record.signature,
    )
    .ok()?;
    signed.bundle.verify().ok()?;
    Some(ContactCard {
        member,
        bundle: signed.bundle,
        addresses: signed.addresses,
        mailboxes: signed.mailboxes,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn a_record_verifies_only_under_its_key_unexpired_and_unaltered() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let device = Device::generate(2, &mut rng);
        let other = Device::generate(2, &mut rng);
        let value = make(&device, vec!["/ip4/127.0.0.1/tcp/9".into()], vec![], 1_000).unwrap();
        let card = check(&key(&device.id()), &value, 999).unwrap();
        assert_eq!(card.member, device.id());
        assert!(card.bundle.one_time.is_none());
        assert!(
            check(&key(&device.id()), &value, 1_000).is_none(),
            "expired"
        );
        assert!(
            check(&key(&other.id()), &value, 0).is_none(),
            "another member's key"
        );
        for i in 0..value.len() {
            let mut altered = value.clone();
            altered[i] ^= 1;
            assert!(check(&key(&device.id()), &altered, 0).is_none(), "byte {i}");
        }
        assert!(check(&key(&device.id()), &[0u8; MAX_RECORD_BYTES + 1], 0).is_none());
    }

    #[test]
    fn arbitrary_bytes_are_refused_without_panicking() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        for len in 0..2_000 {
            let mut bytes = vec![0u8; len % 700];
            rand_core::Rng::fill_bytes(&mut rng, &mut bytes);
            assert!(check(&[0; 32], &bytes, 0).is_none());
        }
    }
}
