//! This node's own mailboxes and their news: using one, announcing it in groups, and fetching
//! its news (which groups have something new) when it connects. Its state: the actor's
//! `own_mailboxes`, `news_fetching`, `news_unread` and `group_mailboxes`.

use std::collections::HashSet;

use dspring_net::Network;
use dspring_net::wire::{MAX_NEWS_ITEMS, MailboxRequest, MailboxResponse};
use dspring_proto::{GroupId, MemberId};
use dspring_store::{Contact, NewsCursor};
use libp2p::PeerId;
use tokio::sync::mpsc;

use super::connectivity::remember_addresses;
use super::groups::only_buffered;
use super::{Actor, Internal};
use crate::card::MailboxRef;
use crate::content;
use crate::{ContactCard, NodeError};

/// The news of one own mailbox being fetched.
pub(super) struct NewsFetch {
    mailbox: MemberId,
    /// Groups the news named whose sync from the mailbox has not finished yet.
    syncing: HashSet<GroupId>,
    /// The mailbox's cursor after these news.
    cursor: NewsCursor,
    /// The mailbox had more news than one answer holds: ask again from `cursor`.
    more: bool,
}

impl Actor {
    /// One of this node's own mailboxes holds new envelopes of `group` (it pushed): sync the
    /// group from it now. Pushes from anyone else are refused.
    pub(super) fn fresh_at_mailbox(&mut self, peer: PeerId, group: GroupId) -> MailboxResponse {
        let own = dspring_net::identity::member(&peer)
            .is_some_and(|member| self.own_mailboxes.contains_key(&member));
        if !own || !self.groups.is_active(&group) {
            return MailboxResponse::Refused;
        }
        self.request_sync(group, peer, self.sync_position(&group, &peer));
        MailboxResponse::Done
    }

    /// Remembers a mailbox's addresses as a contact unless it is one already.
    pub(super) async fn remember_mailbox(&mut self, mailbox: &MailboxRef) -> Result<(), NodeError> {
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

    pub(super) async fn use_mailbox(&mut self, card: ContactCard) -> Result<(), NodeError> {
        let mailbox = card.member;
        if self.store.contact(&mailbox)?.is_none() {
            self.add_contact(card, "mailbox".into()).await?;
        }
        self.store.add_own_mailbox(&mailbox)?;
        self.own_mailboxes.entry(mailbox).or_default();
        // The DHT record names this node's mailboxes: publish it again.
        self.connectivity.record_published = None;
        self.publish_record();
        let active: Vec<GroupId> = self.groups.active().map(|(id, _)| *id).collect();
        for group in active {
            self.announce_mailbox(group, mailbox).await;
        }
        if let Ok(peer) = dspring_net::identity::peer_id(&mailbox)
            && self.connectivity.connected.contains(&peer)
        {
            self.own_mailbox_connected(mailbox, peer);
        }
        // Connected from now on (the mailbox pushes news over it): dialled by id at the
        // addresses its card gave (one dial; dialling the card's addresses as well opened two
        // connections, both held).
        self.keep_own_mailboxes().await;
        Ok(())
    }

    /// Tells a group's members that `mailbox` serves it (once per group and mailbox).
    pub(super) async fn announce_mailbox(&mut self, group: GroupId, mailbox: MemberId) {
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
    pub(super) fn own_mailbox_connected(&self, mailbox: MemberId, peer: PeerId) {
        let groups: Vec<GroupId> = self.groups.active().map(|(id, _)| *id).collect();
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
    pub(super) fn news_failed(&mut self, peer: PeerId, group: GroupId) {
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
    pub(super) fn retry_news(&mut self) {
        let unread: Vec<MemberId> = self.news_unread.iter().copied().collect();
        for mailbox in unread {
            let Ok(peer) = dspring_net::identity::peer_id(&mailbox) else {
                self.news_unread.remove(&mailbox);
                continue;
            };
            if !self.connectivity.connected.contains(&peer)
                || self.news_fetching.contains_key(&peer)
            {
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
    pub(super) fn news_synced(&mut self, peer: PeerId, group: Option<GroupId>) {
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

    /// A group this node just created or joined: its own mailboxes keep it too.
    pub(super) async fn joined(&mut self, group: GroupId) {
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

    /// A mailbox announced in a group (stored with the step that carried it): its members
    /// answer its syncs and sync from it.
    pub(super) async fn record_group_mailbox(&mut self, group: GroupId, mailbox: &MailboxRef) {
        if let Err(error) = self.remember_mailbox(mailbox).await {
            tracing::warn!(%error, "remembering a mailbox");
        }
        self.group_mailboxes
            .entry(group)
            .or_default()
            .insert(mailbox.member);
    }

    pub(super) fn is_group_mailbox(&self, group: &GroupId, member: &MemberId) -> bool {
        self.group_mailboxes
            .get(group)
            .is_some_and(|m| m.contains(member))
    }

    /// One of our mailboxes answered a news request: joins or takes what it held for this
    /// node, and syncs the groups it named from it.
    pub(super) async fn news_arrived(
        &mut self,
        mailbox: MemberId,
        peer: PeerId,
        response: MailboxResponse,
    ) {
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
            if !self.groups.contains(&group) {
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
            if !self.groups.is_active(&group) {
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

    /// A news request to one of our mailboxes failed: asked again later.
    pub(super) fn news_unanswered(&mut self, mailbox: MemberId) {
        if self.own_mailboxes.contains_key(&mailbox) {
            self.news_unread.insert(mailbox);
        }
    }
}

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
