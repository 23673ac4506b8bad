//! The API: each request of a [`Node`](crate::Node) handle, dispatched to the concern that
//! answers it, and the status report. No state of its own.

use std::collections::HashMap;

use dspring_net::Command;
use dspring_proto::GroupId;

use super::groups::{check_name, name_stamp};
use super::{Actor, now_ms, visible};
use crate::content;
use crate::{NodeError, Request};

impl Actor {
    pub(super) async fn request(&mut self, request: Request) {
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
                let result = if self.groups.contains(&group) {
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
            Request::Delivery(group, reply) => {
                let _ = reply.send(self.delivery(&group).ok_or(NodeError::UnknownGroup));
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
                    .members(&group)
                    .map(<[dspring_proto::MemberId]>::to_vec)
                    .ok_or(NodeError::UnknownGroup);
                let _ = reply.send(result);
            }
            Request::Groups(reply) => {
                let _ = reply.send(Ok(self.groups.ids().copied().collect()));
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
                    .connectivity
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
        let (out_of_reach, groups_out_of_reach) = self.out_of_reach();
        Ok(crate::NodeStatus {
            out_of_reach,
            groups_out_of_reach,
            outbox: self.store.outbox_len()?,
            awaiting_welcome: self.store.members_awaiting_welcome()?.len(),
            busy_groups: self.connectivity.last_activity.len(),
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
}
