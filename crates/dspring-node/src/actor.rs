//! The actor: the one owner of the store, the device and the group states.

use std::collections::HashMap;
use std::time::Duration;

use dspring_net::wire::{
    DirectRequest, DirectResponse, MAX_SYNC_PAGE, Mark, SyncRequest, SyncResponse,
};
use dspring_net::{Command, Event as NetEvent, InboundId, Network, Verdict};
use dspring_proto::envelope::{Envelope, Unverified};
use dspring_proto::{Device, Group, GroupId, MemberId, ReceiveError, Staged};
use dspring_store::{Contact, MAX_PAGE, Store, StoredEvent};
use libp2p::{Multiaddr, PeerId};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::{broadcast, mpsc};

use crate::{
    COMMAND_QUEUE, ContactCard, INITIAL_ONE_TIME_PREKEYS, LIVE_EVENTS, Node, NodeConfig, NodeError,
    Request,
};

/// Sync pages and other results of helper tasks waiting for the actor.
const INTERNAL_QUEUE: usize = 256;
/// How often the write-ahead log is folded back (forward secrecy on disk) and the outbox
/// retried.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);
/// How often welcomes for members who were offline are offered again.
const WELCOME_RETRY_INTERVAL: Duration = Duration::from_secs(3);
/// A sync page stays well under the protocol's byte bound.
const SYNC_PAGE_BYTES: usize = dspring_net::wire::MAX_SYNC_RESPONSE / 2;

enum Internal {
    WelcomeTaken {
        member: MemberId,
        group: GroupId,
    },
    SyncPage {
        group: GroupId,
        peer: PeerId,
        response: SyncResponse,
    },
}

struct Actor {
    store: Store,
    device: Device,
    rng: ChaCha20Rng,
    groups: HashMap<GroupId, Group>,
    net: Network,
    addresses: Vec<Multiaddr>,
    live: broadcast::Sender<StoredEvent>,
    internal: mpsc::Sender<Internal>,
    /// Peers connected now: the periodic sync asks those that share a group.
    connected: std::collections::HashSet<PeerId>,
    /// Dropped with the actor, which ends every event stream.
    _running: tokio::sync::watch::Sender<()>,
}

fn random_seed() -> Result<[u8; 32], NodeError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|_| NodeError::Randomness)?;
    Ok(seed)
}

