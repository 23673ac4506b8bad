//! Atomic application of core results: everything a step produced, in one transaction.

use std::collections::HashMap;

use dspring_proto::envelope::{Envelope, Position, Unverified};
use dspring_proto::{Event, Group, GroupId, MemberId, Staged, StateChanges};
use rusqlite::{OptionalExtension, Transaction, params};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::at_rest::StoreKey;
use crate::error::StoreError;
use crate::{Store, from_sql_int, now_ms, to_sql_int};

/// The longest group name kept, in bytes: a title, not a document (a peer's name message is
/// checked against it before it reaches the store).
pub const MAX_GROUP_NAME_BYTES: usize = 128;

/// What one applied step added.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// Event-log cursors of the step's events, in order.
    pub cursors: Vec<u64>,
    /// Envelopes new to the group log (replays already there are not counted).
    pub new_envelopes: usize,
    /// Envelopes queued in the outbox.
    pub queued: usize,
}

/// Group metadata that members learn from the group's messages (the node decodes them), to
/// commit in the same transaction as the steps that carried it: a crash can lose neither
/// without the other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// A mailbox announced in a group.
    pub group_mailboxes: Vec<(GroupId, MemberId)>,
    /// A group named or renamed; kept only if later by `(set_ms, set_by)` than the stored name.
    pub group_names: Vec<GroupName>,
    /// A member asked to leave a group (kept until its removal is committed).
    pub leave_requests: Vec<(GroupId, MemberId)>,
}

impl Metadata {
    pub fn is_empty(&self) -> bool {
        self.group_mailboxes.is_empty()
            && self.group_names.is_empty()
            && self.leave_requests.is_empty()
    }
}

/// A group's name, who set it and when (their clock, Unix milliseconds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupName {
    pub group: GroupId,
    pub name: String,
    pub set_ms: u64,
    pub set_by: MemberId,
}

impl GroupName {
    /// Whether this name replaces `other`: set later, or at the same time by a larger id
    /// (the same rule as the `group_names` upsert).
    pub fn supersedes(&self, other: &GroupName) -> bool {
        (self.set_ms, self.set_by) > (other.set_ms, other.set_by)
    }
}

/// The event-log kind of an event; application messages (0, 1) are indexed for reading.
pub(crate) fn event_kind(event: &Event) -> i64 {
    match event {
        Event::Message { .. } => 0,
        Event::Sent { .. } => 1,
        Event::Joined { .. } => 2,
        Event::MemberAdded { .. } => 3,
        Event::MemberRemoved { .. } => 4,
        Event::KeyUpdated { .. } => 5,
        Event::RemovedMe { .. } => 6,
        Event::Unreadable { .. } => 7,
        Event::Rejected { .. } => 8,
        Event::Invited { .. } => 9,
        _ => 255,
    }
}

/// How an event names its group: by its row, or by its id when the node has no row for it
/// (a held invitation).
pub(crate) enum EventGroup<'a> {
    Row(i64),
    Id(&'a GroupId),
}

