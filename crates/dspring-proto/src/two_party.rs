//! 2SM, the two-party channel of the DCGKA paper (spec §8), over RFC 9180 HPKE
//! (DHKEM-X25519-HKDF-SHA256, HKDF-SHA256, ChaCha20-Poly1305), with an X3DH-style first
//! contact from the peer's prekeys (spec §9).
//!
//! Every message is encrypted to a key pair that is used once: the sender generates a key
//! pair `pk1` for the peer to answer to, and a key pair `pk2` whose secret the peer keeps for
//! the sender's next message. `sk2` is not sent: both sides derive it from the HPKE exporter
//! secret of this message, which is exactly as strong as sending it inside the ciphertext (the
//! plaintext is protected by that same secret) and saves 32 bytes per message.
//!
//! Sender authentication comes from the signed envelope the ciphertext rides in; the context
//! (group, sender, recipient) is bound into HPKE's `info`, so a ciphertext cannot be replayed
//! in another group or between other parties.

use core::fmt;
use std::collections::BTreeMap;

use hkdf::Hkdf;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, PskBundle, Serializable};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;
use x25519_dalek::{PublicKey as X25519Public, StaticSecret};
use zeroize::Zeroize;

use crate::codec::{DecodeError, Reader, Writer};
use crate::identity::{DevicePrekeys, PublicPrekey};
use crate::ids::{GroupId, MemberId};
use crate::secret::{SECRET_LEN, Secret};

type KemImpl = X25519HkdfSha256;
type PrivateKey = <KemImpl as Kem>::PrivateKey;
type PublicKey = <KemImpl as Kem>::PublicKey;
type EncappedKey = <KemImpl as Kem>::EncappedKey;

const INFO_LABEL: &[u8] = b"dspring/v1/2sm";
const NEXT_KEY_LABEL: &[u8] = b"dspring/v1/2sm/next-key";
const ONE_TIME_PSK_LABEL: &[u8] = b"dspring/v1/2sm/one-time-prekey";
const ONE_TIME_PSK_ID: &[u8] = b"dspring-one-time-prekey";

/// Most own key pairs a session keeps while the peer has not answered: one per message sent
/// since its last answer. The DCGKA sends one message per membership change, so 10,000 is
/// years of unanswered changes; past it sending fails instead of growing without bound.
pub const MAX_PENDING_KEYS: usize = 10_000;

/// Length of the plaintext: the 32-byte message, a varint index, a 32-byte public key.
const MAX_PLAINTEXT_LEN: usize = SECRET_LEN + 10 + 32;
/// Ciphertext of that plaintext with its 16-byte tag, the most a decoder accepts.
const MAX_SEALED_LEN: usize = MAX_PLAINTEXT_LEN + 16;

#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TwoPartyError {
    #[error("the ciphertext names a key this session does not have")]
    UnknownKey,
    #[error("the ciphertext names a prekey this device does not have")]
    UnknownPrekey,
    #[error("decryption failed")]
    Decryption,
    #[error("malformed plaintext")]
    MalformedPlaintext,
    #[error("too many unanswered messages to this peer ({MAX_PENDING_KEYS})")]
    TooManyPending,
    #[error("invalid public key")]
    InvalidKey,
}

/// The binding of a ciphertext to its group and its two parties.
#[derive(Debug, Clone, Copy)]
pub struct SessionContext<'a> {
    pub group: &'a GroupId,
    pub sender: &'a MemberId,
    pub recipient: &'a MemberId,
}

impl SessionContext<'_> {
    fn info(&self) -> Vec<u8> {
        let mut info = Vec::with_capacity(INFO_LABEL.len() + 96);
        info.extend_from_slice(INFO_LABEL);
        info.extend_from_slice(self.group.as_bytes());
        info.extend_from_slice(self.sender.as_bytes());
        info.extend_from_slice(self.recipient.as_bytes());
        info
    }
}

/// Which of the recipient's keys a ciphertext was encrypted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
enum Target {
    /// The recipient's prekeys: first contact. `one_time` carries the one-time prekey id and
    /// the sender's extra ephemeral public key for it.
    Prekey {
        signed: u32,
        one_time: Option<(u32, [u8; 32])>,
    },
    /// A key the recipient generated, by the recipient's index ("other" in the paper).
    Theirs(u64),
    /// The key pair the sender generated for the recipient last time ("me" in the paper).
    Given,
}

