//! Welcomes and invitations: offering welcomes to new members directly and leaving them at
//! their mailboxes, and taking the welcomes this node gets (joining, or holding an invitation).
//! Its state: the actor's `deposited` and `join_from`.

use std::time::Duration;

use dspring_net::Command;
use dspring_net::wire::{DirectRequest, MailboxRequest, MailboxResponse};
use dspring_proto::{Group, GroupId, MemberId};
use libp2p::PeerId;

use super::{Actor, Internal, now_ms, short_hex};
use crate::NodeError;

/// How often welcomes for members who were offline are offered again.
pub(super) const WELCOME_RETRY_INTERVAL: Duration = Duration::from_secs(3);

/// What became of a welcome.
enum Welcomed {
    Joined,
    /// Held as an invitation for the user to accept.
    Held,
}

impl Actor {
    /// Leaves the welcomes waiting for `member` at the mailboxes its card names, in the
    /// background (once each per run).
    pub(super) fn deposit_welcomes(&mut self, member: MemberId) {
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
                // Deposited, or being deposited (one deposit in flight per welcome and
                // mailbox, as one offer: see `offer_welcomes`).
                if !self.deposited.insert((member, *group, mailbox)) {
                    continue;
                }
                let request = MailboxRequest::Deposit {
                    member,
                    group: *group,
                    envelope: envelope.clone(),
                };
                let (net, internal, group) = (self.net.clone(), self.internal.clone(), *group);
                tokio::spawn(async move {
                    let held = match net.mailbox(peer, request).await {
                        Ok(MailboxResponse::Done) => true,
                        Ok(_) => {
                            tracing::debug!("a mailbox refused a welcome");
                            false
                        }
                        Err(error) => {
                            tracing::debug!(%error, "mailbox deposit");
                            false
                        }
                    };
                    let _ = internal
                        .send(Internal::Deposited {
                            member,
                            group,
                            mailbox,
                            held,
                        })
                        .await;
                });
            }
        }
    }

    /// Offers a member the welcomes waiting for it, straight to its peer, in the background;
    /// each is dropped from the store once the member answered. One offer per welcome is in
    /// flight: every group created with a member offers it all its waiting welcomes, so
    /// without this a node creating n groups with one member sent n²/2 offers at once
    /// (30,883 for 300 groups, and 380 MB of heap at the peak for 1,000).
    pub(super) fn offer_welcomes(&mut self, member: MemberId) {
        let Ok(peer) = dspring_net::identity::peer_id(&member) else {
            return;
        };
        let Ok(welcomes) = self.store.pending_welcomes(&member) else {
            return;
        };
        for (group, envelope) in welcomes {
            if !self.offering.insert((member, group)) {
                continue;
            }
            let net = self.net.clone();
            let internal = self.internal.clone();
            tokio::spawn(async move {
                let answered = net
                    .send_direct(peer, DirectRequest { group, envelope })
                    .await;
                if let Err(error) = &answered {
                    tracing::debug!(%error, "welcome not delivered yet");
                }
                let _ = internal
                    .send(Internal::WelcomeOffered {
                        member,
                        group,
                        taken: answered.is_ok(),
                    })
                    .await;
            });
        }
    }

    /// An offer of a welcome ended; if the member took it, it is no longer kept.
    pub(super) fn welcome_offered(&mut self, member: MemberId, group: GroupId, taken: bool) {
        self.offering.remove(&(member, group));
        if taken {
            self.welcome_taken(member, group);
        }
    }

    /// Takes a welcome as the join policy says: joins, or holds it as an invitation for the
    /// user. True if either happened (the sender need not offer it again).
    pub(super) async fn join(&mut self, group: GroupId, envelope: Vec<u8>, from: PeerId) -> bool {
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
            .filter(|p| *p != from && self.connectivity.connected.contains(p))
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
    pub(super) async fn accept_invitation(&mut self, group: GroupId) -> Result<(), NodeError> {
        let Some((adder, welcome)) = self.store.invitation(&group)? else {
            return Err(NodeError::NoInvitation);
        };
        if !self.groups.contains(&group) {
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

    /// A member took a welcome offered to it: it is not offered again.
    pub(super) fn welcome_taken(&mut self, member: MemberId, group: GroupId) {
        if let Err(error) = self.store.welcome_delivered(&member, &group) {
            tracing::warn!(%error, "welcome bookkeeping");
        }
    }

    /// A welcome for `member` is held by its mailbox.
    pub(super) async fn welcome_deposited(
        &mut self,
        member: MemberId,
        group: GroupId,
        mailbox: MemberId,
        held: bool,
    ) {
        if !held {
            // Offered again at the next retry.
            self.deposited.remove(&(member, group, mailbox));
            return;
        }
        // A mailbox joins the group's mailboxes only for a member of the group: what
        // it holds for a removed member is that member's removal, and the group must
        // not go on serving its ciphertext to the removed member's mailbox.
        if self.groups.is_member(&group, &member) {
            self.announce_mailbox(group, mailbox).await;
        }
    }
}
