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

use std::sync::{Arc, RwLock};

use shared_proto::trust::login::Credentials;

/// This hub's credentials as its relay connection, LAN path and peer layer read them: a
/// certificate renewal replaces them for all of them while the hub runs (the relay sees the new
/// certificate at its next login, LAN peers at their next link).
#[derive(Debug, Clone)]
pub struct CredentialsCell(Arc<RwLock<Arc<Credentials>>>);

impl CredentialsCell {
    /// A cell holding `credentials`.
    pub fn new(credentials: Arc<Credentials>) -> Self {
        CredentialsCell(Arc::new(RwLock::new(credentials)))
    }

    /// The credentials now.
    pub fn get(&self) -> Arc<Credentials> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Replaces them (a renewed certificate; the hub id and keys stay).
    pub fn replace(&self, credentials: Arc<Credentials>) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = credentials;
    }
}

impl From<Arc<Credentials>> for CredentialsCell {
    fn from(credentials: Arc<Credentials>) -> Self {
        CredentialsCell::new(credentials)
    }
}
