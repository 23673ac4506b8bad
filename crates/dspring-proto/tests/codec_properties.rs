//! Property tests of the wire codec: what is encoded decodes to the same thing, and no byte
//! string makes a decoder panic.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use dspring_proto::codec::{Reader, Writer};
use dspring_proto::control::Control;
use dspring_proto::envelope::{Envelope, Position, Unverified};
use dspring_proto::membership::History;
use dspring_proto::{Device, Group, GroupId};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

/// Real envelopes of every kind, from a small group's life.
fn real_envelopes(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let devices: Vec<Device> = (0..3).map(|_| Device::generate(2, &mut rng)).collect();
    let id = GroupId([5; 32]);
    let bundle = |d: &Device| d.bundle(d.prekeys.one_time_ids().first().copied());
    let created = Group::create(&devices[0], id, &[bundle(&devices[1])], &mut rng).unwrap();
    let mut out: Vec<Vec<u8>> = created.outbox.iter().map(|o| o.bytes.clone()).collect();
    let joined = Group::join(&devices[1], id, out[0].clone(), &mut rng).unwrap();
    out.extend(joined.outbox.iter().map(|o| o.bytes.clone()));
    let a = created.group;
    let a = a
        .receive(&devices[0], out[1].clone(), &mut rng)
        .unwrap()
        .group;
    for staged in [
        a.send(b"hello").unwrap(),
        a.update(&mut rng).unwrap(),
        a.add(&devices[0], &bundle(&devices[2]), &mut rng).unwrap(),
        a.remove(devices[1].id(), &mut rng).unwrap(),
    ] {
        out.extend(staged.outbox.iter().map(|o| o.bytes.clone()));
    }
    out
}

#[test]
fn every_real_envelope_round_trips() {
    for bytes in real_envelopes(1) {
        let parsed = Unverified::<Envelope>::parse(bytes.clone()).unwrap();
        assert_eq!(parsed.bytes(), &bytes[..]);
        if let Position::Control { .. } = parsed.position() {
            let payload = parsed.unverified_payload();
            let mut r = Reader::new(payload);
            let control = Control::decode(&mut r).unwrap();
            r.finish().unwrap();
            let mut w = Writer::new();
            control.encode(&mut w);
            assert_eq!(
                w.as_bytes(),
                payload,
                "{} re-encodes differently",
                control.kind()
            );
            if let Control::Add {
                welcome: Some(welcome),
                ..
            } = &control
            {
                let mut w = Writer::new();
                welcome.core.history.encode(&mut w);
                let bytes = w.into_bytes();
                let mut r = Reader::new(&bytes);
                assert_eq!(History::decode(&mut r).unwrap(), welcome.core.history);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Unverified::<Envelope>::parse(bytes.clone());
        let _ = Control::decode(&mut Reader::new(&bytes));
        let _ = History::decode(&mut Reader::new(&bytes));
        let _ = Group::from_bytes(&bytes);
    }

    #[test]
    fn mutated_real_envelopes_never_panic(seed in 0u64..4, index in any::<prop::sample::Index>(), byte: u8, cut in any::<prop::sample::Index>()) {
        let envelopes = real_envelopes(seed);
        let original = index.get(&envelopes).clone();
        let mut mutated = original.clone();
        let position = cut.index(mutated.len());
        mutated[position] = byte;
        if let Ok(parsed) = Unverified::<Envelope>::parse(mutated.clone()) {
            let _ = Control::decode(&mut Reader::new(parsed.unverified_payload()));
        }
        let _ = Unverified::<Envelope>::parse(mutated[..position].to_vec());
    }
}

/// A member of a real group, and envelopes it has not seen yet.
fn receiver_and_envelopes(seed: u64) -> (Device, Group, Vec<Vec<u8>>) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let devices: Vec<Device> = (0..3).map(|_| Device::generate(2, &mut rng)).collect();
    let id = GroupId([5; 32]);
    let bundle = |d: &Device| d.bundle(d.prekeys.one_time_ids().first().copied());
    let created = Group::create(
        &devices[0],
        id,
        &[bundle(&devices[1]), bundle(&devices[2])],
        &mut rng,
    )
    .unwrap();
    let create = created.outbox[0].bytes.clone();
    let b = Group::join(&devices[1], id, create.clone(), &mut rng).unwrap();
    let c = Group::join(&devices[2], id, create, &mut rng).unwrap();
    let mut pending: Vec<Vec<u8>> = c.outbox.iter().map(|o| o.bytes.clone()).collect();
    let a = created.group;
    for staged in [
        a.send(b"hello").unwrap(),
        a.update(&mut rng).unwrap(),
        a.remove(devices[2].id(), &mut rng).unwrap(),
    ] {
        pending.extend(staged.outbox.iter().map(|o| o.bytes.clone()));
    }
    (devices[1].clone(), b.group, pending)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever arrives, a member answers with a result or an error, never a panic, and its
    /// buffer stays within its bound.
    #[test]
    fn receiving_mutated_envelopes_never_panics(
        seed in 0u64..3,
        picks in proptest::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()), 1..12),
    ) {
        let (device, mut group, envelopes) = receiver_and_envelopes(seed);
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        for (which, position, byte) in picks {
            let mut bytes = which.get(&envelopes).clone();
            let at = position.index(bytes.len());
            bytes[at] = byte;
            if let Ok(staged) = group.receive(&device, bytes, &mut rng) {
                group = staged.group;
            }
            prop_assert!(group.buffered() <= dspring_proto::MAX_BUFFERED_ENVELOPES);
        }
    }
}