/// What the next message is encrypted to, on the sending side.
#[derive(Clone, Debug, Serialize, Deserialize)]
enum NextKey {
    Prekey {
        signed: PublicPrekey,
        one_time: Option<PublicPrekey>,
    },
    Theirs {
        index: u64,
        key: [u8; 32],
    },
    Given {
        key: [u8; 32],
    },
}

/// A 2SM ciphertext.
#[derive(Clone, PartialEq, Eq)]
pub struct TwoPartyCiphertext {
    target: Target,
    encapped: [u8; 32],
    sealed: Vec<u8>,
}

impl fmt::Debug for TwoPartyCiphertext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TwoPartyCiphertext({:?}, {} bytes)",
            self.target,
            self.encoded_len()
        )
    }
}

impl TwoPartyCiphertext {
    /// Header: one varint, 0 for "given", `2·index + 1` for the recipient's key `index`, with
    /// index 0 standing for its prekeys (then the signed prekey id and the one-time part).
    fn encode_header(target: &Target, w: &mut Writer) {
        match target {
            Target::Given => w.varint(0),
            Target::Theirs(index) => w.varint(index.saturating_mul(2).saturating_add(1)),
            Target::Prekey { signed, one_time } => {
                w.varint(1);
                w.varint(u64::from(*signed));
                match one_time {
                    None => w.u8(0),
                    Some((id, ephemeral)) => {
                        w.u8(1);
                        w.varint(u64::from(*id));
                        w.raw(ephemeral);
                    }
                }
            }
        }
    }

    pub fn encode(&self, w: &mut Writer) {
        Self::encode_header(&self.target, w);
        w.raw(&self.encapped);
        w.bytes(&self.sealed);
    }

    pub fn encoded_len(&self) -> usize {
        let mut w = Writer::new();
        self.encode(&mut w);
        w.len()
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let header = r.varint("2sm header")?;
        let target = if header == 0 {
            Target::Given
        } else if header == 1 {
            let signed = r.bounded("signed prekey id", u64::from(u32::MAX))? as u32;
            let one_time = match r.u8("one-time flag")? {
                0 => None,
                1 => Some((
                    r.bounded("one-time prekey id", u64::from(u32::MAX))? as u32,
                    r.array("one-time ephemeral")?,
                )),
                tag => {
                    return Err(DecodeError::UnknownTag {
                        what: "one-time flag",
                        tag,
                    });
                }
            };
            Target::Prekey { signed, one_time }
        } else if header % 2 == 1 {
            Target::Theirs(header / 2)
        } else {
            return Err(DecodeError::Invalid("2sm header"));
        };
        let encapped = r.array("2sm encapsulated key")?;
        let sealed = r.bytes("2sm ciphertext", MAX_SEALED_LEN)?.to_vec();
        Ok(Self {
            target,
            encapped,
            sealed,
        })
    }
}

/// The result of a receive.
#[derive(Debug)]
pub struct Received {
    pub message: Secret,
    /// A one-time prekey of this device that the message used: delete it on commit.
    pub consumed_one_time: Option<u32>,
}

/// The 2SM state for one peer (either direction).
#[derive(Clone, Serialize, Deserialize)]
pub struct TwoPartySession {
    /// My secret keys by index (from 1) that the peer may still encrypt to.
    my_keys: BTreeMap<u64, Secret>,
    next_index: u64,
    /// The secret the peer generated for me with its last message.
    given_key: Option<Secret>,
    next: NextKey,
}

impl fmt::Debug for TwoPartySession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TwoPartySession")
            .field("pending_keys", &self.my_keys.len())
            .field("next_index", &self.next_index)
            .finish_non_exhaustive()
    }
}

fn private_key(secret: &Secret) -> Result<PrivateKey, TwoPartyError> {
    PrivateKey::from_bytes(secret.expose()).map_err(|_| TwoPartyError::InvalidKey)
}

