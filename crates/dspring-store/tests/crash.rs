//! Crash test: a child process (this binary, re-run in child mode) is member A of a group and
//! commits every step to its store; the parent plays the other members and the network, and
//! kills the child with SIGKILL at random moments. After each kill it checks A's store, and at
//! the end that the group still works both ways.
//!
//! `DSPRING_CRASH_CYCLES` sets the number of kills (default 200), `DSPRING_CRASH_SEED` the seed.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use dspring_proto::envelope::{Envelope, Position, Unverified};
use dspring_proto::ids::ShortId;
use dspring_proto::{Device, Event, Group, GroupId, MemberId, Staged};
use dspring_store::Store;
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

const CHILD_ENV: &str = "DSPRING_CRASH_CHILD_DIR";
const GROUP: GroupId = GroupId([5; 32]);
/// Protocol lines from the child start with this, so that nothing else is mistaken for one.
const TAG: &str = "@@";
/// Membership changes (adds and removes of newcomers) in one run. The core keeps the whole
/// membership history (not yet garbage-collected), so the group state and every welcome grow
/// with each change; unbounded churn makes a 10,000-cycle run quadratic (a 6 MB state after
/// 2,000 changes).
const MAX_MEMBERSHIP_CHANGES: u32 = 60;

fn main() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child(Path::new(&dir));
        return;
    }
    let cycles: u32 = env_or("DSPRING_CRASH_CYCLES", 200);
    let seed: u64 = env_or("DSPRING_CRASH_SEED", 1);
    let started = Instant::now();
    let report = parent(cycles, seed);
    println!(
        "crash test: {cycles} SIGKILL cycles (seed {seed}) in {:.1} s: {report}",
        started.elapsed().as_secs_f64()
    );
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

// ----- the child: member A on a real store ------------------------------------------------

/// Reads operations from stdin, one per line, and for each: runs it on the core, commits the
/// result, reports `OK <n>`, then hands out the outbox (`O <hex>`) and marks it sent.
fn child(dir: &Path) {
    let mut store = Store::open(dir, None).unwrap();
    let device = store.device().unwrap().unwrap();
    let mut group = store.group(&GROUP).unwrap().unwrap();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        ^ u64::from(std::process::id());
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let out = std::io::stdout();
    let flush_outbox = |store: &mut Store| {
        let entries = store.outbox(1000).unwrap();
        let mut out = out.lock();
        for entry in &entries {
            writeln!(out, "{TAG} O {}", hex(&entry.bytes)).unwrap();
        }
        out.flush().unwrap();
        let ids: Vec<u64> = entries.iter().map(|e| e.id).collect();
        store.outbox_sent(&ids).unwrap();
    };
    flush_outbox(&mut store);
    {
        let mut out = out.lock();
        writeln!(out, "{TAG} READY").unwrap();
        out.flush().unwrap();
    }
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let mut parts = line.splitn(3, ' ');
        let op = parts.next().unwrap();
        let n: u64 = parts.next().unwrap().parse().unwrap();
        let arg = parts.next().unwrap_or("");
        let staged = match op {
            "R" => match group.receive(&device, unhex(arg), &mut rng) {
                Ok(staged) => staged,
                Err(e) => panic!("child: receive failed: {e}"),
            },
            "S" => group.send(arg.as_bytes()).unwrap(),
            "U" => group.update(&mut rng).unwrap(),
            other => panic!("child: unknown op {other}"),
        };
        store.apply(&staged).unwrap();
        group = staged.group;
        {
            let mut out = out.lock();
            writeln!(out, "{TAG} OK {n}").unwrap();
            out.flush().unwrap();
        }
        flush_outbox(&mut store);
    }
}

// ----- the parent: the other members, the network, the killer -----------------------------

#[derive(Clone, Debug)]
enum Op {
    Receive(Vec<u8>),
    Send(String),
    Update,
}

struct Peer {
    device: Device,
    group: Group,
    /// Texts decrypted, with counts.
    decrypted: BTreeMap<String, u32>,
}

