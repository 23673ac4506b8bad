//! Peers the node wants connected, and when to dial each again. A dial that fails is tried
//! again with backoff and sets off one DHT lookup; connected peers are asked for the peer's
//! signed record when the wish starts and then on the same backoff, whatever the dials do
//! (a dial can hang on a handshake timeout). A peer that stays out of reach for
//! [`UNREACHABLE_AFTER`] is reported once, then tried at [`SLOW_RETRY`] until the node stops
//! asking for it. Time comes in as a parameter, so that the schedule is tested without
//! waiting.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

/// Peers wanted at once: a node wants its groups' ring and a few members each, and its
/// mailboxes, so a few thousand covers many groups.
pub const MAX_WANTED: usize = 4096;
/// A wish lasts this long after the node last asked for the peer: the node asks again every
/// round while it has something for the peer (a busy group), so a wish that is not renewed
/// is stale.
pub const WANT_FOR: Duration = Duration::from_secs(60);
/// The first retry after a failed dial; each failure doubles it, up to [`MAX_RETRY`].
pub const FIRST_RETRY: Duration = Duration::from_millis(500);
/// Retries of a peer not yet reported unreachable: a peer that restarts on a new port, or a
/// peer that comes back after its contacts, is reached within this of its start. A failed
/// dial of a known address costs a few packets.
pub const MAX_RETRY: Duration = Duration::from_secs(4);
/// A peer whose dials have failed for this long is reported unreachable.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(30);
/// Retries of a peer reported unreachable: it is likely offline for a while; when it comes
/// back it dials its own contacts, so this only bounds how long a one-sided wish waits.
pub const SLOW_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Want {
    /// When the node last asked for this peer.
    asked: Instant,
    /// Failed dials in a row.
    failures: u32,
    /// When the first of them failed.
    failing_since: Option<Instant>,
    /// When to dial again (none while a dial is under way or none failed).
    next_dial: Option<Instant>,
    /// Connected peers have been asked where it is this many times.
    seeks: u32,
    /// When to ask them again: on its own schedule, since a dial to an address the peer
    /// left can take a transport's whole handshake timeout to fail.
    next_seek: Instant,
    /// The DHT was searched for it since it was wanted.
    looked_up: bool,
    /// Reported unreachable.
    reported: bool,
}

/// What to do about a failed dial of a wanted peer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct AfterFailure {
    /// Search the DHT for it (once per wish).
    pub look_up: bool,
    /// Report it unreachable (once per wish).
    pub report: bool,
}

/// What is due at one tick.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Due {
    /// Peers to dial again.
    pub dial: Vec<PeerId>,
    /// Peers to ask connected peers about again.
    pub seek: Vec<PeerId>,
}

#[derive(Debug, Default)]
pub(crate) struct Wanted {
    wants: HashMap<PeerId, Want>,
}

impl Wanted {
    /// The node asks for `peer`: true if it should be dialled now (a new wish, or one that is
    /// not waiting out a backoff). Beyond [`MAX_WANTED`] new wishes are not kept (the dial
    /// is still made once).
    pub(crate) fn want(&mut self, peer: PeerId, now: Instant) -> bool {
        match self.wants.get_mut(&peer) {
            Some(want) => {
                want.asked = now;
                want.next_dial.is_some_and(|at| at <= now)
            }
            None => {
                if self.wants.len() < MAX_WANTED {
                    self.wants.insert(
                        peer,
                        Want {
                            asked: now,
                            failures: 0,
                            failing_since: None,
                            next_dial: None,
                            seeks: 1,
                            next_seek: now + FIRST_RETRY,
                            looked_up: false,
                            reported: false,
                        },
                    );
                }
                true
            }
        }
    }

    pub(crate) fn is_wanted(&self, peer: &PeerId) -> bool {
        self.wants.contains_key(peer)
    }

    /// Connected: the wish is fulfilled.
    pub(crate) fn connected(&mut self, peer: &PeerId) {
        self.wants.remove(peer);
    }

    /// A dial of `peer` failed: schedules the next one. `None` if the peer is not wanted.
    pub(crate) fn dial_failed(&mut self, peer: &PeerId, now: Instant) -> Option<AfterFailure> {
        let want = self.wants.get_mut(peer)?;
        want.failures = want.failures.saturating_add(1);
        let since = *want.failing_since.get_or_insert(now);
        let report = !want.reported && now.duration_since(since) >= UNREACHABLE_AFTER;
        want.reported |= report;
        want.next_dial = Some(now + retry_after(want.failures, want.reported));
        let look_up = !want.looked_up;
        want.looked_up = true;
        Some(AfterFailure { look_up, report })
    }

    /// New addresses of `peer` came: if it is wanted, it is dialled now rather than after
    /// its backoff (the caller dials). True if it is wanted.
    pub(crate) fn found(&mut self, peer: &PeerId) -> bool {
        match self.wants.get_mut(peer) {
            Some(want) => {
                want.next_dial = None;
                true
            }
            None => false,
        }
    }

