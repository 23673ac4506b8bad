//! The actor: the one owner of the store, the device and the group states.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dspring_net::wire::{
    DirectRequest, DirectResponse, MAX_NEWS_ITEMS, MAX_SYNC_PAGE, MailboxRequest, MailboxResponse,
    Mark, SyncRequest, SyncResponse,
};
use dspring_net::{Command, Event as NetEvent, InboundId, Network, Verdict};
use dspring_proto::envelope::{Envelope, Unverified};
use dspring_proto::{Device, Group, GroupId, MemberId, ReceiveError, Staged};
use dspring_store::{
    Contact, GroupName, MAX_GROUP_NAME_BYTES, MAX_PAGE, Metadata, NewsCursor, Store, StoredEvent,
};
use libp2p::{Multiaddr, PeerId};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::{broadcast, mpsc};

use crate::card::MailboxRef;
use crate::content::{self, Content};
use crate::record::RECORD_LIFETIME;
use crate::{
    COMMAND_QUEUE, ContactCard, INITIAL_ONE_TIME_PREKEYS, LIVE_EVENTS, MailboxConfig, Node,
    NodeConfig, NodeError, Request,
};

/// Sync pages and other results of helper tasks waiting for the actor.
const INTERNAL_QUEUE: usize = 256;
/// How often the write-ahead log is folded back (forward secrecy on disk) and the outbox
/// retried.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);
/// A member who asks to leave is removed by the first remaining member, in member-id order,
/// whose turn comes while the leaver is still in the group: the first at once, the next two
/// of these later, and so on. Staggered, so that a group does not answer one request with a
/// removal from every member (each costs a message to every member); a member's turn is
/// checked at its maintenance round.
const LEAVE_STAGGER: Duration = MAINTENANCE_INTERVAL;
/// A catch-up logs its progress every this many envelopes (and its end, if it got this far).
const PROGRESS_EVERY: u64 = 1000;

/// The first bytes of an id, for logs.
fn short_hex(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// Most leave requests waiting for their turn: each is a few dozen bytes; more than this many
/// at once is not honest traffic.
const MAX_LEAVE_REQUESTS: usize = 1024;
/// How often welcomes for members who were offline are offered again.
const WELCOME_RETRY_INTERVAL: Duration = Duration::from_secs(3);
/// A sync page stays well under the protocol's byte bound.
const SYNC_PAGE_BYTES: usize = dspring_net::wire::MAX_SYNC_RESPONSE / 2;
/// Each member keeps connections to the next few members of each busy group in the ring of
/// member ids: a ring is connected, so a group whose members can reach each other at all is
/// one gossip mesh (and a healed partition reconnects through the ring).
const RING_SUCCESSORS: usize = 2;
/// Below this many connected members of a busy group, more (random) members are dialled: the
/// ring alone fails when successors are unreachable.
const MIN_GROUP_PEERS: usize = 4;

/// How often this node's DHT record is published again (it lives [`RECORD_LIFETIME`]).
const RECORD_REFRESH: Duration = Duration::from_secs(3600);

/// Connected members each busy group syncs with per round: two random picks find a missed
/// envelope within a few rounds without keeping every connection busy.
const SYNC_PEERS_PER_ROUND: usize = 2;

/// Sync positions remembered (group and peer pairs); beyond this, syncs start from the
/// beginning of the peer's log, which is slower but still right.
const MAX_SYNC_POSITIONS: usize = 65_536;

/// Mailbox role: ciphertext kept per group. Anyone who knows a group's topic can publish to
/// it and a mailbox cannot tell members' envelopes from junk, so each group gets a quota;
/// beyond it new envelopes are dropped until the retention frees space.
const MAILBOX_GROUP_QUOTA_BYTES: u64 = 256 << 20;
/// Mailbox role: groups kept for one owner. Deposits come from anyone, so this bounds what a
/// stranger can make a mailbox keep.
const MAILBOX_GROUPS_PER_OWNER: usize = 1024;
/// Mailbox role: welcomes held for one owner at a time.
const MAILBOX_WELCOMES_PER_OWNER: usize = 256;

enum Internal {
    WelcomeTaken {
        member: MemberId,
        group: GroupId,
    },
    SyncPage {
        group: GroupId,
        peer: PeerId,
        response: SyncResponse,
        /// The marks the request carried: the next page of the same sync asks with them
        /// again, instead of computing them anew over the whole log for every page.
        marks: Vec<Mark>,
    },
    /// A sync request failed: its catch-up, if it was one, has ended.
    SyncFailed {
        group: GroupId,
        peer: PeerId,
    },
    /// A news request to one of our mailboxes failed.
    NewsUnanswered {
        mailbox: MemberId,
    },
    /// One of our mailboxes answered a news request.
    News {
        mailbox: MemberId,
        peer: PeerId,
        response: MailboxResponse,
    },
    /// This node's DHT record was stored by the network.
    RecordPublished,
    /// A welcome for `member` is held by its mailbox.
    Deposited {
        member: MemberId,
        group: GroupId,
        mailbox: MemberId,
    },
}

/// How much of a sync page was kept.
enum PageKept {
    All,
    /// Some envelopes found the delivery buffer full.
    Some,
    /// None: the store failed.
    Nothing,
}

/// What became of a welcome.
enum Welcomed {
    Joined,
    /// Held as an invitation for the user to accept.
    Held,
}

/// The news of one own mailbox being fetched.
struct NewsFetch {
    mailbox: MemberId,
    /// Groups the news named whose sync from the mailbox has not finished yet.
    syncing: HashSet<GroupId>,
    /// The mailbox's cursor after these news.
    cursor: NewsCursor,
    /// The mailbox had more news than one answer holds: ask again from `cursor`.
    more: bool,
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
    connected: HashSet<PeerId>,
    /// Returns the memory of closed connections to the system (see `memory`).
    memory_release: crate::memory::MemoryRelease,
    /// The mailbox role, if this node serves it.
    mailbox: Option<MailboxConfig>,
    /// Mailbox role: peers on each served group's topic (where to sync from), and bytes held.
    subscribers: HashMap<GroupId, HashSet<PeerId>>,
    mailbox_bytes: HashMap<GroupId, u64>,
    /// This node's mailboxes, and their news position read up to (kept in the store).
    own_mailboxes: HashMap<MemberId, NewsCursor>,
    /// News being fetched, per mailbox peer: the cursor moves only once every group the
    /// news named has synced, so that a crash or a failed sync leaves the news to ask again.
    news_fetching: HashMap<PeerId, NewsFetch>,
    /// Own mailboxes whose last news fetch failed: asked again at the next maintenance round
    /// while connected, not only when they next connect.
    news_unread: HashSet<MemberId>,
    /// Mailboxes announced in each group.
    group_mailboxes: HashMap<GroupId, HashSet<MemberId>>,
    /// Each named group's current name.
    group_names: HashMap<GroupId, GroupName>,
    /// Welcomes already deposited at a mailbox this run: (member, group, mailbox).
    deposited: HashSet<(MemberId, GroupId, MemberId)>,
    /// Per group and peer, the end of the peer's log at the last completed sync: the next
    /// periodic sync starts there rather than going through the whole log again.
    synced: HashMap<(GroupId, PeerId), u64>,
    /// When this node's DHT record was last stored by the network.
    record_published: Option<tokio::time::Instant>,
    /// Busy groups (on their topic, their members dialled) and when each last had an
    /// envelope; a group absent here is idle: off its topic, so it holds no connections.
    last_activity: HashMap<GroupId, tokio::time::Instant>,
    /// How long a group stays busy after its last envelope.
    idle_group_after: Duration,
    /// Members who asked to leave, and when this node removes them if no other member has
    /// by then (at most [`MAX_LEAVE_REQUESTS`]).
    leave_requests: HashMap<(GroupId, MemberId), tokio::time::Instant>,
    /// Whose welcomes this node takes.
    join_from: crate::JoinFrom,
    /// Syncs that have gone on for more than a page: per group and peer, envelopes received
    /// so far and since when (at most [`MAX_SYNC_POSITIONS`]).
    catching_up: HashMap<(GroupId, PeerId), (u64, tokio::time::Instant)>,
    /// Dropped with the actor, which ends every event stream.
    _running: tokio::sync::watch::Sender<()>,
}

/// A group name the node accepts: at most [`MAX_GROUP_NAME_BYTES`] (empty is no name).
fn check_name(name: &str) -> Result<(), NodeError> {
    if name.len() > MAX_GROUP_NAME_BYTES {
        return Err(NodeError::NameTooLong {
            max: MAX_GROUP_NAME_BYTES,
        });
    }
    Ok(())
}

fn random_seed() -> Result<[u8; 32], NodeError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|_| NodeError::Randomness)?;
    Ok(seed)
}

