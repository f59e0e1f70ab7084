//! What the browser hub keeps between visits: its keys, certificate and the cluster's signed
//! documents, the phone app's sharing policy and the head of its audit chain. The page stores it
//! as one JSON document in IndexedDB (bytes as hex) and hands it back to [`Kept::load`]; nothing
//! in it is trusted without checking: the certificate and documents are verified against the CA
//! key again at every load.

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use shared_proto::agent::policy::Sharing;
use shared_proto::session::noise::{public_key, LocalIdentity};
use shared_proto::trust::login::Credentials;
use shared_proto::trust::{
    ClusterId, Manifest, PeerCertificate, RevocationList, VerifiedManifest, VerifiedPeer,
    VerifiedRevocations,
};

use crate::WebError;

/// The format of [`Kept`] this build writes and reads.
pub const KEPT_FORMAT: u32 = 1;

/// The kept state, as stored (see the module docs).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kept {
    /// [`KEPT_FORMAT`].
    pub format: u32,
    /// The relay's base URL (from the pairing token).
    pub relay_url: String,
    /// The Ed25519 identity secret (hex).
    pub identity_secret: String,
    /// The X25519 Noise static secret (hex).
    pub noise_secret: String,
    /// The cluster CA's public key (hex).
    pub ca_key: String,
    /// This hub's certificate (DER, hex).
    pub certificate: String,
    /// The signed manifest from pairing (hex).
    pub manifest: String,
    /// The newest signed revocation list held (hex), if any.
    #[serde(default)]
    pub revocations: Option<String>,
    /// The phone app's sharing policy (`local`, `cluster`, `roles:..`, `hubs:..`,
    /// `principals:..`): `local` (shared with nobody) until the person holding the phone says
    /// otherwise.
    pub sharing: String,
    /// The audit chain's HMAC key (hex).
    pub audit_key: String,
    /// The last audit entry's sequence number (0: none yet).
    pub audit_seq: u64,
    /// The last audit entry's MAC (hex; zeros before the first).
    pub audit_mac: String,
    /// Why the cluster cut this hub off, once it did (the relay refused it as revoked, or a
    /// revocation list named it): it connects no more.
    #[serde(default)]
    pub revoked: Option<String>,
}

/// [`Kept`], checked and decoded.
#[derive(Debug)]
pub struct Loaded {
    /// To log in to the relay.
    pub credentials: Credentials,
    /// For the Noise sessions.
    pub identity: LocalIdentity,
    /// This hub's certificate, verified (revoked or not: see [`Loaded::revoked`]).
    pub certificate: VerifiedPeer,
    /// The manifest.
    pub manifest: VerifiedManifest,
    /// The revocation list held.
    pub revocations: Option<VerifiedRevocations>,
    /// The phone app's sharing policy.
    pub sharing: Sharing,
    /// Whether the list held revokes this hub.
    pub revoked: bool,
    /// The audit chain's key.
    pub audit_key: [u8; 32],
}

fn bytes<const N: usize>(hex_text: &str, what: &'static str) -> Result<[u8; N], WebError> {
    let v = hex::decode(hex_text).map_err(|_| WebError::Kept(what))?;
    v.try_into().map_err(|_| WebError::Kept(what))
}

fn vec(hex_text: &str, what: &'static str) -> Result<Vec<u8>, WebError> {
    hex::decode(hex_text).map_err(|_| WebError::Kept(what))
}

impl Kept {
    /// Reads the stored JSON.
    pub fn parse(json: &str) -> Result<Self, WebError> {
        let kept: Kept = serde_json::from_str(json).map_err(|_| WebError::Kept("the document"))?;
        if kept.format != KEPT_FORMAT {
            return Err(WebError::KeptFormat(kept.format));
        }
        Ok(kept)
    }

