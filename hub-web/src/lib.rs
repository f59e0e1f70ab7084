//! A hub in the browser (a phone's, above all): the same sans-IO core as the native hub
//! (`shared_proto`'s relay client, Noise IK sessions, requests and calls, envelopes, sharing
//! policy and audit chain), compiled to wasm32 with wasm-bindgen. The page (`web/`) moves bytes
//! and time: it opens the WebSocket, hands every message and every timer to this crate, sends
//! what it is given, and keeps [`kept::Kept`] in IndexedDB; everything that decides is here.
//!
//! - [`join`]: pairing with a token from `hub invite`, byte for byte as `hub join` does;
//! - [`hub`]: the member hub: relay session, liveness, sessions, the operator's listings and
//!   calls, and the phone app served to the other hubs;
//! - [`phone`]: the phone app's tools and the checks every call of them passes;
//! - [`kept`]: what is kept between visits;
//! - [`bench`]: the handshake, as a benchmark (scripts/bench-phone);
//! - `web` (wasm32 only): the JavaScript bindings.

pub mod bench;
pub mod hub;
pub mod join;
pub mod kept;
pub mod phone;
#[cfg(test)]
mod testing;
#[cfg(target_arch = "wasm32")]
mod web;

use shared_proto::session::noise::NoiseError;
use shared_proto::session::pairing::PairingError;
use shared_proto::trust::TrustError;

/// What went wrong, for the person holding the phone.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebError {
    /// Pairing failed (a token that does not parse, refused, an answer that does not check out).
    #[error(transparent)]
    Pairing(#[from] PairingError),
    /// A certificate or signed document that does not verify.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// Noise keys.
    #[error(transparent)]
    Noise(#[from] NoiseError),
    /// The stored state is damaged.
    #[error("the stored hub state is damaged: {0}")]
    Kept(&'static str),
    /// The stored state was written by a newer page.
    #[error("the stored hub state has format {0}, which this page does not read: reload it")]
    KeptFormat(u32),
    /// The relay broke the protocol.
    #[error("relay protocol: {0}")]
    Relay(String),
    /// The issuing hub is not online at the relay.
    #[error("the hub that made the token is not online at the relay: start it and try again")]
    IssuerOffline,
    /// Not connected to the relay.
    #[error("not connected to the relay")]
    NotConnected,
    /// A request the page made that cannot be made.
    #[error("{0}")]
    Request(String),
}

/// Milliseconds since the Unix epoch of a JavaScript time (`Date.now()`), clamped.
pub fn ms(now: f64) -> u64 {
    if now.is_finite() && now > 0.0 {
        now as u64
    } else {
        0
    }
}
