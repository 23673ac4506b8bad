//! Safety numbers: two people read out or compare one number to check that each holds the
//! other's real identity key, and not one a middleman put in a contact card.
//!
//! Each key gets a 30-digit fingerprint (six 5-digit groups, each from 5 bytes of a SHA-512
//! of the key under a domain label); the safety number is the two fingerprints in key order,
//! so both people see the same 60 digits. 30 digits are about 100 bits: making a key whose
//! fingerprint matches a given one takes about 2^100 hashes.

use dspring_proto::MemberId;
use sha2::{Digest, Sha512};

const DOMAIN: &[u8] = b"dspring/v1/safety-number";
/// Five-digit groups per key.
const GROUPS_PER_KEY: usize = 6;
/// Bytes of the hash behind one group of five digits (40 bits; reduced mod 100000).
const BYTES_PER_GROUP: usize = 5;

/// The 60-digit safety number of two members, the same for both sides, as twelve groups of
/// five digits separated by spaces.
pub fn safety_number(a: &MemberId, b: &MemberId) -> String {
    let (first, second) = if a.as_bytes() <= b.as_bytes() {
        (a, b)
    } else {
        (b, a)
    };
    let mut groups = fingerprint(first);
    groups.extend(fingerprint(second));
    groups.join(" ")
}

/// Whether `typed` is the same safety number as `number`, ignoring spaces and other
/// separators people type.
pub fn same_safety_number(number: &str, typed: &str) -> bool {
    let digits = |s: &str| -> String { s.chars().filter(char::is_ascii_digit).collect() };
    let typed_is_clean = typed
        .chars()
        .all(|c| c.is_ascii_digit() || c.is_whitespace() || c == '-');
    typed_is_clean && digits(number) == digits(typed)
}

fn fingerprint(member: &MemberId) -> Vec<String> {
    let digest = Sha512::new()
        .chain_update(DOMAIN)
        .chain_update(member.as_bytes())
        .finalize();
    digest
        .chunks_exact(BYTES_PER_GROUP)
        .take(GROUPS_PER_KEY)
        .map(|chunk| {
            let value = chunk.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", value % 100_000)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_see_the_same_sixty_digits() {
        let (a, b) = (MemberId([1; 32]), MemberId([2; 32]));
        let number = safety_number(&a, &b);
        assert_eq!(number, safety_number(&b, &a));
        assert_eq!(number.chars().filter(char::is_ascii_digit).count(), 60);
        assert_eq!(number.split(' ').count(), 12);
    }

    #[test]
    fn another_key_gives_another_number() {
        let (a, b, c) = (MemberId([1; 32]), MemberId([2; 32]), MemberId([3; 32]));
        assert_ne!(safety_number(&a, &b), safety_number(&a, &c));
    }

    #[test]
    fn typed_numbers_compare_without_separators() {
        let number = safety_number(&MemberId([1; 32]), &MemberId([2; 32]));
        assert!(same_safety_number(&number, &number.replace(' ', "")));
        assert!(same_safety_number(&number, &number.replace(' ', "-")));
        let mut wrong = number.clone().into_bytes();
        wrong[0] = if wrong[0] == b'9' { b'0' } else { wrong[0] + 1 };
        assert!(!same_safety_number(
            &number,
            &String::from_utf8(wrong).unwrap_or_default()
        ));
        assert!(!same_safety_number(&number, ""));
        assert!(!same_safety_number(&number, &format!("{number}x")));
    }
}
