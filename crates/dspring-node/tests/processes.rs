//! Real processes: node C runs as its own process (this binary in child mode) with its own data
//! directory, beside nodes A and B; C is killed with SIGKILL mid-conversation, several times,
//! and each time resumes from its store: no message lost, none twice, at C or at the others.
//!
//! `DSPRING_NODE_KILLS` sets the number of kills (default 5).

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

use common::{fixed_address, has_all, start, start_on, until};
use dspring_node::ContactCard;
use dspring_proto::{Event, GroupId};

const CHILD_DIR: &str = "DSPRING_NODE_CHILD_DIR";
const CHILD_LISTEN: &str = "DSPRING_NODE_CHILD_LISTEN";
const TAG: &str = "@@";

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let (Ok(dir), Ok(listen)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_LISTEN)) {
        runtime.block_on(child(Path::new(&dir), &listen));
        return;
    }
    let kills: u32 = std::env::var("DSPRING_NODE_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    runtime.block_on(parent(kills));
    println!("node processes: {kills} SIGKILLs of a live node, nothing lost or doubled");
}

/// The node process: prints its card, then runs `CARD <text>` and `SEND <group-hex> <text>`
/// lines; reports `SENT <text>` once a send is committed.
async fn child(dir: &Path, listen: &str) {
    let node = start_on(dir, listen).await;
    let card = node.contact().await.unwrap();
    println!("{TAG} READY {}", card.to_text());
    let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(1024);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        let mut parts = line.splitn(3, ' ');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("CARD"), Some(card), _) => {
                let card = ContactCard::from_text(card).unwrap();
                node.add_contact(card, "peer").await.unwrap();
                println!("{TAG} OK");
            }
            (Some("SEND"), Some(group), Some(text)) => {
                let group = GroupId(unhex(group).try_into().unwrap());
                // The welcome may still be on its way.
                until("the child joins", async || {
                    node.groups().await.unwrap().contains(&group)
                })
                .await;
                node.send(group, text.as_bytes()).await.unwrap();
                println!("{TAG} SENT {text}");
            }
            (Some("HAVE"), Some(group), Some(count)) => {
                // Waits until the messages of others reached this node, before it stops.
                let group = GroupId(unhex(group).try_into().unwrap());
                let count: usize = count.parse().unwrap();
                until("the child has the others' messages", async || {
                    let events = node.messages(group, 0, 1000).await.unwrap();
                    let received = events
                        .iter()
                        .filter(|e| matches!(e.event, Event::Message { .. }))
                        .count();
                    received >= count
                })
                .await;
                println!("{TAG} HAVE");
            }
            _ => panic!("child: bad line {line}"),
        }
        std::io::stdout().flush().unwrap();
    }
    node.stop().await.unwrap();
}

/// The text of a person's message as the store holds it: the node's content tag (0) first;
/// `None` for group metadata (the group's name, tag 2).
fn person_text(plaintext: Vec<u8>) -> Option<String> {
    let (tag, text) = plaintext.split_first().unwrap();
    match tag {
        0 => Some(String::from_utf8(text.to_vec()).unwrap()),
        2 => None,
        other => panic!("unexpected content tag {other}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

struct Process {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    card: ContactCard,
}

fn spawn(dir: &Path, listen: &str) -> Process {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_DIR, dir)
        .env(CHILD_LISTEN, listen)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(rest) = line.strip_prefix(TAG)
                && tx.send(rest.trim().to_string()).is_err()
            {
                return;
            }
        }
    });
    let ready = lines
        .recv_timeout(common::WAIT)
        .expect("child did not start");
    let card = ContactCard::from_text(ready.strip_prefix("READY ").unwrap()).unwrap();
    Process {
        child,
        stdin,
        lines,
        card,
    }
}

impl Process {
    fn line(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }
}

