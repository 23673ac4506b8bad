//! The concurrency cases of spec §7 as named tests, and the security properties of the group.
//! Each test drives real members through explicit delivery orders.

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};

use dspring_proto::{Device, Event, Group, GroupId, MemberId, ReceiveError, Staged};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

struct Member {
    device: Device,
    group: Option<Group>,
    messages: Vec<(MemberId, Vec<u8>)>,
    removed: bool,
    /// The state as a store keeps it: a base and one part per sender, written only where a
    /// step says it changed. Every member goes on from the state read back from these.
    stored: Parts,
}

#[derive(Default)]
struct Parts {
    base: Vec<u8>,
    chains: BTreeMap<MemberId, Vec<u8>>,
}

impl Parts {
    /// Writes what `staged` changed, then reads the state back; it must be the staged state.
    fn write(&mut self, staged: &Staged) -> Group {
        let (group, changes) = (&staged.group, &staged.changes);
        if changes.all {
            self.chains.clear();
        }
        if changes.all || changes.base {
            self.base = group.base_bytes().unwrap();
        }
        let senders: Vec<MemberId> = if changes.all {
            group.chain_senders()
        } else {
            changes.chains.iter().copied().collect()
        };
        for sender in senders {
            match group.chain_bytes(&sender) {
                Some(bytes) => self.chains.insert(sender, bytes.unwrap()),
                None => self.chains.remove(&sender),
            };
        }
        let restored = Group::from_parts(&self.base, self.chains.clone()).unwrap();
        assert_eq!(
            restored.to_bytes().unwrap(),
            group.to_bytes().unwrap(),
            "a change the step did not report: {changes:?}"
        );
        restored
    }
}

struct World {
    rng: ChaCha20Rng,
    members: Vec<Member>,
    group_id: GroupId,
}

impl World {
    /// `n` devices; device 0 creates a group with devices `1..initial`.
    fn new(n: usize, initial: usize) -> (Self, Vec<u8>) {
        let mut rng = ChaCha20Rng::seed_from_u64(n as u64 * 31 + initial as u64);
        let members: Vec<Member> = (0..n)
            .map(|_| Member {
                device: Device::generate(2, &mut rng),
                group: None,
                messages: Vec::new(),
                removed: false,
                stored: Parts::default(),
            })
            .collect();
        let mut world = World {
            rng,
            members,
            group_id: GroupId([9; 32]),
        };
        let bundles: Vec<_> = (1..initial).map(|i| world.bundle(i)).collect();
        let staged = Group::create(
            &world.members[0].device,
            world.group_id,
            &bundles,
            &mut world.rng,
        )
        .unwrap();
        let create = world.commit(0, staged);
        let create = create[0].clone();
        let mut acks = Vec::new();
        for i in 1..initial {
            let staged = Group::join(
                &world.members[i].device,
                world.group_id,
                create.clone(),
                &mut world.rng,
            )
            .unwrap();
            acks.push((i, world.commit(i, staged)));
        }
        for (i, out) in acks {
            world.flood(&out, i);
        }
        (world, create)
    }

    fn id(&self, i: usize) -> MemberId {
        self.members[i].device.id()
    }

    fn bundle(&self, i: usize) -> dspring_proto::identity::PrekeyBundle {
        let d = &self.members[i].device;
        d.bundle(d.prekeys.one_time_ids().into_iter().next())
    }

    fn group(&self, i: usize) -> &Group {
        self.members[i].group.as_ref().unwrap()
    }

    fn commit(&mut self, i: usize, staged: Staged) -> Vec<Vec<u8>> {
        let m = &mut self.members[i];
        m.device.consume_prekeys(&staged.consumed_prekeys);
        for e in &staged.events {
            match e {
                Event::Message {
                    sender, plaintext, ..
                } => m.messages.push((*sender, plaintext.clone())),
                Event::RemovedMe { .. } => m.removed = true,
                Event::Rejected { reason, .. } => panic!("member {i} rejected: {reason}"),
                _ => {}
            }
        }
        m.group = Some(m.stored.write(&staged)).filter(Group::is_active);
        staged.outbox.into_iter().map(|o| o.bytes).collect()
    }

