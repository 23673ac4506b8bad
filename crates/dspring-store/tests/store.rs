//! Every table of the store and the atomic apply, on real SQLite files.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::path::Path;

use dspring_proto::{Device, Event, Group, GroupId, MemberId, Outgoing, Staged};
use dspring_store::{
    Contact, DATABASE_FILE, KEY_FILE, KeySource, NewsCursor, OpenError, SCHEMA_VERSION, Store,
    StoreError,
};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const GROUP: GroupId = GroupId([7; 32]);

/// Alice and Bob: Alice creates the group with Bob's one-time prekey; Bob joins.
struct Pair {
    rng: ChaCha20Rng,
    alice: Device,
    bob: Device,
    bob_group: Group,
    create: Vec<u8>,
    bob_join: Staged,
}

fn pair(seed: u64) -> Pair {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let alice = Device::generate(3, &mut rng);
    let bob = Device::generate(3, &mut rng);
    let one_time = bob.prekeys.one_time_ids()[0];
    let created = Group::create(&alice, GROUP, &[bob.bundle(Some(one_time))], &mut rng).unwrap();
    let create = created.outbox[0].bytes.clone();
    let bob_join = Group::join(&bob, GROUP, create.clone(), &mut rng).unwrap();
    let bob_group = bob_join.group.clone();
    Pair {
        rng,
        alice,
        bob,
        bob_group,
        create,
        bob_join,
    }
}

fn open(dir: &Path) -> Store {
    Store::open(dir, None).unwrap()
}

#[test]
fn a_new_store_is_private_and_reopens_with_its_key_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    drop(open(&data));
    for file in [DATABASE_FILE, KEY_FILE] {
        let mode = std::fs::metadata(data.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let mode = std::fs::metadata(&data).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    drop(open(&data));

    // Without its key file the database is refused, not re-keyed.
    std::fs::rename(data.join(KEY_FILE), dir.path().join("saved.key")).unwrap();
    assert!(matches!(
        Store::open(&data, None),
        Err(OpenError::KeyFileMissing(_))
    ));
    // Another key is refused.
    let other = tempfile::tempdir().unwrap();
    drop(open(other.path()));
    std::fs::copy(other.path().join(KEY_FILE), data.join(KEY_FILE)).unwrap();
    assert!(matches!(Store::open(&data, None), Err(OpenError::WrongKey)));
    std::fs::rename(dir.path().join("saved.key"), data.join(KEY_FILE)).unwrap();
    drop(open(&data));
}

#[test]
fn one_store_per_data_directory_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    assert!(matches!(
        Store::open(dir.path(), None),
        Err(OpenError::InUse(_))
    ));
    drop(first);
    drop(open(dir.path()));
}

#[test]
fn the_key_file_can_live_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db/node.sqlite3");
    let key = dir.path().join("keys.key");
    drop(Store::open_with(&db, KeySource::KeyFile(key.clone())).unwrap());
    assert!(key.exists());
    assert!(Store::open_with(&db, KeySource::KeyFile(key)).is_ok());
    assert!(matches!(
        Store::open_with(&db, KeySource::KeyFile(dir.path().join("other.key"))),
        Err(OpenError::KeyFileMissing(_))
    ));
}

#[test]
fn a_passphrase_store_needs_its_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let pass = || Some(&b"correct horse battery staple"[..]);
    let mut store = Store::open(dir.path(), pass()).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let device = Device::generate(1, &mut rng);
    store.create_device(&device).unwrap();
    drop(store);
    assert!(!dir.path().join(KEY_FILE).exists());
    assert!(matches!(
        Store::open(dir.path(), Some(&b"correct horse battery stapler"[..])),
        Err(OpenError::WrongKey)
    ));
    assert!(matches!(
        Store::open(dir.path(), None),
        Err(OpenError::PassphraseRequired)
    ));
    let store = Store::open(dir.path(), pass()).unwrap();
    assert_eq!(store.device().unwrap().unwrap().id(), device.id());

    // And a key-file store refuses a passphrase.
    let plain = tempfile::tempdir().unwrap();
    drop(open(plain.path()));
    assert!(matches!(
        Store::open(plain.path(), pass()),
        Err(OpenError::NotPassphraseProtected)
    ));
}

#[test]
fn a_database_from_a_newer_version_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let raw = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    raw.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    drop(raw);
    let error = Store::open(dir.path(), None).unwrap_err();
    assert!(matches!(
        error,
        OpenError::NewerSchema { found: 99, supported } if supported == SCHEMA_VERSION
    ));
    assert!(error.to_string().contains("upgrade"));
}