async fn parent(kills: u32) {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let a = start(dirs[0].path()).await;
    let b = start(dirs[1].path()).await;
    let c_address = fixed_address();
    let mut c = spawn(dirs[2].path(), &c_address);
    let c_id = c.card.member;
    for node in [&a, &b] {
        node.add_contact(c.card.clone(), "C").await.unwrap();
        let card = node.contact().await.unwrap().to_text();
        c.line(&format!("CARD {card}"));
        assert_eq!(c.lines.recv_timeout(common::WAIT).unwrap(), "OK");
    }
    a.add_contact(b.contact().await.unwrap(), "B")
        .await
        .unwrap();
    b.add_contact(a.contact().await.unwrap(), "A")
        .await
        .unwrap();
    let group = a.create_group("test", &[b.id(), c_id]).await.unwrap();
    until("B joins", async || {
        b.groups().await.unwrap().contains(&group)
    })
    .await;

    let mut expected = BTreeSet::new();
    let mut c_sent = Vec::new();
    let mut n = 0;
    for round in 0..=kills {
        // Everyone talks; C is killed in the middle of its stream of sends.
        for i in 0..20 {
            n += 1;
            c.line(&format!("SEND {} c-{n}", hex(&group.0)));
            if i % 5 == 0 {
                for (name, node) in [("a", &a), ("b", &b)] {
                    let text = format!("{name}-{round}-{i}");
                    node.send(group, text.as_bytes()).await.unwrap();
                    expected.insert(text);
                }
            }
        }
        if round < kills {
            tokio::time::sleep(Duration::from_millis(5 + 7 * u64::from(round))).await;
            c.child.kill().unwrap();
        } else {
            // Last round: let C finish and receive what A and B sent, then stop it.
            c.line(&format!("HAVE {} {}", hex(&group.0), expected.len()));
            loop {
                let line = c
                    .lines
                    .recv_timeout(common::WAIT)
                    .expect("C never had it all");
                if line == "HAVE" {
                    break;
                }
                if let Some(text) = line.strip_prefix("SENT ") {
                    c_sent.push(text.to_string());
                }
            }
            drop(c.stdin);
        }
        let status = c.child.wait().unwrap();
        if round == kills {
            assert!(status.success(), "the node process failed: {status}");
        }
        while let Ok(line) = c.lines.recv_timeout(Duration::from_millis(500)) {
            if let Some(text) = line.strip_prefix("SENT ") {
                c_sent.push(text.to_string());
            }
        }
        if round < kills {
            // C restarts from its data directory and rejoins the conversation.
            c = spawn(dirs[2].path(), &c_address);
        } else {
            break;
        }
    }

    // Everything C reported committed reached A and B, each once; so did anything else C's
    // store holds as sent (committed, killed before reporting).
    let c_store_sent = {
        let store = dspring_store::Store::open(dirs[2].path(), None).unwrap();
        let mut sent = BTreeSet::new();
        let mut received = Vec::new();
        let mut after = 0;
        loop {
            let page = store.messages(&group, after, 1000).unwrap();
            let Some(last) = page.last() else { break };
            after = last.cursor;
            for m in page {
                match m.event {
                    Event::Sent { plaintext, .. } => {
                        if let Some(text) = person_text(plaintext) {
                            assert!(sent.insert(text), "C sent twice");
                        }
                    }
                    Event::Message { plaintext, .. } => {
                        received.extend(person_text(plaintext));
                    }
                    _ => {}
                }
            }
        }
        // C read every message of A and B, each once, across all its restarts.
        let got: BTreeSet<String> = received.iter().cloned().collect();
        assert_eq!(got.len(), received.len(), "C read a message twice");
        assert_eq!(got, expected, "C missed messages of A and B");
        sent
    };
    for text in &c_sent {
        assert!(
            c_store_sent.contains(text),
            "C reported {text} committed, its store lost it"
        );
    }
    let mut all = expected.clone();
    all.extend(c_store_sent.iter().cloned());
    // C is not running now: A and B already have what C published or they synced from it
    // while it ran; give them until the deadline.
    for node in [&a, &b] {
        until(
            "A and B have all of C's committed messages, once",
            async || has_all(node, group, &all).await,
        )
        .await;
    }
    println!(
        "C: {} sends reported committed, {} committed in its store, {} messages of A and B read",
        c_sent.len(),
        c_store_sent.len(),
        expected.len()
    );
}
