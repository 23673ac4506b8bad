//! Where each known peer listens, for dialling it by id. Kademlia's routing table cannot be
//! that book: its buckets hold 20 peers each, so most of a large group's addresses would be
//! dropped, and a welcome or sync to those members could not be dialled.
//!
//! Two kinds of entries: a peer's own signed record (libp2p's `PeerRecord`: its addresses and
//! a sequence number, signed by its key), which only a newer signed record replaces, and
//! unsigned hints (contact cards, mDNS, identify without a record), tried after the record's
//! addresses and dropped when a newer record comes. Signed records can be passed on: a peer
//! that lost track of another asks the peers it is connected to for the records they hold.

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::core::{PeerRecord, SignedEnvelope};
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
/// Largest signed record accepted: [`MAX_PEER_ADDRESSES`] addresses of a few dozen bytes, a
/// key and a signature fit in well under a kilobyte; a relayed address is the longest.
pub const MAX_PEER_RECORD_BYTES: usize = 2048;

/// A peer's own signed record, checked.
#[derive(Clone, Debug)]
pub(crate) struct SignedAddresses {
    pub seq: u64,
    pub addresses: Vec<Multiaddr>,
    /// The record as signed, to pass on.
    pub bytes: Vec<u8>,
}

/// A signed record that verifies under the key of the peer it names, within the bounds.
pub(crate) fn verify_record(bytes: &[u8]) -> Option<(PeerId, SignedAddresses)> {
    if bytes.len() > MAX_PEER_RECORD_BYTES {
        return None;
    }
    let envelope = SignedEnvelope::from_protobuf_encoding(bytes).ok()?;
    let record = PeerRecord::from_signed_envelope(envelope).ok()?;
    let addresses = record
        .addresses()
        .iter()
        .take(MAX_PEER_ADDRESSES)
        .cloned()
        .collect();
    Some((
        record.peer_id(),
        SignedAddresses {
            seq: record.seq(),
            addresses,
            bytes: bytes.to_vec(),
        },
    ))
}

/// Where a signed record came from: the peer itself, or another peer passing it on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// The peer sent it over its own authenticated connection (identify): what it says now,
    /// taken whatever its sequence number (a peer whose clock went back still gets heard).
    Itself,
    /// Passed on by another peer, or read back from storage: taken only if newer.
    PassedOn,
}

/// What became of a signed record offered to the book.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Taken {
    /// Older than the one held, or the same.
    No,
    /// Newer, with the same addresses (a peer signs a new record at every identify).
    Refreshed,
    /// The first for this peer, or with other addresses: worth keeping across restarts.
    NewAddresses,
}

#[derive(Default)]
struct Entry {
    signed: Option<SignedAddresses>,
    /// Unsigned addresses, newest first.
    hints: VecDeque<Multiaddr>,
}

#[derive(Default)]
pub(crate) struct AddressBook {
    entries: HashMap<PeerId, Entry>,
    /// Peers in the order they were first remembered, for eviction.
    order: VecDeque<PeerId>,
}

impl AddressBook {
    fn entry(&mut self, peer: PeerId) -> &mut Entry {
        if !self.entries.contains_key(&peer) {
            if self.order.len() >= MAX_BOOK_PEERS
                && let Some(oldest) = self.order.pop_front()
            {
                self.entries.remove(&oldest);
            }
            self.order.push_back(peer);
        }
        self.entries.entry(peer).or_default()
    }

    /// Remembers an unsigned address of a peer (a hint: tried after its signed record's).
    pub(crate) fn add(&mut self, peer: PeerId, address: Multiaddr) {
        let hints = &mut self.entry(peer).hints;
        hints.retain(|a| *a != address);
        hints.push_front(address);
        hints.truncate(MAX_PEER_ADDRESSES);
    }

    /// Takes a peer's signed record (checked by [`verify_record`]) if it is the first, or
    /// not older than the one held, or comes from the peer itself; a record taken drops the
    /// hints, which it supersedes.
    pub(crate) fn add_signed(
        &mut self,
        peer: PeerId,
        record: SignedAddresses,
        source: Source,
    ) -> Taken {
        let entry = self.entry(peer);
        let taken = match &entry.signed {
            None => Taken::NewAddresses,
            Some(held) if held.bytes == record.bytes => return Taken::No,
            // Equal numbers count as newer: libp2p numbers records by the second, and a peer
            // that restarted within a second of its last record signs another with the same
            // number. Both are the peer's own; the one that came last is more likely current.
            Some(held) if source == Source::Itself || record.seq >= held.seq => {
                if held.addresses == record.addresses {
                    Taken::Refreshed
                } else {
                    Taken::NewAddresses
                }
            }
            Some(_) => return Taken::No,
        };
        entry.signed = Some(record);
        entry.hints.clear();
        taken
    }

