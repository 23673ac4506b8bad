//! A peer that breaks a protocol's bound is dropped: a raw libp2p peer answers the node's sync
//! request with a page over the page bound, and the node closes the connection.
//!
//! (Requests over their bound are refused by the codec too, but request-response 0.30 does
//! not report a request that failed to read, so the node cannot tell who sent it.)

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::time::Duration;

use dspring_net::wire::{
    Codec, Framed, MAX_SYNC_PAGE, MAX_SYNC_REQUEST, MAX_SYNC_RESPONSE, SYNC_PROTOCOL, SyncRequest,
    SyncResponse,
};
use dspring_net::{Command, Config, identity, spawn};
use dspring_proto::{Device, GroupId};
use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{SwarmBuilder, noise, tcp, yamux};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// The sync protocol with a responder that does not hold to the page bound.
#[derive(Clone, Copy, Debug, Default)]
struct Unbounded;

impl Framed for Unbounded {
    type Request = SyncRequest;
    type Response = SyncResponse;
    const MAX_REQUEST: usize = MAX_SYNC_REQUEST;
    const MAX_RESPONSE: usize = MAX_SYNC_RESPONSE;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_answering_over_the_page_bound_is_disconnected() {
    let device = Device::generate(0, &mut ChaCha20Rng::seed_from_u64(1));
    let config = Config {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        mdns: false,
        ..Config::default()
    };
    let (node, mut events) = spawn(identity::keypair(&device.identity).unwrap(), config).unwrap();
    tokio::spawn(async move { while events.recv().await.is_some() {} });

    let mut attacker = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::<Codec<Unbounded>>::with_codec(
                Codec::default(),
                [(SYNC_PROTOCOL, ProtocolSupport::Inbound)],
                request_response::Config::default(),
            )
        })
        .unwrap()
        // The attacker would keep the connection: only the node can close it here.
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build();
    attacker
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let address = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = attacker.select_next_some().await {
            break address;
        }
    };
    let attacker_id = *attacker.local_peer_id();
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut closed_tx = Some(closed_tx);
        loop {
            match attacker.select_next_some().await {
                SwarmEvent::Behaviour(request_response::Event::Message {
                    message: request_response::Message::Request { channel, .. },
                    ..
                }) => {
                    let page = SyncResponse {
                        envelopes: vec![vec![1]; MAX_SYNC_PAGE + 1],
                        next: None,
                        end: 0,
                    };
                    let _ = attacker.behaviour_mut().send_response(channel, page);
                }
                SwarmEvent::ConnectionClosed { .. } => {
                    if let Some(tx) = closed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                _ => {}
            }
        }
    });

    node.send(Command::AddAddress(attacker_id, address))
        .await
        .unwrap();
    let asked = node
        .sync(
            attacker_id,
            SyncRequest {
                group: GroupId([1; 32]),
                marks: Vec::new(),
                token: 0,
            },
        )
        .await;
    assert!(asked.is_err(), "an over-bound page was accepted");
    tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .expect("the node never dropped the peer")
        .unwrap();
}
