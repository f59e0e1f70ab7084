//! Hub <-> hub, end to end through the relay (feature `noise`; the Worker does not carry it).
//!
//! - [`noise`]: `Noise_IK_25519_ChaChaPoly_BLAKE2s` handshakes (typestate) and the transport with
//!   an explicit counter and replay window;
//! - [`peer`]: the session layer: sessions on demand, certificate fetch, fragmentation, rekey;
//! - [`pairing`]: joining a cluster with a one-time token, over one Noise IK round trip to the
//!   token's issuer.

pub mod noise;
pub mod pairing;
pub mod peer;
