//! Connectivity and addresses: this node's contact card and DHT record, peers' addresses, and
//! which groups are busy (on their topic, members dialled) or idle. Owns [`Connectivity`].

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use dspring_net::{Command, Network};
use dspring_proto::{GroupId, MemberId};
use libp2p::{Multiaddr, PeerId};

use super::{Actor, Internal, now_ms, short_hex};
use crate::card::MailboxRef;
use crate::record::RECORD_LIFETIME;
use crate::{ContactCard, GroupOutOfReach, NodeError, Notice, OutOfReach};

/// Each member keeps connections to the next few members of each busy group in the ring of
/// member ids: a ring is connected, so a group whose members can reach each other at all is
/// one gossip mesh (and a healed partition reconnects through the ring).
const RING_SUCCESSORS: usize = 2;

/// Below this many connected members of a busy group, more (random) members are dialled: the
/// ring alone fails when successors are unreachable.
const MIN_GROUP_PEERS: usize = 4;

/// How long a group whose newest message from this node has reached nobody stays busy (its
/// members dialled, with the network's backoff: every 30 s once out of reach) after it would
/// have gone idle. A member that was asleep or offline when the message was written is
/// reached within one retry of coming back; an idle group dials nobody, and the message
/// would wait for the group's next message. One hour bounds what a member gone for good
/// costs: a dial every 30 s.
pub(super) const UNHEARD_BUSY_LIMIT: Duration = Duration::from_secs(3600);

/// How long a group whose delivery buffer holds envelopes waiting for earlier ones stays busy
/// after its last envelope: its periodic sync with connected members fetches what is missing
/// (an envelope that came by gossip out of order asks for nothing itself). Without it a group
/// that went idle right after such an envelope kept it waiting until its next message.
pub(super) const WAITING_BUSY_LIMIT: Duration = UNHEARD_BUSY_LIMIT;

/// How often this node's DHT record is published again (it lives [`RECORD_LIFETIME`]).
pub(super) const RECORD_REFRESH: Duration = Duration::from_secs(3600);

/// What this node knows of its own reachability and of its connections.
pub(super) struct Connectivity {
    /// The addresses this node listens on (relayed ones included): its card and DHT record
    /// name them.
    pub(super) addresses: Vec<Multiaddr>,
    /// Peers connected now: the periodic sync asks those that share a group.
    pub(super) connected: HashSet<PeerId>,
    /// When this node's DHT record was last stored by the network.
    pub(super) record_published: Option<tokio::time::Instant>,
    /// A publish of it is under way, and whether another was asked for meanwhile.
    pub(super) record_in_flight: bool,
    pub(super) record_again: bool,
    /// Busy groups (on their topic, their members dialled) and when each last had an
    /// envelope; a group absent here is idle: off its topic, so it holds no connections.
    pub(super) last_activity: HashMap<GroupId, tokio::time::Instant>,
    /// How long a group stays busy after its last envelope.
    pub(super) idle_group_after: Duration,
    /// Peers the network reported out of reach (dials failing for
    /// `dspring_net::reconnect::UNREACHABLE_AFTER`), and since when; a peer leaves on its
    /// next connection. Bounded by the network's wishes (`reconnect::MAX_WANTED`).
    pub(super) unreachable: HashMap<PeerId, SystemTime>,
    /// Groups whose newest message from this node was written while no other member or
    /// mailbox of the group was connected, and none has connected since: they stay busy
    /// (up to [`UNHEARD_BUSY_LIMIT`]). Bounded by the groups.
    pub(super) unheard: HashMap<GroupId, tokio::time::Instant>,
}

impl Actor {
    /// The catch-up at start: the DHT record goes out, and every group starts busy, so its
    /// ring and its mailboxes are wanted now (each connection starts a sync of what is
    /// shared with that peer), and so are this node's own mailboxes (a news request). The
    /// network retries the dials that fail, and finds where peers that moved are now.
    pub(super) async fn connect_at_start(&mut self) {
        self.publish_record();
        let busy: Vec<GroupId> = self.connectivity.last_activity.keys().copied().collect();
        for group in busy {
            self.connect_group(group).await;
        }
        self.keep_own_mailboxes().await;
    }

