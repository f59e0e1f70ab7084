//! Fixtures shared by the fuzz targets: a fixed cluster, a hub in it, a fixed clock and seeded
//! randomness, so that every input is judged against the same state.

use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::SeedableRng;
use shared_proto::session::noise::LocalIdentity;
use shared_proto::trust::{CertificateRequest, ClusterCa, TrustLevel};
use shared_proto::HubId;

/// The clock every target runs at (Unix ms, 2026-11-01).
pub const NOW: u64 = 1_793_491_200_000;

/// The cluster CA of the fixtures.
pub fn ca() -> ClusterCa {
    ClusterCa::from_secret(&[7; 32])
}

/// The fixture cluster's id, computed once (deriving the CA key per input would dominate).
pub fn cluster() -> shared_proto::trust::ClusterId {
    static CLUSTER: std::sync::OnceLock<shared_proto::trust::ClusterId> =
        std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| ca().cluster_id()).clone()
}

/// The fixture CA's public key, computed once.
pub fn ca_key() -> ed25519_dalek::VerifyingKey {
    static KEY: std::sync::OnceLock<ed25519_dalek::VerifyingKey> = std::sync::OnceLock::new();
    *KEY.get_or_init(|| ca().public_key())
}

/// Seeded randomness.
pub fn rng() -> StdRng {
    StdRng::seed_from_u64(0x5eed)
}

/// Hub 1 of the fixture cluster, made once (signing its certificate per input would dominate
/// the run).
pub fn issuer() -> LocalIdentity {
    static ISSUER: std::sync::OnceLock<LocalIdentity> = std::sync::OnceLock::new();
    ISSUER.get_or_init(|| hub(1)).clone()
}

/// Hub `b` of the fixture cluster: its Noise identity (certificate valid around [`NOW`]).
pub fn hub(b: u8) -> LocalIdentity {
    let ca = ca();
    let secret = [b; 32];
    let noise_key = shared_proto::session::noise::public_key(&secret).unwrap_or([0; 32]);
    let identity = SigningKey::from_bytes(&[b.wrapping_add(100); 32]);
    let req = CertificateRequest {
        hub_id: HubId([b; 16]),
        name: format!("hub {b}"),
        trust: TrustLevel::Full,
        roles: vec![],
        identity_key: identity.verifying_key(),
        noise_key,
        not_before_ms: NOW - 86_400_000,
        not_after_ms: NOW + 86_400_000,
    };
    let cert_der = ca.issue(&req, &mut rng()).unwrap_or_default();
    LocalIdentity {
        cluster: ca.cluster_id(),
        ca_key: ca.public_key(),
        static_secret: secret.into(),
        cert_der,
    }
}
