//! Everything that touches a socket toward the cluster: the relay connection, the end-to-end
//! sessions over it, joining with a pairing token, reconnect delays. A LAN link will sit beside
//! the relay connection here.
//!
//! - [`relay`]: the relay client (connect, hello, send, receive, presence, keepalive, reconnect
//!   with backoff and jitter, clean shutdown), over any WebSocket stream/sink;
//! - [`peers`]: end-to-end Noise sessions with every other hub, over the relay connection;
//! - [`join`]: joining a cluster with a pairing token, as a pairing guest of the relay;
//! - [`backoff`]: reconnect delays.

pub mod backoff;
pub mod join;
pub mod peers;
pub mod relay;
