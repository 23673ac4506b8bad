//! `dspring-reachbench`: how fast peers reach each other in real-life conditions. Real nodes
//! in this process (libp2p on loopback, TCP and QUIC, a SQLite file and a thread each), each in
//! its own temporary data directory, mDNS off and no bootstrap node: there is no DHT in common,
//! so nodes know each other only from contact cards and from what they learn at runtime. A
//! restart is `stop` then `Node::start` on the same data directory, on new ports (port 0).
//!
//! Figures (each time as p50 / p90 over the repetitions):
//! 1. one peer restarts on a new port: from its start until a message it sends is read;
//! 2. two peers restart on new ports, sharing a third that stayed up: the same;
//! 3. after restarts, the group idle at both and their connections closed: a message's time;
//! 4. a member whose group went idle, with a mailbox: from the send until the member reads it,
//!    once with the sender able to dial the member and once with the member reachable only
//!    through its mailbox (it blocks the sender);
//! 5. a node in 1,000 idle two-member groups: heap and RSS per idle group, bytes sent per
//!    idle group and second (the heap counter and RSS are the process's: this figure runs
//!    first, with only its two nodes alive);
//! 6. the sender's upload per message (in message sizes) in groups of 16, 64 and 256 members;
//!    a size this machine cannot keep up with (every node is in this one process) is reported
//!    and replaced by half of it.
//!
//! Usage: `dspring-reachbench [--quick] [--repeats N] [--idle-groups N] [--sizes 16,64,256]
//! [--only 1,2,...]`. Prints one table (figure, measured, target, met?). Exits 0 when every
//! figure was measured, whether or not it met its target; non-zero when the benchmark itself
//! failed (a node did not start, a group was never joined). Linux only (memory from
//! `/proc/self`).

// Node indices in figure 6 come from `0..size` with size ≥ 2 (checked options).
#![allow(clippy::indexing_slicing)]
#![forbid(unsafe_code)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use dspring_node::{
    DEFAULT_IDLE_GROUP_AFTER, Event, GroupId, MailboxConfig, Multiaddr, Node, NodeConfig,
    NodeError, Protocol,
};

mod common;

use common::{
    Arrivals, DRAIN, HEAP, HEAP_SAMPLING, MESSAGE, SETTLE_LIMIT, SETTLE_STEP, SETTLED_CORES,
    cores_over, delivered, follow, percentile, rss, send_steadily, wait_for,
};

/// How often a receiver's messages are read while a message is on its way.
const POLL: Duration = Duration::from_millis(5);
/// A message not read after this counts as not arrived ("> 60 s").
const DELIVERY_LIMIT: Duration = Duration::from_secs(60);
/// The idle time of figures 3 to 5: a group with no envelope for this long goes idle.
const SHORT_IDLE: Duration = Duration::from_secs(2);
/// dspring-net's `IDLE_CONNECTION_TIMEOUT` (not exported): a connection with no stream open
/// closes after this.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for a group to go idle and its connections to close before measuring
/// anyway (and saying so): the idle time, the connection timeout, and a margin.
const IDLE_LIMIT: Duration = SHORT_IDLE
    .saturating_add(IDLE_CONNECTION_TIMEOUT)
    .saturating_add(Duration::from_secs(20));
/// A pause between repetitions, so that each restart follows a finished exchange.
const BETWEEN: Duration = Duration::from_secs(1);
/// Figure 4 with the member reachable only through its mailbox: after this many messages in
/// a row have not arrived within [`DELIVERY_LIMIT`], the remaining repetitions are skipped.
const MAILBOX_GIVE_UP: usize = 3;
/// Figure 5: after the groups went idle, time for the nodes to give freed pages back (every
/// node does at most every 10 s: dspring-node's `memory.rs`) before memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(12);
/// Figure 5: the idle groups' creation and joining may take this long.
const IDLE_GROUPS_LIMIT: Duration = Duration::from_secs(900);
/// Figure 6: messages from the one sender, and their rate.
const UPLOAD_MESSAGES: usize = 20;
const UPLOAD_RATE: f64 = 10.0;
/// Figure 6: the share of the measured messages' deliveries that must arrive within
/// [`DRAIN`] for a size to count as fitting on this machine.
const FIT_DELIVERY: f64 = 0.99;
/// Figure 6: the members' first connection round is at their second maintenance tick (10 s
/// in); the mesh is measured after it (as in `dspring-netbench`).
const FIRST_ROUND: Duration = Duration::from_secs(12);

/// Targets.
const RESTART_TARGET: Duration = Duration::from_secs(2);
const WAKE_TARGET: Duration = Duration::from_secs(1);
const MAILBOX_TARGET: Duration = Duration::from_secs(1);
const IDLE_GROUP_BYTES_TARGET: f64 = 4096.0;
const UPLOAD_SPREAD_TARGET: f64 = 0.20;

struct Options {
    quick: bool,
    repeats: usize,
    idle_groups: usize,
    idle_window: Duration,
    sizes: Vec<usize>,
    /// Figures to run (all when empty).
    only: Vec<u8>,
}