pub(crate) async fn start(config: NodeConfig) -> Result<Node, NodeError> {
    let mut store = Store::open(&config.data_dir, None)?;
    let mut rng = ChaCha20Rng::from_seed(random_seed()?);
    let device = match store.device()? {
        Some(device) => device,
        None => {
            let device = Device::generate(INITIAL_ONE_TIME_PREKEYS, &mut rng);
            store.create_device(&device)?;
            device
        }
    };
    let key = dspring_net::identity::keypair(&device.identity)
        .map_err(|e| dspring_net::NetworkError::Setup(e.to_string()))?;
    let (net, mut net_events) = dspring_net::spawn(
        key,
        dspring_net::Config {
            listen: config.listen.clone(),
            mdns: config.mdns,
            ..dspring_net::Config::default()
        },
    )?;
    let mut groups = HashMap::new();
    for id in store.groups()? {
        if let Some(group) = store.group(&id)? {
            if group.is_active() {
                net.send(Command::Subscribe(id)).await?;
            }
            groups.insert(id, group);
        }
    }
    // Catch-up at start: dial the members of this node's groups at their last known
    // addresses; each connection starts a sync of the groups shared with that member.
    let members: std::collections::BTreeSet<MemberId> = groups
        .values()
        .filter(|g: &&Group| g.is_active())
        .flat_map(|g| g.members())
        .collect();
    for contact in store.contacts()? {
        remember_addresses(&net, &contact.member, &contact.addresses).await;
        if members.contains(&contact.member) {
            for address in &contact.addresses {
                if let Ok(address) = address.parse::<Multiaddr>() {
                    net.send(Command::Dial(address)).await?;
                }
            }
        }
    }
    // Wait for the listeners so that the first contact card carries addresses.
    let mut addresses = Vec::new();
    while addresses.len() < config.listen.len() {
        match tokio::time::timeout(Duration::from_secs(5), net_events.recv()).await {
            Ok(Some(NetEvent::Listening(address))) => addresses.push(address),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    let (requests, request_rx) = mpsc::channel(COMMAND_QUEUE);
    let (live, _) = broadcast::channel(LIVE_EVENTS);
    let (internal, internal_rx) = mpsc::channel(INTERNAL_QUEUE);
    let (running, stopped) = tokio::sync::watch::channel(());
    let id = device.id();
    let actor = Actor {
        store,
        device,
        rng,
        groups,
        net,
        addresses,
        live: live.clone(),
        internal,
        connected: std::collections::HashSet::new(),
        _running: running,
    };
    // Its own thread and single-threaded runtime: SQLite calls block, and must not stall the
    // network's runtime; the store is never shared, so nothing here needs to be `Sync`.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| dspring_net::NetworkError::Setup(e.to_string()))?;
    std::thread::Builder::new()
        .name("dspring-node".into())
        .spawn(move || runtime.block_on(actor.run(request_rx, net_events, internal_rx)))
        .map_err(|e| dspring_net::NetworkError::Setup(e.to_string()))?;
    Ok(Node {
        requests,
        live,
        stopped,
        id,
    })
}

async fn remember_addresses(net: &Network, member: &MemberId, addresses: &[String]) {
    let Ok(peer) = dspring_net::identity::peer_id(member) else {
        return;
    };
    for address in addresses {
        if let Ok(address) = address.parse::<Multiaddr>() {
            let _ = net.send(Command::AddAddress(peer, address)).await;
        }
    }
}

impl Actor {
    async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut net_events: mpsc::Receiver<NetEvent>,
        mut internal: mpsc::Receiver<Internal>,
    ) {
        let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
        let mut welcome_retry = tokio::time::interval(WELCOME_RETRY_INTERVAL);
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(Request::Stop(done)) => {
                        let _ = self.store.checkpoint();
                        // Close the store (and its lock) before saying so: the caller may
                        // reopen the data directory at once.
                        drop(self);
                        let _ = done.send(());
                        return;
                    }
                    // Every handle is gone.
                    None => {
                        let _ = self.store.checkpoint();
                        return;
                    }
                    Some(request) => self.request(request).await,
                },
                Some(event) = net_events.recv() => self.net_event(event).await,
                Some(message) = internal.recv() => self.internal(message).await,
                _ = maintenance.tick() => {
                    let _ = self.store.checkpoint();
                    self.pump_outbox().await;
                    // Catch up with connected members: gossip can miss an envelope (a peer
                    // joined the mesh late, a message aged out of the cache).
                    for peer in self.connected.clone() {
                        self.sync_shared_groups(peer);
                    }
                }
                _ = welcome_retry.tick() => {
                    for member in self.store.members_awaiting_welcome().unwrap_or_default() {
                        self.offer_welcomes(member);
                    }
                }
            }
        }
    }
}