struct Parent {
    rng: ChaCha20Rng,
    dir: PathBuf,
    a: MemberId,
    /// Parent-side members: 0 = B and 1 = C stay throughout; others come and go.
    peers: Vec<Peer>,
    /// Operations for the child not yet reported done, in order, with their numbers.
    pending: VecDeque<(u64, Op)>,
    next_op: u64,
    /// Texts of A's messages known committed (reported, or found in its store).
    a_sent: Vec<String>,
    /// Texts of B's and C's messages.
    others_sent: Vec<String>,
    /// A's envelopes seen on the network, by position: two different envelopes at one
    /// position would mean a reused key and nonce.
    a_positions: HashMap<(ShortId, PositionKey), Vec<u8>>,
    /// What has been read of A's store so far.
    scan: Scan,
    membership_changes: u32,
    stats: Stats,
}

#[derive(Default)]
struct Scan {
    message_cursor: u64,
    log_cursor: u64,
    event_cursor: u64,
    sent: std::collections::HashSet<String>,
    received: std::collections::HashSet<String>,
    own_positions: std::collections::HashSet<String>,
    own_application: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum PositionKey {
    Control(u64),
    Application(u64, u64),
}

#[derive(Default, Debug)]
struct Stats {
    kills: u32,
    kills_before_ready: u32,
    ops_reported: u64,
    ops_committed_unreported: u64,
    ops_lost_uncommitted: u64,
    a_envelopes: u64,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} kills ({} during start-up), {} ops reported committed, {} committed but killed \
             before reporting, {} sends pending and uncommitted at a kill (summed over kills; redone), {} envelopes from the child",
            self.kills,
            self.kills_before_ready,
            self.ops_reported,
            self.ops_committed_unreported,
            self.ops_lost_uncommitted,
            self.a_envelopes
        )
    }
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

fn spawn(dir: &Path) -> Running {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_ENV, dir)
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
    Running {
        child,
        stdin,
        lines,
    }
}

fn parent(cycles: u32, seed: u64) -> Stats {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let a_device = Device::generate(2, &mut rng);
    let b = Device::generate(2, &mut rng);
    let c = Device::generate(2, &mut rng);
    // B creates the group with A and C; A's join is committed to A's store here, before the
    // child first runs.
    let created = Group::create(
        &b,
        GROUP,
        &[a_device.bundle(None), c.bundle(None)],
        &mut rng,
    )
    .unwrap();
    let create = created.outbox[0].bytes.clone();
    let c_joined = Group::join(&c, GROUP, create.clone(), &mut rng).unwrap();
    let mut parent = Parent {
        rng,
        dir: dir.clone(),
        a: a_device.id(),
        peers: vec![
            Peer {
                device: b,
                group: created.group,
                decrypted: BTreeMap::new(),
            },
            Peer {
                device: c,
                group: c_joined.group.clone(),
                decrypted: BTreeMap::new(),
            },
        ],
        pending: VecDeque::new(),
        next_op: 1,
        a_sent: Vec::new(),
        others_sent: Vec::new(),
        a_positions: HashMap::new(),
        scan: Scan::default(),
        membership_changes: 0,
        stats: Stats::default(),
    };
    parent.after_peer_step(1, &c_joined);
    {
        let mut store = Store::open(&dir, None).unwrap();
        store.create_device(&a_device).unwrap();
        let joined = Group::join(&a_device, GROUP, create, &mut parent.rng).unwrap();
        store.apply(&joined).unwrap();
    }

    for cycle in 0..cycles {
        parent.cycle(cycle);
        parent.check_store();
    }
    parent.finish();
    parent.stats
}

impl Parent {
    fn new_op(&mut self, op: Op) {
        self.pending.push_back((self.next_op, op));
        self.next_op += 1;
    }

    /// A parent-side member's step: deliver its envelopes to the other parent-side members at
    /// once and queue them for A.
    fn after_peer_step(&mut self, who: usize, staged: &Staged) {
        for out in &staged.outbox {
            self.new_op(Op::Receive(out.bytes.clone()));
            self.deliver_to_peers(Some(who), &out.bytes, out.welcome_for);
        }
    }