    /// This node stays connected to its own mailboxes, busy groups or not: a mailbox pushes
    /// news of the groups it keeps over that connection (one per mailbox, not per group).
    /// Asked at start and at every round, so a connection that broke is dialled again.
    pub(super) async fn keep_own_mailboxes(&mut self) {
        let mailboxes: Vec<MemberId> = self.own_mailboxes.keys().copied().collect();
        for mailbox in mailboxes {
            let Ok(peer) = dspring_net::identity::peer_id(&mailbox) else {
                continue;
            };
            if mailbox == self.device.id() {
                continue;
            }
            let _ = self.net.send(Command::Hold(peer, true)).await;
            if !self.connectivity.connected.contains(&peer) {
                let _ = self.net.send(Command::Connect(peer)).await;
            }
        }
    }

    /// A peer's new signed addresses: kept across restarts if the peer is someone this node
    /// deals with (a contact, a member of one of its groups, a mailbox); the network holds
    /// the rest for this run only.
    pub(super) fn keep_peer_record(&mut self, peer: PeerId, record: &[u8]) {
        let Some(member) = dspring_net::identity::member(&peer) else {
            return;
        };
        let known = self.groups.in_any(&member)
            || self.own_mailboxes.contains_key(&member)
            || self.group_mailboxes.values().any(|m| m.contains(&member))
            || self.store.contact(&member).ok().flatten().is_some();
        if !known {
            return;
        }
        match self.store.put_peer_record(&member, record) {
            Ok(true) => {}
            Ok(false) => tracing::debug!("no room for another peer record"),
            Err(error) => tracing::warn!(%error, "keeping a peer record"),
        }
    }

    /// The network reported a peer out of reach.
    pub(super) fn peer_unreachable(&mut self, peer: PeerId) {
        if self.connectivity.unreachable.contains_key(&peer) {
            return;
        }
        let since = SystemTime::now();
        self.connectivity.unreachable.insert(peer, since);
        if let Some(member) = dspring_net::identity::member(&peer) {
            let _ = self.notices.send(Notice::OutOfReach { member, since });
        }
    }

    /// A peer connected: if it was out of reach, it no longer is.
    pub(super) fn peer_back(&mut self, peer: PeerId) {
        if self.connectivity.unreachable.remove(&peer).is_some()
            && let Some(member) = dspring_net::identity::member(&peer)
        {
            let _ = self.notices.send(Notice::BackInReach { member });
        }
    }

    /// Members out of reach now, and the groups none of whose other members and mailboxes
    /// this node can reach.
    pub(super) fn out_of_reach(&self) -> (Vec<OutOfReach>, Vec<GroupOutOfReach>) {
        let unreachable = &self.connectivity.unreachable;
        let since_of = |member: &MemberId| {
            dspring_net::identity::peer_id(member)
                .ok()
                .and_then(|p| unreachable.get(&p).copied())
        };
        let members = unreachable
            .iter()
            .filter_map(|(peer, since)| {
                Some(OutOfReach {
                    member: dspring_net::identity::member(peer)?,
                    since: *since,
                })
            })
            .collect();
        let me = self.device.id();
        let mut groups = Vec::new();
        for (id, members) in self.groups.active() {
            let mut others: Vec<MemberId> = members.iter().copied().filter(|m| *m != me).collect();
            others.extend(self.group_mailboxes.get(id).into_iter().flatten().copied());
            if others.is_empty() {
                continue;
            }
            // Out of reach only if every one of them is; since the last of them went.
            let sinces: Option<Vec<SystemTime>> = others.iter().map(since_of).collect();
            if let Some(since) = sinces.and_then(|s| s.into_iter().max()) {
                groups.push(GroupOutOfReach { group: *id, since });
            }
        }
        (members, groups)
    }

