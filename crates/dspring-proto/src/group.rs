//! The public state machine of one group: create, add, remove, update, send and receive, each
//! returning a [`Staged`] result (the new state, what to broadcast, what happened) that the
//! caller persists atomically before acting on it.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::buffer::{DeliveryBuffer, Insert};
use crate::codec::{DecodeError, Reader, Writer};
use crate::control::{Control, Welcome};
use crate::dcgka::{Dcgka, Outcome, ProcessError, Reply};
use crate::envelope::{self, Envelope, MAX_PLAINTEXT_LEN, Position, Unverified};
use crate::identity::{
    DevicePrekeys, ParsedKey, PrekeyBundle, SignatureError, SigningKey, VerifyingKey,
};
use crate::ids::{GroupId, MemberId, OpId, ShortId};
use crate::message_ratchet::SenderChains;
use crate::secret::Secret;

/// Version of the serialized group state (whole, [`Group::to_bytes`]); bumped on any change
/// of its layout.
pub const STATE_FORMAT_VERSION: u16 = 1;

/// Version of the stored state's base part ([`Group::base_bytes`]): everything but the
/// per-sender chains. Distinct from [`STATE_FORMAT_VERSION`] so that a reader can tell the
/// two apart by their first bytes.
pub const BASE_FORMAT_VERSION: u16 = 2;

/// A device: its identity key and prekeys, lent to group operations that need them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Device {
    pub identity: SigningKey,
    pub prekeys: DevicePrekeys,
}

impl Device {
    pub fn generate(one_time_prekeys: u32, rng: &mut impl CryptoRng) -> Self {
        let identity = SigningKey::generate(rng);
        let prekeys = DevicePrekeys::generate(&identity, one_time_prekeys, rng);
        Self { identity, prekeys }
    }

    pub fn id(&self) -> MemberId {
        MemberId(self.identity.verifying_key().0)
    }

    /// A bundle for someone who wants to add me, with the one-time prekey `one_time` if given.
    pub fn bundle(&self, one_time: Option<u32>) -> PrekeyBundle {
        self.prekeys.bundle(&self.identity, one_time)
    }

    /// Deletes one-time prekeys that a committed [`Staged`] reported as used.
    pub fn consume_prekeys(&mut self, ids: &[u32]) {
        for id in ids {
            self.prekeys.remove_one_time(*id);
        }
    }
}

/// Something that happened, for the application.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Event {
    /// A decrypted application message.
    Message {
        sender: MemberId,
        epoch: u64,
        index: u64,
        plaintext: Vec<u8>,
    },
    /// My own application message, as sent (for the local conversation view).
    Sent {
        epoch: u64,
        index: u64,
        plaintext: Vec<u8>,
    },
    /// I am now a member (through a create or a welcome).
    Joined {
        by: MemberId,
    },
    MemberAdded {
        by: MemberId,
        member: MemberId,
    },
    MemberRemoved {
        by: MemberId,
        member: MemberId,
    },
    /// A member refreshed its keys.
    KeyUpdated {
        member: MemberId,
    },
    /// I was removed (or my add was cancelled): the group state is wiped.
    RemovedMe {
        by: MemberId,
    },
    /// An application message this member may not read: sent before it joined, or in an
    /// epoch it was not part of. Not an error: honest concurrency produces these.
    Unreadable {
        sender: MemberId,
        epoch: u64,
        index: u64,
    },
    /// A buffered envelope that failed when its turn came; the sender's later control
    /// messages stay blocked behind it.
    Rejected {
        sender: ShortId,
        reason: String,
    },
    /// A welcome from someone who is not a contact, held for the user to accept or decline.
    /// The group core never produces this: the node logs it when it holds the welcome.
    Invited {
        by: MemberId,
    },
}

/// An envelope to hand to the network.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub bytes: Vec<u8>,
    /// Also deliver directly to this peer: it is being added and does not follow the group yet.
    pub welcome_for: Option<MemberId>,
}

/// The result of an operation: persist `group`, `outbox` and the prekey deletions in one
/// transaction, then send the outbox and show the events.
#[derive(Debug)]
pub struct Staged {
    pub group: Group,
    /// Which parts of the state this step changed, for a store that keeps them apart
    /// ([`Group::base_bytes`], [`Group::chain_bytes`]).
    pub changes: StateChanges,
    pub outbox: Vec<Outgoing>,
    pub events: Vec<Event>,
    /// One-time prekeys of this device used by this step: delete them with the commit.
    pub consumed_prekeys: Vec<u32>,
    /// Envelopes from others that this step verified and delivered (in delivery order), as
    /// the network carried them: the group's log, which members and mailboxes serve to
    /// others. Envelopes still waiting in the delivery buffer are not here yet. A replay is
    /// left out, except of a message this member cannot read (with no key it cannot tell):
    /// deduplicate by content.
    pub delivered: Vec<Vec<u8>>,
}

/// The parts of a group's state a step changed. A message changes one sender's chains and
/// nothing else, so a store that keeps the parts apart writes a few hundred bytes per message
/// instead of the whole state (tens of KiB in a large group).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateChanges {
    /// Every part may have changed (a new state): write the base and every chain, and drop
    /// stored chains the state no longer has.
    pub all: bool,
    /// The base part changed.
    pub base: bool,
    /// Senders whose chains changed (or went: write those the state has, drop the others).
    pub chains: BTreeSet<MemberId>,
}

impl StateChanges {
    /// Everything: the safe answer when the previous state is not known.
    pub fn all() -> Self {
        Self {
            all: true,
            base: true,
            chains: BTreeSet::new(),
        }
    }

