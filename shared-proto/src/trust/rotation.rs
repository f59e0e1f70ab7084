//! Rotating the cluster CA key: the **successor document** (docs/PROTOCOL.md section 9, "Rotation
//! of the CA key").
//!
//! The old CA signs, in the envelope of the other signed documents (magic `HRSC`, format 1):
//!
//! ```text
//! entries = new_ca_key: [32] | grace_until_ms: u64 |
//!           manifest_len: u32 | manifest | revocations_len: u32 | revocations |
//!           count x (cert_len: u16 | cert)
//! ```
//!
//! `serial` is 1 and `count` the number of certificates: one per member the founder could
//! renew, issued by the new CA for the member's hub id, name and keys. The manifest and the
//! revocation list (empty: none) are the new cluster's, signed by the new CA. Only the root signs
//! one (an admin's signature does not count). The cluster id follows the CA key, so the new
//! cluster is another room: the old room hands the document to its members until
//! `grace_until_ms`, and refuses every login after that.

use ed25519_dalek::VerifyingKey;

use super::renewal::{same_hub, RenewalError};
use super::signed::{open, seal, SUCCESSOR_MAGIC};
use super::{
    ClusterCa, ClusterId, Manifest, RevocationList, TrustError, VerifiedManifest, VerifiedPeer,
    VerifiedRevocations,
};
use crate::codec::Reader;

const WHAT: &str = "successor document";

/// What the old CA signs when it hands the cluster to a new CA key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Successor {
    /// The new CA public key (the new cluster id is its SHA-256, base32).
    pub new_ca_key: VerifyingKey,
    /// Until when (Unix ms) the old room hands the document out; after it, it refuses logins.
    pub grace_until_ms: u64,
    /// The new cluster's manifest, signed by the new CA.
    pub manifest: Vec<u8>,
    /// The new cluster's revocation list, signed by the new CA (`None`: none issued).
    pub revocations: Option<Vec<u8>>,
    /// Each member's certificate from the new CA (DER).
    pub certificates: Vec<Vec<u8>>,
}

impl Successor {
    /// Signs the document with the old CA (the root: an admin is refused), issued at `now_ms`.
    pub fn sign(&self, old: &ClusterCa, now_ms: u64) -> Result<Vec<u8>, TrustError> {
        if old.admin_certificate().is_some() {
            return Err(TrustError::NotAdmin("only the founder rotates the CA key"));
        }
        let too_long = || TrustError::Malformed("successor document (a part too long)");
        let mut entries = Vec::new();
        entries.extend_from_slice(self.new_ca_key.as_bytes());
        entries.extend_from_slice(&self.grace_until_ms.to_be_bytes());
        for doc in [Some(&self.manifest), self.revocations.as_ref()] {
            let doc = doc.map_or(&[][..], |d| d.as_slice());
            let len = u32::try_from(doc.len()).map_err(|_| too_long())?;
            entries.extend_from_slice(&len.to_be_bytes());
            entries.extend_from_slice(doc);
        }
        for cert in &self.certificates {
            let len = u16::try_from(cert.len()).map_err(|_| too_long())?;
            entries.extend_from_slice(&len.to_be_bytes());
            entries.extend_from_slice(cert);
        }
        seal(
            old,
            SUCCESSOR_MAGIC,
            1,
            now_ms,
            self.certificates.len(),
            &entries,
        )
    }

