//! Digital Spring persistence: one SQLite file per node holding the device identity, prekeys,
//! contacts, group states, the group logs, the event log, the outbox and the mailbox role.
//!
//! * One call, [`Store::apply`], commits everything a core step produced (new group state,
//!   log entries, outbox, events, used prekeys) in one transaction, or nothing.
//! * Durable on return: WAL with `synchronous = FULL`; except that a step which sends
//!   nothing (a pure delivery) skips the disk sync: it survives a process crash at once and a
//!   power loss from the next sync on (see [`Store::apply`]).
//! * Forward secrecy on disk: `secure_delete` overwrites deleted rows, and
//!   [`Store::checkpoint`] folds the write-ahead log back and truncates it, so that replaced
//!   group states (and the keys in them) leave the files.
//! * Secrets at rest (identity, prekeys, group states) are sealed with a key from a 0600 key
//!   file or an Argon2id passphrase; see [`KeySource`].
//! * Everything read back goes through bounded decoders; a bad row is a [`Corrupt`] error
//!   naming the row, never a panic.
//!
//! ```
//! use dspring_proto::{Device, Group, GroupId};
//! use dspring_store::Store;
//! use rand_chacha::ChaCha20Rng;
//! use rand_core::SeedableRng;
//!
//! let dir = tempfile::tempdir()?;
//! let mut rng = ChaCha20Rng::seed_from_u64(1);
//! let mut store = Store::open(dir.path(), None)?;
//! let alice = Device::generate(2, &mut rng);
//! store.create_device(&alice)?;
//!
//! let bob = Device::generate(2, &mut rng);
//! let staged = Group::create(&alice, GroupId([9; 32]), &[bob.bundle(None)], &mut rng)?;
//! let staged = staged.group.send(b"hello")?;
//! store.apply(&staged)?;
//!
//! let stored = store.group(&GroupId([9; 32]))?.expect("stored");
//! assert_eq!(stored.members().len(), 2);
//! assert_eq!(store.outbox(10)?.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod apply;
mod at_rest;
mod contacts;
mod device;
mod error;
mod invitations;
mod log;
mod mailbox;
mod marks;
mod peer_records;
mod schema;

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use dspring_proto::{GroupId, StateChanges};
use rusqlite::{Connection, OptionalExtension, limits::Limit};

pub use apply::{Committed, GroupName, MAX_GROUP_NAME_BYTES, Metadata};
pub use at_rest::{
    ARGON2_LANES, ARGON2_MEMORY_KIB, ARGON2_PASSES, KEY_LEN, KeySource, MAX_ARGON2_MEMORY_KIB,
};
pub use contacts::{Contact, MAX_ADDRESS_LEN, MAX_ADDRESSES, MAX_DISPLAY_NAME_LEN};
pub use error::{Corrupt, OpenError, StoreError};
pub use invitations::{Held, Invitation, MAX_INVITATIONS, MAX_INVITATIONS_PER_ADDER};
pub use log::{HeldMark, LogEntry, OutboxEntry, SenderMark, StoredEvent};
pub use mailbox::{MailboxGroup, MailboxNews, NewsCursor};
pub use peer_records::{MAX_PEER_RECORD_LEN, MAX_PEER_RECORDS};
pub use schema::SCHEMA_VERSION;

use at_rest::{PassphraseParams, StoreKey};

/// The database file in a node's data directory.
pub const DATABASE_FILE: &str = "dspring.sqlite3";
/// The key file beside it (when no passphrase is set).
pub const KEY_FILE: &str = "store.key";
/// Largest value SQLite will hold or hand back (a group state, an envelope): bigger than any
/// legitimate one (envelopes stop at 4 MiB), small enough that a corrupt row cannot make a
/// read allocate without bound.
pub const MAX_VALUE_BYTES: i32 = 64 << 20;
/// SQLite's page cache per store, KiB: SQLite's own default, stated so that it is a decision.
/// 512 KiB was tried twice: batched applies fell from 19,500/s to 14,700/s; the network
/// benchmark's memory per node did not move (9 MiB either way) until freed memory was given
/// back (dspring-node's `memory.rs`), and then it saved 0.28 MiB per node (5.02 to 4.74)
/// while the catch-up of 10,000 took 1.68 s instead of 1.42.
pub const PAGE_CACHE_KIB: u32 = 2048;
/// Most rows one page of a read returns: callers page through longer ranges.
pub const MAX_PAGE: usize = 1000;
/// The write-ahead log is cut back to this size after a checkpoint, so that old page images
/// (with replaced keys) do not linger in a long tail of the file.
pub const WAL_SIZE_LIMIT_BYTES: i64 = 0;
/// How long a write waits for another connection's lock before failing.
const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

