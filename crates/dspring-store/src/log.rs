//! Reading back: group states, group logs, sender marks, messages, the event log, the outbox.

use std::collections::HashMap;

use dspring_proto::ids::ShortId;
use dspring_proto::{Event, Group, GroupId, MemberId};
use rusqlite::{OptionalExtension, params};

use crate::apply::{chain_place, envelope_hash, group_place};
use crate::error::{Corrupt, StoreError};
use crate::marks::contiguous_marks;
use crate::{MAX_PAGE, RowKey, Store, from_sql_int, group_id_from, hex, to_sql_int};

/// An event from the local event log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Position in the event log: increasing, never reused, survives restarts.
    pub cursor: u64,
    pub group: GroupId,
    /// When it was committed (Unix milliseconds, local clock).
    pub at_ms: u64,
    pub event: Event,
}

/// An envelope of a group log, with its local position for paging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub id: u64,
    pub bytes: Vec<u8>,
}

/// The highest positions held of one sender in one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderMark {
    pub sender: ShortId,
    /// Highest control seq held (0: none).
    pub control_seq: u64,
    /// Highest application (epoch, index) held.
    pub application: Option<(u64, u64)>,
    /// Envelopes of this sender in the log.
    pub envelopes: u64,
}

/// What a peer holds of one sender: highest control seq, highest application (epoch, index).
pub type HeldMark = (u64, Option<(u64, u64)>);

/// An envelope waiting to be handed to the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEntry {
    pub id: u64,
    pub group: GroupId,
    pub bytes: Vec<u8>,
    /// Also deliver directly to this member (it is being added).
    pub welcome_for: Option<MemberId>,
}

pub(crate) fn page(limit: usize) -> i64 {
    i64::try_from(limit.min(MAX_PAGE)).unwrap_or(0)
}

impl Store {
    pub(crate) fn group_ref(&self, group: &GroupId) -> Option<i64> {
        self.group_refs.get(group).copied()
    }