fn secret_of(key: &PrivateKey) -> Secret {
    let mut bytes = [0u8; SECRET_LEN];
    bytes.copy_from_slice(&key.to_bytes());
    let out = Secret::from_bytes(bytes);
    bytes.zeroize();
    out
}

fn public_bytes(key: &PublicKey) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&key.to_bytes());
    out
}

/// The PSK that makes a first contact depend on the one-time prekey (X3DH's fourth DH).
fn one_time_psk(shared: &[u8; 32]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(None, shared);
    let mut psk = [0u8; 32];
    let _ = hk.expand(ONE_TIME_PSK_LABEL, &mut psk);
    psk
}

fn next_key_ikm(
    export: impl FnOnce(&mut [u8]) -> Result<(), hpke::HpkeError>,
) -> Result<[u8; 32], TwoPartyError> {
    let mut ikm = [0u8; 32];
    export(&mut ikm).map_err(|_| TwoPartyError::Decryption)?;
    Ok(ikm)
}

impl TwoPartySession {
    /// A session whose first message goes to the peer's signed prekey (mixed with its one-time
    /// prekey if given).
    pub fn new(peer_signed_prekey: PublicPrekey, peer_one_time: Option<PublicPrekey>) -> Self {
        Self {
            my_keys: BTreeMap::new(),
            next_index: 1,
            given_key: None,
            next: NextKey::Prekey {
                signed: peer_signed_prekey,
                one_time: peer_one_time,
            },
        }
    }

    pub fn send(
        &mut self,
        context: &SessionContext<'_>,
        message: &Secret,
        rng: &mut impl CryptoRng,
    ) -> Result<TwoPartyCiphertext, TwoPartyError> {
        if self.my_keys.len() >= MAX_PENDING_KEYS {
            return Err(TwoPartyError::TooManyPending);
        }
        let (reply_secret, reply_public) = KemImpl::gen_keypair_with_rng(rng);
        let index = self.next_index;
        let mut plaintext = Writer::with_capacity(MAX_PLAINTEXT_LEN);
        plaintext.raw(message.expose());
        plaintext.varint(index);
        plaintext.raw(&public_bytes(&reply_public));
        let mut plaintext = plaintext.into_bytes();

        let mut psk = None;
        let (target, recipient_key) = match &self.next {
            NextKey::Prekey { signed, one_time } => {
                let one_time = match one_time {
                    Some(prekey) => {
                        let ephemeral = StaticSecret::random_from_rng(rng);
                        let shared = ephemeral.diffie_hellman(&X25519Public::from(prekey.key));
                        psk = Some(one_time_psk(shared.as_bytes()));
                        Some((prekey.id, X25519Public::from(&ephemeral).to_bytes()))
                    }
                    None => None,
                };
                (
                    Target::Prekey {
                        signed: signed.id,
                        one_time,
                    },
                    signed.key,
                )
            }
            NextKey::Theirs { index, key } => (Target::Theirs(*index), *key),
            NextKey::Given { key } => (Target::Given, *key),
        };
        let recipient_key =
            PublicKey::from_bytes(&recipient_key).map_err(|_| TwoPartyError::InvalidKey)?;
        let mut header = Writer::new();
        TwoPartyCiphertext::encode_header(&target, &mut header);
        let info = context.info();
        let mode = match &psk {
            Some(psk) => OpModeS::Psk(
                PskBundle::new(psk, ONE_TIME_PSK_ID).map_err(|_| TwoPartyError::InvalidKey)?,
            ),
            None => OpModeS::Base,
        };
        let (encapped, mut sender_ctx) = hpke::setup_sender_with_rng::<
            ChaCha20Poly1305,
            HkdfSha256,
            KemImpl,
        >(&mode, &recipient_key, &info, rng)
        .map_err(|_| TwoPartyError::InvalidKey)?;
        let sealed = sender_ctx
            .seal(&plaintext, header.as_bytes())
            .map_err(|_| TwoPartyError::Decryption)?;
        plaintext.zeroize();
        let mut ikm = next_key_ikm(|out| sender_ctx.export(NEXT_KEY_LABEL, out))?;
        let (_, given_public) = KemImpl::derive_keypair(&ikm);
        ikm.zeroize();

        self.my_keys.insert(index, secret_of(&reply_secret));
        self.next_index += 1;
        self.next = NextKey::Given {
            key: public_bytes(&given_public),
        };
        let mut encapped_bytes = [0u8; 32];
        encapped_bytes.copy_from_slice(&encapped.to_bytes());
        Ok(TwoPartyCiphertext {
            target,
            encapped: encapped_bytes,
            sealed,
        })
    }

