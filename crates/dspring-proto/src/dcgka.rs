//! DCGKA (spec §2–§7 with the §12 fixes): every member replicates the outer ratchet of every
//! member; seeds, acks and adds feed them in each sender's order, so that all replicas agree.
//!
//! This module works on a mutable copy of the group state; `group` stages the copy and throws
//! it away on error, so a failure here never leaves a half-processed state behind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::control::{Control, DirectMessages, WelcomeCore};
use crate::identity::{DevicePrekeys, PrekeyBundle, PublicPrekey};
use crate::ids::{GroupId, MemberId, OpId};
use crate::kdf::{ADD_INPUT, WELCOME_INPUT, member_secret, update_ratchet};
use crate::membership::{History, MembershipOp};
use crate::secret::Secret;
use crate::two_party::{SessionContext, TwoPartyCiphertext, TwoPartyError, TwoPartySession};

/// Why a control message could not be processed. All but `Internal` are the sender's fault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProcessError {
    #[error("no direct message for this member in a message that must carry one")]
    MissingDirectMessage,
    #[error("two-party channel: {0}")]
    TwoParty(#[from] TwoPartyError),
    #[error("member {0} is not known in this group")]
    UnknownMember(MemberId),
    #[error("acknowledged operation is not known")]
    UnknownAckedOp,
    #[error("invalid operation: {0}")]
    Invalid(&'static str),
    #[error("internal state inconsistency: {0}")]
    Internal(&'static str),
}

/// A control message of mine, numbered, ready to be put in an envelope.
#[derive(Debug)]
pub struct Reply {
    pub seq: u64,
    pub acked: Option<OpId>,
    pub control: Control,
}

/// What processing one control message from another member yields.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The sender's new update secret, starting its epoch at the message's seq.
    pub sender_update: Option<Secret>,
    /// My replies (an ack, possibly followed by an update).
    pub replies: Vec<Reply>,
    /// My new update secrets, each starting my epoch at the seq of the reply that made it.
    pub my_updates: Vec<(u64, Secret)>,
    /// One-time prekeys of this device that were used and must now be deleted.
    pub consumed_prekeys: Vec<u32>,
    /// The message removed me (or cancelled my membership): I must stop.
    pub removed_me: bool,
    /// My ratchet absorbed entropy that no one outside my view knows.
    refreshed: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Dcgka {
    me: MemberId,
    group: GroupId,
    my_seq: u64,
    // Shared behind `Arc`s: a staged copy of the state then costs a few reference counts
    // instead of a deep copy, and only what an operation changes is copied.
    history: Arc<History>,
    /// Signed prekeys of every member ever named, for first contact.
    directory: Arc<BTreeMap<MemberId, PrekeyBundle>>,
    sessions: BTreeMap<MemberId, Arc<TwoPartySession>>,
    member_secrets: BTreeMap<(OpId, MemberId), Secret>,
    ratchets: BTreeMap<MemberId, Secret>,
}

impl Dcgka {
    pub fn directory(&self) -> &BTreeMap<MemberId, PrekeyBundle> {
        &self.directory
    }

    /// The membership over everything processed here (`member_view(me)` of the paper).
    pub fn members(&self) -> &BTreeSet<MemberId> {
        self.history.current_members()
    }

    /// Number of member secrets still held (for tests of deletion on use).
    pub fn pending_member_secrets(&self) -> usize {
        self.member_secrets.len()
    }

    fn op(&self, seq: u64) -> OpId {
        OpId {
            sender: self.me,
            seq,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.my_seq += 1;
        self.my_seq
    }

    // ----- local operations ------------------------------------------------------------

    /// `create(ids)`: a new group of me and `others` (verified bundles, one-time prekeys used
    /// for first contact where present).
    pub fn create(
        me: MemberId,
        group: GroupId,
        my_bundle: PrekeyBundle,
        others: &[PrekeyBundle],
        rng: &mut impl CryptoRng,
    ) -> Result<(Self, Reply, Secret), ProcessError> {
        let mut state = Self {
            me,
            group,
            my_seq: 0,
            history: Arc::new(History::new()),
            directory: Arc::new(BTreeMap::new()),
            sessions: BTreeMap::new(),
            member_secrets: BTreeMap::new(),
            ratchets: BTreeMap::new(),
        };
        let seq = state.next_seq();
        let mut members = vec![without_one_time(&my_bundle)];
        for bundle in others {
            if bundle.identity == me {
                return Err(ProcessError::Invalid("the creator is listed as a member"));
            }
            state.open_session(bundle);
            members.push(without_one_time(bundle));
        }
        for bundle in &members {
            Arc::make_mut(&mut state.directory).insert(bundle.identity, bundle.clone());
        }
        let ids: BTreeSet<MemberId> = others.iter().map(|b| b.identity).collect();
        if ids.len() != others.len() {
            return Err(ProcessError::Invalid("a member is listed twice"));
        }
        let op = state.op(seq);
        Arc::make_mut(&mut state.history).record_op(
            op,
            MembershipOp::Create {
                members: ids.clone(),
            },
        );
        let seed = Secret::random(rng);
        let seeds = state.seal_to_each(&ids, &seed, rng)?;
        let update = state.absorb_own_seed(seq, &ids, &seed);
        Ok((
            state,
            Reply {
                seq,
                acked: None,
                control: Control::Create { members, seeds },
            },
            update,
        ))
    }

    /// `update()`: fresh entropy for my ratchet, sent to every other member.
    pub fn update(&mut self, rng: &mut impl CryptoRng) -> Result<(Reply, Secret), ProcessError> {
        let seq = self.next_seq();
        let (seeds, update) = self.seed_my_view(seq, rng)?;
        Ok((
            Reply {
                seq,
                acked: None,
                control: Control::Update { seeds },
            },
            update,
        ))
    }

    /// `remove(x)`.
    pub fn remove(
        &mut self,
        member: MemberId,
        rng: &mut impl CryptoRng,
    ) -> Result<(Reply, Secret), ProcessError> {
        if member == self.me || !self.members().contains(&member) {
            return Err(ProcessError::Invalid(
                "can only remove another current member",
            ));
        }
        let seq = self.next_seq();
        let op = self.op(seq);
        self.history_mut()
            .record_op(op, MembershipOp::Remove { member });
        let (seeds, update) = self.seed_my_view(seq, rng)?;
        Ok((
            Reply {
                seq,
                acked: None,
                control: Control::Remove { member, seeds },
            },
            update,
        ))
    }

    /// `add(x)`: returns the Add (whose welcome the group completes with its clock and keys).
    pub fn add(
        &mut self,
        bundle: &PrekeyBundle,
        rng: &mut impl CryptoRng,
    ) -> Result<(Reply, WelcomeCore, Secret), ProcessError> {
        let member = bundle.identity;
        if self.history.everyone().contains(&member) {
            return Err(ProcessError::Invalid(
                "this member was already in the group once; re-adding is not supported",
            ));
        }
        if self
            .history
            .everyone()
            .iter()
            .any(|m| m.short() == member.short())
        {
            return Err(ProcessError::Invalid(
                "short id collides with a member's: use another identity",
            ));
        }
        let seq = self.next_seq();
        self.open_session(bundle);
        // The welcome carries my ratchet as it is *before* this add's steps.
        let my_ratchet = self
            .ratchets
            .get(&self.me)
            .cloned()
            .ok_or(ProcessError::Internal("my ratchet is missing"))?;
        let ratchet = self.seal_to(&member, &my_ratchet, rng)?;
        let op = self.op(seq);
        Arc::make_mut(&mut self.directory).insert(member, without_one_time(bundle));
        self.record_add(op, member);
        let welcome = WelcomeCore {
            history: (*self.history).clone(),
            directory: self.directory.values().cloned().collect(),
            ratchet,
        };
        let me = self.me;
        let welcome_secret = self
            .step(&me, WELCOME_INPUT)
            .ok_or(ProcessError::Internal("my ratchet is missing"))?;
        self.member_secrets.insert((op, member), welcome_secret);
        let add_update = self
            .step(&me, ADD_INPUT)
            .ok_or(ProcessError::Internal("my ratchet is missing"))?;
        Ok((
            Reply {
                seq,
                acked: None,
                control: Control::Add {
                    member: without_one_time(bundle),
                    welcome: None,
                },
            },
            welcome,
            add_update,
        ))
    }

    // ----- processing others' messages -------------------------------------------------

    /// Processes control message `(sender, seq)` from another member.
    pub fn process(
        &mut self,
        sender: MemberId,
        seq: u64,
        acked: Option<OpId>,
        control: &Control,
        prekeys: &DevicePrekeys,
        rng: &mut impl CryptoRng,
    ) -> Result<Outcome, ProcessError> {
        if sender == self.me {
            return Err(ProcessError::Invalid(
                "a message of mine came back as another's",
            ));
        }
        let op = OpId { sender, seq };
        let mut outcome = Outcome::default();
        // The view changes only when an add or remove is recorded.
        let changes_membership = matches!(control, Control::Add { .. } | Control::Remove { .. });
        let before = if changes_membership {
            self.members().clone()
        } else {
            BTreeSet::new()
        };
        match control {
            Control::Create { .. } => {
                return Err(ProcessError::Invalid("a create can only start a group"));
            }
            Control::Update { seeds } => {
                self.process_seed(op, seeds, prekeys, rng, &mut outcome)?;
            }
            Control::Remove { member, seeds } => {
                self.history_mut()
                    .record_op(op, MembershipOp::Remove { member: *member });
                if *member == self.me {
                    outcome.removed_me = true;
                    return Ok(outcome);
                }
                self.process_seed(op, seeds, prekeys, rng, &mut outcome)?;
            }
            Control::Add { member, welcome } => {
                self.process_add(op, member, welcome.as_deref(), prekeys, rng, &mut outcome)?;
            }
            Control::Ack { forwards } => {
                let acked = acked.ok_or(ProcessError::Invalid("an ack names no operation"))?;
                self.process_ack(sender, seq, acked, forwards, prekeys, &mut outcome)?;
            }
            Control::AddAck { ratchet } => {
                let acked = acked.ok_or(ProcessError::Invalid("an add-ack names no operation"))?;
                self.process_add_ack(sender, seq, acked, ratchet.as_ref(), prekeys, &mut outcome)?;
            }
        }
        if !self.members().contains(&self.me) {
            // My add was cancelled by a concurrent removal of my adder: as good as removed.
            outcome.removed_me = true;
            return Ok(outcome);
        }
        let after = self.members();
        // Someone left my view, and may know my ratchet: unless this message already fed it
        // entropy they lack (a seed sent without them), refresh it now. This is the case of a
        // member added concurrently with a removal, who acks the removal without a seed.
        if changes_membership && !outcome.refreshed && before.iter().any(|m| !after.contains(m)) {
            let (reply, update) = self.update(rng)?;
            outcome.my_updates.push((reply.seq, update));
            outcome.replies.push(reply);
        }
        // Also after acks: an ack can start the ratchet of a member whose add is cancelled here.
        Ok(outcome)
    }

    /// Starts an initial member's state from the group's Create.
    pub fn from_create(
        me: MemberId,
        group: GroupId,
        op: OpId,
        members: &[PrekeyBundle],
        seeds: &DirectMessages,
        prekeys: &DevicePrekeys,
        rng: &mut impl CryptoRng,
    ) -> Result<(Self, Outcome), ProcessError> {
        let mut state = Self {
            me,
            group,
            my_seq: 0,
            history: Arc::new(History::new()),
            directory: Arc::new(
                members
                    .iter()
                    .map(|b| (b.identity, without_one_time(b)))
                    .collect(),
            ),
            sessions: BTreeMap::new(),
            member_secrets: BTreeMap::new(),
            ratchets: BTreeMap::new(),
        };
        if state.directory.len() != members.len() {
            return Err(ProcessError::Invalid("a member is listed twice"));
        }
        let ids: BTreeSet<MemberId> = members
            .iter()
            .map(|b| b.identity)
            .filter(|m| *m != op.sender)
            .collect();
        if !ids.contains(&me) || ids.len() + 1 != members.len() {
            return Err(ProcessError::Invalid(
                "the create does not list me and its creator",
            ));
        }
        Arc::make_mut(&mut state.history).record_op(op, MembershipOp::Create { members: ids });
        let mut outcome = Outcome::default();
        state.process_seed(op, seeds, prekeys, rng, &mut outcome)?;
        Ok((state, outcome))
    }

    /// Joins through a welcome: the first message a new member processes (the Add of me).
    pub fn join(
        me: MemberId,
        group: GroupId,
        add: OpId,
        welcome: &WelcomeCore,
        prekeys: &DevicePrekeys,
    ) -> Result<(Self, Outcome), ProcessError> {
        match welcome.history.op(&add) {
            Some(MembershipOp::Add { member }) if *member == me => {}
            _ => return Err(ProcessError::Invalid("the welcome does not add me")),
        }
        let directory: BTreeMap<MemberId, PrekeyBundle> = welcome
            .directory
            .iter()
            .map(|b| (b.identity, b.clone()))
            .collect();
        let mut state = Self {
            me,
            group,
            my_seq: 0,
            history: Arc::new(welcome.history.clone()),
            directory: Arc::new(directory),
            sessions: BTreeMap::new(),
            member_secrets: BTreeMap::new(),
            ratchets: BTreeMap::new(),
        };
        state.history_mut().record_joined_through(me, add);
        if !state.members().contains(&me) {
            return Err(ProcessError::Invalid(
                "the welcome's history does not make me a member",
            ));
        }
        let mut outcome = Outcome::default();
        state.absorb_welcome(add, &welcome.ratchet, prekeys, &mut outcome)?;
        Ok((state, outcome))
    }

    /// The welcome steps (paper process-welcome, without replacing the history).
    fn absorb_welcome(
        &mut self,
        add: OpId,
        ratchet: &TwoPartyCiphertext,
        prekeys: &DevicePrekeys,
        outcome: &mut Outcome,
    ) -> Result<(), ProcessError> {
        let adder = add.sender;
        let adder_ratchet = self.open_from(&adder, ratchet, prekeys, outcome)?;
        self.ratchets.insert(adder, adder_ratchet);
        let welcome_secret = self
            .step(&adder, WELCOME_INPUT)
            .ok_or(ProcessError::Internal("adder ratchet missing"))?;
        outcome.sender_update = self.step(&adder, ADD_INPUT);
        let ack_seq = self.next_seq();
        // Only the welcome a member joins through starts its ratchet. A second, concurrent add
        // of the same member is acked without a ratchet step anywhere (see `process_ack`):
        // members outside the second adder's view cannot derive its welcome secret.
        let joining = ack_seq == 1;
        if joining {
            self.member_secrets.insert((add, self.me), welcome_secret);
        }
        let mut none = Outcome::default();
        self.process_ack(
            self.me,
            ack_seq,
            add,
            &DirectMessages::new(),
            prekeys,
            &mut none,
        )?;
        if joining {
            let my_update = none
                .sender_update
                .ok_or(ProcessError::Internal("welcome gave me no member secret"))?;
            outcome.my_updates.push((ack_seq, my_update));
        }
        outcome.replies.push(Reply {
            seq: ack_seq,
            acked: Some(add),
            control: Control::Ack {
                forwards: DirectMessages::new(),
            },
        });
        Ok(())
    }

    fn process_seed(
        &mut self,
        op: OpId,
        seeds: &DirectMessages,
        prekeys: &DevicePrekeys,
        rng: &mut impl CryptoRng,
        outcome: &mut Outcome,
    ) -> Result<(), ProcessError> {
        let sender = op.sender;
        let mut recipients = self.history.member_view(&sender);
        recipients.remove(&sender);
        if !recipients.contains(&self.me) {
            // I was added concurrently: acknowledge without any ratchet change.
            let ack_seq = self.next_seq();
            outcome.replies.push(Reply {
                seq: ack_seq,
                acked: Some(op),
                control: Control::Ack {
                    forwards: DirectMessages::new(),
                },
            });
            self.record_ack_of(op, self.me, ack_seq);
            return Ok(());
        }
        let ciphertext = seeds
            .get(&self.me.short())
            .ok_or(ProcessError::MissingDirectMessage)?;
        let seed = self.open_from(&sender, ciphertext, prekeys, outcome)?;
        for member in &recipients {
            self.member_secrets
                .insert((op, *member), member_secret(&seed, member));
        }
        outcome.sender_update = self.step_or_start(&sender, member_secret(&seed, &sender).expose());
        drop(seed);

        let ack_seq = self.next_seq();
        // Forwarding block: members I know that the sender did not know when it sent.
        let my_view = self.members().clone();
        let mine = self
            .member_secrets
            .get(&(op, self.me))
            .cloned()
            .ok_or(ProcessError::Internal("my member secret is missing"))?;
        let mut forwards = DirectMessages::new();
        for member in my_view.iter() {
            if *member != sender && !recipients.contains(member) {
                let sealed = self.seal_to(member, &mine, rng)?;
                forwards.insert(member.short(), sealed);
            }
        }
        drop(mine);
        let mut mine_outcome = Outcome::default();
        self.process_ack(
            self.me,
            ack_seq,
            op,
            &DirectMessages::new(),
            prekeys,
            &mut mine_outcome,
        )?;
        if let Some(update) = mine_outcome.sender_update {
            outcome.my_updates.push((ack_seq, update));
        }
        outcome.replies.push(Reply {
            seq: ack_seq,
            acked: Some(op),
            control: Control::Ack { forwards },
        });
        outcome.refreshed = true;

        // Spec §12.8, generalised: if someone outside my view (removed or cancelled here) got
        // this seed, it can compute my new ratchet; replace it at once with fresh entropy.
        let leaked = std::iter::once(&sender)
            .chain(recipients.iter())
            .any(|m| !my_view.contains(m));
        if leaked {
            let (reply, update) = self.update(rng)?;
            outcome.my_updates.push((reply.seq, update));
            outcome.replies.push(reply);
        }
        Ok(())
    }

    fn process_ack(
        &mut self,
        acker: MemberId,
        seq: u64,
        acked: OpId,
        forwards: &DirectMessages,
        prekeys: &DevicePrekeys,
        outcome: &mut Outcome,
    ) -> Result<(), ProcessError> {
        let acks_own_add = matches!(
            self.history.op(&acked),
            Some(MembershipOp::Add { member }) if *member == acker
        );
        if acks_own_add && seq == 1 {
            self.history_mut().record_joined_through(acker, acked);
        }
        self.record_ack_of(acked, acker, seq);
        if acks_own_add && seq != 1 {
            // The ack of a second, concurrent add of the acker: no step (see `absorb_welcome`).
            self.member_secrets.remove(&(acked, acker));
            return Ok(());
        }
        let secret = match self.member_secrets.remove(&(acked, acker)) {
            Some(secret) => secret,
            None => match forwards.get(&self.me.short()) {
                // Spec §12.1: no member secret and nothing forwarded is not an error.
                None => return Ok(()),
                // Forwarded-secret block: the acker forwarded its member secret to me.
                Some(ciphertext) => self.open_from(&acker, ciphertext, prekeys, outcome)?,
            },
        };
        outcome.sender_update = self.step_or_start(&acker, secret.expose());
        Ok(())
    }

    fn process_add(
        &mut self,
        op: OpId,
        bundle: &PrekeyBundle,
        welcome: Option<&crate::control::Welcome>,
        prekeys: &DevicePrekeys,
        rng: &mut impl CryptoRng,
        outcome: &mut Outcome,
    ) -> Result<(), ProcessError> {
        let member = bundle.identity;
        let adder = op.sender;
        if member == self.me {
            // Added a second time, concurrently with my first add: replay the welcome steps
            // on my own history so that my ratchet stays in step with everyone's.
            self.record_add(op, member);
            let welcome = welcome.ok_or(ProcessError::MissingDirectMessage)?;
            return self.absorb_welcome(op, &welcome.core.ratchet, prekeys, outcome);
        }
        if self
            .history
            .everyone()
            .iter()
            .any(|m| *m != member && m.short() == member.short())
        {
            return Err(ProcessError::Invalid("added member's short id collides"));
        }
        Arc::make_mut(&mut self.directory)
            .entry(member)
            .or_insert_with(|| without_one_time(bundle));
        self.record_add(op, member);
        if self.history.member_view(&adder).contains(&self.me) {
            if let Some(secret) = self.step(&adder, WELCOME_INPUT) {
                self.member_secrets.insert((op, member), secret);
            }
            outcome.sender_update = self.step(&adder, ADD_INPUT);
        }
        let ack_seq = self.next_seq();
        // Spec §12.9: no ratchet to a member whose add is already cancelled here.
        let ratchet = if self.members().contains(&member) {
            let mine = self
                .ratchets
                .get(&self.me)
                .cloned()
                .ok_or(ProcessError::Internal("my ratchet is missing"))?;
            Some(self.seal_to(&member, &mine, rng)?)
        } else {
            None
        };
        let mut mine_outcome = Outcome::default();
        self.process_add_ack(self.me, ack_seq, op, None, prekeys, &mut mine_outcome)?;
        if let Some(update) = mine_outcome.sender_update {
            outcome.my_updates.push((ack_seq, update));
        }
        outcome.replies.push(Reply {
            seq: ack_seq,
            acked: Some(op),
            control: Control::AddAck { ratchet },
        });
        Ok(())
    }

    fn process_add_ack(
        &mut self,
        acker: MemberId,
        seq: u64,
        acked: OpId,
        ratchet: Option<&TwoPartyCiphertext>,
        prekeys: &DevicePrekeys,
        outcome: &mut Outcome,
    ) -> Result<(), ProcessError> {
        let added = match self.history.op(&acked) {
            Some(MembershipOp::Add { member }) => *member,
            _ => return Err(ProcessError::UnknownAckedOp),
        };
        self.record_ack_of(acked, acker, seq);
        if added == self.me
            && let Some(ciphertext) = ratchet
        {
            let their_ratchet = self.open_from(&acker, ciphertext, prekeys, outcome)?;
            self.ratchets.insert(acker, their_ratchet);
        }
        if self.history.member_view(&acker).contains(&self.me) {
            outcome.sender_update = self.step(&acker, ADD_INPUT);
        }
        Ok(())
    }

    // ----- helpers ----------------------------------------------------------------------

    fn history_mut(&mut self) -> &mut History {
        Arc::make_mut(&mut self.history)
    }

    /// Records an add. What the added member inherits through the welcome is recorded only
    /// when it is known which add it joined through (its first message acks that add): a member
    /// added twice concurrently joins through whichever welcome reaches it first.
    fn record_add(&mut self, op: OpId, member: MemberId) {
        self.history_mut()
            .record_op(op, MembershipOp::Add { member });
    }

    /// Acks of creates, adds and removes are membership information; acks of updates are not.
    fn record_ack_of(&mut self, acked: OpId, acker: MemberId, seq: u64) {
        if self.history.op(&acked).is_some() {
            self.history_mut().record_seen(acker, acked, seq);
        }
    }

    fn others_in_my_view(&self) -> BTreeSet<MemberId> {
        let mut view = self.members().clone();
        view.remove(&self.me);
        view
    }

    /// A fresh seed for everyone else in my view (update, remove): the direct messages that
    /// carry it, and my update secret from it.
    fn seed_my_view(
        &mut self,
        seq: u64,
        rng: &mut impl CryptoRng,
    ) -> Result<(DirectMessages, Secret), ProcessError> {
        let recipients = self.others_in_my_view();
        let seed = Secret::random(rng);
        let seeds = self.seal_to_each(&recipients, &seed, rng)?;
        Ok((seeds, self.absorb_own_seed(seq, &recipients, &seed)))
    }

    /// My own create/update/remove: member secrets for the recipients and my update secret.
    fn absorb_own_seed(
        &mut self,
        seq: u64,
        recipients: &BTreeSet<MemberId>,
        seed: &Secret,
    ) -> Secret {
        let op = self.op(seq);
        for member in recipients {
            self.member_secrets
                .insert((op, *member), member_secret(seed, member));
        }
        let input = member_secret(seed, &self.me);
        let ratchet = self.ratchets.get(&self.me);
        let (update, next) = update_ratchet(ratchet, input.expose());
        self.ratchets.insert(self.me, next);
        update
    }

    /// `update_ratchet(member, input)`: `None` for a member whose ratchet was deleted.
    /// Steps an existing ratchet; `None` (and no change) if this member's ratchet is unknown
    /// here.
    fn step(&mut self, member: &MemberId, input: &[u8]) -> Option<Secret> {
        if !self.ratchets.contains_key(member) {
            return None;
        }
        self.step_or_start(member, input)
    }

    /// Steps a ratchet, starting it if this is its first input (a member's first ack, or the
    /// creator's create).
    fn step_or_start(&mut self, member: &MemberId, input: &[u8]) -> Option<Secret> {
        let (update, next) = update_ratchet(self.ratchets.get(member), input);
        self.ratchets.insert(*member, next);
        Some(update)
    }

    fn open_session(&mut self, bundle: &PrekeyBundle) {
        self.sessions.entry(bundle.identity).or_insert_with(|| {
            Arc::new(TwoPartySession::new(bundle.signed_prekey, bundle.one_time))
        });
    }

    fn session(&mut self, peer: &MemberId) -> Result<&mut TwoPartySession, ProcessError> {
        if !self.sessions.contains_key(peer) {
            let prekey: PublicPrekey = self
                .directory
                .get(peer)
                .map(|b| b.signed_prekey)
                .ok_or(ProcessError::UnknownMember(*peer))?;
            self.sessions
                .insert(*peer, Arc::new(TwoPartySession::new(prekey, None)));
        }
        self.sessions
            .get_mut(peer)
            .map(Arc::make_mut)
            .ok_or(ProcessError::Internal("session vanished"))
    }

    fn seal_to(
        &mut self,
        peer: &MemberId,
        message: &Secret,
        rng: &mut impl CryptoRng,
    ) -> Result<TwoPartyCiphertext, ProcessError> {
        let (group, me) = (self.group, self.me);
        let context = SessionContext {
            group: &group,
            sender: &me,
            recipient: peer,
        };
        Ok(self.session(peer)?.send(&context, message, rng)?)
    }

    fn seal_to_each(
        &mut self,
        peers: &BTreeSet<MemberId>,
        message: &Secret,
        rng: &mut impl CryptoRng,
    ) -> Result<DirectMessages, ProcessError> {
        let mut out = DirectMessages::new();
        for peer in peers {
            let sealed = self.seal_to(peer, message, rng)?;
            out.insert(peer.short(), sealed);
        }
        Ok(out)
    }

    fn open_from(
        &mut self,
        peer: &MemberId,
        ciphertext: &TwoPartyCiphertext,
        prekeys: &DevicePrekeys,
        outcome: &mut Outcome,
    ) -> Result<Secret, ProcessError> {
        let (group, me) = (self.group, self.me);
        let context = SessionContext {
            group: &group,
            sender: peer,
            recipient: &me,
        };
        let received = self.session(peer)?.receive(&context, ciphertext, prekeys)?;
        if let Some(id) = received.consumed_one_time {
            outcome.consumed_prekeys.push(id);
        }
        Ok(received.message)
    }
}

fn without_one_time(bundle: &PrekeyBundle) -> PrekeyBundle {
    let mut out = bundle.clone();
    out.one_time = None;
    out
}
