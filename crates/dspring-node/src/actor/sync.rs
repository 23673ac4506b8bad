//! Sync and catch-up: asking peers page by page for what this node lacks of a group, answering
//! their syncs, and the periodic sync round. Its state: the actor's `synced` positions and
//! `catching_up` progress.

use std::collections::HashMap;

use dspring_net::wire::{MAX_SYNC_PAGE, Mark, SyncRequest, SyncResponse};
use dspring_proto::{GroupId, MemberId, ReceiveError, Staged};
use libp2p::PeerId;

use super::{Actor, Internal, short_hex};

/// A catch-up logs its progress every this many envelopes (and its end, if it got this far).
const PROGRESS_EVERY: u64 = 1000;

/// A sync page stays well under the protocol's byte bound.
const SYNC_PAGE_BYTES: usize = dspring_net::wire::MAX_SYNC_RESPONSE / 2;

/// Connected members each busy group syncs with per round: two random picks find a missed
/// envelope within a few rounds without keeping every connection busy.
const SYNC_PEERS_PER_ROUND: usize = 2;

/// Sync positions remembered (group and peer pairs); beyond this, syncs start from the
/// beginning of the peer's log, which is slower but still right.
pub(super) const MAX_SYNC_POSITIONS: usize = 65_536;

/// How much of a sync page was kept.
enum PageKept {
    All,
    /// Some envelopes found the delivery buffer full.
    Some,
    /// None: the store failed.
    Nothing,
}

impl Actor {
    /// Starts a sync of every active group this peer is a member of, or a mailbox of (own
    /// mailboxes are asked for news instead of polled group by group); as a mailbox, of
    /// every served group the peer follows.
    pub(super) fn sync_shared_groups(&self, peer: PeerId) {
        let Some(member) = dspring_net::identity::member(&peer) else {
            return;
        };
        for id in self.groups.ids() {
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
        self.groups.is_active(group)
            && (self.groups.is_member(group, member)
                || (!self.own_mailboxes.contains_key(member)
                    && self.is_group_mailbox(group, member)))
    }

    /// The periodic catch-up: gossip can miss an envelope (a peer joined the mesh late, a
    /// message aged out of the cache), so each busy group syncs with a few of its connected
    /// members, picked at random. Not with all of them: those requests would keep every
    /// connection of the group open. Idle groups are left alone; a member that writes wakes
    /// them. As a mailbox, every served group syncs with the members on its topic.
    pub(super) fn sync_round(&mut self) {
        let busy: Vec<GroupId> = self.connectivity.last_activity.keys().copied().collect();
        for group in busy {
            let mut peers: Vec<PeerId> = self
                .connectivity
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
            for peer in subscribers.intersection(&self.connectivity.connected) {
                self.request_sync(*group, *peer, self.sync_position(group, peer));
            }
        }
    }

    /// Where the next sync of `group` with `peer` starts: after what its last one covered.
    pub(super) fn sync_position(&self, group: &GroupId, peer: &PeerId) -> u64 {
        self.synced.get(&(*group, *peer)).copied().unwrap_or(0)
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

    /// Takes a sync page through the core, each envelope on the state the previous one left,
    /// and commits the accepted ones together.
    async fn receive_page(&mut self, group: GroupId, envelopes: Vec<Vec<u8>>) -> PageKept {
        let base = match self.groups.state(&self.store, &group) {
            Ok(Some(base)) => base,
            Ok(None) => return PageKept::All,
            Err(error) => {
                tracing::warn!(%error, "reading a group's state");
                return PageKept::Nothing;
            }
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

    /// Asks `peer` for what this node lacks of `group`, one page, in the background. False if
    /// no request went out (the store could not say what this node holds).
    pub(super) fn request_sync(&self, group: GroupId, peer: PeerId, token: u64) -> bool {
        let held = if self.groups.contains(&group) {
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
    pub(super) fn sync_page(&self, peer: PeerId, request: &SyncRequest) -> SyncResponse {
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
        let member = self.groups.contains(&request.group);
        // A removed member's sync ends where the log ended when its removal was logged here.
        let mut until = u64::MAX;
        let answer = if member {
            // Members, and the mailboxes announced in the group; a removed member up to its
            // removal: what it may read, and what it needs before it can deliver the removal
            // (its copy of the removal may wait for an earlier message of the remover).
            let Some(asker) = dspring_net::identity::member(&peer) else {
                return empty;
            };
            if !self.groups.is_member(&request.group, &asker)
                && !self.is_group_mailbox(&request.group, &asker)
            {
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

    /// A sync page came back: its envelopes go through the core (or into the mailbox), and the
    /// sync goes on with the next page, or records where it ended.
    pub(super) async fn sync_page_arrived(
        &mut self,
        group: GroupId,
        peer: PeerId,
        response: SyncResponse,
        marks: Vec<Mark>,
    ) {
        let member = self.groups.contains(&group);
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

    /// A sync request failed: its catch-up, if it was one, has ended.
    pub(super) fn sync_failed(&mut self, group: GroupId, peer: PeerId) {
        self.catching_up.remove(&(group, peer));
        self.news_failed(peer, group);
    }
}
