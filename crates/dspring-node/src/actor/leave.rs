//! Membership requests: removing a member, and members who asked to leave removed in turn by
//! the remaining members. Its state: the actor's `leave_requests`.

use std::time::Duration;

use dspring_proto::{GroupId, MemberId};

use super::Actor;
use crate::NodeError;

/// A member who asks to leave is removed by the first remaining member, in member-id order,
/// whose turn comes while the leaver is still in the group: the first at once, the next two
/// of these later, and so on. Staggered, so that a group does not answer one request with a
/// removal from every member (each costs a message to every member); a member's turn is
/// checked at its maintenance round.
const LEAVE_STAGGER: Duration = super::MAINTENANCE_INTERVAL;

/// Most leave requests waiting for their turn: each is a few dozen bytes; more than this many
/// at once is not honest traffic.
pub(super) const MAX_LEAVE_REQUESTS: usize = 1024;

impl Actor {
    /// Removes `member` from `group`. The removal also goes to the removed member directly,
    /// retried like a welcome until its node takes it: members answer the syncs of members
    /// only, so a removed member that missed the gossip (it was offline, or had just started)
    /// would otherwise never learn it was removed.
    pub(super) async fn remove(
        &mut self,
        group: GroupId,
        member: MemberId,
    ) -> Result<(), NodeError> {
        self.local(group, |g, _, rng| {
            let mut staged = g.remove(member, rng)?;
            for outgoing in &mut staged.outbox {
                outgoing.welcome_for = Some(member);
            }
            Ok(staged)
        })
        .await?;
        self.offer_welcomes(member);
        Ok(())
    }

    /// Takes up the leave requests a previous run had not acted on: turns count from now.
    pub(super) fn restore_leave_requests(&mut self) {
        let requests = match self.store.leave_requests() {
            Ok(requests) => requests,
            Err(error) => {
                tracing::warn!(%error, "reading leave requests");
                return;
            }
        };
        for (group, leaver) in requests {
            if self.groups.is_member(&group, &leaver) {
                self.leave_requested(group, leaver);
            } else {
                self.forget_leave_request(group, leaver);
            }
        }
    }

    fn forget_leave_request(&mut self, group: GroupId, leaver: MemberId) {
        if let Err(error) = self.store.forget_leave_request(&group, &leaver) {
            tracing::warn!(%error, "forgetting a leave request");
        }
    }

    /// `leaver` asked to leave `group`: this node's turn to remove them comes after the
    /// members before it in member-id order have had theirs.
    pub(super) fn leave_requested(&mut self, group: GroupId, leaver: MemberId) {
        let me = self.device.id();
        if leaver == me || self.leave_requests.len() >= MAX_LEAVE_REQUESTS {
            return;
        }
        let Some(members) = self.groups.members(&group).filter(|m| m.contains(&leaver)) else {
            return;
        };
        let rank = members
            .iter()
            .filter(|m| **m != leaver)
            .position(|m| *m == me)
            .unwrap_or(0);
        // Two rounds apart: each node checks its turn at its own maintenance round, so one
        // round apart the first and the second could both act in the same instant.
        let turn =
            LEAVE_STAGGER.saturating_mul(u32::try_from(rank.saturating_mul(2)).unwrap_or(u32::MAX));
        self.leave_requests
            .insert((group, leaver), tokio::time::Instant::now() + turn);
    }

    /// Removes the members who asked to leave and whose removal is this node's turn, unless
    /// someone did already.
    pub(super) async fn act_on_leave_requests(&mut self) {
        let now = tokio::time::Instant::now();
        let due: Vec<(GroupId, MemberId)> = self
            .leave_requests
            .iter()
            .filter(|(_, turn)| **turn <= now)
            .map(|(key, _)| *key)
            .collect();
        for (group, leaver) in due {
            self.leave_requests.remove(&(group, leaver));
            let still_there = self.groups.is_member(&group, &leaver);
            if !still_there {
                self.forget_leave_request(group, leaver);
            } else if let Err(error) = self.remove(group, leaver).await {
                tracing::debug!(%error, "removing a member who asked to leave");
            }
        }
    }
}
