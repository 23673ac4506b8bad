//! Gossipsub topics: one per group, named by a hash of the group id so that the id itself is
//! not on the wire.

use dspring_proto::GroupId;
use libp2p::gossipsub::{IdentTopic, TopicHash};
use sha2::{Digest, Sha256};

const TOPIC_CONTEXT: &[u8] = b"dspring/topic/v1";

pub fn topic(group: &GroupId) -> IdentTopic {
    let digest = Sha256::new()
        .chain_update(TOPIC_CONTEXT)
        .chain_update(group.as_bytes())
        .finalize();
    let name: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    IdentTopic::new(name)
}

pub fn topic_hash(group: &GroupId) -> TopicHash {
    topic(group).hash()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_differ_per_group_and_hide_the_id() {
        let a = topic(&GroupId([1; 32]));
        let b = topic(&GroupId([2; 32]));
        assert_ne!(a.hash(), b.hash());
        assert!(!a.to_string().contains(&"01".repeat(32)));
        assert_eq!(a.hash(), topic_hash(&GroupId([1; 32])));
    }
}
