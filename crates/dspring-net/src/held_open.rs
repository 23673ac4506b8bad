//! Connections the node holds open to chosen peers (its own mailboxes; as a mailbox, its
//! owners), even when no protocol is using them. Every other connection closes after `IDLE_CONNECTION_TIMEOUT` with nothing
//! to do, so that idle groups hold no connections; but a mailbox can push news to its owner
//! (`MailboxRequest::Fresh`) only over a connection the owner keeps. One per mailbox, not per
//! group. libp2p has no behaviour for this any more (its `keep_alive` one was removed), hence
//! this small one: its handler speaks no protocol and only answers whether to keep the
//! connection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
use libp2p::swarm::handler::ConnectionEvent;
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, SubstreamProtocol, THandler, THandlerInEvent, ToSwarm,
};

/// Peers whose connections are held open: a member holds its few mailboxes, a mailbox its
/// owners (a mailbox node serving a few thousand people is a small server).
pub const MAX_HELD_PEERS: usize = 4096;

#[derive(Default)]
pub(crate) struct HeldOpen {
    held: HashSet<PeerId>,
    /// Open connections per peer (bounded by the swarm's connections), to tell their
    /// handlers when a peer is held or let go.
    connections: HashMap<PeerId, Vec<ConnectionId>>,
    /// Handler updates to send.
    updates: VecDeque<(PeerId, ConnectionId, bool)>,
}

impl HeldOpen {
    /// Holds a peer's connections open (`true`) or lets them close when idle (`false`).
    /// Beyond [`MAX_HELD_PEERS`], new peers are not held.
    pub(crate) fn hold(&mut self, peer: PeerId, hold: bool) {
        let changed = if hold {
            self.held.len() < MAX_HELD_PEERS && self.held.insert(peer)
        } else {
            self.held.remove(&peer)
        };
        if changed {
            for connection in self.connections.get(&peer).into_iter().flatten() {
                self.updates.push_back((peer, *connection, hold));
            }
        }
    }

    fn handler(&self, peer: &PeerId) -> Handler {
        Handler {
            hold: self.held.contains(peer),
        }
    }
}

impl NetworkBehaviour for HeldOpen {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(&peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(&peer))
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                ..
            }) => self
                .connections
                .entry(peer_id)
                .or_default()
                .push(connection_id),
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                ..
            }) => {
                if let Some(open) = self.connections.get_mut(&peer_id) {
                    open.retain(|c| *c != connection_id);
                    if open.is_empty() {
                        self.connections.remove(&peer_id);
                    }
                }
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(&mut self, _: PeerId, _: ConnectionId, event: Infallible) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        match self.updates.pop_front() {
            Some((peer_id, connection, hold)) => Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(connection),
                event: hold,
            }),
            None => Poll::Pending,
        }
    }
}

/// Speaks no protocol; keeps its connection open while its peer is held.
#[derive(Debug)]
pub(crate) struct Handler {
    hold: bool,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = bool;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Infallible;

    fn listen_protocol(&self) -> SubstreamProtocol<DeniedUpgrade, ()> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn connection_keep_alive(&self) -> bool {
        self.hold
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<DeniedUpgrade, Infallible, Infallible>> {
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, hold: bool) {
        self.hold = hold;
    }

    fn on_connection_event(
        &mut self,
        _: ConnectionEvent<DeniedUpgrade, DeniedUpgrade, (), Infallible>,
    ) {
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holding_reaches_the_open_connections_and_is_bounded() {
        let mut held = HeldOpen::default();
        let peer = PeerId::random();
        let connection = ConnectionId::new_unchecked(7);
        held.connections.insert(peer, vec![connection]);
        assert!(!held.handler(&peer).hold);
        held.hold(peer, true);
        assert!(held.handler(&peer).hold, "new connections are held");
        assert_eq!(held.updates.pop_front(), Some((peer, connection, true)));
        held.hold(peer, true);
        assert!(held.updates.is_empty(), "no change, no update");
        held.hold(peer, false);
        assert_eq!(held.updates.pop_front(), Some((peer, connection, false)));
        for _ in 0..MAX_HELD_PEERS + 5 {
            held.hold(PeerId::random(), true);
        }
        assert_eq!(held.held.len(), MAX_HELD_PEERS);
    }
}
