//! The actor: the one owner of the store, the device and the group states.
//!
//! This module holds the actor's state, its start and its loop; its methods are split by
//! concern into the modules below, which `events` and `requests` dispatch to.

mod connectivity;
mod delivery;
mod events;
mod groups;
mod leave;
mod mailbox_service;
mod own_mailboxes;
mod requests;
mod states;
mod sync;
mod welcomes;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use dspring_net::wire::{MailboxResponse, Mark, SyncResponse};
use dspring_net::{Command, Event as NetEvent, Network};
use dspring_proto::{Device, GroupId, MemberId};
use dspring_store::{GroupName, NewsCursor, Store, StoredEvent};
use libp2p::PeerId;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::{broadcast, mpsc};

use crate::content;
use crate::{
    COMMAND_QUEUE, INITIAL_ONE_TIME_PREKEYS, LIVE_EVENTS, LIVE_NOTICES, MailboxConfig, Node,
    NodeConfig, NodeError, Notice, Request,
};

use connectivity::{Connectivity, RECORD_REFRESH, remember_addresses};
use own_mailboxes::NewsFetch;
use states::GroupStates;
use welcomes::WELCOME_RETRY_INTERVAL;

/// Sync pages and other results of helper tasks waiting for the actor.
const INTERNAL_QUEUE: usize = 256;

/// How often the write-ahead log is folded back (forward secrecy on disk) and the outbox
/// retried.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(10);

