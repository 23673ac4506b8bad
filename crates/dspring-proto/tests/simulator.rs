//! Deterministic many-member simulator: random schedules of create, add, remove, update and
//! send with concurrency, delivered in random orders with duplicates and long offline
//! stretches. After quiescence it checks agreement and exactly-right decryption.
//!
//! `DSPRING_SIM_SCHEDULES` sets the number of schedules (default 1000), `DSPRING_SIM_SEED`
//! the first seed, `DSPRING_SIM_MAX_MEMBERS` the largest group (default 16).

// Test code: a failed expectation is a test failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::{BTreeMap, BTreeSet};

use dspring_proto::envelope::{Envelope, Position, Unverified};
use dspring_proto::{Device, Event, Group, GroupId, MemberId, Outgoing, Staged};
use rand_chacha::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};

/// A uniform-enough index below `n` (test schedules only need determinism, not exactness).
fn below(rng: &mut ChaCha20Rng, n: usize) -> usize {
    (rng.next_u64() % n as u64) as usize
}

struct Peer {
    device: Device,
    group: Option<Group>,
    /// Envelopes not yet delivered (with a flag: is this my welcome?).
    inbox: Vec<(Vec<u8>, bool)>,
    online: bool,
    ever_joined: bool,
    removed: bool,
    /// Decrypted message ids, with counts.
    decrypted: BTreeMap<u64, u32>,
    /// Envelopes the core reported delivered (its log): each at most once.
    delivered: std::collections::HashSet<Vec<u8>>,
}

struct Sent {
    sender: MemberId,
    view: BTreeSet<MemberId>,
}

struct Sim {
    rng: ChaCha20Rng,
    peers: Vec<Peer>,
    ids: Vec<MemberId>,
    group_id: GroupId,
    sent: BTreeMap<u64, Sent>,
    next_message: u64,
    ever_added: BTreeSet<usize>,
    /// Devices added more than once, concurrently.
    added_twice: BTreeSet<usize>,
    /// One-time prekeys already handed out, as a directory hands each out once.
    handed_out: BTreeSet<(usize, u32)>,
    log: Vec<String>,
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Sim {
    fn new(seed: u64, devices: usize) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let peers: Vec<Peer> = (0..devices)
            .map(|_| Peer {
                device: Device::generate(4, &mut rng),
                group: None,
                inbox: Vec::new(),
                online: true,
                ever_joined: false,
                removed: false,
                decrypted: BTreeMap::new(),
                delivered: Default::default(),
            })
            .collect();
        let ids = peers.iter().map(|p| p.device.id()).collect();
        let mut group_id = [0u8; 32];
        rng.fill_bytes(&mut group_id);
        Self {
            rng,
            peers,
            ids,
            group_id: GroupId(group_id),
            sent: BTreeMap::new(),
            next_message: 0,
            ever_added: BTreeSet::new(),
            handed_out: BTreeSet::new(),
            added_twice: BTreeSet::new(),
            log: Vec::new(),
        }
    }

    fn index_of(&self, id: &MemberId) -> usize {
        self.ids.iter().position(|m| m == id).unwrap()
    }

    fn broadcast(&mut self, from: usize, outbox: Vec<Outgoing>) {
        for out in outbox {
            let welcome_for = out.welcome_for.map(|m| self.index_of(&m));
            for (i, peer) in self.peers.iter_mut().enumerate() {
                if i == from {
                    continue;
                }
                peer.inbox.push((out.bytes.clone(), welcome_for == Some(i)));
                // Duplicates happen on real networks.
                if below(&mut self.rng, 20) == 0 {
                    peer.inbox.push((out.bytes.clone(), welcome_for == Some(i)));
                }
            }
        }
    }

