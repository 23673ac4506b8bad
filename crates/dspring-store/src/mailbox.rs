//! The mailbox role: envelopes of groups this node serves, stored without any keys, kept for a
//! retention period and served to returning members.

use std::collections::HashMap;

use dspring_proto::envelope::{Envelope, Unverified};
use dspring_proto::ids::ShortId;
use dspring_proto::{GroupId, MemberId};
use rusqlite::{OptionalExtension, params};

use crate::apply::{envelope_hash, sql_position};
use crate::error::{Corrupt, StoreError};
use crate::log::{HeldMark, LogEntry, lacking, page};
use crate::marks::contiguous_marks;
use crate::{Store, from_sql_int, group_id_from, hex, to_sql_int};

/// Where a member has read an own mailbox's news up to: a position of one instance of the
/// mailbox (a mailbox that lost its data starts again under a new instance id).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NewsCursor {
    pub after: u64,
    /// Zeros: none known yet.
    pub instance: [u8; 16],
}

/// What a mailbox tells a returning owner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailboxNews {
    /// Welcomes held for the owner: groups it was added to while away.
    pub welcomes: Vec<(GroupId, Vec<u8>)>,
    /// Groups kept for the owner that have envelopes after the position asked from.
    pub groups: Vec<GroupId>,
    /// Where to ask from next time.
    pub cursor: NewsCursor,
}