    /// Parses and verifies a successor document against the old cluster's id: signed by its CA
    /// (not an admin), naming another CA key, with the new cluster's manifest (and list) signed
    /// by that key. The certificates are checked one by one, by [`VerifiedSuccessor::certificate_for`].
    pub fn verify(bytes: &[u8], old: &ClusterId) -> Result<VerifiedSuccessor, TrustError> {
        let env = open(bytes, SUCCESSOR_MAGIC, WHAT)?;
        if super::signed::check_signature(&env, old, WHAT)?.is_some() {
            return Err(TrustError::NotAdmin(
                "a successor document signed by an admin",
            ));
        }
        let m = |_| TrustError::Malformed(WHAT);
        let mut r = Reader::new(env.entries);
        let new_ca_key = VerifyingKey::from_bytes(&r.array::<32>().map_err(m)?)
            .map_err(|_| TrustError::Malformed(WHAT))?;
        if old.names(&new_ca_key) {
            return Err(TrustError::Malformed(
                "successor document (the same CA key)",
            ));
        }
        let grace_until_ms = r.u64().map_err(m)?;
        let new = ClusterId::from_ca_key(&new_ca_key);
        let len = r.u32().map_err(m)? as usize;
        let manifest = Manifest::verify(r.take(len).map_err(m)?, &new)?;
        let len = r.u32().map_err(m)? as usize;
        let revocations = match r.take(len).map_err(m)? {
            [] => None,
            list => Some(RevocationList::verify(list, &new)?),
        };
        let mut certificates = Vec::with_capacity(env.count);
        for _ in 0..env.count {
            let len = usize::from(r.u16().map_err(m)?);
            certificates.push(r.take(len).map_err(m)?.to_vec());
        }
        if !r.is_empty() {
            return Err(TrustError::Malformed(WHAT));
        }
        Ok(VerifiedSuccessor {
            old_ca_key: env.ca_key,
            new_ca_key,
            grace_until_ms,
            manifest,
            revocations,
            certificates,
            bytes: bytes.to_vec(),
        })
    }
}

/// A successor document whose old CA signature, new manifest and new list were checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSuccessor {
    old_ca_key: VerifyingKey,
    new_ca_key: VerifyingKey,
    grace_until_ms: u64,
    manifest: VerifiedManifest,
    revocations: Option<VerifiedRevocations>,
    certificates: Vec<Vec<u8>>,
    bytes: Vec<u8>,
}