#[test]
fn device_round_trips_and_used_prekeys_never_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = pair(2);
    let mut store = open(dir.path());
    assert!(store.device().unwrap().is_none());
    store.create_device(&p.bob).unwrap();
    assert!(matches!(
        store.create_device(&p.bob),
        Err(StoreError::Invalid(_))
    ));
    let loaded = store.device().unwrap().unwrap();
    assert_eq!(loaded.id(), p.bob.id());
    assert_eq!(loaded.prekeys.one_time_ids(), p.bob.prekeys.one_time_ids());
    assert_eq!(loaded.bundle(None), p.bob.bundle(None));

    // Bob's join used one of his one-time prekeys: gone in the same transaction.
    let used = p.bob_join.consumed_prekeys.clone();
    assert_eq!(used.len(), 1);
    store.apply(&p.bob_join).unwrap();
    drop(store);
    let mut store = open(dir.path());
    let loaded = store.device().unwrap().unwrap();
    assert!(!loaded.prekeys.one_time_ids().contains(&used[0]));
    assert_eq!(loaded.prekeys.one_time_ids().len(), 2);

    // A stale copy of the device (still holding the used key) cannot bring it back, while new
    // keys are stored.
    p.bob.prekeys.add_one_time(2, &mut p.rng);
    store.save_device(&p.bob).unwrap();
    let loaded = store.device().unwrap().unwrap();
    assert!(!loaded.prekeys.one_time_ids().contains(&used[0]));
    assert_eq!(loaded.prekeys.one_time_ids().len(), 4);

    // Handing out: each once.
    let mut handed = Vec::new();
    while let Some(id) = store.hand_out_one_time_prekey().unwrap() {
        handed.push(id);
    }
    handed.sort();
    assert_eq!(handed, loaded.prekeys.one_time_ids());
    assert_eq!(store.one_time_prekeys_available().unwrap(), 0);
}

#[test]
fn contacts_round_trip_and_limits_hold() {
    let dir = tempfile::tempdir().unwrap();
    let p = pair(3);
    let mut store = open(dir.path());
    let contact = Contact {
        member: p.bob.id(),
        display_name: "Bob".into(),
        verified: false,
        addresses: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        bundle: Some(p.bob.bundle(None)),
    };
    store.put_contact(&contact).unwrap();
    assert_eq!(store.contact(&p.bob.id()).unwrap().unwrap(), contact);
    assert!(store.set_contact_verified(&p.bob.id(), true).unwrap());
    assert!(store.contact(&p.bob.id()).unwrap().unwrap().verified);
    assert!(!store.set_contact_verified(&p.alice.id(), true).unwrap());
    let alice = Contact {
        member: p.alice.id(),
        display_name: "Alice".into(),
        verified: false,
        addresses: vec![],
        bundle: None,
    };
    store.put_contact(&alice).unwrap();
    let names: Vec<_> = store
        .contacts()
        .unwrap()
        .into_iter()
        .map(|c| c.display_name)
        .collect();
    assert_eq!(names, ["Alice", "Bob"]);

    let mut long = alice.clone();
    long.display_name = "x".repeat(dspring_store::MAX_DISPLAY_NAME_LEN + 1);
    assert!(matches!(
        store.put_contact(&long),
        Err(StoreError::Invalid(_))
    ));
    let mut many = alice.clone();
    many.addresses = vec!["a".into(); dspring_store::MAX_ADDRESSES + 1];
    assert!(matches!(
        store.put_contact(&many),
        Err(StoreError::Invalid(_))
    ));
    let mut wrong_bundle = alice.clone();
    wrong_bundle.bundle = Some(p.bob.bundle(None));
    assert!(matches!(
        store.put_contact(&wrong_bundle),
        Err(StoreError::Invalid(_))
    ));
    assert!(store.remove_contact(&p.alice.id()).unwrap());
    assert!(store.contact(&p.alice.id()).unwrap().is_none());
}

