//! FS-AEAD (spec §11): each update secret of a member starts an epoch of that member's sending
//! chain; message `n` of the epoch uses chain key `k_n`, and keys are erased once used.

use core::fmt;
use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use thiserror::Error;
use zeroize::Zeroize;

use crate::secret::{SECRET_LEN, Secret};

/// An epoch: the control sequence number of the sender's message that produced its update
/// secret.
pub type Epoch = u64;

/// How far one message may jump ahead of the next expected index: bounds the key derivations
/// and stored keys that a single message can cause.
pub const MAX_SKIP: u64 = 1_000;
/// Skipped keys kept per sender across epochs, for out-of-order delivery; the oldest go first.
pub const MAX_SKIPPED_KEYS: usize = 2_000;
/// Epochs whose chains a sender keeps, for messages of the previous epoch still in flight.
pub const MAX_LIVE_EPOCHS: usize = 2;

const CHAIN_LABEL: &[u8] = b"dspring/v1/fs-aead/chain";
const INIT_LABEL: &[u8] = b"dspring/v1/fs-aead/init";
const KEY_LABEL: &[u8] = b"dspring/v1/fs-aead/key";
const NONCE_LEN: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum RatchetError {
    #[error("no keys for epoch {epoch} (never installed, or already deleted)")]
    UnknownEpoch { epoch: Epoch },
    #[error("message {index} of epoch {epoch} was already decrypted (or its key expired)")]
    AlreadyUsed { epoch: Epoch, index: u64 },
    #[error("message index jumps more than {MAX_SKIP} ahead")]
    TooFarAhead,
    #[error("epoch {epoch} is not newer than the newest installed")]
    StaleEpoch { epoch: Epoch },
    #[error("no sending epoch installed")]
    NoSendingEpoch,
    #[error("decryption failed")]
    Decryption,
}

/// The key and nonce of one message; used once.
pub struct MessageKey {
    key: Secret,
    nonce: [u8; NONCE_LEN],
}

impl fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MessageKey(<redacted>)")
    }
}

impl MessageKey {
    fn derive(chain_key: &Secret) -> Self {
        let hk = Hkdf::<Sha256>::from_prk(chain_key.expose());
        let mut okm = [0u8; SECRET_LEN + NONCE_LEN];
        if let Ok(hk) = hk {
            let _ = hk.expand(KEY_LABEL, &mut okm);
        }
        let mut key = [0u8; SECRET_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        key.copy_from_slice(&okm[..SECRET_LEN]);
        nonce.copy_from_slice(&okm[SECRET_LEN..]);
        okm.zeroize();
        let out = Self {
            key: Secret::from_bytes(key),
            nonce,
        };
        key.zeroize();
        out
    }

    fn cipher(&self) -> (ChaCha20Poly1305, Nonce) {
        let key: &Key = self.key.expose().into();
        (ChaCha20Poly1305::new(key), Nonce::from(self.nonce))
    }

    pub fn seal(self, associated_data: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let (cipher, nonce) = self.cipher();
        cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: associated_data,
                },
            )
            .unwrap_or_default()
    }

    pub fn open(self, associated_data: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, RatchetError> {
        let (cipher, nonce) = self.cipher();
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: associated_data,
                },
            )
            .map_err(|_| RatchetError::Decryption)
    }
}

fn next_chain_key(chain_key: &Secret) -> Secret {
    let mut out = [0u8; SECRET_LEN];
    if let Ok(hk) = Hkdf::<Sha256>::from_prk(chain_key.expose()) {
        let _ = hk.expand(CHAIN_LABEL, &mut out);
    }
    let next = Secret::from_bytes(out);
    out.zeroize();
    next
}

#[derive(Clone, Serialize, Deserialize)]
struct Chain {
    next_index: u64,
    /// `k_{next_index}`, or `None` once the chain head was dropped.
    head: Option<Secret>,
    /// Chain keys `k_i` of skipped indices, kept for late messages.
    skipped: BTreeMap<u64, Secret>,
}