    /// Delivers `bytes` to member `i` (if it is active); returns what it sends in reply.
    fn deliver(&mut self, i: usize, bytes: &[u8]) -> Vec<Vec<u8>> {
        let Some(group) = self.members[i].group.clone() else {
            return Vec::new();
        };
        let staged = group
            .receive(&self.members[i].device, bytes.to_vec(), &mut self.rng)
            .unwrap_or_else(|e| panic!("member {i}: {e}"));
        self.commit(i, staged)
    }

    /// Delivers to every active member but `from`, recursively flooding replies.
    fn flood(&mut self, envelopes: &[Vec<u8>], from: usize) {
        let mut queue: Vec<(usize, Vec<u8>)> =
            envelopes.iter().map(|e| (from, e.clone())).collect();
        while let Some((origin, bytes)) = queue.pop() {
            for i in 0..self.members.len() {
                if i != origin {
                    for reply in self.deliver(i, &bytes) {
                        queue.push((i, reply));
                    }
                }
            }
        }
    }

    fn update(&mut self, i: usize) -> Vec<Vec<u8>> {
        let staged = self.group(i).clone().update(&mut self.rng).unwrap();
        self.commit(i, staged)
    }

    fn send(&mut self, i: usize, text: &[u8]) -> Vec<Vec<u8>> {
        let staged = self.group(i).clone().send(text).unwrap();
        self.commit(i, staged)
    }

    fn add(&mut self, i: usize, new: usize) -> Vec<Vec<u8>> {
        let bundle = self.bundle(new);
        let device = self.members[i].device.clone();
        let staged = self
            .group(i)
            .clone()
            .add(&device, &bundle, &mut self.rng)
            .unwrap();
        self.commit(i, staged)
    }

    fn remove(&mut self, i: usize, target: usize) -> Vec<Vec<u8>> {
        let target = self.id(target);
        let staged = self.group(i).clone().remove(target, &mut self.rng).unwrap();
        self.commit(i, staged)
    }

    fn join(&mut self, i: usize, welcome: &[u8]) -> Vec<Vec<u8>> {
        let staged = Group::join(
            &self.members[i].device,
            self.group_id,
            welcome.to_vec(),
            &mut self.rng,
        )
        .unwrap();
        self.commit(i, staged)
    }

    fn active(&self) -> Vec<usize> {
        (0..self.members.len())
            .filter(|i| self.members[*i].group.is_some())
            .collect()
    }

    /// Everyone active agrees on `expected`, and each active member's message reaches every
    /// other active member and nobody else.
    fn assert_converged(&mut self, expected: &[usize]) {
        let expected_ids: BTreeSet<MemberId> = expected.iter().map(|i| self.id(*i)).collect();
        assert_eq!(self.active(), expected.to_vec(), "active members");
        for i in expected {
            assert_eq!(self.group(*i).members(), expected_ids, "view of member {i}");
        }
        for sender in expected.iter().copied() {
            let text = format!("hello from {sender}").into_bytes();
            let out = self.send(sender, &text);
            let before: Vec<usize> = self.members.iter().map(|m| m.messages.len()).collect();
            self.flood(&out, sender);
            for (i, m) in self.members.iter().enumerate() {
                let got = m.messages.len() - before[i];
                let should = usize::from(expected.contains(&i) && i != sender);
                assert_eq!(
                    got, should,
                    "member {i} got {got} copies of {sender}'s message"
                );
                if should == 1 {
                    assert_eq!(m.messages.last().unwrap(), &(self.id(sender), text.clone()));
                }
            }
        }
    }
}

#[test]
fn create_then_chat() {
    let (mut w, _) = World::new(3, 3);
    w.assert_converged(&[0, 1, 2]);
}

#[test]
fn sequential_add_remove_update() {
    let (mut w, _) = World::new(4, 2);
    let out = w.add(0, 2);
    let replies = w.join(2, &out[0]);
    w.flood(&out, 0);
    w.flood(&replies, 2);
    w.assert_converged(&[0, 1, 2]);
    let out = w.update(2);
    w.flood(&out, 2);
    w.assert_converged(&[0, 1, 2]);
    let out = w.remove(1, 0);
    w.flood(&out, 1);
    assert!(w.members[0].removed);
    w.assert_converged(&[1, 2]);
}