pub(crate) async fn start(config: NodeConfig) -> Result<Node, NodeError> {
    let bootstrap = config
        .bootstrap
        .iter()
        .map(|address| match address.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(peer)) => Ok((peer, address.clone())),
            _ => Err(NodeError::BootstrapAddress(address.clone())),
        })
        .collect::<Result<Vec<_>, _>>()?;
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
            bootstrap,
            mdns: config.mdns,
            relays: config.relays.clone(),
            relay_server: config.relay_server,
            external: config.external_addresses.clone(),
            probe_private_addresses: config.probe_private_addresses,
            record_check: Some(dspring_net::RecordCheck(std::sync::Arc::new(
                |key, value| crate::record::check(key, value, now_ms()).is_some(),
            ))),
        },
    )?;
    let mut groups = HashMap::new();
    // Every group starts busy: the first rounds catch up on what was missed while away.
    let mut last_activity = HashMap::new();
    for id in store.groups()? {
        if let Some(group) = store.group(&id)? {
            if group.is_active() {
                net.send(Command::Subscribe(id)).await?;
                last_activity.insert(id, tokio::time::Instant::now());
            }
            groups.insert(id, group);
        }
    }
    if config.mailbox.is_some() {
        for served in store.mailbox_groups()? {
            net.send(Command::Subscribe(served.group)).await?;
        }
    }
    let own_mailboxes: HashMap<MemberId, NewsCursor> = store.own_mailboxes()?.into_iter().collect();
    let mut group_mailboxes: HashMap<GroupId, HashSet<MemberId>> = HashMap::new();
    for (group, mailbox) in store.group_mailboxes()? {
        group_mailboxes.entry(group).or_default().insert(mailbox);
    }
    let group_names: HashMap<GroupId, GroupName> = store
        .group_names()?
        .into_iter()
        .map(|n| (n.group, n))
        .collect();
    // Wait for the listeners so that the first contact card carries addresses (before any
    // dial, so that no connection event is consumed here).
    let mut addresses = Vec::new();
    while addresses.len() < config.listen.len() {
        match tokio::time::timeout(Duration::from_secs(5), net_events.recv()).await {
            Ok(Some(NetEvent::Listening(address))) => addresses.push(address),
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    // Catch-up at start: dial the members and mailboxes of this node's groups, and its own
    // mailboxes, at their last known addresses; each connection starts a sync of what is
    // shared with that peer (or a news request to an own mailbox).
    let mut wanted: HashSet<MemberId> = groups
        .values()
        .filter(|g: &&Group| g.is_active())
        .flat_map(|g| g.members())
        .collect();
    wanted.extend(own_mailboxes.keys().copied());
    wanted.extend(group_mailboxes.values().flatten().copied());
    for contact in store.contacts()? {
        remember_addresses(&net, &contact.member, &contact.addresses).await;
        if wanted.contains(&contact.member) {
            for address in &contact.addresses {
                if let Ok(address) = address.parse::<Multiaddr>() {
                    net.send(Command::Dial(address)).await?;
                }
            }
        }
    }
    let (requests, request_rx) = mpsc::channel(COMMAND_QUEUE);
    let (live, _) = broadcast::channel(LIVE_EVENTS);
    let (internal, internal_rx) = mpsc::channel(INTERNAL_QUEUE);
    let (running, stopped) = tokio::sync::watch::channel(());
    let id = device.id();
    let mut actor = Actor {
        store,
        device,
        rng,
        groups,
        net,
        addresses,
        live: live.clone(),
        internal,
        connected: HashSet::new(),
        memory_release: crate::memory::MemoryRelease::default(),
        mailbox: config.mailbox.clone(),
        subscribers: HashMap::new(),
        mailbox_bytes: HashMap::new(),
        own_mailboxes,
        news_fetching: HashMap::new(),
        news_unread: HashSet::new(),
        group_mailboxes,
        group_names,
        deposited: HashSet::new(),
        last_activity,
        idle_group_after: config.idle_group_after,
        synced: HashMap::new(),
        record_published: None,
        leave_requests: HashMap::new(),
        join_from: config.join_from,
        catching_up: HashMap::new(),
        _running: running,
    };
    actor.restore_leave_requests();
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
        // Each node starts its rounds at a random point of the interval: nodes started
        // together (a machine booting, a test, a benchmark) would otherwise all sync,
        // checkpoint and dial at the same moment, and stall each other.
        let offset = |rng: &mut ChaCha20Rng, period: Duration| {
            let millis = u64::try_from(period.as_millis()).unwrap_or(u64::MAX).max(1);
            tokio::time::Instant::now()
                + Duration::from_millis(rand_core::Rng::next_u64(rng) % millis)
        };
        let mut maintenance = tokio::time::interval_at(
            offset(&mut self.rng, MAINTENANCE_INTERVAL),
            MAINTENANCE_INTERVAL,
        );
        let mut welcome_retry = tokio::time::interval_at(
            offset(&mut self.rng, WELCOME_RETRY_INTERVAL),
            WELCOME_RETRY_INTERVAL,
        );
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
                    if self
                        .record_published
                        .is_none_or(|at| at.elapsed() > RECORD_REFRESH)
                    {
                        self.publish_record();
                    }
                    self.pump_outbox().await;
                    if self.mailbox.is_some() {
                        match self.store.mailbox_expire(now_ms()) {
                            Ok(0) => {}
                            Ok(_) => self.mailbox_bytes.clear(),
                            Err(error) => tracing::warn!(%error, "mailbox expiry"),
                        }
                    }
                    self.act_on_leave_requests().await;
                    self.retry_news();
                    self.rest_idle_groups().await;
                    let busy: Vec<GroupId> = self.last_activity.keys().copied().collect();
                    for group in busy {
                        self.connect_group(group).await;
                    }
                    self.sync_round();
                    if self.memory_release.take_due(std::time::Instant::now()) {
                        // Off the worker threads: it walks the whole process's heap.
                        tokio::task::spawn_blocking(crate::memory::release_free_memory);
                    }
                }
                _ = welcome_retry.tick() => {
                    for member in self.store.members_awaiting_welcome().unwrap_or_default() {
                        self.offer_welcomes(member);
                        self.deposit_welcomes(member);
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
            Request::CreateGroup(name, members, reply) => {
                let _ = reply.send(self.create_group(&name, &members).await);
            }
            Request::Rename(group, name, reply) => {
                let result = match check_name(&name) {
                    Ok(()) => {
                        let stamp = name_stamp(now_ms(), self.group_names.get(&group));
                        let body = content::group_name(&name, stamp);
                        self.local(group, |g, _, _| Ok(g.send(&body)?)).await
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(result);
            }
            Request::GroupName(group, reply) => {
                let result = if self.groups.contains_key(&group) {
                    Ok(self.group_names.get(&group).map(|n| n.name.clone()))
                } else {
                    Err(NodeError::UnknownGroup)
                };
                let _ = reply.send(result);
            }
            Request::Send(group, plaintext, reply) => {
                let body = content::text(&plaintext);
                let result = self.local(group, |g, _, _| Ok(g.send(&body)?)).await;
                if result.is_ok() && self.connected_members(&group) == 0 {
                    // Something to send and nobody to hear it: find the members.
                    self.connect_group(group).await;
                }
                let _ = reply.send(result);
            }
            Request::Update(group, reply) => {
                let result = self.local(group, |g, _, rng| Ok(g.update(rng)?)).await;
                let _ = reply.send(result);
            }
            Request::Status(reply) => {
                let status = self.status();
                let _ = reply.send(status);
            }
            Request::Leave(group, reply) => {
                let result = self
                    .local(group, |g, _, _| Ok(g.send(&content::leave())?))
                    .await;
                let _ = reply.send(result);
            }
            Request::Remove(group, member, reply) => {
                let result = self.remove(group, member).await;
                let _ = reply.send(result);
            }
            Request::Add(group, member, reply) => {
                let result = match self.take_bundle(&member) {
                    Ok(bundle) => {
                        self.local(group, |g, device, rng| Ok(g.add(device, &bundle, rng)?))
                            .await
                    }
                    Err(e) => Err(e),
                };
                if result.is_ok() {
                    self.deposit_welcomes(member);
                    // Messages from before its add are not readable by the newcomer: tell
                    // the group's name again.
                    if let Some(named) = self.group_names.get(&group) {
                        let body = content::group_name(&named.name, named.set_ms);
                        if let Err(error) = self.local(group, |g, _, _| Ok(g.send(&body)?)).await {
                            tracing::debug!(%error, "telling a newcomer the group's name");
                        }
                    }
                }
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
            Request::Contacts(reply) => {
                let contacts = self.store.contacts().map(|all| {
                    all.into_iter()
                        .map(|c| crate::Contact {
                            member: c.member,
                            name: c.display_name,
                            verified: c.verified,
                        })
                        .collect()
                });
                let _ = reply.send(contacts.map_err(NodeError::from));
            }
            Request::SetVerified(member, verified, reply) => {
                let result = match self.store.set_contact_verified(&member, verified) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(NodeError::UnknownContact(member)),
                    Err(error) => Err(NodeError::from(error)),
                };
                let _ = reply.send(result);
            }
            Request::Messages(group, after, limit, reply) => {
                let _ = reply.send(visible(after, |after| {
                    self.store.messages(&group, after, limit)
                }));
            }
            Request::EventsSince(cursor, limit, reply) => {
                let _ = reply.send(visible(cursor, |after| {
                    self.store.events_since(after, limit)
                }));
            }
            Request::UseMailbox(card, reply) => {
                let _ = reply.send(self.use_mailbox(card).await);
            }
            Request::Block(member, block, reply) => {
                let result = match dspring_net::identity::peer_id(&member) {
                    Ok(peer) => {
                        let command = if block {
                            Command::Block(peer)
                        } else {
                            Command::Unblock(peer)
                        };
                        self.net.send(command).await.map_err(Into::into)
                    }
                    Err(_) => Err(NodeError::UnknownContact(member)),
                };
                let _ = reply.send(result);
            }
            Request::Lookup(member, reply) => {
                let net = self.net.clone();
                tokio::spawn(async move {
                    let key = crate::record::key(&member);
                    let result = match net.get_record(key.clone()).await {
                        Ok(value) => crate::record::check(&key, &value, now_ms())
                            .filter(|card| card.member == member)
                            .ok_or(NodeError::NotFound(member)),
                        Err(_) => Err(NodeError::NotFound(member)),
                    };
                    let _ = reply.send(result);
                });
            }
            Request::NetworkStatus(reply) => {
                let _ = reply.send(self.net.network_status().await.map_err(Into::into));
            }
            Request::Invitations(reply) => {
                let _ = reply.send(self.store.invitations().map_err(Into::into));
            }
            Request::AcceptInvitation(group, reply) => {
                let _ = reply.send(self.accept_invitation(group).await);
            }
            Request::DeclineInvitation(group, reply) => {
                let result = match self.store.decline_invitation(&group) {
                    Ok(true) => Ok(()),
                    Ok(false) => Err(NodeError::NoInvitation),
                    Err(error) => Err(error.into()),
                };
                let _ = reply.send(result);
            }
            Request::DialAddresses(reply) => {
                // A relayed listen address already ends in our id; `with_p2p` adds it only
                // where it is missing.
                let addresses = self
                    .addresses
                    .iter()
                    .map(|address| {
                        address
                            .clone()
                            .with_p2p(self.net.local_peer_id)
                            .unwrap_or_else(|other| other)
                    })
                    .collect();
                let _ = reply.send(Ok(addresses));
            }
            Request::MailboxHeld(group, reply) => {
                let _ = reply.send(self.store.mailbox_usage(&group).map_err(Into::into));
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
            mailboxes: self
                .own_mailboxes
                .keys()
                .map(|member| MailboxRef {
                    member: *member,
                    addresses: self.addresses_of(member),
                })
                .collect(),
        })
    }

    /// Publishes this node's signed record (prekey, addresses, mailboxes) in the DHT, in the
    /// background; retried at the next round until the network stored it.
    fn publish_record(&self) {
        let mailboxes: Vec<MailboxRef> = self
            .own_mailboxes
            .keys()
            .map(|member| MailboxRef {
                member: *member,
                addresses: self.addresses_of(member),
            })
            .collect();
        let expires =
            now_ms().saturating_add(u64::try_from(RECORD_LIFETIME.as_millis()).unwrap_or(u64::MAX));
        let Some(value) = crate::record::make(
            &self.device,
            self.addresses.iter().map(ToString::to_string).collect(),
            mailboxes,
            expires,
        ) else {
            return;
        };
        let key = crate::record::key(&self.device.id());
        let (net, internal) = (self.net.clone(), self.internal.clone());
        tokio::spawn(async move {
            match net.put_record(key, value, RECORD_LIFETIME).await {
                Ok(()) => {
                    let _ = internal.send(Internal::RecordPublished).await;
                }
                Err(error) => tracing::debug!(%error, "publishing the DHT record"),
            }
        });
    }

    fn addresses_of(&self, member: &MemberId) -> Vec<String> {
        self.store
            .contact(member)
            .ok()
            .flatten()
            .map(|c| c.addresses)
            .unwrap_or_default()
    }

    /// Remembers a mailbox's addresses as a contact unless it is one already.
    async fn remember_mailbox(&mut self, mailbox: &MailboxRef) -> Result<(), NodeError> {
        remember_addresses(&self.net, &mailbox.member, &mailbox.addresses).await;
        if self.store.contact(&mailbox.member)?.is_none() {
            let addresses = mailbox
                .addresses
                .iter()
                .take(dspring_store::MAX_ADDRESSES)
                .cloned()
                .collect();
            self.store.put_contact(&Contact {
                member: mailbox.member,
                display_name: "mailbox".into(),
                verified: false,
                addresses,
                bundle: None,
            })?;
        }
        Ok(())
    }

    async fn use_mailbox(&mut self, card: ContactCard) -> Result<(), NodeError> {
        let mailbox = card.member;
        let addresses = card.addresses.clone();
        if self.store.contact(&mailbox)?.is_none() {
            self.add_contact(card, "mailbox".into()).await?;
        }
        self.store.add_own_mailbox(&mailbox)?;
        self.own_mailboxes.entry(mailbox).or_default();
        // The DHT record names this node's mailboxes: publish it again.
        self.record_published = None;
        self.publish_record();
        let active: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.is_active())
            .map(|(id, _)| *id)
            .collect();
        for group in active {
            self.announce_mailbox(group, mailbox).await;
        }
        match dspring_net::identity::peer_id(&mailbox) {
            Ok(peer) if self.connected.contains(&peer) => self.own_mailbox_connected(mailbox, peer),
            _ => {
                for address in addresses {
                    if let Ok(address) = address.parse::<Multiaddr>() {
                        let _ = self.net.send(Command::Dial(address)).await;
                    }
                }
            }
        }
        Ok(())
    }

    fn connected_members(&self, group: &GroupId) -> usize {
        let Some(state) = self.groups.get(group) else {
            return 0;
        };
        state
            .members()
            .iter()
            .filter(|m| {
                dspring_net::identity::peer_id(m).is_ok_and(|p| self.connected.contains(&p))
            })
            .count()
    }

    /// Dials this node's ring successors in a group, and random members while fewer than
    /// [`MIN_GROUP_PEERS`] are connected.
    async fn connect_group(&mut self, group: GroupId) {
        let Some(state) = self.groups.get(&group).filter(|g| g.is_active()) else {
            return;
        };
        let me = self.device.id();
        let mut members: Vec<MemberId> = state.members().into_iter().filter(|m| *m != me).collect();
        members.sort();
        // The ring in id order, starting after this node.
        let start = members.partition_point(|m| *m < me);
        members.rotate_left(start);
        let peers: Vec<PeerId> = members
            .iter()
            .filter_map(|m| dspring_net::identity::peer_id(m).ok())
            .collect();
        let mut wanted: Vec<PeerId> = peers.iter().take(RING_SUCCESSORS).copied().collect();
        let connected = peers.iter().filter(|p| self.connected.contains(p)).count();
        if connected < MIN_GROUP_PEERS {
            let mut others: Vec<PeerId> = peers
                .iter()
                .skip(RING_SUCCESSORS)
                .filter(|p| !self.connected.contains(p))
                .copied()
                .collect();
            // A random pick: successors may be unreachable, and a fixed pick would keep
            // trying the same ones.
            for i in 0..others.len() {
                let j = i + (rand_core::Rng::next_u32(&mut self.rng) as usize) % (others.len() - i);
                others.swap(i, j);
            }
            wanted.extend(others.into_iter().take(MIN_GROUP_PEERS - connected));
        }
        for peer in wanted {
            if !self.connected.contains(&peer) {
                let _ = self.net.send(Command::Connect(peer)).await;
            }
        }
    }

    /// Marks a group busy now; one that was idle goes back on its topic and dials its members
    /// at once rather than at the next round.
    async fn wake_group(&mut self, group: GroupId) {
        let was_idle = self
            .last_activity
            .insert(group, tokio::time::Instant::now())
            .is_none();
        if was_idle && self.groups.get(&group).is_some_and(|g| g.is_active()) {
            let _ = self.net.send(Command::Subscribe(group)).await;
            self.connect_group(group).await;
        }
    }

    /// Groups with no envelope for `idle_group_after` leave their topic: their meshes, and so
    /// their connections, close (a mailbox stays on the topics it serves).
    async fn rest_idle_groups(&mut self) {
        let idle: Vec<GroupId> = self
            .last_activity
            .iter()
            .filter(|(_, at)| at.elapsed() >= self.idle_group_after)
            .map(|(group, _)| *group)
            .collect();
        for group in idle {
            self.last_activity.remove(&group);
            if !self.serves(&group) {
                let _ = self.net.send(Command::Unsubscribe(group)).await;
            }
        }
    }

    /// Tells a group's members that `mailbox` serves it (once per group and mailbox).
    async fn announce_mailbox(&mut self, group: GroupId, mailbox: MemberId) {
        if self
            .group_mailboxes
            .get(&group)
            .is_some_and(|m| m.contains(&mailbox))
        {
            return;
        }
        let body = content::mailbox(&MailboxRef {
            member: mailbox,
            addresses: self.addresses_of(&mailbox),
        });
        if let Err(error) = self.local(group, |g, _, _| Ok(g.send(&body)?)).await {
            tracing::debug!(%error, "announcing a mailbox");
        }
    }

    /// Registers every active group with an own mailbox that just connected, then asks it
    /// which of them have news.
    fn own_mailbox_connected(&self, mailbox: MemberId, peer: PeerId) {
        let groups: Vec<GroupId> = self
            .groups
            .iter()
            .filter(|(_, g)| g.is_active())
            .map(|(id, _)| *id)
            .collect();
        let after = self
            .own_mailboxes
            .get(&mailbox)
            .copied()
            .unwrap_or_default();
        // One fetch of a mailbox's news at a time: a second would tick off the first's syncs.
        let ask = !self.news_fetching.contains_key(&peer);
        let net = self.net.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            for group in groups {
                if let Err(error) = net.mailbox(peer, MailboxRequest::Register { group }).await {
                    tracing::debug!(%error, "registering with a mailbox");
                }
            }
            if ask {
                ask_news(&net, &internal, mailbox, peer, after).await;
            }
        });
    }

    /// A sync the news of `peer` waited for failed: the news stay unread, asked again at the
    /// next maintenance round (or when the mailbox next connects).
    fn news_failed(&mut self, peer: PeerId, group: GroupId) {
        if self
            .news_fetching
            .get(&peer)
            .is_some_and(|fetch| fetch.syncing.contains(&group))
            && let Some(fetch) = self.news_fetching.remove(&peer)
        {
            self.news_unread.insert(fetch.mailbox);
        }
    }

    /// Asks the connected own mailboxes whose last news fetch failed again.
    fn retry_news(&mut self) {
        let unread: Vec<MemberId> = self.news_unread.iter().copied().collect();
        for mailbox in unread {
            let Ok(peer) = dspring_net::identity::peer_id(&mailbox) else {
                self.news_unread.remove(&mailbox);
                continue;
            };
            if !self.connected.contains(&peer) || self.news_fetching.contains_key(&peer) {
                continue;
            }
            self.news_unread.remove(&mailbox);
            let from = self
                .own_mailboxes
                .get(&mailbox)
                .copied()
                .unwrap_or_default();
            let (net, internal) = (self.net.clone(), self.internal.clone());
            tokio::spawn(async move {
                ask_news(&net, &internal, mailbox, peer, from).await;
            });
        }
    }

    /// Moves an own mailbox's news cursor once every group its news named has synced, and
    /// asks for the rest if the news did not fit one answer.
    fn news_synced(&mut self, peer: PeerId, group: Option<GroupId>) {
        let Some(fetch) = self.news_fetching.get_mut(&peer) else {
            return;
        };
        if let Some(group) = group {
            fetch.syncing.remove(&group);
        }
        if !fetch.syncing.is_empty() {
            return;
        }
        let Some(fetch) = self.news_fetching.remove(&peer) else {
            return;
        };
        if let Err(error) = self.store.set_news_cursor(&fetch.mailbox, fetch.cursor) {
            tracing::warn!(%error, "keeping a mailbox news cursor");
            self.news_unread.insert(fetch.mailbox);
            return;
        }
        self.own_mailboxes.insert(fetch.mailbox, fetch.cursor);
        if fetch.more {
            let (net, internal) = (self.net.clone(), self.internal.clone());
            tokio::spawn(async move {
                ask_news(&net, &internal, fetch.mailbox, peer, fetch.cursor).await;
            });
        }
    }

    /// Leaves the welcomes waiting for `member` at the mailboxes its card names, in the
    /// background (once each per run).
    fn deposit_welcomes(&self, member: MemberId) {
        let Ok(mailboxes) = self.store.contact_mailboxes(&member) else {
            return;
        };
        if mailboxes.is_empty() {
            return;
        }
        let Ok(welcomes) = self.store.pending_welcomes(&member) else {
            return;
        };
        for mailbox in mailboxes {
            let Ok(peer) = dspring_net::identity::peer_id(&mailbox) else {
                continue;
            };
            for (group, envelope) in &welcomes {
                if self.deposited.contains(&(member, *group, mailbox)) {
                    continue;
                }
                let request = MailboxRequest::Deposit {
                    member,
                    group: *group,
                    envelope: envelope.clone(),
                };
                let (net, internal, group) = (self.net.clone(), self.internal.clone(), *group);
                tokio::spawn(async move {
                    match net.mailbox(peer, request).await {
                        Ok(MailboxResponse::Done) => {
                            let _ = internal
                                .send(Internal::Deposited {
                                    member,
                                    group,
                                    mailbox,
                                })
                                .await;
                        }
                        Ok(_) => tracing::debug!("a mailbox refused a welcome"),
                        Err(error) => tracing::debug!(%error, "mailbox deposit"),
                    }
                });
            }
        }
    }

    async fn add_contact(&mut self, card: ContactCard, name: String) -> Result<(), NodeError> {
        remember_addresses(&self.net, &card.member, &card.addresses).await;
        for mailbox in &card.mailboxes {
            self.remember_mailbox(mailbox).await?;
        }
        let mailboxes: Vec<MemberId> = card.mailboxes.iter().map(|m| m.member).collect();
        self.store.set_contact_mailboxes(&card.member, &mailboxes)?;
        // A new card of the same key (new addresses, new prekeys) keeps the verification:
        // the safety number comes from the key alone.
        let verified = self
            .store
            .contact(&card.member)?
            .is_some_and(|known| known.verified);
        self.store.put_contact(&Contact {
            member: card.member,
            display_name: name,
            verified,
            addresses: card.addresses,
            bundle: Some(card.bundle),
        })?;
        Ok(())
    }

    /// A contact's prekey bundle for a welcome. Its one-time prekey is good for one welcome
    /// only (the device deletes it on first use, so a second welcome made with it could never
    /// be opened): the contact is stored without it before it is used, so that a crash cannot
    /// lead to a second use; later welcomes use the signed prekey alone.
    fn take_bundle(
        &mut self,
        member: &MemberId,
    ) -> Result<dspring_proto::identity::PrekeyBundle, NodeError> {
        let Some(mut contact) = self.store.contact(member)? else {
            return Err(NodeError::UnknownContact(*member));
        };
        let Some(bundle) = contact.bundle.clone() else {
            return Err(NodeError::UnknownContact(*member));
        };
        if let Some(stored) = contact.bundle.as_mut().filter(|b| b.one_time.is_some()) {
            stored.one_time = None;
            self.store.put_contact(&contact)?;
        }
        Ok(bundle)
    }

    async fn create_group(
        &mut self,
        name: &str,
        members: &[MemberId],
    ) -> Result<GroupId, NodeError> {
        check_name(name)?;
        let mut bundles = Vec::with_capacity(members.len());
        for member in members {
            bundles.push(self.take_bundle(member)?);
        }
        let id = GroupId(random_seed()?);
        let staged = Group::create(&self.device, id, &bundles, &mut self.rng)?;
        // The name is the group's first message, committed with the create.
        let named = if name.is_empty() {
            None
        } else {
            Some(staged.group.send(&content::group_name(name, now_ms()))?)
        };
        let mut steps = vec![&staged];
        steps.extend(named.as_ref());
        // The initial members do not follow the topic yet: the create is their welcome, kept
        // until each has taken it.
        self.commit_all(&steps, members).await?;
        self.net.send(Command::Subscribe(id)).await?;
        for member in members {
            self.offer_welcomes(*member);
            self.deposit_welcomes(*member);
        }
        self.joined(id).await;
        Ok(id)
    }

    /// A group this node just created or joined: its own mailboxes keep it too.
    async fn joined(&mut self, group: GroupId) {
        let mailboxes: Vec<MemberId> = self.own_mailboxes.keys().copied().collect();
        for mailbox in mailboxes {
            self.announce_mailbox(group, mailbox).await;
            if let Ok(peer) = dspring_net::identity::peer_id(&mailbox) {
                let net = self.net.clone();
                tokio::spawn(async move {
                    if let Err(error) = net.mailbox(peer, MailboxRequest::Register { group }).await
                    {
                        tracing::debug!(%error, "registering with a mailbox");
                    }
                });
            }
        }
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
        self.commit_all(&[staged], welcome).await
    }

    /// Commits steps in one transaction with the group metadata their messages carry (the
    /// first step's first envelope also a welcome for `welcome`), then tells subscribers and
    /// hands the outbox to the network.
    async fn commit_all(
        &mut self,
        steps: &[&Staged],
        welcome: &[MemberId],
    ) -> Result<(), NodeError> {
        let metadata = self.metadata_of(steps);
        let committed = self.store.apply_steps(steps, welcome, &metadata)?;
        for (staged, committed) in steps.iter().zip(&committed) {
            self.committed(staged, committed).await;
        }
        self.pump_outbox().await;
        Ok(())
    }

    /// The group metadata (mailboxes, names) that the messages of `steps` carry.
    fn metadata_of(&self, steps: &[&Staged]) -> Metadata {
        let mut out = Metadata::default();
        for staged in steps {
            let group = staged.group.id();
            for (sender, content) in self.contents(staged) {
                match content {
                    Content::Mailbox(mailbox) => out.group_mailboxes.push((group, mailbox.member)),
                    Content::GroupName { name, set_ms } => out.group_names.push(GroupName {
                        group,
                        name,
                        set_ms,
                        set_by: sender,
                    }),
                    Content::Leave => out.leave_requests.push((group, sender)),
                    Content::Text(_) => {}
                }
            }
        }
        out
    }

    fn status(&self) -> Result<crate::NodeStatus, NodeError> {
        let mut catching_up: HashMap<GroupId, crate::CatchUp> = HashMap::new();
        for ((group, _), (received, since)) in &self.catching_up {
            let entry = catching_up.entry(*group).or_insert(crate::CatchUp {
                group: *group,
                received: 0,
                elapsed: since.elapsed(),
            });
            entry.received += received;
            entry.elapsed = entry.elapsed.max(since.elapsed());
        }
        Ok(crate::NodeStatus {
            outbox: self.store.outbox_len()?,
            awaiting_welcome: self.store.members_awaiting_welcome()?.len(),
            busy_groups: self.last_activity.len(),
            catching_up: catching_up.into_values().collect(),
            own_mailboxes: self.own_mailboxes.len(),
            fetching_news: self.news_fetching.len(),
            invitations: self.store.invitations()?.len(),
            mailbox_groups: match self.mailbox {
                Some(_) => Some(self.store.mailbox_groups()?.len()),
                None => None,
            },
        })
    }

    /// Counts a sync page towards its catch-up; logs the progress of long ones (every
    /// [`PROGRESS_EVERY`] envelopes, and at the end), which is what a terminal running the
    /// daemon shows while thousands of messages come in.
    fn count_catch_up(&mut self, group: GroupId, peer: PeerId, received: usize, more: bool) {
        let key = (group, peer);
        let received = received as u64;
        let room = self.catching_up.len() < MAX_SYNC_POSITIONS;
        let (before, total, since) = match self.catching_up.get_mut(&key) {
            Some((total, since)) => {
                let before = *total;
                *total += received;
                (before, *total, *since)
            }
            None if more && room => {
                let now = tokio::time::Instant::now();
                self.catching_up.insert(key, (received, now));
                (0, received, now)
            }
            None => return,
        };
        if before / PROGRESS_EVERY != total / PROGRESS_EVERY {
            tracing::info!(group = %short_hex(group.as_bytes()), received = total, "catching up");
        }
        if !more {
            self.catching_up.remove(&key);
            if total >= PROGRESS_EVERY {
                tracing::info!(
                    group = %short_hex(group.as_bytes()),
                    received = total,
                    seconds = since.elapsed().as_secs_f32(),
                    "caught up"
                );
            }
        }
    }

    /// Removes `member` from `group`. The removal also goes to the removed member directly,
    /// retried like a welcome until its node takes it: members answer the syncs of members
    /// only, so a removed member that missed the gossip (it was offline, or had just started)
    /// would otherwise never learn it was removed.
    async fn remove(&mut self, group: GroupId, member: MemberId) -> Result<(), NodeError> {
        self.local(group, |g, _, rng| {
            let mut staged = g.remove(member, rng)?;
            for outgoing in &mut staged.outbox {
                outgoing.welcome_for = Some(member);
            }
            Ok(staged)
        })
        .await?;
        self.offer_welcomes(member);
        Ok(())
    }

    /// Takes up the leave requests a previous run had not acted on: turns count from now.
    fn restore_leave_requests(&mut self) {
        let requests = match self.store.leave_requests() {
            Ok(requests) => requests,
            Err(error) => {
                tracing::warn!(%error, "reading leave requests");
                return;
            }
        };
        for (group, leaver) in requests {
            match self.groups.get(&group).cloned() {
                Some(state) if state.is_active() && state.members().contains(&leaver) => {
                    self.leave_requested(&state, leaver);
                }
                _ => self.forget_leave_request(group, leaver),
            }
        }
    }

    fn forget_leave_request(&mut self, group: GroupId, leaver: MemberId) {
        if let Err(error) = self.store.forget_leave_request(&group, &leaver) {
            tracing::warn!(%error, "forgetting a leave request");
        }
    }

    /// `leaver` asked to leave `group`: this node's turn to remove them comes after the
    /// members before it in member-id order have had theirs.
    fn leave_requested(&mut self, group: &Group, leaver: MemberId) {
        let me = self.device.id();
        if leaver == me || !group.is_active() || self.leave_requests.len() >= MAX_LEAVE_REQUESTS {
            return;
        }
        let members = group.members();
        if !members.contains(&leaver) {
            return;
        }
        let rank = members
            .iter()
            .filter(|m| **m != leaver)
            .position(|m| *m == me)
            .unwrap_or(0);
        // Two rounds apart: each node checks its turn at its own maintenance round, so one
        // round apart the first and the second could both act in the same instant.
        let turn =
            LEAVE_STAGGER.saturating_mul(u32::try_from(rank.saturating_mul(2)).unwrap_or(u32::MAX));
        self.leave_requests
            .insert((group.id(), leaver), tokio::time::Instant::now() + turn);
    }

    /// Removes the members who asked to leave and whose removal is this node's turn, unless
    /// someone did already.
    async fn act_on_leave_requests(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<(GroupId, MemberId)> = self
            .leave_requests
            .iter()
            .filter(|(_, turn)| **turn <= now)
            .map(|(key, _)| *key)
            .collect();
        for (group, leaver) in due {
            self.leave_requests.remove(&(group, leaver));
            let still_there = self
                .groups
                .get(&group)
                .is_some_and(|g| g.is_active() && g.members().contains(&leaver));
            if !still_there {
                self.forget_leave_request(group, leaver);
            } else if let Err(error) = self.remove(group, leaver).await {
                tracing::debug!(%error, "removing a member who asked to leave");
            }
        }
    }

    /// The decoded contents of a step's messages (received and sent), with their senders.
    fn contents(&self, staged: &Staged) -> Vec<(MemberId, Content)> {
        staged
            .events
            .iter()
            .filter_map(|event| match event {
                dspring_proto::Event::Message {
                    sender, plaintext, ..
                } => Some((*sender, plaintext)),
                dspring_proto::Event::Sent { plaintext, .. } => Some((self.device.id(), plaintext)),
                _ => None,
            })
            .filter_map(|(sender, plaintext)| Some((sender, content::decode(plaintext)?)))
            .collect()
    }

    /// Commits consecutive steps of one group in one transaction (a sync page: one commit
    /// instead of one per envelope), then tells subscribers and hands the outbox over.
    async fn commit_steps(&mut self, steps: &[Staged]) -> Result<(), NodeError> {
        let refs: Vec<&Staged> = steps.iter().collect();
        self.commit_all(&refs, &[]).await
    }

    /// What follows a committed step: the new state in memory, announcements, live events.
    async fn committed(&mut self, staged: &Staged, committed: &dspring_store::Committed) {
        let id = staged.group.id();
        self.groups.insert(id, staged.group.clone());
        self.wake_group(id).await;
        self.device.consume_prekeys(&staged.consumed_prekeys);
        let now = now_ms();
        for (sender, content) in self.contents(staged) {
            match content {
                Content::Mailbox(mailbox) => self.record_group_mailbox(id, &mailbox).await,
                Content::GroupName { name, set_ms } => {
                    let named = GroupName {
                        group: id,
                        name,
                        set_ms,
                        set_by: sender,
                    };
                    // The rule the store applies to its row, so memory and disk agree.
                    if self
                        .group_names
                        .get(&id)
                        .is_none_or(|n| named.supersedes(n))
                    {
                        self.group_names.insert(id, named);
                    }
                }
                Content::Leave => self.leave_requested(&staged.group, sender),
                Content::Text(_) => {}
            }
        }
        for (cursor, event) in committed.cursors.iter().zip(&staged.events) {
            let stored = StoredEvent {
                cursor: *cursor,
                group: id,
                at_ms: now,
                event: event.clone(),
            };
            if let Some(shown) = content::present(stored) {
                let _ = self.live.send(shown);
            }
        }
        if !staged.group.is_active() {
            let _ = self.net.send(Command::Unsubscribe(id)).await;
        }
    }

    /// A mailbox announced in a group (stored with the step that carried it): its members
    /// answer its syncs and sync from it.
    async fn record_group_mailbox(&mut self, group: GroupId, mailbox: &MailboxRef) {
        if let Err(error) = self.remember_mailbox(mailbox).await {
            tracing::warn!(%error, "remembering a mailbox");
        }
        self.group_mailboxes
            .entry(group)
            .or_default()
            .insert(mailbox.member);
    }

    /// Publishes what the outbox holds. A publish with nobody to hear it still counts as
    /// handed over: the envelope is in the group log, and members catch up from it by sync.
    async fn pump_outbox(&mut self) {
        let Ok(entries) = self.store.outbox(MAX_PAGE) else {
            return;
        };
        let mut done = Vec::with_capacity(entries.len());
        for entry in entries {
            // Waiting for the swarm's answer would hold this actor (and every envelope queued
            // behind it) for nothing: a failure is logged there, and the envelope stays in
            // the log for sync either way.
            if self
                .net
                .publish_and_go_on(entry.group, entry.bytes.clone())
                .await
                .is_err()
            {
                tracing::debug!("the network has stopped");
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
            // Addresses change after start when a relay reservation begins or ends: the DHT
            // record is refreshed at the next round, so that peers find the current ones.
            NetEvent::Listening(address) if !self.addresses.contains(&address) => {
                self.addresses.push(address);
                self.record_published = None;
            }
            NetEvent::NotListening(address) => {
                let before = self.addresses.len();
                self.addresses.retain(|a| *a != address);
                if self.addresses.len() != before {
                    self.record_published = None;
                }
            }
            NetEvent::Gossip {
                group,
                message_id,
                source,
                envelope,
            } => {
                let judged = self.judge(group, envelope);
                // The core has checked it: forward it now, commit after (forwarding is not
                // delivery, and the next hop need not wait for this node's disk). One that
                // only went into the delivery buffer has not been verified yet (its
                // signature is checked on delivery): it is kept but not forwarded, so that a
                // forgery cannot make this node the forwarder a peer further on penalises.
                let verdict = match &judged {
                    Ok(staged) if only_buffered(staged) => Verdict::Ignore,
                    Ok(_) => Verdict::Accept,
                    Err(verdict) => *verdict,
                };
                let _ = self
                    .net
                    .send(Command::Validate {
                        message_id,
                        source,
                        verdict,
                    })
                    .await;
                if let Ok(staged) = judged
                    && let Err(error) = self.commit(&staged).await
                {
                    tracing::warn!(%error, "committing a gossip envelope");
                }
            }
            NetEvent::Direct { id, peer, request } => {
                let group = request.group;
                let accepted = if self.groups.contains_key(&group) {
                    match self.judge(group, request.envelope) {
                        Ok(staged) => {
                            // It waits for earlier envelopes: the member that sent it has them
                            // (a removal delivered to the member it removes, say). Only a
                            // member's, and only a newly buffered one: a replay asks nothing.
                            let from_member =
                                dspring_net::identity::member(&peer).is_some_and(|m| {
                                    self.groups
                                        .get(&group)
                                        .is_some_and(|g| g.members().contains(&m))
                                });
                            if from_member && newly_buffered(&staged) {
                                self.request_sync(group, peer, self.sync_position(&group, &peer));
                            }
                            self.commit(&staged).await.is_ok()
                        }
                        Err(_) => false,
                    }
                } else {
                    self.join(request.group, request.envelope, peer).await
                };
                self.answer_direct(id, accepted).await;
            }
            NetEvent::SyncRequested { id, peer, request } => {
                let response = self.sync_page(peer, &request);
                let _ = self.net.send(Command::AnswerSync { id, response }).await;
            }
            NetEvent::MailboxRequested { id, peer, request } => {
                let response = self.answer_mailbox(peer, request).await;
                let _ = self.net.send(Command::AnswerMailbox { id, response }).await;
            }
            NetEvent::Subscribed { peer, group }
                if !self.groups.contains_key(&group) && self.serves(&group) =>
            {
                self.subscribers.entry(group).or_default().insert(peer);
                self.request_sync(group, peer, 0);
            }
            // A member of a group idle here came back to its topic: it has something to send
            // or has just received something. Follow it, and fetch what it has.
            NetEvent::Subscribed { peer, group }
                if !self.last_activity.contains_key(&group)
                    && self.groups.get(&group).is_some_and(|g| g.is_active()) =>
            {
                self.wake_group(group).await;
                self.request_sync(group, peer, self.sync_position(&group, &peer));
            }
            NetEvent::Connected(peer) => {
                self.connected.insert(peer);
                if let Some(member) = dspring_net::identity::member(&peer) {
                    self.offer_welcomes(member);
                    if self.own_mailboxes.contains_key(&member) {
                        self.own_mailbox_connected(member, peer);
                    }
                }
                self.sync_shared_groups(peer);
            }
            NetEvent::Disconnected(peer) => {
                self.connected.remove(&peer);
                self.memory_release.connection_closed();
                for subscribers in self.subscribers.values_mut() {
                    subscribers.remove(&peer);
                }
            }
            _ => {}
        }
    }

    /// Starts a sync of every active group this peer is a member of, or a mailbox of (own
    /// mailboxes are asked for news instead of polled group by group); as a mailbox, of
    /// every served group the peer follows.
    fn sync_shared_groups(&self, peer: PeerId) {
        let Some(member) = dspring_net::identity::member(&peer) else {
            return;
        };
        for id in self.groups.keys() {
            if self.syncs_with(id, &member) {
                self.request_sync(*id, peer, self.sync_position(id, &peer));
            }
        }
        for (group, subscribers) in &self.subscribers {
            if subscribers.contains(&peer) {
                self.request_sync(*group, peer, self.sync_position(group, &peer));
            }
        }
    }

    /// Whether this node syncs `group` with `member`: a fellow member of an active group, or
    /// one of its mailboxes (own mailboxes are asked for news instead).
    fn syncs_with(&self, group: &GroupId, member: &MemberId) -> bool {
        self.groups.get(group).is_some_and(|g| {
            g.is_active()
                && (g.members().contains(member)
                    || (!self.own_mailboxes.contains_key(member)
                        && self.is_group_mailbox(group, member)))
        })
    }

    /// The periodic catch-up: gossip can miss an envelope (a peer joined the mesh late, a
    /// message aged out of the cache), so each busy group syncs with a few of its connected
    /// members, picked at random. Not with all of them: those requests would keep every
    /// connection of the group open. Idle groups are left alone; a member that writes wakes
    /// them. As a mailbox, every served group syncs with the members on its topic.
    fn sync_round(&mut self) {
        let busy: Vec<GroupId> = self.last_activity.keys().copied().collect();
        for group in busy {
            let mut peers: Vec<PeerId> = self
                .connected
                .iter()
                .filter(|peer| {
                    dspring_net::identity::member(peer)
                        .is_some_and(|member| self.syncs_with(&group, &member))
                })
                .copied()
                .collect();
            for _ in 0..SYNC_PEERS_PER_ROUND.min(peers.len()) {
                let pick = (rand_core::Rng::next_u32(&mut self.rng) as usize) % peers.len();
                let peer = peers.swap_remove(pick);
                self.request_sync(group, peer, self.sync_position(&group, &peer));
            }
        }
        for (group, subscribers) in &self.subscribers {
            for peer in subscribers.intersection(&self.connected) {
                self.request_sync(*group, *peer, self.sync_position(group, peer));
            }
        }
    }

    /// Where the next sync of `group` with `peer` starts: after what its last one covered.
    fn sync_position(&self, group: &GroupId, peer: &PeerId) -> u64 {
        self.synced.get(&(*group, *peer)).copied().unwrap_or(0)
    }

    fn is_group_mailbox(&self, group: &GroupId, member: &MemberId) -> bool {
        self.group_mailboxes
            .get(group)
            .is_some_and(|m| m.contains(member))
    }

    /// Mailbox role: whether this node keeps `group`.
    fn serves(&self, group: &GroupId) -> bool {
        self.mailbox.is_some() && self.store.mailbox_serves(group).unwrap_or(false)
    }

    /// Mailbox role: keeps an envelope of a served group (within its quota).
    fn mailbox_keep(&mut self, group: GroupId, envelope: &[u8]) -> Verdict {
        if Unverified::<Envelope>::parse(envelope.to_vec()).is_err() {
            return Verdict::Reject;
        }
        let held = match self.mailbox_bytes.get(&group) {
            Some(held) => *held,
            None => self
                .store
                .mailbox_usage(&group)
                .map_or(u64::MAX, |(_, b)| b),
        };
        if held.saturating_add(envelope.len() as u64) > MAILBOX_GROUP_QUOTA_BYTES {
            tracing::debug!("a mailbox group is over its quota");
            return Verdict::Ignore;
        }
        match self.store.mailbox_put(&group, envelope, now_ms()) {
            Ok(true) => {
                self.mailbox_bytes
                    .insert(group, held.saturating_add(envelope.len() as u64));
            }
            Ok(false) => {}
            Err(error) => tracing::debug!(%error, "mailbox"),
        }
        // Kept, not forwarded: without keys a mailbox cannot tell a member's envelope from
        // junk, and must not relay what it cannot check.
        Verdict::Ignore
    }

    /// Mailbox role: answers a member. Deposits are taken from anyone for an owner (a
    /// contact of this node); registrations and news only from owners.
    async fn answer_mailbox(&mut self, peer: PeerId, request: MailboxRequest) -> MailboxResponse {
        let Some(config) = self.mailbox.clone() else {
            return MailboxResponse::Refused;
        };
        let retention = u64::try_from(config.retention.as_millis()).unwrap_or(u64::MAX);
        let is_owner = |store: &Store, m: &MemberId| store.contact(m).ok().flatten().is_some();
        let (owner, group) = match &request {
            MailboxRequest::Deposit { member, group, .. } => (*member, Some(*group)),
            MailboxRequest::Register { group } => match dspring_net::identity::member(&peer) {
                Some(member) => (member, Some(*group)),
                None => return MailboxResponse::Refused,
            },
            MailboxRequest::News { .. } => match dspring_net::identity::member(&peer) {
                Some(member) => (member, None),
                None => return MailboxResponse::Refused,
            },
        };
        if !is_owner(&self.store, &owner) {
            return MailboxResponse::Refused;
        }
        if let Some(group) = group {
            let kept = self
                .store
                .mailbox_add_owner(&group, &owner, MAILBOX_GROUPS_PER_OWNER)
                .and_then(|()| self.store.mailbox_register(&group, retention, now_ms()));
            if let Err(error) = kept {
                tracing::debug!(%error, "mailbox registration");
                return MailboxResponse::Refused;
            }
            let _ = self.net.send(Command::Subscribe(group)).await;
            // Fill the mailbox from the peer that asked (it follows the group).
            self.subscribers.entry(group).or_default().insert(peer);
        }
        match request {
            MailboxRequest::Deposit {
                member,
                group,
                envelope,
            } => {
                let held = self.store.mailbox_hold_welcome(
                    &member,
                    &group,
                    &envelope,
                    now_ms(),
                    MAILBOX_WELCOMES_PER_OWNER,
                );
                if held.is_err() {
                    return MailboxResponse::Refused;
                }
                self.mailbox_keep(group, &envelope);
                self.request_sync(group, peer, 0);
                MailboxResponse::Done
            }
            MailboxRequest::Register { group } => {
                self.request_sync(group, peer, 0);
                MailboxResponse::Done
            }
            MailboxRequest::News { after, instance } => {
                let from = NewsCursor { after, instance };
                match self.store.mailbox_news(&owner, from, MAX_NEWS_ITEMS) {
                    Ok(news) => MailboxResponse::News {
                        welcomes: news.welcomes,
                        groups: news.groups,
                        cursor: news.cursor.after,
                        instance: news.cursor.instance,
                    },
                    Err(_) => MailboxResponse::Refused,
                }
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
    fn judge(&mut self, group: GroupId, envelope: Vec<u8>) -> Result<Staged, Verdict> {
        let Some(state) = self.groups.get(&group) else {
            if self.serves(&group) {
                return Err(self.mailbox_keep(group, &envelope));
            }
            return Err(Verdict::Ignore);
        };
        let sender = match Unverified::<Envelope>::parse(envelope.clone()) {
            Ok(parsed) => parsed.sender(),
            Err(_) => return Err(Verdict::Reject),
        };
        if !state.knows_sender(sender) {
            // Not forwarded and not buffered, but not penalised either: it may be a member
            // whose add has not reached us yet, relayed by an honest peer.
            return Err(Verdict::Ignore);
        }
        state
            .receive(&self.device, envelope, &mut self.rng)
            .map_err(|error| verdict_of(&error))
    }

    /// Takes a sync page through the core, each envelope on the state the previous one left,
    /// and commits the accepted ones together.
    async fn receive_page(&mut self, group: GroupId, envelopes: Vec<Vec<u8>>) -> PageKept {
        let Some(base) = self.groups.get(&group) else {
            return PageKept::All;
        };
        let mut steps: Vec<Staged> = Vec::with_capacity(envelopes.len());
        // A full delivery buffer refuses for now, not for good: the page is not all kept.
        let mut all_kept = true;
        for envelope in envelopes {
            let current = steps.last().map_or(base, |s| &s.group);
            match current.receive(&self.device, envelope, &mut self.rng) {
                Ok(staged) => steps.push(staged),
                Err(ReceiveError::BufferFull) => all_kept = false,
                Err(error) => tracing::debug!(%error, "refused an envelope"),
            }
        }
        let kept = if all_kept {
            PageKept::All
        } else {
            PageKept::Some
        };
        if steps.is_empty() {
            return kept;
        }
        if let Err(error) = self.commit_steps(&steps).await {
            tracing::warn!(%error, "committing a sync page");
            return PageKept::Nothing;
        }
        kept
    }

    /// Takes a welcome as the join policy says: joins, or holds it as an invitation for the
    /// user. True if either happened (the sender need not offer it again).
    async fn join(&mut self, group: GroupId, envelope: Vec<u8>, from: PeerId) -> bool {
        match self
            .take_welcome(group, envelope, from, self.join_from)
            .await
        {
            Ok(_) => true,
            Err(error) => {
                tracing::debug!(%error, "a welcome not taken");
                false
            }
        }
    }

    /// Joins a group from a welcome, then catches up from the peer that sent it; under
    /// [`JoinFrom::Contacts`](crate::JoinFrom), a welcome from someone who is not a contact
    /// is held as an invitation instead (nothing of the group is committed, and the one-time
    /// prekey it used stays).
    async fn take_welcome(
        &mut self,
        group: GroupId,
        envelope: Vec<u8>,
        from: PeerId,
        policy: crate::JoinFrom,
    ) -> Result<Welcomed, NodeError> {
        let staged = Group::join(&self.device, group, envelope.clone(), &mut self.rng)
            .map_err(NodeError::Welcome)?;
        if policy == crate::JoinFrom::Contacts {
            let adder = staged.events.iter().find_map(|event| match event {
                dspring_proto::Event::Joined { by } => Some(*by),
                _ => None,
            });
            let Some(adder) = adder else {
                return Err(NodeError::NoInvitation);
            };
            if self.store.contact(&adder)?.is_none() {
                return match self
                    .store
                    .hold_invitation(&group, &adder, &envelope, now_ms())?
                {
                    dspring_store::Held::New(event) => {
                        tracing::info!(
                            adder = %short_hex(adder.as_bytes()),
                            "an invitation from someone who is not a contact: `invitation list`"
                        );
                        let _ = self.live.send(event);
                        Ok(Welcomed::Held)
                    }
                    dspring_store::Held::Kept => Ok(Welcomed::Held),
                    // Declined: the sender may stop offering it.
                    dspring_store::Held::Declined => Ok(Welcomed::Held),
                    _ => Err(NodeError::NoInvitation),
                };
            }
        }
        self.commit(&staged).await?;
        let _ = self.net.send(Command::Subscribe(group)).await;
        self.request_sync(group, from, 0);
        // And from the own mailboxes connected now: the news that named this group may have
        // come before the join (an invitation accepted later), and moved on past it.
        let mailboxes: Vec<PeerId> = self
            .own_mailboxes
            .keys()
            .filter_map(|m| dspring_net::identity::peer_id(m).ok())
            .filter(|p| *p != from && self.connected.contains(p))
            .collect();
        for mailbox in mailboxes {
            self.request_sync(group, mailbox, 0);
        }
        self.joined(group).await;
        if let Err(error) = self.store.forget_invitation(&group) {
            tracing::warn!(%error, "dropping the invitation of a joined group");
        }
        Ok(Welcomed::Joined)
    }

    /// Joins the group of a held invitation, whoever sent it.
    async fn accept_invitation(&mut self, group: GroupId) -> Result<(), NodeError> {
        let Some((adder, welcome)) = self.store.invitation(&group)? else {
            return Err(NodeError::NoInvitation);
        };
        if !self.groups.contains_key(&group) {
            let from = dspring_net::identity::peer_id(&adder)
                .map_err(|e| dspring_net::NetworkError::Setup(format!("the adder's key: {e}")))?;
            let taken = self
                .take_welcome(group, welcome, from, crate::JoinFrom::Anyone)
                .await;
            if let Err(NodeError::Welcome(_)) = taken {
                // It can never be taken (its prekey went to another welcome, say): drop it
                // rather than list it for good.
                self.store.forget_invitation(&group)?;
            }
            taken?;
        }
        self.store.forget_invitation(&group)?;
        Ok(())
    }

    /// Asks `peer` for what this node lacks of `group`, one page, in the background. False if
    /// no request went out (the store could not say what this node holds).
    fn request_sync(&self, group: GroupId, peer: PeerId, token: u64) -> bool {
        let held = if self.groups.contains_key(&group) {
            self.store.sync_marks(&group)
        } else {
            self.store.mailbox_marks(&group)
        };
        let marks = held.map(|held| {
            held.into_iter()
                .map(|(sender, (control_seq, application))| Mark {
                    sender,
                    control_seq,
                    application,
                })
                .collect()
        });
        let Ok(mut marks): Result<Vec<Mark>, _> = marks else {
            return false;
        };
        marks.truncate(dspring_net::wire::MAX_SYNC_SENDERS);
        self.send_sync(
            peer,
            SyncRequest {
                group,
                marks,
                token,
            },
        );
        true
    }

    /// Sends one sync request in the background; its answer comes back as a `SyncPage`.
    fn send_sync(&self, peer: PeerId, request: SyncRequest) {
        let net = self.net.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let (group, marks) = (request.group, request.marks.clone());
            match net.sync(peer, request).await {
                Ok(response) => {
                    let _ = internal
                        .send(Internal::SyncPage {
                            group,
                            peer,
                            response,
                            marks,
                        })
                        .await;
                }
                Err(error) => {
                    tracing::debug!(%error, "sync");
                    let _ = internal.send(Internal::SyncFailed { group, peer }).await;
                }
            }
        });
    }

    /// One page of what the requester lacks, going through the group log from its token.
    /// Only members of the group are answered.
    fn sync_page(&self, peer: PeerId, request: &SyncRequest) -> SyncResponse {
        let empty = SyncResponse {
            envelopes: Vec::new(),
            next: None,
            end: 0,
        };
        let marks: HashMap<_, _> = request
            .marks
            .iter()
            .map(|m| (m.sender, (m.control_seq, m.application)))
            .collect();
        let member = self.groups.contains_key(&request.group);
        // A removed member's sync ends where the log ended when its removal was logged here.
        let mut until = u64::MAX;
        let answer = if let Some(state) = self.groups.get(&request.group) {
            // Members, and the mailboxes announced in the group; a removed member up to its
            // removal: what it may read, and what it needs before it can deliver the removal
            // (its copy of the removal may wait for an earlier message of the remover).
            let Some(asker) = dspring_net::identity::member(&peer) else {
                return empty;
            };
            if !state.members().contains(&asker) && !self.is_group_mailbox(&request.group, &asker) {
                match self.store.former_member_end(&request.group, &asker) {
                    Ok(Some(end)) => until = end,
                    _ => return empty,
                }
            }
            self.store.log_lacking_until(
                &request.group,
                request.token,
                until,
                &marks,
                MAX_SYNC_PAGE,
                SYNC_PAGE_BYTES,
            )
        } else if self.serves(&request.group) {
            // A mailbox cannot know the members; the group id (never on the wire in clear,
            // topics are its hash) is what a requester must know, and all it gets is
            // ciphertext.
            self.store.mailbox_lacking(
                &request.group,
                request.token,
                &marks,
                MAX_SYNC_PAGE,
                SYNC_PAGE_BYTES,
            )
        } else {
            return empty;
        };
        match answer {
            Ok((envelopes, next)) => {
                let end = match next {
                    Some(_) => 0,
                    None if member => self.store.log_end(&request.group).unwrap_or(0).min(until),
                    None => self.store.mailbox_end(&request.group).unwrap_or(0),
                };
                SyncResponse {
                    envelopes,
                    next,
                    end,
                }
            }
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
                marks,
            } => {
                let member = self.groups.contains_key(&group);
                if !member && !self.serves(&group) {
                    // Left while the sync ran: nothing more to fetch for it.
                    self.news_synced(peer, Some(group));
                    return;
                }
                self.count_catch_up(
                    group,
                    peer,
                    response.envelopes.len(),
                    response.next.is_some(),
                );
                let mut partial = false;
                if member {
                    match self.receive_page(group, response.envelopes).await {
                        PageKept::All => {}
                        // Some wait for room in the delivery buffer: go on (what frees it may
                        // be on the next pages), but the sync does not count as complete.
                        PageKept::Some => {
                            self.news_failed(peer, group);
                            partial = true;
                        }
                        // The store failed: the sync ends here, its position not recorded,
                        // and news that led to it stay unread.
                        PageKept::Nothing => {
                            self.news_failed(peer, group);
                            self.catching_up.remove(&(group, peer));
                            return;
                        }
                    }
                } else {
                    for envelope in response.envelopes {
                        self.mailbox_keep(group, &envelope);
                    }
                }
                match response.next {
                    Some(token) => self.send_sync(
                        peer,
                        SyncRequest {
                            group,
                            marks,
                            token,
                        },
                    ),
                    None if partial => {}
                    None => {
                        if self.synced.len() < MAX_SYNC_POSITIONS {
                            self.synced.insert((group, peer), response.end);
                        }
                        self.news_synced(peer, Some(group));
                    }
                }
            }
            Internal::News {
                mailbox,
                peer,
                response,
            } => {
                let MailboxResponse::News {
                    welcomes,
                    groups,
                    cursor,
                    instance,
                } = response
                else {
                    return;
                };
                for (group, envelope) in welcomes {
                    if !self.groups.contains_key(&group) {
                        self.join(group, envelope, peer).await;
                    } else if let Ok(staged) = self.judge(group, envelope)
                        && !only_buffered(&staged)
                    {
                        // What a mailbox holds for a member of the group: its removal, which
                        // it cannot fetch by sync (members answer members only).
                        if let Err(error) = self.commit(&staged).await {
                            tracing::warn!(%error, "committing a held removal");
                        }
                    }
                }
                let more = groups.len() >= MAX_NEWS_ITEMS;
                let mut syncing = HashSet::new();
                // Groups not active here (left, or an invitation not accepted yet) are passed
                // over: a group joined later syncs from the own mailboxes when it is joined.
                for group in groups {
                    if !self.groups.get(&group).is_some_and(Group::is_active) {
                        continue;
                    }
                    if !self.request_sync(group, peer, 0) {
                        // Nothing asked: the news stay unread, asked again later.
                        self.news_unread.insert(mailbox);
                        return;
                    }
                    syncing.insert(group);
                }
                self.news_fetching.insert(
                    peer,
                    NewsFetch {
                        mailbox,
                        syncing,
                        cursor: NewsCursor {
                            after: cursor,
                            instance,
                        },
                        more,
                    },
                );
                self.news_synced(peer, None);
            }
            Internal::RecordPublished => {
                self.record_published = Some(tokio::time::Instant::now());
            }
            Internal::NewsUnanswered { mailbox } => {
                if self.own_mailboxes.contains_key(&mailbox) {
                    self.news_unread.insert(mailbox);
                }
            }
            Internal::SyncFailed { group, peer } => {
                self.catching_up.remove(&(group, peer));
                self.news_failed(peer, group);
            }
            Internal::Deposited {
                member,
                group,
                mailbox,
            } => {
                self.deposited.insert((member, group, mailbox));
                // A mailbox joins the group's mailboxes only for a member of the group: what
                // it holds for a removed member is that member's removal, and the group must
                // not go on serving its ciphertext to the removed member's mailbox.
                if self
                    .groups
                    .get(&group)
                    .is_some_and(|g| g.is_active() && g.members().contains(&member))
                {
                    self.announce_mailbox(group, mailbox).await;
                }
            }
        }
    }
}

