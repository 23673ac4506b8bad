//! Real processes: every node, the mailbox included, is its own OS process (this binary in
//! child mode) with its own data directory, talking over loopback TCP. Three scenarios:
//! three nodes chat; a member added while away catches up from its mailbox after every other
//! member has gone; a removed member receives nothing sent after its removal.
//!
//! A child prints `@@ READY <card>` and then answers each command line on stdin with one
//! `@@ OK [value]` or `@@ ERR <reason>` line, so the parent never guesses.

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
use std::time::{Duration, Instant};

use common::{WAIT, fixed_address};
use dspring_node::{ContactCard, MailboxConfig, Node, NodeConfig, NodeError};
use dspring_proto::{Event, GroupId, MemberId};

const CHILD_DIR: &str = "DSPRING_SCENARIO_DIR";
const CHILD_LISTEN: &str = "DSPRING_SCENARIO_LISTEN";
const CHILD_MAILBOX: &str = "DSPRING_SCENARIO_MAILBOX";
const TAG: &str = "@@";
const GROUP_NAME: &str = "the group";
/// Longer than the node's 10 s round: a periodic sync has run on every node since.
const SYNC_ROUND: Duration = Duration::from_millis(10_500);

fn main() {
    if let (Ok(dir), Ok(listen)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_LISTEN)) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mailbox = std::env::var(CHILD_MAILBOX).is_ok();
        runtime.block_on(child(Path::new(&dir), &listen, mailbox));
        return;
    }
    for (name, scenario) in [
        ("three nodes chat", three_nodes_chat as fn() -> String),
        ("mailbox catch-up", mailbox_catch_up),
        ("removal", removal),
    ] {
        let began = Instant::now();
        let summary = scenario();
        println!(
            "process scenario {name}: {summary} ({:.1} s)",
            began.elapsed().as_secs_f64()
        );
    }
}

// ----- the node process -------------------------------------------------------------------

async fn child(dir: &Path, listen: &str, mailbox: bool) {
    let mut config = NodeConfig::new(dir);
    config.listen = vec![listen.parse().unwrap()];
    config.mdns = false;
    if mailbox {
        config.mailbox = Some(MailboxConfig::default());
    }
    let node = Node::start(config).await.unwrap();
    let card = node.contact().await.unwrap();
    println!("{TAG} READY {}", card.to_text());
    std::io::stdout().flush().unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(64);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    while let Some(line) = lines.recv().await {
        if line == "STOP" {
            break;
        }
        match command(&node, &line).await {
            Ok(value) => println!("{TAG} OK {value}"),
            Err(reason) => println!("{TAG} ERR {reason}"),
        }
        std::io::stdout().flush().unwrap();
    }
    node.stop().await.unwrap();
}

