//! The sans-IO core of the hub relay, shared by the Worker (wasm32), the hub and `hub relay`.
//!
//! - [`frame`]: relay protocol v1, the frame registry and its strict codec;
//! - [`room`]: one cluster's room as a pure state machine that returns actions;
//! - [`close`]: the close codes the relay sends;
//! - [`path`]: the relay's URL layout;
//! - `noise` and `peer` (feature `noise`): end-to-end Noise IK sessions between hubs, and the
//!   session layer that sets them up on demand; `pairing`: joining a cluster with a one-time
//!   token, through the relay, over one Noise IK round trip to the token's issuer.
//!
//! Nothing here opens a socket, reads a clock or draws randomness (`clippy.toml` enforces the
//! last two): callers pass time in and perform the returned actions.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod close;
pub mod cluster;
mod codec;
pub mod frame;
#[cfg(feature = "noise")]
pub mod noise;
#[cfg(feature = "noise")]
pub mod pairing;
pub mod path;
#[cfg(feature = "noise")]
pub mod peer;
pub mod room;

pub use close::CloseCode;
pub use frame::{Frame, FrameError, FrameType, HubId};
pub use room::{Action, ConnId, Room, RoomConfig};
