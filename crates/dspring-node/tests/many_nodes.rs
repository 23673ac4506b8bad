//! Many nodes in one process: 50 real nodes (libp2p on loopback, a SQLite file each) in two
//! overlapping groups of 32; every member writes in each of its groups, and every member ends
//! with every message of its groups, each exactly once.
//!
//! `DSPRING_MANY_NODES` (default 50) and `DSPRING_GROUP_SIZE` (default 32) change the sizes.
//! Partitions and churn: `tests/partition.rs` and `tests/churn.rs`.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{start, texts};
use dspring_node::Node;
use dspring_proto::GroupId;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn wait_for(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_two_groups_of_32_every_message_once() {
    let n = env_or("DSPRING_MANY_NODES", 50);
    let size = env_or("DSPRING_GROUP_SIZE", 32).min(n);
    let limit = Duration::from_secs(240);
    let started = Instant::now();
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    for dir in &dirs {
        nodes.push(start(dir.path()).await);
    }
    // Two groups: the first `size` nodes, and the last `size` (they overlap in the middle).
    let memberships: Vec<Vec<usize>> = vec![(0..size).collect(), (n - size..n).collect()];
    let mut groups: Vec<GroupId> = Vec::new();
    for members in &memberships {
        let creator = &nodes[members[0]];
        for &m in &members[1..] {
            creator
                .add_contact(nodes[m].contact().await.unwrap(), "member")
                .await
                .unwrap();
            nodes[m]
                .add_contact(creator.contact().await.unwrap(), "creator")
                .await
                .unwrap();
        }
        let ids: Vec<_> = members[1..].iter().map(|&m| nodes[m].id()).collect();
        groups.push(creator.create_group("test", &ids).await.unwrap());
    }
    for (group, members) in groups.iter().zip(&memberships) {
        for &m in members {
            wait_for("every member joins", limit, async || {
                nodes[m].groups().await.unwrap().contains(group)
            })
            .await;
        }
    }
    let joined = started.elapsed();

    let mut expected: Vec<BTreeSet<String>> = vec![BTreeSet::new(); groups.len()];
    for (g, (group, members)) in groups.iter().zip(&memberships).enumerate() {
        for &m in members {
            let text = format!("group {g} member {m}");
            nodes[m].send(*group, text.as_bytes()).await.unwrap();
            expected[g].insert(text);
        }
    }
    for (g, (group, members)) in groups.iter().zip(&memberships).enumerate() {
        for &m in members {
            wait_for("every member has every message", limit, async || {
                let got = texts(&nodes[m], *group).await;
                let set: BTreeSet<String> = got.iter().cloned().collect();
                assert_eq!(set.len(), got.len(), "node {m} has a message twice");
                set == expected[g]
            })
            .await;
        }
    }
    println!(
        "{n} nodes, {} groups of {size}: all joined in {:.1} s, every message everywhere once \
         after {:.1} s",
        groups.len(),
        joined.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for node in &nodes {
        node.stop().await.unwrap();
    }
}
