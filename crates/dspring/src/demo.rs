//! `dspring demo`: a small real network on loopback (five nodes with their own temporary data
//! directories, one of them a mailbox), narrated step by step. Every step states what it
//! checks; the demo exits 0 only if every check held.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use dspring_node::{ContactCard, MailboxConfig, Node, NodeConfig, NodeError};
use dspring_node::{Event, GroupId};

/// How long a step may wait for the network before the demo gives up.
const STEP_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("a temporary directory: {0}")]
    TempDir(std::io::Error),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("check failed: {0}")]
    Check(String),
}

fn check(held: bool, what: &str) -> Result<(), DemoError> {
    if held {
        out!("   ✓ {what}");
        Ok(())
    } else {
        Err(DemoError::Check(what.to_owned()))
    }
}

/// Waits until `condition` holds, then reports it as a passed check with the time it took.
async fn until(what: &str, mut condition: impl AsyncFnMut() -> bool) -> Result<(), DemoError> {
    let started = Instant::now();
    while !condition().await {
        if started.elapsed() > STEP_LIMIT {
            return Err(DemoError::Check(format!(
                "{what} (not within {} s)",
                STEP_LIMIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out!("   ✓ {what} ({} ms)", started.elapsed().as_millis());
    Ok(())
}

/// A loopback address with a port free now: each node comes back on its own address after a
/// restart, as a device with a configured port does, so the cards people exchanged stay good.
fn free_address() -> Result<String, DemoError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(DemoError::TempDir)?;
    let port = listener.local_addr().map_err(DemoError::TempDir)?.port();
    Ok(format!("/ip4/127.0.0.1/tcp/{port}"))
}

async fn start(dir: &Path, address: &str, mailbox: bool) -> Result<Node, DemoError> {
    let mut config = NodeConfig::new(dir);
    config.listen = [address].iter().filter_map(|a| a.parse().ok()).collect();
    // Only the nodes of this demo: no discovery of other nodes on the network.
    config.mdns = false;
    if mailbox {
        config.mailbox = Some(MailboxConfig::default());
    }
    Ok(Node::start(config).await?)
}

/// The texts of a group's messages at a node (received and sent), in order.
async fn texts(node: &Node, group: GroupId) -> Result<Vec<String>, DemoError> {
    Ok(node
        .messages(group, 0, 1000)
        .await?
        .into_iter()
        .filter_map(|m| match m.event {
            Event::Message { plaintext, .. } | Event::Sent { plaintext, .. } => {
                Some(String::from_utf8_lossy(&plaintext).into_owned())
            }
            _ => None,
        })
        .collect())
}

/// The node holds exactly `expected`, each once.
async fn holds_exactly(node: &Node, group: GroupId, expected: &BTreeSet<String>) -> bool {
    let Ok(got) = texts(node, group).await else {
        return false;
    };
    let set: BTreeSet<String> = got.iter().cloned().collect();
    set.len() == got.len() && &set == expected
}

async fn introduce(nodes: &[&Node], names: &[&str]) -> Result<(), DemoError> {
    for (i, node) in nodes.iter().enumerate() {
        for (j, other) in nodes.iter().enumerate() {
            if i != j {
                let card = ContactCard::from_text(&other.contact().await?.to_text())
                    .map_err(|e| DemoError::Check(format!("a contact card reads back: {e}")))?;
                node.add_contact(card, names.get(j).copied().unwrap_or("?"))
                    .await?;
            }
        }
    }
    Ok(())
}

/// Copies a data directory (files and subdirectories), as a thief with the disk would.
fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// How long a mailbox's count must stay the same to count as settled: envelopes in flight
/// on loopback arrive within milliseconds.
const SETTLED_AFTER: Duration = Duration::from_secs(1);

/// The number of envelopes `mailbox` holds for `group`, once it has stopped changing.
async fn settled_count(mailbox: &Node, group: GroupId) -> Result<u64, DemoError> {
    let started = Instant::now();
    let mut last = (mailbox.mailbox_held(group).await?.0, Instant::now());
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = mailbox.mailbox_held(group).await?.0;
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() >= SETTLED_AFTER {
            return Ok(now);
        }
        if started.elapsed() > STEP_LIMIT {
            return Err(DemoError::Check("the mailbox's count settles".into()));
        }
    }
}

/// Bytes the nodes sent, counted across restarts: each node's counter starts at zero when it
/// starts, so a node's count is added here just before it stops.
#[derive(Default)]
struct SentBytes(u64);

impl SentBytes {
    async fn stop(&mut self, node: Node) -> Result<(), DemoError> {
        self.0 += node.network_status().await?.sent;
        Ok(node.stop().await?)
    }
}

pub async fn run() -> Result<(), DemoError> {
    let started = Instant::now();
    let mut sent = SentBytes::default();
    let dirs: Vec<tempfile::TempDir> = (0..5)
        .map(|_| tempfile::tempdir().map_err(DemoError::TempDir))
        .collect::<Result<_, _>>()?;
    let addresses: Vec<String> = (0..5).map(|_| free_address()).collect::<Result<_, _>>()?;
    let place = |i: usize| match (dirs.get(i), addresses.get(i)) {
        (Some(dir), Some(address)) => Ok((dir.path(), address.as_str())),
        _ => Err(DemoError::Check("a data directory".into())),
    };

    out!("1. Five real nodes start on loopback, each with its own data directory (a SQLite file)");
    out!("   and its own identity key: Alice, Bob, Carol, Dave, and a mailbox that serves Dave.");
    let mailbox = start(place(4)?.0, place(4)?.1, true).await?;
    let alice = start(place(0)?.0, place(0)?.1, false).await?;
    let bob = start(place(1)?.0, place(1)?.1, false).await?;
    let carol = start(place(2)?.0, place(2)?.1, false).await?;
    let dave = start(place(3)?.0, place(3)?.1, false).await?;
    mailbox.add_contact(dave.contact().await?, "dave").await?;
    dave.use_mailbox(mailbox.contact().await?).await?;
    introduce(
        &[&alice, &bob, &carol, &dave],
        &["alice", "bob", "carol", "dave"],
    )
    .await?;
    check(
        dave.contact().await?.mailboxes.len() == 1,
        "Dave's contact card names his mailbox; everyone exchanged cards",
    )?;

    out!("2. Alice creates the group \"friends\" with Bob, Carol and Dave. No server: the");
    out!("   welcome goes from Alice's node to each member's node.");
    let friends = alice
        .create_group("friends", &[bob.id(), carol.id(), dave.id()])
        .await?;
    for (name, node) in [("Bob", &bob), ("Carol", &carol), ("Dave", &dave)] {
        until(&format!("{name} joined"), async || {
            node.groups().await.is_ok_and(|g| g.contains(&friends))
        })
        .await?;
    }

    out!("3. Everyone writes once; each message is end-to-end encrypted and fans out through");
    out!("   the members themselves.");
    let mut said = BTreeSet::new();
    for (name, node) in [
        ("Alice", &alice),
        ("Bob", &bob),
        ("Carol", &carol),
        ("Dave", &dave),
    ] {
        let text = format!("hi, {name} here");
        node.send(friends, text.as_bytes()).await?;
        said.insert(text);
    }
    for (name, node) in [
        ("Alice", &alice),
        ("Bob", &bob),
        ("Carol", &carol),
        ("Dave", &dave),
    ] {
        until(
            &format!("{name} has all 4 messages, each once"),
            async || holds_exactly(node, friends, &said).await,
        )
        .await?;
    }

    out!("4. Dave goes offline. Alice creates a second group, \"plans\", with Bob and Carol and");
    out!("   adds Dave while he is away: his welcome waits at his mailbox, which cannot read it.");
    let dave_id = dave.id();
    sent.stop(dave).await?;
    let plans = alice.create_group("plans", &[bob.id(), carol.id()]).await?;
    for node in [&bob, &carol] {
        until("Bob and Carol joined \"plans\"", async || {
            node.groups().await.is_ok_and(|g| g.contains(&plans))
        })
        .await?;
    }
    alice.add(plans, dave_id).await?;
    until("the mailbox holds Dave's welcome", async || {
        mailbox
            .mailbox_held(plans)
            .await
            .is_ok_and(|held| held.0 > 0)
    })
    .await?;
    let mut planned = BTreeSet::new();
    for (name, node) in [("Alice", &alice), ("Bob", &bob), ("Carol", &carol)] {
        for group in [friends, plans] {
            let text = format!("{name} writes while Dave is away");
            node.send(group, text.as_bytes()).await?;
            if group == plans {
                planned.insert(text);
            } else {
                said.insert(text);
            }
        }
    }
    for node in [&alice, &bob, &carol] {
        until("the members read each other in both groups", async || {
            holds_exactly(node, friends, &said).await
                && texts(node, plans)
                    .await
                    .is_ok_and(|t| t.len() == planned.len())
        })
        .await?;
    }
    // The mailbox keeps "plans" since Dave's welcome (and "friends" since Dave registered
    // it): it must hold at least every message the members wrote there, and stop growing.
    let mut held = (0, Instant::now());
    until(
        "the mailbox has stored what the members wrote",
        async || {
            let plans_held = mailbox.mailbox_held(plans).await.map_or(0, |h| h.0);
            let friends_held = mailbox.mailbox_held(friends).await.map_or(0, |h| h.0);
            let now = plans_held + friends_held;
            if now != held.0 {
                held = (now, Instant::now());
            }
            // Every message there, and Dave's welcome besides.
            plans_held > planned.len() as u64
                && friends_held >= said.len() as u64
                && held.1.elapsed() > Duration::from_secs(3)
        },
    )
    .await?;

    out!("5. Alice, Bob and Carol go offline too. Dave comes back: only his mailbox is there.");
    for node in [alice, bob, carol] {
        sent.stop(node).await?;
    }
    let back = Instant::now();
    let dave = start(place(3)?.0, place(3)?.1, false).await?;
    until(
        "Dave joins \"plans\" from the welcome his mailbox held",
        async || dave.groups().await.is_ok_and(|g| g.contains(&plans)),
    )
    .await?;
    until(
        "Dave reads everything he missed in both groups, each once",
        async || {
            holds_exactly(&dave, friends, &said).await
                && holds_exactly(&dave, plans, &planned).await
        },
    )
    .await?;
    out!("   caught up in {} ms", back.elapsed().as_millis());
    check(
        mailbox.groups().await?.is_empty(),
        "the mailbox is a member of no group: it held ciphertext only",
    )?;

    out!("6. Everyone is back. Alice removes Carol from \"friends\", then writes again.");
    let alice = start(place(0)?.0, place(0)?.1, false).await?;
    let bob = start(place(1)?.0, place(1)?.1, false).await?;
    let carol = start(place(2)?.0, place(2)?.1, false).await?;
    let carol_id = carol.id();
    alice.remove(friends, carol_id).await?;
    for node in [&bob, &dave] {
        until("Bob and Dave see Carol removed", async || {
            node.members(friends)
                .await
                .is_ok_and(|m| !m.contains(&carol_id))
        })
        .await?;
    }
    until("Carol's node learns it was removed", async || {
        carol.events_since(0, 1000).await.is_ok_and(|events| {
            events
                .iter()
                .any(|e| e.group == friends && matches!(e.event, Event::RemovedMe { .. }))
        })
    })
    .await?;
    check(
        carol.members(friends).await?.is_empty(),
        "Carol's node dropped its state of \"friends\", keys included (it keeps what it read)",
    )?;
    // The members' acknowledgements of the removal reach the mailbox too: counted from when
    // they have, the next envelope it stores is the message below.
    let held_before = settled_count(&mailbox, friends).await?;
    let secret = "only for Alice, Bob and Dave";
    alice.send(friends, secret.as_bytes()).await?;
    said.insert(secret.to_owned());
    for node in [&bob, &dave] {
        until(
            "Bob and Dave read the message after the removal",
            async || holds_exactly(node, friends, &said).await,
        )
        .await?;
    }
    until("the mailbox stores its ciphertext", async || {
        mailbox
            .mailbox_held(friends)
            .await
            .is_ok_and(|held| held.0 > held_before)
    })
    .await?;
    check(
        settled_count(&mailbox, friends).await? == held_before + 1,
        "exactly one envelope more: the mailbox gives it to anyone who names the group",
    )?;
    out!("   Its key derives from the fresh seed Alice's removal carried, sealed to Bob and Dave");
    out!("   each under their own keys and to no one else: Carol has nothing to derive it from.");
    // Carol stays connected long enough to receive anything that was sent to her.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let at_carol = texts(&carol, friends).await?;
    check(
        at_carol.contains(&"hi, Carol here".to_owned()) && !at_carol.contains(&secret.to_owned()),
        "Carol still has what she read before, but not the message after her removal",
    )?;

    out!("7. A thief copies Bob's device: its whole data directory, keys included, taken while");
    out!("   his node is stopped. Then Bob refreshes his keys in \"friends\" (an update: fresh");
    out!("   randomness, sent to each member under their own keys), and the group goes on.");
    sent.stop(bob).await?;
    let stolen = tempfile::tempdir().map_err(DemoError::TempDir)?;
    copy_dir(place(1)?.0, stolen.path()).map_err(DemoError::TempDir)?;
    let bob = start(place(1)?.0, place(1)?.1, false).await?;
    let bob_id = bob.id();
    // Written after the theft, before the update: the stolen keys still read this.
    let before_update = "after the theft, before Bob's update";
    alice.send(friends, before_update.as_bytes()).await?;
    said.insert(before_update.to_owned());
    until("Bob reads it", async || {
        holds_exactly(&bob, friends, &said).await
    })
    .await?;
    bob.update(friends).await?;
    for node in [&alice, &dave] {
        until("Alice and Dave see Bob's key update", async || {
            node.events_since(0, 1000).await.is_ok_and(|events| {
                events.iter().any(|e| {
                    e.group == friends
                        && matches!(e.event, Event::KeyUpdated { member } if member == bob_id)
                })
            })
        })
        .await?;
    }
    let after = "after Bob's update";
    bob.send(friends, after.as_bytes()).await?;
    said.insert(after.to_owned());
    let from_alice = "Alice, after Bob's update";
    alice.send(friends, from_alice.as_bytes()).await?;
    said.insert(from_alice.to_owned());
    for (name, node) in [("Alice", &alice), ("Bob", &bob), ("Dave", &dave)] {
        until(
            &format!("{name} reads everything written after the update"),
            async || holds_exactly(node, friends, &said).await,
        )
        .await?;
    }

    out!("8. The thief runs the stolen copy in Bob's place (Bob is offline), on the network with");
    out!("   the group. It has Bob's old keys, but every message after the update needs keys");
    out!("   derived from the update's randomness, which the copy never saw.");
    sent.stop(bob).await?;
    let thief = start(stolen.path(), place(1)?.1, false).await?;
    check(
        thief.id() == bob_id,
        "the copy is Bob to the network (the same identity key)",
    )?;
    check(
        texts(&thief, friends)
            .await?
            .contains(&"hi, Bob here".to_owned()),
        "the copy shows what Bob had before the theft",
    )?;
    // It must really be on the network and receive the group's traffic, or its not reading
    // would mean nothing.
    let received_before = thief.network_status().await?.received;
    until("the copy is connected to the group", async || {
        thief
            .network_status()
            .await
            .is_ok_and(|t| t.connections > 0)
    })
    .await?;
    let probe = "written while the copy is online";
    alice.send(friends, probe.as_bytes()).await?;
    said.insert(probe.to_owned());
    until("Dave reads it", async || {
        holds_exactly(&dave, friends, &said).await
    })
    .await?;
    until("the copy receives the group's traffic", async || {
        thief
            .network_status()
            .await
            .is_ok_and(|t| t.received > received_before + probe.len() as u64)
    })
    .await?;
    until(
        "the copy reads what was written after the theft but before the update",
        async || {
            texts(&thief, friends)
                .await
                .is_ok_and(|t| t.contains(&before_update.to_owned()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let stolen_view = texts(&thief, friends).await?;
    check(
        [after, from_alice, probe]
            .iter()
            .all(|t| !stolen_view.contains(&(*t).to_owned())),
        "the copy reads none of the three messages written after the update: the update healed the compromise",
    )?;
    sent.stop(thief).await?;
    let bob = start(place(1)?.0, place(1)?.1, false).await?;
    until("the real Bob, back, reads everything", async || {
        holds_exactly(&bob, friends, &said).await
    })
    .await?;

    for node in [alice, bob, carol, dave, mailbox] {
        sent.stop(node).await?;
    }
    out!(
        "Every check held. {} s in all; the nodes sent {} KiB between them (on the application",
        started.elapsed().as_secs(),
        sent.0 / 1024
    );
    out!("   streams of their connections: gossip, syncs, the DHT; encryption and framing aside).");
    Ok(())
}
