//! What the node and the network task say to each other: the configuration, the commands
//! the node sends, the events it reads, and the errors.

use std::time::Duration;

use dspring_proto::GroupId;
use libp2p::gossipsub::MessageId;
use libp2p::{Multiaddr, PeerId};
use tokio::sync::oneshot;

use super::{MAX_RELAYS, NetworkStatus};
use crate::wire::{
    DirectRequest, DirectResponse, MailboxRequest, MailboxResponse, SyncRequest, SyncResponse,
};

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: Vec<Multiaddr>,
    /// Peers to bootstrap the DHT from.
    pub bootstrap: Vec<(PeerId, Multiaddr)>,
    /// Local network discovery (on by default).
    pub mdns: bool,
    /// Addresses others reach this node at (a server's public address and fixed port),
    /// confirmed at start. A relay serves only once it has one: libp2p's relay advertises
    /// itself only with a confirmed external address, which AutoNAT gives only for global
    /// addresses that peers dialled back.
    pub external: Vec<Multiaddr>,
    /// Act as a relay for peers behind NAT (see `external`).
    pub relay_server: bool,
    /// Relays to listen through, each address ending in `/p2p/<relay's peer id>` (at most
    /// [`MAX_RELAYS`]): the node holds a reservation at each, and its `…/p2p-circuit`
    /// addresses (reported as [`Event::Listening`]) let peers that cannot dial it directly
    /// (it is behind NAT or a firewall) reach it through the relay; DCUtR then tries to
    /// turn such a connection into a direct one.
    pub relays: Vec<Multiaddr>,
    /// Which DHT records this node stores for others: a record is kept only if this says yes
    /// (none are without it). The network does not know what records mean.
    pub record_check: Option<RecordCheck>,
    /// Answer peers' reachability probes (AutoNAT) on private and loopback addresses too.
    /// Off by default: on the internet a private address is not what others reach, so the
    /// answer would mislead. For networks that live on one LAN, and for tests on loopback.
    pub probe_private_addresses: bool,
}

/// Whether to store a DHT record: called with its key and value.
pub type RecordPredicate = dyn Fn(&[u8], &[u8]) -> bool + Send + Sync;

/// Decides whether a DHT record (key, value) received from a peer is stored.
#[derive(Clone)]
pub struct RecordCheck(pub std::sync::Arc<RecordPredicate>);

impl std::fmt::Debug for RecordCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordCheck")
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mdns: true,
            external: Vec::new(),
            relay_server: false,
            relays: Vec::new(),
            record_check: None,
            probe_private_addresses: false,
        }
    }
}

/// What the node makes of a gossip message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: forward it to the mesh.
    Accept,
    /// Not forwarded, no penalty (it may be valid but cannot be checked yet).
    Ignore,
    /// Invalid: dropped, and the peer that sent it is penalised.
    Reject,
}

/// Names an inbound request until the node answers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct InboundId(pub(super) u64);

