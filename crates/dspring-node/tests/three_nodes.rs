//! Three real nodes (libp2p on loopback, SQLite files) in one process: a group is created from
//! contact cards, everyone chats, one member stops, the others go on, and the member catches up
//! after restarting.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;

use common::{has_all, introduce, start, texts, until};
use dspring_proto::Event;
use futures::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_chat_and_a_returning_member_catches_up() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path()).await;
    let b = start(dirs[1].path()).await;
    let c = start(dirs[2].path()).await;
    let nodes = [&a, &b, &c];
    introduce(&nodes).await;

    let group = a.create_group("friends", &[b.id(), c.id()]).await.unwrap();
    for node in [&b, &c] {
        until("the welcome arrives", async || {
            node.groups().await.unwrap().contains(&group)
        })
        .await;
    }
    let mut expected = BTreeSet::new();
    for (i, node) in nodes.iter().enumerate() {
        let text = format!("hello from {i}");
        node.send(group, text.as_bytes()).await.unwrap();
        expected.insert(text);
    }
    for node in nodes {
        until("everyone has every message", async || {
            has_all(node, group, &expected).await
        })
        .await;
    }

    // C stops; A and B go on.
    c.stop().await.unwrap();
    drop(c);
    for i in 0..5 {
        for (name, node) in [("a", &a), ("b", &b)] {
            let text = format!("{name} while C is away {i}");
            node.send(group, text.as_bytes()).await.unwrap();
            expected.insert(text);
        }
    }
    for node in [&a, &b] {
        until("A and B have everything", async || {
            has_all(node, group, &expected).await
        })
        .await;
    }

    // C restarts from its data directory and catches up from A and B, each message once.
    let c = start(dirs[2].path()).await;
    until("C catches up", async || has_all(&c, group, &expected).await).await;
    let members: BTreeSet<_> = c.members(group).await.unwrap().into_iter().collect();
    assert_eq!(members, [a.id(), b.id(), c.id()].into_iter().collect());

    // The event stream gives exactly the stored events, in order, then live ones.
    let stored = a.events_since(0, 1000).await.unwrap();
    let mut stream = Box::pin(a.events(0));
    for expected_event in &stored {
        assert_eq!(stream.next().await.as_ref(), Some(expected_event));
    }

    // And the conversation goes on both ways.
    c.send(group, b"back again").await.unwrap();
    expected.insert("back again".into());
    for node in [&a, &b, &c] {
        until("everyone has C's new message", async || {
            has_all(node, group, &expected).await
        })
        .await;
    }
    // C's message reached A's stream live, after everything stored before.
    let live = stream.next().await.unwrap();
    assert!(live.cursor > stored.last().unwrap().cursor);

    // Every member sees the group's name; C, restarted, from its store.
    for node in [&a, &b, &c] {
        until("every member sees the name", async || {
            node.group_name(group).await.unwrap().as_deref() == Some("friends")
        })
        .await;
    }
    // Two members rename the group at once: everyone ends with the same one of the two.
    let (by_a, by_b) = tokio::join!(a.rename(group, "by a"), b.rename(group, "by b"));
    by_a.unwrap();
    by_b.unwrap();
    until("the renames converge", async || {
        let mut names = BTreeSet::new();
        for node in [&a, &b, &c] {
            names.insert(node.group_name(group).await.unwrap());
        }
        names.len() == 1
            && names
                .iter()
                .all(|n| matches!(n.as_deref(), Some("by a" | "by b")))
    })
    .await;
    assert!(matches!(
        a.rename(group, &"x".repeat(dspring_store::MAX_GROUP_NAME_BYTES + 1))
            .await,
        Err(dspring_node::NodeError::NameTooLong { .. })
    ));

    // The stream ends when the node stops.
    a.stop().await.unwrap();
    tokio::time::timeout(common::WAIT, async {
        while stream.next().await.is_some() {}
    })
    .await
    .expect("the event stream did not end with the node");
}

/// A contact's card carries one one-time prekey, which its device deletes on first use: a
/// second group made from the same card must not use it again, or the welcome cannot be opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_contact_card_welcomes_into_several_groups() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path()).await;
    let b = start(dirs[1].path()).await;
    introduce(&[&a, &b]).await;
    let first = a.create_group("first", &[b.id()]).await.unwrap();
    let second = a.create_group("second", &[b.id()]).await.unwrap();
    let third = a.create_group("third", &[]).await.unwrap();
    a.add(third, b.id()).await.unwrap();
    for group in [first, second, third] {
        until("B joins every group", async || {
            b.groups().await.unwrap().contains(&group)
        })
        .await;
    }
}