    /// Peers whose retry is due now (each is then waiting on its dial), and peers to ask
    /// connected peers about again; drops wishes the node has not renewed for [`WANT_FOR`].
    pub(crate) fn due(&mut self, now: Instant) -> Due {
        self.wants
            .retain(|_, want| now.duration_since(want.asked) < WANT_FOR);
        let mut out = Due::default();
        for (peer, want) in &mut self.wants {
            if want.next_dial.is_some_and(|at| at <= now) {
                want.next_dial = None;
                out.dial.push(*peer);
            }
            if want.next_seek <= now {
                want.seeks = want.seeks.saturating_add(1);
                want.next_seek = now + retry_after(want.seeks, want.reported);
                out.seek.push(*peer);
            }
        }
        out
    }

    /// When the next retry or ask is due, if any wish waits.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.wants
            .values()
            .flat_map(|w| w.next_dial.into_iter().chain([w.next_seek]))
            .min()
    }
}

/// The wait before the next dial after `failures` failed ones.
fn retry_after(failures: u32, reported: bool) -> Duration {
    if reported {
        return SLOW_RETRY;
    }
    let doublings = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn retries_back_off_to_a_ceiling_and_a_lasting_failure_is_reported_once() {
        let start = Instant::now();
        let peer = PeerId::random();
        let mut wanted = Wanted::default();
        assert!(wanted.want(peer, start), "a new wish dials at once");
        let mut now = start;
        let mut waits = Vec::new();
        let mut reports = 0;
        let mut lookups = 0;
        // The node keeps asking (a busy group) while the peer stays away for two minutes.
        while now.duration_since(start) < Duration::from_secs(120) {
            let after = wanted.dial_failed(&peer, now).unwrap();
            reports += usize::from(after.report);
            lookups += usize::from(after.look_up);
            if after.report {
                assert!(now.duration_since(start) >= UNREACHABLE_AFTER);
            }
            // Step to the retry.
            let mut waited = Duration::ZERO;
            loop {
                let step = Duration::from_millis(100);
                now += step;
                waited += step;
                wanted.want(peer, now);
                if wanted.due(now).dial.contains(&peer) {
                    break;
                }
            }
            waits.push(waited);
        }
        assert_eq!(reports, 1, "reported once");
        assert_eq!(lookups, 1, "one DHT lookup per wish");
        assert_eq!(waits[0], FIRST_RETRY);
        assert_eq!(waits[1], FIRST_RETRY * 2);
        assert!(waits.iter().all(|w| *w <= SLOW_RETRY));
        let before_report: Vec<_> = waits.iter().take(8).collect();
        assert!(before_report.iter().all(|w| **w <= MAX_RETRY), "{waits:?}");
        assert_eq!(*waits.last().unwrap(), SLOW_RETRY);
    }

    #[test]
    fn a_wish_not_renewed_expires_and_a_connection_ends_it() {
        let start = Instant::now();
        let (a, b) = (PeerId::random(), PeerId::random());
        let mut wanted = Wanted::default();
        wanted.want(a, start);
        wanted.want(b, start);
        assert!(wanted.dial_failed(&a, start).is_some());
        assert!(
            !wanted.want(a, start),
            "a peer in backoff is not dialled again at once"
        );
        assert!(
            wanted.found(&a),
            "new addresses end the backoff: dialled by the caller"
        );
        assert!(
            wanted.due(start + MAX_RETRY).dial.is_empty(),
            "and not again at its retry"
        );
        wanted.connected(&b);
        assert!(!wanted.is_wanted(&b));
        assert!(wanted.dial_failed(&b, start).is_none());
        wanted.due(start + WANT_FOR);
        assert!(!wanted.is_wanted(&a), "not asked for again: dropped");
        assert_eq!(wanted.next_due(), None);
    }

    #[test]
    fn connected_peers_are_asked_again_on_a_schedule_of_their_own() {
        let start = Instant::now();
        let peer = PeerId::random();
        let mut wanted = Wanted::default();
        wanted.want(peer, start);
        // No dial has failed (it may hang on a handshake), yet the asks come.
        let mut asks = Vec::new();
        let mut now = start;
        while now.duration_since(start) < Duration::from_secs(12) {
            now += Duration::from_millis(100);
            wanted.want(peer, now);
            if wanted.due(now).seek.contains(&peer) {
                asks.push(now.duration_since(start));
            }
        }
        let expected: Vec<Duration> = [500, 1_500, 3_500, 7_500, 11_500]
            .into_iter()
            .map(Duration::from_millis)
            .collect();
        assert_eq!(asks, expected);
        wanted.connected(&peer);
        assert_eq!(wanted.next_due(), None, "a fulfilled wish asks nothing");
    }

    #[test]
    fn wishes_are_bounded() {
        let now = Instant::now();
        let mut wanted = Wanted::default();
        for _ in 0..MAX_WANTED + 10 {
            wanted.want(PeerId::random(), now);
        }
        assert_eq!(wanted.wants.len(), MAX_WANTED);
    }
}
