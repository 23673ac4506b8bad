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

use super::{Actor, now_ms};

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
    pub(super) async fn answer_mailbox(
        &mut self,
        peer: PeerId,
        request: MailboxRequest,
    ) -> MailboxResponse {
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
}
