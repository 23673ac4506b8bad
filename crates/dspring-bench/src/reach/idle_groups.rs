//! Figure 5: what a node's idle groups cost, in memory and in bytes sent.

use std::time::{Duration, Instant};

use crate::Options;
use crate::common::{HEAP, HEAP_SAMPLING, rss};
use crate::peer::{Peer, SHORT_IDLE, error, introduce, none_open, wait_idle};
use crate::report::Row;

/// Figure 5: after the groups went idle, time for the nodes to give freed pages back (every
/// node does at most every 10 s: dspring-node's `memory.rs`) before memory is read.
const IDLE_SETTLE: Duration = Duration::from_secs(12);
/// Figure 5: the idle groups' creation and joining may take this long.
const IDLE_GROUPS_LIMIT: Duration = Duration::from_secs(900);
/// The target, per idle group.
const IDLE_GROUP_BYTES_TARGET: f64 = 4096.0;

/// Figure 5: H in many idle two-member groups with P. The heap counter and RSS are the whole
/// process's, so this figure runs first and alone: only H and P are alive while it measures.
pub(crate) async fn idle_groups(options: &Options) -> Result<Vec<Row>, String> {
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