#[test]
fn apply_commits_state_log_outbox_and_events_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = pair(4);
    let mut store = open(dir.path());
    store.create_device(&p.alice).unwrap();

    // Alice's create, as she staged it: state, one envelope in log and outbox.
    let created = Group::create(&p.alice, GROUP, &[p.bob.bundle(None)], &mut p.rng).unwrap();
    let committed = store.apply(&created).unwrap();
    assert_eq!((committed.new_envelopes, committed.queued), (1, 1));
    let outbox = store.outbox(10).unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].group, GROUP);
    assert_eq!(outbox[0].bytes, created.outbox[0].bytes);
    store.outbox_sent(&[outbox[0].id]).unwrap();
    assert!(store.outbox(10).unwrap().is_empty());

    // A message both ways.
    let alice_group = created.group;
    let bob_join = Group::join(&p.bob, GROUP, created.outbox[0].bytes.clone(), &mut p.rng).unwrap();
    let ack = bob_join.outbox[0].bytes.clone();
    let received = alice_group
        .receive(&p.alice, ack.clone(), &mut p.rng)
        .unwrap();
    store.apply(&received).unwrap();
    let sent = received.group.send(b"hi Bob").unwrap();
    let committed = store.apply(&sent).unwrap();
    assert_eq!(committed.cursors.len(), 1);
    let reply = bob_join.group.send(b"hi Alice").unwrap();
    let got = sent
        .group
        .receive(&p.alice, reply.outbox[0].bytes.clone(), &mut p.rng)
        .unwrap();
    store.apply(&got).unwrap();
    // The same envelope again: the core drops the replay, the log keeps one copy.
    let again = got
        .group
        .receive(&p.alice, reply.outbox[0].bytes.clone(), &mut p.rng)
        .unwrap();
    assert_eq!(store.apply(&again).unwrap().new_envelopes, 0);
    drop(store);

    let store = open(dir.path());
    let group = store.group(&GROUP).unwrap().unwrap();
    assert_eq!(group.members(), again.group.members());
    // The reloaded state goes on: it reads Bob's next message.
    let next = reply.group.send(b"still here").unwrap();
    let read = group
        .receive(&p.alice, next.outbox[0].bytes.clone(), &mut p.rng)
        .unwrap();
    assert!(
        matches!(&read.events[..], [Event::Message { plaintext, .. }] if plaintext == b"still here")
    );

    let log: Vec<Vec<u8>> = store
        .log_page(&GROUP, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.bytes)
        .collect();
    assert_eq!(
        log,
        vec![
            created.outbox[0].bytes.clone(),
            ack,
            sent.outbox[0].bytes.clone(),
            reply.outbox[0].bytes.clone()
        ]
    );
    let paged = store.log_page(&GROUP, 0, 2).unwrap();
    assert_eq!(paged.len(), 2);
    assert_eq!(store.log_page(&GROUP, paged[1].id, 100).unwrap().len(), 2);
    assert!(store.has_envelope(&GROUP, &log[3]).unwrap());
    assert!(!store.has_envelope(&GROUP, b"nope").unwrap());

    let messages: Vec<Event> = store
        .messages(&GROUP, 0, 100)
        .unwrap()
        .into_iter()
        .map(|m| m.event)
        .collect();
    assert!(matches!(&messages[..], [
        Event::Sent { plaintext: a, .. },
        Event::Message { plaintext: b, sender, .. },
    ] if a == b"hi Bob" && b == b"hi Alice" && *sender == p.bob.id()));

    let events = store.events_since(0, 100).unwrap();
    let cursors: Vec<u64> = events.iter().map(|e| e.cursor).collect();
    assert!(cursors.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(store.last_cursor().unwrap(), *cursors.last().unwrap());
    assert_eq!(
        store.events_since(cursors[1], 100).unwrap().len(),
        events.len() - 2
    );

    let marks = store.sender_marks(&GROUP).unwrap();
    let bob_mark = marks
        .iter()
        .find(|m| m.sender == p.bob.id().short())
        .unwrap();
    assert_eq!(bob_mark.envelopes, 2);
    assert_eq!(bob_mark.control_seq, 1);
    assert!(bob_mark.application.is_some());
    assert_eq!(store.groups().unwrap(), vec![GROUP]);
}

#[test]
fn cursors_are_never_reused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let p = pair(5);
    let mut store = open(dir.path());
    store.apply(&p.bob_join).unwrap();
    let first = store.last_cursor().unwrap();
    drop(store);
    let mut store = open(dir.path());
    let sent = p.bob_group.send(b"x").unwrap();
    let committed = store.apply(&sent).unwrap();
    assert!(committed.cursors[0] > first);
}

#[test]
fn a_failing_batch_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = pair(6);
    let mut store = open(dir.path());
    store.create_device(&p.bob).unwrap();
    let prekeys_before = store.device().unwrap().unwrap().prekeys.one_time_ids();
    let good = &p.bob_join;
    let mut bad = p.bob_group.send(b"doomed").unwrap();
    bad.outbox.push(Outgoing {
        bytes: b"not an envelope".to_vec(),
        welcome_for: None,
    });
    assert!(store.apply_batch(&[good, &bad]).is_err());
    assert!(store.group(&GROUP).unwrap().is_none());
    assert!(store.outbox(10).unwrap().is_empty());
    assert!(store.log_page(&GROUP, 0, 10).unwrap().is_empty());
    assert_eq!(store.last_cursor().unwrap(), 0);
    // The join's prekey deletion was rolled back with the rest.
    assert_eq!(
        store.device().unwrap().unwrap().prekeys.one_time_ids(),
        prekeys_before
    );
    // And the good step alone commits.
    store.apply(good).unwrap();
    assert!(store.group(&GROUP).unwrap().is_some());
    let _ = &mut p.rng;
}

