//! Digital Spring node: one actor owns the store, the device and the groups; the network, timers
//! and API callers talk to it through bounded channels. Inbound envelope → core → one store
//! transaction → then events to subscribers and the outbox to the network: an envelope counts as
//! delivered only once committed.
//!
//! ```
//! use dspring_node::{Node, NodeConfig};
//! use futures::StreamExt;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! tokio::runtime::Runtime::new()?.block_on(async {
//!     // Two nodes, each with its own data directory, on loopback.
//!     let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
//!     let config = |dir: &std::path::Path| {
//!         let mut config = NodeConfig::new(dir);
//!         config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("address")];
//!         config.mdns = false;
//!         config
//!     };
//!     let alice = Node::start(config(dir_a.path())).await?;
//!     let bob = Node::start(config(dir_b.path())).await?;
//!
//!     // They swap contact cards (as text), then Alice creates a group with Bob.
//!     alice.add_contact(bob.contact().await?, "Bob").await?;
//!     bob.add_contact(alice.contact().await?, "Alice").await?;
//!     let group = alice.create_group("us", &[bob.id()]).await?;
//!
//!     // Bob follows his events from the start; Alice writes once Bob has joined.
//!     let mut events = Box::pin(bob.events(0));
//!     while !bob.groups().await?.contains(&group) {
//!         tokio::time::sleep(std::time::Duration::from_millis(50)).await;
//!     }
//!     alice.send(group, b"hello Bob").await?;
//!     while let Some(stored) = events.next().await {
//!         if let dspring_node::Event::Message { plaintext, .. } = stored.event {
//!             assert_eq!(plaintext, b"hello Bob");
//!             break;
//!         }
//!     }
//!     alice.stop().await?;
//!     bob.stop().await?;
//!     Ok(())
//! })
//! # }
//! ```
//!
//! Status (issue #4): start/stop on a data directory, contact cards, groups (create, add,
//! remove, update, send), gossip, direct welcomes, catch-up by sync, mailboxes (serving with
//! [`NodeConfig::mailbox`], using with [`Node::use_mailbox`]), busy groups kept connected,
//! members added by id from their signed DHT records ([`Node::lookup`]), group names
//! ([`Node::rename`]), events from a cursor. What is not built yet: `docs/NETWORK.md`.

mod actor;
mod card;
mod content;
mod memory;
mod notice;
pub mod record;
mod safety;

use std::path::PathBuf;

use dspring_store::StoredEvent;
use tokio::sync::{broadcast, mpsc, oneshot};

pub use card::{CardError, ContactCard, MAX_CARD_MAILBOXES, MailboxRef};
pub use content::MAX_MESSAGE_BYTES;
pub use dspring_net::{MAX_RELAYS, NetworkStatus, Reachability};
/// The core's identifiers and events, as the node's API hands them out.
pub use dspring_proto::{Event, GroupId, MemberId};
pub use dspring_store::Invitation;
pub use libp2p::Multiaddr;
pub use libp2p::multiaddr::Protocol;
pub use notice::{LIVE_NOTICES, Notice};
pub use safety::{safety_number, same_safety_number};

/// What the node is doing, for a status display.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeStatus {
    /// Envelopes committed but not yet handed to the network.
    pub outbox: u64,
    /// Members added while offline whose welcome has not reached them yet.
    pub awaiting_welcome: usize,
    /// Groups with recent traffic (on their gossip topic, members dialled).
    pub busy_groups: usize,
    /// Catch-ups in progress: syncs of several pages that have not reached the end.
    pub catching_up: Vec<CatchUp>,
    /// This node's own mailboxes.
    pub own_mailboxes: usize,
    /// Own mailboxes whose news (groups with envelopes while this node was away) are being
    /// fetched.
    pub fetching_news: usize,
    /// Invitations held for the user: welcomes from people who are not contacts, under
    /// [`JoinFrom::Contacts`].
    pub invitations: usize,
    /// Groups this node keeps as a mailbox (`None`: it is not one).
    pub mailbox_groups: Option<usize>,
    /// Members this node wanted to reach and could not for a while (their dials have failed
    /// for `dspring_net::reconnect::UNREACHABLE_AFTER`); each leaves the list when it
    /// connects.
    pub out_of_reach: Vec<OutOfReach>,
    /// Groups none of whose other members and mailboxes this node can reach: what is sent
    /// there stays here until one of them comes back.
    pub groups_out_of_reach: Vec<GroupOutOfReach>,
}