    /// The signed record held for a peer, as signed.
    pub(crate) fn record_of(&self, peer: &PeerId) -> Option<&[u8]> {
        self.entries
            .get(peer)?
            .signed
            .as_ref()
            .map(|s| s.bytes.as_slice())
    }

    /// Where to dial a peer: its signed addresses first, then the hints.
    pub(crate) fn of(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let Some(entry) = self.entries.get(peer) else {
            return Vec::new();
        };
        let mut out: Vec<Multiaddr> = entry
            .signed
            .iter()
            .flat_map(|s| s.addresses.iter().cloned())
            .collect();
        for hint in &entry.hints {
            if !out.contains(hint) {
                out.push(hint.clone());
            }
        }
        out
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
        assert_eq!(book.entries.len(), MAX_BOOK_PEERS);
    }

    fn record(key: &libp2p::identity::Keypair, port: u16) -> Vec<u8> {
        let address = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        PeerRecord::new(key, vec![address])
            .unwrap()
            .into_signed_envelope()
            .into_protobuf_encoding()
    }

    /// A record of `key`'s peer with sequence number `seq` (libp2p sets it to the time).
    fn record_with_seq(key: &libp2p::identity::Keypair, port: u16, seq: u64) -> SignedAddresses {
        let (_, mut checked) = verify_record(&record(key, port)).unwrap();
        checked.seq = seq;
        checked
    }

    #[test]
    fn records_verify_only_as_signed_and_within_bounds() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let bytes = record(&key, 7);
        let (peer, checked) = verify_record(&bytes).unwrap();
        assert_eq!(peer, key.public().to_peer_id());
        assert_eq!(checked.addresses.len(), 1);
        // One flipped bit anywhere, a truncation, or an oversized blob: refused, no panic.
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            if let Some((other, _)) = verify_record(&bad) {
                // A flip inside the protobuf framing that still decodes to the same signed
                // payload is harmless; a different peer or payload never verifies.
                assert_eq!(other, peer);
            }
        }
        assert!(verify_record(&bytes[..bytes.len() - 1]).is_none());
        assert!(verify_record(&vec![0u8; MAX_PEER_RECORD_BYTES + 1]).is_none());
        assert!(verify_record(&[]).is_none());
    }

    #[test]
    fn a_signed_record_is_replaced_only_by_a_newer_one_or_by_the_peer_itself() {
        let key = libp2p::identity::Keypair::generate_ed25519();
        let peer = key.public().to_peer_id();
        let mut book = AddressBook::default();
        book.add(peer, "/ip4/127.0.0.1/tcp/1".parse().unwrap());
        let taken = book.add_signed(peer, record_with_seq(&key, 2, 10), Source::PassedOn);
        assert_eq!(taken, Taken::NewAddresses);
        // The record supersedes the hint.
        assert_eq!(
            book.of(&peer),
            vec!["/ip4/127.0.0.1/tcp/2".parse().unwrap()]
        );
        // An older record passed on is refused; an unsigned claim only adds a hint after it.
        let older = book.add_signed(peer, record_with_seq(&key, 3, 9), Source::PassedOn);
        assert_eq!(older, Taken::No);
        book.add(peer, "/ip4/127.0.0.1/tcp/4".parse().unwrap());
        let known = book.of(&peer);
        assert_eq!(
            known[0],
            "/ip4/127.0.0.1/tcp/2".parse::<Multiaddr>().unwrap()
        );
        assert_eq!(known.len(), 2);
        // A newer one is taken, and so is what the peer says itself whatever its number.
        let newer = book.add_signed(peer, record_with_seq(&key, 5, 11), Source::PassedOn);
        assert_eq!(newer, Taken::NewAddresses);
        let itself = book.add_signed(peer, record_with_seq(&key, 6, 1), Source::Itself);
        assert_eq!(itself, Taken::NewAddresses);
        // The same second, other addresses: taken (a restart within a second).
        let same_second = book.add_signed(peer, record_with_seq(&key, 7, 11), Source::PassedOn);
        assert_eq!(same_second, Taken::NewAddresses);
        let mut same_addresses = record_with_seq(&key, 7, 12);
        same_addresses.bytes.push(0);
        let refreshed = book.add_signed(peer, same_addresses, Source::PassedOn);
        assert_eq!(refreshed, Taken::Refreshed);
        assert_eq!(
            book.of(&peer),
            vec!["/ip4/127.0.0.1/tcp/7".parse().unwrap()]
        );
        assert!(book.record_of(&peer).is_some());
    }
}
