//! Hub <-> relay: the relay protocol v1 and the room that both relays run.
//!
//! - [`frame`]: the frame-type registry and its strict codec;
//! - [`close`]: the close codes the relay sends;
//! - [`path`]: the relay's URL layout;
//! - [`room`]: one cluster's room as a pure state machine that returns actions, with every
//!   deadline and bound of the protocol;
//! - [`client`]: the hub's side of a connection: its opening message (a member's login or a
//!   pairing guest's request) and what the relay's messages mean;
//! - [`liveness`]: when the hub probes its path to the relay and gives it up as dead.

pub mod client;
pub mod close;
pub mod frame;
pub mod liveness;
pub mod path;
pub mod rate;
pub mod room;