    fn deliver_to_peers(&mut self, from: Option<usize>, bytes: &[u8], welcome: Option<MemberId>) {
        let mut i = 0;
        while i < self.peers.len() {
            if Some(i) == from || welcome == Some(self.peers[i].device.id()) {
                i += 1;
                continue;
            }
            let peer = &self.peers[i];
            let staged = peer
                .group
                .receive(&peer.device, bytes.to_vec(), &mut self.rng)
                .unwrap_or_else(|e| panic!("peer {i} refused an envelope: {e}"));
            self.record(i, &staged);
            self.peers[i].group = staged.group.clone();
            self.after_peer_step(i, &staged);
            i += 1;
        }
    }

    fn record(&mut self, who: usize, staged: &Staged) {
        for event in &staged.events {
            match event {
                Event::Message { plaintext, .. } => {
                    let text = String::from_utf8(plaintext.clone()).unwrap();
                    *self.peers[who].decrypted.entry(text).or_default() += 1;
                }
                Event::Rejected { reason, .. } => panic!("peer {who} rejected: {reason}"),
                _ => {}
            }
        }
    }

    /// The other members act a little, then the child runs the pending operations and is
    /// killed at a random moment.
    fn cycle(&mut self, cycle: u32) {
        for _ in 0..self.rng.next_u32() % 4 {
            self.peer_action(cycle);
        }
        // New work only while the backlog is small, so that each run gets through it.
        let new_ops = if self.pending.len() < 16 {
            1 + self.rng.next_u32() % 6
        } else {
            0
        };
        for _ in 0..new_ops {
            let n = self.next_op;
            let op = match self.rng.next_u32() % 10 {
                0 => Op::Update,
                _ => Op::Send(format!("a-{n}")),
            };
            self.new_op(op);
        }

        let mut running = spawn(&self.dir);
        let kill_during_start = self.rng.next_u32().is_multiple_of(10);
        let delay = Duration::from_micros(u64::from(self.rng.next_u32() % 30_000));
        let mut reported = Vec::new();
        let mut envelopes = Vec::new();
        if kill_during_start {
            std::thread::sleep(delay / 4);
            self.stats.kills_before_ready += 1;
        } else {
            // Wait for start-up, then stream every pending operation and kill mid-stream.
            loop {
                match running.lines.recv_timeout(Duration::from_secs(30)) {
                    Ok(line) if line == "READY" => break,
                    Ok(line) => parse_line(&line, &mut reported, &mut envelopes),
                    Err(e) => panic!("child did not start: {e:?}"),
                }
            }
            let script = self.script();
            // The child may already be dead-set on exiting: ignore a broken pipe.
            let _ = running.stdin.write_all(script.as_bytes());
            let _ = running.stdin.flush();
            std::thread::sleep(delay);
        }
        running.child.kill().unwrap();
        running.child.wait().unwrap();
        self.stats.kills += 1;
        loop {
            match running.lines.recv_timeout(Duration::from_secs(5)) {
                Ok(line) => parse_line(&line, &mut reported, &mut envelopes),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("child output did not end"),
            }
        }
        self.settle(&reported, envelopes);
    }

    /// Takes what the child reported before it died: drops reported operations, learns which
    /// unreported ones committed, and delivers the child's envelopes.
    fn settle(&mut self, reported: &[u64], envelopes: Vec<Vec<u8>>) {
        // Reported operations form a prefix of the pending queue, in order.
        for n in reported {
            let (first, op) = self.pending.pop_front().expect("reported an unknown op");
            assert_eq!(first, *n, "operations reported out of order");
            self.stats.ops_reported += 1;
            if let Op::Send(text) = op {
                self.a_sent.push(text);
            }
        }
        // Unreported sends: the store tells whether they committed. Committed ones must not be
        // redone (that would be a second message); the others are redone.
        self.scan_store();
        let sent_in_store = self.scan.sent.clone();
        let mut still = VecDeque::new();
        for (n, op) in self.pending.drain(..) {
            match &op {
                Op::Send(text) if sent_in_store.contains(text) => {
                    self.stats.ops_committed_unreported += 1;
                    self.a_sent.push(text.clone());
                }
                // Receives are redone (the core drops replays), updates too (another update
                // is harmless).
                _ => {
                    if matches!(op, Op::Send(_)) {
                        self.stats.ops_lost_uncommitted += 1;
                    }
                    still.push_back((n, op));
                }
            }
        }
        self.pending = still;
        for bytes in envelopes {
            self.deliver_from_a(bytes);
        }
    }

