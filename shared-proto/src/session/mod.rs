//! Hub <-> hub, end to end through the relay (feature `noise`; the Worker does not carry it).
//!
//! - [`payload`]: the one registry of peer payloads (the first byte of what hubs send each other);
//! - [`noise`]: `Noise_IK_25519_ChaChaPoly_BLAKE2s` handshakes (typestate) and the transport with
//!   an explicit counter and replay window;
//! - [`peer`]: the session layer: sessions on demand, certificate fetch, fragmentation, rekey;
//! - [`rpc`]: requests and answers between hubs over the sessions: tokens, deadlines, cancel,
//!   answers matched, every message decoded once into an owned value;
//! - [`paths`]: what the relay says of the other hubs, and what it means for requests: whose
//!   path came back (what waits is sent again), and who is not to be asked;
//! - [`core`]: the three put together, as every hub runs them (native and browser);
//! - [`pairing`]: joining a cluster with a one-time token, over one Noise IK round trip to the
//!   token's issuer.

pub mod core;
pub mod noise;
pub mod pairing;
pub mod paths;
pub mod payload;
pub mod peer;
pub mod rpc;

/// What the session tests share: a cluster CA and hubs with their certificates.
#[cfg(test)]
pub(crate) mod testing {
    use ed25519_dalek::SigningKey;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use crate::trust::cert::tests::request;
    pub(crate) use crate::trust::cert::tests::NOW;
    use crate::trust::{ClusterCa, PeerCertificate, VerifiedPeer};
    use crate::HubId;

    use super::noise::tests::x25519_public;
    use super::noise::LocalIdentity;
    use super::peer::PeerSessions;

    /// Hub 1 and hub 2 of the tests.
    pub(crate) const A: HubId = HubId([1; 16]);
    pub(crate) const B: HubId = HubId([2; 16]);

    /// The tests' cluster CA.
    pub(crate) fn ca() -> ClusterCa {
        ClusterCa::from_secret(&[5; 32])
    }

    /// The Noise identity of hub `id` (its id is `[id; 16]`), and its verified certificate.
    pub(crate) fn identity(id: u8) -> (LocalIdentity, VerifiedPeer) {
        identity_issued_by(id, &ca())
    }

    /// [`identity`] with a certificate `signer` issued (the CA, or an admin: a chain).
    pub(crate) fn identity_issued_by(id: u8, signer: &ClusterCa) -> (LocalIdentity, VerifiedPeer) {
        let static_secret = [id; 32];
        let identity = SigningKey::from_bytes(&[id.wrapping_add(100); 32]);
        let mut req = request(id, &identity);
        req.noise_key = x25519_public(&static_secret);
        let cert_der = signer
            .issue(&req, &mut StdRng::seed_from_u64(u64::from(id)))
            .unwrap();
        let cert = PeerCertificate::from_der(&cert_der)
            .unwrap()
            .verify(&ca().public_key(), NOW, None)
            .unwrap();
        let local = LocalIdentity {
            cluster: ca().cluster_id(),
            ca_key: ca().public_key(),
            static_secret: static_secret.into(),
            cert_der,
        };
        (local, cert)
    }

    /// The sessions of hub `id` (its id is `[id; 16]`), and its verified certificate.
    pub(crate) fn sessions(id: u8) -> (PeerSessions, VerifiedPeer) {
        let (local, cert) = identity(id);
        (PeerSessions::new(local, HubId([id; 16])), cert)
    }
}