    pub(super) fn contact(&mut self) -> Result<ContactCard, NodeError> {
        let one_time = self.store.hand_out_one_time_prekey()?;
        Ok(ContactCard {
            member: self.device.id(),
            bundle: self.device.bundle(one_time),
            addresses: self
                .connectivity
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect(),
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
    /// background: at start, when the addresses change, when a peer connects while no
    /// publish has succeeded yet (a node starts with an empty DHT), and at the rounds until
    /// one has. One at a time; one asked for meanwhile follows it, with what is current then.
    pub(super) fn publish_record(&mut self) {
        if self.connectivity.record_in_flight {
            self.connectivity.record_again = true;
            return;
        }
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
            self.connectivity
                .addresses
                .iter()
                .map(ToString::to_string)
                .collect(),
            mailboxes,
            expires,
        ) else {
            return;
        };
        let key = crate::record::key(&self.device.id());
        let (net, internal) = (self.net.clone(), self.internal.clone());
        self.connectivity.record_in_flight = true;
        tokio::spawn(async move {
            let stored = match net.put_record(key, value, RECORD_LIFETIME).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::debug!(%error, "publishing the DHT record");
                    false
                }
            };
            let _ = internal.send(Internal::RecordPublished { stored }).await;
        });
    }

    /// A publish of the DHT record ended (`stored`: the network took it).
    pub(super) fn record_published(&mut self, stored: bool) {
        self.connectivity.record_in_flight = false;
        if stored {
            self.connectivity.record_published = Some(tokio::time::Instant::now());
        }
        if std::mem::take(&mut self.connectivity.record_again) {
            self.connectivity.record_published = None;
            self.publish_record();
        }
    }

    pub(super) fn addresses_of(&self, member: &MemberId) -> Vec<String> {
        self.store
            .contact(member)
            .ok()
            .flatten()
            .map(|c| c.addresses)
            .unwrap_or_default()
    }

    pub(super) fn connected_members(&self, group: &GroupId) -> usize {
        let Some(members) = self.groups.members(group) else {
            return 0;
        };
        members
            .iter()
            .filter(|m| {
                dspring_net::identity::peer_id(m)
                    .is_ok_and(|p| self.connectivity.connected.contains(&p))
            })
            .count()
    }