    /// Decrypts a message from the peer. On error the session is unchanged.
    pub fn receive(
        &mut self,
        context: &SessionContext<'_>,
        ciphertext: &TwoPartyCiphertext,
        prekeys: &DevicePrekeys,
    ) -> Result<Received, TwoPartyError> {
        let mut consumed_one_time = None;
        let mut psk = None;
        let secret = match &ciphertext.target {
            Target::Given => self.given_key.as_ref().ok_or(TwoPartyError::UnknownKey)?,
            Target::Theirs(index) => self.my_keys.get(index).ok_or(TwoPartyError::UnknownKey)?,
            Target::Prekey { signed, one_time } => {
                if let Some((id, ephemeral)) = one_time {
                    let one_time_secret = prekeys
                        .one_time_secret(*id)
                        .ok_or(TwoPartyError::UnknownPrekey)?;
                    let shared = StaticSecret::from(*one_time_secret.expose())
                        .diffie_hellman(&X25519Public::from(*ephemeral));
                    psk = Some(one_time_psk(shared.as_bytes()));
                    consumed_one_time = Some(*id);
                }
                prekeys
                    .signed_secret(*signed)
                    .ok_or(TwoPartyError::UnknownPrekey)?
            }
        };
        let key = private_key(secret)?;
        let encapped =
            EncappedKey::from_bytes(&ciphertext.encapped).map_err(|_| TwoPartyError::Decryption)?;
        let mode = match &psk {
            Some(psk) => OpModeR::Psk(
                PskBundle::new(psk, ONE_TIME_PSK_ID).map_err(|_| TwoPartyError::InvalidKey)?,
            ),
            None => OpModeR::Base,
        };
        let mut header = Writer::new();
        TwoPartyCiphertext::encode_header(&ciphertext.target, &mut header);
        let mut receiver_ctx = hpke::setup_receiver::<ChaCha20Poly1305, HkdfSha256, KemImpl>(
            &mode,
            &key,
            &encapped,
            &context.info(),
        )
        .map_err(|_| TwoPartyError::Decryption)?;
        let mut plaintext = receiver_ctx
            .open(&ciphertext.sealed, header.as_bytes())
            .map_err(|_| TwoPartyError::Decryption)?;
        let parsed = (|| {
            let mut r = Reader::new(&plaintext);
            let message: [u8; SECRET_LEN] = r.array("message")?;
            let index = r.varint("index")?;
            let reply_key: [u8; 32] = r.array("reply key")?;
            r.finish()?;
            Ok::<_, DecodeError>((Secret::from_bytes(message), index, reply_key))
        })();
        plaintext.zeroize();
        let (message, their_index, reply_key) =
            parsed.map_err(|_| TwoPartyError::MalformedPlaintext)?;
        let mut ikm = next_key_ikm(|out| receiver_ctx.export(NEXT_KEY_LABEL, out))?;
        let (given_secret, _) = KemImpl::derive_keypair(&ikm);
        ikm.zeroize();

        // Decrypted: now mutate. Keys up to the one used can never be used again.
        if let Target::Theirs(index) = ciphertext.target {
            self.my_keys.retain(|i, _| *i > index);
        }
        self.given_key = Some(secret_of(&given_secret));
        self.next = NextKey::Theirs {
            index: their_index,
            key: reply_key,
        };
        Ok(Received {
            message,
            consumed_one_time,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::SigningKey;
    use proptest::prelude::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    struct Party {
        id: MemberId,
        prekeys: DevicePrekeys,
        identity: SigningKey,
    }

    fn party(rng: &mut ChaCha20Rng) -> Party {
        let identity = SigningKey::generate(rng);
        let prekeys = DevicePrekeys::generate(&identity, 2, rng);
        Party {
            id: MemberId(identity.verifying_key().0),
            prekeys,
            identity,
        }
    }

    fn sessions(
        rng: &mut ChaCha20Rng,
        a: &Party,
        b: &Party,
        one_time: bool,
    ) -> (TwoPartySession, TwoPartySession) {
        let b_bundle = b.prekeys.bundle(
            &b.identity,
            if one_time {
                b.prekeys.one_time_ids().first().copied()
            } else {
                None
            },
        );
        let a_bundle = a.prekeys.bundle(&a.identity, None);
        let _ = rng;
        (
            TwoPartySession::new(b_bundle.signed_prekey, b_bundle.one_time),
            TwoPartySession::new(a_bundle.signed_prekey, None),
        )
    }

    const GROUP: GroupId = GroupId([3; 32]);

    fn ctx<'a>(from: &'a Party, to: &'a Party) -> SessionContext<'a> {
        SessionContext {
            group: &GROUP,
            sender: &from.id,
            recipient: &to.id,
        }
    }

    #[test]
    fn one_direction_in_order_and_one_time_prekey_consumed() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (a, mut b) = (party(&mut rng), party(&mut rng));
        let (mut at_a, mut at_b) = sessions(&mut rng, &a, &b, true);
        for i in 0..5u8 {
            let m = Secret::from_bytes([i; 32]);
            let ct = at_a.send(&ctx(&a, &b), &m, &mut rng).unwrap();
            let got = at_b.receive(&ctx(&a, &b), &ct, &b.prekeys).unwrap();
            assert_eq!(got.message, m);
            if i == 0 {
                let id = got
                    .consumed_one_time
                    .expect("first contact uses the one-time prekey");
                assert!(b.prekeys.remove_one_time(id));
                // A replay of the first contact after the deletion fails.
                let mut fresh =
                    TwoPartySession::new(a.prekeys.bundle(&a.identity, None).signed_prekey, None);
                assert!(fresh.receive(&ctx(&a, &b), &ct, &b.prekeys).is_err());
            } else {
                assert!(got.consumed_one_time.is_none());
            }
        }
    }

    #[test]
    fn interleaved_and_concurrent_first_contact() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (a, b) = (party(&mut rng), party(&mut rng));
        let (mut at_a, mut at_b) = sessions(&mut rng, &a, &b, false);
        // Both send first, concurrently.
        let from_a = at_a
            .send(&ctx(&a, &b), &Secret::from_bytes([1; 32]), &mut rng)
            .unwrap();
        let from_b = at_b
            .send(&ctx(&b, &a), &Secret::from_bytes([2; 32]), &mut rng)
            .unwrap();
        assert_eq!(
            at_b.receive(&ctx(&a, &b), &from_a, &b.prekeys)
                .unwrap()
                .message,
            Secret::from_bytes([1; 32])
        );
        assert_eq!(
            at_a.receive(&ctx(&b, &a), &from_b, &a.prekeys)
                .unwrap()
                .message,
            Secret::from_bytes([2; 32])
        );
        for round in 0..6u8 {
            let (s, r, sp, rp, sess_s, sess_r) = if round % 3 == 0 {
                (&a, &b, &a.prekeys, &b.prekeys, &mut at_a, &mut at_b)
            } else {
                (&b, &a, &b.prekeys, &a.prekeys, &mut at_b, &mut at_a)
            };
            let _ = sp;
            let m1 = Secret::from_bytes([round; 32]);
            let m2 = Secret::from_bytes([round + 100; 32]);
            let c1 = sess_s.send(&ctx(s, r), &m1, &mut rng).unwrap();
            let c2 = sess_s.send(&ctx(s, r), &m2, &mut rng).unwrap();
            assert_eq!(sess_r.receive(&ctx(s, r), &c1, rp).unwrap().message, m1);
            assert_eq!(sess_r.receive(&ctx(s, r), &c2, rp).unwrap().message, m2);
        }
    }

    #[test]
    fn wrong_context_tampering_and_reordering_fail_without_changing_state() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let (a, b, c) = (party(&mut rng), party(&mut rng), party(&mut rng));
        let (mut at_a, mut at_b) = sessions(&mut rng, &a, &b, false);
        let c1 = at_a
            .send(&ctx(&a, &b), &Secret::from_bytes([1; 32]), &mut rng)
            .unwrap();
        let c2 = at_a
            .send(&ctx(&a, &b), &Secret::from_bytes([2; 32]), &mut rng)
            .unwrap();
        let other_group = GroupId([4; 32]);
        let wrong = SessionContext {
            group: &other_group,
            sender: &a.id,
            recipient: &b.id,
        };
        assert!(at_b.receive(&wrong, &c1, &b.prekeys).is_err());
        assert!(at_b.receive(&ctx(&c, &b), &c1, &b.prekeys).is_err());
        let mut tampered = c1.clone();
        tampered.sealed[3] ^= 1;
        assert!(at_b.receive(&ctx(&a, &b), &tampered, &b.prekeys).is_err());
        // Out of order: the second message needs the key the first one carries.
        assert!(at_b.receive(&ctx(&a, &b), &c2, &b.prekeys).is_err());
        assert_eq!(
            at_b.receive(&ctx(&a, &b), &c1, &b.prekeys).unwrap().message,
            Secret::from_bytes([1; 32])
        );
        assert_eq!(
            at_b.receive(&ctx(&a, &b), &c2, &b.prekeys).unwrap().message,
            Secret::from_bytes([2; 32])
        );
    }

