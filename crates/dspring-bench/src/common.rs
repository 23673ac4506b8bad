//! What the network benchmarks share (`dspring-netbench`, `dspring-reachbench`): the tokio
//! runtime, the heap counter, the process's RSS and CPU from `/proc/self`, percentiles, setup
//! waits, numbered 1 KiB message bodies and the arrival times of a group's members. Each binary
//! includes this module and uses part of it.

// Each binary uses only part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dspring_node::Node;
use dspring_proto::{Event, GroupId};
use futures::StreamExt;

/// Counts the bytes the process's Rust code holds on the heap: unlike RSS, this falls as soon
/// as connections close (glibc keeps freed pages mapped until a node gives them back, at most
/// every 10 s: dspring-node's `memory.rs`). SQLite's own allocations go around it (they are
/// in RSS).
#[global_allocator]
pub(crate) static HEAP: cap::Cap<std::alloc::System> =
    cap::Cap::new(std::alloc::System, usize::MAX);

/// How often the heap's peak is sampled while the nodes run.
pub(crate) const HEAP_SAMPLING: Duration = Duration::from_millis(20);

/// The message size of the scenario.
pub(crate) const MESSAGE: usize = 1024;

/// How long to wait for stragglers after the last send before counting a message lost.
pub(crate) const DRAIN: Duration = Duration::from_secs(30);
/// The process's CPU below which the nodes count as settled after their start: 100 idle
/// nodes use 0.1 – 0.2 cores (their timers, heartbeats and sync rounds).
pub(crate) const SETTLED_CORES: f64 = 0.4;
/// How often settling is checked, and how long it may take at most.
pub(crate) const SETTLE_STEP: Duration = Duration::from_secs(2);
pub(crate) const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// Setup steps (joining, warm-up) give up after this.
pub(crate) const SETUP_LIMIT: Duration = Duration::from_secs(300);

/// Linux reports process CPU time in /proc in units of USER_HZ, which is 100 on every
/// architecture Linux supports for user space.
pub(crate) const USER_HZ: f64 = 100.0;

/// The runtime both benchmarks run their nodes on (the same in both, so that their figures
/// compare).
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))
}

/// What both benchmarks start with: their options, parsed by `parse`, and the runtime; on
/// failure, the message is printed and the exit code returned (2 for bad usage).
pub(crate) fn start<Options>(
    parse: impl FnOnce() -> Result<Options, String>,
) -> Result<(Options, tokio::runtime::Runtime), std::process::ExitCode> {
    let options = parse().map_err(|message| {
        eprintln!("{message}");
        std::process::ExitCode::from(2)
    })?;
    let runtime = runtime().map_err(|message| {
        eprintln!("{message}");
        std::process::ExitCode::FAILURE
    })?;
    Ok((options, runtime))
}

/// Resident memory of this process, bytes.
pub(crate) fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// CPU time (user + system) of this process, seconds.
pub(crate) fn cpu() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / USER_HZ
}

/// The process's CPU over `window`, in cores. Measured against the time that really passed:
/// on a busy machine the runtime's timer fires late.
pub(crate) async fn cores_over(window: Duration) -> f64 {
    let (start, cpu_before) = (Instant::now(), cpu());
    tokio::time::sleep(window).await;
    (cpu() - cpu_before) / start.elapsed().as_secs_f64()
}

/// The `p`th percentile of `sorted` (nearest rank); NaN when empty.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted
        .get(rank.min(sorted.len() - 1))
        .copied()
        .unwrap_or(f64::NAN)
}

/// Polls `check` every 100 ms until it holds, or gives up after [`SETUP_LIMIT`].
pub(crate) async fn wait_for(
    what: &str,
    mut check: impl AsyncFnMut() -> bool,
) -> Result<(), String> {
    let deadline = Instant::now() + SETUP_LIMIT;
    while !check().await {
        if Instant::now() > deadline {
            return Err(format!("timed out: {what}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// A 1 KiB message body carrying its number.
pub(crate) fn body(number: usize) -> Vec<u8> {
    let mut text = format!("bench {number} ").into_bytes();
    text.resize(MESSAGE, b'.');
    text
}

pub(crate) fn number_of(plaintext: &[u8]) -> Option<usize> {
    let text = std::str::from_utf8(plaintext.get(..32.min(plaintext.len()))?).ok()?;
    text.strip_prefix("bench ")?.split(' ').next()?.parse().ok()
}

/// Arrival times: message number → (member index → when).
pub(crate) type Arrivals = Arc<Mutex<HashMap<usize, HashMap<usize, Instant>>>>;

pub(crate) fn follow(node: &Node, index: usize, arrivals: Arrivals) {
    let mut events = Box::pin(node.events(0));
    tokio::spawn(async move {
        while let Some(stored) = events.next().await {
            if let Event::Message { plaintext, .. } = stored.event
                && let Some(number) = number_of(&plaintext)
                && let Ok(mut arrivals) = arrivals.lock()
            {
                let now = Instant::now();
                arrivals
                    .entry(number)
                    .or_default()
                    .entry(index)
                    .or_insert(now);
            }
        }
    });
}

pub(crate) fn delivered(arrivals: &Arrivals, numbers: std::ops::Range<usize>) -> usize {
    arrivals.lock().map_or(0, |a| {
        numbers.map(|n| a.get(&n).map_or(0, HashMap::len)).sum()
    })
}

/// What [`send_steadily`] sent: who sent each message and when the send began; how long
/// each `send` call took (the sender's durable commit), sorted, in milliseconds.
pub(crate) struct Sent {
    pub(crate) by_number: HashMap<usize, (usize, Instant)>,
    pub(crate) call_ms: Vec<f64>,
}

/// Sends messages `numbers` from `senders` (round-robin) at `rate` per second.
pub(crate) async fn send_steadily(
    nodes: &[Node],
    senders: &[usize],
    group: GroupId,
    numbers: std::ops::Range<usize>,
    rate: f64,
) -> Result<Sent, String> {
    let interval = Duration::from_secs_f64(1.0 / rate);
    let begin = tokio::time::Instant::now();
    let mut sent = Sent {
        by_number: HashMap::new(),
        call_ms: Vec::new(),
    };
    for (k, number) in numbers.enumerate() {
        tokio::time::sleep_until(begin + interval * k as u32).await;
        let sender = senders
            .get(k % senders.len().max(1))
            .copied()
            .ok_or("no sender")?;
        let at = Instant::now();
        nodes
            .get(sender)
            .ok_or("no such sender")?
            .send(group, &body(number))
            .await
            .map_err(|e| e.to_string())?;
        sent.call_ms.push(at.elapsed().as_secs_f64() * 1000.0);
        sent.by_number.insert(number, (sender, at));
    }
    sent.call_ms.sort_by(f64::total_cmp);
    Ok(sent)
}
