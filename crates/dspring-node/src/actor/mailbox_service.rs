//! Serving as a mailbox for others (the mailbox role): keeping the ciphertext of served groups
//! within quotas, and answering owners' deposits, registrations and news requests. Its state:
//! the actor's `mailbox`, `subscribers` and `mailbox_bytes`.

use dspring_net::Command;
use dspring_net::Verdict;
use dspring_net::wire::{MAX_NEWS_ITEMS, MailboxRequest, MailboxResponse};
use dspring_proto::envelope::{Envelope, Unverified};
use dspring_proto::{GroupId, MemberId};
use dspring_store::{NewsCursor, Store};
use libp2p::PeerId;

use super::{Actor, Internal, now_ms};

/// Mailbox role: ciphertext kept per group. Anyone who knows a group's topic can publish to
/// it and a mailbox cannot tell members' envelopes from junk, so each group gets a quota;
/// beyond it new envelopes are dropped until the retention frees space.
const MAILBOX_GROUP_QUOTA_BYTES: u64 = 256 << 20;

/// Mailbox role: groups kept for one owner. Deposits come from anyone, so this bounds what a
/// stranger can make a mailbox keep.
const MAILBOX_GROUPS_PER_OWNER: usize = 1024;

/// Mailbox role: welcomes held for one owner at a time.
const MAILBOX_WELCOMES_PER_OWNER: usize = 256;

impl Actor {
    /// Mailbox role: whether this node keeps `group`.
    pub(super) fn serves(&self, group: &GroupId) -> bool {
        self.mailbox.is_some() && self.store.mailbox_serves(group).unwrap_or(false)
    }

    /// Mailbox role: keeps an envelope of a served group (within its quota).
    pub(super) fn mailbox_keep(&mut self, group: GroupId, envelope: &[u8]) -> Verdict {
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
                self.push_fresh(group);
            }
            Ok(false) => {}
            Err(error) => tracing::debug!(%error, "mailbox"),
        }
        // Kept, not forwarded: without keys a mailbox cannot tell a member's envelope from
        // junk, and must not relay what it cannot check.
        Verdict::Ignore
    }

    /// Mailbox role: tells the group's owners that are connected but not on its topic (their
    /// group is idle there, so gossip does not reach them) that new envelopes are here; each
    /// syncs the group from this mailbox. One push per owner and group in flight; one more
    /// follows if envelopes came meanwhile.
    fn push_fresh(&mut self, group: GroupId) {
        let owners = match self.store.mailbox_owners(&group) {
            Ok(owners) => owners,
            Err(error) => {
                tracing::debug!(%error, "mailbox owners");
                return;
            }
        };
        for owner in owners {
            let Ok(peer) = dspring_net::identity::peer_id(&owner) else {
                continue;
            };
            let on_topic = self
                .subscribers
                .get(&group)
                .is_some_and(|s| s.contains(&peer));
            if !self.connectivity.connected.contains(&peer) || on_topic {
                continue;
            }
            if let Some(again) = self.pushes.get_mut(&(group, peer)) {
                *again = true;
                continue;
            }
            self.pushes.insert((group, peer), false);
            let (net, internal) = (self.net.clone(), self.internal.clone());
            tokio::spawn(async move {
                if let Err(error) = net.mailbox(peer, MailboxRequest::Fresh { group }).await {
                    tracing::debug!(%error, "pushing fresh envelopes to an owner");
                }
                let _ = internal.send(Internal::Pushed { group, peer }).await;
            });
        }
    }

    /// Mailbox role: an owner (a contact of this mailbox) connected: its connection is held
    /// open at this end too (either end closes an idle connection), so that pushes reach it.
    pub(super) async fn hold_owner(&mut self, member: MemberId, peer: PeerId) {
        if self.mailbox.is_some() && self.store.contact(&member).ok().flatten().is_some() {
            let _ = self.net.send(Command::Hold(peer, true)).await;
        }
    }

    /// Mailbox role: a push was answered; push again if envelopes came meanwhile.
    pub(super) fn pushed(&mut self, group: GroupId, peer: PeerId) {
        if self.pushes.remove(&(group, peer)) == Some(true) {
            self.push_fresh(group);
        }
    }

    /// Mailbox role: answers a member. Deposits are taken from anyone for an owner (a
    /// contact of this node); registrations and news only from owners.
    pub(super) async fn answer_mailbox(
        &mut self,
        peer: PeerId,
        request: MailboxRequest,
    ) -> MailboxResponse {
        // Not for the mailbox role: one of this node's own mailboxes pushing.
        if let MailboxRequest::Fresh { group } = request {
            return self.fresh_at_mailbox(peer, group);
        }
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
            MailboxRequest::Fresh { .. } => return MailboxResponse::Refused,
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
            MailboxRequest::Fresh { .. } => MailboxResponse::Refused,
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
}
