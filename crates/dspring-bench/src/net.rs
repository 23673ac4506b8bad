//! `dspring-netbench`: the network benchmark of issue #4. N real nodes in this process (libp2p
//! on loopback, a SQLite file and a thread each), one group of G members, 1 KiB messages at a
//! steady rate. Prints delivery latency (p50, p99), delivery ratio, sender upload and total
//! upload per recipient as multiples of the message size, memory per node, CPU per delivery,
//! and the catch-up time of a member returning after missing many messages; beside it, naive
//! unicast (the sender sends to each member) measured on the same transport, and bare libp2p
//! gossipsub (the anchor) measured in the same run by `lean.rs`.
//!
//! Usage: `dspring-netbench [--nodes 100] [--group 64] [--rate 10] [--seconds 10]
//! [--catch-up 10000] [--quick] [--lean-only]`. Linux only (CPU and memory come from
//! `/proc/self`).

// Node and member indices come from ranges bounded by the checked options (nodes ≥ group + 2,
// group ≥ 3), so indexing cannot go out of bounds here.
#![allow(clippy::indexing_slicing)]
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dspring_net::wire::DirectRequest;
use dspring_net::{Command as NetCommand, Event as NetEvent, Network};
use dspring_node::{Node, NodeConfig};
use dspring_proto::{Device, Event, Group, GroupId};
use futures::StreamExt;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

mod common;
mod lean;

use common::{
    Arrivals, DRAIN, HEAP, HEAP_SAMPLING, MESSAGE, SETTLE_LIMIT, SETTLE_STEP, SETTLED_CORES,
    SETUP_LIMIT, body, cores_over, cpu, delivered, follow, number_of, percentile, rss,
    send_steadily, wait_for,
};

/// How long the idle cost is measured: two maintenance rounds of every node.
const IDLE_WINDOW: Duration = Duration::from_secs(20);

struct Options {
    nodes: usize,
    group: usize,
    rate: f64,
    seconds: f64,
    catch_up: usize,
    /// Run only the bare-gossipsub baseline and print its figures as one line (the main run
    /// starts itself with this to measure the baseline in a process of its own).
    lean_only: bool,
}

impl Options {
    /// Messages per measured phase.
    fn messages(&self) -> usize {
        ((self.rate * self.seconds) as usize).max(10)
    }
}

