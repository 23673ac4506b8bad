//! What the node speaks and to whom: every protocol of the node in one behaviour.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, allow_block_list, autonat, dcutr, gossipsub, identify, identity::Keypair, kad,
    mdns, relay, request_response,
};
use sha2::{Digest, Sha256};

use crate::mesh_keep_alive::MeshKeepAlive;
use crate::wire::{
    Codec, DIRECT_PROTOCOL, Direct, MAILBOX_PROTOCOL, Mailbox, SYNC_PROTOCOL, Sync, WHERE_PROTOCOL,
    Where,
};

/// Our Kademlia protocol name: a DHT of dspring nodes only, apart from the public IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/dspring/kad/1.0.0");
/// Peers per DHT routing-table bucket. libp2p-kad allocates every bucket whole at start (256
/// of them), so its default of 20 costs 1.6 MiB per node before any peer is known; 8 costs
/// 0.66 MiB and is what the Mainline BitTorrent DHT runs on. Records are still stored at the
/// 20 closest peers (the replication factor is unchanged).
const KBUCKET_SIZE: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(8) {
    Some(size) => size,
    None => std::num::NonZeroUsize::MIN,
};
pub const IDENTIFY_VERSION: &str = "/dspring/1.0.0";
/// Gossipsub mesh degree (D, D_low, D_high): each member forwards to about six others, so a
/// sender's upload stays flat as the group grows.
pub const MESH_N: usize = 6;
pub const MESH_N_LOW: usize = 4;
pub const MESH_N_HIGH: usize = 12;
/// Messages above this size are announced with IDONTWANT to mesh peers, saving duplicates.
pub const IDONTWANT_THRESHOLD: usize = 512;
/// Largest gossip message: one envelope at its bound plus protobuf framing.
pub const MAX_GOSSIP_MESSAGE: usize = dspring_proto::envelope::MAX_ENVELOPE_LEN + 1024;
/// How long a request may wait for its response (a sync page of a slow peer included).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(NetworkBehaviour)]
pub(crate) struct Behaviour {
    pub addresses: crate::address_book::AddressBook,
    /// Peers this node refuses (their connections are closed and new ones denied).
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub identify: identify::Behaviour,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Keeps a connection open only while the peer is in one of our meshes.
    pub gossipsub: MeshKeepAlive<gossipsub::Behaviour>,
    pub direct: request_response::Behaviour<Codec<Direct>>,
    pub sync: request_response::Behaviour<Codec<Sync>>,
    pub mailbox: request_response::Behaviour<Codec<Mailbox>>,
    /// "Where is peer X": signed records passed on between peers.
    pub where_is: request_response::Behaviour<Codec<Where>>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub relay_client: relay::client::Behaviour,
    pub relay_server: Toggle<relay::Behaviour>,
    pub dcutr: dcutr::Behaviour,
    /// Closes a peer's relayed connections once a direct one is up.
    pub direct_over_relay: crate::direct_over_relay::DirectOverRelay,
    /// Holds connections to the node's own mailboxes open.
    pub held_open: crate::held_open::HeldOpen,
    pub autonat: autonat::Behaviour,
}