    /// The stored JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Checks everything against the CA key at `now_ms`.
    pub fn load(&self, now_ms: u64) -> Result<Loaded, WebError> {
        let identity = SigningKey::from_bytes(&bytes(&self.identity_secret, "identity key")?);
        let noise_secret: [u8; 32] = bytes(&self.noise_secret, "Noise key")?;
        let ca_key = ed25519_dalek::VerifyingKey::from_bytes(&bytes(&self.ca_key, "CA key")?)
            .map_err(|_| WebError::Kept("CA key"))?;
        let cluster = ClusterId::from_ca_key(&ca_key);
        let revocations = match &self.revocations {
            Some(list) => Some(RevocationList::verify(
                &vec(list, "revocation list")?,
                &cluster,
            )?),
            None => None,
        };
        let cert_der = vec(&self.certificate, "certificate")?;
        let parsed = PeerCertificate::from_der(&cert_der)?;
        // Checked without the list first: a revoked hub still loads, to say it was revoked.
        let certificate = parsed.clone().verify(&ca_key, now_ms, None)?;
        let revoked = self.revoked.is_some()
            || parsed
                .verify(&ca_key, now_ms, revocations.as_ref())
                .is_err();
        if certificate.identity_key() != &identity.verifying_key()
            || *certificate.noise_key() != public_key(&noise_secret)?
        {
            return Err(WebError::Kept("keys that the certificate does not name"));
        }
        let manifest = Manifest::verify(&vec(&self.manifest, "manifest")?, &cluster)?;
        let sharing = self
            .sharing
            .parse()
            .map_err(|_| WebError::Kept("sharing policy"))?;
        Ok(Loaded {
            credentials: Credentials {
                ca_key,
                cert_der: cert_der.clone(),
                hub_id: certificate.hub_id(),
                identity,
            },
            identity: LocalIdentity {
                cluster,
                ca_key,
                static_secret: noise_secret.into(),
                cert_der,
            },
            certificate,
            manifest,
            revocations,
            sharing,
            revoked,
            audit_key: bytes(&self.audit_key, "audit key")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use shared_proto::trust::{Revocation, TrustLevel};

    use super::*;
    use crate::testing::{ca, hub, kept, manifest, NOW};

    #[test]
    fn kept_state_loads_only_as_the_ca_signed_it_and_for_the_keys_it_names() {
        let ca1 = ca(1);
        let phone = hub(&ca1, 9, TrustLevel::AgentDispatch);
        let other = hub(&ca1, 8, TrustLevel::Full);
        let good = kept(&ca1, &phone, &phone, &[&phone]);
        let again = Kept::parse(&good.to_json()).unwrap();
        let loaded = again.load(NOW).unwrap();
        assert_eq!(loaded.certificate.hub_id(), phone.cert.hub_id());
        assert!(!loaded.revoked);
        assert_eq!(loaded.sharing, Sharing::LocalOnly);

        // Another hub's certificate with this hub's keys.
        let swapped = kept(&ca1, &phone, &other, &[&phone]);
        assert!(matches!(swapped.load(NOW), Err(WebError::Kept(_))));
        // A certificate of another cluster's CA, under this one's key.
        let foreign = hub(&ca(2), 9, TrustLevel::Full);
        let mut forged = kept(&ca1, &phone, &phone, &[&phone]);
        forged.certificate = hex::encode(foreign.cert.der());
        assert!(matches!(forged.load(NOW), Err(WebError::Trust(_))));
        // A manifest of another cluster.
        let mut wrong = kept(&ca1, &phone, &phone, &[&phone]);
        wrong.manifest = hex::encode(manifest(&ca(2), &[&phone]));
        assert!(matches!(wrong.load(NOW), Err(WebError::Trust(_))));
        // Expired.
        assert!(matches!(
            good.load(NOW + 400 * 86_400_000),
            Err(WebError::Trust(_))
        ));
        // A newer page's format.
        let mut newer = good.clone();
        newer.format = KEPT_FORMAT + 1;
        assert!(matches!(
            Kept::parse(&newer.to_json()),
            Err(WebError::KeptFormat(_))
        ));
    }

    #[test]
    fn a_hub_the_kept_list_revokes_loads_revoked() {
        let ca1 = ca(1);
        let phone = hub(&ca1, 9, TrustLevel::AgentDispatch);
        let list = RevocationList {
            version: 1,
            issued_at_ms: NOW,
            entries: vec![Revocation {
                fingerprint: phone.cert.fingerprint(),
                key_hash: phone.cert.key_hash(),
                revoked_at_ms: NOW,
                reason: "lost".into(),
            }],
        }
        .sign(&ca1)
        .unwrap();
        let mut kept = kept(&ca1, &phone, &phone, &[&phone]);
        assert!(!kept.load(NOW).unwrap().revoked);
        kept.revocations = Some(hex::encode(&list));
        assert!(kept.load(NOW).unwrap().revoked);
        // Told by the relay alone (a close with the revoked code), it stays revoked.
        kept.revocations = None;
        kept.revoked = Some("the relay refused this hub".into());
        assert!(kept.load(NOW).unwrap().revoked);
    }
}
