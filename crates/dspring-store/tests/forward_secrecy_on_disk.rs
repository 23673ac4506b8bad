//! Forward secrecy on disk: after use and a checkpoint, the database files hold no replaced
//! group state (the only place message keys and member secrets are kept) and no used one-time
//! prekey, even sealed; and no secret appears in plaintext at all.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeSet;

use std::path::Path;

use dspring_proto::{Device, Group, GroupId};
use dspring_store::{DATABASE_FILE, Store};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Every sealed part of the stored group state.
const STATE_ROWS: &str =
    "SELECT sealed_state FROM groups UNION ALL SELECT sealed FROM group_chains";

const GROUP: GroupId = GroupId([3; 32]);

/// Everything SQLite keeps for the database: the file, its write-ahead log and shared memory.
fn raw_files(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let path = dir.join(format!("{DATABASE_FILE}{suffix}"));
        if let Ok(bytes) = std::fs::read(&path) {
            all.extend(bytes);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A distinctive slice of a sealed value: 32 bytes of its ciphertext.
fn fingerprint(sealed: &[u8]) -> Vec<u8> {
    sealed[25..57].to_vec()
}

#[test]
fn replaced_states_and_used_prekeys_leave_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let alice = Device::generate(2, &mut rng);
    let bob = Device::generate(3, &mut rng);
    let mut store = Store::open(dir.path(), None).unwrap();
    store.create_device(&bob).unwrap();
    let raw = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    let sealed_rows = |sql: &str| -> Vec<Vec<u8>> {
        let mut statement = raw.prepare(sql).unwrap();
        statement
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let prekeys_before = sealed_rows("SELECT sealed FROM one_time_prekeys");

    // Bob joins with a one-time prekey, then the two exchange messages and updates; Bob's
    // store commits every step. Each replaced state held keys that are now deleted.
    let one_time = bob.prekeys.one_time_ids()[0];
    let created = Group::create(&alice, GROUP, &[bob.bundle(Some(one_time))], &mut rng).unwrap();
    let mut alice_group = created.group;
    let joined = Group::join(&bob, GROUP, created.outbox[0].bytes.clone(), &mut rng).unwrap();
    store.apply(&joined).unwrap();
    alice_group = alice_group
        .receive(&alice, joined.outbox[0].bytes.clone(), &mut rng)
        .unwrap()
        .group;
    let mut bob_group = joined.group;
    // The state is stored in parts (a base row and one row per sender's chains); every
    // version of every part that a step replaced must leave the files.
    let mut states: BTreeSet<Vec<u8>> = sealed_rows(STATE_ROWS).into_iter().collect();
    for round in 0..40 {
        let staged = if round % 10 == 9 {
            let update = bob_group.update(&mut rng).unwrap();
            for out in &update.outbox {
                // Alice's ack is not needed by Bob's store for this test.
                alice_group = alice_group
                    .receive(&alice, out.bytes.clone(), &mut rng)
                    .unwrap()
                    .group;
            }
            update
        } else if round % 2 == 0 {
            bob_group.send(format!("bob {round}").as_bytes()).unwrap()
        } else {
            let sent = alice_group
                .send(format!("alice {round}").as_bytes())
                .unwrap();
            alice_group = sent.group;
            bob_group
                .receive(&bob, sent.outbox[0].bytes.clone(), &mut rng)
                .unwrap()
        };
        store.apply(&staged).unwrap();
        bob_group = staged.group;
        states.extend(sealed_rows(STATE_ROWS));
    }
    let current: BTreeSet<Vec<u8>> = sealed_rows(STATE_ROWS).into_iter().collect();
    assert_eq!(
        sealed_rows("SELECT sealed_state FROM groups").len(),
        1,
        "one base row"
    );
    let prekeys_after = sealed_rows("SELECT sealed FROM one_time_prekeys");
    assert_eq!(prekeys_after.len(), prekeys_before.len() - 1);
    let used_prekeys: Vec<&Vec<u8>> = prekeys_before
        .iter()
        .filter(|p| !prekeys_after.contains(p))
        .collect();
    assert_eq!(used_prekeys.len(), 1);
    drop(raw);

    // Before a checkpoint, replaced states may still sit in the write-ahead log: this is what
    // the checkpoint is for (the test would be vacuous if they never reached the files).
    let before = raw_files(dir.path());
    let lingering = states
        .iter()
        .filter(|s| !current.contains(*s) && contains(&before, &fingerprint(s)))
        .count();
    assert!(lingering > 0, "replaced states never reached the files");

    store.checkpoint().unwrap();
    let files = raw_files(dir.path());
    drop(store);
    assert!(states.len() > 30, "{} states", states.len());
    for state in &states {
        let present = contains(&files, &fingerprint(state));
        assert_eq!(
            present,
            current.contains(state),
            "a replaced part of the group state is still in the files"
        );
    }
    assert!(!contains(&files, &fingerprint(used_prekeys[0])));
    // And no secret is stored in plaintext: the identity key and the unused prekeys.
    assert!(!contains(&files, bob.identity.secret().expose()));
    let stored = Store::open(dir.path(), None)
        .unwrap()
        .device()
        .unwrap()
        .unwrap();
    assert_eq!(stored.prekeys.one_time_ids().len(), 2);
}