/// What the other members and the mailboxes of a group hold of this node's messages, as
/// their syncs showed it (nothing extra is sent for it): per holder, the position
/// (epoch, index) up to which it holds this node's messages without a gap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Delivery {
    pub held: std::collections::HashMap<MemberId, (u64, u64)>,
    /// The group's other current members.
    pub members: Vec<MemberId>,
}

/// Where one sent message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeliveryState {
    /// Only this node holds it so far (as far as it knows).
    Here,
    /// At least one other member or a mailbox holds it: it survives this device.
    Held,
    /// Every other current member holds it.
    All,
}

impl Delivery {
    /// Up to where another member or a mailbox holds this node's messages.
    pub fn held_up_to(&self) -> Option<(u64, u64)> {
        self.held.values().max().copied()
    }

    /// Up to where every other current member holds them (`None` with no other member).
    pub fn all_up_to(&self) -> Option<(u64, u64)> {
        self.members
            .iter()
            .map(|m| self.held.get(m).copied())
            .min()
            .flatten()
    }

    /// The state of this node's message at `(epoch, index)` (an `Event::Sent`'s position).
    pub fn of(&self, epoch: u64, index: u64) -> DeliveryState {
        let holds = |holder: &MemberId| {
            self.held
                .get(holder)
                .is_some_and(|mark| *mark >= (epoch, index))
        };
        if !self.members.is_empty() && self.members.iter().all(holds) {
            DeliveryState::All
        } else if self.held.keys().any(holds) {
            DeliveryState::Held
        } else {
            DeliveryState::Here
        }
    }
}

/// A member out of reach (see [`NodeStatus::out_of_reach`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutOfReach {
    pub member: MemberId,
    /// When its dials began to fail (this node's clock).
    pub since: std::time::SystemTime,
}

/// A group with nobody in reach (see [`NodeStatus::groups_out_of_reach`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct GroupOutOfReach {
    pub group: GroupId,
    /// When the last of its other members and mailboxes went out of reach.
    pub since: std::time::SystemTime,
}

/// One group's catch-up in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct CatchUp {
    pub group: GroupId,
    /// Envelopes received by this catch-up so far.
    pub received: u64,
    /// How long it has been going.
    pub elapsed: std::time::Duration,
}

/// A person this node knows, as the API shows them.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Contact {
    pub member: MemberId,
    /// The name this node's user gave them.
    pub name: String,
    /// The user compared safety numbers with them.
    pub verified: bool,
}
pub use dspring_store::StoredEvent as NodeEvent;