impl VerifiedSuccessor {
    /// The cluster it moves from (whose CA signed it).
    pub fn old_cluster(&self) -> ClusterId {
        ClusterId::from_ca_key(&self.old_ca_key)
    }
    /// The new CA key.
    pub fn new_ca_key(&self) -> &VerifyingKey {
        &self.new_ca_key
    }
    /// The new cluster.
    pub fn new_cluster(&self) -> ClusterId {
        ClusterId::from_ca_key(&self.new_ca_key)
    }
    /// Until when (Unix ms) members of the old cluster may move.
    pub fn grace_until_ms(&self) -> u64 {
        self.grace_until_ms
    }
    /// The new cluster's manifest.
    pub fn manifest(&self) -> &VerifiedManifest {
        &self.manifest
    }
    /// The new cluster's revocation list, if one was issued.
    pub fn revocations(&self) -> Option<&VerifiedRevocations> {
        self.revocations.as_ref()
    }
    /// How many members it carries a certificate for.
    pub fn certificates(&self) -> usize {
        self.certificates.len()
    }
    /// The signed bytes, to store and pass on.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The new cluster's certificate for the hub that holds `current`: the one for its hub id,
    /// verified against the new CA at `now_ms`, for the same name and keys. Refused after the grace period, or if the document carries
    /// none for it (the founder knew no certificate of it: it pairs again).
    pub fn certificate_for(
        &self,
        current: &VerifiedPeer,
        now_ms: u64,
    ) -> Result<VerifiedPeer, RenewalError> {
        if now_ms > self.grace_until_ms {
            return Err(RenewalError::GraceOver);
        }
        let der = self
            .certificates
            .iter()
            .find(|der| {
                super::PeerCertificate::from_der(der).is_ok_and(|c| c.hub_id() == current.hub_id())
            })
            .ok_or(RenewalError::NotMine)?;
        same_hub(current, der, &self.new_ca_key, now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::cert::tests::{admin, request, DAY_MS, NOW};
    use crate::trust::{renewal, ManifestMember, PeerCertificate, Revocation, TrustLevel};
    use ed25519_dalek::SigningKey;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn verified(ca: &ClusterCa, der: &[u8]) -> VerifiedPeer {
        PeerCertificate::from_der(der)
            .unwrap()
            .verify(&ca.public_key(), NOW, None)
            .unwrap()
    }

    /// The old CA hands the cluster to a new one: each member finds its own certificate from the
    /// new CA; another's, one after the grace period, and forged or admin-signed documents are
    /// refused.
    #[test]
    fn a_member_moves_with_the_certificate_the_successor_carries() {
        let mut rng = StdRng::seed_from_u64(7);
        let old = ClusterCa::generate(&mut rng);
        let new = ClusterCa::generate(&mut rng);
        let keys: Vec<SigningKey> = (0..2).map(|_| SigningKey::generate(&mut rng)).collect();
        let current: Vec<VerifiedPeer> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                verified(
                    &old,
                    &old.issue(&request(i as u8 + 1, k), &mut rng).unwrap(),
                )
            })
            .collect();
        let certificates: Vec<Vec<u8>> = current
            .iter()
            .map(|c| {
                new.issue(&renewal::renewed(c, None, NOW), &mut rng)
                    .unwrap()
            })
            .collect();
        let manifest = Manifest {
            epoch: 5,
            issued_at_ms: NOW,
            members: current
                .iter()
                .zip(&certificates)
                .map(|(c, der)| ManifestMember {
                    hub_id: c.hub_id(),
                    fingerprint: crate::trust::fingerprint(der),
                    trust: TrustLevel::AgentDispatch,
                    roles: vec![],
                })
                .collect(),
        }
        .sign(&new)
        .unwrap();
        let list = RevocationList {
            version: 3,
            issued_at_ms: NOW,
            entries: vec![Revocation {
                fingerprint: [1; 32],
                key_hash: [2; 32],
                revoked_at_ms: NOW,
                reason: "lost".into(),
            }],
        }
        .sign(&new)
        .unwrap();
        let successor = Successor {
            new_ca_key: new.public_key(),
            grace_until_ms: NOW + DAY_MS,
            manifest,
            revocations: Some(list),
            certificates,
        };
        let bytes = successor.sign(&old, NOW).unwrap();
        let v = Successor::verify(&bytes, &old.cluster_id()).unwrap();
        assert_eq!(v.new_cluster(), new.cluster_id());
        assert_eq!(v.old_cluster(), old.cluster_id());
        assert_eq!(v.manifest().manifest().epoch, 5);
        assert_eq!(v.revocations().unwrap().version(), 3);
        assert_eq!(v.certificates(), 2);
        for c in &current {
            let moved = v.certificate_for(c, NOW + 1000).unwrap();
            assert_eq!(moved.hub_id(), c.hub_id());
            assert_eq!(moved.identity_key(), c.identity_key());
            assert_eq!(moved.noise_key(), c.noise_key());
        }
        // After the grace period, nobody moves.
        assert!(v.certificate_for(&current[0], NOW + 2 * DAY_MS).is_err());
        // A hub the document has no certificate for does not move.
        let stranger = verified(&old, &old.issue(&request(9, &keys[0]), &mut rng).unwrap());
        assert!(matches!(
            v.certificate_for(&stranger, NOW),
            Err(RenewalError::NotMine)
        ));
        // Checked against another cluster, or changed: refused.
        assert_eq!(
            Successor::verify(&bytes, &new.cluster_id()).unwrap_err(),
            TrustError::ForeignCa
        );
        let mut tampered = bytes.clone();
        tampered[60] ^= 1;
        assert!(Successor::verify(&tampered, &old.cluster_id()).is_err());
        // An admin cannot sign one, and one sealed under an admin is refused.
        let second = admin(&old, 30, NOW + DAY_MS);
        assert!(matches!(
            successor.sign(&second, NOW),
            Err(TrustError::NotAdmin(_))
        ));
        let forged = seal(&second, SUCCESSOR_MAGIC, 1, NOW, 0, &[0; 40]).unwrap();
        assert!(matches!(
            Successor::verify(&forged, &old.cluster_id()),
            Err(TrustError::NotAdmin(_))
        ));
        // A manifest the new CA did not sign is refused.
        let wrong = Successor {
            manifest: Manifest {
                epoch: 1,
                issued_at_ms: NOW,
                members: vec![],
            }
            .sign(&old)
            .unwrap(),
            ..successor.clone()
        };
        assert_eq!(
            Successor::verify(&wrong.sign(&old, NOW).unwrap(), &old.cluster_id()).unwrap_err(),
            TrustError::ForeignCa
        );
    }
}
