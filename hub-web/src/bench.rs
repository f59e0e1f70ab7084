//! The handshake the browser hub runs, as a benchmark: `n` Noise IK handshakes between two hubs
//! meeting for the first time, both sides on this thread, certificate checks included (what a
//! phone does for each peer it reaches). The caller times it: `performance.now()` in the browser,
//! `Instant` natively (scripts/bench-phone compares the two). The two hubs come from
//! [`fixture`], made natively (issuing certificates is no part of a phone's work, and its code
//! stays out of the wasm module).

use rand_core::OsRng;
use serde::{Deserialize, Serialize};
use shared_proto::session::noise::{HandshakeReplay, Initiator, LocalIdentity, Responder};
use shared_proto::trust::{ClusterId, PeerCertificate};

/// A fixed clock inside the certificates' validity.
const NOW: u64 = 1_800_000_000_000;

/// Two hubs of one cluster: the CA key, and each hub's Noise secret and certificate (hex).
#[derive(Debug, Serialize, Deserialize)]
pub struct Fixture {
    ca_key: String,
    hubs: [(String, String); 2],
}

/// Two hubs for [`handshakes`], as JSON.
#[cfg(not(target_arch = "wasm32"))]
pub fn fixture() -> String {
    use ed25519_dalek::SigningKey;
    use shared_proto::session::noise::public_key;
    use shared_proto::trust::{CertificateRequest, ClusterCa, TrustLevel};
    use shared_proto::HubId;

    let ca = ClusterCa::from_secret(&[3; 32]);
    let hub = |id: u8| {
        let secret = [id; 32];
        let request = CertificateRequest {
            hub_id: HubId([id; 16]),
            name: format!("hub {id}"),
            trust: TrustLevel::Full,
            roles: Vec::new(),
            identity_key: SigningKey::from_bytes(&[id.wrapping_add(50); 32]).verifying_key(),
            noise_key: public_key(&secret).unwrap_or_default(),
            not_before_ms: NOW - 1_000,
            not_after_ms: NOW + 86_400_000,
        };
        let der = ca.issue(&request, &mut OsRng).unwrap_or_default();
        (hex::encode(secret), hex::encode(der))
    };
    let fixture = Fixture {
        ca_key: hex::encode(ca.public_key().as_bytes()),
        hubs: [hub(1), hub(2)],
    };
    serde_json::to_string(&fixture).unwrap_or_default()
}

fn identity(ca_key: &ed25519_dalek::VerifyingKey, hub: &(String, String)) -> Option<LocalIdentity> {
    let secret: [u8; 32] = hex::decode(&hub.0).ok()?.try_into().ok()?;
    Some(LocalIdentity {
        cluster: ClusterId::from_ca_key(ca_key),
        ca_key: *ca_key,
        static_secret: secret.into(),
        cert_der: hex::decode(&hub.1).ok()?,
    })
}

/// Runs `n` handshakes (both sides) between the hubs of `fixture` (JSON); how many completed.
pub fn handshakes(n: u32, fixture: &str) -> u32 {
    let Ok(f) = serde_json::from_str::<Fixture>(fixture) else {
        return 0;
    };
    let ca_key = hex::decode(&f.ca_key)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .and_then(|k| ed25519_dalek::VerifyingKey::from_bytes(&k).ok());
    let Some(ca_key) = ca_key else { return 0 };
    let (Some(a), Some(b)) = (identity(&ca_key, &f.hubs[0]), identity(&ca_key, &f.hubs[1])) else {
        return 0;
    };
    let Ok(b_cert) =
        PeerCertificate::from_der(&b.cert_der).and_then(|c| c.verify(&ca_key, NOW, None))
    else {
        return 0;
    };
    let mut replay = HandshakeReplay::default();
    let mut done = 0;
    for i in 0..n {
        let now = NOW + u64::from(i);
        let Ok((init, m1)) = Initiator::start(&a, &b_cert, now, &mut OsRng) else {
            continue;
        };
        let Ok((_, m2)) = Responder::accept(&b, &m1, now, None, &mut replay, None, &mut OsRng)
        else {
            continue;
        };
        if init.finish(&a, &m2, now, None).is_ok() {
            done += 1;
        }
    }
    done
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_handshake_completes_and_a_damaged_fixture_runs_none() {
        let fixture = super::fixture();
        assert_eq!(super::handshakes(3, &fixture), 3);
        assert_eq!(
            super::handshakes(3, &fixture.replace("\"ca_key\":\"", "\"ca_key\":\"00")),
            0
        );
    }
}