    /// Nothing changed.
    pub fn none() -> Self {
        Self {
            all: false,
            base: false,
            chains: BTreeSet::new(),
        }
    }

    /// The changes of two steps, one after the other.
    pub fn merge(&mut self, later: &StateChanges) {
        self.all |= later.all;
        self.base |= later.base;
        self.chains.extend(later.chains.iter().copied());
    }

    pub fn is_empty(&self) -> bool {
        !self.all && !self.base && self.chains.is_empty()
    }
}

/// Misuse of the API: the caller asked for something the group cannot do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GroupError {
    #[error("this device is no longer a member of the group")]
    NotActive,
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    #[error("prekey bundle of {0} has a bad signature")]
    BadBundle(MemberId),
    #[error("plaintext of {0} bytes exceeds the limit of {MAX_PLAINTEXT_LEN}")]
    PlaintextTooLarge(usize),
    #[error("no sending key: {0}")]
    Ratchet(String),
    #[error(transparent)]
    Protocol(#[from] ProcessError),
}

/// Why an incoming envelope was refused. Everything but `NotActive` is the sender's doing.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReceiveError {
    #[error("malformed envelope: {0}")]
    Malformed(#[from] DecodeError),
    #[error("bad signature")]
    BadSignature(#[from] SignatureError),
    #[error("sender is not a member of this group")]
    NotAMember,
    #[error("envelope does not fit the sender's stream: {0}")]
    OutOfOrder(&'static str),
    #[error("delivery buffer is full; fetch again later")]
    BufferFull,
    #[error("message could not be decrypted: {0}")]
    Undecryptable(String),
    #[error("protocol violation: {0}")]
    Protocol(#[from] ProcessError),
    #[error("this device is no longer a member of the group")]
    NotActive,
    #[error("not a welcome for this device")]
    NotMyWelcome,
}

/// Whether a verified envelope was new or a replay of one already delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    New,
    Replay,
}

/// A member's state. The parts sit behind `Arc`s so that staging a copy costs reference counts,
/// and an operation copies only what it changes (a message: one sender's chains).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Active {
    dcgka: Arc<Dcgka>,
    signing_key: SigningKey,
    verifying_keys: Arc<KeyHistory>,
    /// Delivered control seq per sender.
    clock: Arc<BTreeMap<MemberId, u64>>,
    /// Per-sender chains behind `Arc`s, so that staging a copy of the state is cheap.
    chains: BTreeMap<MemberId, Arc<SenderChains>>,
    buffer: Arc<DeliveryBuffer>,
}

/// The state of one group at one member.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Group {
    id: GroupId,
    me: MemberId,
    /// `None` once this member was removed: everything secret is gone.
    active: Option<Box<Active>>,
}

/// The base part as [`Group::base_bytes`] writes it; field order and types match
/// [`BaseOwned`], which reads it.
#[derive(Serialize)]
struct BaseRef<'a> {
    id: &'a GroupId,
    me: &'a MemberId,
    active: Option<ActiveBaseRef<'a>>,
}

#[derive(Serialize)]
struct ActiveBaseRef<'a> {
    dcgka: &'a Arc<Dcgka>,
    signing_key: &'a SigningKey,
    verifying_keys: &'a Arc<KeyHistory>,
    clock: &'a Arc<BTreeMap<MemberId, u64>>,
    buffer: &'a Arc<DeliveryBuffer>,
}

#[derive(Deserialize)]
struct BaseOwned {
    id: GroupId,
    me: MemberId,
    active: Option<ActiveBaseOwned>,
}

#[derive(Deserialize)]
struct ActiveBaseOwned {
    dcgka: Arc<Dcgka>,
    signing_key: SigningKey,
    verifying_keys: Arc<KeyHistory>,
    clock: Arc<BTreeMap<MemberId, u64>>,
    buffer: Arc<DeliveryBuffer>,
}

impl Group {
    pub fn id(&self) -> GroupId {
        self.id
    }