/// Whether a refused envelope is the sender's fault (penalise) or just not usable here.
/// A step that delivered nothing: the envelope went into the delivery buffer, unverified yet.
fn only_buffered(staged: &Staged) -> bool {
    staged.delivered.is_empty() && staged.events.is_empty()
}

/// The step put an envelope into the delivery buffer that was not there (not a replay).
fn newly_buffered(staged: &Staged) -> bool {
    only_buffered(staged) && (staged.changes.base || staged.changes.all)
}

/// The time a rename carries: now, or just after the name it replaces if that one claims a
/// later time (a member's clock ahead of ours). A rename thus wins over every name its
/// member had seen, whatever the clocks say; only concurrent renames go by time.
fn name_stamp(now_ms: u64, current: Option<&GroupName>) -> u64 {
    current
        .map_or(now_ms, |named| now_ms.max(named.set_ms.saturating_add(1)))
        .min(MAX_NAME_STAMP)
}

/// The latest stamp a name can carry: the store keeps stamps as SQLite integers, and the
/// content decoder drops larger ones.
const MAX_NAME_STAMP: u64 = i64::MAX as u64;

/// Asks an own mailbox which groups have news after `from`; the answer comes back as
/// `Internal::News`.
async fn ask_news(
    net: &Network,
    internal: &mpsc::Sender<Internal>,
    mailbox: MemberId,
    peer: PeerId,
    from: NewsCursor,
) {
    let request = MailboxRequest::News {
        after: from.after,
        instance: from.instance,
    };
    match net.mailbox(peer, request).await {
        Ok(response) => {
            let _ = internal
                .send(Internal::News {
                    mailbox,
                    peer,
                    response,
                })
                .await;
        }
        Err(error) => {
            tracing::debug!(%error, "mailbox news");
            let _ = internal.send(Internal::NewsUnanswered { mailbox }).await;
        }
    }
}