impl Actor {
    async fn request(&mut self, request: Request) {
        match request {
            Request::Contact(reply) => {
                let _ = reply.send(self.contact());
            }
            Request::AddContact(card, name, reply) => {
                let _ = reply.send(self.add_contact(card, name).await);
            }
            Request::CreateGroup(members, reply) => {
                let _ = reply.send(self.create_group(&members).await);
            }
            Request::Send(group, plaintext, reply) => {
                let result = self.local(group, |g, _, _| Ok(g.send(&plaintext)?)).await;
                let _ = reply.send(result);
            }
            Request::Update(group, reply) => {
                let result = self.local(group, |g, _, rng| Ok(g.update(rng)?)).await;
                let _ = reply.send(result);
            }
            Request::Remove(group, member, reply) => {
                let result = self
                    .local(group, |g, _, rng| Ok(g.remove(member, rng)?))
                    .await;
                let _ = reply.send(result);
            }
            Request::Add(group, member, reply) => {
                let result = match self.store.contact(&member) {
                    Ok(Some(Contact {
                        bundle: Some(bundle),
                        ..
                    })) => {
                        self.local(group, |g, device, rng| Ok(g.add(device, &bundle, rng)?))
                            .await
                    }
                    Ok(_) => Err(NodeError::UnknownContact(member)),
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(result);
            }
            Request::Members(group, reply) => {
                let result = self
                    .groups
                    .get(&group)
                    .map(|g| g.members().into_iter().collect())
                    .ok_or(NodeError::UnknownGroup);
                let _ = reply.send(result);
            }
            Request::Groups(reply) => {
                let _ = reply.send(Ok(self.groups.keys().copied().collect()));
            }
            Request::Messages(group, after, limit, reply) => {
                let _ = reply.send(
                    self.store
                        .messages(&group, after, limit)
                        .map_err(Into::into),
                );
            }
            Request::EventsSince(cursor, limit, reply) => {
                let _ = reply.send(self.store.events_since(cursor, limit).map_err(Into::into));
            }
            Request::Stop(done) => {
                let _ = done.send(());
            }
        }
    }

    fn contact(&mut self) -> Result<ContactCard, NodeError> {
        let one_time = self.store.hand_out_one_time_prekey()?;
        Ok(ContactCard {
            member: self.device.id(),
            bundle: self.device.bundle(one_time),
            addresses: self.addresses.iter().map(ToString::to_string).collect(),
        })
    }

    async fn add_contact(&mut self, card: ContactCard, name: String) -> Result<(), NodeError> {
        remember_addresses(&self.net, &card.member, &card.addresses).await;
        self.store.put_contact(&Contact {
            member: card.member,
            display_name: name,
            verified: false,
            addresses: card.addresses,
            bundle: Some(card.bundle),
        })?;
        Ok(())
    }

    async fn create_group(&mut self, members: &[MemberId]) -> Result<GroupId, NodeError> {
        let mut bundles = Vec::with_capacity(members.len());
        for member in members {
            match self.store.contact(member)? {
                Some(Contact {
                    bundle: Some(bundle),
                    ..
                }) => bundles.push(bundle),
                _ => return Err(NodeError::UnknownContact(*member)),
            }
        }
        let id = GroupId(random_seed()?);
        let staged = Group::create(&self.device, id, &bundles, &mut self.rng)?;
        // The initial members do not follow the topic yet: the create is their welcome, kept
        // until each has taken it.
        self.commit_welcoming(&staged, members).await?;
        self.net.send(Command::Subscribe(id)).await?;
        for member in members {
            self.offer_welcomes(*member);
        }
        Ok(id)
    }

    /// Runs a local operation on a group and commits it.
    async fn local(
        &mut self,
        group: GroupId,
        op: impl FnOnce(&Group, &Device, &mut ChaCha20Rng) -> Result<Staged, NodeError>,
    ) -> Result<(), NodeError> {
        let state = self.groups.get(&group).ok_or(NodeError::UnknownGroup)?;
        let staged = op(state, &self.device, &mut self.rng)?;
        self.commit(&staged).await
    }

    /// Commits a step, then tells subscribers and hands the outbox to the network.
    async fn commit(&mut self, staged: &Staged) -> Result<(), NodeError> {
        self.commit_welcoming(staged, &[]).await
    }

    async fn commit_welcoming(
        &mut self,
        staged: &Staged,
        welcome: &[MemberId],
    ) -> Result<(), NodeError> {
        let committed = self.store.apply_welcoming(staged, welcome)?;
        let id = staged.group.id();
        self.device.consume_prekeys(&staged.consumed_prekeys);
        self.groups.insert(id, staged.group.clone());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        for (cursor, event) in committed.cursors.iter().zip(&staged.events) {
            let _ = self.live.send(StoredEvent {
                cursor: *cursor,
                group: id,
                at_ms: now,
                event: event.clone(),
            });
        }
        if !staged.group.is_active() {
            let _ = self.net.send(Command::Unsubscribe(id)).await;
        }
        self.pump_outbox().await;
        Ok(())
    }

    /// Publishes what the outbox holds. A publish with nobody to hear it still counts as
    /// handed over: the envelope is in the group log, and members catch up from it by sync.
    async fn pump_outbox(&mut self) {
        let Ok(entries) = self.store.outbox(MAX_PAGE) else {
            return;
        };
        let mut done = Vec::with_capacity(entries.len());
        for entry in entries {
            if let Err(error) = self.net.publish(entry.group, entry.bytes.clone()).await {
                tracing::debug!(%error, "publish");
            }
            if let Some(member) = entry.welcome_for {
                self.offer_welcomes(member);
            }
            done.push(entry.id);
        }
        if let Err(error) = self.store.outbox_sent(&done) {
            tracing::warn!(%error, "outbox");
        }
    }

    /// Offers a member the welcomes waiting for it, straight to its peer, in the background;
    /// each is dropped from the store once the member answered.
    fn offer_welcomes(&self, member: MemberId) {
        let Ok(peer) = dspring_net::identity::peer_id(&member) else {
            return;
        };
        let Ok(welcomes) = self.store.pending_welcomes(&member) else {
            return;
        };
        for (group, envelope) in welcomes {
            let net = self.net.clone();
            let internal = self.internal.clone();
            tokio::spawn(async move {
                match net
                    .send_direct(peer, DirectRequest { group, envelope })
                    .await
                {
                    Ok(_) => {
                        let _ = internal
                            .send(Internal::WelcomeTaken { member, group })
                            .await;
                    }
                    Err(error) => tracing::debug!(%error, "welcome not delivered yet"),
                }
            });
        }
    }

    async fn net_event(&mut self, event: NetEvent) {
        match event {
            NetEvent::Listening(address) if !self.addresses.contains(&address) => {
                self.addresses.push(address);
            }
            NetEvent::Gossip {
                group,
                message_id,
                source,
                envelope,
            } => {
                let verdict = self.gossip_verdict(group, envelope).await;
                let _ = self
                    .net
                    .send(Command::Validate {
                        message_id,
                        source,
                        verdict,
                    })
                    .await;
            }
            NetEvent::Direct { id, peer, request } => {
                let accepted = if self.groups.contains_key(&request.group) {
                    self.gossip_verdict(request.group, request.envelope).await == Verdict::Accept
                } else {
                    self.join(request.group, request.envelope, peer).await
                };
                self.answer_direct(id, accepted).await;
            }
            NetEvent::SyncRequested { id, peer, request } => {
                let response = self.sync_page(peer, &request);
                let _ = self.net.send(Command::AnswerSync { id, response }).await;
            }
            NetEvent::Connected(peer) => {
                self.connected.insert(peer);
                if let Some(member) = dspring_net::identity::member(&peer) {
                    self.offer_welcomes(member);
                }
                self.sync_shared_groups(peer);
            }
            NetEvent::Disconnected(peer) => {
                self.connected.remove(&peer);
            }
            _ => {}
        }
    }

    /// Starts a sync of every active group this peer is a member of.
    fn sync_shared_groups(&self, peer: PeerId) {
        let Some(member) = dspring_net::identity::member(&peer) else {
            return;
        };
        for (id, group) in &self.groups {
            if group.is_active() && group.members().contains(&member) {
                self.request_sync(*id, peer, 0);
            }
        }
    }

    async fn answer_direct(&self, id: InboundId, accepted: bool) {
        let _ = self
            .net
            .send(Command::AnswerDirect {
                id,
                response: DirectResponse { accepted },
            })
            .await;
    }

    /// Gossip (and direct envelopes of known groups) go to the core only from senders this
    /// member knows: anyone else could fill
    /// the delivery buffer with junk. A newcomer's first envelopes arrive by sync instead, once
    /// its add is known.
    async fn gossip_verdict(&mut self, group: GroupId, envelope: Vec<u8>) -> Verdict {
        let Some(state) = self.groups.get(&group) else {
            return Verdict::Ignore;
        };
        let sender = match Unverified::<Envelope>::parse(envelope.clone()) {
            Ok(parsed) => parsed.sender(),
            Err(_) => return Verdict::Reject,
        };
        if !state.knows_sender(sender) {
            // Not forwarded and not buffered, but not penalised either: it may be a member
            // whose add has not reached us yet, relayed by an honest peer.
            return Verdict::Ignore;
        }
        match state.receive(&self.device, envelope, &mut self.rng) {
            Ok(staged) => match self.commit(&staged).await {
                Ok(()) => Verdict::Accept,
                // Our storage failed: say nothing about the message.
                Err(_) => Verdict::Ignore,
            },
            Err(error) => verdict_of(&error),
        }
    }

    /// Takes an envelope of a known group through the core and commits it; true if accepted.
    async fn receive(&mut self, group: GroupId, envelope: Vec<u8>) -> bool {
        let Some(state) = self.groups.get(&group) else {
            return false;
        };
        match state.receive(&self.device, envelope, &mut self.rng) {
            Ok(staged) => self.commit(&staged).await.is_ok(),
            Err(error) => {
                tracing::debug!(%error, "refused an envelope");
                false
            }
        }
    }

    /// Joins a group from a welcome, then catches up from the peer that sent it.
    async fn join(&mut self, group: GroupId, envelope: Vec<u8>, from: PeerId) -> bool {
        let Ok(staged) = Group::join(&self.device, group, envelope, &mut self.rng) else {
            return false;
        };
        if self.commit(&staged).await.is_err() {
            return false;
        }
        let _ = self.net.send(Command::Subscribe(group)).await;
        self.request_sync(group, from, 0);
        true
    }

    /// Asks `peer` for what this node lacks of `group`, one page, in the background.
    fn request_sync(&self, group: GroupId, peer: PeerId, token: u64) {
        let marks = match self.store.sender_marks(&group) {
            Ok(marks) => marks
                .into_iter()
                .map(|m| Mark {
                    sender: m.sender,
                    control_seq: m.control_seq,
                    application: m.application,
                })
                .collect(),
            Err(_) => return,
        };
        let request = SyncRequest {
            group,
            marks,
            token,
        };
        let net = self.net.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            match net.sync(peer, request).await {
                Ok(response) => {
                    let _ = internal
                        .send(Internal::SyncPage {
                            group,
                            peer,
                            response,
                        })
                        .await;
                }
                Err(error) => tracing::debug!(%error, "sync"),
            }
        });
    }

    /// One page of what the requester lacks, going through the group log from its token.
    /// Only members of the group are answered.
    fn sync_page(&self, peer: PeerId, request: &SyncRequest) -> SyncResponse {
        let empty = SyncResponse {
            envelopes: Vec::new(),
            next: None,
        };
        let is_member = dspring_net::identity::member(&peer).is_some_and(|m| {
            self.groups
                .get(&request.group)
                .is_some_and(|g| g.members().contains(&m))
        });
        if !is_member {
            return empty;
        }
        let marks: HashMap<_, _> = request
            .marks
            .iter()
            .map(|m| (m.sender, (m.control_seq, m.application)))
            .collect();
        match self.store.log_lacking(
            &request.group,
            request.token,
            &marks,
            MAX_SYNC_PAGE,
            SYNC_PAGE_BYTES,
        ) {
            Ok((envelopes, next)) => SyncResponse { envelopes, next },
            Err(_) => empty,
        }
    }

    async fn internal(&mut self, message: Internal) {
        match message {
            Internal::WelcomeTaken { member, group } => {
                if let Err(error) = self.store.welcome_delivered(&member, &group) {
                    tracing::warn!(%error, "welcome bookkeeping");
                }
            }
            Internal::SyncPage {
                group,
                peer,
                response,
            } => {
                for envelope in response.envelopes {
                    self.receive(group, envelope).await;
                }
                if let Some(token) = response.next {
                    self.request_sync(group, peer, token);
                }
            }
        }
    }
}

/// Whether a refused envelope is the sender's fault (penalise) or just not usable here.
fn verdict_of(error: &ReceiveError) -> Verdict {
    match error {
        ReceiveError::Malformed(_)
        | ReceiveError::BadSignature(_)
        | ReceiveError::NotAMember
        | ReceiveError::OutOfOrder(_)
        | ReceiveError::Undecryptable(_)
        | ReceiveError::Protocol(_) => Verdict::Reject,
        _ => Verdict::Ignore,
    }
}
