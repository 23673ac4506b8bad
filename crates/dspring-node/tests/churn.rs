//! Churn on 50 real nodes in one process: 30% of them (15 members of a group of 32) stop and
//! restart from their data directories in waves while the others keep writing. Every message
//! of a continuing member reaches every member, each exactly once, restarted ones included.
//!
//! `DSPRING_MANY_NODES` (default 50) and `DSPRING_GROUP_SIZE` (default 32) change the sizes.

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
use dspring_proto::{GroupId, MemberId};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(240);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn message_set(node: &Node, group: GroupId) -> BTreeSet<String> {
    let got = texts(node, group).await;
    let set: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(set.len(), got.len(), "a message appears twice: {got:?}");
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_30_percent_of_nodes_restarting_every_message_reaches_every_member_once() {
    let n = env_or("DSPRING_MANY_NODES", 50);
    let size = env_or("DSPRING_GROUP_SIZE", 32).min(n);
    let started = Instant::now();
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Option<Node>> = Vec::with_capacity(n);
    for dir in &dirs {
        nodes.push(Some(start(dir.path()).await));
    }
    let node = |nodes: &[Option<Node>], m: usize| nodes[m].clone().unwrap();
    for m in 1..size {
        let (a, b) = (node(&nodes, 0), node(&nodes, m));
        a.add_contact(b.contact().await.unwrap(), "m")
            .await
            .unwrap();
        b.add_contact(a.contact().await.unwrap(), "creator")
            .await
            .unwrap();
    }
    let ids: Vec<MemberId> = (1..size).map(|m| node(&nodes, m).id()).collect();
    let group = node(&nodes, 0).create_group("test", &ids).await.unwrap();
    for m in 0..size {
        let member = node(&nodes, m);
        wait_for("every member joins", async || {
            member.groups().await.unwrap().contains(&group)
        })
        .await;
    }
    // 30% of the nodes restart, in three waves; all of them group members (the creator
    // stays, so that the others keep a contact to come back through).
    let restarting = (n * 3 / 10).min(size - 1);
    let churned: Vec<usize> = (1..size).rev().take(restarting).collect();
    let waves: Vec<Vec<usize>> = churned
        .chunks(restarting.div_ceil(3))
        .map(<[usize]>::to_vec)
        .collect();
    let continuing: Vec<usize> = (0..size).filter(|m| !churned.contains(m)).collect();
    let mut expected = BTreeSet::new();
    let mut restarts = 0;
    let mut last_restart = Instant::now();
    for round in 0..=waves.len() {
        if round > 0 {
            for &m in &waves[round - 1] {
                nodes[m] = Some(start(dirs[m].path()).await);
                restarts += 1;
            }
            last_restart = Instant::now();
        }
        if let Some(wave) = waves.get(round) {
            for &m in wave {
                nodes[m].take().unwrap().stop().await.unwrap();
            }
        }
        for &m in &continuing {
            let text = format!("round {round} from {m}");
            node(&nodes, m).send(group, text.as_bytes()).await.unwrap();
            expected.insert(text);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for m in 0..size {
        let member = node(&nodes, m);
        wait_for("every member has every message once", async || {
            message_set(&member, group).await == expected
        })
        .await;
    }
    println!(
        "{n} nodes, a group of {size}: {restarts} restarts in {} waves while {} members wrote \
         {} messages; every member had every message once {:.1} s after the last restart \
         ({:.1} s in all)",
        waves.len(),
        continuing.len(),
        expected.len(),
        last_restart.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    for node in nodes.into_iter().flatten() {
        node.stop().await.unwrap();
    }
}