#[derive(Debug)]
#[non_exhaustive]
pub enum Command {
    Dial(Multiaddr),
    /// Connect to a peer: at its known addresses, or else where a DHT lookup finds it.
    Connect(PeerId),
    /// Remember an address of a peer (an unsigned hint: a contact card's, say).
    AddAddress(PeerId, Multiaddr),
    /// A peer's signed record (libp2p `PeerRecord` envelope, as [`Event::PeerRecord`] gave
    /// it): kept if it verifies and is newer than the one held.
    AddRecord(Vec<u8>),
    Subscribe(GroupId),
    Unsubscribe(GroupId),
    /// A peer's gossipsub score.
    PeerScore(PeerId, oneshot::Sender<Option<f64>>),
    /// Publish an envelope on its group's topic.
    Publish {
        group: GroupId,
        envelope: Vec<u8>,
        done: oneshot::Sender<Result<(), NetworkError>>,
    },
    /// The node's verdict on a gossip message.
    Validate {
        message_id: MessageId,
        source: PeerId,
        verdict: Verdict,
    },
    SendDirect {
        peer: PeerId,
        request: DirectRequest,
        done: oneshot::Sender<Result<DirectResponse, NetworkError>>,
    },
    AnswerDirect {
        id: InboundId,
        response: DirectResponse,
    },
    Sync {
        peer: PeerId,
        request: SyncRequest,
        done: oneshot::Sender<Result<SyncResponse, NetworkError>>,
    },
    AnswerSync {
        id: InboundId,
        response: SyncResponse,
    },
    Mailbox {
        peer: PeerId,
        request: MailboxRequest,
        done: oneshot::Sender<Result<MailboxResponse, NetworkError>>,
    },
    AnswerMailbox {
        id: InboundId,
        response: MailboxResponse,
    },
    /// Hold the connections to a peer open even when idle (`true`: an own mailbox, which
    /// pushes news over it), or let them close when idle again (`false`).
    Hold(PeerId, bool),
    /// Close every connection with a peer and refuse new ones, until unblocked (this run).
    Block(PeerId),
    Unblock(PeerId),
    ListenAddresses(oneshot::Sender<Vec<Multiaddr>>),
    Status(oneshot::Sender<NetworkStatus>),
    /// Publish a record in the DHT (and keep it here) until `lifetime` has passed.
    PutRecord {
        key: Vec<u8>,
        value: Vec<u8>,
        lifetime: Duration,
        done: oneshot::Sender<Result<(), NetworkError>>,
    },
    /// Find a record in the DHT: the first value found.
    GetRecord {
        key: Vec<u8>,
        done: oneshot::Sender<Result<Vec<u8>, NetworkError>>,
    },
}

#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    Listening(Multiaddr),
    /// An address the node no longer listens on (a relay reservation that ended).
    NotListening(Multiaddr),
    Connected(PeerId),
    Disconnected(PeerId),
    /// New signed addresses of a peer (from the peer itself, or passed on by another): the
    /// record, to keep across restarts and give back with [`Command::AddRecord`].
    PeerRecord {
        peer: PeerId,
        record: Vec<u8>,
    },
    /// A peer the node asked to connect to could not be reached for
    /// `reconnect::UNREACHABLE_AFTER`: reported once per wish; it is still retried, slowly,
    /// while the node asks for it.
    Unreachable(PeerId),
    /// A gossip message on a group's topic: answer with [`Command::Validate`].
    Gossip {
        group: GroupId,
        message_id: MessageId,
        source: PeerId,
        envelope: Vec<u8>,
    },
    /// A remote subscribed to a group's topic.
    Subscribed {
        peer: PeerId,
        group: GroupId,
    },
    /// A remote left a group's topic (its group went idle there, or it left the group).
    Unsubscribed {
        peer: PeerId,
        group: GroupId,
    },
    /// Answer with [`Command::AnswerDirect`] once committed.
    Direct {
        id: InboundId,
        peer: PeerId,
        request: DirectRequest,
    },
    /// Answer with [`Command::AnswerSync`].
    SyncRequested {
        id: InboundId,
        peer: PeerId,
        request: SyncRequest,
    },
    /// Answer with [`Command::AnswerMailbox`].
    MailboxRequested {
        id: InboundId,
        peer: PeerId,
        request: MailboxRequest,
    },
}

#[derive(Debug, thiserror::Error, Clone)]
#[non_exhaustive]
pub enum NetworkError {
    #[error("setting up the network: {0}")]
    Setup(String),
    #[error("a relay address must end in /p2p/<another node's peer id>: {0}")]
    RelayAddress(Multiaddr),
    #[error("at most {MAX_RELAYS} relays, {0} given")]
    TooManyRelays(usize),
    #[error("publishing: {0}")]
    Publish(String),
    #[error("request failed: {0}")]
    Request(String),
    #[error("DHT: {0}")]
    Dht(String),
    #[error("the network task has stopped")]
    Stopped,
}
