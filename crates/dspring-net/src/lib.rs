//! Digital Spring networking on rust-libp2p: TCP and QUIC with Noise and Yamux, identify,
//! Kademlia under our own protocol name, mDNS, relay, DCUtR and AutoNAT, one gossipsub topic per
//! group, and four request-response protocols: direct delivery, sync, mailbox, and "where is"
//! (signed address records passed on between peers).
//!
//! The network knows bytes, peers and topics, never keys or group semantics: the node validates
//! every envelope and tells the network to accept or reject it. One task owns the swarm; the node
//! talks to it through a bounded command channel and reads a bounded event channel.
//!
//! Status: issue #4 (see `docs/NETWORK.md`).

#![forbid(unsafe_code)]

mod address_book;
mod behaviour;
mod direct_over_relay;
mod held_open;
pub mod identity;
mod mesh_keep_alive;
mod network;
pub mod reconnect;
mod stale;
pub mod topic;
pub mod wire;

pub use behaviour::{
    MESH_N, MESH_N_HIGH, MESH_N_LOW, RELAY_CIRCUIT_BYTES, RELAY_CIRCUIT_DURATION, gossip_parameters,
};
pub use direct_over_relay::RELAYED_OVERLAP;
pub use network::{
    Bandwidth, Command, Config, EVENT_QUEUE, Event, InboundId, MAX_LOOKUPS, MAX_PENDING_INBOUND,
    MAX_RELAYS, Network, NetworkError, NetworkStatus, ProtocolSent, RELAY_RETRY, Reachability,
    RecordCheck, Verdict, bandwidth_from_metrics, spawn,
};
