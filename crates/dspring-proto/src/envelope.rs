//! The signed envelope that carries every group message (spec §10, ARCHITECTURE "Wire").
//!
//! ```text
//! byte 0      version (high nibble) | identity-signature flag | rotate flag | kind (2 bits)
//! 8 bytes     sender's short id
//! control:    seq (varint), sent epoch (varint), sent count (varint),
//!             dependency count (varint), (short id, seq)*,
//!             [new verification key, 32 bytes, if rotate], control message
//! application: epoch (varint), index (varint), AEAD ciphertext
//! 64 bytes    signature by the sender's current group signing key
//! [64 bytes   signature by the sender's identity key, on envelopes that carry a welcome]
//! ```
//! Signatures cover a domain label, the group id and every byte before them. The group id is
//! not sent: the network delivers an envelope in the context of its group.

use core::ops::Range;

use crate::codec::{DecodeError, Reader, Writer};
use crate::identity::{self, ParsedKey, Signature, SignatureError, SigningKey, VerifyingKey};
use crate::ids::{GroupId, SHORT_ID_LEN, ShortId};

/// Version of this envelope format.
pub const FORMAT_VERSION: u8 = 1;
/// Largest envelope accepted: a welcome for a large group carries its whole membership
/// history; 4 MiB holds that for thousands of members and stops memory exhaustion.
pub const MAX_ENVELOPE_LEN: usize = 4 << 20;
/// Largest application plaintext: chat and small payloads; bulk data belongs elsewhere.
pub const MAX_PLAINTEXT_LEN: usize = 256 << 10;
/// Most dependencies one control envelope may name (an ack names one).
pub const MAX_DEPENDENCIES: usize = 4;

const KIND_CONTROL: u8 = 0;
const KIND_APPLICATION: u8 = 1;
const KIND_MASK: u8 = 0b0011;
const FLAG_ROTATE: u8 = 0b0100;
const FLAG_IDENTITY_SIGNATURE: u8 = 0b1000;
const SIGNATURE_LEN: usize = 64;

const SIGNATURE_DOMAIN: &[u8] = b"dspring/v1/envelope";
const IDENTITY_SIGNATURE_DOMAIN: &[u8] = b"dspring/v1/envelope-identity";
const AEAD_DOMAIN: &[u8] = b"dspring/v1/application";

/// Where an envelope stands in its sender's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    Control {
        seq: u64,
        /// The sender's application messages before this one: `count` messages in its sending
        /// epoch `epoch`. They are delivered first, so that the epoch's keys can be deleted
        /// when this message starts a new one, without losing a message in flight.
        sent: (u64, u64),
        /// Operations `(sender, seq)` that must be delivered first (the acked operation).
        dependencies: Vec<(ShortId, u64)>,
        rotate: Option<VerifyingKey>,
    },
    Application {
        epoch: u64,
        index: u64,
    },
}

/// A parsed envelope whose signature has not been checked: only `verify` turns it into an
/// [`Envelope`].
#[derive(Clone, Debug)]
pub struct Unverified<T>(T);

/// A parsed envelope; the type proves its signature was verified.
#[derive(Clone, Debug)]
pub struct Envelope {
    bytes: Vec<u8>,
    sender: ShortId,
    position: Position,
    /// Byte range of the control message or the application ciphertext.
    payload: Range<usize>,
    /// Length of the signed part.
    signed_len: usize,
    signature: Signature,
    identity_signature: Option<Signature>,
}