    pub fn me(&self) -> MemberId {
        self.me
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The current members as this member sees them.
    pub fn members(&self) -> BTreeSet<MemberId> {
        self.active
            .as_ref()
            .map(|a| a.dcgka.members().clone())
            .unwrap_or_default()
    }

    /// Whether `sender` names someone this member knows in the group (a member now, or one
    /// added or removed before). A network layer can refuse to forward, or to buffer,
    /// envelopes of anyone else: a newcomer's envelopes reach this member by sync once it
    /// knows of the newcomer.
    pub fn knows_sender(&self, sender: ShortId) -> bool {
        self.active
            .as_ref()
            .is_some_and(|a| a.resolve(sender).is_some())
    }

    /// Envelopes waiting in the delivery buffer for what they depend on.
    pub fn buffered(&self) -> usize {
        self.active.as_ref().map_or(0, |a| a.buffer.len())
    }

    /// Member secrets not yet consumed (they are deleted on use; exposed for tests).
    pub fn pending_member_secrets(&self) -> usize {
        self.active
            .as_ref()
            .map_or(0, |a| a.dcgka.pending_member_secrets())
    }

    /// Serialized state with its format version.
    pub fn to_bytes(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut out = STATE_FORMAT_VERSION.to_be_bytes().to_vec();
        out.extend(postcard::to_allocvec(self)?);
        Ok(out)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (version, rest) = bytes
            .split_first_chunk::<2>()
            .ok_or(DecodeError::UnexpectedEnd("state version"))?;
        let version = u16::from_be_bytes(*version);
        if version != STATE_FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version.min(255) as u8));
        }
        postcard::from_bytes(rest).map_err(|_| DecodeError::Invalid("group state"))
    }

    /// The stored state's base part: everything but the per-sender chains, with its format
    /// version. Together with every [`Group::chain_bytes`] it is the whole state.
    pub fn base_bytes(&self) -> Result<Vec<u8>, postcard::Error> {
        let base = BaseRef {
            id: &self.id,
            me: &self.me,
            active: self.active.as_deref().map(|a| ActiveBaseRef {
                dcgka: &a.dcgka,
                signing_key: &a.signing_key,
                verifying_keys: &a.verifying_keys,
                clock: &a.clock,
                buffer: &a.buffer,
            }),
        };
        let mut out = BASE_FORMAT_VERSION.to_be_bytes().to_vec();
        out.extend(postcard::to_allocvec(&base)?);
        Ok(out)
    }

    /// The senders whose chains this state holds.
    pub fn chain_senders(&self) -> Vec<MemberId> {
        self.active
            .as_ref()
            .map(|a| a.chains.keys().copied().collect())
            .unwrap_or_default()
    }

    /// One sender's chains, serialized; `None` if the state holds none for it.
    pub fn chain_bytes(&self, sender: &MemberId) -> Option<Result<Vec<u8>, postcard::Error>> {
        let chains = self.active.as_ref()?.chains.get(sender)?;
        Some(postcard::to_allocvec(chains.as_ref()))
    }

    /// The state from its base part and its chains (as [`Group::base_bytes`] and
    /// [`Group::chain_bytes`] made them).
    pub fn from_parts<B: AsRef<[u8]>>(
        base: &[u8],
        chains: impl IntoIterator<Item = (MemberId, B)>,
    ) -> Result<Self, DecodeError> {
        let (version, rest) = base
            .split_first_chunk::<2>()
            .ok_or(DecodeError::UnexpectedEnd("state version"))?;
        let version = u16::from_be_bytes(*version);
        if version != BASE_FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion(version.min(255) as u8));
        }
        let base: BaseOwned =
            postcard::from_bytes(rest).map_err(|_| DecodeError::Invalid("group state"))?;
        let mut parsed = BTreeMap::new();
        for (sender, bytes) in chains {
            let chain: SenderChains = postcard::from_bytes(bytes.as_ref())
                .map_err(|_| DecodeError::Invalid("sender chains"))?;
            parsed.insert(sender, Arc::new(chain));
        }
        let active = match base.active {
            Some(a) => Some(Box::new(Active {
                dcgka: a.dcgka,
                signing_key: a.signing_key,
                verifying_keys: a.verifying_keys,
                clock: a.clock,
                chains: parsed,
                buffer: a.buffer,
            })),
            // A removed member keeps nothing secret: there are no chains to restore.
            None if parsed.is_empty() => None,
            None => return Err(DecodeError::Invalid("chains of an inactive group")),
        };
        Ok(Group {
            id: base.id,
            me: base.me,
            active,
        })
    }

    /// What changed from `before` (the state this one was derived from) to this one. Parts
    /// are behind `Arc`s that an operation copies before changing (`Arc::make_mut` on a
    /// shared pointer), so an unchanged part is the same allocation.
    fn changes_from(&self, before: &Group) -> StateChanges {
        let (Some(now), Some(then)) = (self.active.as_deref(), before.active.as_deref()) else {
            return if self.active.is_none() && before.active.is_none() {
                StateChanges::none()
            } else {
                StateChanges::all()
            };
        };
        // The signing key is set when the state starts and never changes.
        let base = !Arc::ptr_eq(&now.dcgka, &then.dcgka)
            || !Arc::ptr_eq(&now.verifying_keys, &then.verifying_keys)
            || !Arc::ptr_eq(&now.clock, &then.clock)
            || !Arc::ptr_eq(&now.buffer, &then.buffer);
        let mut chains: BTreeSet<MemberId> = now
            .chains
            .iter()
            .filter(|(sender, chain)| {
                then.chains
                    .get(sender)
                    .is_none_or(|old| !Arc::ptr_eq(chain, old))
            })
            .map(|(sender, _)| *sender)
            .collect();
        chains.extend(
            then.chains
                .keys()
                .filter(|sender| !now.chains.contains_key(sender)),
        );
        StateChanges {
            all: false,
            base,
            chains,
        }
    }

    /// A member's state at its start (create or join).
    fn started(
        id: GroupId,
        device: &Device,
        dcgka: Dcgka,
        verifying_keys: KeyHistory,
        clock: BTreeMap<MemberId, u64>,
        chains: BTreeMap<MemberId, Arc<SenderChains>>,
    ) -> Group {
        let active = Active {
            dcgka: Arc::new(dcgka),
            signing_key: device.identity.clone(),
            verifying_keys: Arc::new(verifying_keys),
            clock: Arc::new(clock),
            chains,
            buffer: Arc::default(),
        };
        Group {
            id,
            me: device.id(),
            active: Some(Box::new(active)),
        }
    }

    /// An inactive copy of the identity of this group, to stand in until a result is ready.
    fn shell(&self) -> Group {
        Group {
            id: self.id,
            me: self.me,
            active: None,
        }
    }

    fn active_mut(&mut self) -> Result<&mut Active, GroupError> {
        self.active.as_deref_mut().ok_or(GroupError::NotActive)
    }

    // ----- local operations ------------------------------------------------------------

    /// Creates a group of this device and the owners of `others` (verified here).
    pub fn create(
        device: &Device,
        id: GroupId,
        others: &[PrekeyBundle],
        rng: &mut impl CryptoRng,
    ) -> Result<Staged, GroupError> {
        for bundle in others {
            bundle
                .verify()
                .map_err(|_| GroupError::BadBundle(bundle.identity))?;
        }
        let me = device.id();
        let (dcgka, reply, update) = Dcgka::create(me, id, device.bundle(None), others, rng)?;
        let mut verifying_keys = KeyHistory::default();
        let mut clock = BTreeMap::new();
        for member in dcgka.members() {
            verifying_keys.set(*member, 0, VerifyingKey(member.0));
            clock.insert(*member, 0);
        }
        let mut group = Group::started(id, device, dcgka, verifying_keys, clock, BTreeMap::new());
        let mut staged = Staged::empty(group.shell());
        group.send_replies(vec![reply], vec![(1, update)], None, None, &mut staged, rng)?;
        staged.group = group;
        staged.events.push(Event::Joined { by: me });
        Ok(staged)
    }

    /// Fresh keys for me (post-compromise security).
    pub fn update(&self, rng: &mut impl CryptoRng) -> Result<Staged, GroupError> {
        let event = Event::KeyUpdated { member: self.me };
        self.stage_local(rng, None, event, |active, rng| {
            Ok(active.dcgka_mut().update(rng)?)
        })
    }

    pub fn remove(&self, member: MemberId, rng: &mut impl CryptoRng) -> Result<Staged, GroupError> {
        let event = Event::MemberRemoved {
            by: self.me,
            member,
        };
        self.stage_local(rng, None, event, |active, rng| {
            Ok(active.dcgka_mut().remove(member, rng)?)
        })
    }

    /// Adds the owner of `bundle` (verified here). The Add carries the welcome; it goes to the
    /// group and directly to the new member.
    pub fn add(
        &self,
        device: &Device,
        bundle: &PrekeyBundle,
        rng: &mut impl CryptoRng,
    ) -> Result<Staged, GroupError> {
        bundle
            .verify()
            .map_err(|_| GroupError::BadBundle(bundle.identity))?;
        let member = bundle.identity;
        let event = Event::MemberAdded {
            by: self.me,
            member,
        };
        let welcome = Some((member, &device.identity));
        self.stage_local(rng, welcome, event, |active, rng| {
            let (mut reply, core, update) = active.dcgka_mut().add(bundle, rng)?;
            active.keys_mut().set(member, 0, VerifyingKey(member.0));
            active.clock_mut().insert(member, 0);
            if let Control::Add { welcome, .. } = &mut reply.control {
                // Clock and keys are filled in by `send_replies` once the new signing key exists.
                *welcome = Some(Box::new(Welcome {
                    core,
                    clock: BTreeMap::new(),
                    verifying_keys: BTreeMap::new(),
                }));
            }
            Ok((reply, update))
        })
    }

    /// Runs one of my own operations on a copy of the state and stages the result. `welcome`
    /// names the member an Add is for and the identity key that signs its welcome.
    fn stage_local<R: CryptoRng>(
        &self,
        rng: &mut R,
        welcome: Option<(MemberId, &SigningKey)>,
        event: Event,
        operation: impl FnOnce(&mut Active, &mut R) -> Result<(Reply, Secret), GroupError>,
    ) -> Result<Staged, GroupError> {
        let mut group = self.clone();
        let (reply, update) = operation(group.active_mut()?, rng)?;
        let seq = reply.seq;
        let mut staged = Staged::empty(self.shell());
        group.send_replies(
            vec![reply],
            vec![(seq, update)],
            welcome.map(|(member, _)| member),
            welcome.map(|(_, identity)| identity),
            &mut staged,
            rng,
        )?;
        staged.events.push(event);
        staged.changes = group.changes_from(self);
        staged.group = group;
        Ok(staged)
    }

    /// Encrypts an application message to the current members.
    /// Needs no randomness: the key and nonce come from the sender's chain.
    pub fn send(&self, plaintext: &[u8]) -> Result<Staged, GroupError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(GroupError::PlaintextTooLarge(plaintext.len()));
        }
        let mut group = self.clone();
        let me = self.me;
        let id = self.id;
        let active = group.active_mut()?;
        let chains = Arc::make_mut(active.chains.entry(me).or_default());
        let (epoch, index, key) = chains
            .next_sending_key()
            .map_err(|e| GroupError::Ratchet(e.to_string()))?;
        let bytes = envelope::seal_application(&id, &me, &active.signing_key, epoch, index, |ad| {
            key.seal(ad, plaintext)
        });
        let mut staged = Staged::empty(self.shell());
        staged.outbox.push(Outgoing {
            bytes,
            welcome_for: None,
        });
        staged.events.push(Event::Sent {
            epoch,
            index,
            plaintext: plaintext.to_vec(),
        });
        staged.changes = group.changes_from(self);
        staged.group = group;
        Ok(staged)
    }

    // ----- joining ----------------------------------------------------------------------

    /// Starts this device's state from the envelope that made it a member: the group's Create
    /// (for an initial member) or an Add carrying its welcome.
    pub fn join(
        device: &Device,
        id: GroupId,
        bytes: Vec<u8>,
        rng: &mut impl CryptoRng,
    ) -> Result<Staged, ReceiveError> {
        let unverified = Unverified::<Envelope>::parse(bytes)?;
        let Position::Control { seq, rotate, .. } = unverified.position().clone() else {
            return Err(ReceiveError::NotMyWelcome);
        };
        let control = Control::decode(&mut Reader::new(unverified.unverified_payload()))?;
        let me = device.id();
        let sender_short = unverified.sender();
        let welcome_bytes = unverified.bytes().to_vec();
        let started = match control {
            Control::Create { members, seeds } => {
                let creator = members
                    .iter()
                    .find(|b| b.identity.short() == sender_short)
                    .ok_or(ReceiveError::NotAMember)?
                    .identity;
                for bundle in &members {
                    bundle.verify().map_err(|_| ReceiveError::NotAMember)?;
                }
                let creator_key = ParsedKey::parse(VerifyingKey(creator.0))?;
                let envelope = unverified.verify(&id, &creator_key)?;
                let _ = envelope;
                let op = OpId {
                    sender: creator,
                    seq,
                };
                let (dcgka, outcome) =
                    Dcgka::from_create(me, id, op, &members, &seeds, &device.prekeys, rng)?;
                let mut verifying_keys = KeyHistory::default();
                for member in dcgka.members() {
                    verifying_keys.set(*member, 0, VerifyingKey(member.0));
                }
                if let Some(key) = rotate {
                    verifying_keys.set(creator, seq, key);
                }
                let mut clock: BTreeMap<MemberId, u64> =
                    dcgka.members().iter().map(|m| (*m, 0)).collect();
                clock.insert(creator, seq);
                Self::start(device, id, dcgka, verifying_keys, clock, op, outcome, rng)
            }
            Control::Add {
                member,
                welcome: Some(welcome),
            } => {
                if member.identity != me {
                    return Err(ReceiveError::NotMyWelcome);
                }
                let adder = welcome
                    .core
                    .directory
                    .iter()
                    .find(|b| b.identity.short() == sender_short)
                    .ok_or(ReceiveError::NotAMember)?
                    .identity;
                unverified.verify_identity(&id, &VerifyingKey(adder.0))?;
                let op = OpId { sender: adder, seq };
                let (dcgka, outcome) = Dcgka::join(me, id, op, &welcome.core, &device.prekeys)?;
                let mut clock = welcome.clock.clone();
                clock.insert(adder, seq);
                clock.insert(me, 0);
                // Each key is known valid from the adder's clock for that member on.
                let mut verifying_keys = KeyHistory::default();
                for (member, key) in &welcome.verifying_keys {
                    let from = clock.get(member).copied().unwrap_or(0);
                    verifying_keys.set(*member, from, *key);
                }
                verifying_keys.set(me, 0, VerifyingKey(me.0));
                Self::start(device, id, dcgka, verifying_keys, clock, op, outcome, rng)
            }
            _ => Err(ReceiveError::NotMyWelcome),
        };
        let mut staged = started?;
        staged.delivered.insert(0, welcome_bytes);
        Ok(staged)
    }

    #[allow(clippy::too_many_arguments)]
    fn start(
        device: &Device,
        id: GroupId,
        dcgka: Dcgka,
        verifying_keys: KeyHistory,
        clock: BTreeMap<MemberId, u64>,
        op: OpId,
        outcome: Outcome,
        rng: &mut impl CryptoRng,
    ) -> Result<Staged, ReceiveError> {
        let mut chains: BTreeMap<MemberId, Arc<SenderChains>> = BTreeMap::new();
        if let Some(update) = outcome.sender_update {
            install_fresh(&mut chains, op.sender, op.seq, update);
        }
        let mut group = Group::started(id, device, dcgka, verifying_keys, clock, chains);
        let mut staged = Staged::empty(group.shell());
        staged.consumed_prekeys = outcome.consumed_prekeys;
        group
            .send_replies(
                outcome.replies,
                outcome.my_updates,
                None,
                None,
                &mut staged,
                rng,
            )
            .map_err(|e| match e {
                GroupError::Protocol(p) => ReceiveError::Protocol(p),
                _ => ReceiveError::Protocol(ProcessError::Internal("replying to a welcome")),
            })?;
        staged.events.push(Event::Joined { by: op.sender });
        staged.group = group;
        Ok(staged)
    }

    // ----- receiving --------------------------------------------------------------------

    /// Takes one envelope from the network. If it can be delivered now it is processed (an
    /// invalid one is an error and changes nothing); otherwise it waits in the delivery
    /// buffer. Anything it unblocks is delivered too.
    pub fn receive(
        &self,
        device: &Device,
        bytes: Vec<u8>,
        rng: &mut impl CryptoRng,
    ) -> Result<Staged, ReceiveError> {
        if self.active.is_none() {
            return Err(ReceiveError::NotActive);
        }
        let unverified = Unverified::<Envelope>::parse(bytes)?;
        let mut group = self.clone();
        let mut staged = Staged::empty(self.shell());
        // Copied only if this receive uses up a one-time prekey.
        let mut prekeys = Cow::Borrowed(&device.prekeys);
        match group.readiness(&unverified) {
            Readiness::Duplicate => {
                staged.changes = StateChanges::none();
                staged.group = group;
                return Ok(staged);
            }
            Readiness::Ready(sender) => {
                group.deliver(sender, unverified, &mut prekeys, &mut staged, rng)?;
            }
            Readiness::Waiting => {
                let active = group.active.as_deref_mut().ok_or(ReceiveError::NotActive)?;
                match active.buffer_mut().insert(unverified) {
                    Insert::Stored | Insert::AlreadyThere => {}
                    Insert::Full => return Err(ReceiveError::BufferFull),
                }
            }
        }
        group.drain(&mut prekeys, &mut staged, rng);
        staged.changes = group.changes_from(self);
        staged.group = group;
        Ok(staged)
    }

    /// Delivers buffered envelopes that became ready, until none is.
    fn drain(
        &mut self,
        prekeys: &mut Cow<'_, DevicePrekeys>,
        staged: &mut Staged,
        rng: &mut impl CryptoRng,
    ) {
        loop {
            let Some(active) = self.active.as_deref_mut() else {
                return;
            };
            if active.buffer.len() == 0 {
                return;
            }
            let candidates = active.buffer_mut().take_all();
            let mut progressed = false;
            let mut keep = Vec::new();
            for envelope in candidates {
                if self.active.is_none() {
                    return;
                }
                match self.readiness(&envelope) {
                    Readiness::Duplicate => progressed = true,
                    Readiness::Waiting => keep.push(envelope),
                    Readiness::Ready(sender) => {
                        progressed = true;
                        let short = envelope.sender();
                        let mut attempt = self.clone();
                        let mut attempt_staged = Staged::empty(self.shell());
                        match attempt.deliver(sender, envelope, prekeys, &mut attempt_staged, rng) {
                            Ok(()) => {
                                *self = attempt;
                                staged.absorb(attempt_staged);
                            }
                            Err(error) => staged.events.push(Event::Rejected {
                                sender: short,
                                reason: error.to_string(),
                            }),
                        }
                    }
                }
            }
            if let Some(active) = self.active.as_deref_mut() {
                for envelope in keep {
                    let _ = active.buffer_mut().insert(envelope);
                }
            }
            if !progressed {
                return;
            }
        }
    }

    fn readiness(&self, envelope: &Unverified<Envelope>) -> Readiness {
        let Some(active) = self.active.as_deref() else {
            return Readiness::Duplicate;
        };
        let Some(sender) = active.resolve(envelope.sender()) else {
            return Readiness::Waiting;
        };
        let delivered = active.clock.get(&sender).copied().unwrap_or(0);
        match envelope.position() {
            Position::Control {
                seq,
                dependencies,
                sent: (sent_epoch, sent_count),
                ..
            } => {
                if *seq <= delivered || sender == self.me {
                    return Readiness::Duplicate;
                }
                if *seq != delivered + 1 {
                    return Readiness::Waiting;
                }
                // The sender's application messages before this control message come first,
                // so that the keys of their epoch can go once this message replaces it.
                if let Some(chains) = active.chains.get(&sender)
                    && active.dcgka.members().contains(&sender)
                    && !chains.all_used_below(*sent_epoch, *sent_count)
                {
                    return Readiness::Waiting;
                }
                for (dep, dep_seq) in dependencies {
                    let ready = active
                        .resolve(*dep)
                        .and_then(|m| active.clock.get(&m))
                        .is_some_and(|c| c >= dep_seq);
                    if !ready {
                        return Readiness::Waiting;
                    }
                }
                Readiness::Ready(sender)
            }
            Position::Application { epoch, .. } => {
                let superseded = active
                    .chains
                    .get(&sender)
                    .and_then(|c| c.newest_epoch())
                    .is_some_and(|newest| *epoch < newest);
                // Messages of an epoch older than the sender's newest were all delivered before
                // the newer epoch began (see the control case), so this is a replay.
                if sender == self.me || superseded {
                    Readiness::Duplicate
                } else if *epoch <= delivered {
                    Readiness::Ready(sender)
                } else {
                    Readiness::Waiting
                }
            }
        }
    }

    /// Verifies and processes one envelope; on success it joins the step's delivered log.
    fn deliver(
        &mut self,
        sender: MemberId,
        unverified: Unverified<Envelope>,
        prekeys: &mut Cow<'_, DevicePrekeys>,
        staged: &mut Staged,
        rng: &mut impl CryptoRng,
    ) -> Result<(), ReceiveError> {
        let bytes = unverified.bytes().to_vec();
        if self.process_envelope(sender, unverified, prekeys, staged, rng)? == Delivery::New {
            staged.delivered.push(bytes);
        }
        Ok(())
    }

    fn process_envelope(
        &mut self,
        sender: MemberId,
        unverified: Unverified<Envelope>,
        prekeys: &mut Cow<'_, DevicePrekeys>,
        staged: &mut Staged,
        rng: &mut impl CryptoRng,
    ) -> Result<Delivery, ReceiveError> {
        let id = self.id;
        let me = self.me;
        let active = self.active.as_deref_mut().ok_or(ReceiveError::NotActive)?;
        let key = match unverified.position() {
            Position::Control { seq, .. } => active.verifying_keys.for_control(&sender, *seq),
            Position::Application { epoch, .. } => {
                active.verifying_keys.for_application(&sender, *epoch)
            }
        };
        let Some(key) = key else {
            return match unverified.position() {
                // Sent with a key older than any kept here: from before this member joined, or
                // long superseded; it could not be read anyway.
                Position::Application { epoch, index } => {
                    staged.events.push(Event::Unreadable {
                        sender,
                        epoch: *epoch,
                        index: *index,
                    });
                    Ok(Delivery::New)
                }
                Position::Control { .. } => Err(ReceiveError::NotAMember),
            };
        };
        let envelope = unverified.verify(&id, &key)?;
        match envelope.position().clone() {
            Position::Application { epoch, index } => {
                // Spec §12.7: a member outside my view is not read, even if it sent this before
                // it learned of its removal (unreadable, not an error). Its ratchet and chains
                // are kept, not deleted: with concurrent double adds a member can leave the view
                // (its adder removed) and return (through the other add), and every member must
                // keep processing its operations alike. They only derive keys of messages that
                // are refused while it is out.
                let in_view = active.dcgka.members().contains(&sender);
                let mut chains = active.chains.get_mut(&sender).map(Arc::make_mut);
                if !in_view && let Some(chains) = chains.as_mut() {
                    // Refused, but its key is used up: the sender's later control messages wait
                    // for its earlier messages to be delivered, and this one was.
                    if let Err(crate::message_ratchet::RatchetError::AlreadyUsed { .. }) =
                        chains.receiving_key(epoch, index)
                    {
                        return Ok(Delivery::Replay);
                    }
                }
                let Some(chains) = chains.filter(|_| in_view) else {
                    staged.events.push(Event::Unreadable {
                        sender,
                        epoch,
                        index,
                    });
                    return Ok(Delivery::New);
                };
                let message_key = match chains.receiving_key(epoch, index) {
                    Ok(key) => key,
                    // A replay: the key was deleted when the message was first read.
                    Err(crate::message_ratchet::RatchetError::AlreadyUsed { .. }) => {
                        return Ok(Delivery::Replay);
                    }
                    Err(crate::message_ratchet::RatchetError::UnknownEpoch { .. }) => {
                        staged.events.push(Event::Unreadable {
                            sender,
                            epoch,
                            index,
                        });
                        return Ok(Delivery::New);
                    }
                    Err(e) => return Err(ReceiveError::Undecryptable(e.to_string())),
                };
                let ad = envelope.associated_data(&id, &sender);
                let plaintext = message_key
                    .open(&ad, envelope.payload())
                    .map_err(|e| ReceiveError::Undecryptable(e.to_string()))?;
                staged.events.push(Event::Message {
                    sender,
                    epoch,
                    index,
                    plaintext,
                });
                Ok(Delivery::New)
            }
            Position::Control {
                seq,
                dependencies,
                rotate,
                ..
            } => {
                let control = {
                    let mut r = Reader::new(envelope.payload());
                    let control = Control::decode(&mut r)?;
                    r.finish()?;
                    control
                };
                if rotate.is_some() != control.rotates_signing_key() {
                    return Err(ReceiveError::OutOfOrder(
                        "key rotation does not fit the message",
                    ));
                }
                let acked = match dependencies.first() {
                    Some((short, dep_seq)) => Some(OpId {
                        sender: active.resolve(*short).ok_or(ReceiveError::NotAMember)?,
                        seq: *dep_seq,
                    }),
                    None => None,
                };
                let changes_membership =
                    matches!(control, Control::Add { .. } | Control::Remove { .. });
                let before = if changes_membership {
                    active.dcgka.members().clone()
                } else {
                    BTreeSet::new()
                };
                let outcome = active
                    .dcgka_mut()
                    .process(sender, seq, acked, &control, prekeys, rng)?;
                active.clock_mut().insert(sender, seq);
                if let Some(key) = rotate {
                    active.keys_mut().set(sender, seq, key);
                }
                if let Control::Add { member, .. } = &control {
                    active.keys_mut().set_if_absent(
                        member.identity,
                        0,
                        VerifyingKey(member.identity.0),
                    );
                    active.clock_mut().entry(member.identity).or_insert(0);
                }
                if let Some(update) = outcome.sender_update {
                    // Every message of the sender's previous epochs that this member can read
                    // was delivered before this one (see `readiness`): drop those keys.
                    install_fresh(&mut active.chains, sender, seq, update);
                }
                for id in &outcome.consumed_prekeys {
                    prekeys.to_mut().remove_one_time(*id);
                }
                staged.consumed_prekeys.extend(&outcome.consumed_prekeys);
                if outcome.removed_me {
                    self.active = None;
                    staged.events.push(Event::RemovedMe { by: sender });
                    return Ok(Delivery::New);
                }
                let after = if changes_membership {
                    active.dcgka.members().clone()
                } else {
                    BTreeSet::new()
                };
                for member in after.difference(&before) {
                    staged.events.push(Event::MemberAdded {
                        by: sender,
                        member: *member,
                    });
                }
                for member in before.difference(&after) {
                    staged.events.push(Event::MemberRemoved {
                        by: sender,
                        member: *member,
                    });
                }
                if matches!(control, Control::Update { .. }) {
                    staged.events.push(Event::KeyUpdated { member: sender });
                }
                let _ = me;
                self.send_replies(outcome.replies, outcome.my_updates, None, None, staged, rng)
                    .map_err(|e| match e {
                        GroupError::Protocol(p) => ReceiveError::Protocol(p),
                        _ => ReceiveError::Protocol(ProcessError::Internal("replying")),
                    })?;
                Ok(Delivery::New)
            }
        }
    }

    /// Signs my control messages (rotating the signing key where the message calls for it),
    /// installs my new update secrets and queues the envelopes.
    fn send_replies(
        &mut self,
        replies: Vec<Reply>,
        updates: Vec<(u64, Secret)>,
        welcome_for: Option<MemberId>,
        identity: Option<&SigningKey>,
        staged: &mut Staged,
        rng: &mut impl CryptoRng,
    ) -> Result<(), GroupError> {
        let id = self.id;
        let me = self.me;
        let active = self.active.as_deref_mut().ok_or(GroupError::NotActive)?;
        for mut reply in replies {
            let old_key = active.signing_key.clone();
            let rotate = if reply.control.rotates_signing_key() {
                let new_key = SigningKey::generate(rng);
                let verifying = new_key.verifying_key();
                active.keys_mut().set(me, reply.seq, verifying);
                active.signing_key = new_key;
                Some(verifying)
            } else {
                None
            };
            active.clock_mut().insert(me, reply.seq);
            let sent = active
                .chains
                .get(&me)
                .and_then(|c| c.sending_position())
                .unwrap_or((0, 0));
            let identity_signer = if let Control::Add {
                welcome: Some(welcome),
                ..
            } = &mut reply.control
            {
                welcome.clock = (*active.clock).clone();
                welcome.verifying_keys = active.verifying_keys.current();
                identity
            } else {
                None
            };
            let dependencies: Vec<(ShortId, u64)> = reply
                .acked
                .iter()
                .map(|op| (op.sender.short(), op.seq))
                .collect();
            let mut payload = Writer::new();
            reply.control.encode(&mut payload);
            let bytes = envelope::seal_control(
                &id,
                me.short(),
                &old_key,
                reply.seq,
                sent,
                &dependencies,
                rotate.as_ref(),
                payload.as_bytes(),
                identity_signer,
            );
            staged.outbox.push(Outgoing {
                bytes,
                welcome_for: if matches!(reply.control, Control::Add { .. }) {
                    welcome_for
                } else {
                    None
                },
            });
        }
        for (seq, update) in updates {
            install_fresh(&mut active.chains, me, seq, update);
        }
        Ok(())
    }
}