/// Spec §7.1: A updates while C adds D; B sees the two in either order.
#[test]
fn update_concurrent_with_add() {
    for b_sees_add_first in [false, true] {
        let (mut w, _) = World::new(4, 3);
        let update = w.update(0);
        let add = w.add(2, 3);
        let d_acks = w.join(3, &add[0]);
        let order: Vec<(usize, &Vec<u8>)> = if b_sees_add_first {
            vec![(2, &add[0]), (0, &update[0])]
        } else {
            vec![(0, &update[0]), (2, &add[0])]
        };
        let mut replies = vec![(3, d_acks)];
        for (from, env) in order {
            for i in 0..4 {
                if i != from {
                    let out = w.deliver(i, env);
                    if from == 0 && i == 1 {
                        // B's ack of A's update forwards its member secret to D exactly when B
                        // knew D (had processed the add) and A did not.
                        let forwards = forwards_in(&out[0]);
                        assert_eq!(forwards, usize::from(b_sees_add_first));
                    }
                    replies.push((i, out));
                }
            }
        }
        for (from, out) in replies {
            w.flood(&out, from);
        }
        w.assert_converged(&[0, 1, 2, 3]);
    }
}

/// Whether an AddAck envelope carries a ratchet (None if it is not an AddAck).
fn add_ack_carries_ratchet(envelope: &[u8]) -> Option<bool> {
    use dspring_proto::codec::Reader;
    use dspring_proto::control::Control;
    use dspring_proto::envelope::{Envelope, Unverified};
    let parsed = Unverified::<Envelope>::parse(envelope.to_vec()).unwrap();
    match Control::decode(&mut Reader::new(parsed.unverified_payload())).unwrap() {
        Control::AddAck { ratchet } => Some(ratchet.is_some()),
        _ => None,
    }
}

/// How many forwarded member secrets an Ack envelope carries.
fn forwards_in(envelope: &[u8]) -> usize {
    use dspring_proto::codec::Reader;
    use dspring_proto::control::Control;
    use dspring_proto::envelope::{Envelope, Unverified};
    let parsed = Unverified::<Envelope>::parse(envelope.to_vec()).unwrap();
    match Control::decode(&mut Reader::new(parsed.unverified_payload())).unwrap() {
        Control::Ack { forwards } => forwards.len(),
        other => panic!("expected an ack, got {}", other.kind()),
    }
}

/// Spec §7.2: A adds C while B adds D, from {A, B}.
#[test]
fn add_concurrent_with_add() {
    let (mut w, _) = World::new(4, 2);
    let add_c = w.add(0, 2);
    let add_d = w.add(1, 3);
    let c_out = w.join(2, &add_c[0]);
    let d_out = w.join(3, &add_d[0]);
    w.flood(&add_c, 0);
    w.flood(&add_d, 1);
    w.flood(&c_out, 2);
    w.flood(&d_out, 3);
    w.assert_converged(&[0, 1, 2, 3]);
}

/// Spec §7.3: concurrent mutual removes remove both.
#[test]
fn remove_concurrent_with_remove() {
    let (mut w, _) = World::new(4, 4);
    let r1 = w.remove(0, 1);
    let r2 = w.remove(1, 0);
    // C sees A's remove first, D sees B's first.
    let c1 = w.deliver(2, &r1[0]);
    let c2 = w.deliver(2, &r2[0]);
    let d2 = w.deliver(3, &r2[0]);
    let d1 = w.deliver(3, &r1[0]);
    w.deliver(0, &r2[0]);
    w.deliver(1, &r1[0]);
    for (from, out) in [(2, c1), (2, c2), (3, d2), (3, d1)] {
        w.flood(&out, from);
    }
    assert!(w.members[0].removed && w.members[1].removed);
    w.assert_converged(&[2, 3]);
}

/// Spec §7.3: remove concurrent with an update.
#[test]
fn remove_concurrent_with_update() {
    let (mut w, _) = World::new(4, 4);
    let remove = w.remove(0, 2);
    let update = w.update(1);
    let mut replies = Vec::new();
    for i in [2, 3, 0] {
        replies.push((i, w.deliver(i, &update[0])));
    }
    for i in [1, 3, 2] {
        replies.push((i, w.deliver(i, &remove[0])));
    }
    for (from, out) in replies {
        w.flood(&out, from);
    }
    assert!(w.members[2].removed);
    w.assert_converged(&[0, 1, 3]);
}

