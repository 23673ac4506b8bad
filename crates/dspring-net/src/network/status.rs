//! What the network reports about itself: traffic, connections, meshes, the DHT and
//! reachability (`Network::network_status`).

use libp2p::{Multiaddr, autonat};

/// What this node's network is doing: bytes carried by its connections since it started
/// (application streams, before the multiplexer and encryption add their framing), its
/// connections, meshes and DHT.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetworkStatus {
    pub sent: u64,
    pub received: u64,
    /// Of `sent`: what this node wrote on its own request-response protocols, requests and
    /// answers (each message with its length prefix). The rest is gossip, the DHT, identify
    /// and NAT traversal.
    pub protocol_sent: ProtocolSent,
    /// Connections open now (each counted at both ends, once per end).
    pub connections: u32,
    /// Of `connections`: those through a relay. Hole punching replaces them with direct
    /// ones where both NATs allow it (`RELAYED_OVERLAP` after the direct one is up).
    pub relayed_connections: u32,
    /// Peers in this node's gossipsub meshes now, summed over its topics.
    pub mesh_peers: u32,
    /// Peers in this node's DHT routing table.
    pub dht_peers: u32,
    /// The first DHT bootstrap from the configured peers has not finished yet.
    pub bootstrapping: bool,
    /// Whether peers can dial this node, as their AutoNAT dial-backs found.
    pub reachability: Reachability,
}

/// Bytes written per request-response protocol (see [`NetworkStatus::protocol_sent`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProtocolSent {
    /// Welcomes and envelopes to one peer.
    pub direct: u64,
    /// Sync requests and pages.
    pub sync: u64,
    /// Mailbox news requests and answers.
    pub mailbox: u64,
    /// "Where is" requests and the signed records answered.
    pub where_is: u64,
}

impl ProtocolSent {
    /// All of them together.
    pub fn total(&self) -> u64 {
        self.direct + self.sync + self.mailbox + self.where_is
    }
}

/// Whether peers can dial this node directly, as AutoNAT's probes found: peers dial the
/// addresses the node reports (with the IP they see it at) and say whether that worked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reachability {
    /// No verdict yet: no probe answered, or the node's addresses are private (see
    /// [`Config::probe_private_addresses`](crate::Config::probe_private_addresses)).
    #[default]
    Unknown,
    /// Peers dialled it back at this address.
    Public(Multiaddr),
    /// Peers could not dial it back (NAT or firewall): it is reached only through relays
    /// ([`Config::relays`](crate::Config::relays)), and it answers no DHT queries.
    Private,
}

impl From<&autonat::NatStatus> for Reachability {
    fn from(status: &autonat::NatStatus) -> Self {
        match status {
            autonat::NatStatus::Public(address) => Self::Public(address.clone()),
            autonat::NatStatus::Private => Self::Private,
            autonat::NatStatus::Unknown => Self::Unknown,
        }
    }
}

/// Bytes sent and received on application streams, from libp2p's bandwidth counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bandwidth {
    pub sent: u64,
    pub received: u64,
}

/// Sums libp2p's bandwidth counters by direction. They are only readable as the Prometheus
/// text form, so this reads that:
/// `libp2p_bandwidth_bytes_total{...direction="Outbound"} N`. Public for the network
/// benchmark's bare-gossipsub baseline, which counts the same way.
pub fn bandwidth_from_metrics(registry: &libp2p::metrics::Registry) -> Bandwidth {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, registry).is_err() {
        return Bandwidth::default();
    }
    let mut out = Bandwidth::default();
    for line in text.lines() {
        if !line.starts_with("libp2p_bandwidth_bytes_total{") {
            continue;
        }
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<u64>().ok()) else {
            continue;
        };
        if line.contains("direction=\"Outbound\"") {
            out.sent = out.sent.saturating_add(value);
        } else if line.contains("direction=\"Inbound\"") {
            out.received = out.received.saturating_add(value);
        }
    }
    out
}
