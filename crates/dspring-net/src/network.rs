//! The task that owns the swarm: commands in, events out, both through bounded channels.

use std::collections::HashMap;
use std::time::Duration;

use dspring_proto::GroupId;
use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::gossipsub::{self, MessageAcceptance, MessageId, TopicHash};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, autonat, dcutr, identify, kad, mdns, noise, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

use crate::address_book::MAX_PEER_ADDRESSES;

mod reach;
use crate::behaviour::{Behaviour, BehaviourEvent, Options};
use crate::topic;
use crate::wire::{
    DirectRequest, DirectResponse, MailboxRequest, MailboxResponse, SyncRequest, SyncResponse,
};

/// Events waiting for the node; when full, the network stops reading the swarm until the node
/// catches up (backpressure, not loss).
pub const EVENT_QUEUE: usize = 1024;
/// Commands waiting for the network task.
pub const COMMAND_QUEUE: usize = 1024;
/// Inbound requests awaiting the node's answer; beyond this, new ones are dropped (the peer
/// times out and retries).
pub const MAX_PENDING_INBOUND: usize = 4096;
/// Connections with nothing to do close after this: idle groups keep no connections open.
/// 3 s was tried (2026-11-28): the warm-up's heap peak fell by 0.5 MiB per node, but
/// connections closed between sync rounds were dialled again each round, and idle CPU grew by
/// half (docs/PERFORMANCE.md).
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// The closest responding peers a lookup of a peer waits for. The peer is the closest to its
/// own id, so a lookup that reached it is done; waiting for the 20 closest (libp2p-kad's
/// default) made every lookup contact, and connect to, a large part of a small network.
/// Three, as many as a step asks at once, so that one slow peer near the target does not end
/// it early.
const LOOKUP_RESULTS: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(3) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};
/// Peers being looked up in the DHT to connect to them; beyond this, new requests wait for
/// the next round (the node asks again).
pub const MAX_LOOKUPS: usize = 256;
/// Relays a node listens through: one or two are what a node behind NAT needs, a few more
/// cover relays that are down; each holds a reservation (a connection) open.
pub const MAX_RELAYS: usize = 8;
/// A relay reservation that failed or ended (the relay restarted, the connection broke) is
/// asked for again at once, then at this interval until it holds: peers reach the node again
/// within a minute, and a relay that is down costs one dial per half minute.
pub const RELAY_RETRY: Duration = Duration::from_secs(30);

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
pub struct InboundId(u64);

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

/// DHT record queries in flight.
enum RecordQuery {
    Put(oneshot::Sender<Result<(), NetworkError>>),
    Get(oneshot::Sender<Result<Vec<u8>, NetworkError>>),
}

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
    /// All three protocols together.
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
    /// [`Config::probe_private_addresses`]).
    #[default]
    Unknown,
    /// Peers dialled it back at this address.
    Public(Multiaddr),
    /// Peers could not dial it back (NAT or firewall): it is reached only through relays
    /// ([`Config::relays`]), and it answers no DHT queries.
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

