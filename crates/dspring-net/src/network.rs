//! The task that owns the swarm: commands in, events out, both through bounded channels.

use std::collections::HashMap;
use std::time::Duration;

use dspring_proto::GroupId;
use futures::StreamExt;
use libp2p::gossipsub::{self, MessageAcceptance, TopicHash};
use libp2p::identity::Keypair;
use libp2p::multiaddr::Protocol;
use libp2p::request_response;
use libp2p::swarm::SwarmEvent;
use libp2p::{
    Multiaddr, PeerId, Swarm, SwarmBuilder, autonat, dcutr, identify, kad, mdns, noise, tcp, yamux,
};
use tokio::sync::{mpsc, oneshot};

use crate::address_book::MAX_PEER_ADDRESSES;
use crate::behaviour::{Behaviour, BehaviourEvent, Options};
use crate::topic;
use crate::wire::{
    DirectRequest, DirectResponse, MailboxRequest, MailboxResponse, SyncRequest, SyncResponse,
};

mod dht;
mod exchange;
mod reach;
mod relays;
mod status;

use dht::{RecordQuery, dht_mode};
use exchange::Exchange;
use relays::Relays;
mod interface;
pub use interface::{Command, Config, Event, InboundId, NetworkError, RecordCheck, Verdict};
pub use status::{Bandwidth, NetworkStatus, ProtocolSent, Reachability, bandwidth_from_metrics};

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
            BehaviourEvent::Kad(event) => self.kad_event(event),
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
