//! The baseline the network benchmark measures beside dspring: bare libp2p gossipsub (the
//! issue's "lean gossipsub" anchor) with dspring's own gossipsub parameters and transport (TCP,
//! Noise, Yamux), and nothing else: no other protocol, no validation by a node, no decryption,
//! no storage. Same node count, group, message size, rate and counters as the dspring run; it
//! runs in a process of its own (`--lean-only`) so that its memory is counted apart.

use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, SwarmBuilder, gossipsub, noise, tcp, yamux};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use tokio::sync::{mpsc, oneshot};

use crate::{
    Arrivals, DRAIN, HEAP, MESSAGE, Options, SETUP_LIMIT, body, cpu, delivered, number_of,
    percentile, rss,
};

/// Bare gossipsub has no idle policy of its own; connections stay as the benchmark dialled
/// them for the whole run.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);
/// Each member dials this many ring successors and this many random members: enough
/// connected subscribers for a mesh of D = 6 to form, as dspring's members have.
const RING_DIALS: usize = 2;
const RANDOM_DIALS: usize = 2;
/// Commands queued to one node's swarm task.
const COMMAND_QUEUE: usize = 64;
/// Gossipsub heartbeats (1 s each) before the warm-up: the mesh forms at the first ones.
const MESH_FORMING: Duration = Duration::from_secs(3);
const TOPIC: &str = "lean-baseline";

/// What the baseline run measured.
pub(crate) struct LeanFigures {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub delivery: f64,
    pub sender_upload: f64,
    pub sender_mesh: u32,
    /// The members' mean mesh size and the largest, in the one-sender phase.
    pub mean_mesh: f64,
    pub max_mesh: u32,
    /// Every node's upload in the one-sender phase, per recipient, in message sizes: the
    /// duplicates a recipient is sent.
    pub total_upload_per_recipient: f64,
    pub memory_per_node_mib: f64,
    pub heap_per_node_mib: f64,
    pub cpu_per_delivery_us: f64,
}

/// The one line `--lean-only` prints and the parent reads: `name=value` pairs.
const FIELDS: [&str; 12] = [
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "delivery",
    "sender_upload",
    "sender_mesh",
    "mean_mesh",
    "max_mesh",
    "total_upload_per_recipient",
    "memory_per_node_mib",
    "heap_per_node_mib",
    "cpu_per_delivery_us",
];

impl LeanFigures {
    fn values(&self) -> [f64; 12] {
        [
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.delivery,
            self.sender_upload,
            f64::from(self.sender_mesh),
            self.mean_mesh,
            f64::from(self.max_mesh),
            self.total_upload_per_recipient,
            self.memory_per_node_mib,
            self.heap_per_node_mib,
            self.cpu_per_delivery_us,
        ]
    }

    pub(crate) fn to_line(&self) -> String {
        let pairs: Vec<String> = FIELDS
            .iter()
            .zip(self.values())
            .map(|(name, value)| format!("{name}={value}"))
            .collect();
        format!("lean {}", pairs.join(" "))
    }

    fn from_line(line: &str) -> Result<Self, String> {
        let rest = line
            .strip_prefix("lean ")
            .ok_or_else(|| format!("not a baseline line: {line:?}"))?;
        let mut values = [f64::NAN; 12];
        for pair in rest.split_whitespace() {
            let (name, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("bad pair {pair:?}"))?;
            let slot = FIELDS
                .iter()
                .position(|f| *f == name)
                .ok_or_else(|| format!("unknown field {name:?}"))?;
            values[slot] = value.parse().map_err(|e| format!("{name}: {e}"))?;
        }
        if let Some(missing) = FIELDS.iter().zip(values).find(|(_, v)| v.is_nan()) {
            return Err(format!("baseline line lacks {}", missing.0));
        }
        let [
            p50_ms,
            p90_ms,
            p99_ms,
            delivery,
            sender_upload,
            mesh,
            mean_mesh,
            max_mesh,
            total,
            memory,
            heap,
            cpu,
        ] = values;
        Ok(Self {
            p50_ms,
            p90_ms,
            p99_ms,
            delivery,
            sender_upload,
            sender_mesh: mesh as u32,
            mean_mesh,
            max_mesh: max_mesh as u32,
            total_upload_per_recipient: total,
            memory_per_node_mib: memory,
            heap_per_node_mib: heap,
            cpu_per_delivery_us: cpu,
        })
    }
}

