//! Notices: changes of this node's state that are not group events (a member out of reach,
//! how far this node's messages got). Unlike events they are not kept and have no cursor:
//! `status` and `read` show the current state at any time, so a client that missed notices
//! (it was not listening, or fell behind) asks those and listens again.

use std::time::SystemTime;

use dspring_proto::{GroupId, MemberId};
use tokio::sync::broadcast;

use crate::Node;

/// Notices buffered per listener; one that falls further behind misses the oldest (and can
/// read the current state from `status` and `read`). Delivery notices come at most once per
/// sync a peer asks (one per few seconds per peer), reach notices once per peer and change.
pub const LIVE_NOTICES: usize = 64;

/// A change of this node's state that is not a group event (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Notice {
    /// A member or mailbox this node wants has been out of reach since `since` (its dials
    /// kept failing; see [`crate::NodeStatus::out_of_reach`]).
    OutOfReach { member: MemberId, since: SystemTime },
    /// A member reported out of reach is connected again.
    BackInReach { member: MemberId },
    /// How far this node's messages in `group` got changed: another member or a mailbox
    /// holds them up to `held`, every other current member up to `all` (positions
    /// `(epoch, index)` of [`dspring_proto::Event::Sent`]; `None`: none yet). A message
    /// after both is only here.
    Delivery {
        group: GroupId,
        held: Option<(u64, u64)>,
        all: Option<(u64, u64)>,
    },
}

impl Node {
    /// Notices from now on, as they happen; ends when the node stops. A listener that
    /// falls more than [`LIVE_NOTICES`] behind skips the oldest it missed.
    pub fn notices(&self) -> impl futures::Stream<Item = Notice> + use<> {
        let receiver = self.notices.subscribe();
        let stopped = self.stopped.clone();
        futures::stream::unfold(
            (receiver, stopped),
            |(mut receiver, mut stopped)| async move {
                loop {
                    let next = tokio::select! {
                        next = receiver.recv() => next,
                        _ = stopped.changed() => return None,
                    };
                    match next {
                        Ok(notice) => return Some((notice, (receiver, stopped))),
                        Err(broadcast::error::RecvError::Lagged(_)) => {}
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        )
    }
}