const KEY_CHECK_PLACE: &[u8] = b"meta/key_check";
const KEY_CHECK_PLAINTEXT: &[u8] = b"dspring store key check";

/// A node's store. Single writer: the node's actor owns it.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    key: StoreKey,
    path: PathBuf,
    /// Held for the store's lifetime: a second process on the same data (two daemons on one
    /// identity) would send from the same ratchet positions, reusing keys and nonces. The
    /// operating system releases it when the process dies, so a crash never leaves it stuck.
    _lock: fs::File,
    /// Group id to local row id, for the groups committed so far.
    group_refs: HashMap<GroupId, i64>,
    /// Whether commits sync the disk now (`synchronous = FULL`); see [`Store::apply`].
    syncing: bool,
}

impl Store {
    /// Opens (or creates) the store in the data directory `dir`: [`DATABASE_FILE`], sealed with
    /// the key in [`KEY_FILE`], or with a key derived from `passphrase` if one is given.
    pub fn open(dir: &Path, passphrase: Option<&[u8]>) -> Result<Self, OpenError> {
        let key = match passphrase {
            Some(passphrase) => KeySource::Passphrase(passphrase),
            None => KeySource::KeyFile(dir.join(KEY_FILE)),
        };
        Self::open_with(&dir.join(DATABASE_FILE), key)
    }

