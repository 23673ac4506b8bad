//! Invitations: welcomes from people who are not contacts, held for the user to accept or
//! decline when the node takes welcomes from contacts only.

use dspring_proto::{Event, GroupId, MemberId};
use rusqlite::{OptionalExtension, params};

use crate::apply::{EventGroup, log_event};
use crate::error::StoreError;
use crate::log::StoredEvent;
use crate::mailbox::member_from;
use crate::{Store, from_sql_int, group_id_from, to_sql_int};

/// Invitations held at most: a stranger can send many, and the oldest go first.
pub const MAX_INVITATIONS: usize = 32;
/// Invitations held from one adder at most: one identity alone cannot fill the list (new
/// identities cost nothing, so this slows a determined stranger down, no more).
pub const MAX_INVITATIONS_PER_ADDER: usize = 3;

/// A welcome held for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invitation {
    pub group: GroupId,
    /// Who added this node.
    pub adder: MemberId,
    pub received_ms: u64,
}

/// What became of a welcome offered as an invitation.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Held {
    /// Held for the user from now on; the [`Event::Invited`] logged with it, for the
    /// application.
    New(StoredEvent),
    /// Held for the user already.
    Kept,
    /// The user declined this group's invitation before.
    Declined,
    /// Pushed out at once by the bounds (a clock cannot do this: eviction goes by arrival).
    Evicted,
}

impl Store {
    /// Holds a welcome (already checked: it is one for this node, signed by `adder`). Once
    /// `adder` has [`MAX_INVITATIONS_PER_ADDER`] held, or all have [`MAX_INVITATIONS`], the
    /// oldest of theirs (or of all) goes; declined ones count.
    pub fn hold_invitation(
        &mut self,
        group: &GroupId,
        adder: &MemberId,
        welcome: &[u8],
        now_ms: u64,
    ) -> Result<Held, StoreError> {
        let tx = self.conn.transaction()?;
        let inserted = tx.execute(
            "INSERT INTO invitations (group_id, adder, welcome, received_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(group_id) DO NOTHING",
            params![group.as_bytes(), adder.0, welcome, to_sql_int(now_ms)?],
        )? > 0;
        // Oldest by arrival order (ids), not by clock: a clock set back must not evict the
        // newest.
        tx.execute(
            "DELETE FROM invitations WHERE id IN (
                SELECT id FROM invitations WHERE adder = ?1 ORDER BY id DESC LIMIT -1 OFFSET ?2)",
            params![adder.0, to_sql_int(MAX_INVITATIONS_PER_ADDER as u64)?],
        )?;
        tx.execute(
            "DELETE FROM invitations WHERE id IN (
                SELECT id FROM invitations ORDER BY id DESC LIMIT -1 OFFSET ?1)",
            params![to_sql_int(MAX_INVITATIONS as u64)?],
        )?;
        forget_events_of_gone_invitations(&tx)?;
        let declined: Option<bool> = tx
            .query_row(
                "SELECT declined FROM invitations WHERE group_id = ?1",
                [group.as_bytes()],
                |r| r.get(0),
            )
            .optional()?;
        let held = match declined {
            Some(false) if inserted => {
                let event = Event::Invited { by: *adder };
                let cursor = log_event(&tx, EventGroup::Id(group), &event, to_sql_int(now_ms)?)?;
                Held::New(StoredEvent {
                    cursor,
                    group: *group,
                    at_ms: now_ms,
                    event,
                })
            }
            Some(false) => Held::Kept,
            Some(true) => Held::Declined,
            None => Held::Evicted,
        };
        tx.commit()?;
        Ok(held)
    }

    /// The invitations held and not declined, oldest first.
    pub fn invitations(&self) -> Result<Vec<Invitation>, StoreError> {
        let mut statement = self.conn.prepare_cached(
            "SELECT group_id, adder, received_ms FROM invitations WHERE declined = 0 ORDER BY id",
        )?;
        let mut rows = statement.query([])?;
        let mut out = Vec::new();
        let mut n = 0i64;
        while let Some(row) = rows.next()? {
            let group: Vec<u8> = row.get(0)?;
            let adder: Vec<u8> = row.get(1)?;
            out.push(Invitation {
                group: group_id_from(&group, "invitations", n)?,
                adder: member_from(&adder, "invitations", n)?,
                received_ms: from_sql_int(row.get(2)?, "invitations", "received_ms")?,
            });
            n += 1;
        }
        Ok(out)
    }

    /// The held (not declined) welcome of `group` and who sent it, if any.
    pub fn invitation(&self, group: &GroupId) -> Result<Option<(MemberId, Vec<u8>)>, StoreError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = self
            .conn
            .prepare_cached(
                "SELECT adder, welcome FROM invitations WHERE group_id = ?1 AND declined = 0",
            )?
            .query_row([group.as_bytes()], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        row.map(|(adder, welcome)| Ok((member_from(&adder, "invitations", 0)?, welcome)))
            .transpose()
    }

    /// Declines an invitation: no longer listed, and not listed again when offered again.
    /// False if there was none to decline.
    pub fn decline_invitation(&mut self, group: &GroupId) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE invitations SET declined = 1, welcome = x'' WHERE group_id = ?1 AND declined = 0",
            )?
            .execute([group.as_bytes()])?
            > 0)
    }

    /// Forgets a group's invitation, declined or not (the group was joined).
    pub fn forget_invitation(&mut self, group: &GroupId) -> Result<(), StoreError> {
        let tx = self.conn.transaction()?;
        tx.prepare_cached("DELETE FROM invitations WHERE group_id = ?1")?
            .execute([group.as_bytes()])?;
        forget_events_of_gone_invitations(&tx)?;
        tx.commit()?;
        Ok(())
    }
}

/// Deletes the events of invitations no longer held. A stranger can send any number of
/// invitations, so their events are bounded as the invitations are: they go together (the
/// cursors are not reused: the table is AUTOINCREMENT). A joined group has its own events.
fn forget_events_of_gone_invitations(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    tx.prepare_cached(
        "DELETE FROM events WHERE group_ref IS NULL
         AND group_id NOT IN (SELECT group_id FROM invitations)",
    )?
    .execute([])?;
    Ok(())
}