async fn command(node: &Node, line: &str) -> Result<String, String> {
    let words: Vec<&str> = line.split(' ').collect();
    let err = |e: NodeError| e.to_string();
    let group = |i: usize| -> Result<GroupId, String> {
        let bytes = unhex(words.get(i).ok_or("no group")?)?;
        Ok(GroupId(bytes.try_into().map_err(|_| "bad group")?))
    };
    let member = |i: usize| -> Result<MemberId, String> {
        let bytes = unhex(words.get(i).ok_or("no member")?)?;
        Ok(MemberId(bytes.try_into().map_err(|_| "bad member")?))
    };
    let card = |i: usize| -> Result<ContactCard, String> {
        ContactCard::from_text(words.get(i).ok_or("no card")?).map_err(|e| e.to_string())
    };
    match words.first().copied() {
        Some("CARD") => node
            .add_contact(card(1)?, "peer")
            .await
            .map(|()| String::new())
            .map_err(err),
        Some("USE_MAILBOX") => node
            .use_mailbox(card(1)?)
            .await
            .map(|()| String::new())
            .map_err(err),
        Some("MY_CARD") => Ok(node.contact().await.map_err(err)?.to_text()),
        Some("CREATE") => {
            let name = String::from_utf8(unhex(words.get(1).ok_or("no name")?)?)
                .map_err(|e| e.to_string())?;
            let members = (2..words.len())
                .map(member)
                .collect::<Result<Vec<_>, _>>()?;
            Ok(hex(&node
                .create_group(&name, &members)
                .await
                .map_err(err)?
                .0))
        }
        Some("NAME") => Ok(node
            .group_name(group(1)?)
            .await
            .map_err(err)?
            .map_or("-".into(), |n| hex(n.as_bytes()))),
        Some("ADD") => node
            .add(group(1)?, member(2)?)
            .await
            .map(|()| String::new())
            .map_err(err),
        Some("REMOVE") => node
            .remove(group(1)?, member(2)?)
            .await
            .map(|()| String::new())
            .map_err(err),
        Some("SEND") => {
            let text = words.get(2..).ok_or("no text")?.join(" ");
            node.send(group(1)?, text.as_bytes())
                .await
                .map(|()| String::new())
                .map_err(err)
        }
        Some("GROUPS") => Ok(list(
            node.groups()
                .await
                .map_err(err)?
                .iter()
                .map(|g| g.0.to_vec()),
        )),
        Some("MEMBERS") => Ok(list(
            node.members(group(1)?)
                .await
                .map_err(err)?
                .iter()
                .map(|m| m.0.to_vec()),
        )),
        Some("HELD") => Ok(node
            .mailbox_held(group(1)?)
            .await
            .map_err(err)?
            .0
            .to_string()),
        Some("TEXTS") => {
            let messages = node.messages(group(1)?, 0, 1000).await.map_err(err)?;
            Ok(list(messages.into_iter().filter_map(|m| match m.event {
                Event::Message { plaintext, .. } | Event::Sent { plaintext, .. } => Some(plaintext),
                _ => None,
            })))
        }
        Some("REMOVED") => {
            let group = group(1)?;
            let events = node.events_since(0, 1000).await.map_err(err)?;
            Ok(events
                .iter()
                .any(|e| e.group == group && matches!(e.event, Event::RemovedMe { .. }))
                .to_string())
        }
        _ => Err(format!("unknown command {line:?}")),
    }
}

/// Items as comma-separated hex ("-" for none: a reply always has a value word).
fn list(items: impl Iterator<Item = Vec<u8>>) -> String {
    let out: Vec<String> = items.map(|i| hex(&i)).collect();
    if out.is_empty() {
        "-".into()
    } else {
        out.join(",")
    }
}

