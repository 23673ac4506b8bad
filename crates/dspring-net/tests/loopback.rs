//! Real libp2p nodes on loopback (TCP and QUIC): gossip on a group topic with validation,
//! direct delivery, and sync, between peers whose ids are their device identity keys.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use dspring_net::wire::{DirectRequest, DirectResponse, Mark, SyncRequest, SyncResponse};
use dspring_net::{Command, Config, Event, Network, NetworkError, Verdict, identity, spawn};
use dspring_proto::{Device, GroupId};
use libp2p::Multiaddr;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::mpsc::Receiver;

const GROUP: GroupId = GroupId([6; 32]);
const WAIT: Duration = Duration::from_secs(20);

struct Node {
    device: Device,
    net: Network,
    events: Receiver<Event>,
    address: Multiaddr,
}

async fn start(seed: u64, listen: &str) -> Node {
    let device = Device::generate(0, &mut ChaCha20Rng::seed_from_u64(seed));
    let key = identity::keypair(&device.identity).unwrap();
    let config = Config {
        listen: vec![listen.parse().unwrap()],
        mdns: false,
        ..Config::default()
    };
    let (net, mut events) = spawn(key, config).unwrap();
    let address = match next(&mut events, |e| matches!(e, Event::Listening(_))).await {
        Event::Listening(address) => address,
        _ => unreachable!(),
    };
    Node {
        device,
        net,
        events,
        address,
    }
}

