//! The groups this node is in: what every concern asks of each (is it active, who are its
//! members) for all of them, and the full protocol state only for the groups in use.
//!
//! A full state costs about 16 KB of heap even for a two-member group (its maps allocate
//! whole B-tree nodes), ten times its stored size. A node in many groups, most of them idle,
//! would hold all of that for nothing: the store has every committed state, so a state is
//! dropped here when its group goes idle, or when more than [`MAX_LOADED_GROUPS`] are held,
//! and read back from the store when next needed. What stays per group is its membership.

use std::collections::HashMap;

use dspring_proto::{Group, GroupId, MemberId};
use dspring_store::{Store, StoreError};

/// Full states held at once: beyond it the least recently used is dropped. A busy group's
/// state is used at every envelope; reading it back costs one indexed read and decrypt
/// (well under a millisecond for a small group), so the bound only has to keep the states
/// of the groups busy at the same time: 512 small groups are about 8 MiB.
pub(super) const MAX_LOADED_GROUPS: usize = 512;

/// What is kept of every group: whether this node is still a member, the members, and
/// whether envelopes wait in its delivery buffer for earlier ones.
struct Summary {
    active: bool,
    waiting: bool,
    /// Sorted; empty once this node is no longer a member.
    members: Box<[MemberId]>,
}

impl Summary {
    fn of(group: &Group) -> Self {
        Self {
            active: group.is_active(),
            waiting: group.buffered() > 0,
            // `members()` is a sorted set.
            members: group.members().into_iter().collect(),
        }
    }
}

/// See the module documentation.
pub(super) struct GroupStates {
    summaries: HashMap<GroupId, Summary>,
    /// Full states, each with when it was last used (a counter, for the eviction).
    loaded: HashMap<GroupId, (Group, u64)>,
    uses: u64,
    /// At most this many full states ([`MAX_LOADED_GROUPS`] but in tests).
    limit: usize,
}

impl Default for GroupStates {
    fn default() -> Self {
        Self::with_limit(MAX_LOADED_GROUPS)
    }
}

impl GroupStates {
    fn with_limit(limit: usize) -> Self {
        Self {
            summaries: HashMap::new(),
            loaded: HashMap::new(),
            uses: 0,
            limit,
        }
    }

    /// Takes the state of a group, new or just committed.
    pub(super) fn insert(&mut self, group: Group) {
        let id = group.id();
        let summary = Summary::of(&group);
        self.summaries.insert(id, summary);
        self.uses = self.uses.wrapping_add(1);
        self.loaded.insert(id, (group, self.uses));
        self.keep_bound();
    }

    /// Takes the state of a group read at start; held as a summary only (the state is read
    /// again when the group is first used).
    pub(super) fn know(&mut self, group: &Group) {
        self.summaries.insert(group.id(), Summary::of(group));
    }

    /// Drops the full state of `group` (it went idle); the store has it.
    pub(super) fn unload(&mut self, group: &GroupId) {
        self.loaded.remove(group);
    }

    /// The full state of `group`, read from the store if it is not held; `None` for a group
    /// this node is not in.
    pub(super) fn state(
        &mut self,
        store: &Store,
        group: &GroupId,
    ) -> Result<Option<&Group>, StoreError> {
        if !self.summaries.contains_key(group) {
            return Ok(None);
        }
        self.uses = self.uses.wrapping_add(1);
        let uses = self.uses;
        if let Some((_, used)) = self.loaded.get_mut(group) {
            *used = uses;
        } else {
            let Some(state) = store.group(group)? else {
                return Ok(None);
            };
            self.loaded.insert(*group, (state, uses));
            self.keep_bound();
        }
        Ok(self.loaded.get(group).map(|(state, _)| state))
    }