    fn commit(&mut self, who: usize, staged: Staged) {
        let peer = &mut self.peers[who];
        peer.device.consume_prekeys(&staged.consumed_prekeys);
        // Each envelope is delivered at most once, except an application message this member
        // cannot read: with no key it cannot tell a replay (the store dedupes those by hash).
        let unreadable: BTreeSet<(u64, u64)> = staged
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Unreadable { epoch, index, .. } => Some((*epoch, *index)),
                _ => None,
            })
            .collect();
        for envelope in &staged.delivered {
            let position = Unverified::<Envelope>::parse(envelope.clone())
                .unwrap()
                .position()
                .clone();
            if let Position::Application { epoch, index } = position
                && unreadable.contains(&(epoch, index))
            {
                continue;
            }
            assert!(
                peer.delivered.insert(envelope.clone()),
                "member {who} delivered an envelope twice: {position:?}"
            );
        }
        for event in &staged.events {
            match event {
                Event::Message {
                    sender, plaintext, ..
                } => {
                    let id = u64::from_le_bytes(plaintext[..8].try_into().unwrap());
                    let sent = self.sent.get(&id).expect("decrypted a message never sent");
                    assert_eq!(sent.sender, *sender, "wrong sender for message {id}");
                    *peer.decrypted.entry(id).or_default() += 1;
                }
                Event::RemovedMe { .. } => peer.removed = true,
                Event::Rejected { sender, reason } => {
                    panic!(
                        "member {who} rejected an honest envelope from {sender:?}: {reason}\n{}",
                        self.log.join("\n")
                    )
                }
                _ => {}
            }
        }
        peer.group = Some(staged.group).filter(|g| g.is_active());
        if peer.group.is_some() {
            peer.ever_joined = true;
        }
        self.broadcast(who, staged.outbox);
    }

    fn active(&self) -> Vec<usize> {
        (0..self.peers.len())
            .filter(|i| self.peers[*i].online && self.peers[*i].group.is_some())
            .collect()
    }

    /// Delivers one random pending envelope to `who`. Returns false if none could be.
    fn deliver_one(&mut self, who: usize) -> bool {
        let peer = &self.peers[who];
        if !peer.online || peer.inbox.is_empty() {
            return false;
        }
        if peer.removed {
            self.peers[who].inbox.clear();
            return false;
        }
        let candidates: Vec<usize> = if peer.group.is_some() {
            (0..peer.inbox.len()).collect()
        } else {
            (0..peer.inbox.len()).filter(|i| peer.inbox[*i].1).collect()
        };
        if candidates.is_empty() {
            return false;
        }
        let pick = candidates[below(&mut self.rng, candidates.len())];
        let (bytes, is_welcome) = self.peers[who].inbox.swap_remove(pick);
        let staged = match &self.peers[who].group {
            Some(group) => match group.receive(&self.peers[who].device, bytes, &mut self.rng) {
                Ok(staged) => staged,
                Err(e) => panic!(
                    "member {who} failed on an honest envelope: {e}\n{}",
                    self.log.join("\n")
                ),
            },
            None => {
                assert!(is_welcome);
                if self.peers[who].ever_joined {
                    return true; // a duplicate welcome after removal
                }
                match Group::join(&self.peers[who].device, self.group_id, bytes, &mut self.rng) {
                    Ok(staged) => staged,
                    Err(e) => panic!("member {who} failed to join: {e}\n{}", self.log.join("\n")),
                }
            }
        };
        self.commit(who, staged);
        true
    }

    fn act(&mut self) {
        let active = self.active();
        if active.is_empty() {
            return;
        }
        let who = active[below(&mut self.rng, active.len())];
        let group = self.peers[who].group.clone().unwrap();
        let members = group.members();
        let roll = below(&mut self.rng, 100);
        let staged = if roll < 40 {
            let id = self.next_message;
            self.next_message += 1;
            let mut plaintext = id.to_le_bytes().to_vec();
            plaintext.extend_from_slice(&[7u8; 24]);
            self.sent.insert(
                id,
                Sent {
                    sender: self.ids[who],
                    view: members.clone(),
                },
            );
            self.log.push(format!(
                "{who} sends message {id} to {:?}",
                self.names(&members)
            ));
            group.send(&plaintext).unwrap()
        } else if roll < 60 {
            self.log.push(format!("{who} updates"));
            group.update(&mut self.rng).unwrap()
        } else if roll < 80 {
            // Mostly devices never added; sometimes one that another member added
            // concurrently and this one has not heard of (a concurrent double add). Removed
            // devices are never added again: re-adds are not supported.
            let double_add = below(&mut self.rng, 5) == 0;
            let candidates: Vec<usize> = (0..self.peers.len())
                .filter(|i| {
                    if double_add {
                        self.ever_added.contains(i)
                            && !self.peers[*i].removed
                            && !self.peers[*i].ever_joined
                            && !members.contains(&self.ids[*i])
                    } else {
                        !self.ever_added.contains(i)
                    }
                })
                .collect();
            if candidates.is_empty() {
                return;
            }
            let new = candidates[below(&mut self.rng, candidates.len())];
            self.ever_added.insert(new);
            let bundle = self.bundle(new);
            match group.add(&self.peers[who].device, &bundle, &mut self.rng) {
                Ok(staged) => {
                    self.log.push(format!("{who} adds {new}"));
                    if double_add {
                        self.added_twice.insert(new);
                    }
                    staged
                }
                // This member already knows the device (its add reached here): not concurrent.
                Err(_) if double_add => return,
                Err(e) => panic!("add failed: {e}"),
            }
        } else {
            let targets: Vec<MemberId> = members
                .iter()
                .filter(|m| **m != self.ids[who])
                .copied()
                .collect();
            if targets.is_empty() {
                return;
            }
            let target = targets[below(&mut self.rng, targets.len())];
            self.log
                .push(format!("{who} removes {}", self.index_of(&target)));
            group.remove(target, &mut self.rng).unwrap()
        };
        self.commit(who, staged);
    }

    /// A prekey bundle of device `i` with a one-time prekey not handed out before (none once
    /// they are used up: first contact then uses the signed prekey alone).
    fn bundle(&mut self, i: usize) -> dspring_proto::identity::PrekeyBundle {
        let one_time = self.peers[i]
            .device
            .prekeys
            .one_time_ids()
            .into_iter()
            .find(|id| !self.handed_out.contains(&(i, *id)));
        if let Some(id) = one_time {
            self.handed_out.insert((i, id));
        }
        self.peers[i].device.bundle(one_time)
    }

    fn names(&self, members: &BTreeSet<MemberId>) -> Vec<usize> {
        members.iter().map(|m| self.index_of(m)).collect()
    }

    fn run(&mut self, initial: usize, steps: usize) {
        // Create with `initial` members (device 0 creates).
        let bundles: Vec<_> = (1..initial).map(|i| self.bundle(i)).collect();
        for i in 0..initial {
            self.ever_added.insert(i);
        }
        let staged = Group::create(
            &self.peers[0].device,
            self.group_id,
            &bundles,
            &mut self.rng,
        )
        .unwrap();
        self.log.push(format!("0 creates with {initial} members"));
        let create = staged.outbox[0].bytes.clone();
        self.commit(0, staged);
        for i in 1..initial {
            // The create reaches initial members as their welcome.
            self.peers[i].inbox.retain(|(b, _)| *b != create);
            self.peers[i].inbox.push((create.clone(), true));
        }
        for _ in 0..steps {
            match below(&mut self.rng, 10) {
                0..=2 => self.act(),
                3 => {
                    let i = below(&mut self.rng, self.peers.len());
                    // Offline for a long stretch, sometimes.
                    self.peers[i].online = !self.peers[i].online;
                    self.log
                        .push(format!("{i} online={}", self.peers[i].online));
                }
                _ => {
                    let n = 1 + below(&mut self.rng, 7);
                    for _ in 0..n {
                        let who = below(&mut self.rng, self.peers.len());
                        self.deliver_one(who);
                    }
                }
            }
        }
        // Quiescence: everyone online, deliver everything.
        for peer in &mut self.peers {
            peer.online = true;
        }
        loop {
            let mut progressed = false;
            for who in 0..self.peers.len() {
                while self.deliver_one(who) {
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn check(&self) {
        let context = || self.log.join("\n");
        let active: Vec<usize> = (0..self.peers.len())
            .filter(|i| self.peers[*i].group.is_some())
            .collect();
        let views: BTreeSet<BTreeSet<MemberId>> = active
            .iter()
            .map(|i| self.peers[*i].group.as_ref().unwrap().members())
            .collect();
        assert!(
            views.len() <= 1,
            "members disagree on membership: {views:?}\n{}",
            context()
        );
        let final_members = views.into_iter().next().unwrap_or_default();
        for i in &active {
            assert!(
                final_members.contains(&self.ids[*i]),
                "active member {i} not in the group\n{}",
                context()
            );
            assert_eq!(
                self.peers[*i].group.as_ref().unwrap().buffered(),
                0,
                "member {i} still buffers\n{}",
                context()
            );
        }
        for (id, sent) in &self.sent {
            // A member added twice concurrently, one of whose adders was removed, can leave a
            // member's view and come back; messages it sends meanwhile may be lost there (a
            // known gap, see docs/PROTOCOL.md). They are still checked never to reach anyone
            // outside the sender's view, nor anyone twice.
            let added_twice = self.added_twice.contains(&self.index_of(&sent.sender));
            let sender_stays = final_members.contains(&sent.sender) && !added_twice;
            for (i, peer) in self.peers.iter().enumerate() {
                if self.ids[i] == sent.sender {
                    continue;
                }
                let count = peer.decrypted.get(id).copied().unwrap_or(0);
                assert!(
                    count <= 1,
                    "member {i} decrypted message {id} {count} times\n{}",
                    context()
                );
                let in_view = sent.view.contains(&self.ids[i]);
                if !in_view {
                    assert_eq!(
                        count,
                        0,
                        "member {i} outside the sender's view decrypted message {id}\n{}",
                        context()
                    );
                } else if sender_stays && peer.group.is_some() {
                    assert_eq!(
                        count,
                        1,
                        "member {i} never decrypted message {id}\n{}",
                        context()
                    );
                }
            }
        }
    }
}

fn run_schedules(count: u64, first_seed: u64, max_members: usize) {
    for seed in first_seed..first_seed + count {
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
        let devices = 2 + below(&mut rng, max_members - 1);
        let initial = (1 + below(&mut rng, devices.min(8))).max(2).min(devices);
        let steps = 10 + below(&mut rng, 50);
        let mut sim = Sim::new(seed, devices);
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sim.run(initial, steps);
            sim.check();
        }));
        if let Err(e) = result {
            eprintln!(
                "schedule with seed {seed} failed ({devices} devices, {initial} initial, {steps} steps)"
            );
            std::panic::resume_unwind(e);
        }
    }
}

