//! Control messages of the DCGKA (spec §5) and their encoding.
//!
//! Direct messages (2SM ciphertexts) ride inside the control message, addressed by the
//! recipient's short id (never by position, spec §12.5), so that one stored envelope is all a
//! late member needs. The acknowledged operation travels in the envelope's header.

use std::collections::BTreeMap;

use crate::codec::{DecodeError, Reader, Writer};
use crate::identity::{PrekeyBundle, VerifyingKey};
use crate::ids::{MemberId, SHORT_ID_LEN, ShortId};
use crate::membership::{History, MAX_MEMBERS_EVER};
use crate::two_party::TwoPartyCiphertext;

/// 2SM ciphertexts by recipient.
pub type DirectMessages = BTreeMap<ShortId, TwoPartyCiphertext>;

/// What the DCGKA puts in a welcome; the group adds its delivery clock and signing keys.
#[derive(Clone, Debug)]
pub struct WelcomeCore {
    /// The adder's membership history including the add itself.
    pub history: History,
    /// Signed prekeys of every member ever named.
    pub directory: Vec<PrekeyBundle>,
    /// The adder's ratchet before the add, for the new member only.
    pub ratchet: TwoPartyCiphertext,
}

/// Everything a new member needs to start: rides in the Add, for the added member only.
#[derive(Clone, Debug)]
pub struct Welcome {
    pub core: WelcomeCore,
    /// The adder's delivery clock right after its add: the new member skips what it covers.
    pub clock: BTreeMap<MemberId, u64>,
    /// Every member's current signature verification key.
    pub verifying_keys: BTreeMap<MemberId, VerifyingKey>,
}

#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Control {
    /// Starts a group; `members` are the prekey bundles of everyone, the creator included.
    Create {
        members: Vec<PrekeyBundle>,
        seeds: DirectMessages,
    },
    Update {
        seeds: DirectMessages,
    },
    Remove {
        member: MemberId,
        seeds: DirectMessages,
    },
    /// `welcome` is always present on the wire; `None` only while the group completes it.
    Add {
        member: PrekeyBundle,
        welcome: Option<Box<Welcome>>,
    },
    Ack {
        forwards: DirectMessages,
    },
    AddAck {
        ratchet: Option<TwoPartyCiphertext>,
    },
}

const TAG_CREATE: u8 = 0;
const TAG_UPDATE: u8 = 1;
const TAG_REMOVE: u8 = 2;
const TAG_ADD: u8 = 3;
const TAG_ACK: u8 = 4;
const TAG_ADD_ACK: u8 = 5;

/// Smallest possible encoded 2SM ciphertext, to bound counts against the input length.
const MIN_CIPHERTEXT_LEN: usize = 32;

