//! Figures 1 and 2: how fast a message is read after one peer, or two sharing a third, restart
//! on new ports.

use std::time::{Duration, Instant};

use dspring_node::{DEFAULT_IDLE_GROUP_AFTER, GroupId};

use crate::Options;
use crate::peer::{Peer, deliver, first_message, group_of, introduce, latest, stop_all, tcp_port};
use crate::report::{Row, Times, ms};

/// A pause between repetitions, so that each restart follows a finished exchange.
const BETWEEN: Duration = Duration::from_secs(1);
/// The target of both figures.
const RESTART_TARGET: Duration = Duration::from_secs(2);

/// Figure 1: A restarts on new ports, B stays; from A's start until B reads A's message.
pub(crate) async fn restart_one(options: &Options) -> Result<Vec<Row>, String> {
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
pub(crate) async fn trio(idle: Duration) -> Result<(Peer, Peer, Peer, GroupId), String> {
    let a = Peer::start(idle, false).await?;
    let b = Peer::start(idle, false).await?;
    let c = Peer::start(idle, false).await?;
    introduce(&[&a.node, &b.node, &c.node]).await?;
    let group = group_of(&a.node, &[&b.node, &c.node], "trio").await?;
    first_message(&a.node, &[&b.node, &c.node], group).await?;
    Ok((a, b, c, group))
}

/// Stops A and B and starts both again on new ports.
pub(crate) async fn restart_both(a: &mut Peer, b: &mut Peer) -> Result<(), String> {
    a.stop().await?;
    b.stop().await?;
    a.start_again().await?;
    b.start_again().await
}

/// Figure 2: A and B restart on new ports; C, their third member, stays up on its port.
pub(crate) async fn restart_two(options: &Options) -> Result<Vec<Row>, String> {
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
