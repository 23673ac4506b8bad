//! Once a peer is reachable directly, its connections through a relay are closed.
//!
//! Hole punching (DCUtR) opens a direct connection beside the relayed one it started from, and
//! libp2p closes neither. Gossipsub (0.50) and request-response (0.30) send on any of a peer's
//! connections, so the group's traffic kept going through the relay: it costs the relay's
//! bandwidth, the circuit's limits end it anyway, and whatever was queued on it when the relay
//! went away was lost until the next sync. The relayed connections are closed
//! [`RELAYED_OVERLAP`] after the direct one came up, so that exchanges under way on them (the
//! welcome delivered through the relay is what starts the punch) finish first. No libp2p
//! behaviour does this (go-libp2p marks relayed connections "limited" instead, and opens new
//! streams on them only when asked to), hence this one.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::PeerId;
use libp2p::core::transport::PortUse;
use libp2p::core::{Endpoint, Multiaddr};
use libp2p::swarm::behaviour::{ConnectionClosed, ConnectionEstablished};
use libp2p::swarm::{
    CloseConnection, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use tokio::time::{Instant, Sleep};

/// How long a relayed connection stays after a direct connection to the same peer came up:
/// long enough for a request on it to be answered (a welcome is committed, then answered,
/// within a second or two), short against the relay's circuit limits.
pub const RELAYED_OVERLAP: Duration = Duration::from_secs(10);

/// A peer's open connections.
#[derive(Debug, Default)]
struct Connections {
    relayed: Vec<ConnectionId>,
    direct: usize,
    /// When the relayed ones close, once a direct one is up.
    close_at: Option<Instant>,
}

#[derive(Default)]
pub(crate) struct DirectOverRelay {
    /// Entries exist only for peers with an open connection, so this is bounded by the
    /// swarm's connections.
    peers: HashMap<PeerId, Connections>,
    /// Wakes `poll` at the earliest `close_at`.
    timer: Option<Pin<Box<Sleep>>>,
    /// Relayed connections to close now (at most all of them).
    to_close: VecDeque<(PeerId, ConnectionId)>,
}

impl DirectOverRelay {
    /// Connections open now that go through a relay.
    pub fn relayed(&self) -> usize {
        self.peers.values().map(|c| c.relayed.len()).sum()
    }

    fn established(&mut self, peer: PeerId, connection: ConnectionId, relayed: bool) {
        let connections = self.peers.entry(peer).or_default();
        if relayed {
            connections.relayed.push(connection);
        } else {
            connections.direct += 1;
        }
        if connections.direct > 0 && !connections.relayed.is_empty() {
            let at = Instant::now() + RELAYED_OVERLAP;
            connections.close_at.get_or_insert(at);
            self.rearm();
        }
    }

    fn closed(&mut self, peer: PeerId, connection: ConnectionId, relayed: bool) {
        let Some(connections) = self.peers.get_mut(&peer) else {
            return;
        };
        if relayed {
            connections.relayed.retain(|c| *c != connection);
        } else {
            connections.direct = connections.direct.saturating_sub(1);
        }
        if connections.relayed.is_empty() || connections.direct == 0 {
            connections.close_at = None;
        }
        if connections.relayed.is_empty() && connections.direct == 0 {
            self.peers.remove(&peer);
        }
    }

    /// Points the timer at the earliest pending close, or drops it.
    fn rearm(&mut self) {
        let earliest = self.peers.values().filter_map(|c| c.close_at).min();
        self.timer = earliest.map(|at| Box::pin(tokio::time::sleep_until(at)));
    }
}

impl NetworkBehaviour for DirectOverRelay {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionEstablished(ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) => self.established(peer_id, connection_id, endpoint.is_relayed()),
            FromSwarm::ConnectionClosed(ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                ..
            }) => self.closed(peer_id, connection_id, endpoint.is_relayed()),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        loop {
            if let Some((peer_id, connection)) = self.to_close.pop_front() {
                tracing::debug!(%peer_id, "a direct connection is up: closing a relayed one");
                return Poll::Ready(ToSwarm::CloseConnection {
                    peer_id,
                    connection: CloseConnection::One(connection),
                });
            }
            let Some(timer) = self.timer.as_mut() else {
                return Poll::Pending;
            };
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = Instant::now();
            for (peer, connections) in &mut self.peers {
                if connections.close_at.is_some_and(|at| at <= now) {
                    connections.close_at = None;
                    // They stay counted in `relayed` until the swarm reports them closed.
                    self.to_close
                        .extend(connections.relayed.iter().map(|c| (*peer, *c)));
                }
            }
            self.rearm();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One poll of the behaviour: the connection it asks to close, if any.
    fn poll_once(behaviour: &mut DirectOverRelay) -> Option<(PeerId, ConnectionId)> {
        let mut cx = Context::from_waker(futures::task::noop_waker_ref());
        match behaviour.poll(&mut cx) {
            Poll::Ready(ToSwarm::CloseConnection {
                peer_id,
                connection: CloseConnection::One(connection),
            }) => Some((peer_id, connection)),
            Poll::Ready(other) => panic!("unexpected {other:?}"),
            Poll::Pending => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_relayed_connection_closes_once_a_direct_one_has_been_up_for_the_overlap() {
        let mut behaviour = DirectOverRelay::default();
        let peer = PeerId::random();
        let other = PeerId::random();
        let relayed = ConnectionId::new_unchecked(1);
        behaviour.established(peer, relayed, true);
        // Another peer reached only through a relay keeps its connection.
        behaviour.established(other, ConnectionId::new_unchecked(2), true);
        assert_eq!(behaviour.relayed(), 2);
        assert_eq!(poll_once(&mut behaviour), None, "no direct connection yet");

        behaviour.established(peer, ConnectionId::new_unchecked(3), false);
        tokio::time::advance(RELAYED_OVERLAP - Duration::from_millis(1)).await;
        assert_eq!(poll_once(&mut behaviour), None, "still within the overlap");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(poll_once(&mut behaviour), Some((peer, relayed)));
        assert_eq!(poll_once(&mut behaviour), None, "asked once");
        assert_eq!(
            behaviour.relayed(),
            2,
            "counted until the swarm reports it closed"
        );
        behaviour.closed(peer, relayed, true);
        assert_eq!(behaviour.relayed(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_relayed_connection_stays_when_the_direct_one_is_gone_within_the_overlap() {
        let mut behaviour = DirectOverRelay::default();
        let peer = PeerId::random();
        let direct = ConnectionId::new_unchecked(2);
        behaviour.established(peer, direct, false);
        // A relayed connection that comes while a direct one is up is closed as well.
        behaviour.established(peer, ConnectionId::new_unchecked(1), true);
        behaviour.closed(peer, direct, false);
        tokio::time::advance(RELAYED_OVERLAP * 2).await;
        assert_eq!(poll_once(&mut behaviour), None);
        assert_eq!(behaviour.relayed(), 1);
    }
}