impl Control {
    /// Whether this message rotates the sender's signing key (spec §10: create, add, remove
    /// and update carry a fresh verification key; acks do not).
    pub fn rotates_signing_key(&self) -> bool {
        matches!(
            self,
            Control::Create { .. }
                | Control::Update { .. }
                | Control::Remove { .. }
                | Control::Add { .. }
        )
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Control::Create { .. } => "create",
            Control::Update { .. } => "update",
            Control::Remove { .. } => "remove",
            Control::Add { .. } => "add",
            Control::Ack { .. } => "ack",
            Control::AddAck { .. } => "add-ack",
        }
    }

    pub fn encode(&self, w: &mut Writer) {
        match self {
            Control::Create { members, seeds } => {
                w.u8(TAG_CREATE);
                w.varint(members.len() as u64);
                for bundle in members {
                    bundle.encode(w);
                }
                encode_direct(w, seeds);
            }
            Control::Update { seeds } => {
                w.u8(TAG_UPDATE);
                encode_direct(w, seeds);
            }
            Control::Remove { member, seeds } => {
                w.u8(TAG_REMOVE);
                w.raw(member.as_bytes());
                encode_direct(w, seeds);
            }
            Control::Add { member, welcome } => {
                w.u8(TAG_ADD);
                member.encode(w);
                match welcome {
                    Some(welcome) => {
                        w.u8(1);
                        encode_welcome(w, welcome);
                    }
                    None => w.u8(0),
                }
            }
            Control::Ack { forwards } => {
                w.u8(TAG_ACK);
                encode_direct(w, forwards);
            }
            Control::AddAck { ratchet } => {
                w.u8(TAG_ADD_ACK);
                match ratchet {
                    Some(ct) => {
                        w.u8(1);
                        ct.encode(w);
                    }
                    None => w.u8(0),
                }
            }
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let control = match r.u8("control tag")? {
            TAG_CREATE => {
                let n = r.count("create members", MAX_MEMBERS_EVER, 32)?;
                let mut members = Vec::with_capacity(n);
                for _ in 0..n {
                    members.push(PrekeyBundle::decode(r)?);
                }
                Control::Create {
                    members,
                    seeds: decode_direct(r)?,
                }
            }
            TAG_UPDATE => Control::Update {
                seeds: decode_direct(r)?,
            },
            TAG_REMOVE => Control::Remove {
                member: MemberId(r.array("removed member")?),
                seeds: decode_direct(r)?,
            },
            TAG_ADD => {
                let member = PrekeyBundle::decode(r)?;
                let welcome = match r.u8("welcome flag")? {
                    0 => None,
                    1 => Some(Box::new(decode_welcome(r)?)),
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "welcome flag",
                            tag,
                        });
                    }
                };
                Control::Add { member, welcome }
            }
            TAG_ACK => Control::Ack {
                forwards: decode_direct(r)?,
            },
            TAG_ADD_ACK => Control::AddAck {
                ratchet: match r.u8("ratchet flag")? {
                    0 => None,
                    1 => Some(TwoPartyCiphertext::decode(r)?),
                    tag => {
                        return Err(DecodeError::UnknownTag {
                            what: "ratchet flag",
                            tag,
                        });
                    }
                },
            },
            tag => {
                return Err(DecodeError::UnknownTag {
                    what: "control",
                    tag,
                });
            }
        };
        Ok(control)
    }
}

fn encode_direct(w: &mut Writer, messages: &DirectMessages) {
    w.varint(messages.len() as u64);
    for (recipient, ct) in messages {
        w.raw(&recipient.0);
        ct.encode(w);
    }
}

fn decode_direct(r: &mut Reader<'_>) -> Result<DirectMessages, DecodeError> {
    let n = r.count(
        "direct messages",
        MAX_MEMBERS_EVER,
        SHORT_ID_LEN + MIN_CIPHERTEXT_LEN,
    )?;
    let mut out = DirectMessages::new();
    for _ in 0..n {
        let recipient = ShortId(r.array("recipient")?);
        let ct = TwoPartyCiphertext::decode(r)?;
        if out.insert(recipient, ct).is_some() {
            return Err(DecodeError::Invalid(
                "two direct messages for one recipient",
            ));
        }
    }
    Ok(out)
}

fn encode_welcome(w: &mut Writer, welcome: &Welcome) {
    welcome.core.history.encode(w);
    w.varint(welcome.core.directory.len() as u64);
    for bundle in &welcome.core.directory {
        bundle.encode(w);
    }
    welcome.core.ratchet.encode(w);
    w.varint(welcome.clock.len() as u64);
    for (member, seq) in &welcome.clock {
        w.raw(member.as_bytes());
        w.varint(*seq);
    }
    w.varint(welcome.verifying_keys.len() as u64);
    for (member, key) in &welcome.verifying_keys {
        w.raw(member.as_bytes());
        w.raw(&key.0);
    }
}

fn decode_welcome(r: &mut Reader<'_>) -> Result<Welcome, DecodeError> {
    let history = History::decode(r)?;
    let n = r.count("directory", MAX_MEMBERS_EVER, 32)?;
    let mut directory = Vec::with_capacity(n);
    for _ in 0..n {
        directory.push(PrekeyBundle::decode(r)?);
    }
    let ratchet = TwoPartyCiphertext::decode(r)?;
    let n = r.count("clock", MAX_MEMBERS_EVER, 33)?;
    let mut clock = BTreeMap::new();
    for _ in 0..n {
        clock.insert(MemberId(r.array("clock member")?), r.varint("clock seq")?);
    }
    let n = r.count("verifying keys", MAX_MEMBERS_EVER, 64)?;
    let mut verifying_keys = BTreeMap::new();
    for _ in 0..n {
        verifying_keys.insert(
            MemberId(r.array("key member")?),
            VerifyingKey(r.array("verifying key")?),
        );
    }
    Ok(Welcome {
        core: WelcomeCore {
            history,
            directory,
            ratchet,
        },
        clock,
        verifying_keys,
    })
}
