//! The relays a node behind NAT listens through, and their reservations.

use std::collections::HashMap;

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, Swarm};

use crate::behaviour::Behaviour;

/// The relays this node listens through, and which of them hold a reservation now.
#[derive(Default)]
pub(super) struct Relays {
    /// Circuit addresses (`<relay>/p2p-circuit`) being listened on.
    pub(super) up: HashMap<ListenerId, Multiaddr>,
    /// Circuit addresses to listen on at the next retry.
    pub(super) down: Vec<Multiaddr>,
}

impl Relays {
    /// No relay was configured.
    pub(super) fn is_empty(&self) -> bool {
        self.up.is_empty() && self.down.is_empty()
    }

    /// Asks every relay that is down for a reservation.
    pub(super) fn listen(&mut self, swarm: &mut Swarm<Behaviour>) {
        for circuit in std::mem::take(&mut self.down) {
            match swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    self.up.insert(id, circuit);
                }
                Err(error) => {
                    tracing::debug!(%error, %circuit, "listening through a relay");
                    self.down.push(circuit);
                }
            }
        }
    }

    /// A listener closed: if it was a relay's, it is asked again at the next retry.
    pub(super) fn closed(&mut self, listener: ListenerId) {
        if let Some(circuit) = self.up.remove(&listener) {
            self.down.push(circuit);
        }
    }

    /// A connection to `peer` is up: if it is a relay that holds no reservation of ours, ask
    /// it now rather than at the next retry. The first request usually fails when the relay
    /// is also a bootstrap node: the relay client's own dial is refused while the
    /// bootstrap's dial to the same peer is under way, and the listener closes at once.
    pub(super) fn connected(&mut self, peer: PeerId, swarm: &mut Swarm<Behaviour>) {
        if self
            .down
            .iter()
            .any(|circuit| relay_of(circuit) == Some(peer))
        {
            self.listen(swarm);
        }
    }
}

/// The relay's peer id in a circuit address `…/p2p/<relay>/p2p-circuit`.
fn relay_of(circuit: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for protocol in circuit.iter() {
        match protocol {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_relay_of_a_circuit_is_the_peer_before_p2p_circuit() {
        let relay = PeerId::random();
        let node = PeerId::random();
        let circuit: Multiaddr =
            format!("/ip4/198.18.0.1/udp/4001/quic-v1/p2p/{relay}/p2p-circuit")
                .parse()
                .unwrap();
        assert_eq!(relay_of(&circuit), Some(relay));
        assert_eq!(
            relay_of(&circuit.clone().with(Protocol::P2p(node))),
            Some(relay)
        );
        let direct: Multiaddr = format!("/ip4/198.18.0.1/tcp/4001/p2p/{relay}")
            .parse()
            .unwrap();
        assert_eq!(relay_of(&direct), None);
    }
}