    /// The stored state of a group, or `None` if it was never stored.
    pub fn group(&self, group: &GroupId) -> Result<Option<Group>, StoreError> {
        let row: Option<(i64, u16, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT id, format_version, sealed_state FROM groups WHERE group_id = ?1",
            )?
            .query_row([group.as_bytes()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((group_ref, version, sealed)) = row else {
            return Ok(None);
        };
        let key = format!("group {}", hex(group.as_bytes()));
        let state = self
            .key
            .open(&group_place(group), &sealed)
            .map_err(|e| Corrupt::new("groups", key.clone(), e))?;
        if version == dspring_proto::group::STATE_FORMAT_VERSION {
            // Written whole, before schema 4 (the store rewrites these in parts on opening).
            let group = Group::from_bytes(&state).map_err(|e| Corrupt::new("groups", key, e))?;
            return Ok(Some(group));
        }
        let mut statement = self
            .conn
            .prepare_cached("SELECT sender, sealed FROM group_chains WHERE group_ref = ?1")?;
        let rows = statement.query_map([group_ref], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut chains = Vec::new();
        for row in rows {
            let (sender, sealed) = row?;
            let chain_key = format!("{key} sender {}", hex(&sender));
            let sender = <[u8; 32]>::try_from(sender.as_slice())
                .map(MemberId)
                .map_err(|_| {
                    Corrupt::new("group_chains", chain_key.clone(), "sender is not 32 bytes")
                })?;
            let bytes = self
                .key
                .open(&chain_place(group, &sender), &sealed)
                .map_err(|e| Corrupt::new("group_chains", chain_key, e))?;
            chains.push((sender, bytes));
        }
        let group =
            Group::from_parts(&state, chains).map_err(|e| Corrupt::new("groups", key, e))?;
        Ok(Some(group))
    }

    /// Every stored group.
    pub fn groups(&self) -> Result<Vec<GroupId>, StoreError> {
        let mut ids: Vec<GroupId> = self.group_refs.keys().copied().collect();
        ids.sort();
        Ok(ids)
    }

    /// Envelopes of a group's log after local position `after`, oldest first, at most
    /// `limit` (and [`MAX_PAGE`]).
    pub fn log_page(
        &self,
        group: &GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let Some(group_ref) = self.group_ref(group) else {
            return Ok(Vec::new());
        };
        self.log_entries(
            "envelopes",
            "SELECT id, bytes FROM envelopes WHERE group_ref = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
            params![group_ref, to_sql_int(after)?, page(limit)],
        )
    }

    /// Envelopes of a group's log after position `after` that a peer with these marks lacks
    /// (per sender: highest control seq held, highest application position held), oldest
    /// first, at most `max_count` envelopes and `max_bytes` bytes (but always at least one). Decided from the positions
    /// stored with each envelope; nothing is parsed again. Returns the envelopes and, if the
    /// log goes on, the position to continue after.
    pub fn log_lacking(
        &self,
        group: &GroupId,
        after: u64,
        marks: &HashMap<ShortId, HeldMark>,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<u64>), StoreError> {
        self.log_lacking_until(group, after, u64::MAX, marks, max_count, max_bytes)
    }

    /// [`Store::log_lacking`] among the envelopes at positions up to `until` only.
    pub fn log_lacking_until(
        &self,
        group: &GroupId,
        after: u64,
        until: u64,
        marks: &HashMap<ShortId, HeldMark>,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<u64>), StoreError> {
        let Some(group_ref) = self.group_ref(group) else {
            return Ok((Vec::new(), None));
        };
        let mut statement = self.conn.prepare_cached(
            "SELECT id, sender, control_seq, epoch, idx, bytes FROM envelopes
             WHERE group_ref = ?1 AND id > ?2 AND id <= ?3 ORDER BY id",
        )?;
        let until = i64::try_from(until).unwrap_or(i64::MAX);
        let rows = statement.query(params![group_ref, to_sql_int(after)?, until])?;
        lacking(rows, "envelopes", after, marks, max_count, max_bytes)
    }

    /// Where the group log ended when `member`'s removal was logged here, if it was removed
    /// (and not added again since: the caller checks membership first).
    pub fn former_member_end(
        &self,
        group: &GroupId,
        member: &MemberId,
    ) -> Result<Option<u64>, StoreError> {
        let Some(group_ref) = self.group_ref(group) else {
            return Ok(None);
        };
        let end: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT log_end FROM former_members WHERE group_ref = ?1 AND member = ?2",
            )?
            .query_row(params![group_ref, member.0], |r| r.get(0))
            .optional()?;
        end.map(|end| from_sql_int(end, "former_members", "log_end"))
            .transpose()
            .map_err(Into::into)
    }

    /// The position of the newest envelope of a group's log (0 if none).
    pub fn log_end(&self, group: &GroupId) -> Result<u64, StoreError> {
        let Some(group_ref) = self.group_ref(group) else {
            return Ok(0);
        };
        let end: Option<i64> = self
            .conn
            .prepare_cached("SELECT max(id) FROM envelopes WHERE group_ref = ?1")?
            .query_row([group_ref], |r| r.get(0))?;
        Ok(from_sql_int(end.unwrap_or(0), "envelopes", "end")?)
    }

    /// Runs a query of `(id, bytes)` rows of `table` into log entries.
    pub(crate) fn log_entries(
        &self,
        table: &'static str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<LogEntry>, StoreError> {
        let mut statement = self.conn.prepare_cached(sql)?;
        let rows = statement.query_map(params, |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, bytes) = row?;
            out.push(LogEntry {
                id: from_sql_int(id, table, RowKey("row", id))?,
                bytes,
            });
        }
        Ok(out)
    }

    /// Whether the group log holds exactly these bytes.
    pub fn has_envelope(&self, group: &GroupId, bytes: &[u8]) -> Result<bool, StoreError> {
        let Some(group_ref) = self.group_ref(group) else {
            return Ok(false);
        };
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM envelopes WHERE group_ref = ?1 AND hash = ?2")?
            .query_row(params![group_ref, envelope_hash(bytes)], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Per sender, the position up to which the group log holds the sender's stream without
    /// a hole: what a sync request asks the peer to continue after (`marks.rs`).
    pub fn sync_marks(&self, group: &GroupId) -> Result<HashMap<ShortId, HeldMark>, StoreError> {
        let Some(group_ref) = self.group_ref(group) else {
            return Ok(HashMap::new());
        };
        let mut statement = self.conn.prepare_cached(
            "SELECT sender, control_seq, epoch, idx FROM envelopes
             WHERE group_ref = ?1 ORDER BY sender",
        )?;
        contiguous_marks(statement.query([group_ref])?, "envelopes", false)
    }

    /// Per sender, the highest positions the group log holds.
    pub fn sender_marks(&self, group: &GroupId) -> Result<Vec<SenderMark>, StoreError> {
        let Some(group_ref) = self.group_ref(group) else {
            return Ok(Vec::new());
        };
        let mut statement = self.conn.prepare_cached(
            "SELECT sender, control_seq, app_epoch, app_index, envelopes
             FROM sender_marks WHERE group_ref = ?1 ORDER BY sender",
        )?;
        let rows = statement.query_map([group_ref], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (sender, control_seq, epoch, index, envelopes) = row?;
            let key = format!("sender {}", hex(&sender));
            let sender = <[u8; 8]>::try_from(sender.as_slice())
                .map(ShortId)
                .map_err(|_| Corrupt::new("sender_marks", key.clone(), "sender is not 8 bytes"))?;
            let application = if epoch < 0 {
                None
            } else {
                Some((
                    from_sql_int(epoch, "sender_marks", &key)?,
                    from_sql_int(index, "sender_marks", &key)?,
                ))
            };
            out.push(SenderMark {
                sender,
                control_seq: from_sql_int(control_seq, "sender_marks", &key)?,
                application,
                envelopes: from_sql_int(envelopes, "sender_marks", &key)?,
            });
        }
        Ok(out)
    }

    /// Application messages of a group (received and sent) after event cursor `after`.
    pub fn messages(
        &self,
        group: &GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let Some(group_ref) = self.group_ref(group) else {
            return Ok(Vec::new());
        };
        self.read_events(
            "SELECT e.cursor, g.group_id, e.at_ms, e.body FROM events e
             JOIN groups g ON g.id = e.group_ref
             WHERE e.group_ref = ?1 AND e.kind IN (0, 1) AND e.cursor > ?2
             ORDER BY e.cursor LIMIT ?3",
            params![group_ref, to_sql_int(after)?, page(limit)],
        )
    }

    /// The event log after `cursor`, oldest first: what interfaces resume from.
    pub fn events_since(&self, cursor: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        self.read_events(
            "SELECT e.cursor, coalesce(g.group_id, e.group_id), e.at_ms, e.body FROM events e
             LEFT JOIN groups g ON g.id = e.group_ref
             WHERE e.cursor > ?1 ORDER BY e.cursor LIMIT ?2",
            params![to_sql_int(cursor)?, page(limit)],
        )
    }

    /// The newest event cursor (0 if there is none).
    pub fn last_cursor(&self) -> Result<u64, StoreError> {
        let cursor: Option<i64> =
            self.conn
                .query_row("SELECT max(cursor) FROM events", [], |r| r.get(0))?;
        Ok(from_sql_int(cursor.unwrap_or(0), "events", "max cursor")?)
    }

    fn read_events(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut statement = self.conn.prepare_cached(sql)?;
        let rows = statement.query_map(params, |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Vec<u8>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (cursor, group, at_ms, body) = row?;
            let key = RowKey("cursor", cursor);
            let event: Event = postcard::from_bytes(&body)
                .map_err(|e| Corrupt::new("events", key.to_string(), e))?;
            out.push(StoredEvent {
                cursor: from_sql_int(cursor, "events", key)?,
                group: group_id_from(&group, "events", cursor)?,
                at_ms: from_sql_int(at_ms, "events", key)?,
                event,
            });
        }
        Ok(out)
    }

    /// Envelopes not yet handed to the network, oldest first.
    pub fn outbox(&self, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT o.id, g.group_id, e.bytes, o.welcome_for FROM outbox o
             JOIN envelopes e ON e.id = o.envelope_ref
             JOIN groups g ON g.id = e.group_ref
             ORDER BY o.id LIMIT ?1",
        )?;
        let rows = statement.query_map([page(limit)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, Vec<u8>>(2)?,
                r.get::<_, Option<Vec<u8>>>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (id, group, bytes, welcome_for) = row?;
            let key = RowKey("row", id);
            let welcome_for = welcome_for
                .map(|m| {
                    <[u8; 32]>::try_from(m.as_slice())
                        .map(MemberId)
                        .map_err(|_| {
                            Corrupt::new("outbox", key.to_string(), "member id is not 32 bytes")
                        })
                })
                .transpose()?;
            out.push(OutboxEntry {
                id: from_sql_int(id, "outbox", key)?,
                group: group_id_from(&group, "outbox", id)?,
                bytes,
                welcome_for,
            });
        }
        Ok(out)
    }

    /// Welcomes not yet delivered to `member`: (group, envelope), oldest first.
    pub fn pending_welcomes(
        &self,
        member: &MemberId,
    ) -> Result<Vec<(GroupId, Vec<u8>)>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT g.group_id, e.bytes, e.id FROM pending_welcomes w
             JOIN envelopes e ON e.id = w.envelope_ref
             JOIN groups g ON g.id = e.group_ref
             WHERE w.member = ?1 ORDER BY e.id LIMIT ?2",
        )?;
        let rows = statement.query_map(params![member.0, page(MAX_PAGE)], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (group, bytes, id) = row?;
            out.push((group_id_from(&group, "pending_welcomes", id)?, bytes));
        }
        Ok(out)
    }

    /// Every member with a welcome waiting.
    pub fn members_awaiting_welcome(&self) -> Result<Vec<MemberId>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT DISTINCT member FROM pending_welcomes ORDER BY member")?;
        let rows = statement.query_map([], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            let member = row?;
            let member = <[u8; 32]>::try_from(member.as_slice())
                .map(MemberId)
                .map_err(|_| {
                    Corrupt::new(
                        "pending_welcomes",
                        hex(&member),
                        "member id is not 32 bytes",
                    )
                })?;
            out.push(member);
        }
        Ok(out)
    }