#[test]
fn a_batch_keeps_the_last_state_of_each_group() {
    let dir = tempfile::tempdir().unwrap();
    let p = pair(7);
    let mut store = open(dir.path());
    let one = p.bob_group.send(b"1").unwrap();
    let two = one.group.send(b"2").unwrap();
    let three = two.group.send(b"3").unwrap();
    let results = store.apply_batch(&[&one, &two, &three]).unwrap();
    assert_eq!(results.len(), 3);
    // The stored state is the last one: its next message is number 3 of the chain.
    let stored = store.group(&GROUP).unwrap().unwrap();
    let next_stored = stored.send(b"4").unwrap();
    let next_live = three.group.send(b"4").unwrap();
    assert_eq!(next_stored.outbox[0].bytes, next_live.outbox[0].bytes);
    assert_eq!(store.outbox(10).unwrap().len(), 3);
}

#[test]
fn corrupt_rows_are_errors_that_name_the_row() {
    let dir = tempfile::tempdir().unwrap();
    let p = pair(8);
    let mut store = open(dir.path());
    store.apply(&p.bob_join).unwrap();
    drop(store);
    let raw = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    raw.execute(
        "UPDATE groups SET sealed_state = substr(sealed_state, 1, 40)",
        [],
    )
    .unwrap();
    raw.execute("UPDATE events SET body = x'ff'", []).unwrap();
    drop(raw);
    let store = open(dir.path());
    let error = store.group(&GROUP).unwrap_err();
    assert!(matches!(&error, StoreError::Corrupt(c) if c.table == "groups"));
    assert!(error.to_string().contains("0707"), "{error}");
    let error = store.events_since(0, 10).unwrap_err();
    assert!(
        matches!(&error, StoreError::Corrupt(c) if c.table == "events" && c.key.starts_with("cursor"))
    );

    // A state moved to another group's row does not open either (sealed to its place).
    let other = tempfile::tempdir().unwrap();
    let mut store = open(other.path());
    store.apply(&p.bob_join).unwrap();
    let mut q = pair(9);
    let _ = &mut q.rng;
    let second = GroupId([8; 32]);
    let created = Group::create(&q.alice, second, &[q.bob.bundle(None)], &mut q.rng).unwrap();
    store.apply(&created).unwrap();
    drop(store);
    let raw = rusqlite::Connection::open(other.path().join(DATABASE_FILE)).unwrap();
    raw.execute(
        "UPDATE groups SET sealed_state = (SELECT sealed_state FROM groups WHERE group_id = ?1)
         WHERE group_id = ?2",
        [GROUP.0.to_vec(), second.0.to_vec()],
    )
    .unwrap();
    drop(raw);
    let store = open(other.path());
    assert!(store.group(&GROUP).unwrap().is_some());
    assert!(matches!(store.group(&second), Err(StoreError::Corrupt(_))));
}

#[test]
fn mailbox_stores_serves_and_expires_without_keys() {
    let dir = tempfile::tempdir().unwrap();
    let p = pair(10);
    let mut store = open(dir.path());
    assert!(matches!(
        store.mailbox_put(&GROUP, &p.create, 0),
        Err(StoreError::Invalid(_))
    ));
    store.mailbox_register(&GROUP, 1_000, 0).unwrap();
    assert!(store.mailbox_put(&GROUP, &p.create, 10).unwrap());
    assert!(!store.mailbox_put(&GROUP, &p.create, 11).unwrap());
    let ack = p.bob_join.outbox[0].bytes.clone();
    assert!(store.mailbox_put(&GROUP, &ack, 500).unwrap());
    assert!(matches!(
        store.mailbox_put(&GROUP, b"garbage", 500),
        Err(StoreError::Invalid(_))
    ));
    let page = store.mailbox_page(&GROUP, 0, 10).unwrap();
    assert_eq!(
        page.iter().map(|e| e.bytes.clone()).collect::<Vec<_>>(),
        vec![p.create.clone(), ack.clone()]
    );
    assert_eq!(store.mailbox_page(&GROUP, page[0].id, 10).unwrap().len(), 1);
    assert_eq!(store.mailbox_groups().unwrap()[0].retention_ms, 1_000);
    // The create is older than the retention at t = 1200; the ack is not.
    assert_eq!(store.mailbox_expire(1_200).unwrap(), 1);
    assert_eq!(store.mailbox_page(&GROUP, 0, 10).unwrap()[0].bytes, ack);
    // Emptied by expiry, the mailbox does not hand out an old position again: a member's
    // cursor past it would skip the new envelope.
    let last = store.mailbox_end(&GROUP).unwrap();
    assert_eq!(store.mailbox_expire(10_000).unwrap(), 1);
    assert!(store.mailbox_put(&GROUP, &p.create, 10_000).unwrap());
    assert!(store.mailbox_end(&GROUP).unwrap() > last);
    store.mailbox_unregister(&GROUP).unwrap();
    assert!(store.mailbox_page(&GROUP, 0, 10).unwrap().is_empty());
    assert!(store.mailbox_groups().unwrap().is_empty());
    // A mailbox holds no group state.
    assert!(store.groups().unwrap().is_empty());
}