/// A adds D while B removes A: the add is cancelled, D is out and learns nothing new.
#[test]
fn add_concurrent_with_removal_of_adder() {
    let (mut w, _) = World::new(4, 3);
    let add = w.add(0, 3);
    let remove = w.remove(1, 0);
    let d_out = w.join(3, &add[0]);
    let mut replies = vec![(3, d_out)];
    replies.push((2, w.deliver(2, &remove[0])));
    let c_add_ack = w.deliver(2, &add[0]);
    // Spec §12.9: C already knows the add is cancelled, so its add-ack carries no ratchet.
    assert_eq!(add_ack_carries_ratchet(&c_add_ack[0]), Some(false));
    replies.push((2, c_add_ack));
    replies.push((1, w.deliver(1, &add[0])));
    replies.push((0, w.deliver(0, &remove[0])));
    replies.push((3, w.deliver(3, &remove[0])));
    for (from, out) in replies {
        w.flood(&out, from);
    }
    assert!(w.members[0].removed);
    assert!(
        w.members[3].removed,
        "the cancelled member must learn it is out"
    );
    w.assert_converged(&[1, 2]);
}

#[test]
fn replayed_envelopes_are_dropped() {
    let (mut w, _) = World::new(3, 3);
    let out = w.send(0, b"once");
    w.deliver(1, &out[0]);
    assert_eq!(w.members[1].messages.len(), 1);
    w.deliver(1, &out[0]);
    assert_eq!(
        w.members[1].messages.len(),
        1,
        "a replay must not be shown twice"
    );
    let update = w.update(0);
    w.flood(&update, 0);
    let acks_again = w.deliver(1, &update[0]);
    assert!(
        acks_again.is_empty(),
        "a replayed update must not be acked again"
    );
}

#[test]
fn tampered_and_forged_envelopes_are_rejected() {
    let (mut w, _) = World::new(4, 3);
    let out = w.send(0, b"original");
    let group = w.group(1).clone();
    let device = w.members[1].device.clone();
    for i in 0..out[0].len() {
        let mut bad = out[0].clone();
        bad[i] ^= 0x01;
        match group.receive(&device, bad, &mut w.rng) {
            Err(_) => {}
            Ok(staged) => assert!(
                staged
                    .events
                    .iter()
                    .all(|e| !matches!(e, Event::Message { .. })),
                "tampered byte {i} still decrypted"
            ),
        }
    }
    // A member (C) forging A's message: C's signature under A's short id.
    let forged = {
        let c_group = w.group(2).clone();
        let staged = c_group.send(b"forged").unwrap();
        let mut bytes = staged.outbox[0].bytes.clone();
        bytes[1..9].copy_from_slice(&w.id(0).short().0);
        bytes
    };
    assert!(matches!(
        group.receive(&device, forged, &mut w.rng),
        Err(ReceiveError::BadSignature(_)) | Err(ReceiveError::Undecryptable(_))
    ));
}

#[test]
fn non_member_envelopes_never_decrypt_and_stay_bounded() {
    let (mut w, _) = World::new(4, 3);
    // Device 3 is not a member: it makes its own group with the same id and sends into it.
    let outsider = w.members[3].device.clone();
    let bundle = w.bundle(1);
    let fake = Group::create(&outsider, w.group_id, &[bundle], &mut w.rng).unwrap();
    let message = fake.group.send(b"let me in").unwrap();
    let group = w.group(1).clone();
    let staged = group
        .receive(
            &w.members[1].device,
            message.outbox[0].bytes.clone(),
            &mut w.rng,
        )
        .unwrap();
    assert!(staged.events.is_empty());
    assert_eq!(
        staged.group.buffered(),
        1,
        "an unknown sender waits in the bounded buffer"
    );
}

