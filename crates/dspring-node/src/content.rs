//! What a group's application messages carry: a person's message, or group metadata that
//! every member sees (today: a mailbox that serves the group). One leading tag byte; the rest
//! is the body.

use dspring_store::StoredEvent;

use crate::card::MailboxRef;

const TEXT: u8 = 0;
const MAILBOX: u8 = 1;

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Content {
    Text(Vec<u8>),
    Mailbox(MailboxRef),
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
                Content::Mailbox(_) => return None,
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
    }
}
