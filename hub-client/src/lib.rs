//! The hub: its connection to the cluster's relay, and `hub relay`, the relay run natively.
//!
//! - [`relay`]: the relay client (connect, hello, send, receive, presence, keepalive, reconnect
//!   with backoff and jitter, clean shutdown), over any WebSocket stream/sink;
//! - [`peers`]: end-to-end Noise sessions with every other hub, over the relay connection;
//! - [`native_relay`]: the relay server over tokio, sharing the Worker's room logic;
//! - [`home`]: the data directory: keys, certificate, CA (founder), revocation list;
//! - [`store`]: the SQLite store (migrations, peers, pairing tokens stored hashed);
//! - [`join`]: joining a cluster with a pairing token, through the relay;
//! - [`daemon`]: `hub run`, the long-running hub, and [`api`], its local admin HTTP API;
//! - [`backoff`]: reconnect delays.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod backoff;
pub mod daemon;
pub mod home;
pub mod join;
pub mod native_relay;
pub mod peers;
pub mod relay;
pub mod store;

pub use relay::{RelayClient, RelayConfig, RelayError, RelayEvent};

/// The wall clock as Unix milliseconds (0 before 1970), the time the sans-IO core is given.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