impl Options {
    fn runs(&self, figure: u8) -> bool {
        self.only.is_empty() || self.only.contains(&figure)
    }
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        quick: false,
        repeats: 20,
        idle_groups: 1000,
        idle_window: Duration::from_secs(30),
        sizes: vec![16, 64, 256],
        only: Vec::new(),
    };
    let list = |name: &str, value: Option<String>| -> Result<Vec<usize>, String> {
        value
            .ok_or(format!("{name} needs a comma-separated list"))?
            .split(',')
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|e| format!("{name}: {e}"))
            })
            .collect()
    };
    let number = |name: &str, value: Option<String>| -> Result<usize, String> {
        value
            .ok_or(format!("{name} needs a number"))?
            .parse::<usize>()
            .map_err(|e| format!("{name}: {e}"))
    };
    // What was given explicitly wins over --quick, wherever it stands.
    let (mut repeats, mut idle_groups, mut sizes) = (None, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--repeats" => repeats = Some(number("--repeats", args.next())?),
            "--idle-groups" => idle_groups = Some(number("--idle-groups", args.next())?),
            "--sizes" => sizes = Some(list("--sizes", args.next())?),
            "--only" => {
                options.only = list("--only", args.next())?
                    .into_iter()
                    .map(|f| u8::try_from(f).unwrap_or(0))
                    .collect();
            }
            "-h" | "--help" => {
                return Err("usage: dspring-reachbench [--quick] [--repeats N] \
                     [--idle-groups N] [--sizes 16,64,256] [--only 1,2,3,4,5,6]"
                    .into());
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if options.quick {
        options.repeats = 5;
        options.idle_groups = 100;
        options.idle_window = Duration::from_secs(10);
        options.sizes = vec![8, 16, 32];
    }
    options.repeats = repeats.unwrap_or(options.repeats);
    options.idle_groups = idle_groups.unwrap_or(options.idle_groups);
    options.sizes = sizes.unwrap_or(options.sizes);
    if options.repeats == 0 || options.idle_groups == 0 {
        return Err("--repeats and --idle-groups must be at least 1".into());
    }
    if options.sizes.iter().any(|&s| s < 2) {
        return Err("every group size in --sizes must be at least 2".into());
    }
    if options.only.iter().any(|f| !(1..=6).contains(f)) {
        return Err("--only takes figure numbers 1 to 6".into());
    }
    Ok(options)
}

fn error(e: NodeError) -> String {
    e.to_string()
}

/// A node's configuration here: loopback, a new TCP and QUIC port at every start, no mDNS,
/// no bootstrap node.
fn config(dir: &std::path::Path, idle: Duration, mailbox: bool) -> Result<NodeConfig, String> {
    let mut config = NodeConfig::new(dir);
    config.listen = ["/ip4/127.0.0.1/tcp/0", "/ip4/127.0.0.1/udp/0/quic-v1"]
        .iter()
        .map(|a| a.parse().map_err(|e| format!("{a}: {e}")))
        .collect::<Result<_, String>>()?;
    config.mdns = false;
    config.bootstrap = Vec::new();
    config.idle_group_after = idle;
    config.mailbox = mailbox.then(MailboxConfig::default);
    Ok(config)
}

/// A node with its data directory, so that it can be restarted on it.
struct Peer {
    dir: tempfile::TempDir,
    node: Node,
    idle: Duration,
    mailbox: bool,
}

impl Peer {
    async fn start(idle: Duration, mailbox: bool) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let node = Node::start(config(dir.path(), idle, mailbox)?)
            .await
            .map_err(|e| format!("a node did not start: {e}"))?;
        Ok(Self {
            dir,
            node,
            idle,
            mailbox,
        })
    }

    async fn stop(&self) -> Result<(), String> {
        self.node.stop().await.map_err(error)
    }

    /// Starts the stopped node again on its data directory, on new ports.
    async fn start_again(&mut self) -> Result<(), String> {
        let config = config(self.dir.path(), self.idle, self.mailbox)?;
        self.start_with(config).await
    }

    /// The addresses the node listens on now, as listen addresses: to start it again on the
    /// same ports.
    async fn listening(&self) -> Result<Vec<Multiaddr>, String> {
        let mut listen: Vec<Multiaddr> = Vec::new();
        for address in self.node.dial_addresses().await.map_err(error)? {
            let address: Multiaddr = address
                .iter()
                .filter(|p| !matches!(p, Protocol::P2p(_)))
                .collect();
            if !listen.contains(&address) {
                listen.push(address);
            }
        }
        Ok(listen)
    }

    /// Starts the stopped node again on its data directory, listening on `listen` (the
    /// ports it had: [`Peer::listening`]).
    async fn start_again_on(&mut self, listen: Vec<Multiaddr>) -> Result<(), String> {
        let mut config = config(self.dir.path(), self.idle, self.mailbox)?;
        config.listen = listen;
        self.start_with(config).await
    }

    async fn start_with(&mut self, config: NodeConfig) -> Result<(), String> {
        self.node = Node::start(config)
            .await
            .map_err(|e| format!("a node did not start again: {e}"))?;
        Ok(())
    }
}

