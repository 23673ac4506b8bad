//! Reaching the peers the node asks for: dials, retries with backoff (`reconnect`), signed
//! records kept in the address book, and "where is" requests to connected peers while a wish
//! waits, so that two peers who both moved still meet through anyone connected to both.

use libp2p::PeerId;
use libp2p::request_response;
use libp2p::swarm::DialError;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use tokio::time::Instant;

use super::{Event, Task};
use crate::address_book::{Source, Taken, verify_record};
use crate::wire::{MAX_WHERE_PEERS, WhereRequest, WhereResponse};

/// Connected peers asked where a peer is, per ask: the node's connected peers
/// are mostly fellow members and mailboxes, any of which may have seen the peer since it
/// moved. Each answer is at most a few kilobytes.
const WHERE_ASKED: usize = 8;

impl Task {
    /// The node asks for a connection to `peer`: dial it now unless connected, or waiting
    /// out a backoff after failed dials (the retry comes at its time).
    pub(super) fn connect(&mut self, peer: PeerId) {
        if self.swarm.is_connected(&peer) || peer == *self.swarm.local_peer_id() {
            return;
        }
        if self.wanted.want(peer, Instant::now()) {
            self.dial_wanted(peer);
            // Connected peers are asked at once, not only once the dial failed: a dial of an
            // address the peer left can take the transport's whole handshake timeout to
            // fail (QUIC waits 5 s for a port nobody listens on).
            self.seek(peer);
        }
    }

    /// Adds a peer to the next "where is" request.
    fn seek(&mut self, peer: PeerId) {
        if self.where_pending.len() < crate::reconnect::MAX_WANTED {
            self.where_pending.insert(peer);
        }
    }

    /// When the retry timer should fire: now if peers wait to be asked about and a peer is
    /// connected to ask, else when the next retry or ask of a wish is due.
    pub(super) fn next_reach(&self) -> Option<Instant> {
        if !self.where_pending.is_empty() && self.swarm.network_info().num_peers() > 0 {
            return Some(Instant::now());
        }
        self.wanted.next_due()
    }

    fn dial_wanted(&mut self, peer: PeerId) {
        match self.swarm.dial(peer) {
            Ok(()) | Err(DialError::DialPeerConditionFalse(_)) => {}
            // No address known, or refused before any dial: the same as a failed dial (the
            // swarm reports these only here, not as an event).
            Err(error) => {
                tracing::debug!(%peer, %error, "dial");
                self.dial_failed(peer);
            }
        }
    }

    /// A dial of `peer` failed (every address it was tried at): if the node wants it, a
    /// retry is scheduled, the DHT is searched once, and a lasting failure is reported.
    /// (Connected peers are asked where it is on the wish's own schedule, `reconnect`.)
    pub(super) fn dial_failed(&mut self, peer: PeerId) {
        let Some(after) = self.wanted.dial_failed(&peer, Instant::now()) else {
            return;
        };
        if after.look_up {
            self.look_up(peer);
        }
        if after.report {
            tracing::info!(%peer, "a peer has been out of reach for a while");
            self.queued.push(Event::Unreachable(peer));
        }
    }

    /// Dials the peers whose retry is due, and asks where the failing ones are.
    pub(super) fn reach_tick(&mut self) {
        let due = self.wanted.due(Instant::now());
        for peer in due.dial {
            if !self.swarm.is_connected(&peer) {
                self.dial_wanted(peer);
            }
        }
        for peer in due.seek {
            self.seek(peer);
        }
        self.ask_where();
    }

    /// Asks a few connected peers for the signed records of the peers whose dials failed.
    fn ask_where(&mut self) {
        self.where_pending
            .retain(|p| self.wanted.is_wanted(p) && !self.swarm.is_connected(p));
        // Nobody to ask yet (the node has just started): the peers wait for a connection.
        if self.where_pending.is_empty() || self.swarm.network_info().num_peers() == 0 {
            return;
        }
        let sought: Vec<PeerId> = self
            .where_pending
            .iter()
            .take(MAX_WHERE_PEERS)
            .copied()
            .collect();
        for peer in &sought {
            self.where_pending.remove(peer);
        }
        let asked: Vec<PeerId> = self
            .swarm
            .connected_peers()
            .filter(|p| !sought.contains(p))
            .take(WHERE_ASKED)
            .copied()
            .collect();
        let request = WhereRequest {
            peers: sought.iter().map(|p| p.to_bytes()).collect(),
        };
        tracing::debug!(
            sought = sought.len(),
            asked = asked.len(),
            "asking where peers are"
        );
        for peer in asked {
            self.swarm
                .behaviour_mut()
                .where_is
                .send_request(&peer, request.clone());
        }
    }

    /// Answers "where is" from the records held; takes the records in answers.
    pub(super) fn where_event(
        &mut self,
        event: request_response::Event<WhereRequest, WhereResponse>,
    ) {
        let request_response::Event::Message { message, .. } = event else {
            return;
        };
        match message {
            request_response::Message::Request {
                request, channel, ..
            } => {
                let book = &self.swarm.behaviour().addresses;
                let records = request
                    .peers
                    .iter()
                    .take(MAX_WHERE_PEERS)
                    .filter_map(|bytes| PeerId::from_bytes(bytes).ok())
                    .filter_map(|peer| book.record_of(&peer).map(<[u8]>::to_vec))
                    .collect();
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .where_is
                    .send_response(channel, WhereResponse { records });
            }
            request_response::Message::Response { response, .. } => {
                tracing::debug!(records = response.records.len(), "where-is answered");
                // Only records of peers this node is looking for: a peer answering with
                // records of other keys (valid ones cost it nothing to make) would otherwise
                // push real entries out of the bounded address book.
                for record in response.records.iter().take(MAX_WHERE_PEERS) {
                    if verify_record(record).is_some_and(|(peer, _)| self.wanted.is_wanted(&peer)) {
                        self.take_record(record, Source::PassedOn, true);
                    }
                }
            }
        }
    }

    /// Offers a signed record to the address book. New addresses of a peer met on the
    /// network are told to the node (to keep; `tell_node` is false for the records the node
    /// gives back itself), and a wanted peer that is not connected is dialled at them at once.
    pub(super) fn take_record(&mut self, bytes: &[u8], source: Source, tell_node: bool) {
        let Some((peer, record)) = verify_record(bytes) else {
            tracing::debug!("a signed record that does not verify");
            return;
        };
        if peer == *self.swarm.local_peer_id() {
            return;
        }
        let taken = self
            .swarm
            .behaviour_mut()
            .addresses
            .add_signed(peer, record, source);
        tracing::debug!(%peer, ?taken, ?source, "a signed record");
        if taken != Taken::NewAddresses {
            return;
        }
        if tell_node {
            self.queued.push(Event::PeerRecord {
                peer,
                record: bytes.to_vec(),
            });
        }
        if !self.swarm.is_connected(&peer) && self.wanted.found(&peer) {
            // At the new addresses, even while a dial to the old ones is still under way
            // (it may hang on a QUIC handshake to a port nobody listens on).
            let addresses = self.swarm.behaviour().addresses.of(&peer);
            let dial = DialOpts::peer_id(peer)
                .condition(PeerCondition::Disconnected)
                .addresses(addresses)
                .build();
            if let Err(error) = self.swarm.dial(dial) {
                tracing::debug!(%peer, %error, "dial at new addresses");
                self.dial_failed(peer);
            }
        }
    }
}
