//! Peers that restart, move to new ports and sleep still reach each other, as a user runs
//! them: real daemons (the `dspring` binary), each with its own data directory and the
//! settings `dspring init` wrote, no DHT bootstrap node and no mDNS. What the node knows of
//! where its peers are comes from contact cards, from the peers themselves, and from the
//! members they share.
//!
//! The targets are 5 s (two members) and 10 s (three); each wait here allows twice
//! that, so that a loaded CI machine does not fail a working node, and prints what it took.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Daemon, dspring, init};
use serde_json::Value;

/// Starting a daemon, and setting up a group, may take this long on a loaded machine.
const SETUP: Duration = Duration::from_secs(60);
/// Twice the 5 s for two members.
const PAIR: Duration = Duration::from_secs(10);
/// Twice the 10 s for two members who both moved and share a third.
const TRIO: Duration = Duration::from_secs(20);

/// A new port on every start: what a node gets whose configured port was taken, or that
/// runs with port 0.
const NEW_PORTS: [&str; 4] = [
    "--listen",
    "/ip4/127.0.0.1/tcp/0",
    "--listen",
    "/ip4/127.0.0.1/udp/0/quic-v1",
];

impl Daemon {
    /// Starts the daemon on its configured ports, or with `flags`; returns once its API is up.
    fn start(dir: &Path, flags: &[&str]) -> Self {
        let mut daemon = dspring(dir);
        daemon
            .args(["daemon", "--no-mdns"])
            .args(flags)
            // `DSPRING_TEST_LOG` (a `RUST_LOG` filter) shows more when a run needs looking into.
            .env(
                "RUST_LOG",
                std::env::var("DSPRING_TEST_LOG")
                    .unwrap_or_else(|_| "warn,dspring_net=info".into()),
            )
            .stderr(Stdio::inherit());
        Self::spawn(daemon, dir)
    }

    fn cli(&self, args: &[&str]) -> Value {
        let output = dspring(&self.dir)
            .arg("--json")
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "dspring {args:?}: {output:?}");
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// Stops it with SIGTERM, as a user's shutdown does.
    fn stop(mut self) {
        self.signal("-TERM");
        self.wait_for_exit();
    }

    fn texts(&self, group: &str) -> Vec<String> {
        self.cli(&["read", group, "--limit", "100"])
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["text"].as_str().map(str::to_owned))
            .collect()
    }

    fn card(&self) -> String {
        self.cli(&["id"])["card"].as_str().unwrap().to_owned()
    }
}

/// Waits until `check` holds, at most `limit`; how long it took.
fn within(limit: Duration, what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = start.elapsed();
    println!("{what}: {} ms", took.as_millis());
    took
}

/// Sends `text` from `from` and waits for `to` to read it.
fn delivered(from: &Daemon, to: &Daemon, group: &str, text: &str, limit: Duration, what: &str) {
    from.cli(&["send", group, text]);
    within(limit, what, || to.texts(group).iter().any(|t| t == text));
}

