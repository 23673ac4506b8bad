//! Group operations and the commit pipeline: contacts and their bundles, creating groups, local
//! operations, judging inbound envelopes, and committing steps with what follows (group names,
//! mailbox announcements, live events, the outbox). Its state: the actor's `groups` and
//! `group_names`.

use dspring_net::wire::DirectResponse;
use dspring_net::{Command, InboundId, Verdict};
use dspring_proto::envelope::{Envelope, Unverified};
use dspring_proto::{Device, Group, GroupId, MemberId, ReceiveError, Staged};
use dspring_store::{Contact, GroupName, MAX_GROUP_NAME_BYTES, MAX_PAGE, Metadata, StoredEvent};
use rand_chacha::ChaCha20Rng;

use super::connectivity::remember_addresses;
use super::{Actor, now_ms, random_seed};
use crate::content::{self, Content};
use crate::{ContactCard, NodeError};

impl Actor {
    pub(super) async fn add_contact(
        &mut self,
        card: ContactCard,
        name: String,
    ) -> Result<(), NodeError> {
        remember_addresses(&self.net, &card.member, &card.addresses).await;
        for mailbox in &card.mailboxes {
            self.remember_mailbox(mailbox).await?;
        }
        let mailboxes: Vec<MemberId> = card.mailboxes.iter().map(|m| m.member).collect();
        self.store.set_contact_mailboxes(&card.member, &mailboxes)?;
        // A new card of the same key (new addresses, new prekeys) keeps the verification:
        // the safety number comes from the key alone.
        let verified = self
            .store
            .contact(&card.member)?
            .is_some_and(|known| known.verified);
        self.store.put_contact(&Contact {
            member: card.member,
            display_name: name,
            verified,
            addresses: card.addresses,
            bundle: Some(card.bundle),
        })?;
        Ok(())
    }

    /// A contact's prekey bundle for a welcome. Its one-time prekey is good for one welcome
    /// only (the device deletes it on first use, so a second welcome made with it could never
    /// be opened): the contact is stored without it before it is used, so that a crash cannot
    /// lead to a second use; later welcomes use the signed prekey alone.
    pub(super) fn take_bundle(
        &mut self,
        member: &MemberId,
    ) -> Result<dspring_proto::identity::PrekeyBundle, NodeError> {
        let Some(mut contact) = self.store.contact(member)? else {
            return Err(NodeError::UnknownContact(*member));
        };
        let Some(bundle) = contact.bundle.clone() else {
            return Err(NodeError::UnknownContact(*member));
        };
        if let Some(stored) = contact.bundle.as_mut().filter(|b| b.one_time.is_some()) {
            stored.one_time = None;
            self.store.put_contact(&contact)?;
        }
        Ok(bundle)
    }

    pub(super) async fn create_group(
        &mut self,
        name: &str,
        members: &[MemberId],
    ) -> Result<GroupId, NodeError> {
        check_name(name)?;
        let mut bundles = Vec::with_capacity(members.len());
        for member in members {
            bundles.push(self.take_bundle(member)?);
        }
        let id = GroupId(random_seed()?);
        let staged = Group::create(&self.device, id, &bundles, &mut self.rng)?;
        // The name is the group's first message, committed with the create.
        let named = if name.is_empty() {
            None
        } else {
            Some(staged.group.send(&content::group_name(name, now_ms()))?)
        };
        let mut steps = vec![&staged];
        steps.extend(named.as_ref());
        // The initial members do not follow the topic yet: the create is their welcome, kept
        // until each has taken it.
        self.commit_all(&steps, members).await?;
        self.net.send(Command::Subscribe(id)).await?;
        for member in members {
            self.offer_welcomes(*member);
            self.deposit_welcomes(*member);
        }
        self.joined(id).await;
        Ok(id)
    }

    /// Runs a local operation on a group and commits it.
    pub(super) async fn local(
        &mut self,
        group: GroupId,
        op: impl FnOnce(&Group, &Device, &mut ChaCha20Rng) -> Result<Staged, NodeError>,
    ) -> Result<(), NodeError> {
        let state = self
            .groups
            .state(&self.store, &group)?
            .ok_or(NodeError::UnknownGroup)?;
        let staged = op(state, &self.device, &mut self.rng)?;
        self.commit(&staged).await
    }

    /// Commits a step, then tells subscribers and hands the outbox to the network.
    pub(super) async fn commit(&mut self, staged: &Staged) -> Result<(), NodeError> {
        self.commit_welcoming(staged, &[]).await
    }

    async fn commit_welcoming(
        &mut self,
        staged: &Staged,
        welcome: &[MemberId],
    ) -> Result<(), NodeError> {
        self.commit_all(&[staged], welcome).await
    }