#[test]
fn a_mailbox_serves_sync_by_position_news_and_held_welcomes() {
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    let p = pair(11);
    let mut store = open(dir.path());
    let owner = p.bob.id();
    store.mailbox_register(&GROUP, 60_000, 0).unwrap();
    store.mailbox_add_owner(&GROUP, &owner, 1).unwrap();
    // A second group is over this owner's bound of one.
    assert!(matches!(
        store.mailbox_add_owner(&GroupId([8; 32]), &owner, 1),
        Err(StoreError::Invalid(_))
    ));
    let ack = p.bob_join.outbox[0].bytes.clone();
    store.mailbox_put(&GROUP, &p.create, 1).unwrap();
    store.mailbox_put(&GROUP, &ack, 2).unwrap();
    assert_eq!(store.mailbox_usage(&GROUP).unwrap().0, 2);

    // Marks name both senders; a peer holding them lacks nothing, a peer with none lacks all.
    let marks = store.mailbox_marks(&GROUP).unwrap();
    assert_eq!(marks.len(), 2);
    let (all, next) = store
        .mailbox_lacking(&GROUP, 0, &HashMap::new(), 10, 1 << 20)
        .unwrap();
    assert_eq!((all, next), (vec![p.create.clone(), ack.clone()], None));
    let (none, _) = store
        .mailbox_lacking(&GROUP, 0, &marks, 10, 1 << 20)
        .unwrap();
    assert!(none.is_empty());
    // Pages of one go on from their token.
    let (first, next) = store
        .mailbox_lacking(&GROUP, 0, &HashMap::new(), 1, 1 << 20)
        .unwrap();
    assert_eq!(first, vec![p.create.clone()]);
    let (second, _) = store
        .mailbox_lacking(&GROUP, next.unwrap(), &HashMap::new(), 1, 1 << 20)
        .unwrap();
    assert_eq!(second, vec![ack.clone()]);

    // News: the group has envelopes after 0, none after the returned cursor.
    let start = NewsCursor::default();
    let news = store.mailbox_news(&owner, start, 10).unwrap();
    assert_ne!(news.cursor.instance, [0; 16]);
    assert_eq!(news.groups, vec![GROUP]);
    assert!(news.welcomes.is_empty());
    assert!(
        store
            .mailbox_news(&owner, news.cursor, 10)
            .unwrap()
            .groups
            .is_empty()
    );
    // A position this mailbox never reached, or one of another instance (its data were
    // lost, or another mailbox took over its key), reads as the start.
    let beyond = NewsCursor {
        after: 1_000_000,
        ..news.cursor
    };
    assert_eq!(
        store.mailbox_news(&owner, beyond, 10).unwrap().groups,
        vec![GROUP]
    );
    let elsewhere = NewsCursor {
        instance: [7; 16],
        ..news.cursor
    };
    assert_eq!(
        store.mailbox_news(&owner, elsewhere, 10).unwrap().groups,
        vec![GROUP]
    );
    assert_eq!(
        store
            .mailbox_lacking(&GROUP, 1_000_000, &HashMap::new(), 10, 1 << 20)
            .unwrap()
            .0
            .len(),
        2
    );
    // Someone else's news are not this owner's.
    assert!(
        store
            .mailbox_news(&p.alice.id(), start, 10)
            .unwrap()
            .groups
            .is_empty()
    );

    // A welcome is held until the owner registers the group itself.
    store
        .mailbox_hold_welcome(&owner, &GROUP, &p.create, 3, 4)
        .unwrap();
    assert_eq!(
        store
            .mailbox_news(&owner, news.cursor, 10)
            .unwrap()
            .welcomes,
        vec![(GROUP, p.create.clone())]
    );
    assert!(
        store
            .mailbox_hold_welcome(&owner, &GROUP, b"junk", 3, 4)
            .is_err()
    );
    store.mailbox_add_owner(&GROUP, &owner, 1).unwrap();
    assert!(
        store
            .mailbox_news(&owner, start, 10)
            .unwrap()
            .welcomes
            .is_empty()
    );

    // Member side bookkeeping.
    store.add_own_mailbox(&p.alice.id()).unwrap();
    assert_eq!(
        store.own_mailboxes().unwrap(),
        vec![(p.alice.id(), NewsCursor::default())]
    );
    let read = NewsCursor {
        after: 42,
        instance: [3; 16],
    };
    store.set_news_cursor(&p.alice.id(), read).unwrap();
    store.add_own_mailbox(&p.alice.id()).unwrap();
    assert_eq!(store.own_mailboxes().unwrap(), vec![(p.alice.id(), read)]);
    store.add_group_mailbox(&GROUP, &p.alice.id()).unwrap();
    assert_eq!(
        store.group_mailboxes().unwrap(),
        vec![(GROUP, p.alice.id())]
    );
    store
        .set_contact_mailboxes(&owner, &[p.alice.id()])
        .unwrap();
    assert_eq!(store.contact_mailboxes(&owner).unwrap(), vec![p.alice.id()]);
    store.set_contact_mailboxes(&owner, &[]).unwrap();
    assert!(store.contact_mailboxes(&owner).unwrap().is_empty());
}

