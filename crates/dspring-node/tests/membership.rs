//! Membership over the network: a member added while offline takes its welcome and catches up
//! when it returns; a removed member receives nothing after its removal.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{fixed_address, has_all, introduce, start, start_on, texts, until};
use dspring_proto::Event;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_while_offline_joins_and_catches_up_when_back() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path()).await;
    let b = start(dirs[1].path()).await;
    let d_address = fixed_address();
    let d = start_on(dirs[2].path(), &d_address).await;
    introduce(&[&a, &b, &d]).await;
    let d_id = d.id();
    d.stop().await.unwrap();
    drop(d);

    let group = a.create_group("test", &[b.id()]).await.unwrap();
    until("B joins", async || {
        b.groups().await.unwrap().contains(&group)
    })
    .await;
    a.add(group, d_id).await.unwrap();
    until("B sees D added", async || {
        b.members(group).await.unwrap().contains(&d_id)
    })
    .await;
    let mut expected = BTreeSet::new();
    for i in 0..3 {
        for (name, node) in [("a", &a), ("b", &b)] {
            let text = format!("{name} to the group with D {i}");
            node.send(group, text.as_bytes()).await.unwrap();
            expected.insert(text);
        }
    }

    // D comes back at its address: the welcome waiting at A reaches it, it joins, syncs, and
    // reads everything sent since its add.
    let d = start_on(dirs[2].path(), &d_address).await;
    until("D joins from the waiting welcome", async || {
        d.groups().await.unwrap().contains(&group)
    })
    .await;
    until("D catches up", async || has_all(&d, group, &expected).await).await;
    d.send(group, b"D is here").await.unwrap();
    expected.insert("D is here".into());
    for node in [&a, &b] {
        until("A and B read D", async || {
            has_all(node, group, &expected).await
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_receives_nothing_after_its_removal() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path()).await;
    let b = start(dirs[1].path()).await;
    let c = start(dirs[2].path()).await;
    introduce(&[&a, &b, &c]).await;
    let group = a.create_group("test", &[b.id(), c.id()]).await.unwrap();
    for node in [&b, &c] {
        until("joined", async || {
            node.groups().await.unwrap().contains(&group)
        })
        .await;
    }
    c.send(group, b"before").await.unwrap();
    for node in [&a, &b] {
        until("C's message arrives", async || {
            texts(node, group).await.contains(&"before".to_string())
        })
        .await;
    }

    a.remove(group, c.id()).await.unwrap();
    until("C learns it was removed", async || {
        c.events_since(0, 1000)
            .await
            .unwrap()
            .iter()
            .any(|e| matches!(e.event, Event::RemovedMe { .. }))
    })
    .await;
    until("B sees C removed", async || {
        !b.members(group).await.unwrap().contains(&c.id())
    })
    .await;
    let after: BTreeSet<String> = ["after 1", "after 2"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.send(group, b"after 1").await.unwrap();
    b.send(group, b"after 2").await.unwrap();
    for node in [&a, &b] {
        until("A and B read each other", async || {
            let got: BTreeSet<String> = texts(node, group).await.into_iter().collect();
            got.is_superset(&after)
        })
        .await;
    }
    // Time for anything that could still reach C to do so.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_c = texts(&c, group).await;
    assert!(
        at_c.iter().all(|t| !after.contains(t)),
        "C read after removal: {at_c:?}"
    );
    assert!(c.members(group).await.unwrap().is_empty());
}