/// Replaces a member's chains by one new epoch. Epochs of one sender increase with its control
/// seq, so the install cannot be refused.
fn install_fresh(
    chains: &mut BTreeMap<MemberId, Arc<SenderChains>>,
    member: MemberId,
    epoch: u64,
    update: Secret,
) {
    let mut fresh = SenderChains::new();
    let _ = fresh.install(epoch, update);
    chains.insert(member, Arc::new(fresh));
}

/// Most signature keys kept per member: the current one and a few before it, for application
/// messages signed just before a rotation and delivered after it.
const MAX_KEPT_KEYS_PER_MEMBER: usize = 4;

/// Each member's signature verification keys, by the control seq from which each is valid.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct KeyHistory(BTreeMap<MemberId, Arc<BTreeMap<u64, ParsedKey>>>);

impl KeyHistory {
    /// Records `key` for `member` from `from` on; a key that is not a valid point is not
    /// recorded (its messages then fail verification).
    fn set(&mut self, member: MemberId, from: u64, key: VerifyingKey) {
        let Ok(key) = ParsedKey::parse(key) else {
            return;
        };
        let keys = Arc::make_mut(self.0.entry(member).or_default());
        keys.insert(from, key);
        while keys.len() > MAX_KEPT_KEYS_PER_MEMBER {
            keys.pop_first();
        }
    }

