//! The hub: its connection to the cluster's relay, its store, the running hub and its surfaces,
//! and `hub relay`, the relay run natively.
//!
//! | module | what |
//! |---|---|
//! | [`transport`] | the relay connection, the end-to-end Noise sessions over it, joining with a pairing token, reconnect delays (only this module touches sockets toward the cluster) |
//! | [`apps`] | the hub's apps: local MCP servers started on demand and driven with `rmcp` |
//! | [`node`] | the data directory (keys, certificate, the founder's CA), the SQLite store, and the files through which the CLI finds the running hub |
//! | [`hub`] | the running hub's state and the one service API that every surface calls |
//! | [`api`] | the local admin HTTP API (a surface), with the request and answer types the CLI shares |
//! | [`mcp`] | the MCP surface for agents (`hub mcp` on stdio, `/mcp` on the running hub) |
//! | [`daemon`] | `hub run`: the hub's relay connection and event loop, with its surfaces |
//! | [`relay_server`] | `hub relay`: the relay over tokio, sharing the Worker's room logic |
//! | [`web`] | the phone page (hub-web) this binary carries, for `hub web export` |
//!
//! Dependencies go one way: `daemon` -> `api` -> `mcp` -> `hub` -> `apps` -> `node` ->
//! `transport` (and `relay_server` -> `transport`); no module imports one above it.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod api;
pub mod apps;
pub mod daemon;
pub mod hub;
pub mod mcp;
pub mod node;
pub mod relay_server;
pub mod transport;
pub mod web;

pub use transport::relay::{RelayClient, RelayConfig, RelayError, RelayEvent};

/// The wall clock as Unix milliseconds (0 before 1970), the time the sans-IO core is given.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
