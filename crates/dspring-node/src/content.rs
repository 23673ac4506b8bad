//! What a group's application messages carry: a person's message, or group metadata that
//! every member sees (a mailbox that serves the group, the group's name). One leading tag byte; the rest
//! is the body.

use dspring_store::StoredEvent;

use crate::card::MailboxRef;

/// The longest message [`crate::Node::send`] takes, bytes: the core's plaintext bound less
/// the tag byte.
pub const MAX_MESSAGE_BYTES: usize = dspring_proto::envelope::MAX_PLAINTEXT_LEN - 1;

const TEXT: u8 = 0;
const MAILBOX: u8 = 1;
const GROUP_NAME: u8 = 2;
const LEAVE: u8 = 3;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Content {
    Text(Vec<u8>),
    Mailbox(MailboxRef),
    /// The group's name, set by the sender at `set_ms` (its clock); the latest wins.
    GroupName {
        name: String,
        set_ms: u64,
    },
    /// The sender asks to be removed: DCGKA has no self-removal, so another member's node
    /// removes them.
    Leave,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct NameBody {
    name: String,
    set_ms: u64,
}

pub(crate) fn group_name(name: &str, set_ms: u64) -> Vec<u8> {
    let mut out = vec![GROUP_NAME];
    let body = NameBody {
        name: name.to_string(),
        set_ms,
    };
    out.extend(postcard::to_allocvec(&body).unwrap_or_default());
    out
}

pub(crate) fn leave() -> Vec<u8> {
    vec![LEAVE]
}

pub(crate) fn text(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + body.len());
    out.push(TEXT);
    out.extend_from_slice(body);
    out
}

pub(crate) fn mailbox(mailbox: &MailboxRef) -> Vec<u8> {
    let mut out = vec![MAILBOX];
    out.extend(postcard::to_allocvec(mailbox).unwrap_or_default());
    out
}

/// `None` for an unknown tag (a newer version's metadata) or a damaged body.
pub(crate) fn decode(plaintext: &[u8]) -> Option<Content> {
    match plaintext.split_first()? {
        (&TEXT, body) => Some(Content::Text(body.to_vec())),
        (&MAILBOX, body) => postcard::from_bytes(body).ok().map(Content::Mailbox),
        (&GROUP_NAME, body) => postcard::from_bytes::<NameBody>(body)
            .ok()
            // A time the store cannot hold (SQLite integers are signed) would make the
            // step that carries it fail to commit, again at every retry.
            .filter(|b| {
                b.name.len() <= dspring_store::MAX_GROUP_NAME_BYTES
                    && i64::try_from(b.set_ms).is_ok()
            })
            .map(|b| Content::GroupName {
                name: b.name,
                set_ms: b.set_ms,
            }),
        (&LEAVE, []) => Some(Content::Leave),
        _ => None,
    }
}

/// An event as the API shows it: a message's text without its tag; metadata messages are
/// handled by the node and not shown.
pub(crate) fn present(mut stored: StoredEvent) -> Option<StoredEvent> {
    use dspring_proto::Event;
    match &mut stored.event {
        Event::Message { plaintext, .. } | Event::Sent { plaintext, .. } => {
            match decode(plaintext)? {
                Content::Text(body) => *plaintext = body,
                Content::Mailbox(_) | Content::GroupName { .. } | Content::Leave => return None,
            }
        }
        _ => {}
    }
    Some(stored)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dspring_proto::MemberId;

    #[test]
    fn contents_round_trip_and_junk_is_refused() {
        assert_eq!(decode(&text(b"hi")), Some(Content::Text(b"hi".to_vec())));
        let m = MailboxRef {
            member: MemberId([3; 32]),
            addresses: vec!["/ip4/127.0.0.1/tcp/1".into()],
        };
        assert_eq!(decode(&mailbox(&m)), Some(Content::Mailbox(m)));
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[9, 1, 2]), None);
        assert_eq!(decode(&[MAILBOX, 0xff]), None);
        assert_eq!(
            decode(&group_name("friends", 7)),
            Some(Content::GroupName {
                name: "friends".into(),
                set_ms: 7
            })
        );
        let long = "x".repeat(dspring_store::MAX_GROUP_NAME_BYTES + 1);
        assert_eq!(decode(&group_name(&long, 7)), None);
        assert_eq!(decode(&group_name("friends", u64::MAX)), None);
    }
}
