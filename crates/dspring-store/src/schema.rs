//! The schema and its migrations. Each migration runs once, in order, in one transaction with
//! the version bump; a database from a newer version is refused rather than misread.

use rusqlite::{Connection, OptionalExtension};

use crate::error::OpenError;

/// Migrations in order; the schema version is the number applied. Never edit a released one:
/// append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    r#"
    -- Non-secret settings: key check value, passphrase parameters.
    CREATE TABLE meta (
        key TEXT PRIMARY KEY,
        value BLOB NOT NULL
    ) WITHOUT ROWID;

    -- This device: identity key and signed prekeys, sealed.
    CREATE TABLE device (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        member_id BLOB NOT NULL,
        sealed BLOB NOT NULL
    );

    -- One row per one-time prekey, deleted in the transaction that uses it.
    CREATE TABLE one_time_prekeys (
        id INTEGER PRIMARY KEY,
        sealed BLOB NOT NULL,
        handed_out INTEGER NOT NULL DEFAULT 0
    );

    CREATE TABLE contacts (
        member_id BLOB PRIMARY KEY,
        display_name TEXT NOT NULL,
        verified INTEGER NOT NULL,
        addresses BLOB NOT NULL,
        bundle BLOB,
        updated_ms INTEGER NOT NULL
    ) WITHOUT ROWID;

    -- One row per group; `id` is the short local reference the other tables use.
    CREATE TABLE groups (
        id INTEGER PRIMARY KEY,
        group_id BLOB NOT NULL UNIQUE,
        format_version INTEGER NOT NULL,
        active INTEGER NOT NULL,
        sealed_state BLOB NOT NULL
    );

    -- The group log: every envelope sent or delivered, as the network carried it.
    CREATE TABLE envelopes (
        id INTEGER PRIMARY KEY,
        group_ref INTEGER NOT NULL REFERENCES groups(id),
        hash BLOB NOT NULL,
        sender BLOB NOT NULL,
        control_seq INTEGER,
        epoch INTEGER,
        idx INTEGER,
        bytes BLOB NOT NULL
    );
    CREATE UNIQUE INDEX envelopes_by_hash ON envelopes(group_ref, hash);

    -- Per group and sender: the highest positions held, for sync.
    CREATE TABLE sender_marks (
        group_ref INTEGER NOT NULL REFERENCES groups(id),
        sender BLOB NOT NULL,
        control_seq INTEGER NOT NULL,
        app_epoch INTEGER NOT NULL,
        app_index INTEGER NOT NULL,
        envelopes INTEGER NOT NULL,
        PRIMARY KEY (group_ref, sender)
    ) WITHOUT ROWID;

    -- The local event log; AUTOINCREMENT so that a cursor is never reused, even after rows
    -- are deleted. Application messages (received and sent) are events of kinds 0 and 1.
    CREATE TABLE events (
        cursor INTEGER PRIMARY KEY AUTOINCREMENT,
        group_ref INTEGER NOT NULL REFERENCES groups(id),
        kind INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        body BLOB NOT NULL
    );
    CREATE INDEX messages_by_group ON events(group_ref, cursor) WHERE kind IN (0, 1);

    -- Envelopes not yet handed to the network (their bytes are in the log).
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        envelope_ref INTEGER NOT NULL REFERENCES envelopes(id),
        welcome_for BLOB
    );

    -- Mailbox role: groups served and their envelopes, without any keys.
    CREATE TABLE mailbox_groups (
        group_id BLOB PRIMARY KEY,
        retention_ms INTEGER NOT NULL,
        registered_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE mailbox_envelopes (
        id INTEGER PRIMARY KEY,
        group_id BLOB NOT NULL,
        hash BLOB NOT NULL,
        stored_ms INTEGER NOT NULL,
        bytes BLOB NOT NULL
    );
    CREATE UNIQUE INDEX mailbox_by_hash ON mailbox_envelopes(group_id, hash);
    CREATE INDEX mailbox_by_age ON mailbox_envelopes(stored_ms);
    "#,
    // 2: welcomes waiting for a member who was offline when added.
    r#"
    CREATE TABLE pending_welcomes (
        member BLOB NOT NULL,
        envelope_ref INTEGER NOT NULL REFERENCES envelopes(id),
        PRIMARY KEY (member, envelope_ref)
    ) WITHOUT ROWID;
    "#,
    // 3: mailboxes that serve sync (positions of held envelopes), hold welcomes for their
    // owners, and are recorded by the groups they serve.
    r#"
    ALTER TABLE mailbox_envelopes ADD COLUMN sender BLOB;
    ALTER TABLE mailbox_envelopes ADD COLUMN control_seq INTEGER;
    ALTER TABLE mailbox_envelopes ADD COLUMN epoch INTEGER;
    ALTER TABLE mailbox_envelopes ADD COLUMN idx INTEGER;
    CREATE INDEX mailbox_by_group ON mailbox_envelopes(group_id, id);

    -- Mailbox side: for which owners (members this mailbox serves) a group is kept.
    CREATE TABLE mailbox_owners (
        group_id BLOB NOT NULL,
        member BLOB NOT NULL,
        PRIMARY KEY (member, group_id)
    ) WITHOUT ROWID;

    -- Mailbox side: welcomes held for owners who were offline when added.
    CREATE TABLE mailbox_welcomes (
        id INTEGER PRIMARY KEY,
        member BLOB NOT NULL,
        group_id BLOB NOT NULL,
        stored_ms INTEGER NOT NULL,
        bytes BLOB NOT NULL,
        UNIQUE (member, group_id)
    );

    -- Member side: the mailboxes announced in each group.
    CREATE TABLE group_mailboxes (
        group_id BLOB NOT NULL,
        mailbox BLOB NOT NULL,
        PRIMARY KEY (group_id, mailbox)
    ) WITHOUT ROWID;

    -- Member side: the mailboxes a contact named on its card (where to leave its welcomes).
    CREATE TABLE contact_mailboxes (
        member BLOB NOT NULL,
        mailbox BLOB NOT NULL,
        PRIMARY KEY (member, mailbox)
    ) WITHOUT ROWID;

    -- Member side: this node's own mailboxes (named on its contact card).
    CREATE TABLE own_mailboxes (
        member BLOB PRIMARY KEY
    ) WITHOUT ROWID;
    "#,
    // 4: group names; and a group's state in parts: `groups.sealed_state` holds the base (format 2) and this
    // table one sealed row per sender's chains, so that a message rewrites one small row
    // instead of the whole state. Rows still in the whole format (1) are rewritten in parts
    // when the store is next opened (`Store::open`), which needs the key.
    r#"
    CREATE TABLE group_chains (
        group_ref INTEGER NOT NULL REFERENCES groups(id),
        sender BLOB NOT NULL,
        sealed BLOB NOT NULL,
        PRIMARY KEY (group_ref, sender)
    ) WITHOUT ROWID;

    -- A group's name as its members set it: the latest by (set_ms, set_by) wins.
    CREATE TABLE group_names (
        group_id BLOB PRIMARY KEY,
        name TEXT NOT NULL,
        set_ms INTEGER NOT NULL,
        set_by BLOB NOT NULL
    ) WITHOUT ROWID;
    "#,
    // 5: each sender's positions in order, for sync marks that stop at the first hole
    // (`marks.rs`); covering, so that computing a mark reads only the index.
    r#"
    CREATE INDEX envelopes_by_sender ON envelopes(group_ref, sender, control_seq, epoch, idx);
    CREATE INDEX mailbox_by_sender
        ON mailbox_envelopes(group_id, sender, control_seq, epoch, idx);
    "#,
    // 6: a mailbox's positions never go back. Without AUTOINCREMENT, SQLite reused ids once
    // expiry had emptied the table, and a member's news cursor or sync position past them
    // skipped the new envelopes. The table is rebuilt with its ids kept. A member keeps each
    // own mailbox's news cursor across restarts, where each removed member's log ends, and
    // the leave requests not yet acted on; and invitations held for the user.
    r#"
    CREATE TABLE mailbox_envelopes_v6 (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        group_id BLOB NOT NULL,
        hash BLOB NOT NULL,
        stored_ms INTEGER NOT NULL,
        bytes BLOB NOT NULL,
        sender BLOB,
        control_seq INTEGER,
        epoch INTEGER,
        idx INTEGER
    );
    INSERT INTO mailbox_envelopes_v6
        (id, group_id, hash, stored_ms, bytes, sender, control_seq, epoch, idx)
        SELECT id, group_id, hash, stored_ms, bytes, sender, control_seq, epoch, idx
        FROM mailbox_envelopes;
    DROP TABLE mailbox_envelopes;
    ALTER TABLE mailbox_envelopes_v6 RENAME TO mailbox_envelopes;
    CREATE UNIQUE INDEX mailbox_by_hash ON mailbox_envelopes(group_id, hash);
    CREATE INDEX mailbox_by_age ON mailbox_envelopes(stored_ms);
    CREATE INDEX mailbox_by_group ON mailbox_envelopes(group_id, id);
    CREATE INDEX mailbox_by_sender
        ON mailbox_envelopes(group_id, sender, control_seq, epoch, idx);

    ALTER TABLE own_mailboxes ADD COLUMN news_after INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE own_mailboxes ADD COLUMN news_instance BLOB;

    -- Members who asked to leave a group and are not removed yet: the remaining members'
    -- nodes take turns removing them, and a restart must not forget the request.
    CREATE TABLE leave_requests (
        group_id BLOB NOT NULL,
        member BLOB NOT NULL,
        PRIMARY KEY (group_id, member)
    ) WITHOUT ROWID;

    -- Welcomes from people who are not contacts, for the user to accept or decline (a node
    -- that takes welcomes from contacts only); bounded by the code.
    -- A declined one stays (not listed) so that the same welcome, offered again by the adder
    -- or a mailbox, is not listed again.
    CREATE TABLE invitations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        group_id BLOB NOT NULL UNIQUE,
        adder BLOB NOT NULL,
        welcome BLOB NOT NULL,
        received_ms INTEGER NOT NULL,
        declined INTEGER NOT NULL DEFAULT 0
    );

    -- Members removed from a group, and the end of the group log when their removal was
    -- logged here: a removed member's sync is answered up to there (what it may read, and
    -- what it needs to deliver its own removal), and no further.
    CREATE TABLE former_members (
        group_ref INTEGER NOT NULL REFERENCES groups(id),
        member BLOB NOT NULL,
        log_end INTEGER NOT NULL,
        PRIMARY KEY (group_ref, member)
    ) WITHOUT ROWID;
    "#,
    // 7: events of a group this node has no row for: an invitation held for the user (kind
    // 9). Such an event names its group by `group_id`; every other by `group_ref`. The table
    // is rebuilt with its cursors and its AUTOINCREMENT counter kept, so that no cursor a
    // client holds is ever reused.
    r#"
    CREATE TABLE events_v7 (
        cursor INTEGER PRIMARY KEY AUTOINCREMENT,
        group_ref INTEGER REFERENCES groups(id),
        group_id BLOB,
        kind INTEGER NOT NULL,
        at_ms INTEGER NOT NULL,
        body BLOB NOT NULL,
        CHECK ((group_ref IS NULL) <> (group_id IS NULL))
    );
    INSERT INTO events_v7 (cursor, group_ref, kind, at_ms, body)
        SELECT cursor, group_ref, kind, at_ms, body FROM events;
    DELETE FROM sqlite_sequence WHERE name = 'events_v7';
    INSERT INTO sqlite_sequence (name, seq)
        SELECT 'events_v7', seq FROM sqlite_sequence WHERE name = 'events';
    DROP TABLE events;
    ALTER TABLE events_v7 RENAME TO events;
    CREATE INDEX messages_by_group ON events(group_ref, cursor) WHERE kind IN (0, 1);
    -- An invitation's events go when it does (`invitations.rs`): this finds them.
    CREATE INDEX events_without_group ON events(group_id) WHERE group_ref IS NULL;
    "#,
    // 8: peers' signed address records (`peer_records.rs`), newest kept per member; the
    // owners of a mailbox group by group.
    r#"
    CREATE TABLE peer_records (
        member_id BLOB PRIMARY KEY,
        record BLOB NOT NULL,
        updated_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    -- A mailbox tells a group's owners when it holds new envelopes of it (push).
    CREATE INDEX mailbox_owners_by_group ON mailbox_owners(group_id);
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the schema up to [`SCHEMA_VERSION`]; refuses a newer one.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), OpenError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")?;
    let found: Option<u32> = tx
        .query_row("SELECT max(version) FROM schema_version", [], |r| r.get(0))
        .optional()?
        .flatten();
    let found = found.unwrap_or(0);
    if found > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    for (version, migration) in (1u32..).zip(MIGRATIONS).skip(found as usize) {
        tx.execute_batch(migration)?;
        tx.execute("DELETE FROM schema_version", [])?;
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [version],
        )?;
    }
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_old_database_is_migrated_keeping_its_rows() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            .unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute("INSERT INTO schema_version (version) VALUES (1)", [])
            .unwrap();
        conn.execute("INSERT INTO meta (key, value) VALUES ('k', x'01')", [])
            .unwrap();
        migrate(&mut conn).unwrap();
        let version: u32 = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        let kept: Vec<u8> = conn
            .query_row("SELECT value FROM meta WHERE key = 'k'", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, [1]);
        conn.query_row("SELECT count(*) FROM pending_welcomes", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap();
    }

    #[test]
    fn the_mailbox_rebuild_keeps_positions_and_never_reuses_them() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            .unwrap();
        for migration in &MIGRATIONS[..5] {
            conn.execute_batch(migration).unwrap();
        }
        conn.execute("INSERT INTO schema_version (version) VALUES (5)", [])
            .unwrap();
        conn.execute(
            "INSERT INTO mailbox_envelopes (id, group_id, hash, stored_ms, bytes, sender)
             VALUES (7, x'01', x'02', 3, x'04', x'05')",
            [],
        )
        .unwrap();
        conn.execute("INSERT INTO own_mailboxes (member) VALUES (x'06')", [])
            .unwrap();
        migrate(&mut conn).unwrap();
        let kept: (i64, Vec<u8>) = conn
            .query_row("SELECT id, sender FROM mailbox_envelopes", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(kept, (7, vec![5]));
        let cursor: i64 = conn
            .query_row("SELECT news_after FROM own_mailboxes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(cursor, 0);
        // Emptied by expiry, the table goes on after 7 (before version 6 it restarted at 1).
        conn.execute("DELETE FROM mailbox_envelopes", []).unwrap();
        conn.execute(
            "INSERT INTO mailbox_envelopes (group_id, hash, stored_ms, bytes)
             VALUES (x'01', x'03', 4, x'04')",
            [],
        )
        .unwrap();
        let next: i64 = conn
            .query_row("SELECT id FROM mailbox_envelopes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(next, 8);
    }

    #[test]
    fn the_events_rebuild_keeps_cursors_and_never_reuses_them() {
        let mut conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            .unwrap();
        for migration in &MIGRATIONS[..6] {
            conn.execute_batch(migration).unwrap();
        }
        conn.execute("INSERT INTO schema_version (version) VALUES (6)", [])
            .unwrap();
        conn.execute(
            "INSERT INTO groups (id, group_id, format_version, active, sealed_state)
             VALUES (1, x'01', 2, 1, x'')",
            [],
        )
        .unwrap();
        for cursor in [3, 9] {
            conn.execute(
                "INSERT INTO events (cursor, group_ref, kind, at_ms, body) VALUES (?1, 1, 0, 5, x'02')",
                [cursor],
            )
            .unwrap();
        }
        // The newest event deleted: its cursor must not come back after the rebuild.
        conn.execute("DELETE FROM events WHERE cursor = 9", [])
            .unwrap();
        migrate(&mut conn).unwrap();
        let kept: (i64, i64) = conn
            .query_row("SELECT cursor, group_ref FROM events", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(kept, (3, 1));
        conn.execute(
            "INSERT INTO events (group_id, kind, at_ms, body) VALUES (x'02', 9, 6, x'03')",
            [],
        )
        .unwrap();
        assert_eq!(conn.last_insert_rowid(), 10);
        // An event names its group one way, never both nor neither.
        for (group_ref, group_id) in [(Some(1), Some(vec![1u8])), (None, None)] {
            assert!(
                conn.execute(
                    "INSERT INTO events (group_ref, group_id, kind, at_ms, body)
                     VALUES (?1, ?2, 0, 7, x'04')",
                    rusqlite::params![group_ref, group_id],
                )
                .is_err()
            );
        }
    }

    #[test]
    fn migrates_once_and_refuses_newer() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        // Idempotent.
        migrate(&mut conn).unwrap();
        let version: u32 = conn
            .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
        conn.execute("UPDATE schema_version SET version = version + 1", [])
            .unwrap();
        assert!(matches!(
            migrate(&mut conn),
            Err(OpenError::NewerSchema { found, supported })
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION
        ));
    }
}
