//! How far this node's own messages have got: which members and mailboxes of a group hold
//! them. Nothing extra goes on the wire for it: every sync request a peer sends carries its
//! marks, per sender the position up to which it holds that sender's messages without a gap,
//! and this node's own mark in them says what the peer holds of its messages. Its state: the
//! actor's `held_by`, in memory (after a restart it fills again as peers sync).

use std::collections::HashMap;

use dspring_net::wire::Mark;
use dspring_proto::{GroupId, MemberId};
use libp2p::PeerId;

use super::Actor;
use crate::{Delivery, Notice};

impl Actor {
    /// A peer's sync request of `group` showed its marks: keeps what it holds of this node's
    /// messages, if it is a member of the group or one of its mailboxes (what others claim
    /// is not kept, so the map stays bounded by the groups' members and mailboxes).
    pub(super) fn note_marks(&mut self, group: GroupId, peer: PeerId, marks: &[Mark]) {
        let Some(holder) = dspring_net::identity::member(&peer) else {
            return;
        };
        if !self.groups.contains(&group) {
            return;
        }
        if !self.groups.is_member(&group, &holder) && !self.is_group_mailbox(&group, &holder) {
            return;
        }
        let me = self.device.id().short();
        let Some(held) = marks
            .iter()
            .find(|m| m.sender == me)
            .and_then(|m| m.application)
        else {
            return;
        };
        let before = self.delivery(&group);
        let known = self.held_by.entry(group).or_default();
        let entry = known.entry(holder).or_insert(held);
        *entry = (*entry).max(held);
        let after = self.delivery(&group);
        let reach = |d: &Option<Delivery>| d.as_ref().map(|d| (d.held_up_to(), d.all_up_to()));
        if let Some((held, all)) = reach(&after).filter(|now| Some(*now) != reach(&before)) {
            let _ = self.notices.send(Notice::Delivery { group, held, all });
        }
    }

    /// What the members and mailboxes of `group` hold of this node's messages.
    pub(super) fn delivery(&self, group: &GroupId) -> Option<Delivery> {
        let me = self.device.id();
        let members: Vec<MemberId> = self
            .groups
            .members(group)?
            .iter()
            .copied()
            .filter(|m| *m != me)
            .collect();
        let held: HashMap<MemberId, (u64, u64)> = self
            .held_by
            .get(group)
            .map(|held| {
                held.iter()
                    .filter(|(holder, _)| {
                        members.contains(holder) || self.is_group_mailbox(group, holder)
                    })
                    .map(|(holder, mark)| (*holder, *mark))
                    .collect()
            })
            .unwrap_or_default();
        Some(Delivery { held, members })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DeliveryState;

    #[test]
    fn a_message_is_held_once_anyone_has_it_and_delivered_once_every_member_has() {
        let (b, c, mailbox) = (MemberId([2; 32]), MemberId([3; 32]), MemberId([9; 32]));
        let mut delivery = Delivery {
            held: HashMap::new(),
            members: vec![b, c],
        };
        assert_eq!(delivery.of(0, 0), DeliveryState::Here);
        delivery.held.insert(mailbox, (0, 5));
        assert_eq!(delivery.of(0, 5), DeliveryState::Held, "a mailbox holds it");
        assert_eq!(delivery.of(0, 6), DeliveryState::Here, "not past its mark");
        assert_eq!(delivery.of(1, 0), DeliveryState::Here, "nor a later epoch");
        delivery.held.insert(b, (1, 3));
        delivery.held.insert(c, (0, 7));
        assert_eq!(delivery.of(0, 7), DeliveryState::All);
        assert_eq!(delivery.of(1, 2), DeliveryState::Held, "c is behind");
        // A group of one: nobody else to hold it.
        let alone = Delivery::default();
        assert_eq!(alone.of(0, 0), DeliveryState::Here);
    }
}
