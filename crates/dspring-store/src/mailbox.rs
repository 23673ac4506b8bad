//! The mailbox role: envelopes of groups this node serves, stored without any keys, kept for a
//! retention period and served to returning members.

use dspring_proto::GroupId;
use dspring_proto::envelope::{Envelope, Unverified};
use rusqlite::{OptionalExtension, params};

use crate::apply::envelope_hash;
use crate::error::StoreError;
use crate::log::{LogEntry, page};
use crate::{Store, from_sql_int, group_id_from, to_sql_int};

/// A group this node keeps a mailbox for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MailboxGroup {
    pub group: GroupId,
    /// Envelopes older than this are dropped.
    pub retention_ms: u64,
    pub registered_ms: u64,
}

impl Store {
    /// Starts (or updates) serving a group as its mailbox.
    pub fn mailbox_register(
        &mut self,
        group: &GroupId,
        retention_ms: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO mailbox_groups (group_id, retention_ms, registered_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT(group_id) DO UPDATE SET retention_ms = excluded.retention_ms",
            params![
                group.as_bytes(),
                to_sql_int(retention_ms)?,
                to_sql_int(now_ms)?
            ],
        )?;
        Ok(())
    }

    /// Stops serving a group and drops its envelopes.
    pub fn mailbox_unregister(&mut self, group: &GroupId) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM mailbox_envelopes WHERE group_id = ?1",
            [group.as_bytes()],
        )?;
        tx.execute(
            "DELETE FROM mailbox_groups WHERE group_id = ?1",
            [group.as_bytes()],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn mailbox_groups(&self) -> Result<Vec<MailboxGroup>, StoreError> {
        let mut statement = self.conn.prepare(
            "SELECT group_id, retention_ms, registered_ms FROM mailbox_groups ORDER BY group_id",
        )?;
        let rows = statement.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for (n, row) in rows.enumerate() {
            let (group, retention, registered) = row?;
            let n = i64::try_from(n).unwrap_or(i64::MAX);
            out.push(MailboxGroup {
                group: group_id_from(&group, "mailbox_groups", n)?,
                retention_ms: from_sql_int(retention, "mailbox_groups", "retention")?,
                registered_ms: from_sql_int(registered, "mailbox_groups", "registered")?,
            });
        }
        Ok(out)
    }

    /// Stores an envelope for a served group; false if it was already there. Refuses groups
    /// not served and bytes that are not a well-formed envelope (it cannot check more: it has
    /// no keys).
    pub fn mailbox_put(
        &mut self,
        group: &GroupId,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        Unverified::<Envelope>::parse(bytes.to_vec())
            .map_err(|e| StoreError::invalid(format!("not an envelope: {e}")))?;
        let served: Option<i64> = self
            .conn
            .prepare_cached("SELECT 1 FROM mailbox_groups WHERE group_id = ?1")?
            .query_row([group.as_bytes()], |r| r.get(0))
            .optional()?;
        if served.is_none() {
            return Err(StoreError::invalid(
                "this node is not a mailbox of the group",
            ));
        }
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO mailbox_envelopes (group_id, hash, stored_ms, bytes)
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT(group_id, hash) DO NOTHING",
            )?
            .execute(params![
                group.as_bytes(),
                envelope_hash(bytes),
                to_sql_int(now_ms)?,
                bytes
            ])?;
        Ok(inserted > 0)
    }

    /// A served group's envelopes after local position `after`, oldest first.
    pub fn mailbox_page(
        &self,
        group: &GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<LogEntry>, StoreError> {
        self.log_entries(
            "mailbox_envelopes",
            "SELECT id, bytes FROM mailbox_envelopes WHERE group_id = ?1 AND id > ?2
             ORDER BY id LIMIT ?3",
            params![group.as_bytes(), to_sql_int(after)?, page(limit)],
        )
    }

    /// Drops envelopes older than their group's retention; returns how many.
    pub fn mailbox_expire(&mut self, now_ms: u64) -> Result<usize, StoreError> {
        Ok(self.conn.execute(
            "DELETE FROM mailbox_envelopes WHERE id IN (
                SELECT e.id FROM mailbox_envelopes e
                JOIN mailbox_groups g ON g.group_id = e.group_id
                WHERE e.stored_ms + g.retention_ms < ?1)",
            [to_sql_int(now_ms)?],
        )?)
    }
}