#[test]
fn random_schedules_converge_and_decrypt_exactly_right() {
    let count = env_u64("DSPRING_SIM_SCHEDULES", 1000);
    let seed = env_u64("DSPRING_SIM_SEED", 0);
    let max = env_u64("DSPRING_SIM_MAX_MEMBERS", 16) as usize;
    run_schedules(count, seed, max);
}

/// Seeds that once failed, kept as regression tests whatever the default range becomes.
/// 3: an application message signed just before a key rotation and delivered after it.
/// 96: a member added concurrently with a removal kept an epoch the removed member knew.
/// 200: a member added twice concurrently; others recorded it as having seen, at join, what
///      only the welcome it did not join through held.
/// 5031: the same double add where one adder was removed concurrently: members that had deleted
///      the removed adder's ratchet could not start the new member's ratchet.
/// 11249: a double add where a member outside the second adder's view could not follow the
///      new member's ratchet step for the second welcome.
/// 21473: a double-added member left a view (its adder removed) and came back.
/// 42238: the same, and a message refused while it was out kept its later control messages
///      waiting forever (a refused message now uses up its key).
#[test]
fn regression_seeds() {
    for seed in [3, 96, 200, 5031, 11249, 21473, 42238] {
        run_schedules(1, seed, 16);
    }
}