/// How far `text` (sent by `daemon`) got, as `read` says: `here`, `held` or `all`.
fn delivery_of(daemon: &Daemon, group: &str, text: &str) -> String {
    daemon
        .cli(&["read", group, "--limit", "100"])
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "sent" && e["text"] == text)
        .map(|e| e["delivery"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

/// New data directories, initialised; every daemon knows every other's card.
fn profiles(n: usize) -> Vec<tempfile::TempDir> {
    let dirs: Vec<tempfile::TempDir> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    for dir in &dirs {
        init(dir.path());
    }
    dirs
}

fn meet(daemons: &[&Daemon]) {
    let cards: Vec<String> = daemons.iter().map(|d| d.card()).collect();
    for (i, daemon) in daemons.iter().enumerate() {
        for (j, card) in cards.iter().enumerate() {
            if i != j {
                daemon.cli(&["contact", "add", card, "--name", &format!("peer{j}")]);
            }
        }
    }
}

/// A group of everyone, created by the first, joined by all.
fn group_of(daemons: &[&Daemon], name: &str) -> String {
    let mut args = vec!["group", "create", name];
    let names: Vec<String> = (1..daemons.len()).map(|j| format!("peer{j}")).collect();
    for member in &names {
        args.extend(["--member", member]);
    }
    let id = daemons[0].cli(&args)["id"].as_str().unwrap().to_owned();
    for daemon in &daemons[1..] {
        joined(daemon, &id);
    }
    id
}

/// `dspring follow --json` on a daemon: its lines (events and notices) as they come.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Follower {
    fn start(daemon: &Daemon) -> Self {
        let mut child = dspring(&daemon.dir)
            .args(["--json", "follow"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (sender, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if let Ok(value) = serde_json::from_str(&line)
                    && sender.send(value).is_err()
                {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits until a line (seen before or coming within `limit`) matches.
    fn saw(&mut self, limit: Duration, what: &str, matches: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + limit;
        while !self.seen.iter().any(&matches) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => panic!("timed out: {what}; seen: {:?}", self.seen),
            }
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `daemon` lists `group` among its groups.
fn joined(daemon: &Daemon, group: &str) {
    within(SETUP, "a member joins", || {
        daemon
            .cli(&["group", "list"])
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["id"] == group)
    });
}

#[test]
fn two_members_meet_again_after_restarts_on_their_ports_and_on_new_ones() {
    let dirs = profiles(2);
    let (a_dir, b_dir) = (dirs[0].path(), dirs[1].path());
    let a = Daemon::start(a_dir, &[]);
    let b = Daemon::start(b_dir, &[]);
    meet(&[&a, &b]);
    let group = group_of(&[&a, &b], "pair");
    delivered(&a, &b, &group, "before", SETUP, "first message");

    // Both restart on the ports `init` kept: whichever comes up second finds the other.
    a.stop();
    b.stop();
    let a = Daemon::start(a_dir, &[]);
    let b = Daemon::start(b_dir, &[]);
    delivered(
        &a,
        &b,
        &group,
        "kept ports a",
        PAIR,
        "both restarted on their ports: a to b",
    );
    delivered(
        &b,
        &a,
        &group,
        "kept ports b",
        PAIR,
        "both restarted on their ports: b to a",
    );

    // A moves to new ports and comes up while B runs: it dials B, and B learns where A is.
    a.stop();
    let a = Daemon::start(a_dir, &NEW_PORTS);
    delivered(
        &b,
        &a,
        &group,
        "moved, second b",
        PAIR,
        "a moved, up second: b to a",
    );
    delivered(
        &a,
        &b,
        &group,
        "moved, second a",
        PAIR,
        "a moved, up second: a to b",
    );

    // Both down; A comes up first on new ports, B later on its own: B cannot know where A
    // is, so A's retries must reach B soon after B is up.
    a.stop();
    b.stop();
    let a = Daemon::start(a_dir, &NEW_PORTS);
    std::thread::sleep(Duration::from_secs(3));
    let b = Daemon::start(b_dir, &[]);
    delivered(
        &b,
        &a,
        &group,
        "moved, first b",
        PAIR,
        "a moved, up first: b to a",
    );
    delivered(
        &a,
        &b,
        &group,
        "moved, first a",
        PAIR,
        "a moved, up first: a to b",
    );

    // B sleeps (SIGSTOP, as a laptop lid closes) while A writes, then wakes.
    b.signal("-STOP");
    a.cli(&["send", &group, "while asleep 1"]);
    a.cli(&["send", &group, "while asleep 2"]);
    std::thread::sleep(Duration::from_secs(2));
    b.signal("-CONT");
    within(SETUP, "b woke and has what it missed", || {
        let texts = b.texts(&group);
        texts.iter().any(|t| t == "while asleep 1") && texts.iter().any(|t| t == "while asleep 2")
    });
    // Exactly once each.
    let texts = b.texts(&group);
    for text in ["while asleep 1", "while asleep 2", "moved, first a"] {
        assert_eq!(texts.iter().filter(|t| *t == text).count(), 1, "{texts:?}");
    }

    // B goes away for good: after its dials have failed for half a minute, A's status says
    // so, for B and for the group, which has nobody else; and stops saying it once B is back.
    let b_id = b.cli(&["id"])["id"].as_str().unwrap().to_owned();
    // A's event stream says so too, as notices.
    let mut follower = Follower::start(&a);
    b.stop();
    let out_of_reach = |status: &Value, key: &str, id: &str| {
        status[key]
            .as_array()
            .unwrap()
            .iter()
            .any(|entry| entry["member"] == id || entry["group"] == id)
    };
    within(SETUP, "a reports b out of reach", || {
        let status = a.cli(&["status"]);
        out_of_reach(&status, "out_of_reach", &b_id)
            && out_of_reach(&status, "groups_out_of_reach", &group)
    });
    // What A sends now only A holds, and its `read` says so; once B is back and has synced
    // it, it says every member holds it.
    follower.saw(PAIR, "a notice that b is out of reach", |line| {
        line["kind"] == "out_of_reach" && line["member"] == b_id.as_str()
    });
    a.cli(&["send", &group, "while b is gone"]);
    assert_eq!(delivery_of(&a, &group, "while b is gone"), "here");
    let b = Daemon::start(b_dir, &[]);
    delivered(&b, &a, &group, "back", PAIR, "b back: b to a");
    within(
        SETUP,
        "a sees that b holds what it sent while b was gone",
        || delivery_of(&a, &group, "while b is gone") == "all",
    );
    // The stream showed the message sent, and then that every member holds it.
    follower.saw(PAIR, "the message sent", |line| {
        line["kind"] == "sent" && line["text"] == "while b is gone"
    });
    let sent = follower
        .seen
        .iter()
        .find(|line| line["kind"] == "sent" && line["text"] == "while b is gone")
        .cloned()
        .unwrap();
    let position = |p: &Value| (p["epoch"].as_u64().unwrap(), p["index"].as_u64().unwrap());
    follower.saw(
        PAIR,
        "a delivery notice that every member holds it",
        |line| {
            line["kind"] == "delivery"
                && line["group"] == group.as_str()
                && line["all"].is_object()
                && position(&line["all"]) >= position(&sent)
        },
    );
    follower.saw(PAIR, "a notice that b is back", |line| {
        line["kind"] == "back_in_reach" && line["member"] == b_id.as_str()
    });
    within(PAIR, "a no longer reports b", || {
        let status = a.cli(&["status"]);
        !out_of_reach(&status, "out_of_reach", &b_id)
            && !out_of_reach(&status, "groups_out_of_reach", &group)
    });
}

#[test]
fn two_members_who_both_moved_meet_directly_through_a_third_they_share() {
    let dirs = profiles(3);
    let (a_dir, b_dir, c_dir) = (dirs[0].path(), dirs[1].path(), dirs[2].path());
    let a = Daemon::start(a_dir, &[]);
    let b = Daemon::start(b_dir, &[]);
    let c = Daemon::start(c_dir, &[]);
    meet(&[&a, &b, &c]);
    let group = group_of(&[&a, &b, &c], "trio");
    delivered(&a, &b, &group, "before", SETUP, "first message");
    within(SETUP, "c has it too", || {
        c.texts(&group).iter().any(|t| t == "before")
    });

    // A and B restart on new ports; C keeps its port. Neither A nor B can know the other's
    // new address but through C.
    a.stop();
    b.stop();
    let a = Daemon::start(a_dir, &NEW_PORTS);
    let b = Daemon::start(b_dir, &NEW_PORTS);
    let up = Instant::now();
    delivered(
        &a,
        &b,
        &group,
        "after moving",
        TRIO,
        "a to b after both moved (c may relay)",
    );
    // Within 10 s of both being up they must know where the other is now: from then on C
    // sleeps, and A and B must reach each other alone.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(up.elapsed()));
    c.signal("-STOP");
    delivered(&a, &b, &group, "direct a", TRIO, "a to b with c asleep");
    delivered(&b, &a, &group, "direct b", TRIO, "b to a with c asleep");
    c.signal("-CONT");
}

/// Twenty daemons in one group, created by the first from the others' cards: the members know
/// no one's address but the creator's, and find each other through it. While five of them
/// write, a third of the nodes (the creator among them) restart on new ports, twice. Every message reaches every
/// member, each once.
#[test]
fn twenty_members_with_a_third_restarting_on_new_ports_all_get_everything_once() {
    const NODES: usize = 20;
    const RESTARTING: usize = NODES / 3;
    const WRITERS: usize = 5;
    let dirs = profiles(NODES);
    let mut daemons: Vec<Option<Daemon>> = dirs
        .iter()
        .map(|d| Some(Daemon::start(d.path(), &[])))
        .collect();
    let creator = daemons[0].as_ref().unwrap();
    let mut args = vec!["group".to_owned(), "create".to_owned(), "twenty".to_owned()];
    for (j, daemon) in daemons.iter().enumerate().skip(1) {
        let card = daemon.as_ref().unwrap().card();
        let name = format!("peer{j}");
        creator.cli(&["contact", "add", &card, "--name", &name]);
        args.extend(["--member".to_owned(), name]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let group = creator.cli(&args)["id"].as_str().unwrap().to_owned();
    for daemon in daemons.iter().skip(1) {
        joined(daemon.as_ref().unwrap(), &group);
    }
    let mut sent: Vec<String> = Vec::new();
    // The restarting third includes the creator, the only node whose card the others had:
    // after it moves, the members reach each other with what they learnt of each other.
    let restarting: Vec<usize> = (0..NODES).filter(|i| i % 3 == 0).take(RESTARTING).collect();
    let writers: Vec<usize> = (0..NODES)
        .filter(|i| !restarting.contains(i))
        .take(WRITERS)
        .collect();
    for round in 0..3 {
        for &w in &writers {
            let text = format!("round {round} from {w}");
            daemons[w].as_ref().unwrap().cli(&["send", &group, &text]);
            sent.push(text);
        }
        if round < 2 {
            // A third restart on new ports, while the others go on.
            for &i in &restarting {
                daemons[i].take().unwrap().stop();
                daemons[i] = Some(Daemon::start(dirs[i].path(), &NEW_PORTS));
            }
        }
    }
    let start = Instant::now();
    for (i, daemon) in daemons.iter().enumerate() {
        let daemon = daemon.as_ref().unwrap();
        within(SETUP, &format!("member {i} has every message"), || {
            let texts = daemon.texts(&group);
            sent.iter().all(|t| texts.contains(t))
        });
        let texts = daemon.texts(&group);
        for text in &sent {
            let count = texts.iter().filter(|t| *t == text).count();
            assert_eq!(count, 1, "member {i}: {text:?} {count} times");
        }
    }
    println!(
        "every member had all {} messages {} ms after the last send",
        sent.len(),
        start.elapsed().as_millis()
    );
}