pub(crate) fn member_from(
    bytes: &[u8],
    table: &'static str,
    row: i64,
) -> Result<MemberId, Corrupt> {
    <[u8; 32]>::try_from(bytes)
        .map(MemberId)
        .map_err(|_| Corrupt::new(table, format!("row {row}"), "member id is not 32 bytes"))
}

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
        tx.execute(
            "DELETE FROM mailbox_owners WHERE group_id = ?1",
            [group.as_bytes()],
        )?;
        tx.execute(
            "DELETE FROM mailbox_welcomes WHERE group_id = ?1",
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
    /// no keys). Its position (sender, seq or epoch and index) is kept for sync.
    pub fn mailbox_put(
        &mut self,
        group: &GroupId,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<bool, StoreError> {
        let envelope = Unverified::<Envelope>::parse(bytes.to_vec())
            .map_err(|e| StoreError::invalid(format!("not an envelope: {e}")))?;
        if !self.mailbox_serves(group)? {
            return Err(StoreError::invalid(
                "this node is not a mailbox of the group",
            ));
        }
        let (control_seq, epoch, index) = sql_position(&envelope)?;
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO mailbox_envelopes
                    (group_id, hash, stored_ms, bytes, sender, control_seq, epoch, idx)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT(group_id, hash) DO NOTHING",
            )?
            .execute(params![
                group.as_bytes(),
                envelope_hash(bytes),
                to_sql_int(now_ms)?,
                bytes,
                envelope.sender().0,
                control_seq,
                epoch,
                index
            ])?;
        Ok(inserted > 0)
    }

    /// Whether this node keeps a mailbox for the group.
    pub fn mailbox_serves(&self, group: &GroupId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached("SELECT 1 FROM mailbox_groups WHERE group_id = ?1")?
            .query_row([group.as_bytes()], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Envelopes and bytes held for a served group.
    pub fn mailbox_usage(&self, group: &GroupId) -> Result<(u64, u64), StoreError> {
        let (count, bytes): (i64, i64) = self
            .conn
            .prepare_cached(
                "SELECT count(*), coalesce(sum(length(bytes)), 0) FROM mailbox_envelopes
                 WHERE group_id = ?1",
            )?
            .query_row([group.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))?;
        let key = hex(group.as_bytes());
        Ok((
            from_sql_int(count, "mailbox_envelopes", &key)?,
            from_sql_int(bytes, "mailbox_envelopes", &key)?,
        ))
    }

    /// What a served group's mailbox lacks compared with a peer is what the peer sends: this
    /// is the mailbox's side, per sender the position up to which it holds the sender's
    /// stream without a hole (`marks.rs`).
    pub fn mailbox_marks(&self, group: &GroupId) -> Result<HashMap<ShortId, HeldMark>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT sender, control_seq, epoch, idx FROM mailbox_envelopes
             WHERE group_id = ?1 AND sender IS NOT NULL ORDER BY sender",
        )?;
        contiguous_marks(
            statement.query([group.as_bytes()])?,
            "mailbox_envelopes",
            true,
        )
    }

    /// A served group's envelopes after position `after` that a peer with these marks lacks;
    /// as [`Store::log_lacking`].
    pub fn mailbox_lacking(
        &self,
        group: &GroupId,
        after: u64,
        marks: &HashMap<ShortId, HeldMark>,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<u64>), StoreError> {
        let after = self.mailbox_position(after)?;
        let mut statement = self.conn.prepare_cached(
            "SELECT id, sender, control_seq, epoch, idx, bytes FROM mailbox_envelopes
             WHERE group_id = ?1 AND id > ?2 ORDER BY id",
        )?;
        let rows = statement.query(params![group.as_bytes(), to_sql_int(after)?])?;
        lacking(
            rows,
            "mailbox_envelopes",
            after,
            marks,
            max_count,
            max_bytes,
        )
    }

    /// The position of the newest envelope kept for a served group (0 if none).
    pub fn mailbox_end(&self, group: &GroupId) -> Result<u64, StoreError> {
        let end: Option<i64> = self
            .conn
            .prepare_cached("SELECT max(id) FROM mailbox_envelopes WHERE group_id = ?1")?
            .query_row([group.as_bytes()], |r| r.get(0))?;
        Ok(from_sql_int(end.unwrap_or(0), "mailbox_envelopes", "end")?)
    }

    /// Keeps a served group for `member` (an owner of this mailbox), so that its news reach
    /// them.
    /// Refused once the owner has `max_groups` groups kept.
    pub fn mailbox_add_owner(
        &mut self,
        group: &GroupId,
        member: &MemberId,
        max_groups: usize,
    ) -> Result<(), StoreError> {
        let owned: i64 = self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM mailbox_owners WHERE member = ?1 AND group_id != ?2",
            )?
            .query_row(params![member.0, group.as_bytes()], |r| r.get(0))?;
        if usize::try_from(owned).unwrap_or(usize::MAX) >= max_groups {
            return Err(StoreError::invalid("too many groups kept for this member"));
        }
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO mailbox_owners (group_id, member) VALUES (?1, ?2)",
            )?
            .execute(params![group.as_bytes(), member.0])?;
        // The owner has the group now: a welcome held for it is no longer needed.
        self.conn
            .prepare_cached("DELETE FROM mailbox_welcomes WHERE member = ?1 AND group_id = ?2")?
            .execute(params![member.0, group.as_bytes()])?;
        Ok(())
    }

    /// The owners a served group is kept for.
    pub fn mailbox_owners(&self, group: &GroupId) -> Result<Vec<MemberId>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT member FROM mailbox_owners WHERE group_id = ?1")?;
        let rows = statement.query_map([group.as_bytes()], |r| r.get::<_, Vec<u8>>(0))?;
        let mut out = Vec::new();
        for row in rows {
            let member = row?;
            let member = <[u8; 32]>::try_from(member.as_slice())
                .map_err(|_| Corrupt::new("mailbox_owners", "member", "not 32 bytes"))?;
            out.push(MemberId(member));
        }
        Ok(out)
    }

    /// Holds a welcome for an owner who is away, replacing an older one for the same group;
    /// refused once `max_per_member` are held for them.
    pub fn mailbox_hold_welcome(
        &mut self,
        member: &MemberId,
        group: &GroupId,
        bytes: &[u8],
        now_ms: u64,
        max_per_member: usize,
    ) -> Result<(), StoreError> {
        Unverified::<Envelope>::parse(bytes.to_vec())
            .map_err(|e| StoreError::invalid(format!("not an envelope: {e}")))?;
        let tx = self.conn.transaction()?;
        let held: i64 = tx.query_row(
            "SELECT count(*) FROM mailbox_welcomes WHERE member = ?1 AND group_id != ?2",
            params![member.0, group.as_bytes()],
            |r| r.get(0),
        )?;
        if usize::try_from(held).unwrap_or(usize::MAX) >= max_per_member {
            return Err(StoreError::invalid(
                "too many welcomes held for this member",
            ));
        }
        tx.execute(
            "INSERT INTO mailbox_welcomes (member, group_id, stored_ms, bytes)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(member, group_id) DO UPDATE SET
                stored_ms = excluded.stored_ms, bytes = excluded.bytes",
            params![member.0, group.as_bytes(), to_sql_int(now_ms)?, bytes],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// What an owner asks for on return: the welcomes held for it, the groups kept for it
    /// with envelopes after mailbox position `after`, and the position to ask from next time.
    pub fn mailbox_news(
        &mut self,
        member: &MemberId,
        from: NewsCursor,
        max_groups: usize,
    ) -> Result<MailboxNews, StoreError> {
        let instance = self.mailbox_instance()?;
        let after = if from.instance == instance {
            self.mailbox_position(from.after)?
        } else {
            0
        };
        let mut welcomes = Vec::new();
        let mut statement = self.conn.prepare_cached(
            "SELECT id, group_id, bytes FROM mailbox_welcomes WHERE member = ?1 ORDER BY id
             LIMIT ?2",
        )?;
        let mut rows = statement.query(params![member.0, page(max_groups)])?;
        while let Some(row) = rows.next()? {
            let id: i64 = row.get(0)?;
            let group: Vec<u8> = row.get(1)?;
            welcomes.push((group_id_from(&group, "mailbox_welcomes", id)?, row.get(2)?));
        }
        let mut groups = Vec::new();
        let mut statement = self.conn.prepare_cached(
            "SELECT o.group_id, max(e.id) FROM mailbox_owners o
             JOIN mailbox_envelopes e ON e.group_id = o.group_id AND e.id > ?2
             WHERE o.member = ?1 GROUP BY o.group_id ORDER BY max(e.id) LIMIT ?3",
        )?;
        let mut rows = statement.query(params![member.0, to_sql_int(after)?, page(max_groups)])?;
        let mut cursor = after;
        while let Some(row) = rows.next()? {
            let latest: i64 = row.get(1)?;
            let group: Vec<u8> = row.get(0)?;
            groups.push(group_id_from(&group, "mailbox_owners", latest)?);
            cursor = cursor.max(from_sql_int(latest, "mailbox_envelopes", "news")?);
        }
        Ok(MailboxNews {
            welcomes,
            groups,
            cursor: NewsCursor {
                after: cursor,
                instance,
            },
        })
    }

    /// This mailbox's instance id: random, made at first use, kept with its data.
    fn mailbox_instance(&mut self) -> Result<[u8; 16], StoreError> {
        if let Some(stored) = crate::meta(&self.conn, "mailbox_instance")?
            && let Ok(instance) = <[u8; 16]>::try_from(stored.as_slice())
        {
            return Ok(instance);
        }
        let mut instance = [0u8; 16];
        getrandom::fill(&mut instance)
            .map_err(|e| StoreError::invalid(format!("randomness: {e}")))?;
        crate::set_meta(&self.conn, "mailbox_instance", &instance)?;
        Ok(instance)
    }

    /// A position a peer asks from, or 0 if this mailbox never reached it: its data were
    /// lost or it is another mailbox under the same key, and everything it holds is news.
    fn mailbox_position(&self, after: u64) -> Result<u64, StoreError> {
        let highest: Option<i64> = self
            .conn
            .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'mailbox_envelopes'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        let highest = from_sql_int(highest.unwrap_or(0), "sqlite_sequence", "mailbox")?;
        Ok(if after > highest { 0 } else { after })
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

    /// Drops envelopes (and held welcomes) older than their group's retention; returns how
    /// many envelopes.
    pub fn mailbox_expire(&mut self, now_ms: u64) -> Result<usize, StoreError> {
        let now = to_sql_int(now_ms)?;
        self.conn.execute(
            "DELETE FROM mailbox_welcomes WHERE id IN (
                SELECT w.id FROM mailbox_welcomes w
                JOIN mailbox_groups g ON g.group_id = w.group_id
                WHERE w.stored_ms + g.retention_ms < ?1)",
            [now],
        )?;
        Ok(self.conn.execute(
            "DELETE FROM mailbox_envelopes WHERE id IN (
                SELECT e.id FROM mailbox_envelopes e
                JOIN mailbox_groups g ON g.group_id = e.group_id
                WHERE e.stored_ms + g.retention_ms < ?1)",
            [now],
        )?)
    }

    /// Member side: records that `mailbox` serves `group` (announced in the group).
    pub fn add_group_mailbox(
        &mut self,
        group: &GroupId,
        mailbox: &MemberId,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO group_mailboxes (group_id, mailbox) VALUES (?1, ?2)",
            )?
            .execute(params![group.as_bytes(), mailbox.0])?;
        Ok(())
    }

    /// Member side: every (group, mailbox) announced.
    pub fn group_mailboxes(&self) -> Result<Vec<(GroupId, MemberId)>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT group_id, mailbox FROM group_mailboxes ORDER BY group_id")?;
        let mut rows = statement.query([])?;
        let mut out = Vec::new();
        let mut n = 0i64;
        while let Some(row) = rows.next()? {
            let group: Vec<u8> = row.get(0)?;
            let mailbox: Vec<u8> = row.get(1)?;
            out.push((
                group_id_from(&group, "group_mailboxes", n)?,
                member_from(&mailbox, "group_mailboxes", n)?,
            ));
            n += 1;
        }
        Ok(out)
    }

    /// Leave requests not acted on yet: (group, member who asked).
    pub fn leave_requests(&self) -> Result<Vec<(GroupId, MemberId)>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT group_id, member FROM leave_requests ORDER BY group_id")?;
        let mut rows = statement.query([])?;
        let mut out = Vec::new();
        let mut n = 0i64;
        while let Some(row) = rows.next()? {
            let group: Vec<u8> = row.get(0)?;
            let member: Vec<u8> = row.get(1)?;
            out.push((
                group_id_from(&group, "leave_requests", n)?,
                member_from(&member, "leave_requests", n)?,
            ));
            n += 1;
        }
        Ok(out)
    }

    /// Drops a leave request that no longer applies (the member is gone, or this node left
    /// the group).
    pub fn forget_leave_request(
        &mut self,
        group: &GroupId,
        member: &MemberId,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("DELETE FROM leave_requests WHERE group_id = ?1 AND member = ?2")?
            .execute(params![group.as_bytes(), member.0])?;
        Ok(())
    }

    /// Every named group's current name.
    pub fn group_names(&self) -> Result<Vec<crate::GroupName>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT group_id, name, set_ms, set_by FROM group_names ORDER BY group_id",
        )?;
        let mut rows = statement.query([])?;
        let mut out = Vec::new();
        let mut n = 0i64;
        while let Some(row) = rows.next()? {
            let group: Vec<u8> = row.get(0)?;
            let name: String = row.get(1)?;
            let set_ms: i64 = row.get(2)?;
            let set_by: Vec<u8> = row.get(3)?;
            if name.len() > crate::MAX_GROUP_NAME_BYTES {
                return Err(
                    Corrupt::new("group_names", format!("row {n}"), "name too long").into(),
                );
            }
            out.push(crate::GroupName {
                group: group_id_from(&group, "group_names", n)?,
                name,
                set_ms: from_sql_int(set_ms, "group_names", crate::RowKey("row", n))?,
                set_by: member_from(&set_by, "group_names", n)?,
            });
            n += 1;
        }
        Ok(out)
    }

    /// Member side: the mailboxes a contact named on its card (replacing earlier ones).
    pub fn set_contact_mailboxes(
        &mut self,
        member: &MemberId,
        mailboxes: &[MemberId],
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.execute(
            "DELETE FROM contact_mailboxes WHERE member = ?1",
            [member.0],
        )?;
        for mailbox in mailboxes {
            tx.execute(
                "INSERT OR IGNORE INTO contact_mailboxes (member, mailbox) VALUES (?1, ?2)",
                params![member.0, mailbox.0],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn contact_mailboxes(&self, member: &MemberId) -> Result<Vec<MemberId>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT mailbox FROM contact_mailboxes WHERE member = ?1 ORDER BY mailbox",
        )?;
        let mut rows = statement.query([member.0])?;
        let mut out = Vec::new();
        let mut n = 0i64;
        while let Some(row) = rows.next()? {
            let mailbox: Vec<u8> = row.get(0)?;
            out.push(member_from(&mailbox, "contact_mailboxes", n)?);
            n += 1;
        }
        Ok(out)
    }

    /// Member side: names a mailbox of this node (it goes on the contact card).
    pub fn add_own_mailbox(&mut self, mailbox: &MemberId) -> Result<(), StoreError> {
        self.conn
            .prepare_cached("INSERT OR IGNORE INTO own_mailboxes (member) VALUES (?1)")?
            .execute([mailbox.0])?;
        Ok(())
    }

    /// This node's mailboxes, each with where its news were read up to.
    pub fn own_mailboxes(&self) -> Result<Vec<(MemberId, NewsCursor)>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT member, news_after, news_instance FROM own_mailboxes ORDER BY member",
        )?;
        let mut rows = statement.query([])?;
        let mut out = Vec::new();
        let mut n = 0i64;
        while let Some(row) = rows.next()? {
            let member: Vec<u8> = row.get(0)?;
            let after = from_sql_int(row.get(1)?, "own_mailboxes", "news_after")?;
            let instance: Option<Vec<u8>> = row.get(2)?;
            let instance = match instance {
                None => [0; 16],
                Some(bytes) => <[u8; 16]>::try_from(bytes.as_slice()).map_err(|_| {
                    Corrupt::new(
                        "own_mailboxes",
                        format!("row {n}"),
                        "instance is not 16 bytes",
                    )
                })?,
            };
            out.push((
                member_from(&member, "own_mailboxes", n)?,
                NewsCursor { after, instance },
            ));
            n += 1;
        }
        Ok(out)
    }

    /// Records that an own mailbox's news up to `cursor` have been fetched in full.
    pub fn set_news_cursor(
        &mut self,
        mailbox: &MemberId,
        cursor: NewsCursor,
    ) -> Result<(), StoreError> {
        self.conn
            .prepare_cached(
                "UPDATE own_mailboxes SET news_after = ?2, news_instance = ?3 WHERE member = ?1",
            )?
            .execute(params![
                mailbox.0,
                to_sql_int(cursor.after)?,
                cursor.instance.to_vec()
            ])?;
        Ok(())
    }
}