    /// Dials this node's ring successors in a group, random members while fewer than
    /// [`MIN_GROUP_PEERS`] are connected, and the group's mailboxes.
    pub(super) async fn connect_group(&mut self, group: GroupId) {
        if !self.groups.is_active(&group) {
            return;
        }
        let me = self.device.id();
        let mut members: Vec<MemberId> = self
            .groups
            .members(&group)
            .unwrap_or_default()
            .iter()
            .copied()
            .filter(|m| *m != me)
            .collect();
        members.sort();
        // The ring in id order, starting after this node.
        let start = members.partition_point(|m| *m < me);
        members.rotate_left(start);
        let peers: Vec<PeerId> = members
            .iter()
            .filter_map(|m| dspring_net::identity::peer_id(m).ok())
            .collect();
        let mut wanted: Vec<PeerId> = peers.iter().take(RING_SUCCESSORS).copied().collect();
        let connected = peers
            .iter()
            .filter(|p| self.connectivity.connected.contains(p))
            .count();
        if connected < MIN_GROUP_PEERS {
            let mut others: Vec<PeerId> = peers
                .iter()
                .skip(RING_SUCCESSORS)
                .filter(|p| !self.connectivity.connected.contains(p))
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
        // And the group's mailboxes: they keep what is sent for members who are away, and
        // push it to those connected to them, so they should have it at once.
        wanted.extend(
            self.group_mailboxes
                .get(&group)
                .into_iter()
                .flatten()
                .filter(|m| **m != me)
                .filter_map(|m| dspring_net::identity::peer_id(m).ok()),
        );
        for peer in wanted {
            if !self.connectivity.connected.contains(&peer) {
                let _ = self.net.send(Command::Connect(peer)).await;
            }
        }
    }

    /// Marks a group busy now; one that was idle goes back on its topic and dials its members
    /// at once rather than at the next round.
    pub(super) async fn wake_group(&mut self, group: GroupId) {
        let was_idle = self
            .connectivity
            .last_activity
            .insert(group, tokio::time::Instant::now())
            .is_none();
        if was_idle && self.groups.is_active(&group) {
            let _ = self.net.send(Command::Subscribe(group)).await;
            self.connect_group(group).await;
        }
    }

    /// This node wrote to `group`: if no other member or mailbox of it is connected, the
    /// group stays busy until one connects (see [`UNHEARD_BUSY_LIMIT`]).
    pub(super) fn wrote(&mut self, group: GroupId) {
        let me = self.device.id();
        let heard = self.connectivity.connected.iter().any(|peer| {
            dspring_net::identity::member(peer)
                .is_some_and(|member| member != me && self.hears_for(&group, &member))
        });
        if !heard {
            self.connectivity
                .unheard
                .entry(group)
                .or_insert_with(tokio::time::Instant::now);
        }
    }

    /// A peer connected: the groups it hears for (as a member or a mailbox) have been heard
    /// (the connection's sync, or the topic, brings it what it lacks).
    pub(super) fn heard_by(&mut self, member: &MemberId) {
        let groups: Vec<GroupId> = self.connectivity.unheard.keys().copied().collect();
        for group in groups {
            if self.hears_for(&group, member) {
                self.connectivity.unheard.remove(&group);
            }
        }
    }

    /// Whether `member` holds `group`'s messages when connected: a member, or one of the
    /// group's or this node's mailboxes.
    fn hears_for(&self, group: &GroupId, member: &MemberId) -> bool {
        self.groups.is_member(group, member)
            || self.is_group_mailbox(group, member)
            || self.own_mailboxes.contains_key(member)
    }

    /// Groups with no envelope for `idle_group_after` leave their topic: their meshes, and so
    /// their connections, close (a mailbox stays on the topics it serves); their states are
    /// dropped from memory until next used. Not those with envelopes waiting in their buffer
    /// ([`WAITING_BUSY_LIMIT`]) or a message nobody heard ([`UNHEARD_BUSY_LIMIT`]).
    pub(super) async fn rest_idle_groups(&mut self) {
        let idle: Vec<GroupId> = self
            .connectivity
            .last_activity
            .iter()
            .filter(|(_, at)| at.elapsed() >= self.connectivity.idle_group_after)
            .filter(|(group, at)| {
                !(self.groups.is_waiting(group) && at.elapsed() < WAITING_BUSY_LIMIT)
            })
            .map(|(group, _)| *group)
            .collect();
        for group in idle {
            if let Some(since) = self.connectivity.unheard.get(&group) {
                if since.elapsed() < UNHEARD_BUSY_LIMIT && self.groups.is_active(&group) {
                    continue;
                }
                tracing::info!(
                    group = %short_hex(group.as_bytes()),
                    "no member was reachable since this node's last message; the group rests"
                );
                self.connectivity.unheard.remove(&group);
            }
            self.connectivity.last_activity.remove(&group);
            self.groups.unload(&group);
            if !self.serves(&group) {
                let _ = self.net.send(Command::Unsubscribe(group)).await;
            }
        }
    }
}

pub(super) async fn remember_addresses(net: &Network, member: &MemberId, addresses: &[String]) {
    let Ok(peer) = dspring_net::identity::peer_id(member) else {
        return;
    };
    for address in addresses {
        if let Ok(address) = address.parse::<Multiaddr>() {
            let _ = net.send(Command::AddAddress(peer, address)).await;
        }
    }
}
