//! Digital Spring protocol core: decentralized continuous group key agreement (DCGKA) with
//! end-to-end encrypted group messaging, as a deterministic sans-IO state machine.
//!
//! No sockets, no async, no clocks, no files, no global randomness: inputs in, outputs out.
#![forbid(unsafe_code)]

pub mod codec;
pub mod ids;
pub mod secret;

pub use ids::{GroupId, MemberId, OpId};
pub use secret::Secret;
