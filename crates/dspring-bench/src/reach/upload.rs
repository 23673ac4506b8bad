//! Figure 6: the sender's upload per message by group size.

// Node indices come from `0..size` with size ≥ 2 (checked options).
#![allow(clippy::indexing_slicing)]

use std::time::{Duration, Instant};

use dspring_node::{DEFAULT_IDLE_GROUP_AFTER, Node};

use crate::Options;
use crate::common::{
    Arrivals, DRAIN, MESSAGE, SETTLE_LIMIT, SETTLE_STEP, SETTLED_CORES, cores_over, delivered,
    follow, send_steadily, wait_for,
};
use crate::peer::{Peer, error, group_of};
use crate::report::Row;

/// Figure 6: messages from the one sender, and their rate.
const UPLOAD_MESSAGES: usize = 20;
const UPLOAD_RATE: f64 = 10.0;
/// Figure 6: the share of the measured messages' deliveries that must arrive within
/// [`DRAIN`] for a size to count as fitting on this machine.
const FIT_DELIVERY: f64 = 0.99;
/// Figure 6: the members' first connection round is at their second maintenance tick (10 s
/// in); the mesh is measured after it (as in `dspring-netbench`).
const FIRST_ROUND: Duration = Duration::from_secs(12);
/// The target: how far apart the sizes' figures may be.
const UPLOAD_SPREAD_TARGET: f64 = 0.20;

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
pub(crate) async fn upload_by_size(options: &Options) -> Result<Vec<Row>, String> {
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
