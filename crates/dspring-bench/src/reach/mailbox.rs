//! Figure 4: a message to a member whose group went idle, with a mailbox; once with the sender
//! able to dial the member, once with the member reachable only through its mailbox.

use std::time::{Duration, Instant};

use crate::Options;
use crate::common::wait_for;
use crate::peer::{
    Peer, SHORT_IDLE, deliver, error, first_message, group_of, introduce, latest, stop_all,
    wait_idle,
};
use crate::report::{Row, Times, ms};

/// Figure 4 with the member reachable only through its mailbox: after this many messages in
/// a row have not arrived within [`DELIVERY_LIMIT`](crate::peer::DELIVERY_LIMIT), the
/// remaining repetitions are skipped.
const MAILBOX_GIVE_UP: usize = 3;
/// The target.
const MAILBOX_TARGET: Duration = Duration::from_secs(1);

/// For [`wait_idle`] in figure 4, watching S, M and X: no connection between S and M. Each
/// connection counts at both its ends, so S's and M's together exceed X's by twice theirs.
fn no_sender_to_member(connections: &[u32]) -> bool {
    match connections {
        [s, m, x] => s + m <= *x,
        _ => false,
    }
}

/// Figure 4: S writes to M, whose group went idle; X is M's mailbox. First with S able to dial
/// M, then with M reachable only through X (M blocks S).
pub(crate) async fn mailbox_push(options: &Options) -> Result<Vec<Row>, String> {
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
        let runs = times.runs();
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