/// Runs the baseline in a child process (this binary with `--lean-only` and the same scenario)
/// and reads its figures. Called before the dspring nodes start, so the two never share the
/// CPU.
pub(crate) fn measure_in_child(options: &Options) -> Result<LeanFigures, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
    let output = std::process::Command::new(exe)
        .arg("--lean-only")
        .args(["--nodes", &options.nodes.to_string()])
        .args(["--group", &options.group.to_string()])
        .args(["--rate", &options.rate.to_string()])
        .args(["--seconds", &options.seconds.to_string()])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("starting the baseline: {e}"))?;
    if !output.status.success() {
        return Err(format!("the baseline run failed ({})", output.status));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("lean "))
        .ok_or("the baseline printed no figures")?;
    LeanFigures::from_line(line)
}

enum Command {
    Dial(Multiaddr),
    Subscribe,
    Publish(Vec<u8>),
    /// Bytes sent so far and the mesh's size now.
    Status(oneshot::Sender<(u64, u32)>),
}

/// Starts one bare-gossipsub node on loopback; returns its command channel and address.
async fn start(
    index: usize,
    arrivals: Arrivals,
) -> Result<(mpsc::Sender<Command>, Multiaddr), String> {
    let mut registry = libp2p::metrics::Registry::default();
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| e.to_string())?
        .with_bandwidth_metrics(&mut registry)
        .with_behaviour(|_| {
            let config = dspring_net::gossip_parameters()
                .build()
                .map_err(|e| e.to_string())?;
            gossipsub::Behaviour::<gossipsub::IdentityTransform>::new(
                gossipsub::MessageAuthenticity::Anonymous,
                config,
            )
            .map_err(|e| e.to_string().into())
        })
        .map_err(|e| e.to_string())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().map_err(|e| format!("{e}"))?)
        .map_err(|e| e.to_string())?;
    let (commands, mut command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (listening_tx, listening) = oneshot::channel();
    tokio::spawn(async move {
        let topic = gossipsub::IdentTopic::new(TOPIC);
        let mut listening_tx = Some(listening_tx);
        loop {
            tokio::select! {
                command = command_rx.recv() => match command {
                    None => break,
                    Some(Command::Dial(address)) => {
                        let _ = swarm.dial(address);
                    }
                    Some(Command::Subscribe) => {
                        let _ = swarm.behaviour_mut().subscribe(&topic);
                    }
                    // A publish that finds no peer is a message lost, and counted so.
                    Some(Command::Publish(data)) => {
                        let _ = swarm.behaviour_mut().publish(topic.clone(), data);
                    }
                    Some(Command::Status(reply)) => {
                        let sent = dspring_net::bandwidth_from_metrics(&registry).sent;
                        let mesh = swarm.behaviour().mesh_peers(&topic.hash()).count();
                        let _ = reply.send((sent, u32::try_from(mesh).unwrap_or(u32::MAX)));
                    }
                },
                event = swarm.select_next_some() => match event {
                    SwarmEvent::NewListenAddr { address, .. } => {
                        if let Some(tx) = listening_tx.take() {
                            let _ = tx.send(address);
                        }
                    }
                    SwarmEvent::Behaviour(gossipsub::Event::Message { message, .. }) => {
                        if let Some(number) = number_of(&message.data)
                            && let Ok(mut arrivals) = arrivals.lock()
                        {
                            let now = Instant::now();
                            arrivals.entry(number).or_default().entry(index).or_insert(now);
                        }
                    }
                    _ => {}
                },
            }
        }
    });
    let address = tokio::time::timeout(SETUP_LIMIT, listening)
        .await
        .map_err(|_| "a baseline node never listened")?
        .map_err(|_| "a baseline node stopped")?;
    Ok((commands, address))
}

async fn status(node: &mpsc::Sender<Command>) -> Result<(u64, u32), String> {
    let (reply, answer) = oneshot::channel();
    node.send(Command::Status(reply))
        .await
        .map_err(|_| "a baseline node stopped")?;
    answer.await.map_err(|_| "a baseline node stopped".into())
}

/// Publishes messages `numbers` from `senders` (round-robin) at `rate` per second; returns
/// who sent each and when.
async fn publish_steadily(
    nodes: &[mpsc::Sender<Command>],
    senders: &[usize],
    numbers: std::ops::Range<usize>,
    rate: f64,
) -> Result<std::collections::HashMap<usize, (usize, Instant)>, String> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let begin = tokio::time::Instant::now();
    let mut sent = std::collections::HashMap::new();
    for (k, number) in numbers.enumerate() {
        tokio::time::sleep_until(begin + interval * k as u32).await;
        let sender = senders[k % senders.len()];
        sent.insert(number, (sender, Instant::now()));
        nodes[sender]
            .send(Command::Publish(body(number)))
            .await
            .map_err(|_| "a baseline node stopped")?;
    }
    Ok(sent)
}