    fn deliver_from_a(&mut self, bytes: Vec<u8>) {
        let envelope = Unverified::<Envelope>::parse(bytes.clone()).unwrap();
        let key = match envelope.position() {
            Position::Control { seq, .. } => PositionKey::Control(*seq),
            Position::Application { epoch, index } => PositionKey::Application(*epoch, *index),
        };
        let previous = self
            .a_positions
            .entry((envelope.sender(), key))
            .or_insert_with(|| bytes.clone());
        assert_eq!(
            *previous, bytes,
            "A sent two different envelopes at {key:?}: a key and nonce were reused"
        );
        self.stats.a_envelopes += 1;
        self.deliver_to_peers(None, &bytes, None);
    }

    fn peer_action(&mut self, cycle: u32) {
        let who = (self.rng.next_u32() % 2) as usize;
        match self.rng.next_u32() % 12 {
            0 => {
                let staged = self.peers[who].group.update(&mut self.rng).unwrap();
                self.peers[who].group = staged.group.clone();
                self.after_peer_step(who, &staged);
            }
            1 if self.peers.len() < 5 && self.membership_changes < MAX_MEMBERSHIP_CHANGES => {
                self.membership_changes += 1;
                // B or C adds a newcomer, who joins from the welcome before the others see the
                // add, so that it also gets their acks.
                let newcomer = Device::generate(1, &mut self.rng);
                let staged = self.peers[who]
                    .group
                    .add(
                        &self.peers[who].device,
                        &newcomer.bundle(None),
                        &mut self.rng,
                    )
                    .unwrap();
                self.peers[who].group = staged.group.clone();
                let add = staged.outbox[0].bytes.clone();
                let joined = Group::join(&newcomer, GROUP, add, &mut self.rng).unwrap();
                self.peers.push(Peer {
                    device: newcomer,
                    group: joined.group.clone(),
                    decrypted: BTreeMap::new(),
                });
                let new_index = self.peers.len() - 1;
                self.after_peer_step(who, &staged);
                self.after_peer_step(new_index, &joined);
            }
            2 if self.peers.len() > 2 && self.membership_changes < MAX_MEMBERSHIP_CHANGES => {
                self.membership_changes += 1;
                // A newcomer leaves again (removed by B or C).
                let gone = self.peers.len() - 1;
                let member = self.peers[gone].device.id();
                let staged = self.peers[who].group.remove(member, &mut self.rng).unwrap();
                self.peers[who].group = staged.group.clone();
                self.peers.pop();
                self.after_peer_step(who, &staged);
            }
            _ => {
                let text = format!("{}-{cycle}-{}", ["b", "c"][who], self.rng.next_u32());
                let staged = self.peers[who].group.send(text.as_bytes()).unwrap();
                self.peers[who].group = staged.group.clone();
                self.others_sent.push(text);
                self.after_peer_step(who, &staged);
            }
        }
    }

    /// Reads what A's store gained since the last scan: sent and received texts (each must
    /// appear once), log envelopes (A's own at distinct positions), event cursors (increasing).
    fn scan_store(&mut self) {
        let store = Store::open(&self.dir, None).unwrap();
        let group = store.group(&GROUP).unwrap().expect("group state lost");
        assert!(group.is_active());
        loop {
            let page = store
                .messages(&GROUP, self.scan.message_cursor, 1000)
                .unwrap();
            let Some(last) = page.last() else { break };
            self.scan.message_cursor = last.cursor;
            for stored in page {
                let (texts, plaintext) = match stored.event {
                    Event::Sent { plaintext, .. } => (&mut self.scan.sent, plaintext),
                    Event::Message { plaintext, .. } => (&mut self.scan.received, plaintext),
                    other => panic!("not a message: {other:?}"),
                };
                let text = String::from_utf8(plaintext).unwrap();
                assert!(texts.insert(text.clone()), "message {text} stored twice");
            }
        }
        loop {
            let page = store.log_page(&GROUP, self.scan.log_cursor, 1000).unwrap();
            let Some(last) = page.last() else { break };
            self.scan.log_cursor = last.id;
            for entry in page {
                let envelope = Unverified::<Envelope>::parse(entry.bytes).unwrap();
                if envelope.sender() == self.a.short() {
                    assert!(
                        self.scan
                            .own_positions
                            .insert(format!("{:?}", envelope.position())),
                        "two envelopes of A at one position in the log"
                    );
                    if matches!(envelope.position(), Position::Application { .. }) {
                        self.scan.own_application += 1;
                    }
                }
            }
        }
        loop {
            let events = store.events_since(self.scan.event_cursor, 1000).unwrap();
            let Some(last) = events.last() else { break };
            assert!(events.first().unwrap().cursor > self.scan.event_cursor);
            assert!(events.windows(2).all(|w| w[0].cursor < w[1].cursor));
            self.scan.event_cursor = last.cursor;
        }
        // A message without its envelope, or the reverse, would be a half-applied step.
        assert_eq!(
            self.scan.own_application,
            self.scan.sent.len(),
            "sent messages and logged envelopes differ"
        );
    }