#[test]
fn welcomes_wait_until_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = pair(12);
    let mut store = open(dir.path());
    // A create is the welcome of its initial members.
    let created = Group::create(&p.alice, GROUP, &[p.bob.bundle(None)], &mut p.rng).unwrap();
    store.apply_welcoming(&created, &[p.bob.id()]).unwrap();
    assert_eq!(
        store.pending_welcomes(&p.bob.id()).unwrap(),
        vec![(GROUP, created.outbox[0].bytes.clone())]
    );
    // An add carries its welcome_for.
    let carol = Device::generate(1, &mut p.rng);
    let added = created
        .group
        .add(&p.alice, &carol.bundle(None), &mut p.rng)
        .unwrap();
    store.apply(&added).unwrap();
    let waiting = store.pending_welcomes(&carol.id()).unwrap();
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].1, added.outbox[0].bytes);
    assert_eq!(
        store.members_awaiting_welcome().unwrap().len(),
        2,
        "bob and carol"
    );
    drop(store);
    let mut store = open(dir.path());
    store.welcome_delivered(&p.bob.id(), &GROUP).unwrap();
    assert!(store.pending_welcomes(&p.bob.id()).unwrap().is_empty());
    assert_eq!(store.members_awaiting_welcome().unwrap(), vec![carol.id()]);
}

#[test]
fn log_lacking_returns_what_the_marks_do_not_cover_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let p = pair(13);
    let mut store = open(dir.path());
    store.apply(&p.bob_join).unwrap();
    let mut group = p.bob_join.group.clone();
    let mut sent = Vec::new();
    for i in 0..5 {
        let staged = group.send(format!("m{i}").as_bytes()).unwrap();
        sent.push(staged.outbox[0].bytes.clone());
        store.apply(&staged).unwrap();
        group = staged.group;
    }
    let log: Vec<Vec<u8>> = store
        .log_page(&GROUP, 0, 100)
        .unwrap()
        .into_iter()
        .map(|e| e.bytes)
        .collect();
    // No marks: everything.
    let none = std::collections::HashMap::new();
    let (all, next) = store
        .log_lacking(&GROUP, 0, &none, 100, usize::MAX)
        .unwrap();
    assert_eq!((all, next), (log.clone(), None));
    // Marks covering Bob's first three messages and every control message.
    let position = |bytes: &[u8]| match dspring_proto::envelope::Unverified::<
        dspring_proto::envelope::Envelope,
    >::parse(bytes.to_vec())
    .unwrap()
    .position()
    {
        dspring_proto::envelope::Position::Application { epoch, index } => (*epoch, *index),
        _ => unreachable!(),
    };
    let mut marks = std::collections::HashMap::new();
    marks.insert(p.bob.id().short(), (u64::MAX, Some(position(&sent[2]))));
    marks.insert(p.alice.id().short(), (u64::MAX, None));
    let (lacking, next) = store
        .log_lacking(&GROUP, 0, &marks, 100, usize::MAX)
        .unwrap();
    assert_eq!(lacking, sent[3..].to_vec());
    assert_eq!(next, None);
    // Pages: one envelope at a time, continuing from the returned position.
    let (first, next) = store.log_lacking(&GROUP, 0, &marks, 1, usize::MAX).unwrap();
    assert_eq!(first, vec![sent[3].clone()]);
    let (second, next) = store
        .log_lacking(&GROUP, next.unwrap(), &marks, 1, usize::MAX)
        .unwrap();
    assert_eq!(second, vec![sent[4].clone()]);
    assert_eq!(next, None);
    // A byte budget smaller than one envelope still makes progress: one per page.
    let (one, next) = store.log_lacking(&GROUP, 0, &none, 100, 10).unwrap();
    assert_eq!(one, vec![log[0].clone()]);
    let (two, _) = store
        .log_lacking(&GROUP, next.unwrap(), &none, 100, 10)
        .unwrap();
    assert_eq!(two, vec![log[1].clone()]);
}