/// Commands waiting for the actor: API callers wait (backpressure) when it is full.
pub const COMMAND_QUEUE: usize = 256;
/// Live events buffered per subscriber; a subscriber that falls further behind is told it
/// lagged and resumes from the store with [`Node::events_since`], so this only saves store
/// reads: 256 covers a busy second of a large group, and the buffer is allocated whole per
/// node (1024 was 150 KB of every node's memory).
pub const LIVE_EVENTS: usize = 256;
/// Stored events an event stream reads ahead: 32 messages at the plaintext bound are 8 MiB,
/// the most one subscriber holds (a page of the store's maximum would be 256 MiB).
pub const EVENT_STREAM_PAGE: usize = 32;
/// One-time prekeys a new device starts with.
pub const INITIAL_ONE_TIME_PREKEYS: u32 = 100;

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    /// Local network discovery.
    pub mdns: bool,
    /// Serve as a mailbox for the groups of this node's contacts (its owners).
    pub mailbox: Option<MailboxConfig>,
    /// A group with no envelope for this long goes idle: it leaves its gossip topic, so it
    /// keeps no connections open, and wakes up when a member sends.
    pub idle_group_after: std::time::Duration,
    /// Whose welcomes this node takes, i.e. who can add it to a group.
    pub join_from: JoinFrom,
    /// Nodes to join the DHT through, each address ending in `/p2p/<peer id>` (another
    /// node's [`Node::dial_addresses`]). Without any, the node finds peers by mDNS and from
    /// its contacts' cards only.
    pub bootstrap: Vec<Multiaddr>,
    /// Relays to be reached through when peers cannot dial this node (behind NAT or a
    /// firewall), each address ending in `/p2p/<peer id>` (a node running with
    /// `relay_server`): the node reserves a slot at each, and its relayed addresses go on its
    /// contact card and DHT record.
    pub relays: Vec<Multiaddr>,
    /// Relay connections for peers behind NAT (those that list this node in `relays`).
    /// Serves only with an address in `external_addresses`.
    pub relay_server: bool,
    /// Addresses others reach this node at (a server's public IP and fixed port), as known
    /// to whoever runs it; otherwise AutoNAT confirms global addresses that peers dialled back.
    pub external_addresses: Vec<Multiaddr>,
    /// Answer peers' reachability probes on private and loopback addresses too (for a
    /// network that lives on one LAN); see [`NetworkStatus::reachability`].
    pub probe_private_addresses: bool,
}

/// Who can add this node to a group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum JoinFrom {
    /// Anyone who has this node's contact card or finds its record in the DHT.
    #[default]
    Anyone,
    /// Only this node's contacts: a welcome from anyone else is held as an invitation
    /// ([`Node::invitations`]) for the user to accept or decline; its sender's node stops
    /// offering it (the sender's group lists this node until someone removes it).
    Contacts,
}

/// The mailbox role: keep the ciphertext of groups that owners (this node's contacts)
/// register, and of groups where an owner was added while away; serve it to returning
/// members. A mailbox holds no group keys.
#[derive(Clone, Debug)]
pub struct MailboxConfig {
    /// Envelopes (and held welcomes) older than this are dropped.
    pub retention: std::time::Duration,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        Self {
            retention: DEFAULT_MAILBOX_RETENTION,
        }
    }
}

/// Two minutes: a conversation's pauses stay busy; an idle group costs nothing after that.
pub const DEFAULT_IDLE_GROUP_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// How long a mailbox keeps what it holds unless configured: a month covers a long holiday.
pub const DEFAULT_MAILBOX_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(30 * 24 * 3600);