fn parse_options() -> Result<Options, String> {
    let mut options = Options {
        nodes: 100,
        group: 64,
        rate: 10.0,
        seconds: 10.0,
        catch_up: 10_000,
        lean_only: false,
    };
    let mut args = std::env::args().skip(1);
    let number = |name: &str, value: Option<String>| -> Result<f64, String> {
        value
            .ok_or(format!("{name} needs a number"))?
            .parse::<f64>()
            .map_err(|e| format!("{name}: {e}"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => {
                options = Options {
                    nodes: 16,
                    group: 10,
                    rate: 20.0,
                    seconds: 2.0,
                    catch_up: 1_000,
                    lean_only: options.lean_only,
                };
            }
            "--nodes" => options.nodes = number("--nodes", args.next())? as usize,
            "--group" => options.group = number("--group", args.next())? as usize,
            "--rate" => options.rate = number("--rate", args.next())?,
            "--seconds" => options.seconds = number("--seconds", args.next())?,
            "--catch-up" => options.catch_up = number("--catch-up", args.next())? as usize,
            "--lean-only" => options.lean_only = true,
            "-h" | "--help" => {
                return Err(
                    "usage: dspring-netbench [--nodes N] [--group G] [--rate MSG/S] \
                     [--seconds S] [--catch-up MESSAGES] [--quick] [--lean-only]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if options.group < 3 || options.nodes < options.group + 2 {
        return Err("need --group of at least 3 and --nodes at least group + 2".into());
    }
    if !(options.rate > 0.0 && options.seconds > 0.0) {
        return Err("--rate and --seconds must be positive".into());
    }
    Ok(options)
}

/// The mean and the largest of the members' gossipsub mesh sizes.
fn mesh_spread(meshes: &[u32]) -> (f64, u32) {
    let total: u64 = meshes.iter().map(|&m| u64::from(m)).sum();
    let mean = total as f64 / meshes.len().max(1) as f64;
    (mean, meshes.iter().copied().max().unwrap_or(0))
}

async fn start(dir: &std::path::Path) -> Result<Node, String> {
    let mut config = NodeConfig::new(dir);
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().map_err(|e| format!("{e}"))?];
    config.mdns = false;
    Node::start(config).await.map_err(|e| e.to_string())
}

/// Delivery latencies of messages `numbers` in milliseconds, sorted: from the send to each
/// other member's arrival.
fn latencies(
    arrivals: &Arrivals,
    sent: &HashMap<usize, (usize, Instant)>,
    numbers: std::ops::Range<usize>,
) -> Vec<f64> {
    let mut latencies = Vec::new();
    if let Ok(arrivals) = arrivals.lock() {
        for number in numbers {
            let Some(&(sender, at)) = sent.get(&number) else {
                continue;
            };
            for (member, when) in arrivals.get(&number).into_iter().flatten() {
                if *member != sender {
                    latencies.push(when.duration_since(at).as_secs_f64() * 1000.0);
                }
            }
        }
    }
    latencies.sort_by(f64::total_cmp);
    latencies
}

async fn upload(nodes: &[Node]) -> Result<Vec<dspring_net::NetworkStatus>, String> {
    let mut out = Vec::with_capacity(nodes.len());
    for node in nodes {
        out.push(node.network_status().await.map_err(|e| e.to_string())?);
    }
    Ok(out)
}

fn connections_per_node(statuses: &[dspring_net::NetworkStatus]) -> f64 {
    let total: u64 = statuses.iter().map(|s| u64::from(s.connections)).sum();
    total as f64 / statuses.len().max(1) as f64
}

/// The size on the wire of one real 1 KiB group message (envelope), for the unicast baseline.
fn envelope_size() -> Result<usize, String> {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let alice = Device::generate(1, &mut rng);
    let bob = Device::generate(1, &mut rng);
    let created = Group::create(&alice, GroupId([1; 32]), &[bob.bundle(None)], &mut rng)
        .map_err(|e| e.to_string())?;
    // The node adds a one-byte content tag to every message.
    let staged = created
        .group
        .send(&[0u8; MESSAGE + 1])
        .map_err(|e| e.to_string())?;
    staged
        .outbox
        .first()
        .map(|o| o.bytes.len())
        .ok_or("no envelope".into())
}

/// Naive unicast: one sender sends each message to every other member by a direct request,
/// on the same libp2p transport. Returns the sender's upload per message as a multiple of
/// the message size.
async fn unicast(members: usize, messages: usize) -> Result<f64, String> {
    let size = envelope_size()?;
    let mut networks: Vec<(Network, tokio::sync::mpsc::Receiver<NetEvent>)> = Vec::new();
    for _ in 0..members {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let config = dspring_net::Config {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().map_err(|e| format!("{e}"))?],
            mdns: false,
            ..dspring_net::Config::default()
        };
        networks.push(dspring_net::spawn(key, config).map_err(|e| e.to_string())?);
    }
    let mut addresses = Vec::new();
    for (_, events) in &mut networks {
        loop {
            match tokio::time::timeout(SETUP_LIMIT, events.recv()).await {
                Ok(Some(NetEvent::Listening(address))) => {
                    addresses.push(address);
                    break;
                }
                Ok(Some(_)) => {}
                _ => return Err("a unicast node never listened".into()),
            }
        }
    }
    let (sender, mut sender_events) = networks.remove(0);
    let peers: Vec<libp2p::PeerId> = networks.iter().map(|(n, _)| n.local_peer_id).collect();
    for address in &addresses[1..] {
        sender
            .send(NetCommand::Dial(address.clone()))
            .await
            .map_err(|e| e.to_string())?;
    }
    let mut connected = 0;
    while connected < peers.len() {
        match tokio::time::timeout(SETUP_LIMIT, sender_events.recv()).await {
            Ok(Some(NetEvent::Connected(_))) => connected += 1,
            Ok(Some(_)) => {}
            _ => return Err("the unicast sender did not connect to every member".into()),
        }
    }
    // Keep reading the sender's events, or its network would stop for backpressure.
    tokio::spawn(async move { while sender_events.recv().await.is_some() {} });
    // Receivers answer every delivery.
    for (network, mut events) in networks {
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let NetEvent::Direct { id, .. } = event {
                    let _ = network
                        .send(NetCommand::AnswerDirect {
                            id,
                            response: dspring_net::wire::DirectResponse { accepted: true },
                        })
                        .await;
                }
            }
        });
    }
    // One warm-up round opens the connections; then measure.
    let deliver = async |round: usize| -> Result<(), String> {
        let mut tasks = Vec::new();
        for peer in &peers {
            let (sender, peer) = (sender.clone(), *peer);
            let mut envelope = vec![0u8; size];
            envelope[..8].copy_from_slice(&(round as u64).to_be_bytes());
            tasks.push(tokio::spawn(async move {
                sender
                    .send_direct(
                        peer,
                        DirectRequest {
                            group: GroupId([2; 32]),
                            envelope,
                        },
                    )
                    .await
            }));
        }
        for task in tasks {
            task.await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    };
    deliver(0).await?;
    let before = sender
        .network_status()
        .await
        .map_err(|e| e.to_string())?
        .sent;
    for round in 1..=messages {
        deliver(round).await?;
    }
    let after = sender
        .network_status()
        .await
        .map_err(|e| e.to_string())?
        .sent;
    Ok((after - before) as f64 / (messages * MESSAGE) as f64)
}

