//! The causal delivery buffer: envelopes that arrived before what they depend on wait here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, Position, Unverified};
use crate::ids::ShortId;

/// Most envelopes one group buffers. Beyond it new arrivals are refused (and fetched again by
/// sync later) rather than letting a peer that sends far-future messages grow our memory.
pub const MAX_BUFFERED_ENVELOPES: usize = 4096;
/// Most bytes one group buffers, for the same reason.
pub const MAX_BUFFERED_BYTES: usize = 32 << 20;

/// Key of a buffered envelope: sender, then kind and place in the sender's stream.
type Slot = (ShortId, u8, u64, u64);

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeliveryBuffer {
    waiting: BTreeMap<Slot, Vec<u8>>,
    bytes: usize,
}

pub enum Insert {
    Stored,
    AlreadyThere,
    Full,
}

fn slot(envelope: &Unverified<Envelope>) -> Slot {
    match envelope.position() {
        Position::Control { seq, .. } => (envelope.sender(), 0, *seq, 0),
        Position::Application { epoch, index } => (envelope.sender(), 1, *epoch, *index),
    }
}

impl DeliveryBuffer {
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn insert(&mut self, envelope: Unverified<Envelope>) -> Insert {
        let key = slot(&envelope);
        if self.waiting.contains_key(&key) {
            // A second, different envelope for the same slot is a forgery or equivocation;
            // the first one stays and signature checks at delivery decide.
            return Insert::AlreadyThere;
        }
        let len = envelope.bytes().len();
        if self.waiting.len() >= MAX_BUFFERED_ENVELOPES || self.bytes + len > MAX_BUFFERED_BYTES {
            return Insert::Full;
        }
        self.bytes += len;
        self.waiting.insert(key, envelope.bytes().to_vec());
        Insert::Stored
    }

    /// Empties the buffer, returning everything in sender and stream order.
    pub fn take_all(&mut self) -> Vec<Unverified<Envelope>> {
        self.bytes = 0;
        std::mem::take(&mut self.waiting)
            .into_values()
            .filter_map(|bytes| Unverified::<Envelope>::parse(bytes).ok())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::seal_application;
    use crate::identity::SigningKey;
    use crate::ids::{GroupId, MemberId};
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn the_buffer_refuses_beyond_its_bound_and_keeps_one_envelope_per_slot() {
        let key = SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(1));
        let sender = MemberId(key.verifying_key().0);
        let envelope = |index| {
            let bytes =
                seal_application(&GroupId([1; 32]), &sender, &key, 9, index, |_| vec![0; 16]);
            Unverified::<Envelope>::parse(bytes).unwrap()
        };
        let mut buffer = DeliveryBuffer::default();
        for index in 0..MAX_BUFFERED_ENVELOPES as u64 {
            assert!(matches!(buffer.insert(envelope(index)), Insert::Stored));
        }
        assert!(matches!(buffer.insert(envelope(0)), Insert::AlreadyThere));
        assert!(matches!(buffer.insert(envelope(u64::MAX)), Insert::Full));
        assert_eq!(buffer.len(), MAX_BUFFERED_ENVELOPES);
        assert_eq!(buffer.take_all().len(), MAX_BUFFERED_ENVELOPES);
        assert_eq!(buffer.len(), 0);
    }
}
