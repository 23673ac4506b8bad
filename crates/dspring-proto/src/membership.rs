//! Decentralized group membership: the strong-remove DGM of the DCGKA paper (Definition 6) and
//! `member_view`, the membership as another member saw it (spec §6).
//!
//! The history records every membership operation together with *who had seen which operation
//! at which of their own sequence numbers*. From that record alone every member computes, bit
//! for bit, the view another member had when it sent a message: the sub-history of operations
//! that member had seen, with the causal order `o ≺ r` read as "the sender of `r` had seen `o`
//! before sending `r`". This is the filtered-history definition; the Java prototype's
//! incremental shortcut over-approximates under concurrency (spec §12.4).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::codec::{DecodeError, Reader, Writer};
use crate::ids::{MemberId, OpId};

/// Most members a group's history may ever name, which bounds a welcome's decoder. Far above
/// the group sizes this design serves (every update costs O(n) direct messages).
pub const MAX_MEMBERS_EVER: usize = 4096;
/// Most membership operations a history may hold, which bounds a welcome's decoder.
pub const MAX_HISTORY_OPS: usize = 16_384;
/// Most "seen" entries one member may have in a decoded history.
pub const MAX_SEEN_PER_MEMBER: usize = MAX_HISTORY_OPS;

/// A membership operation. Acknowledgements are recorded separately, as "seen" entries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MembershipOp {
    /// Creates the group with these members besides the sender.
    Create {
        members: BTreeSet<MemberId>,
    },
    Add {
        member: MemberId,
    },
    Remove {
        member: MemberId,
    },
}

/// Sequence number standing for "before this member sent anything": what an initial member saw
/// in the create, or what an added member inherited through its welcome.
pub const SEEN_AT_JOIN: u64 = 0;