/// The DHT mode: a server answers others' queries and enters their routing tables, so it
/// must be dialable. One that listens on nothing is not; nor is one that peers found they
/// cannot dial back. Before any verdict a listening node serves: on loopback and LANs
/// AutoNAT gives none, and the routing tables would stay empty.
fn dht_mode(listening: bool, reachability: &Reachability) -> kad::Mode {
    if listening && *reachability != Reachability::Private {
        kad::Mode::Server
    } else {
        kad::Mode::Client
    }
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

/// A handle to the network task.
#[derive(Clone, Debug)]
pub struct Network {
    commands: mpsc::Sender<Command>,
    pub local_peer_id: PeerId,
}

impl Network {
    pub async fn send(&self, command: Command) -> Result<(), NetworkError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NetworkError::Stopped)
    }

    /// Sends a command that carries a reply channel, and waits for the reply.
    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, NetworkError> {
        let (done, result) = oneshot::channel();
        self.send(command(done)).await?;
        result.await.map_err(|_| NetworkError::Stopped)
    }

    /// Publishes without waiting for the swarm to take it: the caller goes on at once, and a
    /// failure (no peer on the topic yet) is only logged. Commands keep their order.
    pub async fn publish_and_go_on(
        &self,
        group: GroupId,
        envelope: Vec<u8>,
    ) -> Result<(), NetworkError> {
        let (done, _) = oneshot::channel();
        self.send(Command::Publish {
            group,
            envelope,
            done,
        })
        .await
    }

    pub async fn publish(&self, group: GroupId, envelope: Vec<u8>) -> Result<(), NetworkError> {
        self.ask(|done| Command::Publish {
            group,
            envelope,
            done,
        })
        .await?
    }

    pub async fn send_direct(
        &self,
        peer: PeerId,
        request: DirectRequest,
    ) -> Result<DirectResponse, NetworkError> {
        self.ask(|done| Command::SendDirect {
            peer,
            request,
            done,
        })
        .await?
    }

    pub async fn sync(
        &self,
        peer: PeerId,
        request: SyncRequest,
    ) -> Result<SyncResponse, NetworkError> {
        self.ask(|done| Command::Sync {
            peer,
            request,
            done,
        })
        .await?
    }

    pub async fn mailbox(
        &self,
        peer: PeerId,
        request: MailboxRequest,
    ) -> Result<MailboxResponse, NetworkError> {
        self.ask(|done| Command::Mailbox {
            peer,
            request,
            done,
        })
        .await?
    }

    pub async fn put_record(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        lifetime: Duration,
    ) -> Result<(), NetworkError> {
        self.ask(|done| Command::PutRecord {
            key,
            value,
            lifetime,
            done,
        })
        .await?
    }

    pub async fn get_record(&self, key: Vec<u8>) -> Result<Vec<u8>, NetworkError> {
        self.ask(|done| Command::GetRecord { key, done }).await?
    }

    /// A peer's gossipsub score as this node sees it (`None`: not scored, e.g. unknown).
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, NetworkError> {
        self.ask(|done| Command::PeerScore(peer, done)).await
    }

    pub async fn network_status(&self) -> Result<NetworkStatus, NetworkError> {
        self.ask(Command::Status).await
    }

    pub async fn listen_addresses(&self) -> Result<Vec<Multiaddr>, NetworkError> {
        self.ask(Command::ListenAddresses).await
    }
}