impl Unverified<Envelope> {
    /// Parses wire bytes; bounded and total.
    pub fn parse(bytes: Vec<u8>) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(DecodeError::TooLarge {
                what: "envelope",
                got: bytes.len() as u64,
                max: MAX_ENVELOPE_LEN as u64,
            });
        }
        let mut r = Reader::new(&bytes);
        let first = r.u8("envelope header")?;
        if first >> 4 != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(first >> 4));
        }
        let has_identity_signature = first & FLAG_IDENTITY_SIGNATURE != 0;
        let sender = ShortId(r.array::<SHORT_ID_LEN>("sender")?);
        let position = match first & KIND_MASK {
            KIND_CONTROL => {
                let seq = r.varint("seq")?;
                if seq == 0 {
                    return Err(DecodeError::Invalid("control seq starts at 1"));
                }
                let sent = (r.varint("sent epoch")?, r.varint("sent count")?);
                let n = r.count("dependencies", MAX_DEPENDENCIES, SHORT_ID_LEN + 1)?;
                let mut dependencies = Vec::with_capacity(n);
                for _ in 0..n {
                    dependencies.push((ShortId(r.array("dependency")?), r.varint("dep seq")?));
                }
                let rotate = if first & FLAG_ROTATE != 0 {
                    Some(VerifyingKey(r.array("new verification key")?))
                } else {
                    None
                };
                Position::Control {
                    seq,
                    sent,
                    dependencies,
                    rotate,
                }
            }
            KIND_APPLICATION => {
                if first & (FLAG_ROTATE | FLAG_IDENTITY_SIGNATURE) != 0 {
                    return Err(DecodeError::Invalid("flags on an application envelope"));
                }
                Position::Application {
                    epoch: r.varint("epoch")?,
                    index: r.varint("index")?,
                }
            }
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "envelope kind",
                    tag,
                });
            }
        };
        let trailer = SIGNATURE_LEN * if has_identity_signature { 2 } else { 1 };
        let payload_start = bytes.len() - r.remaining();
        let signed_len = bytes
            .len()
            .checked_sub(trailer)
            .filter(|len| *len >= payload_start)
            .ok_or(DecodeError::UnexpectedEnd("signature"))?;
        let mut tail = Reader::new(bytes.get(signed_len..).unwrap_or_default());
        let signature = Signature(tail.array("signature")?);
        let identity_signature = if has_identity_signature {
            Some(Signature(tail.array("identity signature")?))
        } else {
            None
        };
        Ok(Unverified(Envelope {
            sender,
            position,
            payload: payload_start..signed_len,
            signed_len,
            signature,
            identity_signature,
            bytes,
        }))
    }

    pub fn sender(&self) -> ShortId {
        self.0.sender
    }

    pub fn position(&self) -> &Position {
        &self.0.position
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0.bytes
    }

    pub fn has_identity_signature(&self) -> bool {
        self.0.identity_signature.is_some()
    }

    /// The payload before verification: only for a new member to find the identity of the
    /// sender in a welcome, whose identity signature it then checks.
    pub fn unverified_payload(&self) -> &[u8] {
        self.0.payload()
    }

    /// Checks the signature by the sender's current group signing key.
    pub fn verify(self, group: &GroupId, key: &ParsedKey) -> Result<Envelope, SignatureError> {
        let message = signing_input(SIGNATURE_DOMAIN, group, self.0.signed());
        key.verify(&message, &self.0.signature)?;
        Ok(self.0)
    }

    /// Checks the identity signature of an envelope that carries a welcome.
    pub fn verify_identity(
        self,
        group: &GroupId,
        identity_key: &VerifyingKey,
    ) -> Result<Envelope, SignatureError> {
        let signature = self.0.identity_signature.ok_or(SignatureError::Invalid)?;
        let message = signing_input(IDENTITY_SIGNATURE_DOMAIN, group, self.0.signed());
        identity::verify(identity_key, &message, &signature)?;
        Ok(self.0)
    }
}

impl Envelope {
    pub fn sender(&self) -> ShortId {
        self.sender
    }

    pub fn position(&self) -> &Position {
        &self.position
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn payload(&self) -> &[u8] {
        self.bytes.get(self.payload.clone()).unwrap_or_default()
    }

    fn signed(&self) -> &[u8] {
        self.bytes.get(..self.signed_len).unwrap_or_default()
    }

    /// Associated data of an application message: the group, the sender's full id and the
    /// header up to the ciphertext.
    pub fn associated_data(&self, group: &GroupId, sender: &crate::MemberId) -> Vec<u8> {
        let header = self.bytes.get(..self.payload.start).unwrap_or_default();
        application_ad(group, sender, header)
    }
}

fn signing_input(domain: &[u8], group: &GroupId, signed: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(domain.len() + 32 + signed.len());
    message.extend_from_slice(domain);
    message.extend_from_slice(group.as_bytes());
    message.extend_from_slice(signed);
    message
}

fn application_ad(group: &GroupId, sender: &crate::MemberId, header: &[u8]) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AEAD_DOMAIN.len() + 64 + header.len());
    ad.extend_from_slice(AEAD_DOMAIN);
    ad.extend_from_slice(group.as_bytes());
    ad.extend_from_slice(sender.as_bytes());
    ad.extend_from_slice(header);
    ad
}

