//! Events and notices as the API and the event stream show them.

use dspring_node::{Delivery, DeliveryState, Event, MemberId, NodeEvent, Notice};
use serde::Serialize;

/// An event as the API shows it.
#[derive(Serialize)]
pub struct ApiEvent {
    pub cursor: u64,
    pub group: String,
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: EventBody,
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EventBody {
    Message {
        sender: String,
        text: String,
    },
    Sent {
        text: String,
        /// Its position in this node's stream (epoch, index): `delivery` notices say up to
        /// where others hold this node's messages.
        epoch: u64,
        index: u64,
        /// In `read`: how far it got (`here`, `held`, `all`; see [`delivery_name`]).
        #[serde(skip_serializing_if = "Option::is_none")]
        delivery: Option<&'static str>,
    },
    Joined {
        by: String,
    },
    MemberAdded {
        by: String,
        member: String,
    },
    MemberRemoved {
        by: String,
        member: String,
    },
    KeyUpdated {
        member: String,
    },
    RemovedMe {
        by: String,
    },
    Unreadable {
        sender: String,
    },
    /// Someone who is not a contact added this node; `invitation accept` joins.
    Invited {
        by: String,
    },
    Other,
}

/// How `read` names a sent message's [`DeliveryState`]: only on this node so far, held by
/// another member or a mailbox, held by every other current member.
pub(super) fn delivery_name(state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Here => "here",
        DeliveryState::Held => "held",
        _ => "all",
    }
}

pub fn api_event(stored: &NodeEvent) -> ApiEvent {
    api_event_in(stored, None)
}

/// An event as `read` shows it: a sent message says how far it got, from `delivery`.
pub(super) fn api_event_in(stored: &NodeEvent, delivery: Option<&Delivery>) -> ApiEvent {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let event = match &stored.event {
        Event::Message {
            sender, plaintext, ..
        } => EventBody::Message {
            sender: member_hex(sender),
            text: text(plaintext),
        },
        Event::Sent {
            plaintext,
            epoch,
            index,
        } => EventBody::Sent {
            text: text(plaintext),
            epoch: *epoch,
            index: *index,
            delivery: delivery.map(|d| delivery_name(d.of(*epoch, *index))),
        },
        Event::Joined { by } => EventBody::Joined { by: member_hex(by) },
        Event::MemberAdded { by, member } => EventBody::MemberAdded {
            by: member_hex(by),
            member: member_hex(member),
        },
        Event::MemberRemoved { by, member } => EventBody::MemberRemoved {
            by: member_hex(by),
            member: member_hex(member),
        },
        Event::KeyUpdated { member } => EventBody::KeyUpdated {
            member: member_hex(member),
        },
        Event::RemovedMe { by } => EventBody::RemovedMe { by: member_hex(by) },
        Event::Unreadable { sender, .. } => EventBody::Unreadable {
            sender: member_hex(sender),
        },
        Event::Invited { by } => EventBody::Invited { by: member_hex(by) },
        _ => EventBody::Other,
    };
    ApiEvent {
        cursor: stored.cursor,
        group: hex::encode(stored.group.as_bytes()),
        at_ms: stored.at_ms,
        event,
    }
}

pub fn member_hex(member: &MemberId) -> String {
    hex::encode(member.as_bytes())
}

/// A position in a member's stream of messages, as [`Event::Sent`] has it.
#[derive(Serialize)]
pub struct Position {
    pub epoch: u64,
    pub index: u64,
}

impl From<(u64, u64)> for Position {
    fn from((epoch, index): (u64, u64)) -> Self {
        Self { epoch, index }
    }
}

/// A notice as the event stream shows it (SSE event `notice`, no id: notices are not kept).
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApiNotice {
    OutOfReach {
        member: String,
        /// When its dials began to fail, in ms since the Unix epoch.
        since_ms: u64,
    },
    BackInReach {
        member: String,
    },
    Delivery {
        group: String,
        held: Option<Position>,
        all: Option<Position>,
    },
}

/// The notice as the API shows it; `None` for a kind this API does not know yet.
pub fn api_notice(notice: &Notice) -> Option<ApiNotice> {
    Some(match notice {
        Notice::OutOfReach { member, since } => ApiNotice::OutOfReach {
            member: member_hex(member),
            since_ms: since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        },
        Notice::BackInReach { member } => ApiNotice::BackInReach {
            member: member_hex(member),
        },
        Notice::Delivery { group, held, all } => ApiNotice::Delivery {
            group: hex::encode(group.as_bytes()),
            held: held.map(Position::from),
            all: all.map(Position::from),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::api::{EVENT_KINDS, NOTICE_KINDS};

    #[test]
    fn the_documented_event_kinds_are_exactly_those_the_api_shows() {
        let s = || "x".to_owned();
        let bodies = [
            EventBody::Message {
                sender: s(),
                text: s(),
            },
            EventBody::Sent {
                text: s(),
                epoch: 0,
                index: 0,
                delivery: None,
            },
            EventBody::Joined { by: s() },
            EventBody::MemberAdded {
                by: s(),
                member: s(),
            },
            EventBody::MemberRemoved {
                by: s(),
                member: s(),
            },
            EventBody::KeyUpdated { member: s() },
            EventBody::RemovedMe { by: s() },
            EventBody::Unreadable { sender: s() },
            EventBody::Invited { by: s() },
            EventBody::Other,
        ];
        let kinds: Vec<String> = bodies
            .into_iter()
            .map(|body| {
                // Matched so that a new variant fails to compile here until it is listed.
                match &body {
                    EventBody::Message { .. }
                    | EventBody::Sent { .. }
                    | EventBody::Joined { .. }
                    | EventBody::MemberAdded { .. }
                    | EventBody::MemberRemoved { .. }
                    | EventBody::KeyUpdated { .. }
                    | EventBody::RemovedMe { .. }
                    | EventBody::Unreadable { .. }
                    | EventBody::Invited { .. }
                    | EventBody::Other => {}
                }
                serde_json::to_value(&body).unwrap()["kind"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(kinds, EVENT_KINDS);
    }

    #[test]
    fn the_documented_notice_kinds_are_exactly_those_the_api_shows() {
        let member = MemberId([1; 32]);
        let notices = [
            Notice::OutOfReach {
                member,
                since: std::time::UNIX_EPOCH + std::time::Duration::from_millis(1500),
            },
            Notice::BackInReach { member },
            Notice::Delivery {
                group: dspring_node::GroupId([2; 32]),
                held: Some((1, 4)),
                all: None,
            },
        ];
        let shown: Vec<serde_json::Value> = notices
            .iter()
            .map(|n| serde_json::to_value(api_notice(n).unwrap()).unwrap())
            .collect();
        let kinds: Vec<&str> = shown.iter().map(|n| n["kind"].as_str().unwrap()).collect();
        assert_eq!(kinds, NOTICE_KINDS);
        assert_eq!(shown[0]["since_ms"], 1500);
        assert_eq!(
            shown[2]["held"],
            serde_json::json!({"epoch": 1, "index": 4})
        );
        assert!(shown[2]["all"].is_null());
    }
}