    /// The member took its welcome to `group` (or no longer needs it).
    pub fn welcome_delivered(
        &mut self,
        member: &MemberId,
        group: &GroupId,
    ) -> Result<(), StoreError> {
        let Some(group_ref) = self.group_ref(group) else {
            return Ok(());
        };
        self.conn.execute(
            "DELETE FROM pending_welcomes WHERE member = ?1 AND envelope_ref IN
                (SELECT id FROM envelopes WHERE group_ref = ?2)",
            params![member.0, group_ref],
        )?;
        Ok(())
    }

    /// Envelopes waiting to be handed to the network.
    pub fn outbox_len(&self) -> Result<u64, StoreError> {
        let count: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM outbox")?
            .query_row([], |r| r.get(0))?;
        Ok(from_sql_int(count, "outbox", "count")?)
    }

    /// Removes outbox entries the network has taken. Entries not removed (a crash before this
    /// call) are handed out again: delivery is at least once, and receivers drop replays. So
    /// this commit skips the disk sync: losing it to a power cut only sends an envelope twice.
    pub fn outbox_sent(&mut self, ids: &[u64]) -> Result<(), StoreError> {
        self.set_syncing(false)?;
        let tx = self.conn.transaction()?;
        for id in ids {
            tx.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                .execute([to_sql_int(*id)?])?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// Goes through `(id, sender, control_seq, epoch, idx, bytes)` rows in log order and keeps
/// those a peer with `marks` lacks, within the page bounds (at least one, so that every page
/// makes progress). Shared by the group log and the mailbox, which store the same positions.
pub(crate) fn lacking(
    mut rows: rusqlite::Rows<'_>,
    table: &'static str,
    after: u64,
    marks: &HashMap<ShortId, HeldMark>,
    max_count: usize,
    max_bytes: usize,
) -> Result<(Vec<Vec<u8>>, Option<u64>), StoreError> {
    let mut out = Vec::new();
    let mut bytes = 0;
    let mut position = after;
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let key = RowKey("row", id);
        let sender: Option<Vec<u8>> = row.get(1)?;
        let sender = sender
            .map(|s| {
                <[u8; 8]>::try_from(s.as_slice())
                    .map(ShortId)
                    .map_err(|_| Corrupt::new(table, key.to_string(), "sender is not 8 bytes"))
            })
            .transpose()?;
        let control: Option<i64> = row.get(2)?;
        let epoch: Option<i64> = row.get(3)?;
        let index: Option<i64> = row.get(4)?;
        let lacked = match (sender.and_then(|s| marks.get(&s)), control, epoch, index) {
            // A sender the peer has nothing of, or a row stored without positions.
            (None, ..) => true,
            (Some((held, _)), Some(seq), _, _) => from_sql_int(seq, table, key)? > *held,
            (Some((_, held)), None, Some(epoch), Some(index)) => {
                let at = (
                    from_sql_int(epoch, table, key)?,
                    from_sql_int(index, table, key)?,
                );
                held.is_none_or(|held| at > held)
            }
            _ => return Err(Corrupt::new(table, key.to_string(), "no position").into()),
        };
        if lacked {
            let envelope: Vec<u8> = row.get(5)?;
            if !out.is_empty() && (out.len() >= max_count || bytes + envelope.len() > max_bytes) {
                return Ok((out, Some(position)));
            }
            bytes += envelope.len();
            out.push(envelope);
        }
        position = from_sql_int(id, table, key)?;
    }
    Ok((out, None))
}
