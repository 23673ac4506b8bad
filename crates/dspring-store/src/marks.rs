//! Sync marks that stop at the first gap.
//!
//! A sync request says, per sender, "I hold your stream up to here: send me what follows".
//! A mark that is simply the highest position held loses an envelope for good when gossip
//! drops it but delivers the next one: the hole sits below the mark and no peer sends it
//! again. So a mark here is the position just before the first hole that the held envelopes
//! themselves prove: a control seq missing between two held ones, an application index
//! missing below a held one of the same epoch, or the start of an epoch whose control
//! message is held. The peer then re-sends everything after the hole; what is already held
//! is recognised by its hash and skipped. Where a holder's stream begins (it joined, or
//! started keeping the group, part-way through) is not a hole.

use std::collections::HashMap;

use dspring_proto::ids::ShortId;
use rusqlite::Rows;

use crate::error::{Corrupt, StoreError};
use crate::from_sql_int;
use crate::log::HeldMark;

/// Per sender, the mark up to which the rows (sender, control seq, epoch, index), ordered by
/// sender, hold its stream without a hole.
///
/// `every_epoch`: look for holes in every epoch (a mailbox keeps whatever it is given), or
/// only in each sender's newest (a member: see [`application_mark`]).
pub(crate) fn contiguous_marks(
    mut rows: Rows<'_>,
    table: &'static str,
    every_epoch: bool,
) -> Result<HashMap<ShortId, HeldMark>, StoreError> {
    let mut marks = HashMap::new();
    let mut current: Option<ShortId> = None;
    let mut controls: Vec<u64> = Vec::new();
    let mut apps: Vec<(u64, u64)> = Vec::new();
    while let Some(row) = rows.next()? {
        let sender: Vec<u8> = row.get(0)?;
        let sender = <[u8; 8]>::try_from(sender.as_slice())
            .map(ShortId)
            .map_err(|_| Corrupt::new(table, "sender", "sender is not 8 bytes"))?;
        if current != Some(sender) {
            if let Some(done) = current {
                marks.insert(done, contiguous_mark(&mut controls, &mut apps, every_epoch));
            }
            current = Some(sender);
        }
        let control: Option<i64> = row.get(1)?;
        let epoch: Option<i64> = row.get(2)?;
        let index: Option<i64> = row.get(3)?;
        match (control, epoch, index) {
            (Some(seq), _, _) => controls.push(from_sql_int(seq, table, "control_seq")?),
            (None, Some(epoch), Some(index)) => apps.push((
                from_sql_int(epoch, table, "epoch")?,
                from_sql_int(index, table, "idx")?,
            )),
            _ => return Err(Corrupt::new(table, "position", "no position").into()),
        }
    }
    if let Some(done) = current {
        marks.insert(done, contiguous_mark(&mut controls, &mut apps, every_epoch));
    }
    Ok(marks)
}

/// One sender's mark from the positions held of it (emptied for reuse). The control part is
/// the end of the first run of consecutive seqs (0 if none); the application part is the
/// position just before the first proven hole, or the highest held if there is none.
pub(crate) fn contiguous_mark(
    controls: &mut Vec<u64>,
    apps: &mut Vec<(u64, u64)>,
    every_epoch: bool,
) -> HeldMark {
    controls.sort_unstable();
    controls.dedup();
    apps.sort_unstable();
    apps.dedup();
    let control = controls
        .iter()
        .zip(controls.iter().skip(1))
        .find(|(seq, next)| **next != **seq + 1)
        .map(|(seq, _)| *seq)
        .or_else(|| controls.last().copied())
        .unwrap_or(0);
    let application = application_mark(controls, apps, every_epoch);
    controls.clear();
    apps.clear();
    (control, application)
}