/// The next event matching `pred`, skipping others; fails after [`WAIT`].
async fn next(events: &mut Receiver<Event>, pred: impl Fn(&Event) -> bool) -> Event {
    tokio::time::timeout(WAIT, async {
        loop {
            let event = events.recv().await.expect("network stopped");
            if pred(&event) {
                return event;
            }
        }
    })
    .await
    .expect("timed out waiting for an event")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_direct_and_sync_between_real_nodes() {
    let mut a = start(1, "/ip4/127.0.0.1/tcp/0").await;
    let mut b = start(2, "/ip4/127.0.0.1/tcp/0").await;
    let mut c = start(3, "/ip4/127.0.0.1/udp/0/quic-v1").await;
    // The peer id is the device identity.
    assert_eq!(
        a.net.local_peer_id,
        identity::peer_id(&a.device.id()).unwrap()
    );

    for node in [&a, &b, &c] {
        node.net.send(Command::Subscribe(GROUP)).await.unwrap();
    }
    // B over TCP, A to C over QUIC.
    b.net.send(Command::Dial(a.address.clone())).await.unwrap();
    a.net.send(Command::Dial(c.address.clone())).await.unwrap();
    let mut subscribed = std::collections::HashSet::new();
    while subscribed.len() < 2 {
        if let Event::Subscribed { peer, group } =
            next(&mut a.events, |e| matches!(e, Event::Subscribed { .. })).await
        {
            assert_eq!(group, GROUP);
            subscribed.insert(peer);
        }
    }
    assert!(subscribed.contains(&b.net.local_peer_id) && subscribed.contains(&c.net.local_peer_id));

    // Gossip: A publishes once the mesh has formed (a heartbeat); B validates and accepts,
    // which forwards it; C receives it.
    let envelope = b"an envelope".to_vec();
    let deadline = tokio::time::Instant::now() + WAIT;
    while a.net.publish(GROUP, envelope.clone()).await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "mesh never formed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for node in [&mut b, &mut c] {
        let Event::Gossip {
            group,
            message_id,
            source,
            envelope: got,
        } = next(&mut node.events, |e| matches!(e, Event::Gossip { .. })).await
        else {
            unreachable!()
        };
        assert_eq!((group, &got), (GROUP, &envelope));
        assert_eq!(source, a.net.local_peer_id);
        node.net
            .send(Command::Validate {
                message_id,
                source,
                verdict: Verdict::Accept,
            })
            .await
            .unwrap();
    }

    // The traffic counters saw the envelope go out of A and into B and C.
    let sent = a.net.network_status().await.unwrap().sent;
    assert!(sent >= 2 * envelope.len() as u64, "A sent {sent} bytes");
    for node in [&b, &c] {
        let received = node.net.network_status().await.unwrap().received;
        assert!(
            received >= envelope.len() as u64,
            "received {received} bytes"
        );
    }

    // Direct delivery, answered only once the receiver says so.
    let request = DirectRequest {
        group: GROUP,
        envelope: b"a welcome".to_vec(),
    };
    let sender = a.net.clone();
    let to = b.net.local_peer_id;
    let sent = tokio::spawn(async move { sender.send_direct(to, request).await });
    let Event::Direct { id, peer, request } =
        next(&mut b.events, |e| matches!(e, Event::Direct { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(peer, a.net.local_peer_id);
    assert_eq!(request.envelope, b"a welcome");
    b.net
        .send(Command::AnswerDirect {
            id,
            response: DirectResponse { accepted: true },
        })
        .await
        .unwrap();
    assert_eq!(
        sent.await.unwrap().unwrap(),
        DirectResponse { accepted: true }
    );

    // Sync over QUIC: C asks A for what it lacks; A answers with a page.
    let request = SyncRequest {
        group: GROUP,
        marks: vec![Mark {
            sender: a.device.id().short(),
            control_seq: 1,
            application: None,
        }],
        token: 0,
    };
    let asker = c.net.clone();
    let to = a.net.local_peer_id;
    let asked = tokio::spawn(async move { asker.sync(to, request).await });
    let Event::SyncRequested { id, peer, request } =
        next(&mut a.events, |e| matches!(e, Event::SyncRequested { .. })).await
    else {
        unreachable!()
    };
    assert_eq!(peer, c.net.local_peer_id);
    assert_eq!(request.marks.len(), 1);
    let page = SyncResponse {
        envelopes: vec![b"one".to_vec(), b"two".to_vec()],
        next: None,
        end: 2,
    };
    a.net
        .send(Command::AnswerSync {
            id,
            response: page.clone(),
        })
        .await
        .unwrap();
    assert_eq!(asked.await.unwrap().unwrap(), page);
}

/// Envelopes the node rejects cost their sender its gossipsub score on the group's topic:
/// three put it below the graylist threshold, so what it sends next is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_gossip_costs_the_sender_its_score() {
    let mut a = start(11, "/ip4/127.0.0.1/tcp/0").await;
    let b = start(12, "/ip4/127.0.0.1/tcp/0").await;
    for node in [&a, &b] {
        node.net.send(Command::Subscribe(GROUP)).await.unwrap();
    }
    b.net.send(Command::Dial(a.address.clone())).await.unwrap();
    next(&mut a.events, |e| matches!(e, Event::Subscribed { .. })).await;
    let b_id = b.net.local_peer_id;
    let before = a.net.peer_score(b_id).await.unwrap().unwrap_or(0.0);
    assert!(before >= 0.0, "a new peer starts at {before}");
    for i in 0..3u8 {
        let junk = vec![i; 100];
        let deadline = tokio::time::Instant::now() + WAIT;
        while b.net.publish(GROUP, junk.clone()).await.is_err() {
            assert!(tokio::time::Instant::now() < deadline, "mesh never formed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let Event::Gossip {
            message_id, source, ..
        } = next(&mut a.events, |e| matches!(e, Event::Gossip { .. })).await
        else {
            unreachable!()
        };
        a.net
            .send(Command::Validate {
                message_id,
                source,
                verdict: Verdict::Reject,
            })
            .await
            .unwrap();
    }
    let after = a.net.peer_score(b_id).await.unwrap().unwrap();
    assert!(after < -80.0, "three rejected envelopes leave B at {after}");
}

#[tokio::test]
async fn relay_addresses_that_cannot_work_are_refused_at_start() {
    let device = Device::generate(0, &mut ChaCha20Rng::seed_from_u64(40));
    let other = Device::generate(0, &mut ChaCha20Rng::seed_from_u64(41));
    let own_peer = identity::keypair(&device.identity)
        .unwrap()
        .public()
        .to_peer_id();
    let other_peer = identity::keypair(&other.identity)
        .unwrap()
        .public()
        .to_peer_id();
    let with_relays = |relays: Vec<String>| Config {
        mdns: false,
        relays: relays.iter().map(|r| r.parse().unwrap()).collect(),
        ..Config::default()
    };
    let spawn_with = |relays: Vec<String>| {
        spawn(
            identity::keypair(&device.identity).unwrap(),
            with_relays(relays),
        )
    };
    let good = format!("/ip4/127.0.0.1/tcp/1/p2p/{other_peer}");
    assert!(spawn_with(vec![good.clone()]).is_ok());
    for bad in [
        "/ip4/127.0.0.1/tcp/1".to_owned(),
        format!("/ip4/127.0.0.1/tcp/1/p2p/{own_peer}"),
    ] {
        match spawn_with(vec![bad.clone()]) {
            Err(NetworkError::RelayAddress(address)) => assert_eq!(address.to_string(), bad),
            other => panic!("{bad} was not refused: {:?}", other.map(|_| ())),
        }
    }
    match spawn_with(vec![good; dspring_net::MAX_RELAYS + 1]) {
        Err(NetworkError::TooManyRelays(n)) => assert_eq!(n, dspring_net::MAX_RELAYS + 1),
        other => panic!("too many relays were not refused: {:?}", other.map(|_| ())),
    }
}
