//! Connections a restarted peer left behind. A peer that stops without closing its
//! connections (a crash, a power cut, a laptop that moved networks, or simply a process exit,
//! after which QUIC sends nothing) stays "connected" at our end until the connection times
//! out. When it comes back, its new connection is our second one to it, and gossipsub, which
//! tells a peer its subscriptions and grafts only on the first connection, goes on writing
//! into the dead one: the restarted peer never learns our topics, and its messages reach us
//! only by sync.
//!
//! Each node names its run in identify (a random instance id in the agent version). When a
//! connection's identify names another instance than an older open connection to the same
//! peer, the peer has restarted: every connection to it is closed, and it is dialled again
//! once they are gone, so that both ends start afresh. Two connections of the same instance
//! (both ends dialling at once, a hole punch beside a relayed connection) are left alone.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

/// The agent version's prefix before the instance id: `dspring/<version> instance/<hex>`.
const INSTANCE_TAG: &str = " instance/";
/// Longest instance id taken from a peer's agent version (ours are 16 hex digits); longer
/// ones are cut, so that a peer cannot make us hold much per connection.
const MAX_INSTANCE_LEN: usize = 32;

/// This run's agent version: the crate's version and a random instance id.
pub(crate) fn agent_version() -> String {
    let mut nonce = [0u8; 8];
    // Without randomness every run looks alike: restarts are then found only when the
    // old connections time out, as before this check existed.
    let _ = getrandom::fill(&mut nonce);
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    format!("dspring/{}{INSTANCE_TAG}{hex}", env!("CARGO_PKG_VERSION"))
}

/// The instance id in a peer's agent version, if it names one.
pub(crate) fn instance_of(agent_version: &str) -> Option<&str> {
    let (_, instance) = agent_version.rsplit_once(INSTANCE_TAG)?;
    let end = instance
        .char_indices()
        .nth(MAX_INSTANCE_LEN)
        .map_or(instance.len(), |(i, _)| i);
    instance.get(..end).filter(|i| !i.is_empty())
}

#[derive(Debug, Default)]
pub(crate) struct Connections {
    /// Open connections per peer, with the instance their identify named (once it came).
    /// Bounded by the swarm's open connections.
    open: HashMap<PeerId, Vec<(ConnectionId, Option<String>)>>,
    /// Peers whose connections are being closed, to dial again when the last one is gone.
    renewing: HashSet<PeerId>,
}

impl Connections {
    pub(crate) fn established(&mut self, peer: PeerId, id: ConnectionId) {
        self.open.entry(peer).or_default().push((id, None));
    }

    /// A connection's identify named `instance`. True if another open connection to the
    /// peer is of another instance: the peer restarted, and the caller closes every
    /// connection to it.
    pub(crate) fn identified(&mut self, peer: PeerId, id: ConnectionId, instance: &str) -> bool {
        let Some(open) = self.open.get_mut(&peer) else {
            return false;
        };
        let restarted = open
            .iter()
            .any(|(other, seen)| *other != id && seen.as_deref().is_some_and(|s| s != instance));
        if let Some((_, seen)) = open.iter_mut().find(|(open_id, _)| *open_id == id) {
            *seen = Some(instance.to_owned());
        }
        if restarted {
            self.renewing.insert(peer);
        }
        restarted
    }

    /// A connection closed. True if it was the peer's last and the peer is being renewed:
    /// the caller dials it again.
    pub(crate) fn closed(&mut self, peer: PeerId, id: ConnectionId) -> bool {
        let last = match self.open.get_mut(&peer) {
            Some(open) => {
                open.retain(|(open_id, _)| *open_id != id);
                open.is_empty()
            }
            None => true,
        };
        if last {
            self.open.remove(&peer);
            return self.renewing.remove(&peer);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_connection_of_another_instance_renews_the_peer() {
        let peer = PeerId::random();
        let mut connections = Connections::default();
        let (old, new) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        connections.established(peer, old);
        assert!(!connections.identified(peer, old, "aa"));
        connections.established(peer, new);
        assert!(connections.identified(peer, new, "bb"));
        assert!(!connections.closed(peer, old), "one still open");
        assert!(connections.closed(peer, new), "the last: dial again");
        assert!(!connections.closed(peer, new), "once");
    }

    #[test]
    fn connections_of_one_instance_are_left_alone() {
        let peer = PeerId::random();
        let mut connections = Connections::default();
        let ids: Vec<ConnectionId> = (1..=3).map(ConnectionId::new_unchecked).collect();
        for id in &ids {
            connections.established(peer, *id);
        }
        // Identify again on the same connection (its periodic run) changes nothing.
        assert!(!connections.identified(peer, ids[0], "aa"));
        assert!(!connections.identified(peer, ids[0], "aa"));
        assert!(!connections.identified(peer, ids[1], "aa"));
        // A connection not identified yet is no evidence either way.
        assert!(!connections.closed(peer, ids[2]));
        assert!(!connections.closed(peer, ids[0]));
        assert!(!connections.closed(peer, ids[1]), "nothing to renew");
    }

    #[test]
    fn instances_are_read_from_our_agent_version_and_bounded() {
        let ours = agent_version();
        let instance = instance_of(&ours).unwrap();
        assert_eq!(instance.len(), 16);
        assert_ne!(
            instance_of(&agent_version()),
            Some(instance),
            "random per run"
        );
        assert_eq!(instance_of("rust-libp2p/0.48.0"), None);
        assert_eq!(instance_of("x instance/"), None);
        let long = format!("x instance/{}", "é".repeat(100));
        assert_eq!(
            instance_of(&long).unwrap().chars().count(),
            MAX_INSTANCE_LEN
        );
    }
}