/// The membership history of one group as the local member knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    ops: BTreeMap<OpId, MembershipOp>,
    /// `seen[user][op]`: the lowest sequence number of `user` at which it had seen `op`
    /// (its own op: the op's seq; an acknowledged op: the ack's seq; joined with: 0).
    seen: BTreeMap<MemberId, Arc<BTreeMap<OpId, u64>>>,
    create: Option<OpId>,
    /// SR-DGM over the whole history, kept current by `record_op`: it changes only when an
    /// operation is added (a later "seen" entry has a higher seq than any operation it could
    /// order, so it never changes `≺` between recorded operations).
    members: BTreeSet<MemberId>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn op(&self, id: &OpId) -> Option<&MembershipOp> {
        self.ops.get(id)
    }

    pub fn ops(&self) -> impl Iterator<Item = (&OpId, &MembershipOp)> {
        self.ops.iter()
    }

    pub fn create_id(&self) -> Option<OpId> {
        self.create
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Number of "seen" entries, a measure of the history's size.
    pub fn seen_entries(&self) -> usize {
        self.seen.values().map(|ops| ops.len()).sum()
    }

    /// Every member ever named in the history (created with or added), in id order.
    pub fn everyone(&self) -> BTreeSet<MemberId> {
        let mut out = BTreeSet::new();
        for (id, op) in &self.ops {
            match op {
                MembershipOp::Create { members } => {
                    out.insert(id.sender);
                    out.extend(members.iter().copied());
                }
                MembershipOp::Add { member } => {
                    out.insert(*member);
                }
                MembershipOp::Remove { .. } => {}
            }
        }
        out
    }

    /// Records an operation sent by `id.sender` at `id.seq`; a create is also seen by every
    /// initial member at join time.
    pub fn record_op(&mut self, id: OpId, op: MembershipOp) {
        if let MembershipOp::Create { members } = &op {
            self.create = Some(id);
            for member in members {
                self.record_seen(*member, id, SEEN_AT_JOIN);
            }
        }
        self.ops.insert(id, op);
        self.record_seen(id.sender, id, id.seq);
        self.members = self.strong_remove_dgm(|_| true);
    }

    /// Records that `user` had seen `op` by its sequence number `seq`.
    pub fn record_seen(&mut self, user: MemberId, op: OpId, seq: u64) {
        let entry = Arc::make_mut(self.seen.entry(user).or_default())
            .entry(op)
            .or_insert(seq);
        *entry = (*entry).min(seq);
    }

    /// Records that `user` joined through add `add` by its sender: it has seen everything the
    /// sender had seen before the add, and the add itself.
    pub fn record_joined_through(&mut self, user: MemberId, add: OpId) {
        let inherited: Vec<OpId> = self
            .seen
            .get(&add.sender)
            .map(|ops| {
                ops.iter()
                    .filter(|(_, seq)| **seq < add.seq)
                    .map(|(op, _)| *op)
                    .collect()
            })
            .unwrap_or_default();
        for op in inherited {
            self.record_seen(user, op, SEEN_AT_JOIN);
        }
        self.record_seen(user, add, SEEN_AT_JOIN);
    }

    /// Whether `user` had seen `op`, as far as the recorded history tells.
    pub fn has_seen(&self, user: &MemberId, op: &OpId) -> bool {
        self.seen.get(user).is_some_and(|ops| ops.contains_key(op))
    }

    /// `before ≺ after`: the sender of `after` had seen `before` before sending `after`.
    fn precedes(&self, before: &OpId, after: &OpId) -> bool {
        if before == after {
            return false;
        }
        if Some(*before) == self.create {
            return true;
        }
        self.seen
            .get(&after.sender)
            .and_then(|ops| ops.get(before))
            .is_some_and(|seq| *seq < after.seq)
    }

    /// The membership as `user` saw it when it sent its latest message processed here.
    pub fn member_view(&self, user: &MemberId) -> BTreeSet<MemberId> {
        match self.seen.get(user) {
            Some(seen) => self.strong_remove_dgm(|op| seen.contains_key(op)),
            None => BTreeSet::new(),
        }
    }

    /// The membership over the whole history: the local member's view.
    pub fn current_members(&self) -> &BTreeSet<MemberId> {
        &self.members
    }

    /// SR-DGM (paper Definition 6) over the operations that pass `include`.
    ///
    /// Vertices are "add" operations, the create standing for the adds of its members. An edge
    /// runs from the add of P to an add *by* P that P made after being added; the edge is
    /// cancelled by a remove of P that came after P's add but had not seen the add by P. A user
    /// is a member if some add of it is reachable from the create and no remove of it came
    /// after that add.
    fn strong_remove_dgm(&self, include: impl Fn(&OpId) -> bool) -> BTreeSet<MemberId> {
        let Some(create_id) = self.create.filter(|id| include(id)) else {
            return BTreeSet::new();
        };
        let Some(MembershipOp::Create { members: initial }) = self.ops.get(&create_id) else {
            return BTreeSet::new();
        };
        let mut adds_of: BTreeMap<MemberId, Vec<OpId>> = BTreeMap::new();
        let mut removes_of: BTreeMap<MemberId, Vec<OpId>> = BTreeMap::new();
        let mut adds: Vec<(OpId, MemberId)> = Vec::new();
        for (id, op) in self.ops.iter().filter(|(id, _)| include(id)) {
            match op {
                MembershipOp::Create { .. } => {}
                MembershipOp::Add { member } => {
                    adds_of.entry(*member).or_default().push(*id);
                    adds.push((*id, *member));
                }
                MembershipOp::Remove { member } => removes_of.entry(*member).or_default().push(*id),
            }
        }
        let is_initial = |user: &MemberId| *user == create_id.sender || initial.contains(user);

        // An edge from `adder_add` (the add that made `adder` a member; `None` for an initial
        // member) to `add` (an add by `adder`) survives unless some remove of `adder` that
        // followed `adder_add` did not see `add`.
        let edge_survives = |adder: &MemberId, adder_add: Option<&OpId>, add: &OpId| {
            let follows_adder_add = |remove: &OpId| match adder_add {
                None => true,
                Some(adder_add) => self.precedes(adder_add, remove),
            };
            let edge_exists = match adder_add {
                None => true,
                Some(adder_add) => self.precedes(adder_add, add),
            };
            edge_exists
                && !removes_of.get(adder).is_some_and(|removes| {
                    removes
                        .iter()
                        .any(|r| follows_adder_add(r) && !self.precedes(add, r))
                })
        };

        // Reachability by fixpoint: adds are few and the graph is acyclic, and a loop avoids
        // recursion depth that grows with chains of adds.
        let mut reachable: BTreeSet<OpId> = BTreeSet::new();
        loop {
            let mut changed = false;
            for (add, _) in &adds {
                if reachable.contains(add) {
                    continue;
                }
                let adder = add.sender;
                let via_initial = is_initial(&adder) && edge_survives(&adder, None, add);
                let via_add = || {
                    adds_of.get(&adder).is_some_and(|adder_adds| {
                        adder_adds.iter().any(|adder_add| {
                            reachable.contains(adder_add)
                                && edge_survives(&adder, Some(adder_add), add)
                        })
                    })
                };
                if via_initial || via_add() {
                    reachable.insert(*add);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }

        let removed_after = |user: &MemberId, add: Option<&OpId>| {
            removes_of.get(user).is_some_and(|removes| {
                removes.iter().any(|r| match add {
                    None => true,
                    Some(add) => self.precedes(add, r),
                })
            })
        };
        let mut members = BTreeSet::new();
        for user in initial.iter().chain(std::iter::once(&create_id.sender)) {
            if !removed_after(user, None) {
                members.insert(*user);
            }
        }
        for (add, user) in &adds {
            if reachable.contains(add) && !removed_after(user, Some(add)) {
                members.insert(*user);
            }
        }
        members
    }
}

const TAG_CREATE: u8 = 0;
const TAG_ADD: u8 = 1;
const TAG_REMOVE: u8 = 2;

impl History {
    /// Compact encoding for welcomes: a table of member ids, then operations and "seen"
    /// entries that refer to members and operations by index.
    pub fn encode(&self, w: &mut Writer) {
        let mut table: BTreeSet<MemberId> = self.everyone();
        table.extend(self.seen.keys().copied());
        for (id, op) in &self.ops {
            table.insert(id.sender);
            if let MembershipOp::Remove { member } = op {
                table.insert(*member);
            }
        }
        let table: Vec<MemberId> = table.into_iter().collect();
        let index = |m: &MemberId| table.binary_search(m).unwrap_or_default() as u64;
        w.varint(table.len() as u64);
        for member in &table {
            w.raw(member.as_bytes());
        }
        let op_ids: Vec<OpId> = self.ops.keys().copied().collect();
        w.varint(op_ids.len() as u64);
        for (id, op) in &self.ops {
            w.varint(index(&id.sender));
            w.varint(id.seq);
            match op {
                MembershipOp::Create { members } => {
                    w.u8(TAG_CREATE);
                    w.varint(members.len() as u64);
                    for m in members {
                        w.varint(index(m));
                    }
                }
                MembershipOp::Add { member } => {
                    w.u8(TAG_ADD);
                    w.varint(index(member));
                }
                MembershipOp::Remove { member } => {
                    w.u8(TAG_REMOVE);
                    w.varint(index(member));
                }
            }
        }
        w.varint(self.seen.len() as u64);
        for (user, seen) in &self.seen {
            w.varint(index(user));
            w.varint(seen.len() as u64);
            for (op, seq) in seen.iter() {
                w.varint(op_ids.binary_search(op).unwrap_or_default() as u64);
                w.varint(*seq);
            }
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let table_len = r.count("member table", MAX_MEMBERS_EVER, 32)?;
        let mut table = Vec::with_capacity(table_len);
        for _ in 0..table_len {
            table.push(MemberId(r.array("member id")?));
        }
        if table.windows(2).any(|w| w.first() >= w.get(1)) {
            return Err(DecodeError::Invalid("member table not strictly sorted"));
        }
        let member = |r: &mut Reader<'_>| -> Result<MemberId, DecodeError> {
            let i = r.varint("member index")?;
            table
                .get(usize::try_from(i).unwrap_or(usize::MAX))
                .copied()
                .ok_or(DecodeError::Invalid("member index out of range"))
        };
        let mut history = History::new();
        let op_count = r.count("operations", MAX_HISTORY_OPS, 3)?;
        let mut op_ids = Vec::with_capacity(op_count);
        for _ in 0..op_count {
            let sender = member(r)?;
            let seq = r.varint("op seq")?;
            let id = OpId { sender, seq };
            let op = match r.u8("op tag")? {
                TAG_CREATE => {
                    let n = r.count("create members", MAX_MEMBERS_EVER, 1)?;
                    let mut members = BTreeSet::new();
                    for _ in 0..n {
                        members.insert(member(r)?);
                    }
                    if history.create.is_some() {
                        return Err(DecodeError::Invalid("two creates in a history"));
                    }
                    history.create = Some(id);
                    MembershipOp::Create { members }
                }
                TAG_ADD => MembershipOp::Add { member: member(r)? },
                TAG_REMOVE => MembershipOp::Remove { member: member(r)? },
                tag => return Err(DecodeError::UnknownTag { what: "op", tag }),
            };
            if op_ids.last().is_some_and(|last| *last >= id) {
                return Err(DecodeError::Invalid("operations not strictly sorted"));
            }
            op_ids.push(id);
            history.ops.insert(id, op);
        }
        if history.create.is_none() {
            return Err(DecodeError::Invalid("history without a create"));
        }
        let users = r.count("seen users", MAX_MEMBERS_EVER, 2)?;
        for _ in 0..users {
            let user = member(r)?;
            let n = r.count("seen entries", MAX_SEEN_PER_MEMBER, 2)?;
            let mut seen = BTreeMap::new();
            for _ in 0..n {
                let i = r.varint("op index")?;
                let op = op_ids
                    .get(usize::try_from(i).unwrap_or(usize::MAX))
                    .copied()
                    .ok_or(DecodeError::Invalid("op index out of range"))?;
                seen.insert(op, r.varint("seen seq")?);
            }
            if history.seen.insert(user, Arc::new(seen)).is_some() {
                return Err(DecodeError::Invalid("a member's seen entries appear twice"));
            }
        }
        history.members = history.strong_remove_dgm(|_| true);
        Ok(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> MemberId {
        MemberId([n; 32])
    }

    fn op(sender: u8, seq: u64) -> OpId {
        OpId {
            sender: id(sender),
            seq,
        }
    }

    fn set(ids: &[u8]) -> BTreeSet<MemberId> {
        ids.iter().map(|n| id(*n)).collect()
    }

    /// Member 0 creates {0,1,2,...} at its seq 1, and every initial member acks at its seq 1.
    fn created(members: &[u8]) -> History {
        let mut h = History::new();
        let others: BTreeSet<MemberId> = members.iter().skip(1).map(|n| id(*n)).collect();
        h.record_op(op(members[0], 1), MembershipOp::Create { members: others });
        for m in members.iter().skip(1) {
            h.record_seen(id(*m), op(members[0], 1), 1);
        }
        h
    }

    #[test]
    fn create_add_remove_sequentially() {
        let mut h = created(&[0, 1, 2]);
        assert_eq!(*h.current_members(), set(&[0, 1, 2]));
        h.record_op(op(1, 2), MembershipOp::Add { member: id(3) });
        h.record_joined_through(id(3), op(1, 2));
        assert_eq!(*h.current_members(), set(&[0, 1, 2, 3]));
        assert_eq!(h.member_view(&id(3)), set(&[0, 1, 2, 3]));
        // 0 has not acked the add yet: its view does not contain 3.
        assert_eq!(h.member_view(&id(0)), set(&[0, 1, 2]));
        h.record_seen(id(0), op(1, 2), 2);
        h.record_op(op(0, 3), MembershipOp::Remove { member: id(2) });
        assert_eq!(*h.current_members(), set(&[0, 1, 3]));
        assert_eq!(h.member_view(&id(0)), set(&[0, 1, 3]));
        assert_eq!(h.member_view(&id(1)), set(&[0, 1, 2, 3]));
    }

    #[test]
    fn concurrent_mutual_removes_remove_both() {
        let mut h = created(&[0, 1, 2]);
        h.record_op(op(0, 2), MembershipOp::Remove { member: id(1) });
        h.record_op(op(1, 2), MembershipOp::Remove { member: id(0) });
        assert_eq!(*h.current_members(), set(&[2]));
    }

    #[test]
    fn add_concurrent_with_removal_of_adder_is_cancelled() {
        // 1 adds 3 while 2 concurrently removes 1: 3 is not a member.
        let mut h = created(&[0, 1, 2]);
        h.record_op(op(1, 2), MembershipOp::Add { member: id(3) });
        h.record_joined_through(id(3), op(1, 2));
        h.record_op(op(2, 2), MembershipOp::Remove { member: id(1) });
        assert_eq!(*h.current_members(), set(&[0, 2]));
        // Had 2 seen the add before removing 1, 3 would stay.
        let mut h2 = created(&[0, 1, 2]);
        h2.record_op(op(1, 2), MembershipOp::Add { member: id(3) });
        h2.record_joined_through(id(3), op(1, 2));
        h2.record_seen(id(2), op(1, 2), 2);
        h2.record_op(op(2, 3), MembershipOp::Remove { member: id(1) });
        assert_eq!(*h2.current_members(), set(&[0, 2, 3]));
    }

    #[test]
    fn cancellation_is_transitive() {
        // 1 adds 3, 3 adds 4; concurrently 2 removes 1 without seeing either add.
        let mut h = created(&[0, 1, 2]);
        h.record_op(op(1, 2), MembershipOp::Add { member: id(3) });
        h.record_joined_through(id(3), op(1, 2));
        h.record_seen(id(3), op(1, 2), 1);
        h.record_op(op(3, 2), MembershipOp::Add { member: id(4) });
        h.record_joined_through(id(4), op(3, 2));
        h.record_op(op(2, 2), MembershipOp::Remove { member: id(1) });
        assert_eq!(*h.current_members(), set(&[0, 2]));
    }

    #[test]
    fn removed_user_cannot_evade_by_adding_a_device() {
        // 0 removes 1 while 1 concurrently adds 5: neither 1 nor 5 is a member.
        let mut h = created(&[0, 1, 2]);
        h.record_op(op(0, 2), MembershipOp::Remove { member: id(1) });
        h.record_op(op(1, 2), MembershipOp::Add { member: id(5) });
        h.record_joined_through(id(5), op(1, 2));
        assert_eq!(*h.current_members(), set(&[0, 2]));
    }

    #[test]
    fn view_of_a_member_that_never_saw_a_cancelled_add_excludes_it() {
        // Spec §12.4: members {0,1,2,4}; 1 adds 3; 2 removes 1 (concurrently). The view of 4,
        // which saw neither, must not contain 3 (the Java shortcut says it does).
        let mut h = created(&[0, 1, 2, 4]);
        h.record_op(op(1, 2), MembershipOp::Add { member: id(3) });
        h.record_joined_through(id(3), op(1, 2));
        h.record_op(op(2, 2), MembershipOp::Remove { member: id(1) });
        assert_eq!(h.member_view(&id(4)), set(&[0, 1, 2, 4]));
        assert_eq!(*h.current_members(), set(&[0, 2, 4]));
        // 4 acks the remove: now it sees 1 removed, and never sees 3.
        h.record_seen(id(4), op(2, 2), 2);
        assert_eq!(h.member_view(&id(4)), set(&[0, 2, 4]));
    }

    #[test]
    fn result_does_not_depend_on_recording_order() {
        let mut a = created(&[0, 1, 2, 3]);
        let mut b = created(&[0, 1, 2, 3]);
        type Step = Box<dyn Fn(&mut History)>;
        let steps: Vec<Step> = vec![
            Box::new(|h| h.record_op(op(1, 2), MembershipOp::Add { member: id(7) })),
            Box::new(|h| h.record_op(op(2, 2), MembershipOp::Remove { member: id(1) })),
            Box::new(|h| h.record_op(op(3, 2), MembershipOp::Remove { member: id(2) })),
            Box::new(|h| h.record_seen(id(3), op(1, 2), 2)),
        ];
        for s in &steps {
            s(&mut a);
        }
        for s in steps.iter().rev() {
            s(&mut b);
        }
        assert_eq!(a.current_members(), b.current_members());
        assert_eq!(a, b);
        assert_eq!(*a.current_members(), set(&[0, 3]));
    }

    #[test]
    fn encoding_round_trips_and_rejects_garbage() {
        let mut h = created(&[0, 1, 2, 3]);
        h.record_op(op(1, 2), MembershipOp::Add { member: id(7) });
        h.record_joined_through(id(7), op(1, 2));
        h.record_op(op(2, 2), MembershipOp::Remove { member: id(1) });
        let mut w = Writer::new();
        h.encode(&mut w);
        let bytes = w.into_bytes();
        let mut r = Reader::new(&bytes);
        let back = History::decode(&mut r).unwrap();
        r.finish().unwrap();
        assert_eq!(back, h);
        for cut in 0..bytes.len() {
            assert!(History::decode(&mut Reader::new(&bytes[..cut])).is_err());
        }
    }
}
