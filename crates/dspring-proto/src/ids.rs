//! Identifiers of members, groups and operations.

use core::fmt;

use serde::{Deserialize, Serialize};

/// A member (device) of a group: its Ed25519 identity public key, which is also its libp2p
/// peer id in the network layer.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MemberId(pub [u8; 32]);

impl MemberId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first bytes, as the wire names a member inside a group context (see `envelope`).
    pub fn short(&self) -> ShortId {
        let mut out = [0u8; SHORT_ID_LEN];
        out.copy_from_slice(&self.0[..SHORT_ID_LEN]);
        ShortId(out)
    }
}

impl fmt::Debug for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MemberId({})", hex_prefix(&self.0))
    }
}

impl fmt::Display for MemberId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex_prefix(&self.0))
    }
}

/// Length of a member's short id on the wire. 8 bytes: an honest collision inside one group is
/// negligible (2^-64 per pair), and a ground collision only makes the receiver try both keys.
pub const SHORT_ID_LEN: usize = 8;

/// The first `SHORT_ID_LEN` bytes of a member id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct ShortId(pub [u8; SHORT_ID_LEN]);

/// A group: 32 random bytes chosen by its creator.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub [u8; 32]);

impl GroupId {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({})", hex_prefix(&self.0))
    }
}

/// A control operation: its sender and the sender's control sequence number (from 1).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
pub struct OpId {
    pub sender: MemberId,
    pub seq: u64,
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