/// Waits until `numbers` reached every other member, or the drain time passed.
async fn drain(arrivals: &Arrivals, numbers: std::ops::Range<usize>, members: usize) {
    let deadline = Instant::now() + DRAIN;
    let want = numbers.len() * (members - 1);
    while delivered(arrivals, numbers.clone()) < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The baseline scenario, mirroring the dspring run's phases: mesh, warm-up, one sender's
/// upload, then every member in turn for latency, delivery, CPU and memory.
pub(crate) async fn run(options: &Options) -> Result<LeanFigures, String> {
    let (n, g) = (options.nodes, options.group);
    let rss_before = rss();
    let heap_before = HEAP.allocated();
    let arrivals: Arrivals = Arrivals::default();
    let mut nodes = Vec::with_capacity(n);
    let mut addresses = Vec::with_capacity(n);
    for index in 0..n {
        let (node, address) = start(index, arrivals.clone()).await?;
        nodes.push(node);
        addresses.push(address);
    }
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    for (i, node) in nodes[..g].iter().enumerate() {
        node.send(Command::Subscribe)
            .await
            .map_err(|_| "a baseline node stopped")?;
        let ring = (1..=RING_DIALS).map(|k| (i + k) % g);
        let random = (0..RANDOM_DIALS).map(|_| (rng.next_u64() % g as u64) as usize);
        for peer in ring.chain(random).filter(|&p| p != i) {
            node.send(Command::Dial(addresses[peer].clone()))
                .await
                .map_err(|_| "a baseline node stopped")?;
        }
    }
    tokio::time::sleep(MESH_FORMING).await;
    let members: Vec<usize> = (0..g).collect();
    publish_steadily(&nodes, &members, 0..g, options.rate).await?;
    drain(&arrivals, 0..g, g).await;
    eprintln!("baseline: warmed up");

    let count = options.messages();
    let one = g..g + count;
    let mut before = Vec::with_capacity(n);
    for node in &nodes {
        before.push(status(node).await?.0);
    }
    publish_steadily(&nodes, &[1], one.clone(), options.rate).await?;
    drain(&arrivals, one, g).await;
    let mut total = 0;
    let mut sender = (0, 0);
    let mut meshes = Vec::with_capacity(g);
    for (i, node) in nodes.iter().enumerate() {
        let (sent, mesh) = status(node).await?;
        total += sent - before[i];
        if i == 1 {
            sender = (sent - before[i], mesh);
        }
        if i < g {
            meshes.push(mesh);
        }
    }
    let (mean_mesh, max_mesh) = crate::mesh_spread(&meshes);
    let (sender_sent, sender_mesh) = sender;
    let sent_bytes = (count * MESSAGE) as f64;
    let sender_upload = sender_sent as f64 / sent_bytes;
    let total_upload_per_recipient = total as f64 / (sent_bytes * (g - 1) as f64);

    let many = g + count..g + 2 * count;
    let cpu_before = cpu();
    let sent = publish_steadily(&nodes, &members, many.clone(), options.rate).await?;
    drain(&arrivals, many.clone(), g).await;
    let cpu_used = cpu() - cpu_before;
    let got = delivered(&arrivals, many.clone());
    let latencies = crate::latencies(&arrivals, &sent, many);
    let memory_per_node_mib = rss().saturating_sub(rss_before) as f64 / n as f64 / 1048576.0;
    let heap_per_node_mib =
        HEAP.allocated().saturating_sub(heap_before) as f64 / n as f64 / 1048576.0;
    eprintln!("baseline: measured");
    Ok(LeanFigures {
        p50_ms: percentile(&latencies, 50.0),
        p90_ms: percentile(&latencies, 90.0),
        p99_ms: percentile(&latencies, 99.0),
        delivery: got as f64 / (count * (g - 1)) as f64,
        sender_upload,
        sender_mesh,
        mean_mesh,
        max_mesh,
        total_upload_per_recipient,
        memory_per_node_mib,
        heap_per_node_mib,
        cpu_per_delivery_us: cpu_used / got.max(1) as f64 * 1e6,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_figures_line_reads_back_and_a_missing_field_is_an_error() {
        let figures = LeanFigures {
            p50_ms: 12.5,
            p90_ms: 20.0,
            p99_ms: 31.25,
            delivery: 1.0,
            sender_upload: 6.75,
            sender_mesh: 6,
            mean_mesh: 7.25,
            max_mesh: 11,
            total_upload_per_recipient: 3.5,
            memory_per_node_mib: 0.8,
            heap_per_node_mib: 0.5,
            cpu_per_delivery_us: 300.0,
        };
        let back = LeanFigures::from_line(&figures.to_line()).unwrap();
        assert_eq!(back.values(), figures.values());
        assert!(LeanFigures::from_line("lean p50_ms=1").is_err());
        assert!(LeanFigures::from_line("dspring p50_ms=1").is_err());
    }
}