    /// Commits steps in one transaction with the group metadata their messages carry (the
    /// first step's first envelope also a welcome for `welcome`), then tells subscribers and
    /// hands the outbox to the network.
    async fn commit_all(
        &mut self,
        steps: &[&Staged],
        welcome: &[MemberId],
    ) -> Result<(), NodeError> {
        let metadata = self.metadata_of(steps);
        let committed = self.store.apply_steps(steps, welcome, &metadata)?;
        for (staged, committed) in steps.iter().zip(&committed) {
            self.committed(staged, committed).await;
        }
        self.pump_outbox().await;
        Ok(())
    }

    /// The group metadata (mailboxes, names) that the messages of `steps` carry.
    fn metadata_of(&self, steps: &[&Staged]) -> Metadata {
        let mut out = Metadata::default();
        for staged in steps {
            let group = staged.group.id();
            for (sender, content) in self.contents(staged) {
                match content {
                    Content::Mailbox(mailbox) => out.group_mailboxes.push((group, mailbox.member)),
                    Content::GroupName { name, set_ms } => out.group_names.push(GroupName {
                        group,
                        name,
                        set_ms,
                        set_by: sender,
                    }),
                    Content::Leave => out.leave_requests.push((group, sender)),
                    Content::Text(_) => {}
                }
            }
        }
        out
    }

    /// The decoded contents of a step's messages (received and sent), with their senders.
    fn contents(&self, staged: &Staged) -> Vec<(MemberId, Content)> {
        staged
            .events
            .iter()
            .filter_map(|event| match event {
                dspring_proto::Event::Message {
                    sender, plaintext, ..
                } => Some((*sender, plaintext)),
                dspring_proto::Event::Sent { plaintext, .. } => Some((self.device.id(), plaintext)),
                _ => None,
            })
            .filter_map(|(sender, plaintext)| Some((sender, content::decode(plaintext)?)))
            .collect()
    }

    /// Commits consecutive steps of one group in one transaction (a sync page: one commit
    /// instead of one per envelope), then tells subscribers and hands the outbox over.
    pub(super) async fn commit_steps(&mut self, steps: &[Staged]) -> Result<(), NodeError> {
        let refs: Vec<&Staged> = steps.iter().collect();
        self.commit_all(&refs, &[]).await
    }

    /// What follows a committed step: the new state in memory, announcements, live events.
    pub(super) async fn committed(
        &mut self,
        staged: &Staged,
        committed: &dspring_store::Committed,
    ) {
        let id = staged.group.id();
        self.groups.insert(staged.group.clone());
        self.wake_group(id).await;
        if staged
            .events
            .iter()
            .any(|e| matches!(e, dspring_proto::Event::Sent { .. }))
        {
            self.wrote(id);
        }
        self.device.consume_prekeys(&staged.consumed_prekeys);
        let now = now_ms();
        for (sender, content) in self.contents(staged) {
            match content {
                Content::Mailbox(mailbox) => self.record_group_mailbox(id, &mailbox).await,
                Content::GroupName { name, set_ms } => {
                    let named = GroupName {
                        group: id,
                        name,
                        set_ms,
                        set_by: sender,
                    };
                    // The rule the store applies to its row, so memory and disk agree.
                    if self
                        .group_names
                        .get(&id)
                        .is_none_or(|n| named.supersedes(n))
                    {
                        self.group_names.insert(id, named);
                    }
                }
                Content::Leave => self.leave_requested(id, sender),
                Content::Text(_) => {}
            }
        }
        for (cursor, event) in committed.cursors.iter().zip(&staged.events) {
            let stored = StoredEvent {
                cursor: *cursor,
                group: id,
                at_ms: now,
                event: event.clone(),
            };
            if let Some(shown) = content::present(stored) {
                let _ = self.live.send(shown);
            }
        }
        if !staged.group.is_active() {
            let _ = self.net.send(Command::Unsubscribe(id)).await;
        }
    }

    /// Publishes what the outbox holds. A publish with nobody to hear it still counts as
    /// handed over: the envelope is in the group log, and members catch up from it by sync.
    pub(super) async fn pump_outbox(&mut self) {
        let Ok(entries) = self.store.outbox(MAX_PAGE) else {
            return;
        };
        let mut done = Vec::with_capacity(entries.len());
        for entry in entries {
            // Waiting for the swarm's answer would hold this actor (and every envelope queued
            // behind it) for nothing: a failure is logged there, and the envelope stays in
            // the log for sync either way.
            if self
                .net
                .publish_and_go_on(entry.group, entry.bytes.clone())
                .await
                .is_err()
            {
                tracing::debug!("the network has stopped");
            }
            if let Some(member) = entry.welcome_for {
                self.offer_welcomes(member);
            }
            done.push(entry.id);
        }
        if let Err(error) = self.store.outbox_sent(&done) {
            tracing::warn!(%error, "outbox");
        }
    }