/// Forward secrecy: a snapshot taken after a message was decrypted cannot decrypt it again.
#[test]
fn forward_secrecy_of_application_messages() {
    let (mut w, _) = World::new(3, 3);
    let out = w.send(0, b"secret");
    w.deliver(1, &out[0]);
    let snapshot = Group::from_bytes(&w.group(1).to_bytes().unwrap()).unwrap();
    let result = snapshot.receive(&w.members[1].device, out[0].clone(), &mut w.rng);
    let decrypted =
        result.is_ok_and(|s| s.events.iter().any(|e| matches!(e, Event::Message { .. })));
    assert!(!decrypted);
}

/// Post-compromise security: a snapshot of B taken before B's update cannot read what is sent
/// after the update, even when it sees every envelope.
#[test]
fn post_compromise_security_after_update() {
    let (mut w, _) = World::new(3, 3);
    let stolen = w.group(1).clone();
    let update = w.update(1);
    let mut log = update.clone();
    let mut queue = vec![(1usize, update[0].clone())];
    while let Some((from, bytes)) = queue.pop() {
        for i in 0..3 {
            if i != from {
                for reply in w.deliver(i, &bytes) {
                    log.push(reply.clone());
                    queue.push((i, reply));
                }
            }
        }
    }
    let after = w.send(0, b"after the update");
    w.flood(&after, 0);
    assert_eq!(w.members[1].messages.last().unwrap().1, b"after the update");
    // The attacker replays everything into the stolen state.
    let mut attacker = stolen;
    let mut read = Vec::new();
    for bytes in log.iter().chain(after.iter()) {
        if let Ok(staged) = attacker.receive(&w.members[1].device, bytes.clone(), &mut w.rng) {
            for e in &staged.events {
                if let Event::Message { plaintext, .. } = e {
                    read.push(plaintext.clone());
                }
            }
            attacker = staged.group;
        }
    }
    assert!(!read.contains(&b"after the update".to_vec()));
}

#[test]
fn state_round_trips_through_bytes() {
    let (mut w, _) = World::new(3, 3);
    let bytes = w.group(1).to_bytes().unwrap();
    let restored = Group::from_bytes(&bytes).unwrap();
    assert_eq!(restored.members(), w.group(1).members());
    w.members[1].group = Some(restored);
    w.assert_converged(&[0, 1, 2]);
    let mut wrong_version = bytes.clone();
    wrong_version[1] ^= 0xff;
    assert!(Group::from_bytes(&wrong_version).is_err());
    assert!(Group::from_bytes(&bytes[..bytes.len() / 2]).is_err());
}

/// A message changes one sender's chains and nothing else: all a store writes for it.
#[test]
fn a_message_changes_only_its_senders_chains() {
    let (mut w, _) = World::new(3, 3);
    let staged = w.group(0).send(b"hello").unwrap();
    assert!(!staged.changes.all && !staged.changes.base);
    assert_eq!(staged.changes.chains, BTreeSet::from([w.id(0)]));
    let out = w.commit(0, staged);
    let group = w.group(1).clone();
    let staged = group
        .receive(&w.members[1].device, out[0].clone(), &mut w.rng)
        .unwrap();
    assert!(!staged.changes.all && !staged.changes.base);
    assert_eq!(staged.changes.chains, BTreeSet::from([w.id(0)]));
    w.commit(1, staged);
    // A replay touches at most its sender's chains.
    let group = w.group(1).clone();
    let staged = group
        .receive(&w.members[1].device, out[0].clone(), &mut w.rng)
        .unwrap();
    assert!(!staged.changes.all && !staged.changes.base);
    // A key update changes the base.
    let group = w.group(2).clone();
    let staged = group.update(&mut w.rng).unwrap();
    assert!(staged.changes.base);
}

/// Spec §12.7: once a member's removal is processed, its messages are no longer read, even
/// those it sends from a state that has not seen the removal.
#[test]
fn messages_of_a_removed_member_are_not_read() {
    let (mut w, _) = World::new(3, 3);
    let stale = w.group(2).clone();
    let remove = w.remove(0, 2);
    w.flood(&remove, 0);
    assert!(w.members[2].removed);
    let late = stale.send(b"still here?").unwrap();
    for i in [0, 1] {
        let before = w.members[i].messages.len();
        w.deliver(i, &late.outbox[0].bytes);
        assert_eq!(
            w.members[i].messages.len(),
            before,
            "member {i} read a removed member"
        );
    }
}