/// Bytes this node's request-response protocols wrote (requests and answers), one count per
/// protocol, shared with every connection's codec.
#[derive(Clone, Debug, Default)]
pub(crate) struct Written {
    pub direct: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub sync: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub mailbox: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub where_is: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Written {
    /// The counts now.
    pub fn read(&self) -> crate::ProtocolSent {
        let load =
            |count: &std::sync::atomic::AtomicU64| count.load(std::sync::atomic::Ordering::Relaxed);
        crate::ProtocolSent {
            direct: load(&self.direct),
            sync: load(&self.sync),
            mailbox: load(&self.mailbox),
            where_is: load(&self.where_is),
        }
    }
}

/// Our gossipsub parameters, without the node's validation step (which [`Behaviour::new`]
/// adds). Public so that the network benchmark can run bare gossipsub with the same ones as
/// its baseline.
pub fn gossip_parameters() -> gossipsub::ConfigBuilder {
    let mut builder = gossipsub::ConfigBuilder::default();
    builder
        .mesh_n(MESH_N)
        .mesh_n_low(MESH_N_LOW)
        .mesh_n_high(MESH_N_HIGH)
        // The sender sends to its mesh only, never to every subscriber.
        .flood_publish(false)
        .idontwant_message_size_threshold(IDONTWANT_THRESHOLD)
        .max_transmit_size(MAX_GOSSIP_MESSAGE)
        // No libp2p author or signature: envelopes carry their own, and a relayed message
        // should not name the peer that published it.
        .validation_mode(gossipsub::ValidationMode::Anonymous)
        .message_id_fn(|message| {
            gossipsub::MessageId::from(Sha256::digest(&message.data).to_vec())
        });
    builder
}

pub(crate) struct Options {
    /// Where the request-response codecs count the bytes they write.
    pub written: Written,
    pub mdns: bool,
    pub relay_server: bool,
    /// The DHT mode at start (`network::dht_mode`).
    pub dht_mode: kad::Mode,
    /// See `Config::probe_private_addresses`.
    pub probe_private_addresses: bool,
}

impl Behaviour {
    pub(crate) fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        options: &Options,
    ) -> Result<Self, String> {
        let peer_id = key.public().to_peer_id();
        let gossipsub_config = gossip_parameters()
            // The node checks every envelope before it is forwarded.
            .validate_messages()
            .build()
            .map_err(|e| e.to_string())?;
        let mut gossipsub =
            gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Anonymous, gossipsub_config)?;
        let mut score = gossipsub::PeerScoreParams::default();
        // Many peers on one IP are penalised as a likely Sybil attack; peers on this host
        // (tests, several nodes on one machine) are not an attack, and without this they are
        // scored below the graylist and gossip stops.
        score.ip_colocation_factor_whitelist.extend([
            std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST),
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ]);
        // Thresholds at their defaults: gossip to a peer stops below -10, our publishing to it
        // below -50, and everything from it is ignored below -80 (graylisted).
        gossipsub.with_peer_score(score, gossipsub::PeerScoreThresholds::default())?;
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        // Records from peers are stored only after the node's check (see `Config`).
        kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
        kad_config.set_kbucket_size(KBUCKET_SIZE);
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // Set, not left to kad: kad would serve only once an external address is confirmed,
        // which on loopback and LANs never happens (see `network::dht_mode`).
        kad.set_mode(Some(options.dht_mode));
        let mdns = if options.mdns {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .map_err(|e| e.to_string())?,
            )
        } else {
            None
        };
        let request_config =
            request_response::Config::default().with_request_timeout(REQUEST_TIMEOUT);
        Ok(Self {
            addresses: crate::address_book::AddressBook::default(),
            blocked: allow_block_list::Behaviour::default(),
            // With the node's signed record (its addresses, signed, dated), which peers keep
            // and pass on; pushed to connected peers when the addresses change.
            identify: identify::Behaviour::new(
                identify::Config::new_with_signed_peer_record(IDENTIFY_VERSION.into(), key)
                    .with_push_listen_addr_updates(true)
                    // Names this run, so that peers tell a restart from a second
                    // connection (`stale`).
                    .with_agent_version(crate::stale::agent_version()),
            ),
            kad,
            gossipsub: MeshKeepAlive(gossipsub),
            direct: request_response::Behaviour::with_codec(
                Codec::counting(options.written.direct.clone()),
                [(DIRECT_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_config.clone(),
            ),
            sync: request_response::Behaviour::with_codec(
                Codec::counting(options.written.sync.clone()),
                [(SYNC_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_config.clone(),
            ),
            mailbox: request_response::Behaviour::with_codec(
                Codec::counting(options.written.mailbox.clone()),
                [(MAILBOX_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_config.clone(),
            ),
            where_is: request_response::Behaviour::with_codec(
                Codec::counting(options.written.where_is.clone()),
                [(WHERE_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_config,
            ),
            mdns: mdns.into(),
            relay_client,
            relay_server: options
                .relay_server
                .then(|| relay::Behaviour::new(peer_id, relay_server_config()))
                .into(),
            dcutr: dcutr::Behaviour::new(peer_id),
            direct_over_relay: crate::direct_over_relay::DirectOverRelay::default(),
            held_open: crate::held_open::HeldOpen::default(),
            autonat: autonat::Behaviour::new(
                peer_id,
                autonat::Config {
                    only_global_ips: !options.probe_private_addresses,
                    ..autonat::Config::default()
                },
            ),
        })
    }
}

/// How long one relayed connection may last. libp2p's default (2 minutes) is made for
/// connections that hole punching soon replaces; a node behind NAT that punching cannot reach
/// lives on relayed connections, and its groups' traffic should not be cut every 2 minutes.
pub const RELAY_CIRCUIT_DURATION: Duration = Duration::from_secs(30 * 60);
/// How many bytes one relayed connection may carry (libp2p's default is 128 KiB, about a
/// hundred messages): a busy group's half hour. With libp2p's 16 circuits at a time, a relay
/// forwards at most 512 MiB per half hour.
pub const RELAY_CIRCUIT_BYTES: u64 = 32 * 1024 * 1024;

/// The relay server's limits: libp2p's defaults (reservations, circuits at a time and rate
/// limits per peer and per IP) but for the length and size of one circuit.
fn relay_server_config() -> relay::Config {
    relay::Config {
        max_circuit_duration: RELAY_CIRCUIT_DURATION,
        max_circuit_bytes: RELAY_CIRCUIT_BYTES,
        ..relay::Config::default()
    }
}

/// Score parameters of a group's topic, set when the node subscribes to it. Without them a
/// rejected envelope costs its sender nothing: gossipsub counts invalid deliveries per topic
/// only for topics with parameters.
///
/// * Invalid deliveries (P4), what the node rejects (garbage, bad signatures): -10 times the
///   count squared, the count decaying by 10 % a second. One costs -10, a gossip-threshold
///   slip an honest peer recovers from; three at once cost -90, below the graylist, for about
///   a second; a peer that keeps sending one a second settles near a count of 10 (-1000) and
///   stays graylisted while it does.
/// * First deliveries (P2) earn up to +10 and time in the mesh (P1) up to +6, so that a
///   useful peer has a margin above one mistake.
/// * Mesh delivery rates (P3, P3b) are off: a group can be quiet for hours, and P3 would
///   then score every honest mesh peer down for the messages nobody sent.
pub(crate) fn topic_score_params() -> gossipsub::TopicScoreParams {
    gossipsub::TopicScoreParams {
        topic_weight: 1.0,
        time_in_mesh_weight: 0.01,
        time_in_mesh_quantum: std::time::Duration::from_secs(1),
        time_in_mesh_cap: 600.0,
        first_message_deliveries_weight: 1.0,
        first_message_deliveries_decay: 0.5,
        first_message_deliveries_cap: 10.0,
        mesh_message_deliveries_weight: 0.0,
        mesh_failure_penalty_weight: 0.0,
        invalid_message_deliveries_weight: -10.0,
        invalid_message_deliveries_decay: 0.9,
        ..gossipsub::TopicScoreParams::default()
    }
}