    /// Drops least recently used states while more than the bound are held.
    fn keep_bound(&mut self) {
        while self.loaded.len() > self.limit {
            let Some(oldest) = self
                .loaded
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id)
            else {
                return;
            };
            self.loaded.remove(&oldest);
        }
    }

    /// Whether this node is or was in `group` (and has its state).
    pub(super) fn contains(&self, group: &GroupId) -> bool {
        self.summaries.contains_key(group)
    }

    /// Whether this node is a member of `group` now.
    pub(super) fn is_active(&self, group: &GroupId) -> bool {
        self.summaries.get(group).is_some_and(|s| s.active)
    }

    /// Whether envelopes of `group` wait in its delivery buffer for earlier ones (which a
    /// sync with a member would bring).
    pub(super) fn is_waiting(&self, group: &GroupId) -> bool {
        self.summaries.get(group).is_some_and(|s| s.waiting)
    }

    /// The current members of `group` (sorted; empty once this node was removed).
    pub(super) fn members(&self, group: &GroupId) -> Option<&[MemberId]> {
        self.summaries.get(group).map(|s| &*s.members)
    }

    /// Whether `member` is a current member of `group`.
    pub(super) fn is_member(&self, group: &GroupId, member: &MemberId) -> bool {
        self.summaries
            .get(group)
            .is_some_and(|s| s.members.binary_search(member).is_ok())
    }

    /// Whether `member` is a current member of any of this node's groups.
    pub(super) fn in_any(&self, member: &MemberId) -> bool {
        self.summaries
            .values()
            .any(|s| s.members.binary_search(member).is_ok())
    }

    /// Every group this node is or was in.
    pub(super) fn ids(&self) -> impl Iterator<Item = &GroupId> {
        self.summaries.keys()
    }

    /// The groups this node is a member of now, with their members.
    pub(super) fn active(&self) -> impl Iterator<Item = (&GroupId, &[MemberId])> {
        self.summaries
            .iter()
            .filter(|(_, s)| s.active)
            .map(|(id, s)| (id, &*s.members))
    }

    /// Full states held now.
    #[cfg(test)]
    fn loaded(&self) -> usize {
        self.loaded.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use dspring_proto::Device;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    /// `n` groups of `device` and `other`, each committed to `store`.
    fn groups(store: &mut Store, device: &Device, other: &Device, n: u8) -> Vec<Group> {
        let mut rng = ChaCha20Rng::seed_from_u64(u64::from(n));
        (0..n)
            .map(|i| {
                let staged =
                    Group::create(device, GroupId([i; 32]), &[other.bundle(None)], &mut rng)
                        .unwrap();
                store.apply(&staged).unwrap();
                staged.group
            })
            .collect()
    }

    #[test]
    fn states_beyond_the_bound_or_of_idle_groups_are_read_back_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), None).unwrap();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let (me, other) = (Device::generate(0, &mut rng), Device::generate(0, &mut rng));
        let committed = groups(&mut store, &me, &other, 3);
        let mut states = GroupStates::with_limit(2);
        for group in &committed {
            states.insert(group.clone());
        }
        // The first group's state, the least recently used, was dropped; what every other
        // concern asks of a group stays for all three.
        assert_eq!(states.loaded(), 2);
        let mut members = [me.id(), other.id()];
        members.sort();
        for group in &committed {
            assert!(states.is_active(&group.id()));
            assert_eq!(states.members(&group.id()), Some(&members[..]));
            assert!(states.is_member(&group.id(), &other.id()));
        }
        assert!(states.in_any(&other.id()));
        assert_eq!(states.ids().count(), 3);

        // Read back, it is the state committed; the bound holds, dropping the next oldest.
        let first = committed[0].id();
        let read = states
            .state(&store, &first)
            .unwrap()
            .unwrap()
            .to_bytes()
            .unwrap();
        assert_eq!(read, committed[0].to_bytes().unwrap());
        assert_eq!(states.loaded(), 2);

        // An idle group's state goes; it comes back when used.
        states.unload(&first);
        assert_eq!(states.loaded(), 1);
        assert!(states.is_member(&first, &me.id()));
        assert!(states.state(&store, &first).unwrap().is_some());

        // A group this node is not in has no state, even if the store had one.
        assert!(states.state(&store, &GroupId([9; 32])).unwrap().is_none());
        let known_only = GroupStates::default();
        assert!(!known_only.contains(&first));
        assert!(!states.is_waiting(&first));
    }

    #[test]
    fn a_group_with_envelopes_waiting_for_earlier_ones_says_so() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let (a, b) = (Device::generate(0, &mut rng), Device::generate(0, &mut rng));
        let created = Group::create(&a, GroupId([3; 32]), &[b.bundle(None)], &mut rng).unwrap();
        let joined = Group::join(
            &b,
            GroupId([3; 32]),
            created.outbox[0].bytes.clone(),
            &mut rng,
        )
        .unwrap();
        // A's key update starts a new epoch; its message in that epoch reaches B first.
        let update = created.group.update(&mut rng).unwrap();
        let message = update.group.send(b"later").unwrap();
        let early = joined
            .group
            .receive(&b, message.outbox[0].bytes.clone(), &mut rng)
            .unwrap();
        let mut states = GroupStates::default();
        states.insert(joined.group.clone());
        assert!(!states.is_waiting(&joined.group.id()));
        states.insert(early.group);
        assert!(states.is_waiting(&joined.group.id()));
    }
}
