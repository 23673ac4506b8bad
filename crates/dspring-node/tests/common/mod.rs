//! Helpers shared by the node tests: real nodes on loopback with their own data directories.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    dead_code
)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use dspring_node::{ContactCard, Node, NodeConfig};
use dspring_proto::{Event, GroupId};

pub const WAIT: Duration = Duration::from_secs(30);

/// The nodes' logs on stderr when `RUST_LOG` is set (to look into a failing run).
pub fn logs() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

pub async fn start(dir: &Path) -> Node {
    start_on(dir, "/ip4/127.0.0.1/tcp/0").await
}

pub async fn start_on(dir: &Path, listen: &str) -> Node {
    let mut config = NodeConfig::new(dir);
    config.listen = vec![listen.parse().unwrap()];
    config.mdns = false;
    Node::start(config).await.unwrap()
}

/// A loopback address with a port free right now, for a node that must come back on it.
pub fn fixed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    format!("/ip4/127.0.0.1/tcp/{port}")
}

/// Every node learns every other node's card (as text, the way people pass them on).
pub async fn introduce(nodes: &[&Node]) {
    for (i, node) in nodes.iter().enumerate() {
        for (j, other) in nodes.iter().enumerate() {
            if i != j {
                let card = other.contact().await.unwrap();
                let card = ContactCard::from_text(&card.to_text()).unwrap();
                node.add_contact(card, &format!("node {j}")).await.unwrap();
            }
        }
    }
}

/// The texts of a group's messages at a node (received and sent), in order.
pub async fn texts(node: &Node, group: GroupId) -> Vec<String> {
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

pub async fn until(what: &str, check: impl AsyncFnMut() -> bool) {
    until_within(what, WAIT, check).await;
}

/// [`until`] with a limit of its own, for what waits on a timer longer than [`WAIT`].
pub async fn until_within(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The node holds exactly `expected` (as a set), each message once.
pub async fn has_all(node: &Node, group: GroupId, expected: &BTreeSet<String>) -> bool {
    let got = texts(node, group).await;
    let set: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(set.len(), got.len(), "a message appears twice: {got:?}");
    &set == expected
}