    #[test]
    fn forward_secrecy_a_later_state_cannot_decrypt_an_earlier_message() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let (a, b) = (party(&mut rng), party(&mut rng));
        let (mut at_a, mut at_b) = sessions(&mut rng, &a, &b, false);
        let c1 = at_a
            .send(&ctx(&a, &b), &Secret::from_bytes([1; 32]), &mut rng)
            .unwrap();
        at_b.receive(&ctx(&a, &b), &c1, &b.prekeys).unwrap();
        let reply = at_b
            .send(&ctx(&b, &a), &Secret::from_bytes([5; 32]), &mut rng)
            .unwrap();
        at_a.receive(&ctx(&b, &a), &reply, &a.prekeys).unwrap();
        let c2 = at_a
            .send(&ctx(&a, &b), &Secret::from_bytes([2; 32]), &mut rng)
            .unwrap();
        at_b.receive(&ctx(&a, &b), &c2, &b.prekeys).unwrap();
        let mut snapshot = at_b.clone();
        assert!(snapshot.receive(&ctx(&a, &b), &c2, &b.prekeys).is_err());
    }

    #[test]
    fn ciphertext_sizes() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let (a, b) = (party(&mut rng), party(&mut rng));
        let (mut at_a, mut at_b) = sessions(&mut rng, &a, &b, true);
        let first = at_a
            .send(&ctx(&a, &b), &Secret::from_bytes([1; 32]), &mut rng)
            .unwrap();
        at_b.receive(&ctx(&a, &b), &first, &b.prekeys).unwrap();
        let next = at_a
            .send(&ctx(&a, &b), &Secret::from_bytes([1; 32]), &mut rng)
            .unwrap();
        assert!(next.encoded_len() <= 115, "{} bytes", next.encoded_len());
        assert!(first.encoded_len() <= next.encoded_len() + 40);
    }

    proptest! {
        #[test]
        fn decode_encode_round_trip(message: [u8; 32], seed: u64) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let (a, b) = (party(&mut rng), party(&mut rng));
            let (mut at_a, _) = sessions(&mut rng, &a, &b, seed % 2 == 0);
            let ct = at_a.send(&ctx(&a, &b), &Secret::from_bytes(message), &mut rng).unwrap();
            let mut w = Writer::new();
            ct.encode(&mut w);
            let bytes = w.into_bytes();
            let mut r = Reader::new(&bytes);
            prop_assert_eq!(TwoPartyCiphertext::decode(&mut r).unwrap(), ct);
            prop_assert!(r.finish().is_ok());
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes: Vec<u8>) {
            let _ = TwoPartyCiphertext::decode(&mut Reader::new(&bytes));
        }
    }
}
