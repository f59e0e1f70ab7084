//! Everything that touches a socket toward the cluster: the relay connection, the end-to-end
//! sessions over it, the direct links to hubs on the same LAN, joining with a pairing token,
//! reconnect delays.
//!
//! - [`relay`]: the relay client (connect, hello, send, receive, presence, keepalive, reconnect
//!   with backoff and jitter, clean shutdown), over any WebSocket stream/sink;
//! - [`peers`]: end-to-end Noise sessions with every other hub, and the router that sends each
//!   of their messages over a LAN link when one is up and over the relay otherwise;
//! - [`lan`]: mDNS discovery and direct TLS 1.3 links between hubs of the cluster on one LAN;
//! - [`join`]: joining a cluster with a pairing token, as a pairing guest of the relay;
//! - [`netwatch`]: changes of this host's links, addresses and routes (Linux), which the relay
//!   connection reacts to at once;
//! - [`backoff`]: reconnect delays.

pub mod backoff;
pub mod join;
pub mod lan;
pub mod netwatch;
pub mod peers;
pub mod relay;
