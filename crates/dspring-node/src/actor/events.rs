//! Dispatch of what the network reports (gossip, direct envelopes, peers' requests,
//! connections) and of the results of helper tasks, to the concerns that handle them. No state
//! of its own.

use dspring_net::{Command, Event as NetEvent, Verdict};

use super::groups::{newly_buffered, only_buffered};
use super::{Actor, Internal};

impl Actor {
    /// Handles one event of the network.
    pub(super) async fn net_event(&mut self, event: NetEvent) {
        match event {
            // Addresses change after start when a relay reservation begins or ends: the DHT
            // record is published again at once, so that peers find the current ones (and
            // again at the next round if that fails). Connected peers hear of it from
            // identify's push.
            NetEvent::Listening(address) if !self.connectivity.addresses.contains(&address) => {
                self.connectivity.addresses.push(address);
                self.connectivity.record_published = None;
                self.publish_record();
            }
            NetEvent::NotListening(address) => {
                let before = self.connectivity.addresses.len();
                self.connectivity.addresses.retain(|a| *a != address);
                if self.connectivity.addresses.len() != before {
                    self.connectivity.record_published = None;
                    self.publish_record();
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
                let accepted = if self.groups.contains(&group) {
                    match self.judge(group, request.envelope) {
                        Ok(staged) => {
                            // It waits for earlier envelopes: the member that sent it has them
                            // (a removal delivered to the member it removes, say). Only a
                            // member's, and only a newly buffered one: a replay asks nothing.
                            let from_member = dspring_net::identity::member(&peer)
                                .is_some_and(|m| self.groups.is_member(&group, &m));
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
                self.note_marks(request.group, peer, &request.marks);
                let response = self.sync_page(peer, &request);
                let _ = self.net.send(Command::AnswerSync { id, response }).await;
            }
            NetEvent::MailboxRequested { id, peer, request } => {
                let response = self.answer_mailbox(peer, request).await;
                let _ = self.net.send(Command::AnswerMailbox { id, response }).await;
            }
            NetEvent::Subscribed { peer, group }
                if !self.groups.contains(&group) && self.serves(&group) =>
            {
                self.subscribers.entry(group).or_default().insert(peer);
                self.request_sync(group, peer, 0);
            }
            // A member of a group idle here came back to its topic: it has something to send
            // or has just received something. Follow it, and fetch what it has.
            NetEvent::Subscribed { peer, group }
                if !self.connectivity.last_activity.contains_key(&group)
                    && self.groups.is_active(&group) =>
            {
                self.wake_group(group).await;
                self.request_sync(group, peer, self.sync_position(&group, &peer));
            }
            NetEvent::Connected(peer) => {
                self.connectivity.connected.insert(peer);
                // The DHT has a peer now: the record may go where it could not.
                if self.connectivity.record_published.is_none() {
                    self.publish_record();
                }
                self.peer_back(peer);
                if let Some(member) = dspring_net::identity::member(&peer) {
                    self.heard_by(&member);
                    self.hold_owner(member, peer).await;
                    self.offer_welcomes(member);
                    if self.own_mailboxes.contains_key(&member) {
                        self.own_mailbox_connected(member, peer);
                    }
                }
                self.sync_shared_groups(peer);
            }
            NetEvent::Disconnected(peer) => {
                self.connectivity.connected.remove(&peer);
                self.memory_release.connection_closed();
                for subscribers in self.subscribers.values_mut() {
                    subscribers.remove(&peer);
                }
            }
            NetEvent::Unsubscribed { peer, group } => {
                if let Some(subscribers) = self.subscribers.get_mut(&group) {
                    subscribers.remove(&peer);
                }
            }
            NetEvent::PeerRecord { peer, record } => self.keep_peer_record(peer, &record),
            NetEvent::Unreachable(peer) => self.peer_unreachable(peer),
            _ => {}
        }
    }

    /// Handles one result of a helper task.
    pub(super) async fn internal(&mut self, message: Internal) {
        match message {
            Internal::WelcomeOffered {
                member,
                group,
                taken,
            } => self.welcome_offered(member, group, taken),
            Internal::Pushed { group, peer } => self.pushed(group, peer),
            Internal::SyncPage {
                group,
                peer,
                response,
                marks,
            } => self.sync_page_arrived(group, peer, response, marks).await,
            Internal::News {
                mailbox,
                peer,
                response,
            } => self.news_arrived(mailbox, peer, response).await,
            Internal::RecordPublished { stored } => self.record_published(stored),
            Internal::NewsUnanswered { mailbox } => self.news_unanswered(mailbox),
            Internal::SyncFailed { group, peer } => self.sync_failed(group, peer),
            Internal::Deposited {
                member,
                group,
                mailbox,
                held,
            } => self.welcome_deposited(member, group, mailbox, held).await,
        }
    }
}