struct Figures {
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    /// The sender's `send` call (its durable commit), p50: part of every latency.
    send_call_p50_ms: f64,
    delivery: f64,
    sender_upload: f64,
    total_upload_per_recipient: f64,
    memory_per_node_mib: f64,
    heap_per_node_mib: f64,
    /// The most the Rust heap held (sampled), per node: what RSS keeps after it is freed.
    peak_heap_per_node_mib: f64,
    cpu_per_delivery_us: f64,
    catch_up_s: f64,
    unicast_sender_upload: f64,
    idle_cores: f64,
    startup_cores: f64,
    /// Open connections per node (each end counted), during the traffic and after idling.
    connections_busy: f64,
    connections_idle: f64,
    /// The sender's gossipsub mesh size during the upload measurement.
    sender_mesh: u32,
    /// The members' mean mesh size and the largest, at the same time.
    mean_mesh: f64,
    max_mesh: u32,
    /// The sender's upload over as long a time just before, when nobody wrote.
    sender_quiet_upload: f64,
    /// Of `sender_upload`: its sync, direct and mailbox requests and answers.
    sender_own_protocols: f64,
    /// How long the DHT took to settle after the first quiet seconds.
    settled_after_s: f64,
}

async fn run(options: &Options) -> Result<Figures, String> {
    let (n, g) = (options.nodes, options.group);
    let rss_before = rss();
    let heap_before = HEAP.allocated();
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(heap_before));
    let phase_peak = Arc::new(std::sync::atomic::AtomicUsize::new(heap_before));
    // The heap's peak per node in the phase just ended, for the progress lines.
    let phase_heap = || {
        let now = HEAP.allocated();
        let was = phase_peak.swap(now, std::sync::atomic::Ordering::Relaxed);
        format!(
            "(Rust heap per node: peak {:.1} MiB, now {:.1} MiB)",
            was.max(now).saturating_sub(heap_before) as f64 / n as f64 / 1048576.0,
            now.saturating_sub(heap_before) as f64 / n as f64 / 1048576.0
        )
    };
    let sampler = tokio::spawn({
        let (peak, phase_peak) = (peak.clone(), phase_peak.clone());
        async move {
            loop {
                let now = HEAP.allocated();
                peak.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                phase_peak.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(HEAP_SAMPLING).await;
            }
        }
    });
    let dirs: Vec<tempfile::TempDir> = (0..n)
        .map(|_| tempfile::tempdir().map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let mut nodes = Vec::with_capacity(n);
    for dir in &dirs {
        nodes.push(start(dir.path()).await?);
    }
    let started = Instant::now();
    eprintln!("{n} nodes started {}", phase_heap());
    let err = |e: dspring_node::NodeError| e.to_string();
    for m in 1..g {
        nodes[0]
            .add_contact(nodes[m].contact().await.map_err(err)?, "member")
            .await
            .map_err(err)?;
        nodes[m]
            .add_contact(nodes[0].contact().await.map_err(err)?, "creator")
            .await
            .map_err(err)?;
    }
    let ids: Vec<_> = nodes[1..g].iter().map(Node::id).collect();
    let group = nodes[0].create_group("test", &ids).await.map_err(err)?;
    for node in &nodes[..g] {
        wait_for("every member joins", async || {
            node.groups().await.is_ok_and(|gs| gs.contains(&group))
        })
        .await?;
    }
    eprintln!(
        "a group of {g} formed after {:.1} s {}",
        started.elapsed().as_secs_f64(),
        phase_heap()
    );
    let arrivals: Arrivals = Arc::default();
    for (index, node) in nodes[..g].iter().enumerate() {
        follow(node, index, arrivals.clone());
    }
    // Warm-up: every member writes once, then the mesh and the ring connections settle (the
    // members' first connection round is at their second maintenance tick, 10 s in).
    let members: Vec<usize> = (0..g).collect();
    let warm_up = 0..g;
    send_steadily(&nodes, &members, group, warm_up.clone(), options.rate).await?;
    wait_for("warm-up messages arrive", async || {
        delivered(&arrivals, warm_up.clone()) == g * (g - 1)
    })
    .await?;
    let settle = Duration::from_secs(12).saturating_sub(started.elapsed());
    tokio::time::sleep(settle + Duration::from_secs(2)).await;
    eprintln!("warmed up {}", phase_heap());

    // What the nodes cost in their first quiet seconds: every node that gained peers runs
    // its DHT bootstrap (libp2p-kad starts one whenever its table, under 20 peers, grows).
    let startup_cores = cores_over(IDLE_WINDOW).await;
    eprintln!("first quiet seconds measured {}", phase_heap());
    // With 100 nodes started at once, those bootstraps keep both cores busy for a while;
    // the sending is measured once they are over, in the steady state the issue asks about.
    let settling = Instant::now();
    while settling.elapsed() < SETTLE_LIMIT && cores_over(SETTLE_STEP).await > SETTLED_CORES {}
    let settled_after_s = settling.elapsed().as_secs_f64();
    eprintln!("settled after {settled_after_s:.0} s more");

    // Upload: one sender, and the same node's upload over as long a time before, when
    // nobody wrote (the DHT's, identify's and the NAT probes' traffic).
    let count = options.messages();
    let one = g..g + count;
    let sending = Duration::from_secs_f64(count as f64 / options.rate);
    let quiet_before = upload(&nodes).await?;
    tokio::time::sleep(sending).await;
    let before = upload(&nodes).await?;
    send_steadily(&nodes, &[1], group, one.clone(), options.rate).await?;
    let deadline = Instant::now() + DRAIN;
    while delivered(&arrivals, one.clone()) < count * (g - 1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = upload(&nodes).await?;
    let sender_mesh = after[1].mesh_peers;
    let meshes: Vec<u32> = after[..g].iter().map(|s| s.mesh_peers).collect();
    let (mean_mesh, max_mesh) = mesh_spread(&meshes);
    let connections_busy = connections_per_node(&after);
    let sent_bytes = (count * MESSAGE) as f64;
    let sender_upload = (after[1].sent - before[1].sent) as f64 / sent_bytes;
    let sender_quiet_upload = (before[1].sent - quiet_before[1].sent) as f64 / sent_bytes;
    let sender_own_protocols =
        (after[1].protocol_sent.total() - before[1].protocol_sent.total()) as f64 / sent_bytes;
    let total: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.sent - b.sent)
        .sum();
    let total_upload_per_recipient = total as f64 / (sent_bytes * (g - 1) as f64);
    eprintln!("upload measured {}", phase_heap());

    // Latency, delivery and CPU: every member writes in turn.
    let many = g + count..g + 2 * count;
    let cpu_before = cpu();
    let sent = send_steadily(&nodes, &members, group, many.clone(), options.rate).await?;
    let deadline = Instant::now() + DRAIN;
    while delivered(&arrivals, many.clone()) < count * (g - 1) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu_used = cpu() - cpu_before;
    let got = delivered(&arrivals, many.clone());
    let latencies = latencies(&arrivals, &sent.by_number, many);
    let memory_per_node_mib = rss().saturating_sub(rss_before) as f64 / n as f64 / 1048576.0;
    let heap_per_node_mib =
        HEAP.allocated().saturating_sub(heap_before) as f64 / n as f64 / 1048576.0;
    sampler.abort();
    let peak_heap_per_node_mib = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(heap_before) as f64
        / n as f64
        / 1048576.0;
    eprintln!("latency measured {}", phase_heap());

    // What the nodes cost when nobody writes, once the DHT has settled: timers, heartbeats,
    // periodic sync, the connections a group that was just busy keeps.
    let idle_cores = cores_over(IDLE_WINDOW).await;
    let connections_idle = connections_per_node(&upload(&nodes).await?);

    // Catch-up: two nodes outside the big group; one leaves, the other writes, it returns.
    let (a, d) = (g, g + 1);
    nodes[a]
        .add_contact(nodes[d].contact().await.map_err(err)?, "d")
        .await
        .map_err(err)?;
    nodes[d]
        .add_contact(nodes[a].contact().await.map_err(err)?, "a")
        .await
        .map_err(err)?;
    let pair = nodes[a]
        .create_group("test", &[nodes[d].id()])
        .await
        .map_err(err)?;
    wait_for("the returning member joins", async || {
        nodes[d].groups().await.is_ok_and(|gs| gs.contains(&pair))
    })
    .await?;
    nodes[d].stop().await.map_err(err)?;
    let writing = Instant::now();
    for number in 0..options.catch_up {
        nodes[a].send(pair, &body(number)).await.map_err(err)?;
    }
    eprintln!(
        "{} messages written in {:.1} s while the member was away",
        options.catch_up,
        writing.elapsed().as_secs_f64()
    );
    let returning = Instant::now();
    nodes[d] = start(dirs[d].path()).await?;
    let mut events = Box::pin(nodes[d].events(0));
    let mut caught = 0;
    let deadline = tokio::time::Instant::now() + SETUP_LIMIT;
    while caught < options.catch_up {
        match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(stored)) => {
                if matches!(stored.event, Event::Message { .. }) && stored.group == pair {
                    caught += 1;
                }
            }
            _ => return Err(format!("catch-up stalled at {caught} messages")),
        }
    }
    let catch_up_s = returning.elapsed().as_secs_f64();
    for node in &nodes {
        let _ = node.stop().await;
    }
    let unicast_sender_upload = unicast(g, count.min(50)).await?;
    Ok(Figures {
        p50_ms: percentile(&latencies, 50.0),
        p90_ms: percentile(&latencies, 90.0),
        p99_ms: percentile(&latencies, 99.0),
        send_call_p50_ms: percentile(&sent.call_ms, 50.0),
        delivery: got as f64 / (count * (g - 1)) as f64,
        sender_upload,
        total_upload_per_recipient,
        memory_per_node_mib,
        heap_per_node_mib,
        peak_heap_per_node_mib,
        cpu_per_delivery_us: cpu_used / got.max(1) as f64 * 1e6,
        catch_up_s,
        unicast_sender_upload,
        idle_cores,
        startup_cores,
        connections_busy,
        connections_idle,
        sender_mesh,
        mean_mesh,
        max_mesh,
        sender_quiet_upload,
        sender_own_protocols,
        settled_after_s,
    })
}