/// Appends an event to the event log; its cursor.
pub(crate) fn log_event(
    tx: &rusqlite::Transaction<'_>,
    group: EventGroup<'_>,
    event: &Event,
    at_ms: i64,
) -> Result<u64, StoreError> {
    let body = postcard::to_allocvec(event)
        .map_err(|e| StoreError::invalid(format!("event does not serialize: {e}")))?;
    let kind = event_kind(event);
    match group {
        EventGroup::Row(group_ref) => tx
            .prepare_cached(
                "INSERT INTO events (group_ref, kind, at_ms, body) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![group_ref, kind, at_ms, body])?,
        EventGroup::Id(group) => tx
            .prepare_cached(
                "INSERT INTO events (group_id, kind, at_ms, body) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![group.as_bytes(), kind, at_ms, body])?,
    };
    Ok(from_sql_int(tx.last_insert_rowid(), "events", "cursor")?)
}

pub(crate) fn envelope_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub(crate) fn group_place(group: &GroupId) -> Vec<u8> {
    let mut place = b"groups/".to_vec();
    place.extend_from_slice(group.as_bytes());
    place
}

impl Store {
    /// Commits one core step: the new group state, its envelopes (sent and delivered) in the
    /// group log, its outbox, its events and the deletion of the one-time prekeys it used. All
    /// or nothing.
    ///
    /// A step that sends anything or uses a prekey is on disk (synced) when this returns:
    /// nothing may leave the node before the state that produced it is durable, or a power
    /// loss could make it send again from the same ratchet position. A step that only
    /// delivers skips the sync: it survives a process crash when this returns (WAL), and a
    /// power loss once the next sync happens (the next sending step or checkpoint). What a
    /// power loss takes back is a delivery, which sync fetches again from the other members.
    pub fn apply(&mut self, staged: &Staged) -> Result<Committed, StoreError> {
        self.apply_welcoming(staged, &[])
    }

    /// [`Store::apply`], and the step's first envelope is a welcome for `recipients` too (a
    /// group's create, for its initial members): it waits in [`Store::pending_welcomes`] until
    /// delivered. Envelopes with `welcome_for` set are pending welcomes in any case.
    pub fn apply_welcoming(
        &mut self,
        staged: &Staged,
        recipients: &[MemberId],
    ) -> Result<Committed, StoreError> {
        self.apply_all(&[staged], recipients, &Metadata::default())?
            .pop()
            .ok_or_else(|| StoreError::invalid("empty batch"))
    }

    /// [`Store::apply_batch`] with group metadata the steps carried, and welcome recipients
    /// of the first step's first envelope (as [`Store::apply_welcoming`]): all in one
    /// transaction.
    pub fn apply_steps(
        &mut self,
        batch: &[&Staged],
        recipients: &[MemberId],
        metadata: &Metadata,
    ) -> Result<Vec<Committed>, StoreError> {
        self.apply_all(batch, recipients, metadata)
    }

    /// Commits several steps in one transaction (one disk sync for all). Steps of the same
    /// group must be in the order the core produced them; only the last state of each group is
    /// written, since the earlier ones are never visible on their own.
    pub fn apply_batch(&mut self, batch: &[&Staged]) -> Result<Vec<Committed>, StoreError> {
        self.apply_all(batch, &[], &Metadata::default())
    }

    fn apply_all(
        &mut self,
        batch: &[&Staged],
        first_welcomes: &[MemberId],
        metadata: &Metadata,
    ) -> Result<Vec<Committed>, StoreError> {
        // Each group's last state in the batch, and what the batch changed of it.
        let mut last_state: HashMap<GroupId, (usize, StateChanges)> = HashMap::new();
        for (i, staged) in batch.iter().enumerate() {
            let entry = last_state
                .entry(staged.group.id())
                .or_insert_with(|| (i, StateChanges::none()));
            entry.0 = i;
            entry.1.merge(&staged.changes);
        }
        let now = to_sql_int(now_ms())?;
        let must_sync = !first_welcomes.is_empty()
            || batch
                .iter()
                .any(|s| !s.outbox.is_empty() || !s.consumed_prekeys.is_empty());
        self.set_syncing(must_sync)?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut refs: HashMap<GroupId, i64> = HashMap::new();
        for (group, (last, changes)) in &last_state {
            let staged = batch
                .get(*last)
                .ok_or_else(|| StoreError::invalid("batch index"))?;
            let group_ref = write_state(
                &tx,
                &self.key,
                &staged.group,
                changes,
                self.group_refs.get(group).copied(),
            )?;
            refs.insert(*group, group_ref);
        }
        // Before the steps' events: a removal in the same batch drops the request it answers.
        for (group, member) in &metadata.leave_requests {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO leave_requests (group_id, member) VALUES (?1, ?2)",
            )?
            .execute(params![group.as_bytes(), member.0])?;
        }
        let mut results = Vec::with_capacity(batch.len());
        for staged in batch {
            let group = staged.group.id();
            let group_ref = *refs
                .get(&group)
                .ok_or_else(|| StoreError::invalid("group row missing in batch"))?;
            let mut committed = Committed::default();
            for (n, outgoing) in staged.outbox.iter().enumerate() {
                let (envelope_ref, new) = log_envelope(&tx, group_ref, &outgoing.bytes)?;
                committed.new_envelopes += usize::from(new);
                let extra = if n == 0 && results.is_empty() {
                    first_welcomes
                } else {
                    &[]
                };
                for member in outgoing.welcome_for.iter().chain(extra) {
                    tx.prepare_cached(
                        "INSERT OR IGNORE INTO pending_welcomes (member, envelope_ref) VALUES (?1, ?2)",
                    )?
                    .execute(params![member.0, envelope_ref])?;
                }
                tx.prepare_cached(
                    "INSERT INTO outbox (envelope_ref, welcome_for) VALUES (?1, ?2)",
                )?
                .execute(params![
                    envelope_ref,
                    outgoing.welcome_for.map(|m| m.0.to_vec())
                ])?;
                committed.queued += 1;
            }
            for bytes in &staged.delivered {
                let (_, new) = log_envelope(&tx, group_ref, bytes)?;
                committed.new_envelopes += usize::from(new);
            }
            for event in &staged.events {
                let cursor = log_event(&tx, EventGroup::Row(group_ref), event, now)?;
                committed.cursors.push(cursor);
                if let Event::MemberRemoved { member, .. } = event {
                    tx.prepare_cached(
                        "DELETE FROM leave_requests WHERE group_id = ?1 AND member = ?2",
                    )?
                    .execute(params![group.as_bytes(), member.0])?;
                    // The step's envelopes are logged above: the end includes the removal.
                    tx.prepare_cached(
                        "INSERT INTO former_members (group_ref, member, log_end)
                         SELECT ?1, ?2, coalesce(max(id), 0) FROM envelopes WHERE group_ref = ?1
                         ON CONFLICT(group_ref, member) DO UPDATE SET
                            log_end = max(log_end, excluded.log_end)",
                    )?
                    .execute(params![group_ref, member.0])?;
                }
            }
            for id in &staged.consumed_prekeys {
                tx.prepare_cached("DELETE FROM one_time_prekeys WHERE id = ?1")?
                    .execute([id])?;
            }
            results.push(committed);
        }
        for (group, mailbox) in &metadata.group_mailboxes {
            tx.prepare_cached(
                "INSERT OR IGNORE INTO group_mailboxes (group_id, mailbox) VALUES (?1, ?2)",
            )?
            .execute(params![group.as_bytes(), mailbox.0])?;
        }
        for named in &metadata.group_names {
            if named.name.len() > MAX_GROUP_NAME_BYTES {
                return Err(StoreError::invalid("group name too long"));
            }
            tx.prepare_cached(
                "INSERT INTO group_names (group_id, name, set_ms, set_by) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(group_id) DO UPDATE SET
                    name = excluded.name, set_ms = excluded.set_ms, set_by = excluded.set_by
                 WHERE (excluded.set_ms, excluded.set_by) > (group_names.set_ms, group_names.set_by)",
            )?
            .execute(params![
                named.group.as_bytes(),
                named.name,
                to_sql_int(named.set_ms)?,
                named.set_by.0
            ])?;
        }
        tx.commit()?;
        self.group_refs.extend(refs);
        Ok(results)
    }
}

/// Writes what `changes` says changed of `state`: the base (with the row's flags) and the
/// chains of the senders named. A group not stored yet is written whole. Returns its row.
pub(crate) fn write_state(
    tx: &Transaction<'_>,
    key: &StoreKey,
    state: &Group,
    changes: &StateChanges,
    stored: Option<i64>,
) -> Result<i64, StoreError> {
    let group = state.id();
    let all = changes.all || stored.is_none();
    let group_ref = match stored {
        Some(group_ref) if !all && !changes.base => group_ref,
        _ => {
            let base = Zeroizing::new(state.base_bytes().map_err(|e| {
                StoreError::invalid(format!("group state does not serialize: {e}"))
            })?);
            let sealed = key
                .seal(&group_place(&group), &base)
                .map_err(|e| StoreError::invalid(e.to_string()))?;
            tx.prepare_cached(
                "INSERT INTO groups (group_id, format_version, active, sealed_state)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(group_id) DO UPDATE SET
                    format_version = excluded.format_version,
                    active = excluded.active,
                    sealed_state = excluded.sealed_state
                 RETURNING id",
            )?
            .query_row(
                params![
                    group.as_bytes(),
                    dspring_proto::group::BASE_FORMAT_VERSION,
                    state.is_active(),
                    sealed
                ],
                |r| r.get(0),
            )?
        }
    };
    let senders: Vec<MemberId> = if all {
        tx.prepare_cached("DELETE FROM group_chains WHERE group_ref = ?1")?
            .execute([group_ref])?;
        state.chain_senders()
    } else {
        changes.chains.iter().copied().collect()
    };
    for sender in senders {
        match state.chain_bytes(&sender) {
            Some(bytes) => {
                let bytes = Zeroizing::new(bytes.map_err(|e| {
                    StoreError::invalid(format!("sender chains do not serialize: {e}"))
                })?);
                let sealed = key
                    .seal(&chain_place(&group, &sender), &bytes)
                    .map_err(|e| StoreError::invalid(e.to_string()))?;
                tx.prepare_cached(
                    "INSERT INTO group_chains (group_ref, sender, sealed) VALUES (?1, ?2, ?3)
                     ON CONFLICT(group_ref, sender) DO UPDATE SET sealed = excluded.sealed",
                )?
                .execute(params![group_ref, sender.0, sealed])?;
            }
            None => {
                tx.prepare_cached("DELETE FROM group_chains WHERE group_ref = ?1 AND sender = ?2")?
                    .execute(params![group_ref, sender.0])?;
            }
        }
    }
    Ok(group_ref)
}

/// The associated data of a sealed sender-chains row: the group and the sender, so that a
/// row moved to another place does not open.
pub(crate) fn chain_place(group: &GroupId, sender: &MemberId) -> Vec<u8> {
    let mut place = b"chains/".to_vec();
    place.extend_from_slice(group.as_bytes());
    place.extend_from_slice(&sender.0);
    place
}

/// An envelope's position as stored: control seq, or application epoch and index.
pub(crate) type SqlPosition = (Option<i64>, Option<i64>, Option<i64>);

pub(crate) fn sql_position(envelope: &Unverified<Envelope>) -> Result<SqlPosition, StoreError> {
    Ok(match envelope.position() {
        Position::Control { seq, .. } => (Some(to_sql_int(*seq)?), None, None),
        Position::Application { epoch, index } => {
            (None, Some(to_sql_int(*epoch)?), Some(to_sql_int(*index)?))
        }
    })
}

/// Adds an envelope to a group's log unless it is there; returns its row and whether it is new.
fn log_envelope(
    tx: &Transaction<'_>,
    group_ref: i64,
    bytes: &[u8],
) -> Result<(i64, bool), StoreError> {
    let envelope = Unverified::<Envelope>::parse(bytes.to_vec())
        .map_err(|e| StoreError::invalid(format!("the core produced a bad envelope: {e}")))?;
    let hash = envelope_hash(bytes);
    let sender = envelope.sender().0;
    let (control_seq, epoch, index) = sql_position(&envelope)?;
    let inserted: Option<i64> = tx
        .prepare_cached(
            "INSERT INTO envelopes (group_ref, hash, sender, control_seq, epoch, idx, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT(group_ref, hash) DO NOTHING
             RETURNING id",
        )?
        .query_row(
            params![group_ref, hash, sender, control_seq, epoch, index, bytes],
            |r| r.get(0),
        )
        .optional()?;
    let Some(id) = inserted else {
        let id = tx
            .prepare_cached("SELECT id FROM envelopes WHERE group_ref = ?1 AND hash = ?2")?
            .query_row(params![group_ref, hash], |r| r.get(0))?;
        return Ok((id, false));
    };
    tx.prepare_cached(
        "INSERT INTO sender_marks
            (group_ref, sender, control_seq, app_epoch, app_index, envelopes)
         VALUES (?1, ?2, coalesce(?3, 0), coalesce(?4, -1), coalesce(?5, -1), 1)
         ON CONFLICT(group_ref, sender) DO UPDATE SET
            control_seq = max(control_seq, excluded.control_seq),
            app_index = CASE
                WHEN excluded.app_epoch > app_epoch
                  OR (excluded.app_epoch = app_epoch AND excluded.app_index > app_index)
                THEN excluded.app_index ELSE app_index END,
            app_epoch = max(app_epoch, excluded.app_epoch),
            envelopes = envelopes + 1",
    )?
    .execute(params![group_ref, sender, control_seq, epoch, index])?;
    Ok((id, true))
}
