//! The mailbox role: a member added while offline catches up from its mailbox after every
//! other member has gone offline. The mailbox holds no group keys.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{has_all, introduce, start, texts, until, until_within};
use dspring_node::{ContactCard, MailboxConfig, Node, NodeConfig};

async fn start_mailbox(dir: &std::path::Path) -> Node {
    let mut config = NodeConfig::new(dir);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    config.mdns = false;
    config.mailbox = Some(MailboxConfig::default());
    Node::start(config).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_added_while_away_catches_up_from_its_mailbox_after_the_others_left() {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mailbox = start_mailbox(dirs[4].path()).await;
    let a = start(dirs[0].path()).await;
    let b = start(dirs[1].path()).await;
    let c = start(dirs[2].path()).await;
    let d = start(dirs[3].path()).await;
    // D's mailbox serves D (D is its contact); D's card names it.
    mailbox
        .add_contact(d.contact().await.unwrap(), "D")
        .await
        .unwrap();
    d.use_mailbox(mailbox.contact().await.unwrap())
        .await
        .unwrap();
    let card = ContactCard::from_text(&d.contact().await.unwrap().to_text()).unwrap();
    assert_eq!(card.mailboxes.len(), 1);
    assert_eq!(card.mailboxes[0].member, mailbox.id());
    introduce(&[&a, &b, &c, &d]).await;
    let d_id = d.id();
    d.stop().await.unwrap();
    drop(d);

    let group = a.create_group("friends", &[b.id(), c.id()]).await.unwrap();
    for node in [&b, &c] {
        until("joined", async || {
            node.groups().await.unwrap().contains(&group)
        })
        .await;
    }
    a.send(group, b"before D").await.unwrap();

    // D is away: its welcome goes to its mailbox, which starts keeping the group.
    a.add(group, d_id).await.unwrap();
    until("the mailbox holds D's welcome", async || {
        mailbox.mailbox_held(group).await.unwrap().0 > 0
    })
    .await;
    for node in [&b, &c] {
        until("members see D added", async || {
            node.members(group).await.unwrap().contains(&d_id)
        })
        .await;
    }
    let mut expected = BTreeSet::new();
    for i in 0..5 {
        for (name, node) in [("a", &a), ("b", &b), ("c", &c)] {
            let text = format!("{name} while D is away {i}");
            node.send(group, text.as_bytes()).await.unwrap();
            expected.insert(text);
        }
    }
    for node in [&a, &b, &c] {
        until("members read each other", async || {
            texts(node, group).await.len() == expected.len() + 1
        })
        .await;
    }
    // Wait until the mailbox stops gaining envelopes (it has what the members have).
    let mut held = 0;
    let mut stable_since = tokio::time::Instant::now();
    until("the mailbox has everything", async || {
        let now = mailbox.mailbox_held(group).await.unwrap().0;
        if now != held {
            held = now;
            stable_since = tokio::time::Instant::now();
        }
        held > expected.len() as u64 && stable_since.elapsed() > Duration::from_secs(4)
    })
    .await;

    // Everyone else leaves; D comes back with only its mailbox reachable.
    for node in [a, b, c] {
        node.stop().await.unwrap();
    }
    let d = start(dirs[3].path()).await;
    until("D joins from the welcome its mailbox held", async || {
        d.groups().await.unwrap().contains(&group)
    })
    .await;
    until(
        "D reads everything sent since its add, once each",
        async || has_all(&d, group, &expected).await,
    )
    .await;
    // The adder told the group's name again after the add, so D knows it.
    until("D knows the group's name", async || {
        d.group_name(group).await.unwrap().as_deref() == Some("friends")
    })
    .await;
    // Nothing from before its add, and the mailbox never had the group's keys.
    assert!(!texts(&d, group).await.contains(&"before D".to_string()));
    assert!(mailbox.groups().await.unwrap().is_empty());

    // D read its mailbox's news to the end and keeps where it read up to, so that its next
    // start asks only for what came after.
    until("D has fetched its news", async || {
        d.status().await.unwrap().fetching_news == 0
    })
    .await;
    d.stop().await.unwrap();
    drop(d);
    let store = dspring_store::Store::open(dirs[3].path(), None).unwrap();
    let kept = store.own_mailboxes().unwrap();
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0].0, mailbox.id());
    assert!(
        kept[0].1.after > 0 && kept[0].1.instance != [0; 16],
        "the news cursor was not kept: {kept:?}"
    );
}

/// A member whose group went idle (off the group's topic, so gossip no longer reaches it)
/// but that stays connected to its mailbox learns of a new envelope at once: the mailbox
/// pushes. Nothing else could bring it: the sender cannot dial the member (it listens on
/// no address), and the member asks its mailbox for news only when it connects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_connected_to_its_mailbox_hears_of_new_envelopes_at_once() {
    common::logs();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mailbox = start_mailbox(dirs[0].path()).await;
    // Groups go idle after a second at both members, so that their connection closes.
    let quickly_idle = |dir: &std::path::Path, listen: &[&str]| {
        let mut config = NodeConfig::new(dir);
        config.listen = listen.iter().map(|a| a.parse().unwrap()).collect();
        config.mdns = false;
        config.idle_group_after = Duration::from_secs(1);
        config
    };
    let sender = Node::start(quickly_idle(dirs[1].path(), &["/ip4/127.0.0.1/tcp/0"]))
        .await
        .unwrap();
    let member = Node::start(quickly_idle(dirs[2].path(), &[]))
        .await
        .unwrap();
    mailbox
        .add_contact(member.contact().await.unwrap(), "member")
        .await
        .unwrap();
    member
        .use_mailbox(mailbox.contact().await.unwrap())
        .await
        .unwrap();
    introduce(&[&sender, &member]).await;
    let group = member.create_group("", &[sender.id()]).await.unwrap();
    until("the sender joins", async || {
        sender.groups().await.unwrap().contains(&group)
    })
    .await;
    until("the mailbox keeps the group", async || {
        mailbox.mailbox_held(group).await.unwrap().0 > 0
    })
    .await;
    sender.send(group, b"while busy").await.unwrap();
    until("the member reads it", async || {
        texts(&member, group)
            .await
            .contains(&"while busy".to_string())
    })
    .await;

    // The group goes idle at both members, and their connection closes; the member's to its
    // mailbox stays.
    until_within(
        "the member holds only its mailbox's connection",
        Duration::from_secs(60),
        async || {
            member.status().await.unwrap().busy_groups == 0
                && member.network_status().await.unwrap().connections == 1
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(member.network_status().await.unwrap().connections, 1);

    let sent = tokio::time::Instant::now();
    sender.send(group, b"while idle").await.unwrap();
    until_within(
        "the member reads what its mailbox pushed",
        Duration::from_secs(10),
        async || {
            texts(&member, group)
                .await
                .contains(&"while idle".to_string())
        },
    )
    .await;
    println!(
        "pushed through the mailbox in {} ms",
        sent.elapsed().as_millis()
    );
}