/// A, B and C (C listening on `c_listen`) in a group A created, once B and C have joined.
async fn group_of_three(
    dirs: &[tempfile::TempDir],
    c_listen: &str,
) -> (
    dspring_node::Node,
    dspring_node::Node,
    dspring_node::Node,
    dspring_proto::GroupId,
) {
    let a = start(dirs[0].path()).await;
    let b = start(dirs[1].path()).await;
    let c = common::start_on(dirs[2].path(), c_listen).await;
    introduce(&[&a, &b, &c]).await;
    let group = a.create_group("g", &[b.id(), c.id()]).await.unwrap();
    for node in [&b, &c] {
        until("joined", async || {
            node.groups().await.unwrap().contains(&group)
        })
        .await;
    }
    (a, b, c, group)
}

/// A member who leaves is removed by another member's node, once (not by every member), and
/// reads nothing sent after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_leaves_is_removed_once_and_reads_nothing_after() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b, c, group) = group_of_three(&dirs, "/ip4/127.0.0.1/tcp/0").await;
    let mut c_events = Box::pin(c.events(0));
    c.leave(group).await.unwrap();
    for node in [&a, &b] {
        until("the others see C removed", async || {
            !node.members(group).await.unwrap().contains(&c.id())
        })
        .await;
    }
    tokio::time::timeout(common::WAIT, async {
        while let Some(stored) = c_events.next().await {
            if matches!(stored.event, Event::RemovedMe { .. }) {
                return;
            }
        }
    })
    .await
    .expect("C is told it was removed");
    a.send(group, b"after C left").await.unwrap();
    until("B reads it", async || {
        texts(&b, group).await.contains(&"after C left".to_owned())
    })
    .await;
    // One removal, by one member: the others saw it before their turn came.
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    let removals = a
        .events_since(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| matches!(e.event, Event::MemberRemoved { .. }))
        .count();
    assert_eq!(removals, 1);
    assert!(!texts(&c, group).await.contains(&"after C left".to_owned()));
}

/// A member removed while offline learns it on return: the removal is delivered to it
/// directly, like a welcome, and members answer its syncs up to its removal, so that what
/// the removal waits for reaches it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_removed_while_offline_learns_it_on_return() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let address = common::fixed_address();
    let (a, b, c, group) = group_of_three(&dirs, &address).await;
    let c_id = c.id();
    c.stop().await.unwrap();
    drop(c);
    // C misses a message of A's before its removal: C's copy of the removal (sent to it
    // directly) waits for that message, which the members send C, up to its removal only.
    a.send(group, b"before C was removed").await.unwrap();
    a.remove(group, c_id).await.unwrap();
    until("B sees C removed", async || {
        !b.members(group).await.unwrap().contains(&c_id)
    })
    .await;
    a.send(group, b"after C was removed").await.unwrap();
    let c = common::start_on(dirs[2].path(), &address).await;
    until("C learns it was removed", async || {
        c.events_since(0, 1000)
            .await
            .unwrap()
            .iter()
            .any(|e| e.group == group && matches!(e.event, Event::RemovedMe { .. }))
    })
    .await;
    let read = texts(&c, group).await;
    assert!(read.contains(&"before C was removed".to_owned()));
    assert!(!read.contains(&"after C was removed".to_owned()));
}

/// A node that takes welcomes from its contacts only joins a contact's group at once, and
/// holds a stranger's as an invitation until its user accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contacts_only_node_holds_a_strangers_group_until_its_user_accepts() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let friend = start(dirs[0].path()).await;
    let stranger = start(dirs[1].path()).await;
    let mut config = dspring_node::NodeConfig::new(dirs[2].path());
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.mdns = false;
    config.join_from = dspring_node::JoinFrom::Contacts;
    let picky = dspring_node::Node::start(config).await.unwrap();
    // A client following the event stream learns of the invitation without polling (the
    // live path is tested through the daemon, in `cli.rs`).
    let mut events = Box::pin(picky.events(0));
    introduce(&[&friend, &picky]).await;
    // The stranger has the picky node's card; the picky node does not have the stranger's.
    stranger
        .add_contact(picky.contact().await.unwrap(), "picky")
        .await
        .unwrap();
    let invited = stranger
        .create_group("invited", &[picky.id()])
        .await
        .unwrap();
    let real = friend.create_group("real", &[picky.id()]).await.unwrap();
    until("the picky node joins its contact's group", async || {
        picky.groups().await.unwrap().contains(&real)
    })
    .await;
    until(
        "the stranger's group is held as an invitation",
        async || !picky.invitations().await.unwrap().is_empty(),
    )
    .await;
    let held = picky.invitations().await.unwrap();
    assert_eq!(held.len(), 1);
    assert_eq!((held[0].group, held[0].adder), (invited, stranger.id()));
    assert_eq!(picky.status().await.unwrap().invitations, 1);
    assert!(!picky.groups().await.unwrap().contains(&invited));
    let is_invitation = |e: &dspring_node::NodeEvent| {
        e.group == invited && e.event == Event::Invited { by: stranger.id() }
    };
    let live = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(event) = events.next().await {
            if is_invitation(&event) {
                return Some(event.cursor);
            }
        }
        None
    })
    .await
    .unwrap();
    let logged: Vec<u64> = picky
        .events_since(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| is_invitation(e))
        .map(|e| e.cursor)
        .collect();
    assert_eq!(logged, Vec::from_iter(live), "logged once, as shown live");
    stranger.send(invited, b"welcome aboard").await.unwrap();

    // Accepted: the picky node joins and catches up from the stranger.
    picky.accept_invitation(invited).await.unwrap();
    assert!(picky.invitations().await.unwrap().is_empty());
    until("the picky node reads the stranger's group", async || {
        texts(&picky, invited)
            .await
            .contains(&"welcome aboard".to_owned())
    })
    .await;
    // The invitation's event went with it; the group's own events say it was joined.
    let after = picky.events_since(0, 1000).await.unwrap();
    assert!(!after.iter().any(is_invitation));
    assert!(
        after
            .iter()
            .any(|e| e.group == invited && e.event == Event::Joined { by: stranger.id() })
    );
    assert!(matches!(
        picky.accept_invitation(invited).await,
        Err(dspring_node::NodeError::NoInvitation)
    ));
    assert!(matches!(
        picky.decline_invitation(invited).await,
        Err(dspring_node::NodeError::NoInvitation)
    ));
}

