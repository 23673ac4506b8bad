//! Property tests: every stored type comes back exactly as it went in.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use dspring_proto::ids::ShortId;
use dspring_proto::{Device, Event, Group, GroupId, MemberId, Staged, StateChanges};
use dspring_store::{Contact, MAX_ADDRESS_LEN, MAX_ADDRESSES, MAX_DISPLAY_NAME_LEN, Store};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const GROUP: GroupId = GroupId([4; 32]);

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), None).unwrap();
    (dir, store)
}

/// A group of one device and one other, as created by the device.
fn solo_group(seed: u64) -> (Device, Group) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let me = Device::generate(1, &mut rng);
    let other = Device::generate(1, &mut rng);
    let staged = Group::create(&me, GROUP, &[other.bundle(None)], &mut rng).unwrap();
    (me, staged.group)
}

fn member() -> impl Strategy<Value = MemberId> {
    any::<[u8; 32]>().prop_map(MemberId)
}

fn event() -> impl Strategy<Value = Event> {
    let bytes = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        (member(), any::<u64>(), any::<u64>(), bytes.clone()).prop_map(
            |(sender, epoch, index, plaintext)| Event::Message {
                sender,
                epoch,
                index,
                plaintext
            }
        ),
        (any::<u64>(), any::<u64>(), bytes).prop_map(|(epoch, index, plaintext)| Event::Sent {
            epoch,
            index,
            plaintext
        }),
        member().prop_map(|by| Event::Joined { by }),
        (member(), member()).prop_map(|(by, member)| Event::MemberAdded { by, member }),
        (member(), member()).prop_map(|(by, member)| Event::MemberRemoved { by, member }),
        member().prop_map(|member| Event::KeyUpdated { member }),
        member().prop_map(|by| Event::RemovedMe { by }),
        (member(), any::<u64>(), any::<u64>()).prop_map(|(sender, epoch, index)| {
            Event::Unreadable {
                sender,
                epoch,
                index,
            }
        }),
        (any::<[u8; 8]>(), ".{0,40}").prop_map(|(sender, reason)| Event::Rejected {
            sender: ShortId(sender),
            reason
        }),
        member().prop_map(|by| Event::Invited { by }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn contacts_round_trip(
        seed in any::<u64>(),
        name in proptest::string::string_regex(&format!(".{{0,{}}}", MAX_DISPLAY_NAME_LEN / 4)).unwrap(),
        verified in any::<bool>(),
        addresses in proptest::collection::vec(
            proptest::string::string_regex(&format!("[ -~]{{0,{MAX_ADDRESS_LEN}}}")).unwrap(),
            0..=MAX_ADDRESSES,
        ),
        with_bundle in any::<bool>(),
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let device = Device::generate(1, &mut rng);
        let contact = Contact {
            member: device.id(),
            display_name: name,
            verified,
            addresses,
            bundle: with_bundle.then(|| device.bundle(device.prekeys.one_time_ids().first().copied())),
        };
        let (dir, mut store) = store();
        store.put_contact(&contact).unwrap();
        drop(store);
        let store = Store::open(dir.path(), None).unwrap();
        prop_assert_eq!(store.contact(&contact.member).unwrap(), Some(contact.clone()));
        prop_assert_eq!(store.contacts().unwrap(), vec![contact]);
    }

    #[test]
    fn events_round_trip_in_order(seed in any::<u64>(), events in proptest::collection::vec(event(), 0..20)) {
        let (_me, group) = solo_group(seed);
        let staged = Staged {
            group,
            changes: StateChanges::all(),
            outbox: Vec::new(),
            events: events.clone(),
            consumed_prekeys: Vec::new(),
            delivered: Vec::new(),
        };
        let (dir, mut store) = store();
        let committed = store.apply(&staged).unwrap();
        prop_assert_eq!(committed.cursors.len(), events.len());
        drop(store);
        let store = Store::open(dir.path(), None).unwrap();
        let stored = store.events_since(0, 1000).unwrap();
        prop_assert_eq!(stored.iter().map(|e| e.cursor).collect::<Vec<_>>(), committed.cursors);
        prop_assert!(stored.iter().all(|e| e.group == GROUP));
        prop_assert_eq!(stored.into_iter().map(|e| e.event).collect::<Vec<_>>(), events.clone());
        let messages: Vec<Event> = store.messages(&GROUP, 0, 1000).unwrap().into_iter().map(|e| e.event).collect();
        let expected: Vec<Event> = events
            .into_iter()
            .filter(|e| matches!(e, Event::Message { .. } | Event::Sent { .. }))
            .collect();
        prop_assert_eq!(messages, expected);
    }

    #[test]
    fn devices_round_trip(seed in any::<u64>(), one_time in 0u32..20) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let device = Device::generate(one_time, &mut rng);
        let (dir, mut store) = store();
        store.create_device(&device).unwrap();
        drop(store);
        let store = Store::open(dir.path(), None).unwrap();
        let loaded = store.device().unwrap().unwrap();
        prop_assert_eq!(loaded.identity.secret().expose(), device.identity.secret().expose());
        prop_assert_eq!(loaded.prekeys.one_time_ids(), device.prekeys.one_time_ids());
        for id in device.prekeys.one_time_ids() {
            prop_assert_eq!(loaded.bundle(Some(id)), device.bundle(Some(id)));
        }
    }

    #[test]
    fn group_states_and_logs_round_trip(
        seed in any::<u64>(),
        sends in 1usize..12,
        order in proptest::collection::vec(any::<prop::sample::Index>(), 1..30),
    ) {
        let (_me, mut group) = solo_group(seed);
        let mut steps = Vec::new();
        for i in 0..sends {
            let staged = group.send(format!("m{i}").as_bytes()).unwrap();
            group = staged.group.clone();
            steps.push(staged);
        }
        let (dir, mut store) = store();
        // Steps applied once each, in order, then their envelopes again as replays.
        let refs: Vec<&Staged> = steps.iter().collect();
        store.apply_batch(&refs).unwrap();
        let replays: Vec<Staged> = order
            .iter()
            .map(|i| {
                let step = &steps[i.index(steps.len())];
                Staged {
                    group: group.clone(),
                    changes: StateChanges::none(),
                    outbox: Vec::new(),
                    events: Vec::new(),
                    consumed_prekeys: Vec::new(),
                    delivered: step.outbox.iter().map(|o| o.bytes.clone()).collect(),
                }
            })
            .collect();
        for replay in &replays {
            prop_assert_eq!(store.apply(replay).unwrap().new_envelopes, 0);
        }
        drop(store);
        let store = Store::open(dir.path(), None).unwrap();
        let stored = store.group(&GROUP).unwrap().unwrap();
        prop_assert_eq!(stored.to_bytes().unwrap(), group.to_bytes().unwrap());
        let log: Vec<Vec<u8>> = store.log_page(&GROUP, 0, 1000).unwrap().into_iter().map(|e| e.bytes).collect();
        let sent: Vec<Vec<u8>> = steps.iter().map(|s| s.outbox[0].bytes.clone()).collect();
        prop_assert_eq!(log, sent.clone());
        let outbox: Vec<Vec<u8>> = store.outbox(1000).unwrap().into_iter().map(|e| e.bytes).collect();
        prop_assert_eq!(outbox, sent);
        let marks = store.sender_marks(&GROUP).unwrap();
        prop_assert_eq!(marks.len(), 1);
        prop_assert_eq!(marks[0].envelopes, sends as u64);
    }

    #[test]
    fn mailbox_pages_hold_each_envelope_once_in_arrival_order(
        seed in any::<u64>(),
        picks in proptest::collection::vec(any::<prop::sample::Index>(), 1..40),
    ) {
        let (_me, mut group) = solo_group(seed);
        let mut envelopes = Vec::new();
        for i in 0..8 {
            let staged = group.send(format!("m{i}").as_bytes()).unwrap();
            group = staged.group;
            envelopes.push(staged.outbox[0].bytes.clone());
        }
        let (_dir, mut store) = store();
        store.mailbox_register(&GROUP, 60_000, 0).unwrap();
        let mut expected: Vec<Vec<u8>> = Vec::new();
        for pick in &picks {
            let envelope = &envelopes[pick.index(envelopes.len())];
            let new = store.mailbox_put(&GROUP, envelope, 1).unwrap();
            prop_assert_eq!(new, !expected.contains(envelope));
            if new {
                expected.push(envelope.clone());
            }
        }
        let mut got = Vec::new();
        let mut after = 0;
        loop {
            let page = store.mailbox_page(&GROUP, after, 3).unwrap();
            let Some(last) = page.last() else { break };
            after = last.id;
            got.extend(page.into_iter().map(|e| e.bytes));
        }
        prop_assert_eq!(got, expected);
    }
}

