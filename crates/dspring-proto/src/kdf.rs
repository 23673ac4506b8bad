//! The key derivations of the DCGKA (spec §3): the only places where secrets are combined.

use hkdf::Hkdf;
use sha2::Sha256;
use zeroize::Zeroize;

use crate::ids::MemberId;
use crate::secret::{SECRET_LEN, Secret};

const MEMBER_SECRET_INFO: &[u8] = b"dspring/dcgka/member";
const RATCHET_INFO: &[u8] = b"dspring/dcgka/ratchet";

/// Constant ratchet input for the step that yields an added member's first member secret.
pub const WELCOME_INPUT: &[u8] = b"welcome";
/// Constant ratchet input for the step that yields the adder's (or add-acker's) update secret.
pub const ADD_INPUT: &[u8] = b"add";

/// `HKDF(seed, ID)`: the member secret of `member` derived from a seed.
pub fn member_secret(seed: &Secret, member: &MemberId) -> Secret {
    let hk = Hkdf::<Sha256>::new(None, seed.expose());
    let mut okm = [0u8; SECRET_LEN];
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit, so expand cannot fail.
    let _ = hk.expand_multi_info(&[MEMBER_SECRET_INFO, member.as_bytes()], &mut okm);
    let out = Secret::from_bytes(okm);
    okm.zeroize();
    out
}

/// `update_ratchet`: advances a member's outer ratchet with `input`, returning the update
/// secret and the new ratchet value. An absent ratchet (a member whose ratchet is being born)
/// is taken as 32 zero bytes of salt.
pub fn update_ratchet(ratchet: Option<&Secret>, input: &[u8]) -> (Secret, Secret) {
    let zero = [0u8; SECRET_LEN];
    let salt = ratchet.map_or(&zero, Secret::expose);
    let hk = Hkdf::<Sha256>::new(Some(salt), input);
    let mut okm = [0u8; 2 * SECRET_LEN];
    let _ = hk.expand(RATCHET_INFO, &mut okm);
    let mut update = [0u8; SECRET_LEN];
    let mut next = [0u8; SECRET_LEN];
    update.copy_from_slice(&okm[..SECRET_LEN]);
    next.copy_from_slice(&okm[SECRET_LEN..]);
    okm.zeroize();
    (Secret::from_bytes(update), Secret::from_bytes(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivations_separate_inputs() {
        let seed = Secret::from_bytes([1; 32]);
        let a = member_secret(&seed, &MemberId([2; 32]));
        let b = member_secret(&seed, &MemberId([3; 32]));
        assert_ne!(a, b);
        let (i1, r1) = update_ratchet(None, a.expose());
        let (i2, r2) = update_ratchet(Some(&r1), a.expose());
        assert_ne!(i1, r1);
        assert_ne!(i1, i2);
        assert_ne!(r1, r2);
        // Deterministic.
        assert_eq!(
            update_ratchet(Some(&r1), ADD_INPUT).0,
            update_ratchet(Some(&r1), ADD_INPUT).0
        );
    }
}
