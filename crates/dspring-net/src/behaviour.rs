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
use crate::wire::{Codec, DIRECT_PROTOCOL, Direct, MAILBOX_PROTOCOL, Mailbox, SYNC_PROTOCOL, Sync};

/// Our Kademlia protocol name: a DHT of dspring nodes only, apart from the public IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/dspring/kad/1.0.0");
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
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub relay_client: relay::client::Behaviour,
    pub relay_server: Toggle<relay::Behaviour>,
    pub dcutr: dcutr::Behaviour,
    pub autonat: autonat::Behaviour,
}

pub(crate) struct Options {
    pub mdns: bool,
    pub relay_server: bool,
}

impl Behaviour {
    pub(crate) fn new(
        key: &Keypair,
        relay_client: relay::client::Behaviour,
        options: &Options,
    ) -> Result<Self, String> {
        let peer_id = key.public().to_peer_id();
        let gossipsub_config = gossipsub::ConfigBuilder::default()
            .mesh_n(MESH_N)
            .mesh_n_low(MESH_N_LOW)
            .mesh_n_high(MESH_N_HIGH)
            // The sender sends to its mesh only, never to every subscriber.
            .flood_publish(false)
            .idontwant_message_size_threshold(IDONTWANT_THRESHOLD)
            .max_transmit_size(MAX_GOSSIP_MESSAGE)
            // The node checks every envelope before it is forwarded.
            .validate_messages()
            // No libp2p author or signature: envelopes carry their own, and a relayed
            // message should not name the peer that published it.
            .validation_mode(gossipsub::ValidationMode::Anonymous)
            .message_id_fn(|message| {
                gossipsub::MessageId::from(Sha256::digest(&message.data).to_vec())
            })
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
        gossipsub.with_peer_score(score, gossipsub::PeerScoreThresholds::default())?;
        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        // Records from peers are stored only after the node's check (see `Config`).
        kad_config.set_record_filtering(kad::StoreInserts::FilterBoth);
        let mut kad =
            kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), kad_config);
        // Answer DHT queries even before AutoNAT confirms reachability: on loopback and LANs
        // it never would, and the routing tables would stay empty.
        kad.set_mode(Some(kad::Mode::Server));
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
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_VERSION.into(),
                key.public(),
            )),
            kad,
            gossipsub: MeshKeepAlive(gossipsub),
            direct: request_response::Behaviour::with_codec(
                Codec::default(),
                [(DIRECT_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_config.clone(),
            ),
            sync: request_response::Behaviour::with_codec(
                Codec::default(),
                [(SYNC_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_config.clone(),
            ),
            mailbox: request_response::Behaviour::with_codec(
                Codec::default(),
                [(MAILBOX_PROTOCOL, request_response::ProtocolSupport::Full)],
                request_config,
            ),
            mdns: mdns.into(),
            relay_client,
            relay_server: options
                .relay_server
                .then(|| relay::Behaviour::new(peer_id, relay::Config::default()))
                .into(),
            dcutr: dcutr::Behaviour::new(peer_id),
            autonat: autonat::Behaviour::new(peer_id, autonat::Config::default()),
        })
    }
}