/// The second member's turn to remove a leaver: two of the node's 10 s maintenance rounds.
const LEAVE_TURN_OF_SECOND: std::time::Duration = std::time::Duration::from_secs(20);

/// A leave request outlives a restart: the member whose turn it is keeps the request in its
/// store, and after a restart takes it up again (its turn counted from its start), even with
/// every other remaining member offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_request_is_acted_on_after_the_member_whose_turn_it_is_restarts() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let addresses: Vec<String> = (0..3).map(|_| common::fixed_address()).collect();
    let mut nodes = Vec::new();
    for (dir, address) in dirs.iter().zip(&addresses) {
        nodes.push(common::start_on(dir.path(), address).await);
    }
    introduce(&nodes.iter().collect::<Vec<_>>()).await;
    let leaver = nodes.pop().unwrap();
    let group = nodes[0]
        .create_group("g", &[nodes[1].id(), leaver.id()])
        .await
        .unwrap();
    for node in [&nodes[1], &leaver] {
        until("joined", async || {
            node.groups().await.unwrap().contains(&group)
        })
        .await;
    }
    // Turns go in member-id order: the first would remove the leaver at once; the test is
    // about the second, whose turn comes [`LEAVE_TURN_OF_SECOND`] later.
    let mut stayers: Vec<(usize, dspring_node::Node)> = nodes.into_iter().enumerate().collect();
    stayers.sort_by_key(|(_, node)| node.id());
    let (second_at, second) = stayers.pop().unwrap();
    let (_, first) = stayers.pop().unwrap();
    first.stop().await.unwrap();
    drop(first);

    leaver.leave(group).await.unwrap();
    let second_id = second.id();
    let store_of_second = dirs[second_at].path();
    let address_of_second = &addresses[second_at];
    // Stopped once the request is in its store (it arrives in milliseconds; its turn is
    // two maintenance rounds away, so it cannot have acted yet).
    let mut second = second;
    let deadline = tokio::time::Instant::now() + common::WAIT;
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        second.stop().await.unwrap();
        drop(second);
        let held = dspring_store::Store::open(store_of_second, None)
            .unwrap()
            .leave_requests()
            .unwrap();
        second = common::start_on(store_of_second, address_of_second).await;
        if held == vec![(group, leaver.id())] {
            break;
        }
        assert!(
            held.is_empty() && tokio::time::Instant::now() < deadline,
            "the request reaches the second's store: {held:?}"
        );
    }
    assert_eq!(second.id(), second_id);
    // Its turn (two maintenance rounds from its start) and the round that acts on it.
    let deadline = tokio::time::Instant::now() + LEAVE_TURN_OF_SECOND + common::WAIT;
    while second.members(group).await.unwrap().contains(&leaver.id()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second removes the leaver after its restart"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let removals: Vec<_> = second
        .events_since(0, 1000)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.event {
            Event::MemberRemoved { by, member } => Some((by, member)),
            _ => None,
        })
        .collect();
    assert_eq!(removals, vec![(second_id, leaver.id())]);
    until("the leaver learns it was removed", async || {
        leaver
            .events_since(0, 1000)
            .await
            .unwrap()
            .iter()
            .any(|e| matches!(e.event, Event::RemovedMe { .. }))
    })
    .await;
}