fn main() -> ExitCode {
    let (options, runtime) = match common::start(parse_options) {
        Ok(started) => started,
        Err(code) => return code,
    };
    if options.lean_only {
        return match runtime.block_on(lean::run(&options)) {
            Ok(figures) => {
                println!("{}", figures.to_line());
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("baseline failed: {message}");
                ExitCode::FAILURE
            }
        };
    }
    // The baseline first, in its own process, so that the two runs never share the CPU and
    // each process's memory is its own.
    let baseline = match lean::measure_in_child(&options) {
        Ok(baseline) => baseline,
        Err(message) => {
            eprintln!("benchmark failed: {message}");
            return ExitCode::FAILURE;
        }
    };
    let figures = match runtime.block_on(run(&options)) {
        Ok(figures) => figures,
        Err(message) => {
            eprintln!("benchmark failed: {message}");
            return ExitCode::FAILURE;
        }
    };
    print_table(&options, &figures, &baseline);
    ExitCode::SUCCESS
}

fn print_table(options: &Options, figures: &Figures, baseline: &lean::LeanFigures) {
    let count = options.messages();
    println!(
        "Network benchmark: {} nodes on loopback in one process, a group of {}, {} B messages, \
         {} messages at {}/s from one sender (upload) and from every member in turn (latency)",
        options.nodes, options.group, MESSAGE, count, options.rate
    );
    println!();
    println!(
        "| figure | dspring | target | bare gossipsub, measured in this run | lean gossipsub (issue's anchor) |"
    );
    println!("|---|---|---|---|---|");
    println!(
        "| delivery latency p50 | {:.1} ms | ≤ 15 ms | {:.1} ms | 12 ms |",
        figures.p50_ms, baseline.p50_ms
    );
    println!(
        "| delivery latency p90 | {:.1} ms | | {:.1} ms | |",
        figures.p90_ms, baseline.p90_ms
    );
    println!(
        "| delivery latency p99 | {:.1} ms | ≤ 50 ms | {:.1} ms | 37 ms |",
        figures.p99_ms, baseline.p99_ms
    );
    println!(
        "| of which the sender's send call (its durable commit), p50 | {:.1} ms | | | |",
        figures.send_call_p50_ms
    );
    println!(
        "| delivery ratio (live members, {} s drain) | {:.2} % | 100 % | {:.2} % | |",
        DRAIN.as_secs(),
        figures.delivery * 100.0,
        baseline.delivery * 100.0
    );
    println!(
        "| sender upload per message | {:.1} × | ≤ 8 × | {:.1} × | 6.8 × |",
        figures.sender_upload, baseline.sender_upload
    );
    println!(
        "| the sender's gossipsub mesh (peers) | {} | | {} | |",
        figures.sender_mesh, baseline.sender_mesh
    );
    println!(
        "| the members' gossipsub mesh: mean; largest | {:.1}; {} | | {:.1}; {} | |",
        figures.mean_mesh, figures.max_mesh, baseline.mean_mesh, baseline.max_mesh
    );
    println!(
        "| the sender's upload over as long just before, nobody writing | {:.1} × | | | |",
        figures.sender_quiet_upload
    );
    println!(
        "| of the sender's upload: its sync, direct and mailbox protocols | {:.1} × | | | |",
        figures.sender_own_protocols
    );
    println!(
        "| naive unicast sender upload (measured, same transport) | {:.1} × | | | |",
        figures.unicast_sender_upload
    );
    println!(
        "| total upload per recipient | {:.2} × | | {:.2} × | |",
        figures.total_upload_per_recipient, baseline.total_upload_per_recipient
    );
    println!(
        "| memory per node (process RSS growth / nodes) | {:.2} MiB | ≤ 2 MiB | {:.2} MiB | 0.8 MiB |",
        figures.memory_per_node_mib, baseline.memory_per_node_mib
    );
    println!(
        "| Rust heap in use per node (without SQLite's own) | {:.2} MiB | | {:.2} MiB | |",
        figures.heap_per_node_mib, baseline.heap_per_node_mib
    );
    println!(
        "| Rust heap at its peak (sampled every {} ms) per node | {:.2} MiB | | | |",
        HEAP_SAMPLING.as_millis(),
        figures.peak_heap_per_node_mib
    );
    println!(
        "| connections per node: during traffic; after {} s idle | {:.1}; {:.1} | | | |",
        IDLE_WINDOW.as_secs(),
        figures.connections_busy,
        figures.connections_idle
    );
    println!(
        "| CPU per delivery (whole process) | {:.0} µs | | {:.0} µs | |",
        figures.cpu_per_delivery_us, baseline.cpu_per_delivery_us
    );
    println!(
        "| CPU of all nodes while nobody writes | {:.2} cores | | | |",
        figures.idle_cores
    );
    println!(
        "| CPU of all nodes in the first quiet {} s (DHT bootstrap) | {:.2} cores | | | |",
        IDLE_WINDOW.as_secs(),
        figures.startup_cores
    );
    println!(
        "| then until the process used under {SETTLED_CORES} cores | {:.0} s | | | |",
        figures.settled_after_s
    );
    println!(
        "| catch-up of {} missed messages | {:.2} s | < 5 s | | |",
        options.catch_up, figures.catch_up_s
    );
}