/// Starts the network task on the current tokio runtime.
pub fn spawn(
    key: Keypair,
    config: Config,
) -> Result<(Network, mpsc::Receiver<Event>), NetworkError> {
    let setup = |e: &dyn std::fmt::Display| NetworkError::Setup(e.to_string());
    let listening = !config.listen.is_empty();
    let written = crate::behaviour::Written::default();
    let options = Options {
        written: written.clone(),
        mdns: config.mdns,
        relay_server: config.relay_server,
        dht_mode: dht_mode(listening, &Reachability::Unknown),
        probe_private_addresses: config.probe_private_addresses,
    };
    let record_check = config.record_check.clone();
    let mut registry = libp2p::metrics::Registry::default();
    let mut swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| setup(&e))?
        .with_quic()
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| setup(&e))?
        .with_bandwidth_metrics(&mut registry)
        .with_behaviour(|key, relay_client| {
            Behaviour::new(key, relay_client, &options)
                .map_err(Box::<dyn std::error::Error + Send + std::marker::Sync>::from)
        })
        .map_err(|e| setup(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();
    for address in &config.listen {
        swarm.listen_on(address.clone()).map_err(|e| setup(&e))?;
    }
    for (peer, address) in &config.bootstrap {
        swarm.behaviour_mut().kad.add_address(peer, address.clone());
    }
    for address in &config.external {
        swarm.add_external_address(address.clone());
    }
    if config.relays.len() > MAX_RELAYS {
        return Err(NetworkError::TooManyRelays(config.relays.len()));
    }
    let mut relays = Relays::default();
    for relay in &config.relays {
        // A node is not its own relay: it would dial itself every RELAY_RETRY.
        let Some(Protocol::P2p(peer)) = relay
            .iter()
            .last()
            .filter(|p| *p != Protocol::P2p(*swarm.local_peer_id()))
        else {
            return Err(NetworkError::RelayAddress(relay.clone()));
        };
        swarm.add_peer_address(peer, relay.clone());
        // Listened on at the retry timer's first tick, at once.
        relays.down.push(relay.clone().with(Protocol::P2pCircuit));
    }
    // Later rounds are kad's own: periodically, and when the routing table gains a peer.
    let first_bootstrap = if config.bootstrap.is_empty() {
        None
    } else {
        swarm.behaviour_mut().kad.bootstrap().ok()
    };
    let local_peer_id = *swarm.local_peer_id();
    let (commands, command_rx) = mpsc::channel(COMMAND_QUEUE);
    let (event_tx, events) = mpsc::channel(EVENT_QUEUE);
    let task = Task {
        swarm,
        commands: command_rx,
        events: event_tx,
        topics: HashMap::new(),
        next_inbound: 0,
        direct: Exchange::new(),
        sync: Exchange::new(),
        mailbox: Exchange::new(),
        lookups: std::collections::HashSet::new(),
        wanted: crate::reconnect::Wanted::default(),
        where_pending: std::collections::HashSet::new(),
        queued: Vec::new(),
        connections: crate::stale::Connections::default(),
        registry,
        written,
        record_check,
        record_queries: HashMap::new(),
        first_bootstrap,
        relays,
        listening,
    };
    tokio::spawn(task.run());
    Ok((
        Network {
            commands,
            local_peer_id,
        },
        events,
    ))
}

struct Task {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    /// Subscribed topics, to name the group of a gossip message.
    topics: HashMap<TopicHash, GroupId>,
    next_inbound: u64,
    direct: Exchange<DirectRequest, DirectResponse>,
    sync: Exchange<SyncRequest, SyncResponse>,
    mailbox: Exchange<MailboxRequest, MailboxResponse>,
    /// Peers wanted and looked up in the DHT, to dial once found.
    lookups: std::collections::HashSet<PeerId>,
    /// Peers the node asked to connect to, until connected: failed dials are retried with
    /// backoff, and start a search for where the peer is now (see `reach`).
    wanted: crate::reconnect::Wanted,
    /// Wanted peers whose dial failed, to ask connected peers about at the next retry tick.
    where_pending: std::collections::HashSet<PeerId>,
    /// Events for the node produced while handling one swarm event, sent after it.
    queued: Vec<Event>,
    /// Open connections, to close those a restarted peer left behind.
    connections: crate::stale::Connections,
    /// libp2p's bandwidth counters.
    registry: libp2p::metrics::Registry,
    /// Bytes written by the request-response codecs.
    written: crate::behaviour::Written,
    record_check: Option<RecordCheck>,
    record_queries: HashMap<kad::QueryId, RecordQuery>,
    /// The first bootstrap query, until it finishes.
    first_bootstrap: Option<kad::QueryId>,
    relays: Relays,
    /// The node was configured to listen on some address (see [`dht_mode`]).
    listening: bool,
}

/// The relays this node listens through, and which of them hold a reservation now.
#[derive(Default)]
struct Relays {
    /// Circuit addresses (`<relay>/p2p-circuit`) being listened on.
    up: HashMap<ListenerId, Multiaddr>,
    /// Circuit addresses to listen on at the next retry.
    down: Vec<Multiaddr>,
}

impl Relays {
    /// No relay was configured.
    fn is_empty(&self) -> bool {
        self.up.is_empty() && self.down.is_empty()
    }

    /// Asks every relay that is down for a reservation.
    fn listen(&mut self, swarm: &mut Swarm<Behaviour>) {
        for circuit in std::mem::take(&mut self.down) {
            match swarm.listen_on(circuit.clone()) {
                Ok(id) => {
                    self.up.insert(id, circuit);
                }
                Err(error) => {
                    tracing::debug!(%error, %circuit, "listening through a relay");
                    self.down.push(circuit);
                }
            }
        }
    }

    /// A listener closed: if it was a relay's, it is asked again at the next retry.
    fn closed(&mut self, listener: ListenerId) {
        if let Some(circuit) = self.up.remove(&listener) {
            self.down.push(circuit);
        }
    }

    /// A connection to `peer` is up: if it is a relay that holds no reservation of ours, ask
    /// it now rather than at the next retry. The first request usually fails when the relay
    /// is also a bootstrap node: the relay client's own dial is refused while the
    /// bootstrap's dial to the same peer is under way, and the listener closes at once.
    fn connected(&mut self, peer: PeerId, swarm: &mut Swarm<Behaviour>) {
        if self
            .down
            .iter()
            .any(|circuit| relay_of(circuit) == Some(peer))
        {
            self.listen(swarm);
        }
    }
}

/// The relay's peer id in a circuit address `…/p2p/<relay>/p2p-circuit`.
fn relay_of(circuit: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for protocol in circuit.iter() {
        match protocol {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

impl Task {
    /// Peers in the DHT routing table.
    fn dht_peers(&mut self) -> usize {
        self.swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|bucket| bucket.num_entries())
            .sum()
    }
}

/// The requests of one request-response protocol in flight, both ways.
struct Exchange<Request, Response> {
    /// Inbound requests waiting for the node's answer.
    inbound: HashMap<InboundId, ResponseChannel<Response>>,
    /// Our requests waiting for the peer's answer.
    outbound: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, NetworkError>>>,
    _request: std::marker::PhantomData<Request>,
}

impl<Request, Response> Exchange<Request, Response> {
    fn new() -> Self {
        Self {
            inbound: HashMap::new(),
            outbound: HashMap::new(),
            _request: std::marker::PhantomData,
        }
    }

    /// Settles responses and failures; returns a new inbound request for the node, unless too
    /// many wait already (then it is dropped and the peer's request times out).
    fn on_event(
        &mut self,
        event: request_response::Event<Request, Response>,
        next_inbound: &mut u64,
    ) -> Option<(InboundId, PeerId, Request)> {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    if self.inbound.len() >= MAX_PENDING_INBOUND {
                        return None;
                    }
                    *next_inbound += 1;
                    let id = InboundId(*next_inbound);
                    self.inbound.insert(id, channel);
                    Some((id, peer, request))
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(done) = self.outbound.remove(&request_id) {
                        let _ = done.send(Ok(response));
                    }
                    None
                }
            },
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => {
                if let Some(done) = self.outbound.remove(&request_id) {
                    let _ = done.send(Err(NetworkError::Request(error.to_string())));
                }
                None
            }
            request_response::Event::InboundFailure { .. }
            | request_response::Event::ResponseSent { .. } => None,
        }
    }
}