/// The TCP port a node listens on (for the progress lines: every start takes a new one).
async fn tcp_port(node: &Node) -> Option<u16> {
    node.dial_addresses()
        .await
        .ok()?
        .iter()
        .flat_map(|a| a.iter())
        .find_map(|p| match p {
            Protocol::Tcp(port) => Some(port),
            _ => None,
        })
}

async fn stop_all(peers: &[&Peer]) {
    for peer in peers {
        let _ = peer.stop().await;
    }
}

/// Every node adds every other node's contact card.
async fn introduce(nodes: &[&Node]) -> Result<(), String> {
    for (i, node) in nodes.iter().enumerate() {
        for (j, other) in nodes.iter().enumerate() {
            if i != j {
                let card = other.contact().await.map_err(error)?;
                node.add_contact(card, &format!("node {j}"))
                    .await
                    .map_err(error)?;
            }
        }
    }
    Ok(())
}

/// `creator` makes a group of itself and `members`; returns once every member lists it.
async fn group_of(creator: &Node, members: &[&Node], name: &str) -> Result<GroupId, String> {
    let ids: Vec<_> = members.iter().map(|m| m.id()).collect();
    let group = creator.create_group(name, &ids).await.map_err(error)?;
    for member in members {
        wait_for("a member joins the group", async || {
            member.groups().await.is_ok_and(|gs| gs.contains(&group))
        })
        .await?;
    }
    Ok(group)
}

/// The cursor of the last message a node holds in a group.
async fn latest(node: &Node, group: GroupId) -> Result<u64, String> {
    let mut after = 0;
    loop {
        let page = node.messages(group, after, 1000).await.map_err(error)?;
        match page.last() {
            Some(last) => after = last.cursor,
            None => return Ok(after),
        }
    }
}

/// Whether `node` holds a message `text` received after cursor `mark`.
async fn has(node: &Node, group: GroupId, mark: u64, text: &[u8]) -> Result<bool, String> {
    let page = node.messages(group, mark, 1000).await.map_err(error)?;
    Ok(page
        .iter()
        .any(|m| matches!(&m.event, Event::Message { plaintext, .. } if plaintext == text)))
}