#[test]
fn a_hole_in_what_a_mailbox_holds_is_filled_by_the_next_sync() {
    let dir = tempfile::tempdir().unwrap();
    let peer_dir = tempfile::tempdir().unwrap();
    let p = pair(17);
    // The peer (Bob) holds the whole log: his join and five messages.
    let mut peer = open(peer_dir.path());
    peer.apply(&p.bob_join).unwrap();
    let mut group = p.bob_join.group.clone();
    let mut sent = Vec::new();
    for i in 0..5 {
        let staged = group.send(format!("m{i}").as_bytes()).unwrap();
        sent.push(staged.outbox[0].bytes.clone());
        peer.apply(&staged).unwrap();
        group = staged.group;
    }
    // The mailbox saw Bob's join (the control message that began his epoch) and every
    // message but m0 and m2: gossip dropped them.
    let mut mailbox = open(dir.path());
    mailbox.mailbox_register(&GROUP, 60_000, 0).unwrap();
    let ack = p.bob_join.outbox[0].bytes.clone();
    for bytes in [&p.create, &ack, &sent[1], &sent[3], &sent[4]] {
        mailbox.mailbox_put(&GROUP, bytes, 1).unwrap();
    }
    // Its marks ask for everything from the first hole on; what it has is skipped below.
    let marks = mailbox.mailbox_marks(&GROUP).unwrap();
    let (answer, next) = peer
        .log_lacking(&GROUP, 0, &marks, 100, usize::MAX)
        .unwrap();
    assert_eq!(next, None);
    assert!(answer.contains(&sent[0]) && answer.contains(&sent[2]));
    for bytes in &answer {
        mailbox.mailbox_put(&GROUP, bytes, 2).unwrap();
    }
    // With the holes filled, the marks cover the whole log and the peer sends nothing.
    let marks = mailbox.mailbox_marks(&GROUP).unwrap();
    let (nothing, _) = peer
        .log_lacking(&GROUP, 0, &marks, 100, usize::MAX)
        .unwrap();
    assert!(nothing.is_empty(), "{} envelopes sent again", nothing.len());
    // The member's own marks over a complete log ask for nothing either.
    let own = peer.sync_marks(&GROUP).unwrap();
    let (nothing, _) = peer.log_lacking(&GROUP, 0, &own, 100, usize::MAX).unwrap();
    assert!(nothing.is_empty());
}

#[test]
fn a_removed_member_is_served_the_log_up_to_its_removal_only() {
    use std::collections::HashMap;
    let dir = tempfile::tempdir().unwrap();
    let mut p = pair(12);
    let mut store = open(dir.path());
    store.apply(&p.bob_join).unwrap();
    let before = p.bob_group.send(b"before").unwrap();
    // Alice asked to leave (group metadata, committed with the step that carried it); her
    // removal's commit drops the request.
    let asked = dspring_store::Metadata {
        leave_requests: vec![(GROUP, p.alice.id())],
        ..Default::default()
    };
    store.apply_steps(&[&before], &[], &asked).unwrap();
    assert_eq!(store.leave_requests().unwrap(), [(GROUP, p.alice.id())]);
    let removed = before.group.remove(p.alice.id(), &mut p.rng).unwrap();
    store.apply(&removed).unwrap();
    assert!(store.leave_requests().unwrap().is_empty());
    let end = store.log_end(&GROUP).unwrap();
    let after = removed.group.send(b"after").unwrap();
    store.apply(&after).unwrap();

    assert_eq!(
        store.former_member_end(&GROUP, &p.alice.id()).unwrap(),
        Some(end)
    );
    assert_eq!(store.former_member_end(&GROUP, &p.bob.id()).unwrap(), None);
    let (served, next) = store
        .log_lacking_until(&GROUP, 0, end, &HashMap::new(), 100, 1 << 20)
        .unwrap();
    assert_eq!(next, None);
    let after_bytes = &after.outbox[0].bytes;
    assert!(served.contains(&before.outbox[0].bytes));
    assert!(served.contains(&removed.outbox[0].bytes));
    assert!(!served.contains(after_bytes));
    let (all, _) = store
        .log_lacking(&GROUP, 0, &HashMap::new(), 100, 1 << 20)
        .unwrap();
    assert!(all.contains(after_bytes));
    // Kept across a restart.
    drop(store);
    let store = open(dir.path());
    assert_eq!(
        store.former_member_end(&GROUP, &p.alice.id()).unwrap(),
        Some(end)
    );
}