/// One member's chains, at any member that replicates them.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct SenderChains {
    epochs: BTreeMap<Epoch, Chain>,
}

impl fmt::Debug for SenderChains {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderChains")
            .field("epochs", &self.epochs.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl SenderChains {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a new epoch from an update secret. Chain heads beyond the newest
    /// [`MAX_LIVE_EPOCHS`] are dropped; their skipped keys stay until evicted.
    pub fn install(&mut self, epoch: Epoch, update_secret: Secret) -> Result<(), RatchetError> {
        if self.newest_epoch().is_some_and(|newest| epoch <= newest) {
            return Err(RatchetError::StaleEpoch { epoch });
        }
        // k_0 is bound to its epoch, so that one update secret can never start two chains.
        let mut head = [0u8; SECRET_LEN];
        let hk = Hkdf::<Sha256>::new(None, update_secret.expose());
        let _ = hk.expand_multi_info(&[INIT_LABEL, &epoch.to_be_bytes()], &mut head);
        self.epochs.insert(
            epoch,
            Chain {
                next_index: 0,
                head: Some(Secret::from_bytes(head)),
                skipped: BTreeMap::new(),
            },
        );
        head.zeroize();
        let live: Vec<Epoch> = self
            .epochs
            .keys()
            .rev()
            .skip(MAX_LIVE_EPOCHS)
            .copied()
            .collect();
        for old in live {
            if let Some(chain) = self.epochs.get_mut(&old) {
                chain.head = None;
            }
        }
        self.epochs
            .retain(|_, chain| chain.head.is_some() || !chain.skipped.is_empty());
        Ok(())
    }

    pub fn newest_epoch(&self) -> Option<Epoch> {
        self.epochs.keys().next_back().copied()
    }

    /// Where the sender stands: its newest epoch and the index of its next message.
    pub fn sending_position(&self) -> Option<(Epoch, u64)> {
        self.epochs
            .iter()
            .next_back()
            .map(|(epoch, chain)| (*epoch, chain.next_index))
    }

    /// Whether every message of `epoch` below `count` was received (true if the epoch is not
    /// known here: nothing of it can be read anyway).
    pub fn all_used_below(&self, epoch: Epoch, count: u64) -> bool {
        match self.epochs.get(&epoch) {
            None => true,
            Some(chain) => {
                chain.next_index >= count && chain.skipped.range(..count).next().is_none()
            }
        }
    }

    pub fn next_sending_key(&mut self) -> Result<(Epoch, u64, MessageKey), RatchetError> {
        let (epoch, chain) = self
            .epochs
            .iter_mut()
            .next_back()
            .ok_or(RatchetError::NoSendingEpoch)?;
        let head = chain.head.take().ok_or(RatchetError::NoSendingEpoch)?;
        let key = MessageKey::derive(&head);
        let index = chain.next_index;
        chain.head = Some(next_chain_key(&head));
        chain.next_index += 1;
        Ok((*epoch, index, key))
    }

    pub fn receiving_key(&mut self, epoch: Epoch, index: u64) -> Result<MessageKey, RatchetError> {
        let chain = self
            .epochs
            .get_mut(&epoch)
            .ok_or(RatchetError::UnknownEpoch { epoch })?;
        if index < chain.next_index {
            let key = chain
                .skipped
                .remove(&index)
                .ok_or(RatchetError::AlreadyUsed { epoch, index })?;
            return Ok(MessageKey::derive(&key));
        }
        if index - chain.next_index > MAX_SKIP {
            return Err(RatchetError::TooFarAhead);
        }
        let mut head = chain
            .head
            .take()
            .ok_or(RatchetError::AlreadyUsed { epoch, index })?;
        while chain.next_index < index {
            let next = next_chain_key(&head);
            chain.skipped.insert(chain.next_index, head);
            head = next;
            chain.next_index += 1;
        }
        let key = MessageKey::derive(&head);
        chain.head = Some(next_chain_key(&head));
        chain.next_index += 1;
        self.evict_skipped();
        Ok(key)
    }

    fn evict_skipped(&mut self) {
        let mut total: usize = self.epochs.values().map(|c| c.skipped.len()).sum();
        while total > MAX_SKIPPED_KEYS {
            let Some(chain) = self.epochs.values_mut().find(|c| !c.skipped.is_empty()) else {
                break;
            };
            chain.skipped.pop_first();
            total -= 1;
        }
    }

    /// Forgets everything (the sender was removed).
    pub fn clear(&mut self) {
        self.epochs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (SenderChains, SenderChains) {
        let mut sender = SenderChains::new();
        let mut receiver = SenderChains::new();
        sender.install(3, Secret::from_bytes([1; 32])).unwrap();
        receiver.install(3, Secret::from_bytes([1; 32])).unwrap();
        (sender, receiver)
    }

    #[test]
    fn out_of_order_exactly_once() {
        let (mut s, mut r) = pair();
        let sealed: Vec<(u64, Vec<u8>)> = (0..10)
            .map(|i| {
                let (epoch, index, key) = s.next_sending_key().unwrap();
                assert_eq!((epoch, index), (3, i));
                (index, key.seal(b"ad", &[i as u8; 5]))
            })
            .collect();
        for &i in &[4usize, 0, 9, 1, 2, 3, 8, 5, 7, 6] {
            let (index, ct) = &sealed[i];
            let plain = r.receiving_key(3, *index).unwrap().open(b"ad", ct).unwrap();
            assert_eq!(plain, vec![i as u8; 5]);
            assert!(matches!(
                r.receiving_key(3, *index),
                Err(RatchetError::AlreadyUsed { .. })
            ));
        }
        assert!(r.all_used_below(3, 10));
        assert!(!r.all_used_below(3, 11));
    }

    #[test]
    fn wrong_ad_tamper_far_ahead_and_unknown_epoch() {
        let (mut s, mut r) = pair();
        let (_, _, key) = s.next_sending_key().unwrap();
        let mut ct = key.seal(b"ad", b"hi");
        assert!(
            r.clone()
                .receiving_key(3, 0)
                .unwrap()
                .open(b"xx", &ct)
                .is_err()
        );
        ct[0] ^= 1;
        assert!(
            r.clone()
                .receiving_key(3, 0)
                .unwrap()
                .open(b"ad", &ct)
                .is_err()
        );
        assert_eq!(
            r.receiving_key(3, MAX_SKIP + 1).err(),
            Some(RatchetError::TooFarAhead)
        );
        assert!(matches!(
            r.receiving_key(4, 0),
            Err(RatchetError::UnknownEpoch { .. })
        ));
        assert!(r.receiving_key(3, 0).is_ok());
    }

    #[test]
    fn skipped_keys_stay_bounded() {
        let mut r = SenderChains::new();
        for epoch in 1..10 {
            r.install(epoch, Secret::from_bytes([epoch as u8; 32]))
                .unwrap();
            r.receiving_key(epoch, MAX_SKIP).unwrap();
            let total: usize = r.epochs.values().map(|c| c.skipped.len()).sum();
            assert!(total <= MAX_SKIPPED_KEYS);
        }
        assert!(r.install(5, Secret::from_bytes([0; 32])).is_err());
    }

    #[test]
    fn forward_secrecy_and_serde() {
        let (mut s, mut r) = pair();
        let (_, _, key) = s.next_sending_key().unwrap();
        let ct = key.seal(b"", b"secret");
        r.receiving_key(3, 0).unwrap().open(b"", &ct).unwrap();
        let bytes = postcard::to_allocvec(&r).unwrap();
        let mut restored: SenderChains = postcard::from_bytes(&bytes).unwrap();
        assert!(restored.receiving_key(3, 0).is_err());
        let (_, _, key) = s.next_sending_key().unwrap();
        let ct = key.seal(b"", b"next");
        assert_eq!(
            restored
                .receiving_key(3, 1)
                .unwrap()
                .open(b"", &ct)
                .unwrap(),
            b"next"
        );
    }
}