/// Builds and signs a control envelope. `identity` adds the identity signature a welcome needs.
#[allow(clippy::too_many_arguments)]
pub fn seal_control(
    group: &GroupId,
    sender: ShortId,
    signing_key: &SigningKey,
    seq: u64,
    sent: (u64, u64),
    dependencies: &[(ShortId, u64)],
    rotate: Option<&VerifyingKey>,
    payload: &[u8],
    identity: Option<&SigningKey>,
) -> Vec<u8> {
    let mut w = Writer::with_capacity(payload.len() + 160);
    let mut first = FORMAT_VERSION << 4 | KIND_CONTROL;
    if rotate.is_some() {
        first |= FLAG_ROTATE;
    }
    if identity.is_some() {
        first |= FLAG_IDENTITY_SIGNATURE;
    }
    w.u8(first);
    w.raw(&sender.0);
    w.varint(seq);
    w.varint(sent.0);
    w.varint(sent.1);
    w.varint(dependencies.len() as u64);
    for (dep, dep_seq) in dependencies {
        w.raw(&dep.0);
        w.varint(*dep_seq);
    }
    if let Some(key) = rotate {
        w.raw(&key.0);
    }
    w.raw(payload);
    let signature = signing_key.sign(&signing_input(SIGNATURE_DOMAIN, group, w.as_bytes()));
    let identity_signature = identity.map(|key| {
        key.sign(&signing_input(
            IDENTITY_SIGNATURE_DOMAIN,
            group,
            w.as_bytes(),
        ))
    });
    w.raw(&signature.0);
    if let Some(signature) = identity_signature {
        w.raw(&signature.0);
    }
    w.into_bytes()
}

/// Builds and signs an application envelope; `encrypt` gets the associated data.
pub fn seal_application(
    group: &GroupId,
    sender: &crate::MemberId,
    signing_key: &SigningKey,
    epoch: u64,
    index: u64,
    encrypt: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Vec<u8> {
    let mut w = Writer::with_capacity(128);
    w.u8(FORMAT_VERSION << 4 | KIND_APPLICATION);
    w.raw(&sender.short().0);
    w.varint(epoch);
    w.varint(index);
    let ad = application_ad(group, sender, w.as_bytes());
    let ciphertext = encrypt(&ad);
    w.raw(&ciphertext);
    let signature = signing_key.sign(&signing_input(SIGNATURE_DOMAIN, group, w.as_bytes()));
    w.raw(&signature.0);
    w.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::MemberId;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const GROUP: GroupId = GroupId([1; 32]);

    fn key() -> (SigningKey, ParsedKey) {
        let key = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
        let parsed = ParsedKey::parse(key.verifying_key()).unwrap();
        (key, parsed)
    }

    #[test]
    fn control_round_trip_and_signature_binding() {
        let (key, parsed) = key();
        let sender = MemberId(key.verifying_key().0).short();
        let new_key = VerifyingKey([9; 32]);
        let bytes = seal_control(
            &GROUP,
            sender,
            &key,
            7,
            (3, 2),
            &[(sender, 6)],
            Some(&new_key),
            b"payload",
            None,
        );
        let parsed_envelope = Unverified::<Envelope>::parse(bytes.clone()).unwrap();
        assert_eq!(
            parsed_envelope.position(),
            &Position::Control {
                seq: 7,
                sent: (3, 2),
                dependencies: vec![(sender, 6)],
                rotate: Some(new_key)
            }
        );
        let verified = parsed_envelope.clone().verify(&GROUP, &parsed).unwrap();
        assert_eq!(verified.payload(), b"payload");
        // The signature binds the group, which is not sent.
        assert!(parsed_envelope.verify(&GroupId([2; 32]), &parsed).is_err());
    }

    #[test]
    fn application_envelope_overhead_is_91_bytes_for_small_numbers() {
        let (key, parsed) = key();
        let sender = MemberId(key.verifying_key().0);
        let bytes = seal_application(&GROUP, &sender, &key, 5, 9, |_| vec![0u8; 32 + 16]);
        assert_eq!(bytes.len() - 32, 91);
        let envelope = Unverified::<Envelope>::parse(bytes)
            .unwrap()
            .verify(&GROUP, &parsed)
            .unwrap();
        assert_eq!(
            envelope.position(),
            &Position::Application { epoch: 5, index: 9 }
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        let (key, _) = key();
        let sender = MemberId(key.verifying_key().0);
        let good = seal_application(&GROUP, &sender, &key, 1, 1, |_| vec![0u8; 20]);
        let mut wrong_version = good.clone();
        wrong_version[0] = (2 << 4) | 1;
        assert_eq!(
            Unverified::<Envelope>::parse(wrong_version).err(),
            Some(DecodeError::UnsupportedVersion(2))
        );
        let mut flags_on_application = good.clone();
        flags_on_application[0] |= FLAG_ROTATE;
        assert!(Unverified::<Envelope>::parse(flags_on_application).is_err());
        for cut in 0..good.len() - 20 {
            assert!(
                Unverified::<Envelope>::parse(good[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
        let too_long = vec![0x11; MAX_ENVELOPE_LEN + 1];
        assert!(matches!(
            Unverified::<Envelope>::parse(too_long),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