#[test]
fn invitations_are_held_bounded_per_adder_and_in_all() {
    use dspring_store::{Held, MAX_INVITATIONS, MAX_INVITATIONS_PER_ADDER};
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let stranger = MemberId([1; 32]);
    let group = |n: u8| GroupId([n; 32]);
    let invited = |store: &Store| -> Vec<GroupId> {
        store
            .events_since(0, 1000)
            .unwrap()
            .into_iter()
            .filter(|e| matches!(e.event, Event::Invited { .. }))
            .map(|e| e.group)
            .collect()
    };
    let Held::New(event) = store
        .hold_invitation(&group(10), &stranger, b"w10", 10)
        .unwrap()
    else {
        panic!("a new invitation is logged");
    };
    assert_eq!(
        (event.group, event.at_ms, &event.event),
        (group(10), 10, &Event::Invited { by: stranger })
    );
    assert_eq!(store.events_since(0, 10).unwrap(), vec![event]);
    // The same welcome offered again is held once, as first received, and logged once.
    assert_eq!(
        store
            .hold_invitation(&group(10), &stranger, b"again", 99)
            .unwrap(),
        Held::Kept
    );
    assert_eq!(invited(&store), [group(10)]);
    assert_eq!(
        store.invitation(&group(10)).unwrap(),
        Some((stranger, b"w10".to_vec()))
    );
    // One adder keeps its newest few, newest by arrival whatever the clock says.
    for n in 11..(11 + MAX_INVITATIONS_PER_ADDER as u8) {
        store
            .hold_invitation(&group(n), &stranger, b"w", 5)
            .unwrap();
    }
    let held = store.invitations().unwrap();
    assert_eq!(held.len(), MAX_INVITATIONS_PER_ADDER);
    assert!(held.iter().all(|i| i.group != group(10)), "the oldest went");
    // Its event with it: a stranger's invitations cannot grow the event log.
    assert_eq!(
        invited(&store),
        held.iter().map(|i| i.group).collect::<Vec<_>>()
    );
    // Declined: not listed, and not listed again when offered again.
    assert!(store.decline_invitation(&group(11)).unwrap());
    assert!(!store.decline_invitation(&group(11)).unwrap());
    assert_eq!(
        store
            .hold_invitation(&group(11), &stranger, b"w", 50)
            .unwrap(),
        Held::Declined
    );
    assert_eq!(store.invitation(&group(11)).unwrap(), None);
    assert_eq!(
        store.invitations().unwrap().len(),
        MAX_INVITATIONS_PER_ADDER - 1
    );
    // All together stay within the bound, the oldest going first.
    for n in 0..(MAX_INVITATIONS as u8 + 5) {
        store
            .hold_invitation(&group(100 + n), &MemberId([n; 32]), b"w", 1000)
            .unwrap();
    }
    let held = store.invitations().unwrap();
    assert_eq!(held.len(), MAX_INVITATIONS);
    assert_eq!(
        held.last().unwrap().group,
        group(100 + MAX_INVITATIONS as u8 + 4)
    );
    assert_eq!(held.first().unwrap().group, group(105));
    assert_eq!(invited(&store).len(), MAX_INVITATIONS);
    // Forgotten (joined): gone, its event too; the rest is kept across a restart.
    store.forget_invitation(&held[0].group).unwrap();
    assert!(!invited(&store).contains(&held[0].group));
    drop(store);
    let store = open(dir.path());
    assert_eq!(store.invitations().unwrap().len(), MAX_INVITATIONS - 1);
    assert_eq!(invited(&store).len(), MAX_INVITATIONS - 1);
}

#[test]
fn a_leave_request_and_its_removal_in_one_batch_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = pair(13);
    let mut store = open(dir.path());
    store.apply(&p.bob_join).unwrap();
    let asked = p.bob_group.send(b"leave request").unwrap();
    let removed = asked.group.remove(p.alice.id(), &mut p.rng).unwrap();
    let metadata = dspring_store::Metadata {
        leave_requests: vec![(GROUP, p.alice.id())],
        ..Default::default()
    };
    store
        .apply_steps(&[&asked, &removed], &[], &metadata)
        .unwrap();
    assert!(store.leave_requests().unwrap().is_empty());
}