/// The first bytes of an id, for logs.
fn short_hex(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

enum Internal {
    /// Mailbox role: an owner answered (or did not) a push of fresh envelopes of `group`.
    Pushed { group: GroupId, peer: PeerId },
    /// An offer of a welcome to `member` ended; `taken`: it answered.
    WelcomeOffered {
        member: MemberId,
        group: GroupId,
        taken: bool,
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
    SyncFailed { group: GroupId, peer: PeerId },
    /// A news request to one of our mailboxes failed.
    NewsUnanswered { mailbox: MemberId },
    /// One of our mailboxes answered a news request.
    News {
        mailbox: MemberId,
        peer: PeerId,
        response: MailboxResponse,
    },
    /// A publish of this node's DHT record ended; `stored`: the network took it.
    RecordPublished { stored: bool },
    /// A deposit of a welcome for `member` at its mailbox ended; `held`: the mailbox holds it.
    Deposited {
        member: MemberId,
        group: GroupId,
        mailbox: MemberId,
        held: bool,
    },
}

struct Actor {
    store: Store,
    device: Device,
    rng: ChaCha20Rng,
    /// The groups this node is in; full states only of those in use (see [`states`]).
    groups: GroupStates,
    net: Network,
    /// Addresses, connections and busy groups: see [`connectivity`].
    connectivity: Connectivity,
    live: broadcast::Sender<StoredEvent>,
    notices: broadcast::Sender<Notice>,
    internal: mpsc::Sender<Internal>,
    /// Returns the memory of closed connections to the system (see `memory`).
    memory_release: crate::memory::MemoryRelease,
    /// The mailbox role, if this node serves it.
    mailbox: Option<MailboxConfig>,
    /// Mailbox role: peers on each served group's topic (where to sync from), and bytes held.
    subscribers: HashMap<GroupId, HashSet<PeerId>>,
    mailbox_bytes: HashMap<GroupId, u64>,
    /// Mailbox role: pushes ("fresh envelopes") in flight per group and owner, and whether
    /// another envelope came while one was (then one more is sent when it is answered).
    /// Bounded by connected owners times their groups.
    pushes: HashMap<(GroupId, PeerId), bool>,
    /// Per group, what each member and mailbox holds of this node's messages (`delivery`).
    held_by: HashMap<GroupId, HashMap<MemberId, (u64, u64)>>,
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
    /// Welcomes being offered to their members now: (member, group). Bounded by the
    /// welcomes waiting in the store.
    offering: HashSet<(MemberId, GroupId)>,
    /// Welcomes deposited at a mailbox this run, or being deposited: (member, group, mailbox).
    deposited: HashSet<(MemberId, GroupId, MemberId)>,
    /// Per group and peer, the end of the peer's log at the last completed sync: the next
    /// periodic sync starts there rather than going through the whole log again.
    synced: HashMap<(GroupId, PeerId), u64>,
    /// Members who asked to leave, and when this node removes them if no other member has
    /// by then (at most [`MAX_LEAVE_REQUESTS`](leave::MAX_LEAVE_REQUESTS)).
    leave_requests: HashMap<(GroupId, MemberId), tokio::time::Instant>,
    /// Whose welcomes this node takes.
    join_from: crate::JoinFrom,
    /// Syncs that have gone on for more than a page: per group and peer, envelopes received
    /// so far and since when (at most [`MAX_SYNC_POSITIONS`](sync::MAX_SYNC_POSITIONS)).
    catching_up: HashMap<(GroupId, PeerId), (u64, tokio::time::Instant)>,
    /// Dropped with the actor, which ends every event stream.
    _running: tokio::sync::watch::Sender<()>,
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
    let mut groups = GroupStates::default();
    // Every group starts busy: the first rounds catch up on what was missed while away.
    let mut last_activity = HashMap::new();
    for id in store.groups()? {
        if let Some(group) = store.group(&id)? {
            if group.is_active() {
                net.send(Command::Subscribe(id)).await?;
                last_activity.insert(id, tokio::time::Instant::now());
            }
            groups.know(&group);
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
    // Where peers are: the signed records kept from the last run first (the newest a peer
    // signed that reached this node), then the contact cards' addresses after them. The
    // dials of the catch-up at start come at the top of `run`.
    for (_, record) in store.peer_records()? {
        net.send(Command::AddRecord(record)).await?;
    }
    for contact in store.contacts()? {
        remember_addresses(&net, &contact.member, &contact.addresses).await;
    }
    let (requests, request_rx) = mpsc::channel(COMMAND_QUEUE);
    let (live, _) = broadcast::channel(LIVE_EVENTS);
    let (notices, _) = broadcast::channel(LIVE_NOTICES);
    let (internal, internal_rx) = mpsc::channel(INTERNAL_QUEUE);
    let (running, stopped) = tokio::sync::watch::channel(());
    let id = device.id();
    let mut actor = Actor {
        store,
        device,
        rng,
        groups,
        net,
        connectivity: Connectivity {
            addresses,
            connected: HashSet::new(),
            record_published: None,
            record_in_flight: false,
            record_again: false,
            last_activity,
            idle_group_after: config.idle_group_after,
            unreachable: HashMap::new(),
            unheard: HashMap::new(),
        },
        live: live.clone(),
        notices: notices.clone(),
        internal,
        memory_release: crate::memory::MemoryRelease::default(),
        mailbox: config.mailbox.clone(),
        subscribers: HashMap::new(),
        pushes: HashMap::new(),
        held_by: HashMap::new(),
        mailbox_bytes: HashMap::new(),
        own_mailboxes,
        news_fetching: HashMap::new(),
        news_unread: HashSet::new(),
        group_mailboxes,
        group_names,
        offering: HashSet::new(),
        deposited: HashSet::new(),
        synced: HashMap::new(),
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
        notices,
        stopped,
        id,
    })
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
        self.connect_at_start().await;
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
                        .connectivity.record_published
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
                    // The periodic sync first: a group that woke since the last round (a
                    // member came back on its topic) gets one sync with its members before it
                    // may rest; the member's own sync at waking can come before that member
                    // has fetched the message it woke for.
                    self.sync_round();
                    self.rest_idle_groups().await;
                    self.keep_own_mailboxes().await;
                    let busy: Vec<GroupId> = self.connectivity.last_activity.keys().copied().collect();
                    for group in busy {
                        self.connect_group(group).await;
                    }
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
