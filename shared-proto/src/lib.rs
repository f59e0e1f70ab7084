//! The sans-IO core of the hub relay, shared by the Worker (wasm32), the hub and `hub relay`.
//!
//! | module | what |
//! |---|---|
//! | [`relay`] | hub <-> relay: frames ([`relay::frame`]), close codes, URL paths, and the room ([`relay::room`]), a pure state machine with every deadline and bound of the protocol |
//! | [`trust`] | the cluster CA, X.509 hub certificates, the signed manifest and revocation list, the relay login |
//! | `session` (feature `noise`) | hub <-> hub: Noise IK sessions (`session::noise`), the session layer that sets them up on demand (`session::peer`), pairing with a one-time token (`session::pairing`) |
//! | [`agent`] | the agent surface across hubs: the delegation envelope, sharing policy and trust levels, call error codes |
//! | [`audit`] | the federation audit log's canonical entry bytes and HMAC chain, and its verification |
//! | [`link`] | a LAN link between two hubs: its frames, acknowledgements and deadlines |
//! | [`msg`] | the one registry and codec of the messages inside a session (data, ping, info, manifest, ...) |
//!
//! Nothing here opens a socket, reads a clock or draws randomness (`clippy.toml` enforces the
//! last two): callers pass time in and perform the returned actions.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod agent;
pub mod audit;
mod codec;
mod id;
pub mod link;
pub mod msg;
pub mod relay;
#[cfg(feature = "noise")]
pub mod session;
pub mod trust;

pub use id::HubId;
pub use relay::close::CloseCode;
pub use relay::frame::{Frame, FrameError, FrameType};
pub use relay::room::{Action, ConnId, Room, RoomConfig, RoomError};
