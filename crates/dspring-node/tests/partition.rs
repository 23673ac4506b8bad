//! A partition and its healing, on 50 real nodes in one process (libp2p on loopback, a SQLite
//! file each). A group of 32 splits into halves that cannot reach each other (every pair
//! across is blocked); both halves keep chatting, one adds a newcomer, the other removes a
//! member; then the partition heals. Every member ends with the same membership and every
//! message it may read, each exactly once; the removed member reads nothing after its removal.
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

const LIMIT: Duration = Duration::from_secs(240);

async fn wait_for(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node's messages of the group, checked to hold none twice.
async fn message_set(node: &Node, group: GroupId) -> BTreeSet<String> {
    let got = texts(node, group).await;
    let set: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(set.len(), got.len(), "a message appears twice: {got:?}");
    set
}

async fn send_all(
    nodes: &[Node],
    who: &[usize],
    group: GroupId,
    label: &str,
    sent: &mut BTreeSet<String>,
) {
    for &m in who {
        let text = format!("{label} from {m}");
        nodes[m].send(group, text.as_bytes()).await.unwrap();
        sent.insert(text);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_group_keeps_going_on_both_sides_and_converges_when_healed() {
    let n = env_or("DSPRING_MANY_NODES", 50);
    let size = env_or("DSPRING_GROUP_SIZE", 32).min(n - 1);
    let started = Instant::now();
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Node> = Vec::with_capacity(n);
    for dir in &dirs {
        nodes.push(start(dir.path()).await);
    }
    let half = size / 2;
    let first: Vec<usize> = (0..half).collect();
    let second: Vec<usize> = (half..size).collect();
    let newcomer = size; // joins the first half during the partition
    let removed = half + 1; // removed by the second half during the partition
    let (adder, remover) = (1, half);

    // Contacts: a star around the creator (node 0), plus the adder and the newcomer.
    for m in (1..size).chain([newcomer]) {
        let (a, b) = (&nodes[0], &nodes[m]);
        a.add_contact(b.contact().await.unwrap(), "m")
            .await
            .unwrap();
        b.add_contact(a.contact().await.unwrap(), "creator")
            .await
            .unwrap();
    }
    nodes[adder]
        .add_contact(nodes[newcomer].contact().await.unwrap(), "newcomer")
        .await
        .unwrap();
    let ids: Vec<MemberId> = (1..size).map(|m| nodes[m].id()).collect();
    let group = nodes[0].create_group("test", &ids).await.unwrap();
    for node in &nodes[..size] {
        wait_for("every member joins", async || {
            node.groups().await.unwrap().contains(&group)
        })
        .await;
    }
    let everyone: Vec<usize> = (0..size).collect();
    let mut before = BTreeSet::new();
    send_all(&nodes, &everyone, group, "before", &mut before).await;
    for node in &nodes[..size] {
        wait_for("every member has the first round", async || {
            message_set(node, group).await == before
        })
        .await;
    }
    let joined = started.elapsed();

    // The partition: every pair across the halves is cut, both ways (the newcomer is on the
    // first side).
    let side_one: Vec<usize> = first.iter().copied().chain([newcomer]).collect();
    for &a in &side_one {
        for &b in &second {
            nodes[a].block(nodes[b].id()).await.unwrap();
            nodes[b].block(nodes[a].id()).await.unwrap();
        }
    }
    let split = Instant::now();
    // Side one adds the newcomer; side two removes a member. Neither hears of the other.
    nodes[adder].add(group, nodes[newcomer].id()).await.unwrap();
    nodes[remover]
        .remove(group, nodes[removed].id())
        .await
        .unwrap();
    wait_for("the newcomer joins on its side", async || {
        nodes[newcomer].groups().await.unwrap().contains(&group)
    })
    .await;
    for &m in &first {
        wait_for("side one sees the newcomer", async || {
            nodes[m]
                .members(group)
                .await
                .unwrap()
                .contains(&nodes[newcomer].id())
        })
        .await;
    }
    let staying_second: Vec<usize> = second.iter().copied().filter(|&m| m != removed).collect();
    for &m in &staying_second {
        wait_for("side two sees the removal", async || {
            !nodes[m]
                .members(group)
                .await
                .unwrap()
                .contains(&nodes[removed].id())
        })
        .await;
    }
    let mut during_one = BTreeSet::new();
    let mut during_two = BTreeSet::new();
    send_all(&nodes, &side_one, group, "side one", &mut during_one).await;
    send_all(&nodes, &staying_second, group, "side two", &mut during_two).await;
    // Each side hears its own side.
    for &m in &first {
        wait_for("side one chats", async || {
            message_set(&nodes[m], group).await.is_superset(&during_one)
        })
        .await;
    }
    for &m in &staying_second {
        wait_for("side two chats", async || {
            message_set(&nodes[m], group).await.is_superset(&during_two)
        })
        .await;
    }
    for &m in &first {
        let got = message_set(&nodes[m], group).await;
        assert!(got.is_disjoint(&during_two), "the partition leaked");
    }
    let partitioned = split.elapsed();

    // Heal.
    for &a in &side_one {
        for &b in &second {
            nodes[a].unblock(nodes[b].id()).await.unwrap();
            nodes[b].unblock(nodes[a].id()).await.unwrap();
        }
    }
    let healed = Instant::now();
    let final_members: Vec<usize> = (0..size)
        .filter(|&m| m != removed)
        .chain([newcomer])
        .collect();
    let expected_members: BTreeSet<MemberId> =
        final_members.iter().map(|&m| nodes[m].id()).collect();
    for &m in &final_members {
        wait_for("every member agrees on the membership", async || {
            nodes[m]
                .members(group)
                .await
                .unwrap()
                .into_iter()
                .collect::<BTreeSet<_>>()
                == expected_members
        })
        .await;
    }
    let mut after = BTreeSet::new();
    send_all(&nodes, &final_members, group, "after", &mut after).await;

    // Members throughout: everything. The newcomer: its side's messages since it joined, and
    // everything after the healing (side two wrote without knowing of it).
    let mut all: BTreeSet<String> = before.clone();
    all.extend(during_one.iter().cloned());
    all.extend(during_two.iter().cloned());
    all.extend(after.iter().cloned());
    for &m in final_members.iter().filter(|&&m| m != newcomer) {
        wait_for("every member has every message once", async || {
            message_set(&nodes[m], group).await == all
        })
        .await;
    }
    let mut newcomer_reads: BTreeSet<String> = during_one.clone();
    newcomer_reads.extend(after.iter().cloned());
    wait_for("the newcomer has what it may read, once", async || {
        message_set(&nodes[newcomer], group).await == newcomer_reads
    })
    .await;
    let converged = healed.elapsed();
    // The removed member read nothing written after its removal.
    let removed_got = message_set(&nodes[removed], group).await;
    assert!(removed_got.is_disjoint(&during_two));
    assert!(removed_got.is_disjoint(&after));
    println!(
        "{n} nodes, a group of {size}: joined and first round in {:.1} s; partitioned for \
         {:.1} s (each side chatted and changed membership); after healing, every member \
         had every message once in {:.1} s",
        joined.as_secs_f64(),
        partitioned.as_secs_f64(),
        converged.as_secs_f64()
    );
    for node in &nodes {
        node.stop().await.unwrap();
    }
}
