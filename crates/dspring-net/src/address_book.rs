//! Where each known peer listens, for dialling it by id. Kademlia's routing table cannot be
//! that book: its buckets hold 20 peers each, so most of a large group's addresses would be
//! dropped, and a welcome or sync to those members could not be dialled.

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Peers remembered; beyond this, the one remembered longest ago is forgotten (contacts and
/// group members are re-added when used).
pub const MAX_BOOK_PEERS: usize = 4096;
/// Addresses kept per peer, newest first: a node has a few (TCP, QUIC, LAN, public).
pub const MAX_PEER_ADDRESSES: usize = 8;

#[derive(Default)]
pub(crate) struct AddressBook {
    addresses: HashMap<PeerId, VecDeque<Multiaddr>>,
    /// Peers in the order they were first remembered, for eviction.
    order: VecDeque<PeerId>,
}

impl AddressBook {
    pub(crate) fn add(&mut self, peer: PeerId, address: Multiaddr) {
        if !self.addresses.contains_key(&peer) {
            if self.order.len() >= MAX_BOOK_PEERS
                && let Some(oldest) = self.order.pop_front()
            {
                self.addresses.remove(&oldest);
            }
            self.order.push_back(peer);
        }
        let known = self.addresses.entry(peer).or_default();
        known.retain(|a| *a != address);
        known.push_front(address);
        known.truncate(MAX_PEER_ADDRESSES);
    }

    fn of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.addresses
            .get(peer)
            .map(|a| a.iter().cloned().collect())
            .unwrap_or_default()
    }
}

impl NetworkBehaviour for AddressBook {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = std::convert::Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        Ok(peer.map(|p| self.of(&p)).unwrap_or_default())
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

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_book_is_bounded_and_keeps_the_newest_addresses_first() {
        let mut book = AddressBook::default();
        let peer = PeerId::random();
        for port in 0..20u16 {
            book.add(peer, format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap());
        }
        let known = book.of(&peer);
        assert_eq!(known.len(), MAX_PEER_ADDRESSES);
        assert_eq!(
            known[0],
            "/ip4/127.0.0.1/tcp/19".parse::<Multiaddr>().unwrap()
        );
        for _ in 0..MAX_BOOK_PEERS {
            book.add(PeerId::random(), "/ip4/127.0.0.1/tcp/1".parse().unwrap());
        }
        assert!(book.of(&peer).is_empty(), "the oldest peer is forgotten");
        assert_eq!(book.addresses.len(), MAX_BOOK_PEERS);
    }
}