    /// After a kill: everything reported committed is there, once; nothing else is.
    fn check_store(&mut self) {
        self.scan_store();
        for text in &self.a_sent {
            assert!(
                self.scan.sent.contains(text),
                "committed message {text} missing"
            );
        }
        assert_eq!(
            self.scan.sent.len(),
            self.a_sent.len(),
            "a message committed that was not known"
        );
    }

    /// No more kills: run what is pending until nothing is (A's envelopes cause replies to
    /// A), then check that everyone read everything once.
    fn finish(&mut self) {
        self.new_op(Op::Send("a-final".into()));
        while !self.pending.is_empty() {
            self.run_to_completion();
        }
        // B and C read every message A committed, exactly once.
        for who in 0..2 {
            for text in &self.a_sent {
                assert_eq!(
                    self.peers[who].decrypted.get(text),
                    Some(&1),
                    "peer {who} did not read {text} exactly once"
                );
            }
            assert_eq!(self.peers[who].group.buffered(), 0);
        }
        // A read every message of B and C exactly once.
        self.check_store();
        for text in &self.others_sent {
            assert!(self.scan.received.contains(text), "A did not read {text}");
        }
        let store = Store::open(&self.dir, None).unwrap();
        let group = store.group(&GROUP).unwrap().unwrap();
        assert_eq!(group.buffered(), 0);
        let mut members = group.members();
        members.remove(&self.a);
        let peers: std::collections::BTreeSet<MemberId> =
            self.peers.iter().map(|p| p.device.id()).collect();
        assert_eq!(members, peers, "membership diverged");
    }
}

impl Parent {
    /// The pending operations as the child's input lines.
    fn script(&self) -> String {
        let mut script = String::new();
        for (n, op) in &self.pending {
            match op {
                Op::Receive(bytes) => script += &format!("R {n} {}\n", hex(bytes)),
                Op::Send(text) => script += &format!("S {n} {text}\n"),
                Op::Update => script += &format!("U {n}\n"),
            }
        }
        script
    }

    fn run_to_completion(&mut self) {
        let mut running = spawn(&self.dir);
        let mut reported = Vec::new();
        let mut envelopes = Vec::new();
        let script = self.script();
        running.stdin.write_all(script.as_bytes()).unwrap();
        // End of input: the child finishes every operation and exits.
        drop(running.stdin);
        loop {
            match running.lines.recv_timeout(Duration::from_secs(60)) {
                Ok(line) => parse_line(&line, &mut reported, &mut envelopes),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => panic!("child stalled"),
            }
        }
        assert!(running.child.wait().unwrap().success(), "child failed");
        assert_eq!(
            reported.len(),
            self.pending.len(),
            "child skipped operations"
        );
        self.settle(&reported, envelopes);
    }
}

fn parse_line(line: &str, reported: &mut Vec<u64>, envelopes: &mut Vec<Vec<u8>>) {
    if let Some(n) = line.strip_prefix("OK ") {
        reported.push(n.parse().unwrap());
    } else if let Some(bytes) = line.strip_prefix("O ") {
        envelopes.push(unhex(bytes));
    }
}