    /// Gossip (and direct envelopes of known groups) go to the core only from senders this
    /// member knows: anyone else could fill
    /// the delivery buffer with junk. A newcomer's first envelopes arrive by sync instead, once
    /// its add is known.
    pub(super) fn judge(&mut self, group: GroupId, envelope: Vec<u8>) -> Result<Staged, Verdict> {
        if !self.groups.contains(&group) {
            if self.serves(&group) {
                return Err(self.mailbox_keep(group, &envelope));
            }
            return Err(Verdict::Ignore);
        }
        let state = match self.groups.state(&self.store, &group) {
            Ok(Some(state)) => state,
            Ok(None) => return Err(Verdict::Ignore),
            Err(error) => {
                // Our failure, not the sender's: ignored (it comes again by sync).
                tracing::warn!(%error, "reading a group's state");
                return Err(Verdict::Ignore);
            }
        };
        let sender = match Unverified::<Envelope>::parse(envelope.clone()) {
            Ok(parsed) => parsed.sender(),
            Err(_) => return Err(Verdict::Reject),
        };
        if !state.knows_sender(sender) {
            // Not forwarded and not buffered, but not penalised either: it may be a member
            // whose add has not reached us yet, relayed by an honest peer.
            return Err(Verdict::Ignore);
        }
        state
            .receive(&self.device, envelope, &mut self.rng)
            .map_err(|error| verdict_of(&error))
    }

    pub(super) async fn answer_direct(&self, id: InboundId, accepted: bool) {
        let _ = self
            .net
            .send(Command::AnswerDirect {
                id,
                response: DirectResponse { accepted },
            })
            .await;
    }
}

/// Whether a refused envelope is the sender's fault (penalise) or just not usable here.
/// A step that delivered nothing: the envelope went into the delivery buffer, unverified yet.
pub(super) fn only_buffered(staged: &Staged) -> bool {
    staged.delivered.is_empty() && staged.events.is_empty()
}

/// The step put an envelope into the delivery buffer that was not there (not a replay).
pub(super) fn newly_buffered(staged: &Staged) -> bool {
    only_buffered(staged) && (staged.changes.base || staged.changes.all)
}

/// Gossip is anonymous: a rejection costs the peer that forwarded the envelope, not its author
/// (-10 of gossipsub score for one, below the graylist after three; `dspring-net`'s topic
/// scores).
/// So only what no honest forwarder passes on is rejected: bytes that are not an envelope, or
/// a signature that does not verify (the forwarder checked the same bytes against the same
/// key). The rest is ignored, not forwarded, but not held against the forwarder: a sender
/// removed concurrently, a stream fork, a message this member cannot decrypt can all reach an
/// honest peer before the news that makes them invalid.
fn verdict_of(error: &ReceiveError) -> Verdict {
    match error {
        ReceiveError::Malformed(_) | ReceiveError::BadSignature(_) => Verdict::Reject,
        _ => Verdict::Ignore,
    }
}

/// A group name the node accepts: at most [`MAX_GROUP_NAME_BYTES`] (empty is no name).
pub(super) fn check_name(name: &str) -> Result<(), NodeError> {
    if name.len() > MAX_GROUP_NAME_BYTES {
        return Err(NodeError::NameTooLong {
            max: MAX_GROUP_NAME_BYTES,
        });
    }
    Ok(())
}

/// The time a rename carries: now, or just after the name it replaces if that one claims a
/// later time (a member's clock ahead of ours). A rename thus wins over every name its
/// member had seen, whatever the clocks say; only concurrent renames go by time.
pub(super) fn name_stamp(now_ms: u64, current: Option<&GroupName>) -> u64 {
    current
        .map_or(now_ms, |named| now_ms.max(named.set_ms.saturating_add(1)))
        .min(MAX_NAME_STAMP)
}

/// The latest stamp a name can carry: the store keeps stamps as SQLite integers, and the
/// content decoder drops larger ones.
const MAX_NAME_STAMP: u64 = i64::MAX as u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rename_wins_over_the_name_it_replaces_whatever_the_clocks() {
        assert_eq!(name_stamp(1_000, None), 1_000);
        let ahead = GroupName {
            group: GroupId([1; 32]),
            name: "from a clock an hour ahead".into(),
            set_ms: 3_601_000,
            set_by: MemberId([2; 32]),
        };
        let stamp = name_stamp(1_000, Some(&ahead));
        let renamed = GroupName {
            name: "renamed after it".into(),
            set_ms: stamp,
            set_by: MemberId([1; 32]),
            ..ahead.clone()
        };
        assert!(renamed.supersedes(&ahead));
        let behind = GroupName {
            set_ms: 10,
            ..ahead
        };
        assert_eq!(name_stamp(1_000, Some(&behind)), 1_000);
    }
}