    /// Opens (or creates) the database at `path` with the given key source.
    pub fn open_with(path: &Path, key: KeySource<'_>) -> Result<Self, OpenError> {
        let io = |action: &'static str, at: &Path| {
            let at = at.to_path_buf();
            move |source| OpenError::Io {
                action,
                path: at,
                source,
            }
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("creating directory", dir))?;
        }
        if !path.exists() {
            // Created private before SQLite opens it; SQLite gives its -wal and -shm files the
            // same mode.
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io("creating database", path)(e)),
            }
        }
        let lock = lock(path)?;
        let mut conn = Connection::open(path)?;
        configure(&conn)?;
        schema::migrate(&mut conn)?;
        let key = unlock(&conn, key)?;
        let mut store = Self {
            conn,
            key,
            path: path.to_path_buf(),
            _lock: lock,
            group_refs: HashMap::new(),
            syncing: true,
        };
        store.load_group_refs()?;
        store.rewrite_whole_states()?;
        Ok(store)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the next commits wait for the disk (`synchronous = FULL`) or only for the
    /// write-ahead log (`NORMAL`: safe from a process crash, not from a power cut).
    pub(crate) fn set_syncing(&mut self, sync: bool) -> Result<(), StoreError> {
        if sync != self.syncing {
            self.conn.execute_batch(if sync {
                "PRAGMA synchronous = FULL"
            } else {
                "PRAGMA synchronous = NORMAL"
            })?;
            self.syncing = sync;
        }
        Ok(())
    }

    /// Copies the write-ahead log into the database and truncates it. Until this runs, page
    /// images of replaced rows (older group states) may remain in the `-wal` file; call it
    /// when idle and before shutdown. SQLite also checkpoints by itself every 1000 pages.
    pub fn checkpoint(&self) -> Result<(), StoreError> {
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Rewrites in parts the group states stored whole (format 1, before schema 4), in one
    /// transaction: a state must never be half in one format, half in the other.
    fn rewrite_whole_states(&mut self) -> Result<(), OpenError> {
        let whole: Vec<GroupId> = {
            let mut statement = self
                .conn
                .prepare("SELECT id, group_id FROM groups WHERE format_version = ?1")?;
            let rows = statement.query_map([dspring_proto::group::STATE_FORMAT_VERSION], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
            })?;
            let mut ids = Vec::new();
            for row in rows {
                let (id, group) = row?;
                ids.push(group_id_from(&group, "groups", id)?);
            }
            ids
        };
        if whole.is_empty() {
            return Ok(());
        }
        let mut states = Vec::with_capacity(whole.len());
        for id in &whole {
            match self.group(id) {
                Ok(Some(state)) => states.push(state),
                Ok(None) => {}
                Err(StoreError::Corrupt(c)) => return Err(c.into()),
                Err(StoreError::Sqlite(e)) => return Err(e.into()),
                Err(e) => return Err(Corrupt::new("groups", hex(id.as_bytes()), e).into()),
            }
        }
        let tx = self.conn.transaction()?;
        for state in &states {
            let stored = self.group_refs.get(&state.id()).copied();
            apply::write_state(&tx, &self.key, state, &StateChanges::all(), stored).map_err(
                |e| match e {
                    StoreError::Corrupt(c) => OpenError::Corrupt(c),
                    StoreError::Sqlite(e) => OpenError::Sqlite(e),
                    e => OpenError::Corrupt(Corrupt::new("groups", hex(state.id().as_bytes()), e)),
                },
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn load_group_refs(&mut self) -> Result<(), OpenError> {
        let mut statement = self.conn.prepare("SELECT id, group_id FROM groups")?;
        let rows = statement.query_map([], |row| {
            Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
        })?;
        for row in rows {
            let (id, group) = row?;
            let group = group_id_from(&group, "groups", id)?;
            self.group_refs.insert(group, id);
        }
        Ok(())
    }
}

/// Takes the exclusive lock on `<database>.lock`.
fn lock(path: &Path) -> Result<fs::File, OpenError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|source| OpenError::Io {
            action: "opening lock file",
            path: lock_path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(OpenError::InUse(path.to_path_buf())),
        Err(fs::TryLockError::Error(source)) => Err(OpenError::Io {
            action: "locking",
            path: lock_path,
            source,
        }),
    }
}

/// Prepared statements kept compiled: the hot paths (apply, sync, outbox, events) use about
/// 30 distinct statements; the default 16 would evict and re-parse them in turn.
const STATEMENT_CACHE: usize = 64;

fn configure(conn: &Connection) -> Result<(), rusqlite::Error> {
    conn.set_limit(Limit::SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Without the query planner stability guarantee, SQLite re-compiles a statement whenever
    // a new value is bound to a parameter that could change its plan (a `LIMIT ?`): cached
    // statements would be parsed again on every use. Our plans do not depend on the values.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // WAL; FULL until a commit says otherwise (see `Store::apply`): durable when it returns.
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    conn.execute_batch(&format!(
        "PRAGMA cache_size = -{PAGE_CACHE_KIB};
         PRAGMA synchronous = FULL;
         PRAGMA secure_delete = ON;
         PRAGMA foreign_keys = ON;
         PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES};"
    ))?;
    Ok(())
}

/// Derives or reads the store key, and checks it against the database's key check value.
fn unlock(conn: &Connection, source: KeySource<'_>) -> Result<StoreKey, OpenError> {
    let check: Option<Vec<u8>> = meta(conn, "key_check")?;
    let params: Option<Vec<u8>> = meta(conn, "argon2")?;
    let params = params
        .map(|bytes| {
            postcard::from_bytes::<PassphraseParams>(&bytes)
                .ok()
                .filter(PassphraseParams::within_bounds)
                .ok_or_else(|| Corrupt::new("meta", "argon2", "bad passphrase parameters"))
        })
        .transpose()?;
    let fresh = check.is_none();
    let key = match (source, params) {
        (KeySource::KeyFile(path), None) => at_rest::key_from_file(&path, fresh)?,
        (KeySource::KeyFile(_), Some(_)) => return Err(OpenError::PassphraseRequired),
        (KeySource::Passphrase(_), None) if !fresh => {
            return Err(OpenError::NotPassphraseProtected);
        }
        (KeySource::Passphrase(passphrase), params) => {
            let params = match params {
                Some(params) => params,
                None => {
                    let params =
                        PassphraseParams::new_random().map_err(|source| OpenError::Io {
                            action: "generating a salt for",
                            path: PathBuf::from("the database"),
                            source,
                        })?;
                    let bytes = postcard::to_allocvec(&params)
                        .map_err(|e| Corrupt::new("meta", "argon2", e))?;
                    set_meta(conn, "argon2", &bytes)?;
                    params
                }
            };
            at_rest::key_from_passphrase(passphrase, &params)
                .map_err(|e| Corrupt::new("meta", "argon2", e))?
        }
    };
    match check {
        Some(sealed) => {
            key.open(KEY_CHECK_PLACE, &sealed)
                .map_err(|_| OpenError::WrongKey)?;
        }
        None => {
            let sealed = key
                .seal(KEY_CHECK_PLACE, KEY_CHECK_PLAINTEXT)
                .map_err(|e| Corrupt::new("meta", "key_check", e))?;
            set_meta(conn, "key_check", &sealed)?;
        }
    }
    Ok(key)
}

pub(crate) fn meta(conn: &Connection, key: &str) -> Result<Option<Vec<u8>>, rusqlite::Error> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

pub(crate) fn set_meta(conn: &Connection, key: &str, value: &[u8]) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        rusqlite::params![key, value],
    )?;
    Ok(())
}