    fn set_if_absent(&mut self, member: MemberId, from: u64, key: VerifyingKey) {
        if !self.0.contains_key(&member) {
            self.set(member, from, key);
        }
    }

    /// A control message at `seq` is signed with the key in force before it.
    fn for_control(&self, member: &MemberId, seq: u64) -> Option<ParsedKey> {
        let keys = self.0.get(member)?;
        keys.range(..seq).next_back().map(|(_, key)| *key)
    }

    /// An application message of `epoch` is signed with the key in force after that seq.
    fn for_application(&self, member: &MemberId, epoch: u64) -> Option<ParsedKey> {
        let keys = self.0.get(member)?;
        keys.range(..=epoch).next_back().map(|(_, key)| *key)
    }

    fn current(&self) -> BTreeMap<MemberId, VerifyingKey> {
        self.0
            .iter()
            .filter_map(|(m, keys)| keys.values().next_back().map(|k| (*m, k.bytes())))
            .collect()
    }
}

enum Readiness {
    Ready(MemberId),
    Waiting,
    Duplicate,
}

impl Active {
    fn dcgka_mut(&mut self) -> &mut Dcgka {
        Arc::make_mut(&mut self.dcgka)
    }

    fn keys_mut(&mut self) -> &mut KeyHistory {
        Arc::make_mut(&mut self.verifying_keys)
    }