/// Sends `text` from `sender`, then reads `receiver`'s messages every [`POLL`] until it holds
/// it: the time from `since`, or `None` after [`DELIVERY_LIMIT`].
async fn deliver(
    sender: &Node,
    receiver: &Node,
    group: GroupId,
    mark: u64,
    since: Instant,
    text: &str,
) -> Result<Option<Duration>, String> {
    sender
        .send(group, text.as_bytes())
        .await
        .map_err(|e| format!("send: {e}"))?;
    loop {
        if has(receiver, group, mark, text.as_bytes()).await? {
            return Ok(Some(since.elapsed()));
        }
        if since.elapsed() > DELIVERY_LIMIT {
            return Ok(None);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// A first message from `sender` that every one of `receivers` must read (setup).
async fn first_message(sender: &Node, receivers: &[&Node], group: GroupId) -> Result<(), String> {
    let text = b"hello, everyone";
    sender.send(group, text).await.map_err(error)?;
    for receiver in receivers {
        wait_for("the first message arrives", async || {
            has(receiver, group, 0, text).await.unwrap_or(false)
        })
        .await?;
    }
    Ok(())
}

/// Waits until the nodes in `busy` have no busy group and the open connections of `watched`
/// (in order) pass `closed`, at most [`IDLE_LIMIT`]; returns whether that happened, and the
/// connections last read.
async fn wait_idle(
    busy: &[&Node],
    watched: &[&Node],
    closed: fn(&[u32]) -> bool,
) -> Result<(bool, Vec<u32>), String> {
    let deadline = Instant::now() + IDLE_LIMIT;
    loop {
        let mut idle = true;
        for node in busy {
            idle &= node.status().await.map_err(error)?.busy_groups == 0;
        }
        let mut connections = Vec::with_capacity(watched.len());
        for node in watched {
            connections.push(node.network_status().await.map_err(error)?.connections);
        }
        if idle && closed(&connections) {
            return Ok((true, connections));
        }
        if Instant::now() > deadline {
            return Ok((false, connections));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// For [`wait_idle`]: the one node watched has no connection open.
fn none_open(connections: &[u32]) -> bool {
    connections.iter().all(|&c| c == 0)
}

/// For [`wait_idle`] in figure 4, watching S, M and X: no connection between S and M. Each
/// connection counts at both its ends, so S's and M's together exceed X's by twice theirs.
fn no_sender_to_member(connections: &[u32]) -> bool {
    match connections {
        [s, m, x] => s + m <= *x,
        _ => false,
    }
}

/// The times of one figure's repetitions, seconds; a message that never arrived counts as
/// infinite (it sorts last).
#[derive(Default)]
struct Times(Vec<f64>);

impl Times {
    fn push(&mut self, took: Option<Duration>) {
        self.0.push(took.map_or(f64::INFINITY, |d| d.as_secs_f64()));
    }

    fn percentile(&self, p: f64) -> f64 {
        let mut sorted = self.0.clone();
        sorted.sort_by(f64::total_cmp);
        percentile(&sorted, p)
    }

    fn missed(&self) -> usize {
        self.0.iter().filter(|t| t.is_infinite()).count()
    }

    fn summary(&self) -> String {
        let mut text = format!(
            "p50 {} / p90 {} ({} runs",
            duration(self.percentile(50.0)),
            duration(self.percentile(90.0)),
            self.0.len()
        );
        if self.missed() > 0 {
            text += &format!(
                "; {} not read within {} s",
                self.missed(),
                DELIVERY_LIMIT.as_secs()
            );
        }
        text + ")"
    }

    /// Whether the p90 is within `target`.
    fn met(&self, target: Duration) -> Option<bool> {
        let p90 = self.percentile(90.0);
        (!p90.is_nan()).then_some(p90 <= target.as_secs_f64())
    }
}

fn duration(seconds: f64) -> String {
    if seconds.is_nan() {
        "–".into()
    } else if seconds.is_infinite() {
        format!("> {} s", DELIVERY_LIMIT.as_secs())
    } else if seconds < 1.0 {
        format!("{:.0} ms", seconds * 1000.0)
    } else {
        format!("{seconds:.2} s")
    }
}

fn ms(took: Option<Duration>) -> String {
    duration(took.map_or(f64::INFINITY, |d| d.as_secs_f64()))
}

/// One line of the table.
struct Row {
    figure: u8,
    name: String,
    measured: String,
    target: String,
    met: Option<bool>,
    /// Said beside a "yes".
    caveat: Option<String>,
}

impl Row {
    fn new(figure: u8, name: &str, measured: String, target: &str, met: Option<bool>) -> Self {
        Self {
            figure,
            name: name.into(),
            measured,
            target: target.into(),
            met,
            caveat: None,
        }
    }

    /// A timed figure met at its p90 although some of its messages never arrived says so.
    fn noting_missed(mut self, times: &Times) -> Self {
        if self.met == Some(true) && times.missed() > 0 {
            self.caveat = Some(format!(
                "at p90, but {} of {} not read within {} s",
                times.missed(),
                times.0.len(),
                DELIVERY_LIMIT.as_secs()
            ));
        }
        self
    }
}

/// Figure 1: A restarts on new ports, B stays; from A's start until B reads A's message.
async fn restart_one(options: &Options) -> Result<Vec<Row>, String> {
    let mut a = Peer::start(DEFAULT_IDLE_GROUP_AFTER, false).await?;
    let b = Peer::start(DEFAULT_IDLE_GROUP_AFTER, false).await?;
    introduce(&[&a.node, &b.node]).await?;
    let group = group_of(&a.node, &[&b.node], "figure 1").await?;
    first_message(&a.node, &[&b.node], group).await?;
    let mut times = Times::default();
    for run in 0..options.repeats {
        let mark = latest(&b.node, group).await?;
        a.stop().await?;
        a.start_again().await?;
        let since = Instant::now();
        let text = format!("figure 1, run {run}");
        let took = deliver(&a.node, &b.node, group, mark, since, &text).await?;
        eprintln!(
            "figure 1, run {run}: {} (A on TCP port {:?})",
            ms(took),
            tcp_port(&a.node).await
        );
        times.push(took);
        tokio::time::sleep(BETWEEN).await;
    }
    stop_all(&[&a, &b]).await;
    Ok(vec![
        Row::new(
            1,
            "1. restart, one peer on a new port: from A's start until B reads A's message",
            times.summary(),
            "≤ 2 s p90",
            times.met(RESTART_TARGET),
        )
        .noting_missed(&times),
    ])
}

/// A, B and C in a group of three (C stays up on its port); returns the group.
async fn trio(idle: Duration) -> Result<(Peer, Peer, Peer, GroupId), String> {
    let a = Peer::start(idle, false).await?;
    let b = Peer::start(idle, false).await?;
    let c = Peer::start(idle, false).await?;
    introduce(&[&a.node, &b.node, &c.node]).await?;
    let group = group_of(&a.node, &[&b.node, &c.node], "trio").await?;
    first_message(&a.node, &[&b.node, &c.node], group).await?;
    Ok((a, b, c, group))
}

/// Stops A and B and starts both again on new ports.
async fn restart_both(a: &mut Peer, b: &mut Peer) -> Result<(), String> {
    a.stop().await?;
    b.stop().await?;
    a.start_again().await?;
    b.start_again().await
}

/// Figure 2: A and B restart on new ports; C, their third member, stays up on its port.
async fn restart_two(options: &Options) -> Result<Vec<Row>, String> {
    let (mut a, mut b, c, group) = trio(DEFAULT_IDLE_GROUP_AFTER).await?;
    let mut times = Times::default();
    for run in 0..options.repeats {
        let mark = latest(&b.node, group).await?;
        restart_both(&mut a, &mut b).await?;
        let since = Instant::now();
        let text = format!("figure 2, run {run}");
        let took = deliver(&a.node, &b.node, group, mark, since, &text).await?;
        eprintln!(
            "figure 2, run {run}: {} (A and B on TCP ports {:?}, {:?})",
            ms(took),
            tcp_port(&a.node).await,
            tcp_port(&b.node).await
        );
        times.push(took);
        tokio::time::sleep(BETWEEN).await;
    }
    stop_all(&[&a, &b, &c]).await;
    Ok(vec![Row::new(
        2,
        "2. restart, two peers on new ports sharing a third: from both up until B reads A's message",
        times.summary(),
        "≤ 2 s p90",
        times.met(RESTART_TARGET),
    )
    .noting_missed(&times)])
}

/// Figure 3: after A and B restarted on new ports and exchanged a first message, the group
/// goes idle and A's connections close; then A writes.
async fn idle_wake(options: &Options) -> Result<Vec<Row>, String> {
    let (mut a, mut b, c, group) = trio(SHORT_IDLE).await?;
    let (mut times, mut closed) = (Times::default(), 0);
    for run in 0..options.repeats {
        restart_both(&mut a, &mut b).await?;
        let mark = latest(&b.node, group).await?;
        let text = format!("figure 3, run {run}, after the restart");
        let first = deliver(&a.node, &b.node, group, mark, Instant::now(), &text).await?;
        let (idle, _) = wait_idle(&[&a.node, &b.node], &[&a.node], none_open).await?;
        closed += usize::from(idle);
        let mark = latest(&b.node, group).await?;
        let text = format!("figure 3, run {run}, after the pause");
        let took = deliver(&a.node, &b.node, group, mark, Instant::now(), &text).await?;
        eprintln!(
            "figure 3, run {run}: first message after the restart {}, idle and closed: {idle}, \
             after the pause {}",
            ms(first),
            ms(took)
        );
        times.push(took);
    }
    stop_all(&[&a, &b, &c]).await;
    Ok(vec![Row::new(
        3,
        "3. idle wake after restarts: A writes to idle B (group idle at both, A's connections closed)",
        format!(
            "{}; idle and closed before the send in {closed} of {} runs",
            times.summary(),
            options.repeats
        ),
        "≤ 1 s p90",
        times.met(WAKE_TARGET),
    )
    .noting_missed(&times)])
}

/// Figure 4: S writes to M, whose group went idle; X is M's mailbox. First with S able to dial
/// M, then with M reachable only through X (M blocks S).
async fn mailbox_push(options: &Options) -> Result<Vec<Row>, String> {
    let s = Peer::start(SHORT_IDLE, false).await?;
    let m = Peer::start(SHORT_IDLE, false).await?;
    let x = Peer::start(SHORT_IDLE, true).await?;
    x.node
        .add_contact(m.node.contact().await.map_err(error)?, "M")
        .await
        .map_err(error)?;
    let x_card = x.node.contact().await.map_err(error)?;
    m.node
        .add_contact(x_card.clone(), "X")
        .await
        .map_err(error)?;
    m.node.use_mailbox(x_card).await.map_err(error)?;
    // M's card now names X, so S learns of M's mailbox from it.
    introduce(&[&s.node, &m.node]).await?;
    let group = group_of(&s.node, &[&m.node], "figure 4").await?;
    first_message(&s.node, &[&m.node], group).await?;
    let kept = wait_for("X keeps M's group", async || {
        x.node.mailbox_held(group).await.is_ok_and(|(n, _)| n > 0)
    })
    .await
    .is_ok();
    eprintln!("figure 4: X keeps the group: {kept}");

    let mut rows = Vec::new();
    for (blocked, name) in [
        (
            false,
            "4. mailbox push: S writes to M, group idle at M (S can also dial M)",
        ),
        (
            true,
            "4. mailbox push, M reachable only through its mailbox X (M blocks S)",
        ),
    ] {
        if blocked {
            m.node.block(s.node.id()).await.map_err(error)?;
        }
        let (mut times, mut idle_runs, mut connected, mut held, mut missed_in_a_row) =
            (Times::default(), 0, 0, 0, 0);
        for run in 0..options.repeats {
            if missed_in_a_row >= MAILBOX_GIVE_UP {
                break;
            }
            let (idle, open) = wait_idle(
                &[&s.node, &m.node],
                &[&s.node, &m.node, &x.node],
                no_sender_to_member,
            )
            .await?;
            idle_runs += usize::from(idle);
            let m_connections = open.get(1).copied().unwrap_or(0);
            connected += usize::from(m_connections > 0);
            let held_before = x.node.mailbox_held(group).await.map_err(error)?.0;
            let mark = latest(&m.node, group).await?;
            let text = format!("figure 4 (blocked: {blocked}), run {run}");
            let took = deliver(&s.node, &m.node, group, mark, Instant::now(), &text).await?;
            let held_after = x.node.mailbox_held(group).await.map_err(error)?.0;
            held += usize::from(held_after > held_before);
            missed_in_a_row = if took.is_none() {
                missed_in_a_row + 1
            } else {
                0
            };
            eprintln!(
                "figure 4 (M blocks S: {blocked}), run {run}: idle {idle}, connections of S, M \
                 and X {open:?}, X kept it {}, M read it after {}",
                held_after > held_before,
                ms(took)
            );
            times.push(took);
        }
        let runs = times.0.len();
        let mut measured = format!(
            "{}; idle with no S–M connection at the send in {idle_runs}, M connected \
             (to X) in {connected}, X kept the message in {held} of {runs} runs",
            times.summary()
        );
        if runs < options.repeats {
            measured += &format!("; stopped after {MAILBOX_GIVE_UP} in a row did not arrive");
        }
        rows.push(
            Row::new(4, name, measured, "≤ 1 s p90", times.met(MAILBOX_TARGET))
                .noting_missed(&times),
        );
    }
    stop_all(&[&s, &m, &x]).await;
    Ok(rows)
}

/// Figure 5: H in many idle two-member groups with P. The heap counter and RSS are the whole
/// process's, so this figure runs first and alone: only H and P are alive while it measures.
async fn idle_groups(options: &Options) -> Result<Vec<Row>, String> {
    let n = options.idle_groups;
    let h = Peer::start(SHORT_IDLE, false).await?;
    let mut p = Peer::start(SHORT_IDLE, false).await?;
    introduce(&[&h.node, &p.node]).await?;
    // H's heap alone is read with P stopped, before the groups and after them, so that what P
    // leaves behind when it stops, and what H keeps about P, count in neither. P comes back
    // on its ports in between: H knows it by the address on its card.
    let p_listen = p.listening().await?;
    p.stop().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let heap_h_alone = HEAP.allocated();
    p.start_again_on(p_listen).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (heap_before, rss_before) = (HEAP.allocated(), rss());
    // The heap's peak while the groups form and go idle: RSS keeps what glibc does not give
    // back of it.
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(heap_before));
    let sampler = tokio::spawn({
        let peak = peak.clone();
        async move {
            loop {
                peak.fetch_max(HEAP.allocated(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(HEAP_SAMPLING).await;
            }
        }
    });

    let creating = Instant::now();
    let mut groups = Vec::with_capacity(n);
    for k in 0..n {
        groups.push(
            h.node
                .create_group("", &[p.node.id()])
                .await
                .map_err(error)?,
        );
        if (k + 1) % 100 == 0 {
            eprintln!(
                "figure 5: {} groups created in {:.1} s",
                k + 1,
                creating.elapsed().as_secs_f64()
            );
        }
    }
    let deadline = Instant::now() + IDLE_GROUPS_LIMIT;
    while p.node.groups().await.map_err(error)?.len() < n {
        if Instant::now() > deadline {
            return Err("figure 5: P did not join every group".into());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "figure 5: P joined all {n} groups after {:.1} s",
        creating.elapsed().as_secs_f64()
    );
    let (idle, _) = wait_idle(&[&h.node, &p.node], &[&h.node], none_open).await?;
    tokio::time::sleep(IDLE_SETTLE).await;
    let (heap_after, rss_after) = (HEAP.allocated(), rss());
    sampler.abort();
    let heap_peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "figure 5: Rust heap: H alone {heap_h_alone} B; H and P before the groups {heap_before} B, \
         after {heap_after} B; RSS before {rss_before} B, after {rss_after} B"
    );
    let status = h.node.status().await.map_err(error)?;
    eprintln!(
        "figure 5: idle and closed: {idle}; at H: busy groups {}, outbox {}, awaiting \
         welcome {}; Rust heap's peak {heap_peak} B",
        status.busy_groups, status.outbox, status.awaiting_welcome
    );

    let sent_before = h.node.network_status().await.map_err(error)?.sent;
    let window_start = Instant::now();
    tokio::time::sleep(options.idle_window).await;
    let after = h.node.network_status().await.map_err(error)?;
    let window = window_start.elapsed().as_secs_f64();
    let heap_later = HEAP.allocated();
    let per_second = after.sent.saturating_sub(sent_before) as f64 / window / n as f64;

    // H alone, as before the groups: P stopped.
    p.stop().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let heap_h_after = HEAP.allocated();
    eprintln!("figure 5: Rust heap: H alone after the groups {heap_h_after} B");
    h.stop().await?;
    drop(p);

    let per_group = |after: usize, before: usize| (after as f64 - before as f64) / n as f64;
    let heap_both = per_group(heap_after, heap_before);
    let heap_h = per_group(heap_h_after, heap_h_alone);
    let rss_both = (rss_after as f64 - rss_before as f64) / n as f64;
    let within = |bytes: f64| Some(bytes <= IDLE_GROUP_BYTES_TARGET);
    let label = format!("{n} idle groups");
    Ok(vec![
        Row::new(
            5,
            &format!(
                "5. {label}: process Rust heap growth / groups (H and P both hold every group)"
            ),
            format!(
                "{} B ({} B after the {:.0} s window that follows)",
                heap_both.round(),
                per_group(heap_later, heap_before).round(),
                options.idle_window.as_secs_f64()
            ),
            "≤ 4 KiB",
            within(heap_both),
        ),
        Row::new(
            5,
            &format!(
                "5. {label}: H's Rust heap growth / groups (read with P stopped, before and after)"
            ),
            format!("{} B", heap_h.round()),
            "≤ 4 KiB",
            within(heap_h),
        ),
        Row::new(
            5,
            &format!("5. {label}: process RSS growth / groups (H and P, with SQLite's memory)"),
            format!(
                "{} B (the Rust heap's peak while the groups formed: {} B / groups)",
                rss_both.round(),
                per_group(heap_peak, heap_before).round()
            ),
            "≤ 4 KiB",
            within(rss_both),
        ),
        Row::new(
            5,
            &format!("5. {label}: H's bytes sent per idle group and second"),
            format!(
                "{per_second:.2} B/s over {window:.0} s; H's connections at the end: {}; \
                 idle and closed before: {idle}",
                after.connections
            ),
            "0 B/s",
            Some(per_second == 0.0),
        ),
    ])
}

/// What figure 6 measured at one size.
struct Upload {
    /// The sender's bytes sent per message over the message size.
    factor: f64,
    /// Deliveries of the measured messages within [`DRAIN`], and how many there should be.
    delivered: usize,
    expected: usize,
    /// The sender's gossipsub mesh.
    mesh: u32,
}

impl Upload {
    /// Whether the nodes kept up: a figure taken while the machine could not deliver the
    /// messages (every node in one process, on 2 cores) is not the protocol's.
    fn fits(&self) -> bool {
        self.delivered as f64 >= FIT_DELIVERY * self.expected as f64
    }
}

/// Figure 6, one size: a group of `size` nodes; member 1 sends [`UPLOAD_MESSAGES`] 1 KiB
/// messages once the mesh has settled; its bytes sent per message over the message size.
async fn upload(size: usize) -> Result<Upload, String> {
    let started = Instant::now();
    let mut peers = Vec::with_capacity(size);
    for _ in 0..size {
        peers.push(Peer::start(DEFAULT_IDLE_GROUP_AFTER, false).await?);
    }
    let nodes: Vec<Node> = peers.iter().map(|p| p.node.clone()).collect();
    eprintln!(
        "figure 6, {size}: nodes started after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let result = async {
        let creator_card = nodes[0].contact().await.map_err(error)?;
        for node in &nodes[1..] {
            nodes[0]
                .add_contact(node.contact().await.map_err(error)?, "member")
                .await
                .map_err(error)?;
            node.add_contact(creator_card.clone(), "creator")
                .await
                .map_err(error)?;
        }
        let members: Vec<&Node> = nodes[1..].iter().collect();
        let group = group_of(&nodes[0], &members, "figure 6").await?;
        eprintln!(
            "figure 6, {size}: the group formed after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let arrivals = Arrivals::default();
        for (index, node) in nodes.iter().enumerate() {
            follow(node, index, arrivals.clone());
        }
        // Warm-up: every member writes once (as in dspring-netbench), then the mesh settles.
        let everyone: Vec<usize> = (0..size).collect();
        send_steadily(&nodes, &everyone, group, 0..size, UPLOAD_RATE).await?;
        wait_for("the warm-up messages arrive", async || {
            delivered(&arrivals, 0..size) == size * (size - 1)
        })
        .await?;
        tokio::time::sleep(FIRST_ROUND.saturating_sub(started.elapsed()) + Duration::from_secs(2))
            .await;
        let settling = Instant::now();
        while settling.elapsed() < SETTLE_LIMIT && cores_over(SETTLE_STEP).await > SETTLED_CORES {}
        eprintln!(
            "figure 6, {size}: warmed up and settled after {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let measured = size..size + UPLOAD_MESSAGES;
        let before = nodes[1].network_status().await.map_err(error)?.sent;
        send_steadily(&nodes, &[1], group, measured.clone(), UPLOAD_RATE).await?;
        let deadline = Instant::now() + DRAIN;
        while delivered(&arrivals, measured.clone()) < UPLOAD_MESSAGES * (size - 1)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let status = nodes[1].network_status().await.map_err(error)?;
        let got = delivered(&arrivals, measured);
        let factor = status.sent.saturating_sub(before) as f64 / (UPLOAD_MESSAGES * MESSAGE) as f64;
        eprintln!(
            "figure 6, {size}: sender upload {factor:.2} × (mesh {}), delivered {got} of {}",
            status.mesh_peers,
            UPLOAD_MESSAGES * (size - 1)
        );
        Ok::<Upload, String>(Upload {
            factor,
            delivered: got,
            expected: UPLOAD_MESSAGES * (size - 1),
            mesh: status.mesh_peers,
        })
    }
    .await;
    for node in &nodes {
        let _ = node.stop().await;
    }
    drop(nodes);
    drop(peers);
    result
}

/// Figure 6: the sender's upload per message at each group size. A size the machine cannot
/// keep up with (its messages not delivered, or its group not formed in time) is reported and
/// replaced by half of it, down to the largest size measured before it.
async fn upload_by_size(options: &Options) -> Result<Vec<Row>, String> {
    let mut factors: Vec<(usize, f64, u32)> = Vec::new();
    let mut failures = Vec::new();
    for &wanted in &options.sizes {
        let mut size = wanted;
        loop {
            let run = Instant::now();
            let result = upload(size).await;
            eprintln!(
                "figure 6, {size}: took {:.0} s",
                run.elapsed().as_secs_f64()
            );
            let failure = match result {
                Ok(upload) if upload.fits() => {
                    factors.push((size, upload.factor, upload.mesh));
                    break;
                }
                Ok(upload) => format!(
                    "{size} members did not fit on this machine: {} of {} deliveries within \
                     {} s (the sender's upload {:.2} ×, its mesh {})",
                    upload.delivered,
                    upload.expected,
                    DRAIN.as_secs(),
                    upload.factor,
                    upload.mesh
                ),
                Err(message) => format!("{size} members did not complete: {message}"),
            };
            eprintln!("figure 6: {failure}");
            failures.push(failure);
            let largest_done = factors.iter().map(|&(s, _, _)| s).max().unwrap_or(1);
            if size / 2 <= largest_done {
                break;
            }
            size /= 2;
            eprintln!("figure 6: trying {size} members instead");
        }
    }
    let mut measured = factors
        .iter()
        .map(|(size, factor, mesh)| format!("{size}: {factor:.2} × (mesh {mesh})"))
        .collect::<Vec<_>>()
        .join(", ");
    let (low, high) = factors
        .iter()
        .fold((f64::INFINITY, 0.0_f64), |(l, h), &(_, f, _)| {
            (l.min(f), h.max(f))
        });
    let spread = high / low - 1.0;
    let met = (factors.len() >= 2).then_some(spread <= UPLOAD_SPREAD_TARGET);
    if factors.len() >= 2 {
        measured += &format!(" (largest {:.0} % above smallest)", spread * 100.0);
    }
    for failure in &failures {
        measured += &format!("; {failure}");
    }
    if factors.is_empty() {
        return Err(measured);
    }
    Ok(vec![Row::new(
        6,
        &format!(
            "6. sender upload per message / message size ({UPLOAD_MESSAGES} × {MESSAGE} B at \
             {UPLOAD_RATE}/s after the mesh settled), by group size: members"
        ),
        measured,
        "flat within 20 %",
        met,
    )])
}

async fn run(options: &Options) -> (Vec<Row>, bool) {
    let (mut rows, mut failed) = (Vec::new(), false);
    // Figure 5 first: its heap and RSS are the process's, read while no other node is alive.
    for figure in [5, 1, 2, 3, 4, 6] {
        if !options.runs(figure) {
            continue;
        }
        let started = Instant::now();
        let result = match figure {
            1 => restart_one(options).await,
            2 => restart_two(options).await,
            3 => idle_wake(options).await,
            4 => mailbox_push(options).await,
            5 => idle_groups(options).await,
            _ => upload_by_size(options).await,
        };
        eprintln!(
            "figure {figure} took {:.0} s",
            started.elapsed().as_secs_f64()
        );
        match result {
            Ok(mut figure_rows) => rows.append(&mut figure_rows),
            Err(message) => {
                eprintln!("figure {figure} failed: {message}");
                failed = true;
                rows.push(Row::new(
                    figure,
                    &format!("{figure}. (failed)"),
                    format!("benchmark failed: {message}"),
                    "",
                    None,
                ));
            }
        }
    }
    rows.sort_by_key(|r| r.figure);
    (rows, failed)
}

fn print_table(options: &Options, rows: &[Row], took: Duration) {
    println!(
        "Reach benchmark: nodes in one process on loopback (TCP and QUIC), each in its own data \
         directory, mDNS off, no bootstrap node (peers know each other from contact cards \
         only); restarts on new ports; {} runs per timed figure; idle time {} s in figures 3 \
         to 5; took {:.1} min",
        options.repeats,
        SHORT_IDLE.as_secs(),
        took.as_secs_f64() / 60.0
    );
    println!();
    println!("| figure | measured | target | met? |");
    println!("|---|---|---|---|");
    for row in rows {
        let met = match (row.met, &row.caveat) {
            (Some(true), Some(caveat)) => format!("yes {caveat}"),
            (Some(true), None) => "yes".into(),
            (Some(false), _) => "no".into(),
            (None, _) => "–".into(),
        };
        println!(
            "| {} | {} | {} | {met} |",
            row.name, row.measured, row.target
        );
    }
    println!();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut command = "cargo run --release -p dspring-bench --bin dspring-reachbench".to_string();
    if !args.is_empty() {
        command += &format!(" -- {}", args.join(" "));
    }
    println!("Command: {command}");
}

fn main() -> ExitCode {
    let options = match parse_options() {
        Ok(options) => options,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let started = Instant::now();
    let (rows, failed) = runtime.block_on(run(&options));
    print_table(&options, &rows, started.elapsed());
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
