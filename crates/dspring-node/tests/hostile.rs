//! Hostile input: a peer that is not a member joins a group's topic (it knows the group id)
//! and sends garbage, non-member envelopes and oversized direct requests. The members refuse
//! all of it, buffer none of it, and go on talking.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;

use common::{has_all, introduce, start, until};
use dspring_net::wire::DirectRequest;
use dspring_net::{Command, Config, identity, spawn};
use dspring_proto::{Device, Group};
use dspring_store::Store;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_from_a_non_member_is_refused_and_never_buffered() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path()).await;
    let b = start(dirs[1].path()).await;
    introduce(&[&a, &b]).await;
    let group = a.create_group("test", &[b.id()]).await.unwrap();
    until("B joins", async || {
        b.groups().await.unwrap().contains(&group)
    })
    .await;

    // The attacker: a real libp2p node with its own identity, on the group's topic.
    let mut rng = ChaCha20Rng::seed_from_u64(66);
    let mallory = Device::generate(1, &mut rng);
    let (net, _events) = spawn(
        identity::keypair(&mallory.identity).unwrap(),
        Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            mdns: false,
            ..Config::default()
        },
    )
    .unwrap();
    let a_card = a.contact().await.unwrap();
    for address in &a_card.addresses {
        net.send(Command::Dial(address.parse().unwrap()))
            .await
            .unwrap();
    }
    net.send(Command::Subscribe(group)).await.unwrap();
    // Well-formed envelopes, signed by a key that is not in the group.
    let other = Device::generate(1, &mut rng);
    let mut fake = Group::create(&mallory, group, &[other.bundle(None)], &mut rng)
        .unwrap()
        .group;
    let mut junk = vec![b"garbage".to_vec(), vec![0; 10_000]];
    for i in 0..50 {
        let staged = fake.send(format!("fake {i}").as_bytes()).unwrap();
        junk.push(staged.outbox[0].bytes.clone());
        fake = staged.group;
    }
    let a_peer = identity::peer_id(&a.id()).unwrap();
    let deadline = tokio::time::Instant::now() + common::WAIT;
    for envelope in &junk {
        while net.publish(group, envelope.clone()).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "could not publish");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    // Direct deliveries: a non-member envelope, and one over the protocol bound.
    let response = net
        .send_direct(
            a_peer,
            DirectRequest {
                group,
                envelope: junk[2].clone(),
            },
        )
        .await
        .unwrap();
    assert!(!response.accepted);
    let oversized = DirectRequest {
        group,
        envelope: vec![0; dspring_proto::envelope::MAX_ENVELOPE_LEN + 1],
    };
    assert!(net.send_direct(a_peer, oversized).await.is_err());

    // The members go on as if nothing happened.
    let expected: BTreeSet<String> = ["real 1", "real 2"].iter().map(|s| s.to_string()).collect();
    a.send(group, b"real 1").await.unwrap();
    b.send(group, b"real 2").await.unwrap();
    for node in [&a, &b] {
        until("the members read each other", async || {
            has_all(node, group, &expected).await
        })
        .await;
    }
    a.stop().await.unwrap();
    b.stop().await.unwrap();
    drop((a, b));
    for dir in &dirs {
        let store = Store::open(dir.path(), None).unwrap();
        let state = store.group(&group).unwrap().unwrap();
        assert_eq!(state.buffered(), 0, "junk was buffered");
        let log = store.log_page(&group, 0, 1000).unwrap();
        assert!(
            log.iter().all(|e| !junk.contains(&e.bytes)),
            "junk reached the group log"
        );
    }
}
