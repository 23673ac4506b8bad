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

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use dspring_node::{Node, NodeConfig};
use dspring_proto::{Event, GroupId};

const WAIT: Duration = Duration::from_secs(30);

async fn start(dir: &Path) -> Node {
    let mut config = NodeConfig::new(dir);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.mdns = false;
    Node::start(config).await.unwrap()
}

/// The texts of a group's messages at a node (received and sent), in order.
async fn texts(node: &Node, group: GroupId) -> Vec<String> {
    node.messages(group, 0, 1000)
        .await
        .unwrap()
        .into_iter()
        .map(|m| match m.event {
            Event::Message { plaintext, .. } | Event::Sent { plaintext, .. } => {
                String::from_utf8(plaintext).unwrap()
            }
            other => panic!("not a message: {other:?}"),
        })
        .collect()
}

async fn until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn has_all(node: &Node, group: GroupId, expected: &BTreeSet<String>) -> bool {
    let got = texts(node, group).await;
    let set: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(set.len(), got.len(), "a message appears twice: {got:?}");
    &set == expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_chat_and_a_returning_member_catches_up() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path()).await;
    let b = start(dirs[1].path()).await;
    let c = start(dirs[2].path()).await;
    let nodes = [&a, &b, &c];
    for (i, node) in nodes.iter().enumerate() {
        for (j, other) in nodes.iter().enumerate() {
            if i != j {
                let card = other.contact().await.unwrap();
                // Cards travel as text.
                let card = dspring_node::ContactCard::from_text(&card.to_text()).unwrap();
                node.add_contact(card, &format!("node {j}")).await.unwrap();
            }
        }
    }

    let group = a.create_group(&[b.id(), c.id()]).await.unwrap();
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

    // And the conversation goes on both ways.
    c.send(group, b"back again").await.unwrap();
    expected.insert("back again".into());
    for node in [&a, &b, &c] {
        until("everyone has C's new message", async || {
            has_all(node, group, &expected).await
        })
        .await;
    }
}