/// Lowercase hex, for naming rows in errors.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn group_id_from(
    bytes: &[u8],
    table: &'static str,
    row: i64,
) -> Result<GroupId, Corrupt> {
    <[u8; 32]>::try_from(bytes)
        .map(GroupId)
        .map_err(|_| Corrupt::new(table, format!("row {row}"), "group id is not 32 bytes"))
}

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// SQLite integers are signed 64-bit; counters and positions beyond that are refused rather
/// than wrapped.
pub(crate) fn to_sql_int(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::invalid("value exceeds 2^63"))
}

pub(crate) fn from_sql_int(
    value: i64,
    table: &'static str,
    key: impl std::fmt::Display,
) -> Result<u64, Corrupt> {
    u64::try_from(value).map_err(|_| Corrupt::new(table, key.to_string(), "negative value"))
}

/// Names a row in a `Corrupt` error, formatted only when there is an error: the hot reads
/// (sync pages, outbox, events) go through thousands of rows.
#[derive(Clone, Copy)]
pub(crate) struct RowKey(pub &'static str, pub i64);

impl std::fmt::Display for RowKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.0, self.1)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use dspring_proto::{Device, Group, MemberId};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;
    use rusqlite::params;

    use super::*;

    fn synchronous(store: &Store) -> i64 {
        store
            .conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap()
    }

    /// A step that sends commits with a disk sync; taking its envelopes off the outbox does
    /// not (losing that to a power cut only sends them twice).
    #[test]
    fn a_send_waits_for_the_disk_and_its_outbox_bookkeeping_does_not() {
        const NORMAL: i64 = 1;
        const FULL: i64 = 2;
        let dir = tempfile::tempdir().unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let me = Device::generate(1, &mut rng);
        let other = Device::generate(1, &mut rng);
        let created =
            Group::create(&me, GroupId([5; 32]), &[other.bundle(None)], &mut rng).unwrap();
        let mut store = Store::open(dir.path(), None).unwrap();
        store.apply(&created).unwrap();
        assert_eq!(synchronous(&store), FULL);
        let ids: Vec<u64> = store.outbox(10).unwrap().iter().map(|e| e.id).collect();
        assert_eq!(ids.len(), 1);
        store.outbox_sent(&ids).unwrap();
        assert_eq!(synchronous(&store), NORMAL);
        assert!(store.outbox(10).unwrap().is_empty());
        let sent = created.group.send(b"again").unwrap();
        store.apply(&sent).unwrap();
        assert_eq!(synchronous(&store), FULL);
    }

    /// A store from before schema 4 holds group states whole; opening it rewrites them in
    /// parts, and the state read back is the same.
    #[test]
    fn a_group_stored_whole_is_rewritten_in_parts_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let me = Device::generate(1, &mut rng);
        let other = Device::generate(1, &mut rng);
        let id = GroupId([4; 32]);
        let created = Group::create(&me, id, &[other.bundle(None)], &mut rng).unwrap();
        let sent = created.group.send(b"one").unwrap();
        let group = sent.group.clone();
        assert!(!group.chain_senders().is_empty());
        let mut store = Store::open(dir.path(), None).unwrap();
        store.apply_batch(&[&created, &sent]).unwrap();
        // What a schema-3 store held: the whole state, format 1, and no chain rows.
        let sealed = store
            .key
            .seal(&apply::group_place(&id), &group.to_bytes().unwrap())
            .unwrap();
        store
            .conn
            .execute(
                "UPDATE groups SET format_version = ?1, sealed_state = ?2",
                params![dspring_proto::group::STATE_FORMAT_VERSION, sealed],
            )
            .unwrap();
        store.conn.execute("DELETE FROM group_chains", []).unwrap();
        drop(store);

        let store = Store::open(dir.path(), None).unwrap();
        let version: u16 = store
            .conn
            .query_row("SELECT format_version FROM groups", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, dspring_proto::group::BASE_FORMAT_VERSION);
        let chains: i64 = store
            .conn
            .query_row("SELECT count(*) FROM group_chains", [], |r| r.get(0))
            .unwrap();
        assert_eq!(chains as usize, group.chain_senders().len());
        let read = store.group(&id).unwrap().unwrap();
        assert_eq!(read.to_bytes().unwrap(), group.to_bytes().unwrap());
    }

    /// Names and mailboxes a step carries commit with it; a name replaces the stored one
    /// only if it was set later (by its setter's clock, then member id).
    #[test]
    fn group_metadata_commits_with_its_step_and_the_latest_name_wins() {
        let dir = tempfile::tempdir().unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let me = Device::generate(1, &mut rng);
        let other = Device::generate(1, &mut rng);
        let id = GroupId([5; 32]);
        let created = Group::create(&me, id, &[other.bundle(None)], &mut rng).unwrap();
        let mut store = Store::open(dir.path(), None).unwrap();
        let name = |name: &str, set_ms: u64, by: u8| GroupName {
            group: id,
            name: name.into(),
            set_ms,
            set_by: MemberId([by; 32]),
        };
        let names = |store: &Store| -> Vec<String> {
            store
                .group_names()
                .unwrap()
                .into_iter()
                .map(|n| n.name)
                .collect()
        };
        let metadata = Metadata {
            group_mailboxes: vec![(id, MemberId([9; 32]))],
            group_names: vec![name("first", 5, 1)],
            leave_requests: vec![(id, MemberId([8; 32]))],
        };
        store.apply_steps(&[&created], &[], &metadata).unwrap();
        assert_eq!(names(&store), ["first"]);
        assert_eq!(store.group_mailboxes().unwrap(), [(id, MemberId([9; 32]))]);
        assert_eq!(store.leave_requests().unwrap(), [(id, MemberId([8; 32]))]);
        store.forget_leave_request(&id, &MemberId([8; 32])).unwrap();
        assert!(store.leave_requests().unwrap().is_empty());
        let mut state = created.group.clone();
        for (candidate, kept) in [
            (name("older", 4, 9), "first"),
            (name("same time, larger id", 5, 2), "same time, larger id"),
            (name("later", 6, 0), "later"),
        ] {
            let sent = state.send(b"m").unwrap();
            state = sent.group.clone();
            let metadata = Metadata {
                group_names: vec![candidate],
                ..Metadata::default()
            };
            store.apply_steps(&[&sent], &[], &metadata).unwrap();
            assert_eq!(names(&store), [kept]);
        }
        // A name over the bound is refused, and nothing of its step is written.
        let sent = state.send(b"m").unwrap();
        let metadata = Metadata {
            group_names: vec![name(&"x".repeat(MAX_GROUP_NAME_BYTES + 1), 7, 0)],
            ..Metadata::default()
        };
        assert!(store.apply_steps(&[&sent], &[], &metadata).is_err());
        assert_eq!(names(&store), ["later"]);
        assert_eq!(store.outbox(100).unwrap().len(), 4);
    }
}