/// Gossip is anonymous: a rejection costs the peer that forwarded the envelope, not its author
/// (-10 of gossipsub score for one, below the graylist after three; `dspring-net`'s topic
/// scores).
/// So only what no honest forwarder passes on is rejected: bytes that are not an envelope, or
/// a signature that does not verify (the forwarder checked the same bytes against the same
/// key). The rest is ignored, not forwarded, but not held against the forwarder: a sender
/// removed concurrently, a stream fork, a message this member cannot decrypt can all reach an
/// honest peer before the news that makes them invalid.
fn verdict_of(error: &ReceiveError) -> Verdict {
    match error {
        ReceiveError::Malformed(_) | ReceiveError::BadSignature(_) => Verdict::Reject,
        _ => Verdict::Ignore,
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Reads pages of stored events from `after` until one has something the API shows (or the
/// log ends), so that a caller paging by cursor never mistakes a page of hidden metadata for
/// the end.
fn visible(
    mut after: u64,
    mut read: impl FnMut(u64) -> Result<Vec<StoredEvent>, dspring_store::StoreError>,
) -> Result<Vec<StoredEvent>, NodeError> {
    loop {
        let page = read(after)?;
        let Some(last) = page.last() else {
            return Ok(Vec::new());
        };
        after = last.cursor;
        let shown: Vec<StoredEvent> = page.into_iter().filter_map(content::present).collect();
        if !shown.is_empty() {
            return Ok(shown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_wins_over_the_name_it_replaces_whatever_the_clocks() {
        assert_eq!(name_stamp(1_000, None), 1_000);
        let ahead = GroupName {
            group: GroupId([1; 32]),
            name: "from a clock an hour ahead".into(),
            set_ms: 3_601_000,
            set_by: MemberId([2; 32]),
        };
        let stamp = name_stamp(1_000, Some(&ahead));
        let renamed = GroupName {
            name: "renamed after it".into(),
            set_ms: stamp,
            set_by: MemberId([1; 32]),
            ..ahead.clone()
        };
        assert!(renamed.supersedes(&ahead));
        let behind = GroupName {
            set_ms: 10,
            ..ahead
        };
        assert_eq!(name_stamp(1_000, Some(&behind)), 1_000);
    }
}
