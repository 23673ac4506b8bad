//! The DHT side of the network task: the mode (server or client), record queries, lookups of
//! peers to dial, and Kademlia's events.

use libp2p::PeerId;
use libp2p::kad;
use tokio::sync::oneshot;

use super::{Event, LOOKUP_RESULTS, MAX_LOOKUPS, NetworkError, Reachability, Task};
use crate::address_book::MAX_PEER_ADDRESSES;

/// DHT record queries in flight.
pub(super) enum RecordQuery {
    Put(oneshot::Sender<Result<(), NetworkError>>),
    Get(oneshot::Sender<Result<Vec<u8>, NetworkError>>),
}

/// The DHT mode: a server answers others' queries and enters their routing tables, so it
/// must be dialable. One that listens on nothing is not; nor is one that peers found they
/// cannot dial back. Before any verdict a listening node serves: on loopback and LANs
/// AutoNAT gives none, and the routing tables would stay empty.
pub(super) fn dht_mode(listening: bool, reachability: &Reachability) -> kad::Mode {
    if listening && *reachability != Reachability::Private {
        kad::Mode::Server
    } else {
        kad::Mode::Client
    }
}

impl Task {
    /// Peers in the DHT routing table.
    pub(super) fn dht_peers(&mut self) -> usize {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|bucket| bucket.num_entries())
            .sum()
    }

    /// Starts a DHT lookup of a wanted peer (within the bound; `reconnect` asks once per
    /// wish).
    pub(super) fn look_up(&mut self, peer: PeerId) {
        if self.lookups.contains(&peer) || self.lookups.len() >= MAX_LOOKUPS {
            return;
        }
        self.lookups.insert(peer);
        self.swarm
            .behaviour_mut()
            .kad
            .get_n_closest_peers(peer, LOOKUP_RESULTS);
    }

    /// Kademlia's events: the first bootstrap's end, records peers store here (after the
    /// node's check), the answers to this node's record queries and peer lookups.
    pub(super) fn kad_event(&mut self, event: kad::Event) -> Option<Event> {
        match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::Bootstrap(result),
                step,
                ..
            } if Some(id) == self.first_bootstrap && step.last => {
                self.first_bootstrap = None;
                let peers = self.dht_peers();
                match result {
                    Ok(_) => tracing::info!(peers, "DHT bootstrap finished"),
                    Err(error) => tracing::warn!(%error, peers, "DHT bootstrap"),
                }
                None
            }
            kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        record: Some(record),
                        ..
                    },
            } => {
                let keep = self
                    .record_check
                    .as_ref()
                    .is_some_and(|check| (check.0)(record.key.as_ref(), &record.value));
                if keep {
                    use kad::store::RecordStore;
                    if let Err(error) = self.swarm.behaviour_mut().kad.store_mut().put(record) {
                        tracing::debug!(%error, "storing a DHT record");
                    }
                }
                None
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::PutRecord(result),
                ..
            } => {
                if let Some(RecordQuery::Put(done)) = self.record_queries.remove(&id) {
                    let _ = done.send(
                        result
                            .map(|_| ())
                            .map_err(|e| NetworkError::Dht(e.to_string())),
                    );
                }
                None
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetRecord(result),
                step,
                ..
            } => {
                match result {
                    Ok(kad::GetRecordOk::FoundRecord(found)) => {
                        if let Some(RecordQuery::Get(done)) = self.record_queries.remove(&id) {
                            let _ = done.send(Ok(found.record.value));
                        }
                        if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                            query.finish();
                        }
                    }
                    Ok(kad::GetRecordOk::FinishedWithNoAdditionalRecord { .. }) | Err(_)
                        if step.last =>
                    {
                        if let Some(RecordQuery::Get(done)) = self.record_queries.remove(&id) {
                            let _ = done.send(Err(NetworkError::Dht("record not found".into())));
                        }
                    }
                    _ => {}
                }
                None
            }
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                ..
            } => {
                let (key, peers) = match result {
                    Ok(ok) => (ok.key, ok.peers),
                    Err(kad::GetClosestPeersError::Timeout { key, peers }) => (key, peers),
                };
                if let Ok(target) = PeerId::from_bytes(&key) {
                    if let Some(found) = peers.into_iter().find(|p| p.peer_id == target) {
                        self.lookups.remove(&target);
                        for address in found.addrs.iter().take(MAX_PEER_ADDRESSES) {
                            self.swarm
                                .behaviour_mut()
                                .addresses
                                .add(target, address.clone());
                        }
                        let dial = libp2p::swarm::dial_opts::DialOpts::peer_id(target)
                            .addresses(found.addrs)
                            .build();
                        if let Err(error) = self.swarm.dial(dial) {
                            tracing::debug!(%error, "dial after lookup");
                        }
                    } else if step.last {
                        self.lookups.remove(&target);
                    }
                }
                None
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::Multiaddr;

    #[test]
    fn only_a_listening_node_that_peers_can_dial_or_have_not_judged_serves_the_dht() {
        let public = Reachability::Public(Multiaddr::empty());
        assert_eq!(dht_mode(true, &Reachability::Unknown), kad::Mode::Server);
        assert_eq!(dht_mode(true, &public), kad::Mode::Server);
        assert_eq!(dht_mode(true, &Reachability::Private), kad::Mode::Client);
        for reachability in [Reachability::Unknown, public, Reachability::Private] {
            assert_eq!(dht_mode(false, &reachability), kad::Mode::Client);
        }
    }
}