/// `apps` sorted and without repeats; `controls` sorted. Unless `every_epoch`, only the
/// sender's newest epoch held is searched for holes: a member drops a message of an epoch its
/// sender has moved past (the core treats it as a replay), so a hole there could never be
/// filled, and asking for it would have the peer send the rest of the stream at every sync.
fn application_mark(
    controls: &[u64],
    apps: &[(u64, u64)],
    every_epoch: bool,
) -> Option<(u64, u64)> {
    let first_epoch = apps.first()?.0;
    let newest_epoch = apps.last()?.0;
    let mut previous: Option<(u64, u64)> = None;
    for &(epoch, index) in apps {
        if every_epoch || epoch == newest_epoch {
            let expected = match previous {
                Some((held_epoch, held_index)) if held_epoch == epoch => held_index + 1,
                // The first envelope held of the epoch: it starts at index 0 if the holder
                // saw it start (an earlier epoch, or the control message that began it).
                _ if epoch != first_epoch || controls.binary_search(&epoch).is_ok() => 0,
                _ => index,
            };
            if index != expected {
                // The hole is at (epoch, expected): mark the position just before it.
                return Some(match expected.checked_sub(1) {
                    Some(before) => (epoch, before),
                    None => previous.unwrap_or((epoch.checked_sub(1)?, u64::MAX)),
                });
            }
        }
        previous = Some((epoch, index));
    }
    previous
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use proptest::prelude::*;

    /// A mailbox's mark (holes searched in every epoch).
    fn mark(controls: &[u64], apps: &[(u64, u64)]) -> HeldMark {
        contiguous_mark(&mut controls.to_vec(), &mut apps.to_vec(), true)
    }

    /// A member's mark (holes searched in each sender's newest epoch only).
    fn member_mark(controls: &[u64], apps: &[(u64, u64)]) -> HeldMark {
        contiguous_mark(&mut controls.to_vec(), &mut apps.to_vec(), false)
    }

    #[test]
    fn without_holes_the_mark_is_the_highest_held() {
        assert_eq!(mark(&[], &[]), (0, None));
        assert_eq!(
            mark(&[3, 4, 5], &[(3, 0), (3, 1), (5, 0)]),
            (5, Some((5, 0)))
        );
        // A holder that began part-way through an epoch it did not see start.
        assert_eq!(mark(&[7], &[(4, 9), (4, 10)]), (7, Some((4, 10))));
    }

    #[test]
    fn a_missing_control_seq_stops_the_control_mark() {
        assert_eq!(mark(&[2, 3, 5, 6], &[]).0, 3);
    }

    #[test]
    fn a_missing_index_stops_the_application_mark() {
        assert_eq!(mark(&[], &[(2, 0), (2, 1), (2, 3)]).1, Some((2, 1)));
        // The same in a later epoch; the earlier epoch counts as complete.
        assert_eq!(mark(&[], &[(2, 0), (5, 0), (5, 2)]).1, Some((5, 0)));
    }

    #[test]
    fn a_member_does_not_ask_for_a_hole_in_an_epoch_the_sender_moved_past() {
        // A member can no longer take index 1 of epoch 2 once epoch 5 has begun; a mailbox
        // can.
        assert_eq!(member_mark(&[], &[(2, 0), (2, 2), (5, 0)]).1, Some((5, 0)));
        assert_eq!(mark(&[], &[(2, 0), (2, 2), (5, 0)]).1, Some((2, 0)));
        assert_eq!(member_mark(&[], &[(5, 0), (5, 2)]).1, Some((5, 0)));
    }

    #[test]
    fn a_missing_start_of_an_epoch_is_a_hole() {
        // Epoch 5 began after the holder held epoch 2: its index 0 must exist.
        assert_eq!(mark(&[], &[(2, 0), (5, 1)]).1, Some((2, 0)));
        // The holder holds the control message (seq 4) that began epoch 4.
        assert_eq!(mark(&[4], &[(4, 1), (4, 2)]).1, Some((3, u64::MAX)));
        assert_eq!(mark(&[0], &[(0, 1)]).1, None);
    }

    proptest! {
        /// Whatever is dropped from a complete stream, every hole the held positions prove
        /// lies after the mark (the peer sends it again), and with no provable hole the mark
        /// is the highest position held.
        #[test]
        fn every_provable_hole_is_after_the_mark(
            epochs in proptest::collection::vec(0u64..6, 1..6),
            kept in proptest::collection::vec(any::<bool>(), 40),
        ) {
            // A full stream: control seq s begins epoch s, with epochs[s-1] messages.
            let mut all_controls = Vec::new();
            let mut all_apps = Vec::new();
            for (i, count) in epochs.iter().enumerate() {
                let seq = i as u64 + 1;
                all_controls.push(seq);
                for index in 0..*count {
                    all_apps.push((seq, index));
                }
            }
            let mut flags = kept.iter().cycle();
            let controls: Vec<u64> =
                all_controls.iter().copied().filter(|_| *flags.next().unwrap()).collect();
            let apps: Vec<(u64, u64)> =
                all_apps.iter().copied().filter(|_| *flags.next().unwrap()).collect();
            let every_epoch = kept[0];
            let (control_mark, app_mark) =
                contiguous_mark(&mut controls.clone(), &mut apps.clone(), every_epoch);

            // Controls: everything from the first held up to the mark is held, and the seq
            // after the mark is not.
            match controls.first() {
                Some(first) => {
                    for seq in *first..=control_mark {
                        prop_assert!(controls.contains(&seq));
                    }
                    prop_assert!(!controls.contains(&(control_mark + 1)));
                }
                None => prop_assert_eq!(control_mark, 0),
            }

            // Applications: a missing position is a provable hole if it is in an epoch
            // searched (every epoch, or the newest held), a later one of that epoch is held,
            // and the holder knows where the epoch starts for it.
            let provable = |p: &(u64, u64)| {
                let first = apps[0];
                let newest = apps[apps.len() - 1].0;
                let start_seen = p.0 != first.0 || controls.contains(&first.0);
                (every_epoch || p.0 == newest)
                    && apps.iter().any(|q| q.0 == p.0 && q.1 > p.1)
                    && (start_seen || *p > first)
            };
            let holes: Vec<_> = all_apps
                .iter()
                .filter(|p| !apps.contains(p) && !apps.is_empty() && provable(p))
                .collect();
            for hole in &holes {
                prop_assert!(app_mark.is_none_or(|m| **hole > m));
            }
            if holes.is_empty() {
                prop_assert_eq!(app_mark, apps.last().copied());
            }
        }
    }
}
