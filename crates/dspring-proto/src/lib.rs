//! Digital Spring protocol core: decentralized continuous group key agreement (DCGKA) with
//! end-to-end encrypted group messaging, as a deterministic sans-IO state machine.
//!
//! No sockets, no async, no clocks, no files, no global randomness: inputs in, outputs out.
//!
//! Every operation returns a [`Staged`] result: the new state, the envelopes to broadcast, the
//! events, and the one-time prekeys used. Persist all of it in one transaction, then send.
//!
//! ```
//! use dspring_proto::{Device, Event, Group, GroupId};
//! use rand_chacha::ChaCha20Rng;
//! use rand_core::SeedableRng;
//!
//! let mut rng = ChaCha20Rng::seed_from_u64(7);
//! let alice = Device::generate(4, &mut rng);
//! let bob = Device::generate(4, &mut rng);
//! let group_id = GroupId([1; 32]);
//!
//! // Alice creates a group with Bob from Bob's prekey bundle.
//! let bundle = bob.bundle(bob.prekeys.one_time_ids().first().copied());
//! let created = Group::create(&alice, group_id, &[bundle], &mut rng)?;
//! let create = created.outbox[0].bytes.clone();
//! let mut alice_group = created.group;
//!
//! // Bob joins from the create; his ack goes back to Alice.
//! let joined = Group::join(&bob, group_id, create, &mut rng)?;
//! let ack = joined.outbox[0].bytes.clone();
//! let bob_group = joined.group;
//! alice_group = alice_group.receive(&alice, ack, &mut rng)?.group;
//!
//! // Alice sends; Bob decrypts.
//! let sent = alice_group.send(b"hello, Bob")?;
//! let received = bob_group.receive(&bob, sent.outbox[0].bytes.clone(), &mut rng)?;
//! assert!(matches!(
//!     &received.events[..],
//!     [Event::Message { plaintext, .. }] if plaintext == b"hello, Bob"
//! ));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![forbid(unsafe_code)]

mod buffer;
pub mod codec;
pub mod control;
mod dcgka;
pub mod envelope;
pub mod group;
pub mod identity;
pub mod ids;
mod kdf;
pub mod membership;
pub mod message_ratchet;
pub mod secret;
pub mod two_party;

pub use buffer::{MAX_BUFFERED_BYTES, MAX_BUFFERED_ENVELOPES};
pub use group::{Device, Event, Group, GroupError, Outgoing, ReceiveError, Staged, StateChanges};
pub use ids::{GroupId, MemberId, OpId};
pub use secret::Secret;
