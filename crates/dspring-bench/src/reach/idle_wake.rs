//! Figure 3: a message's time after restarts, once the group went idle and its connections
//! closed.

use std::time::{Duration, Instant};

use crate::Options;
use crate::peer::{SHORT_IDLE, deliver, error, has, latest, none_open, stop_all, wait_idle};
use crate::report::{Row, Times, ms};
use crate::restarts::{restart_both, trio};

/// The target.
const WAKE_TARGET: Duration = Duration::from_secs(1);

/// Figure 3: after A and B restarted on new ports and exchanged a first message, the group
/// goes idle and A's connections close; then A writes.
pub(crate) async fn idle_wake(options: &Options) -> Result<Vec<Row>, String> {
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
        let c_mark = latest(&c.node, group).await?;
        let text = format!("figure 3, run {run}, after the pause");
        let took = deliver(&a.node, &b.node, group, mark, Instant::now(), &text).await?;
        if took.is_none() {
            // A miss (rare, cause not known yet): what each node holds and sees, for the
            // next look into it.
            let c_has = has(&c.node, group, c_mark, text.as_bytes()).await?;
            let delivery = a.node.delivery(group).await.map_err(error)?;
            let mut seen = Vec::new();
            for (name, node) in [("A", &a.node), ("B", &b.node), ("C", &c.node)] {
                let status = node.status().await.map_err(error)?;
                let network = node.network_status().await.map_err(error)?;
                seen.push(format!(
                    "{name}: busy groups {}, connections {}, out of reach {}",
                    status.busy_groups,
                    network.connections,
                    status.out_of_reach.len()
                ));
            }
            eprintln!(
                "figure 3, run {run}: missed; C has it: {c_has}; at A, held up to {:?}, all up \
                 to {:?}; {}",
                delivery.held_up_to(),
                delivery.all_up_to(),
                seen.join("; ")
            );
        }
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