impl Task {
    async fn run(mut self) {
        let mut relay_retry = tokio::time::interval(RELAY_RETRY);
        relay_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Retries and asks of peers the node wants (`reach`): a timer only while any wait.
            let next_reach = self.next_reach();
            tokio::select! {
                _ = tokio::time::sleep_until(next_reach.unwrap_or_else(tokio::time::Instant::now)),
                    if next_reach.is_some() => {
                    self.reach_tick();
                    if self.flush().await.is_err() {
                        return;
                    }
                }
                _ = relay_retry.tick(), if !self.relays.down.is_empty() => {
                    self.relays.listen(&mut self.swarm);
                }
                command = self.commands.recv() => match command {
                    Some(command) => {
                        self.command(command);
                        if self.flush().await.is_err() {
                            return;
                        }
                    }
                    // Every handle is gone: the node has stopped.
                    None => return,
                },
                event = self.swarm.select_next_some() => {
                    if self.swarm_event(event).await.is_err() {
                        return;
                    }
                }
            }
        }
    }

    fn command(&mut self, command: Command) {
        let behaviour = self.swarm.behaviour_mut();
        match command {
            Command::Dial(address) => {
                if let Err(error) = self.swarm.dial(address) {
                    tracing::debug!(%error, "dial failed");
                }
            }
            Command::Connect(peer) => self.connect(peer),
            Command::AddAddress(peer, address) => {
                behaviour.addresses.add(peer, address.clone());
                behaviour.kad.add_address(&peer, address);
            }
            Command::AddRecord(record) => {
                self.take_record(&record, crate::address_book::Source::PassedOn, false);
            }
            Command::Subscribe(group) => {
                let topic = topic::topic(&group);
                if behaviour.gossipsub.subscribe(&topic).is_ok() {
                    self.topics.insert(topic.hash(), group);
                }
                if let Err(error) = behaviour
                    .gossipsub
                    .set_topic_params(topic, crate::behaviour::topic_score_params())
                {
                    tracing::warn!(%error, "topic score parameters");
                }
            }
            Command::Unsubscribe(group) => {
                let topic = topic::topic(&group);
                behaviour.gossipsub.unsubscribe(&topic);
                self.topics.remove(&topic.hash());
            }
            Command::Publish {
                group,
                envelope,
                done,
            } => {
                let result = behaviour
                    .gossipsub
                    .publish(topic::topic(&group), envelope)
                    .map(|_| ())
                    .map_err(|e| NetworkError::Publish(e.to_string()));
                if let Err(error) = &result {
                    tracing::debug!(%error, "publish");
                }
                let _ = done.send(result);
            }
            Command::Validate {
                message_id,
                source,
                verdict,
            } => {
                let acceptance = match verdict {
                    Verdict::Accept => MessageAcceptance::Accept,
                    Verdict::Ignore => MessageAcceptance::Ignore,
                    Verdict::Reject => MessageAcceptance::Reject,
                };
                behaviour.gossipsub.report_message_validation_result(
                    &message_id,
                    &source,
                    acceptance,
                );
            }
            Command::SendDirect {
                peer,
                request,
                done,
            } => {
                let id = behaviour.direct.send_request(&peer, request);
                self.direct.outbound.insert(id, done);
            }
            Command::AnswerDirect { id, response } => {
                if let Some(channel) = self.direct.inbound.remove(&id) {
                    let _ = behaviour.direct.send_response(channel, response);
                }
            }
            Command::Sync {
                peer,
                request,
                done,
            } => {
                let id = behaviour.sync.send_request(&peer, request);
                self.sync.outbound.insert(id, done);
            }
            Command::AnswerSync { id, response } => {
                if let Some(channel) = self.sync.inbound.remove(&id) {
                    let _ = behaviour.sync.send_response(channel, response);
                }
            }
            Command::Mailbox {
                peer,
                request,
                done,
            } => {
                let id = behaviour.mailbox.send_request(&peer, request);
                self.mailbox.outbound.insert(id, done);
            }
            Command::AnswerMailbox { id, response } => {
                if let Some(channel) = self.mailbox.inbound.remove(&id) {
                    let _ = behaviour.mailbox.send_response(channel, response);
                }
            }
            Command::Hold(peer, hold) => behaviour.held_open.hold(peer, hold),
            Command::Block(peer) => {
                behaviour.blocked.block_peer(peer);
            }
            Command::Unblock(peer) => {
                behaviour.blocked.unblock_peer(peer);
            }
            Command::PutRecord {
                key,
                value,
                lifetime,
                done,
            } => {
                let record = kad::Record {
                    key: kad::RecordKey::new(&key),
                    value,
                    publisher: None,
                    expires: Some(std::time::Instant::now() + lifetime),
                };
                match behaviour.kad.put_record(record, kad::Quorum::One) {
                    Ok(id) => {
                        self.record_queries.insert(id, RecordQuery::Put(done));
                    }
                    Err(error) => {
                        let _ = done.send(Err(NetworkError::Dht(error.to_string())));
                    }
                }
            }
            Command::GetRecord { key, done } => {
                let id = behaviour.kad.get_record(kad::RecordKey::new(&key));
                self.record_queries.insert(id, RecordQuery::Get(done));
            }
            Command::PeerScore(peer, done) => {
                let _ = done.send(self.swarm.behaviour().gossipsub.peer_score(&peer));
            }
            Command::Status(done) => {
                let behaviour = self.swarm.behaviour();
                let mesh_peers = behaviour
                    .gossipsub
                    .topics()
                    .map(|topic| behaviour.gossipsub.mesh_peers(topic).count())
                    .sum::<usize>();
                let reachability = Reachability::from(&behaviour.autonat.nat_status());
                let relayed = behaviour.direct_over_relay.relayed();
                let dht_peers = self.dht_peers();
                let bandwidth = bandwidth_from_metrics(&self.registry);
                let _ = done.send(NetworkStatus {
                    sent: bandwidth.sent,
                    received: bandwidth.received,
                    protocol_sent: self.written.read(),
                    connections: self
                        .swarm
                        .network_info()
                        .connection_counters()
                        .num_established(),
                    relayed_connections: u32::try_from(relayed).unwrap_or(u32::MAX),
                    mesh_peers: u32::try_from(mesh_peers).unwrap_or(u32::MAX),
                    dht_peers: u32::try_from(dht_peers).unwrap_or(u32::MAX),
                    bootstrapping: self.first_bootstrap.is_some(),
                    reachability,
                });
            }
            Command::ListenAddresses(done) => {
                let _ = done.send(self.swarm.listeners().cloned().collect());
            }
        }
    }

    /// Starts a DHT lookup of a wanted peer (within the bound; `reconnect` asks once per
    /// wish).
    fn look_up(&mut self, peer: PeerId) {
        if self.lookups.contains(&peer) || self.lookups.len() >= MAX_LOOKUPS {
            return;
        }
        self.lookups.insert(peer);
        self.swarm
            .behaviour_mut()
            .kad
            .get_n_closest_peers(peer, LOOKUP_RESULTS);
    }

    /// Handles one swarm event; `Err` when the node is gone.
    async fn swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) -> Result<(), ()> {
        let out = match event {
            SwarmEvent::NewListenAddr { address, .. } => Some(Event::Listening(address)),
            SwarmEvent::ExpiredListenAddr { address, .. } => Some(Event::NotListening(address)),
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                reason,
            } => {
                if let Err(error) = reason {
                    tracing::debug!(%error, "a listener closed");
                }
                self.relays.closed(listener_id);
                for address in addresses {
                    self.events
                        .send(Event::NotListening(address))
                        .await
                        .map_err(|_| ())?;
                }
                None
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                self.connections.established(peer_id, connection_id);
                if num_established.get() == 1 {
                    self.wanted.connected(&peer_id);
                    self.relays.connected(peer_id, &mut self.swarm);
                    Some(Event::Connected(peer_id))
                } else {
                    None
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                ..
            } if !self.swarm.is_connected(&peer) => {
                self.dial_failed(peer);
                None
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if self.connections.closed(peer_id, connection_id)
                    && let Err(error) = self.swarm.dial(peer_id)
                {
                    tracing::debug!(%error, "dialling a peer that came back");
                }
                (num_established == 0).then_some(Event::Disconnected(peer_id))
            }
            SwarmEvent::Behaviour(event) => self.behaviour_event(event),
            _ => None,
        };
        self.flush().await?;
        match out {
            Some(event) => self.events.send(event).await.map_err(|_| ()),
            None => Ok(()),
        }
    }

    /// Sends the node the events queued while handling a command or an event.
    async fn flush(&mut self) -> Result<(), ()> {
        for event in std::mem::take(&mut self.queued) {
            self.events.send(event).await.map_err(|_| ())?;
        }
        Ok(())
    }

    /// A peer whose request or response broke its protocol's bounds or framing (our codec
    /// says `InvalidData`) is disconnected: it is faulty or hostile, and every stream it
    /// opens costs us.
    fn drop_if_misbehaved<Req, Resp>(&mut self, event: &request_response::Event<Req, Resp>) {
        let peer = match event {
            request_response::Event::InboundFailure {
                peer,
                error: request_response::InboundFailure::Io(error),
                ..
            }
            | request_response::Event::OutboundFailure {
                peer,
                error: request_response::OutboundFailure::Io(error),
                ..
            } if error.kind() == std::io::ErrorKind::InvalidData => *peer,
            _ => return,
        };
        tracing::debug!(%peer, "dropping a peer that broke a protocol bound");
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    fn behaviour_event(&mut self, event: BehaviourEvent) -> Option<Event> {
        match event {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => match self.topics.get(&message.topic) {
                Some(group) => Some(Event::Gossip {
                    group: *group,
                    message_id,
                    source: propagation_source,
                    envelope: message.data,
                }),
                None => {
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            MessageAcceptance::Ignore,
                        );
                    None
                }
            },
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { peer_id, topic }) => {
                self.topics.get(&topic).map(|group| Event::Subscribed {
                    peer: peer_id,
                    group: *group,
                })
            }
            BehaviourEvent::Gossipsub(gossipsub::Event::Unsubscribed { peer_id, topic }) => {
                self.topics.get(&topic).map(|group| Event::Unsubscribed {
                    peer: peer_id,
                    group: *group,
                })
            }
            BehaviourEvent::Direct(event) => {
                self.drop_if_misbehaved(&event);
                self.direct
                    .on_event(event, &mut self.next_inbound)
                    .map(|(id, peer, request)| Event::Direct { id, peer, request })
            }
            BehaviourEvent::Sync(event) => {
                self.drop_if_misbehaved(&event);
                self.sync
                    .on_event(event, &mut self.next_inbound)
                    .map(|(id, peer, request)| Event::SyncRequested { id, peer, request })
            }
            BehaviourEvent::Mailbox(event) => {
                self.drop_if_misbehaved(&event);
                self.mailbox
                    .on_event(event, &mut self.next_inbound)
                    .map(|(id, peer, request)| Event::MailboxRequested { id, peer, request })
            }
            BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                connection_id,
                info,
            }) => {
                if let Some(instance) = crate::stale::instance_of(&info.agent_version)
                    && self
                        .connections
                        .identified(peer_id, connection_id, instance)
                {
                    tracing::info!(
                        peer = %peer_id,
                        "a peer restarted: its connections from before are closed"
                    );
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return None;
                }
                // What a peer says it listens on goes into the DHT routing table; its signed
                // record (identify checked it is the peer's) into the address book.
                for address in info.listen_addrs.iter().take(MAX_PEER_ADDRESSES) {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, address.clone());
                }
                match info.signed_peer_record {
                    Some(envelope) => self.take_record(
                        &envelope.into_protobuf_encoding(),
                        crate::address_book::Source::Itself,
                        true,
                    ),
                    None => {
                        for address in info.listen_addrs.into_iter().take(MAX_PEER_ADDRESSES) {
                            self.swarm.behaviour_mut().addresses.add(peer_id, address);
                        }
                    }
                }
                None
            }
            BehaviourEvent::WhereIs(event) => {
                self.drop_if_misbehaved(&event);
                self.where_event(event);
                None
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, address) in found {
                    let behaviour = self.swarm.behaviour_mut();
                    behaviour.addresses.add(peer, address.clone());
                    behaviour.kad.add_address(&peer, address);
                }
                None
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::Bootstrap(result),
                step,
                ..
            }) if Some(id) == self.first_bootstrap && step.last => {
                self.first_bootstrap = None;
                let peers = self.dht_peers();
                match result {
                    Ok(_) => tracing::info!(peers, "DHT bootstrap finished"),
                    Err(error) => tracing::warn!(%error, peers, "DHT bootstrap"),
                }
                None
            }
            BehaviourEvent::Kad(kad::Event::InboundRequest {
                request:
                    kad::InboundRequest::PutRecord {
                        record: Some(record),
                        ..
                    },
            }) => {
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
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::PutRecord(result),
                ..
            }) => {
                if let Some(RecordQuery::Put(done)) = self.record_queries.remove(&id) {
                    let _ = done.send(
                        result
                            .map(|_| ())
                            .map_err(|e| NetworkError::Dht(e.to_string())),
                    );
                }
                None
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetRecord(result),
                step,
                ..
            }) => {
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
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetClosestPeers(result),
                step,
                ..
            }) => {
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
            BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                let reachability = Reachability::from(&new);
                if reachability == Reachability::Private && self.relays.is_empty() {
                    tracing::warn!(
                        "peers cannot dial this node (NAT or firewall): name a relay \
                         (`network.relays`) so that they reach it"
                    );
                } else {
                    tracing::info!(?reachability, "reachability");
                }
                let mode = dht_mode(self.listening, &reachability);
                self.swarm.behaviour_mut().kad.set_mode(Some(mode));
                None
            }
            BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            }) => {
                match result {
                    Ok(_) => {
                        tracing::info!(peer = %remote_peer_id, "hole punched: a direct connection")
                    }
                    Err(error) => {
                        tracing::debug!(peer = %remote_peer_id, %error, "hole punching failed")
                    }
                }
                None
            }
            _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn the_relay_of_a_circuit_is_the_peer_before_p2p_circuit() {
        let relay = PeerId::random();
        let node = PeerId::random();
        let circuit: Multiaddr =
            format!("/ip4/198.18.0.1/udp/4001/quic-v1/p2p/{relay}/p2p-circuit")
                .parse()
                .unwrap();
        assert_eq!(relay_of(&circuit), Some(relay));
        assert_eq!(
            relay_of(&circuit.clone().with(Protocol::P2p(node))),
            Some(relay)
        );
        let direct: Multiaddr = format!("/ip4/198.18.0.1/tcp/4001/p2p/{relay}")
            .parse()
            .unwrap();
        assert_eq!(relay_of(&direct), None);
    }
}