    fn clock_mut(&mut self) -> &mut BTreeMap<MemberId, u64> {
        Arc::make_mut(&mut self.clock)
    }

    fn buffer_mut(&mut self) -> &mut DeliveryBuffer {
        Arc::make_mut(&mut self.buffer)
    }

    fn resolve(&self, short: ShortId) -> Option<MemberId> {
        let mut found = self.dcgka.directory().keys().filter(|m| m.short() == short);
        let first = found.next().copied();
        // Adds that would create a collision are refused, so a second match cannot occur.
        first
    }
}

impl Staged {
    fn empty(group: Group) -> Self {
        Self {
            group,
            changes: StateChanges::all(),
            outbox: Vec::new(),
            events: Vec::new(),
            consumed_prekeys: Vec::new(),
            delivered: Vec::new(),
        }
    }

    fn absorb(&mut self, other: Staged) {
        self.outbox.extend(other.outbox);
        self.events.extend(other.events);
        self.consumed_prekeys.extend(other.consumed_prekeys);
        self.delivered.extend(other.delivered);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    /// What makes a removal final: the fresh seed that every later key of the remover derives
    /// from goes to each remaining member under their own 2SM keys, and to the removed member
    /// not at all, so even a removed node that kept its state has nothing to derive them from.
    #[test]
    fn a_removal_seals_its_fresh_seed_to_the_remaining_members_only() {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let devices: Vec<Device> = (0..3).map(|_| Device::generate(2, &mut rng)).collect();
        let others = [devices[1].bundle(None), devices[2].bundle(None)];
        let created = Group::create(&devices[0], GroupId([7; 32]), &others, &mut rng).unwrap();
        let removed = devices[2].id();
        let removal = created.group.remove(removed, &mut rng).unwrap();
        let envelope = Unverified::<Envelope>::parse(removal.outbox[0].bytes.clone()).unwrap();
        let control = Control::decode(&mut Reader::new(envelope.unverified_payload())).unwrap();
        let Control::Remove { member, seeds } = control else {
            panic!("not a removal: {control:?}");
        };
        assert_eq!(member, removed);
        let sealed_to: BTreeSet<ShortId> = seeds.keys().copied().collect();
        assert_eq!(sealed_to, BTreeSet::from([devices[1].id().short()]));
        assert!(!removal.group.members().contains(&removed));
    }
}