/// Which stored column a corruption hits.
const CORRUPTIBLE: &[(&str, &str)] = &[
    ("events", "body"),
    ("contacts", "addresses"),
    ("contacts", "bundle"),
    ("contacts", "member_id"),
    ("groups", "sealed_state"),
    ("groups", "group_id"),
    ("device", "sealed"),
    ("one_time_prekeys", "sealed"),
    ("envelopes", "bytes"),
    ("sender_marks", "sender"),
    ("outbox", "welcome_for"),
    ("mailbox_groups", "group_id"),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Arbitrary bytes in any stored column: every read returns a value or an error, never
    /// panics, and a corrupt sealed value never opens.
    #[test]
    fn corrupt_columns_never_panic_a_read(
        which in 0..CORRUPTIBLE.len(),
        garbage in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let me = Device::generate(2, &mut rng);
        let other = Device::generate(1, &mut rng);
        let created = Group::create(&me, GROUP, &[other.bundle(None)], &mut rng).unwrap();
        let sent = created.group.send(b"x").unwrap();
        let (dir, mut store) = store();
        store.create_device(&me).unwrap();
        store.apply(&created).unwrap();
        store.apply(&sent).unwrap();
        store.put_contact(&Contact {
            member: other.id(),
            display_name: "o".into(),
            verified: false,
            addresses: vec!["a".into()],
            bundle: Some(other.bundle(None)),
        }).unwrap();
        store.mailbox_register(&GROUP, 1, 0).unwrap();
        drop(store);
        let (table, column) = CORRUPTIBLE[which];
        let raw = rusqlite::Connection::open(dir.path().join(dspring_store::DATABASE_FILE)).unwrap();
        raw.execute(&format!("UPDATE {table} SET {column} = ?1"), [&garbage]).unwrap();
        drop(raw);
        // Opening reads the group ids; a corrupt one is an error, not a panic.
        let Ok(store) = Store::open(dir.path(), None) else {
            prop_assert_eq!(table, "groups");
            return Ok(());
        };
        let group = store.group(&GROUP);
        if table == "groups" && column == "sealed_state" {
            prop_assert!(group.is_err());
        }
        let device = store.device();
        if table == "device" || table == "one_time_prekeys" {
            prop_assert!(device.is_err());
        }
        let _ = store.events_since(0, 100);
        let _ = store.messages(&GROUP, 0, 100);
        let contacts = store.contacts();
        if let Ok(contacts) = contacts {
            for contact in contacts {
                prop_assert!(contact.addresses.len() <= MAX_ADDRESSES);
            }
        }
        let _ = store.contact(&other.id());
        let _ = store.log_page(&GROUP, 0, 100);
        let _ = store.sender_marks(&GROUP);
        let _ = store.outbox(100);
        let _ = store.mailbox_groups();
    }
}
