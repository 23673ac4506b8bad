//! A node that nobody can dial (it listens on no address, as behind NAT) is reached through a
//! relay: it reserves a slot at the relay, its contact card carries only the relayed address,
//! and a group with it works both ways. When the relay goes away the address is withdrawn, and
//! when the relay is back the node reserves again on its own. Peers' reachability probes find
//! the relay dialable and the node behind it not.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::{fixed_address, has_all, start, until, until_within};
use dspring_node::{ContactCard, Node, NodeConfig, Reachability};

async fn start_relay(dir: &Path, listen: &str) -> Node {
    let mut config = NodeConfig::new(dir);
    config.listen = vec![listen.parse().unwrap()];
    config.mdns = false;
    config.relay_server = true;
    // A relay serves only at an address it knows others reach it at.
    config.external_addresses = vec![listen.parse().unwrap()];
    Node::start(config).await.unwrap()
}

/// The addresses on a node's contact card that go through a relay, and those that do not.
async fn card_addresses(node: &Node) -> (Vec<String>, Vec<String>) {
    node.contact()
        .await
        .unwrap()
        .addresses
        .into_iter()
        .partition(|a| a.contains("/p2p-circuit"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_nat_is_reached_through_its_relay() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let relay_address = fixed_address();
    let relay = start_relay(dirs[0].path(), &relay_address).await;
    let relay_dial = relay.dial_addresses().await.unwrap();
    assert_eq!(relay_dial.len(), 1, "{relay_dial:?}");

    let mut config = NodeConfig::new(dirs[1].path());
    config.listen = Vec::new();
    config.mdns = false;
    config.relays = relay_dial.clone();
    let hidden = Node::start(config).await.unwrap();
    let a = start(dirs[2].path()).await;

    until("the hidden node holds a reservation", async || {
        !card_addresses(&hidden).await.0.is_empty()
    })
    .await;
    let (relayed, direct) = card_addresses(&hidden).await;
    assert!(direct.is_empty(), "it listens on nothing: {direct:?}");
    // What `dspring id` prints to dial: a relayed address ends in the node's id once.
    for address in hidden.dial_addresses().await.unwrap() {
        let protocols: Vec<_> = address.iter().collect();
        assert!(
            !matches!(
                protocols.as_slice(),
                [
                    ..,
                    libp2p::multiaddr::Protocol::P2p(_),
                    libp2p::multiaddr::Protocol::P2p(_)
                ]
            ),
            "{address}"
        );
    }
    assert!(
        relayed[0].starts_with(&relay_dial[0].to_string()),
        "{relayed:?} is not through {relay_dial:?}"
    );

    // A knows only the relayed address; the hidden node does not know A at all, so the
    // welcome can only arrive through the relay.
    let card = ContactCard::from_text(&hidden.contact().await.unwrap().to_text()).unwrap();
    a.add_contact(card, "hidden").await.unwrap();
    let group = a
        .create_group("through a relay", &[hidden.id()])
        .await
        .unwrap();
    until("the welcome arrives through the relay", async || {
        hidden.groups().await.unwrap().contains(&group)
    })
    .await;
    let mut expected = BTreeSet::new();
    for (name, node) in [("a", &a), ("hidden", &hidden)] {
        let text = format!("hello from {name}");
        node.send(group, text.as_bytes()).await.unwrap();
        expected.insert(text);
    }
    for node in [&a, &hidden] {
        until("both have both messages", async || {
            has_all(node, group, &expected).await
        })
        .await;
    }

    // The relay goes away: the hidden node's relayed address is withdrawn.
    relay.stop().await.unwrap();
    drop(relay);
    until("the relayed address is withdrawn", async || {
        card_addresses(&hidden).await.0.is_empty()
    })
    .await;

    // The relay is back (same key, same port): the hidden node reserves again on its own.
    // It asks every `RELAY_RETRY` (30 s), so this may take up to that plus a reservation.
    let relay = start_relay(dirs[0].path(), &relay_address).await;
    until_within(
        "the hidden node reserves again",
        dspring_net::RELAY_RETRY + common::WAIT,
        async || !card_addresses(&hidden).await.0.is_empty(),
    )
    .await;
    drop(relay);
}

/// AutoNAT first probes 15 s after start (libp2p's `boot_delay`); the answer comes at once.
const FIRST_PROBE: std::time::Duration = std::time::Duration::from_secs(15);

/// Peers' dial-backs tell each node whether it can be dialled: the relay, which listens, can;
/// the node behind it, which listens on nothing, cannot, and `status` says so. (Both answer
/// probes on loopback addresses here; by default only global ones count.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_find_a_listening_node_reachable_and_one_behind_nat_not() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let relay_address = fixed_address();
    let mut config = NodeConfig::new(dirs[0].path());
    config.listen = vec![relay_address.parse().unwrap()];
    config.mdns = false;
    config.relay_server = true;
    config.external_addresses = vec![relay_address.parse().unwrap()];
    config.probe_private_addresses = true;
    let relay = Node::start(config).await.unwrap();
    let mut config = NodeConfig::new(dirs[1].path());
    config.listen = Vec::new();
    config.mdns = false;
    config.relays = relay.dial_addresses().await.unwrap();
    config.probe_private_addresses = true;
    let hidden = Node::start(config).await.unwrap();
    let reachability = async |node: &Node| node.network_status().await.unwrap().reachability;
    assert_eq!(reachability(&hidden).await, Reachability::Unknown);

    until_within(
        "the hidden node learns that peers cannot dial it",
        FIRST_PROBE + common::WAIT,
        async || reachability(&hidden).await == Reachability::Private,
    )
    .await;
    until_within(
        "the relay learns that peers can dial it",
        FIRST_PROBE + common::WAIT,
        async || {
            matches!(reachability(&relay).await,
                Reachability::Public(address) if address.to_string().starts_with(&relay_address))
        },
    )
    .await;
}