fn unlist(value: &str) -> Vec<Vec<u8>> {
    if value == "-" {
        return Vec::new();
    }
    value.split(',').map(|v| unhex(v).unwrap()).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) || !text.is_ascii() {
        return Err(format!("not hex: {text:?}"));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

// ----- the parent's handle on a node process ----------------------------------------------

struct Process {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    card: ContactCard,
}

impl Process {
    fn spawn(dir: &Path, listen: &str, mailbox: bool) -> Process {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .env(CHILD_DIR, dir)
            .env(CHILD_LISTEN, listen)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if mailbox {
            command.env(CHILD_MAILBOX, "1");
        }
        let mut child = command.spawn().unwrap();
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
            .recv_timeout(WAIT)
            .expect("the node process did not start");
        let card = ContactCard::from_text(ready.strip_prefix("READY ").unwrap()).unwrap();
        Process {
            child,
            stdin,
            lines,
            card,
        }
    }

    fn id(&self) -> MemberId {
        self.card.member
    }

    /// Runs one command; its value, or the test fails with the node's reason.
    fn run(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        let reply = self
            .lines
            .recv_timeout(WAIT)
            .unwrap_or_else(|_| panic!("no reply to {line:?}"));
        match reply.strip_prefix("OK") {
            Some(value) => value.trim().to_string(),
            None => panic!("{line:?} failed: {reply}"),
        }
    }

    fn add_contact(&mut self, other: &ContactCard) {
        self.run(&format!("CARD {}", other.to_text()));
    }

    fn texts(&mut self, group: GroupId) -> Vec<String> {
        unlist(&self.run(&format!("TEXTS {}", hex(&group.0))))
            .into_iter()
            .map(|t| String::from_utf8(t).unwrap())
            .collect()
    }

    /// The node's texts as a set, checking that none appears twice.
    fn text_set(&mut self, group: GroupId) -> BTreeSet<String> {
        let texts = self.texts(group);
        let set: BTreeSet<String> = texts.iter().cloned().collect();
        assert_eq!(set.len(), texts.len(), "a message appears twice: {texts:?}");
        set
    }

    fn groups(&mut self) -> Vec<GroupId> {
        unlist(&self.run("GROUPS"))
            .into_iter()
            .map(|g| GroupId(g.try_into().unwrap()))
            .collect()
    }

    fn members(&mut self, group: GroupId) -> Vec<MemberId> {
        unlist(&self.run(&format!("MEMBERS {}", hex(&group.0))))
            .into_iter()
            .map(|m| MemberId(m.try_into().unwrap()))
            .collect()
    }

    fn send(&mut self, group: GroupId, text: &str) {
        self.run(&format!("SEND {} {text}", hex(&group.0)));
    }

    /// Stops the node cleanly and waits for the process to exit with success.
    fn stop(mut self) {
        writeln!(self.stdin, "STOP").unwrap();
        self.stdin.flush().unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the node process failed: {status}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // A failed test must not leave node processes behind.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check() {
        assert!(Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn introduce(nodes: &mut [&mut Process]) {
    let cards: Vec<ContactCard> = nodes.iter().map(|p| p.card.clone()).collect();
    for (i, node) in nodes.iter_mut().enumerate() {
        for (j, card) in cards.iter().enumerate() {
            if i != j {
                node.add_contact(card);
            }
        }
    }
}

fn create(creator: &mut Process, members: &[MemberId]) -> GroupId {
    let ids: Vec<String> = members.iter().map(|m| hex(&m.0)).collect();
    let name = hex(GROUP_NAME.as_bytes());
    let group = unhex(&creator.run(&format!("CREATE {name} {}", ids.join(" ")))).unwrap();
    GroupId(group.try_into().unwrap())
}

fn start(dir: &Path) -> Process {
    Process::spawn(dir, "/ip4/127.0.0.1/tcp/0", false)
}

// ----- the scenarios ----------------------------------------------------------------------

fn three_nodes_chat() -> String {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = start(dirs[0].path());
    let mut b = start(dirs[1].path());
    let mut c = start(dirs[2].path());
    introduce(&mut [&mut a, &mut b, &mut c]);
    let group = create(&mut a, &[b.id(), c.id()]);
    for node in [&mut b, &mut c] {
        until("joined", || node.groups().contains(&group));
    }
    let mut expected = BTreeSet::new();
    for round in 0..3 {
        for (name, node) in [("a", &mut a), ("b", &mut b), ("c", &mut c)] {
            let text = format!("{name} says {round}");
            node.send(group, &text);
            expected.insert(text);
        }
    }
    for node in [&mut a, &mut b, &mut c] {
        until("every node holds every message, once", || {
            node.text_set(group) == expected
        });
    }
    // Still exactly once after a sync round, which could deliver something again.
    std::thread::sleep(SYNC_ROUND);
    for node in [&mut a, &mut b, &mut c] {
        assert_eq!(node.text_set(group), expected);
    }
    for node in [a, b, c] {
        node.stop();
    }
    format!("3 processes, {} messages each read by all", expected.len())
}

fn mailbox_catch_up() -> String {
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut mailbox = Process::spawn(dirs[4].path(), "/ip4/127.0.0.1/tcp/0", true);
    let mut a = start(dirs[0].path());
    let mut b = start(dirs[1].path());
    let mut c = start(dirs[2].path());
    let d_address = fixed_address();
    let mut d = Process::spawn(dirs[3].path(), &d_address, false);
    // D's mailbox serves D (D is its contact); D's card names it.
    mailbox.add_contact(&d.card.clone());
    d.run(&format!("USE_MAILBOX {}", mailbox.card.to_text()));
    d.card = ContactCard::from_text(&d.run("MY_CARD")).unwrap();
    assert_eq!(d.card.mailboxes.len(), 1, "D's card names its mailbox");
    introduce(&mut [&mut a, &mut b, &mut c, &mut d]);
    let d_id = d.id();
    d.stop();

    let group = create(&mut a, &[b.id(), c.id()]);
    for node in [&mut b, &mut c] {
        until("joined", || node.groups().contains(&group));
    }
    a.send(group, "before D");
    // D is away: its welcome goes to its mailbox, which starts keeping the group.
    a.run(&format!("ADD {} {}", hex(&group.0), hex(&d_id.0)));
    let held = |mailbox: &mut Process| -> u64 {
        mailbox
            .run(&format!("HELD {}", hex(&group.0)))
            .parse()
            .unwrap()
    };
    until("the mailbox holds D's welcome", || held(&mut mailbox) > 0);
    for node in [&mut b, &mut c] {
        until("members see D added", || {
            node.members(group).contains(&d_id)
        });
    }
    let mut expected = BTreeSet::new();
    for i in 0..5 {
        for (name, node) in [("a", &mut a), ("b", &mut b), ("c", &mut c)] {
            let text = format!("{name} while D is away {i}");
            node.send(group, &text);
            expected.insert(text);
        }
    }
    for node in [&mut a, &mut b, &mut c] {
        until("members read each other", || {
            node.texts(group).len() == expected.len() + 1
        });
    }
    // Wait until the mailbox stops gaining envelopes (it has what the members have).
    let (mut last, mut stable_since) = (0, Instant::now());
    until("the mailbox has everything", || {
        let now = held(&mut mailbox);
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        last > expected.len() as u64 && stable_since.elapsed() > Duration::from_secs(4)
    });

    // Everyone else leaves; D comes back with only its mailbox reachable.
    for node in [a, b, c] {
        node.stop();
    }
    let mut d = Process::spawn(dirs[3].path(), &d_address, false);
    until("D joins from the welcome its mailbox held", || {
        d.groups().contains(&group)
    });
    until("D reads everything sent since its add, once each", || {
        d.text_set(group) == expected
    });
    std::thread::sleep(SYNC_ROUND);
    assert_eq!(d.text_set(group), expected, "D after a sync round");
    // The adder told the group's name again after the add, so D knows it.
    until("D knows the group's name", || {
        d.run(&format!("NAME {}", hex(&group.0))) == hex(GROUP_NAME.as_bytes())
    });
    // Nothing from before its add, and the mailbox never had the group's keys.
    assert!(!d.texts(group).contains(&"before D".to_string()));
    assert!(mailbox.groups().is_empty(), "the mailbox holds group state");
    d.stop();
    mailbox.stop();
    format!(
        "5 processes; the returning member read {} messages from the mailbox alone",
        expected.len()
    )
}

fn removal() -> String {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = start(dirs[0].path());
    let mut b = start(dirs[1].path());
    let mut c = start(dirs[2].path());
    introduce(&mut [&mut a, &mut b, &mut c]);
    let c_id = c.id();
    let group = create(&mut a, &[b.id(), c_id]);
    for node in [&mut b, &mut c] {
        until("joined", || node.groups().contains(&group));
    }
    c.send(group, "before");
    for node in [&mut a, &mut b] {
        until("C's message arrives", || {
            node.texts(group).contains(&"before".to_string())
        });
    }
    a.run(&format!("REMOVE {} {}", hex(&group.0), hex(&c_id.0)));
    until("C learns it was removed", || {
        c.run(&format!("REMOVED {}", hex(&group.0))) == "true"
    });
    until("B sees C removed", || !b.members(group).contains(&c_id));
    let after: BTreeSet<String> = ["after 1", "after 2"].map(String::from).into();
    a.send(group, "after 1");
    b.send(group, "after 2");
    for node in [&mut a, &mut b] {
        until("A and B read each other", || {
            node.text_set(group).is_superset(&after)
        });
    }
    // Time for anything that could still reach C to do so, a sync round included.
    std::thread::sleep(SYNC_ROUND);
    let at_c = c.texts(group);
    assert!(
        at_c.iter().all(|t| !after.contains(t)),
        "C read after its removal: {at_c:?}"
    );
    assert!(c.members(group).is_empty());
    for node in [a, b, c] {
        node.stop();
    }
    "3 processes; the removed member read none of the 2 messages after its removal".into()
}
