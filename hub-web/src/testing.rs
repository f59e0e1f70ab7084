//! What the unit tests share: a cluster CA and hubs with their keys and certificates.

use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::SeedableRng;
use shared_proto::session::noise::public_key;
use shared_proto::trust::{
    CertificateRequest, ClusterCa, Manifest, ManifestMember, PeerCertificate, TrustLevel,
    VerifiedPeer,
};
use shared_proto::HubId;

/// The tests' clock (Unix ms).
pub(crate) const NOW: u64 = 1_800_000_000_000;
pub(crate) const DAY_MS: u64 = 86_400_000;

/// A hub of the tests: its keys and certificate.
pub(crate) struct TestHub {
    pub(crate) identity: SigningKey,
    pub(crate) noise_secret: [u8; 32],
    pub(crate) cert: VerifiedPeer,
}

/// The tests' cluster CA (`seed` tells two apart).
pub(crate) fn ca(seed: u8) -> ClusterCa {
    ClusterCa::from_secret(&[seed; 32])
}

/// Hub `id` (its id is `[id; 16]`, its name `hub ID`) of `ca`'s cluster at `trust`, with the
/// role `desk`, valid a year.
pub(crate) fn hub(ca: &ClusterCa, id: u8, trust: TrustLevel) -> TestHub {
    hub_with(ca, id, trust, "desk", (NOW - DAY_MS, NOW + 365 * DAY_MS))
}

/// [`hub`] with one `role` and a validity (`not_before`, `not_after`).
pub(crate) fn hub_with(
    ca: &ClusterCa,
    id: u8,
    trust: TrustLevel,
    role: &str,
    (not_before_ms, not_after_ms): (u64, u64),
) -> TestHub {
    let identity = SigningKey::from_bytes(&[id.wrapping_add(100); 32]);
    let noise_secret = [id; 32];
    let request = CertificateRequest {
        hub_id: HubId([id; 16]),
        name: format!("hub {id}"),
        trust,
        roles: vec![role.into()],
        identity_key: identity.verifying_key(),
        noise_key: public_key(&noise_secret).unwrap(),
        not_before_ms,
        not_after_ms,
    };
    let der = ca
        .issue(&request, &mut StdRng::seed_from_u64(u64::from(id)))
        .unwrap();
    let cert = PeerCertificate::from_der(&der)
        .unwrap()
        .verify(&ca.public_key(), NOW, None)
        .unwrap();
    TestHub {
        identity,
        noise_secret,
        cert,
    }
}

/// The cluster's manifest listing `hubs`, signed.
pub(crate) fn manifest(ca: &ClusterCa, hubs: &[&TestHub]) -> Vec<u8> {
    Manifest {
        epoch: 1,
        issued_at_ms: NOW,
        members: hubs
            .iter()
            .map(|h| ManifestMember {
                hub_id: h.cert.hub_id(),
                fingerprint: h.cert.fingerprint(),
                trust: h.cert.trust(),
                roles: h.cert.roles().to_vec(),
            })
            .collect(),
    }
    .sign(ca)
    .unwrap()
}

/// The kept state of hub `me` of `ca`'s cluster, with `cert_of`'s certificate (`me`'s own, or
/// another's to see it refused), and a manifest listing `members`.
pub(crate) fn kept(
    ca: &ClusterCa,
    me: &TestHub,
    cert_of: &TestHub,
    members: &[&TestHub],
) -> crate::kept::Kept {
    crate::kept::Kept {
        format: crate::kept::KEPT_FORMAT,
        relay_url: "wss://relay.example".into(),
        identity_secret: hex::encode(me.identity.to_bytes()),
        noise_secret: hex::encode(me.noise_secret),
        ca_key: hex::encode(ca.public_key().as_bytes()),
        certificate: hex::encode(cert_of.cert.der()),
        manifest: hex::encode(manifest(ca, members)),
        revocations: None,
        sharing: "local".into(),
        audit_key: hex::encode([3u8; 32]),
        audit_seq: 0,
        audit_mac: hex::encode([0u8; 32]),
        revoked: None,
    }
}
