//! Contact cards: what one person gives another to be reachable and addable to groups.

use dspring_proto::MemberId;
use dspring_proto::identity::PrekeyBundle;
use serde::{Deserialize, Serialize};

/// Prefix of a card's text form.
const CARD_PREFIX: &str = "dspring-card1:";
/// Longest card text accepted: a bundle and a handful of addresses.
pub const MAX_CARD_TEXT: usize = 8 << 10;
/// Most addresses on a card.
pub const MAX_CARD_ADDRESSES: usize = 16;
/// Most mailboxes on a card: one or two is the norm; each costs a welcome deposit.
pub const MAX_CARD_MAILBOXES: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactCard {
    pub member: MemberId,
    pub bundle: PrekeyBundle,
    pub addresses: Vec<String>,
    /// Mailboxes that keep this member's welcomes and group traffic while it is away.
    pub mailboxes: Vec<MailboxRef>,
}

/// A mailbox node: who it is and where it listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxRef {
    pub member: MemberId,
    pub addresses: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CardError {
    #[error("not a dspring contact card")]
    NotACard,
    #[error("the card is too long")]
    TooLong,
    #[error("the card is damaged")]
    Damaged,
    #[error("the card's prekey signature does not verify")]
    BadSignature,
}

impl ContactCard {
    /// The card as one line of text.
    pub fn to_text(&self) -> String {
        let bytes = postcard::to_allocvec(self).unwrap_or_default();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        format!("{CARD_PREFIX}{hex}")
    }

    /// Reads and verifies a card.
    pub fn from_text(text: &str) -> Result<Self, CardError> {
        let text = text.trim();
        if text.len() > MAX_CARD_TEXT {
            return Err(CardError::TooLong);
        }
        let hex = text.strip_prefix(CARD_PREFIX).ok_or(CardError::NotACard)?;
        if hex.len() % 2 != 0 {
            return Err(CardError::Damaged);
        }
        let bytes = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                    .ok_or(CardError::Damaged)
            })
            .collect::<Result<Vec<u8>, _>>()?;
        let card: ContactCard = postcard::from_bytes(&bytes).map_err(|_| CardError::Damaged)?;
        if card.addresses.len() > MAX_CARD_ADDRESSES
            || card.mailboxes.len() > MAX_CARD_MAILBOXES
            || card
                .mailboxes
                .iter()
                .any(|m| m.addresses.len() > MAX_CARD_ADDRESSES)
            || card.bundle.identity != card.member
        {
            return Err(CardError::Damaged);
        }
        card.bundle.verify().map_err(|_| CardError::BadSignature)?;
        Ok(card)
    }
}
