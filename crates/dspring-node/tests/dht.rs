//! Adding a member known only by its id: its signed prekey record, found in the DHT, makes it
//! addable while it is offline; the welcome waits and reaches it when it returns.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;

use common::{fixed_address, has_all, start, start_on, until};
use dspring_node::ContactCard;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_known_only_by_id_is_added_from_its_dht_record_while_offline() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path()).await;
    let b = start(dirs[1].path()).await;
    let d_address = fixed_address();
    let d = start_on(dirs[2].path(), &d_address).await;
    // B is the DHT's only other node here: A and D know B's card, and B knows A's. A and D
    // never exchange cards.
    let b_card = ContactCard::from_text(&b.contact().await.unwrap().to_text()).unwrap();
    a.add_contact(b_card.clone(), "B").await.unwrap();
    d.add_contact(b_card, "B").await.unwrap();
    b.add_contact(a.contact().await.unwrap(), "A")
        .await
        .unwrap();
    let d_id = d.id();
    // D publishes its record at its first round; A finds it through B.
    until("D's record is in the DHT", async || {
        a.lookup(d_id).await.is_ok()
    })
    .await;
    let found = a.lookup(d_id).await.unwrap();
    assert_eq!(found.member, d_id);
    assert!(
        found.bundle.one_time.is_none(),
        "a public record has no one-time prekey"
    );
    assert!(found.addresses.contains(&d_address));
    d.stop().await.unwrap();
    drop(d);

    let group = a.create_group("test", &[b.id()]).await.unwrap();
    until("B joins", async || {
        b.groups().await.unwrap().contains(&group)
    })
    .await;
    // D is not A's contact: the add goes through the DHT record.
    a.add(group, d_id).await.unwrap();
    until("B sees D added", async || {
        b.members(group).await.unwrap().contains(&d_id)
    })
    .await;
    let expected: BTreeSet<String> = ["for D, sent while it was away".to_string()].into();
    a.send(group, b"for D, sent while it was away")
        .await
        .unwrap();

    let d = start_on(dirs[2].path(), &d_address).await;
    until("D joins from the waiting welcome", async || {
        d.groups().await.unwrap().contains(&group)
    })
    .await;
    until("D reads what was sent while it was away", async || {
        has_all(&d, group, &expected).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_without_a_record_is_not_found() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path()).await;
    let b = start(dirs[1].path()).await;
    a.add_contact(b.contact().await.unwrap(), "B")
        .await
        .unwrap();
    let nobody = dspring_proto::MemberId([7; 32]);
    assert!(matches!(
        a.lookup(nobody).await,
        Err(dspring_node::NodeError::NotFound(m)) if m == nobody
    ));
    let group = a.create_group("test", &[b.id()]).await.unwrap();
    assert!(a.add(group, nobody).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_share_no_card_find_each_other_through_a_bootstrap_node() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let hub = start(dirs[0].path()).await;
    let hub_addresses = hub.dial_addresses().await.unwrap();
    assert!(!hub_addresses.is_empty());
    let with_bootstrap = |dir: &std::path::Path| {
        let mut config = dspring_node::NodeConfig::new(dir);
        config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
        config.mdns = false;
        config.bootstrap = hub_addresses.clone();
        config
    };
    // No cards exchanged, no mDNS: the configured bootstrap node is all they know.
    let a = dspring_node::Node::start(with_bootstrap(dirs[1].path()))
        .await
        .unwrap();
    let b = dspring_node::Node::start(with_bootstrap(dirs[2].path()))
        .await
        .unwrap();
    for node in [&a, &b] {
        until("the first bootstrap finishes", async || {
            let network = node.network_status().await.unwrap();
            !network.bootstrapping && network.dht_peers > 0
        })
        .await;
    }
    let b_id = b.id();
    until("A finds B's record through the DHT", async || {
        a.lookup(b_id).await.is_ok()
    })
    .await;

    // An address that does not name its peer is refused at start.
    let bad_dir = tempfile::tempdir().unwrap();
    let mut bad = dspring_node::NodeConfig::new(bad_dir.path());
    bad.mdns = false;
    bad.bootstrap = vec!["/ip4/127.0.0.1/tcp/1".parse().unwrap()];
    assert!(matches!(
        dspring_node::Node::start(bad).await,
        Err(dspring_node::NodeError::BootstrapAddress(_))
    ));
}