impl NodeConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            listen: ["/ip4/0.0.0.0/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1"]
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            mdns: true,
            mailbox: None,
            idle_group_after: DEFAULT_IDLE_GROUP_AFTER,
            join_from: JoinFrom::Anyone,
            bootstrap: Vec::new(),
            relays: Vec::new(),
            relay_server: false,
            external_addresses: Vec::new(),
            probe_private_addresses: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    #[error("store: {0}")]
    Open(#[from] dspring_store::OpenError),
    #[error("store: {0}")]
    Store(#[from] dspring_store::StoreError),
    #[error("network: {0}")]
    Network(#[from] dspring_net::NetworkError),
    #[error("unknown group")]
    UnknownGroup,
    #[error("unknown contact {0}")]
    UnknownContact(MemberId),
    #[error("group: {0}")]
    Group(#[from] dspring_proto::GroupError),
    #[error("the randomness source failed")]
    Randomness,
    #[error("the node has stopped")]
    Stopped,
    #[error("a group name is at most {max} bytes")]
    NameTooLong { max: usize },
    #[error("no valid record of {0} in the DHT")]
    NotFound(MemberId),
    #[error("bootstrap address {0} does not end in /p2p/<peer id>")]
    BootstrapAddress(Multiaddr),
    #[error("no invitation to that group")]
    NoInvitation,
    #[error("not a welcome this node can take: {0}")]
    Welcome(dspring_proto::ReceiveError),
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

pub(crate) enum Request {
    Contact(Reply<ContactCard>),
    AddContact(ContactCard, String, Reply<()>),
    CreateGroup(String, Vec<MemberId>, Reply<GroupId>),
    Rename(GroupId, String, Reply<()>),
    GroupName(GroupId, Reply<Option<String>>),
    Send(GroupId, Vec<u8>, Reply<()>),
    Add(GroupId, MemberId, Reply<()>),
    Remove(GroupId, MemberId, Reply<()>),
    Update(GroupId, Reply<()>),
    Members(GroupId, Reply<Vec<MemberId>>),
    Groups(Reply<Vec<GroupId>>),
    Contacts(Reply<Vec<Contact>>),
    SetVerified(MemberId, bool, Reply<()>),
    Leave(GroupId, Reply<()>),
    Status(Reply<NodeStatus>),
    Delivery(GroupId, Reply<Delivery>),
    Messages(GroupId, u64, usize, Reply<Vec<StoredEvent>>),
    EventsSince(u64, usize, Reply<Vec<StoredEvent>>),
    UseMailbox(ContactCard, Reply<()>),
    Block(MemberId, bool, Reply<()>),
    NetworkStatus(Reply<dspring_net::NetworkStatus>),
    DialAddresses(Reply<Vec<Multiaddr>>),
    Invitations(Reply<Vec<Invitation>>),
    AcceptInvitation(GroupId, Reply<()>),
    DeclineInvitation(GroupId, Reply<()>),
    Lookup(MemberId, Reply<ContactCard>),
    MailboxHeld(GroupId, Reply<(u64, u64)>),
    Stop(oneshot::Sender<()>),
}

struct EventsState {
    node: Node,
    cursor: u64,
    live: broadcast::Receiver<StoredEvent>,
    stopped: tokio::sync::watch::Receiver<()>,
    backlog: std::collections::VecDeque<StoredEvent>,
    /// Whether the store holds nothing after `cursor` that the live channel will not bring:
    /// false at the start, after a gap in the live cursors, and after the channel lagged.
    caught_up: bool,
}

/// A running node. Cheap to clone; every clone talks to the same actor.
#[derive(Clone, Debug)]
pub struct Node {
    requests: mpsc::Sender<Request>,
    live: broadcast::Sender<StoredEvent>,
    notices: broadcast::Sender<Notice>,
    /// Resolves (with an error) when the actor has stopped.
    stopped: tokio::sync::watch::Receiver<()>,
    id: MemberId,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

impl Node {
    /// Opens (or creates) the node in `config.data_dir` and starts its network.
    pub async fn start(config: NodeConfig) -> Result<Node, NodeError> {
        actor::start(config).await
    }

    /// This node's identity.
    pub fn id(&self) -> MemberId {
        self.id
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, NodeError> {
        let (reply, result) = oneshot::channel();
        self.requests
            .send(make(reply))
            .await
            .map_err(|_| NodeError::Stopped)?;
        result.await.map_err(|_| NodeError::Stopped)?
    }

    /// A card to give to people who want to reach this node or add it to a group.
    pub async fn contact(&self) -> Result<ContactCard, NodeError> {
        self.ask(Request::Contact).await
    }

    pub async fn add_contact(&self, card: ContactCard, name: &str) -> Result<(), NodeError> {
        self.ask(|r| Request::AddContact(card, name.to_string(), r))
            .await
    }

    /// Creates a group named `name` (empty for none) with contacts `members` (their cards
    /// give the prekeys and addresses). Every member sees the name.
    pub async fn create_group(
        &self,
        name: &str,
        members: &[MemberId],
    ) -> Result<GroupId, NodeError> {
        self.ask(|r| Request::CreateGroup(name.to_string(), members.to_vec(), r))
            .await
    }

    /// Renames a group for every member. Concurrent renames converge on the one set latest
    /// (by the setter's clock, then member id).
    pub async fn rename(&self, group: GroupId, name: &str) -> Result<(), NodeError> {
        self.ask(|r| Request::Rename(group, name.to_string(), r))
            .await
    }

    /// A group's name, if it has one.
    pub async fn group_name(&self, group: GroupId) -> Result<Option<String>, NodeError> {
        self.ask(|r| Request::GroupName(group, r)).await
    }

    pub async fn send(&self, group: GroupId, plaintext: &[u8]) -> Result<(), NodeError> {
        self.ask(|r| Request::Send(group, plaintext.to_vec(), r))
            .await
    }

    /// Adds `member` to `group`: from its contact card if it is a contact, else from its
    /// record in the DHT (which then makes it a contact).
    pub async fn add(&self, group: GroupId, member: MemberId) -> Result<(), NodeError> {
        match self.ask(|r| Request::Add(group, member, r)).await {
            Err(NodeError::UnknownContact(_)) => {
                let card = self.lookup(member).await?;
                self.add_contact(card, "").await?;
                self.ask(|r| Request::Add(group, member, r)).await
            }
            other => other,
        }
    }

    /// A member's card from its signed record in the DHT (without a one-time prekey).
    pub async fn lookup(&self, member: MemberId) -> Result<ContactCard, NodeError> {
        self.ask(|r| Request::Lookup(member, r)).await
    }

    pub async fn remove(&self, group: GroupId, member: MemberId) -> Result<(), NodeError> {
        self.ask(|r| Request::Remove(group, member, r)).await
    }

    /// What the node is doing: outbox, pending welcomes, catch-ups in progress, mailboxes.
    pub async fn status(&self) -> Result<NodeStatus, NodeError> {
        self.ask(Request::Status).await
    }

    /// How far this node's messages in `group` have got (see [`Delivery::of`]).
    pub async fn delivery(&self, group: GroupId) -> Result<Delivery, NodeError> {
        self.ask(|r| Request::Delivery(group, r)).await
    }

    /// Asks the group to remove this member. DCGKA has no removal of oneself, so the request
    /// goes to the group and a remaining member's node removes this one (the first in
    /// member-id order at once, the others later if it is offline); until then this member
    /// still reads the group. [`dspring_proto::Event::RemovedMe`] says when it is done.
    pub async fn leave(&self, group: GroupId) -> Result<(), NodeError> {
        self.ask(|r| Request::Leave(group, r)).await
    }

    pub async fn update(&self, group: GroupId) -> Result<(), NodeError> {
        self.ask(|r| Request::Update(group, r)).await
    }

    pub async fn members(&self, group: GroupId) -> Result<Vec<MemberId>, NodeError> {
        self.ask(|r| Request::Members(group, r)).await
    }

    pub async fn groups(&self) -> Result<Vec<GroupId>, NodeError> {
        self.ask(Request::Groups).await
    }

    /// This node's contacts, in id order.
    pub async fn contacts(&self) -> Result<Vec<Contact>, NodeError> {
        self.ask(Request::Contacts).await
    }

    /// Records that this node's user compared safety numbers ([`safety_number`]) with a
    /// contact (or takes that back).
    pub async fn set_verified(&self, member: MemberId, verified: bool) -> Result<(), NodeError> {
        self.ask(|r| Request::SetVerified(member, verified, r))
            .await
    }

    /// Messages (received and sent) of a group after event cursor `after`.
    pub async fn messages(
        &self,
        group: GroupId,
        after: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, NodeError> {
        self.ask(|r| Request::Messages(group, after, limit, r))
            .await
    }

    /// Stored events after `cursor` (resume point of an interface).
    pub async fn events_since(
        &self,
        cursor: u64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, NodeError> {
        self.ask(|r| Request::EventsSince(cursor, limit, r)).await
    }

    /// Every event after `cursor`: first those stored, then live ones as they commit, in
    /// cursor order, none missed and none twice (a subscriber that falls behind the live
    /// buffer reads the gap back from the store). Ends when the node stops.
    pub fn events(&self, cursor: u64) -> impl futures::Stream<Item = StoredEvent> + use<> {
        let state = EventsState {
            node: self.clone(),
            cursor,
            live: self.live.subscribe(),
            stopped: self.stopped.clone(),
            backlog: std::collections::VecDeque::new(),
            caught_up: false,
        };
        // The live channel was subscribed before the store is first read, so nothing
        // committed in between is missed. Once the store has nothing more, live events are
        // taken as they come while their cursors follow on; the store is read again only
        // after a gap or a lag (asking the actor after every event would double its work for
        // each subscriber).
        futures::stream::unfold(state, |mut state| async move {
            loop {
                if let Some(event) = state.backlog.pop_front() {
                    state.cursor = event.cursor;
                    return Some((event, state));
                }
                if !state.caught_up {
                    let stored = state
                        .node
                        .events_since(state.cursor, EVENT_STREAM_PAGE)
                        .await
                        .ok()?;
                    if !stored.is_empty() {
                        state.backlog.extend(stored);
                        continue;
                    }
                    state.caught_up = true;
                }
                let live = tokio::select! {
                    live = state.live.recv() => live,
                    _ = state.stopped.changed() => return None,
                };
                match live {
                    Ok(event) if state.cursor.checked_add(1) == Some(event.cursor) => {
                        state.cursor = event.cursor;
                        return Some((event, state));
                    }
                    // A gap (a cursor the store skipped, or events this stream has not seen):
                    // the store knows which.
                    Ok(event) if event.cursor > state.cursor => state.caught_up = false,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => state.caught_up = false,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
    }

    /// Makes the node behind `card` (running with [`NodeConfig::mailbox`], and having this
    /// node as a contact) one of this node's mailboxes: it goes on this node's contact card,
    /// every group of this node is registered with it and announced to the group's members,
    /// and on every connection this node asks it for news.
    pub async fn use_mailbox(&self, card: ContactCard) -> Result<(), NodeError> {
        self.ask(|r| Request::UseMailbox(card, r)).await
    }

    /// Cuts this node off from `member` until [`Node::unblock`] or a restart: connections are
    /// closed and new ones refused, both ways. Group traffic still reaches it through others.
    pub async fn block(&self, member: MemberId) -> Result<(), NodeError> {
        self.ask(|r| Request::Block(member, true, r)).await
    }

    pub async fn unblock(&self, member: MemberId) -> Result<(), NodeError> {
        self.ask(|r| Request::Block(member, false, r)).await
    }

    /// Bytes this node's connections carried since it started, its connections, gossip
    /// meshes and DHT.
    pub async fn network_status(&self) -> Result<dspring_net::NetworkStatus, NodeError> {
        self.ask(Request::NetworkStatus).await
    }

    /// The addresses this node listens on, each ending in `/p2p/<peer id>`: what another
    /// node names to bootstrap from this one ([`NodeConfig::bootstrap`]).
    pub async fn dial_addresses(&self) -> Result<Vec<Multiaddr>, NodeError> {
        self.ask(Request::DialAddresses).await
    }

    /// Welcomes held for the user under [`JoinFrom::Contacts`]: groups that people who are
    /// not contacts added this node to.
    pub async fn invitations(&self) -> Result<Vec<Invitation>, NodeError> {
        self.ask(Request::Invitations).await
    }

    /// Joins the group of a held invitation.
    pub async fn accept_invitation(&self, group: GroupId) -> Result<(), NodeError> {
        self.ask(|r| Request::AcceptInvitation(group, r)).await
    }

    /// Drops a held invitation (the adder's group still lists this node until someone
    /// removes it).
    pub async fn decline_invitation(&self, group: GroupId) -> Result<(), NodeError> {
        self.ask(|r| Request::DeclineInvitation(group, r)).await
    }

    /// Mailbox role: envelopes and bytes held for `group`.
    pub async fn mailbox_held(&self, group: GroupId) -> Result<(u64, u64), NodeError> {
        self.ask(|r| Request::MailboxHeld(group, r)).await
    }

    /// Stops the node: the actor finishes its current step, checkpoints and closes the store.
    /// Live event streams end.
    pub async fn stop(&self) -> Result<(), NodeError> {
        let (done, stopped) = oneshot::channel();
        self.requests
            .send(Request::Stop(done))
            .await
            .map_err(|_| NodeError::Stopped)?;
        stopped.await.map_err(|_| NodeError::Stopped)
    }
}
