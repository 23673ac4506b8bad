//! The libp2p peer id is the device identity key: the same Ed25519 key signs envelopes and
//! authenticates Noise handshakes, so a peer id names a member.

use dspring_proto::MemberId;
use dspring_proto::identity::SigningKey;
use libp2p::PeerId;
use libp2p::identity::{Keypair, PublicKey, ed25519};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    #[error("not a valid Ed25519 key")]
    InvalidKey,
}

/// The libp2p keypair of a device identity.
pub fn keypair(identity: &SigningKey) -> Result<Keypair, IdentityError> {
    let mut seed = *identity.secret().expose();
    // `try_from_bytes` wipes the buffer it is given.
    let secret =
        ed25519::SecretKey::try_from_bytes(&mut seed).map_err(|_| IdentityError::InvalidKey)?;
    Ok(Keypair::from(ed25519::Keypair::from(secret)))
}

/// The peer id of a member.
pub fn peer_id(member: &MemberId) -> Result<PeerId, IdentityError> {
    let key = ed25519::PublicKey::try_from_bytes(member.as_bytes())
        .map_err(|_| IdentityError::InvalidKey)?;
    Ok(PeerId::from_public_key(&PublicKey::from(key)))
}

/// The member behind a peer id, if the id embeds an Ed25519 key (all ours do: an identity
/// multihash of the key).
pub fn member(peer: &PeerId) -> Option<MemberId> {
    let key = PublicKey::try_decode_protobuf(peer_multihash_digest(peer)?).ok()?;
    let key = key.try_into_ed25519().ok()?;
    Some(MemberId(key.to_bytes()))
}

fn peer_multihash_digest(peer: &PeerId) -> Option<&[u8]> {
    let multihash = peer.as_ref();
    // Code 0 is the identity hash: the digest is the protobuf-encoded public key.
    (multihash.code() == 0).then(|| multihash.digest())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dspring_proto::Device;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn peer_ids_and_members_map_both_ways() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let device = Device::generate(0, &mut rng);
        let keypair = keypair(&device.identity).unwrap();
        let peer = keypair.public().to_peer_id();
        assert_eq!(peer, peer_id(&device.id()).unwrap());
        assert_eq!(member(&peer), Some(device.id()));
        assert_eq!(member(&PeerId::random()), None);
    }
}
