//! Digital Spring protocol core: decentralized continuous group key agreement (DCGKA) with
//! end-to-end encrypted group messaging, as a deterministic sans-IO state machine.
//!
//! No sockets, no async, no clocks, no files, no global randomness: inputs in, outputs out.
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
pub use group::{Device, Event, Group, GroupError, Outgoing, ReceiveError, Staged};
pub use ids::{GroupId, MemberId, OpId};
pub use secret::Secret;
