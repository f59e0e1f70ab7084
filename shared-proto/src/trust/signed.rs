//! Documents the cluster CA or an admin signs: the manifest (who is a member) and the
//! revocation list.
//!
//! Both share one envelope, signed with Ed25519 over every byte before the signature, by the CA
//! (format 1) or by an admin hub's key under its admin certificate, which the envelope carries
//! (format 2):
//!
//! ```text
//! magic: [4] | format: u8 = 1 | ca_key: [32] | serial: u64 | issued_at_ms: u64 | count: u16 |
//! entries | signature: [64]
//! magic: [4] | format: u8 = 2 | ca_key: [32] | signer_len: u16 | signer: [signer_len] |
//! serial: u64 | issued_at_ms: u64 | count: u16 | entries | signature: [64]
//! ```
//!
//! A format-2 document verifies if `signer` is one admin certificate (DER) that the CA signed,
//! valid at `issued_at_ms`, and the signature verifies under its key. A revocation list that
//! revokes its signer, or that arrives while the held list revokes it, is refused
//! ([`VerifiedRevocations::supersede`], [`VerifiedRevocations::refuses_signer_of`]).
//!
//! The CA key travels inside, so anyone can check a document against a cluster id alone
//! (`ClusterId::names`), as the relay does. `serial` is the manifest's epoch or the revocation
//! list's version: monotonic, and a document never replaces one with an equal or higher serial.
//!
//! - manifest (`magic = "HRMF"`), entry: `hub_id: [16] | fingerprint: [32] | trust: u8 |
//!   roles: u8 count, then str8 each`;
//! - revocation list (`magic = "HRRL"`), entry: `fingerprint: [32] | key_hash: [32] |
//!   revoked_at_ms: u64 | reason: str8`.

use ed25519_dalek::{Signature, VerifyingKey};

use super::{ClusterCa, ClusterId, PeerCertificate, TrustError, TrustLevel};
use crate::codec::{put_short_str, CodecError, Reader};
use crate::relay::frame::HubId;

const FORMAT: u8 = 1;
const FORMAT_ADMIN: u8 = 2;
const MANIFEST_MAGIC: &[u8; 4] = b"HRMF";
const REVOCATION_MAGIC: &[u8; 4] = b"HRRL";
pub(super) const SUCCESSOR_MAGIC: &[u8; 4] = b"HRSC";
/// Most entries in one document.
pub const MAX_ENTRIES: usize = 4096;

/// The fields every signed document has, parsed but not verified.
#[derive(Debug)]
pub(super) struct Envelope<'a> {
    pub(super) ca_key: VerifyingKey,
    signer: Option<&'a [u8]>,
    serial: u64,
    issued_at_ms: u64,
    pub(super) count: usize,
    pub(super) entries: &'a [u8],
    signed: &'a [u8],
    signature: Signature,
}

fn malformed(what: &'static str) -> impl Fn(CodecError) -> TrustError {
    move |_| TrustError::Malformed(what)
}

pub(super) fn open<'a>(
    bytes: &'a [u8],
    magic: &[u8; 4],
    what: &'static str,
) -> Result<Envelope<'a>, TrustError> {
    if bytes.len() < 64 {
        return Err(TrustError::Malformed(what));
    }
    let (signed, sig) = bytes.split_at(bytes.len() - 64);
    let mut r = Reader::new(signed);
    let m = malformed(what);
    if r.array::<4>().map_err(&m)? != *magic {
        return Err(TrustError::Malformed(what));
    }
    let format = r.u8().map_err(&m)?;
    if format != FORMAT && format != FORMAT_ADMIN {
        return Err(TrustError::Malformed(what));
    }
    let ca_key = VerifyingKey::from_bytes(&r.array::<32>().map_err(&m)?)
        .map_err(|_| TrustError::Malformed(what))?;
    let signer = if format == FORMAT_ADMIN {
        let len = usize::from(r.u16().map_err(&m)?);
        Some(r.take(len).map_err(&m)?)
    } else {
        None
    };
    let serial = r.u64().map_err(&m)?;
    let issued_at_ms = r.u64().map_err(&m)?;
    let count = usize::from(r.u16().map_err(&m)?);
    if count > MAX_ENTRIES {
        return Err(TrustError::Malformed(what));
    }
    let mut sig_bytes = [0u8; 64];
    sig_bytes.copy_from_slice(sig);
    Ok(Envelope {
        ca_key,
        signer,
        serial,
        issued_at_ms,
        count,
        entries: r.rest(),
        signed,
        signature: Signature::from_bytes(&sig_bytes),
    })
}

pub(super) fn seal(
    ca: &ClusterCa,
    magic: &[u8; 4],
    serial: u64,
    issued_at_ms: u64,
    count: usize,
    entries: &[u8],
) -> Result<Vec<u8>, TrustError> {
    let signer = ca.admin_certificate().map(|c| c.der());
    let len = 4 + 1 + 32 + signer.map_or(0, |s| 2 + s.len()) + 18 + entries.len() + 64;
    // What the relay protocol carries in one frame (docs/PROTOCOL.md, section 6).
    if len > crate::relay::frame::MAX_DOCUMENT_BODY {
        return Err(TrustError::Malformed(
            "signed document (over 524,288 bytes)",
        ));
    }
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(magic);
    out.push(if signer.is_some() {
        FORMAT_ADMIN
    } else {
        FORMAT
    });
    out.extend_from_slice(ca.public_key().as_bytes());
    if let Some(signer) = signer {
        // An admin certificate is one certificate of a few hundred bytes.
        let signer_len = u16::try_from(signer.len())
            .map_err(|_| TrustError::Malformed("admin certificate (over 65,535 bytes)"))?;
        out.extend_from_slice(&signer_len.to_be_bytes());
        out.extend_from_slice(signer);
    }
    out.extend_from_slice(&serial.to_be_bytes());
    out.extend_from_slice(&issued_at_ms.to_be_bytes());
    out.extend_from_slice(&(count as u16).to_be_bytes());
    out.extend_from_slice(entries);
    let sig = ca.sign(&out);
    out.extend_from_slice(&sig.to_bytes());
    Ok(out)
}

/// The admin hub that signed a document (format 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentSigner {
    /// The admin hub's id.
    pub hub_id: HubId,
    /// SHA-256 of its admin certificate.
    pub fingerprint: [u8; 32],
    /// SHA-256 of its key.
    pub key_hash: [u8; 32],
}

/// Checks the envelope's signature: by the CA, or by an admin certificate the CA signed, valid
/// when the document says it was issued. Returns the admin, if one signed.
pub(super) fn check_signature(
    env: &Envelope<'_>,
    cluster: &ClusterId,
    what: &'static str,
) -> Result<Option<DocumentSigner>, TrustError> {
    if !cluster.names(&env.ca_key) {
        return Err(TrustError::ForeignCa);
    }
    let (key, signer) = match env.signer {
        None => (env.ca_key, None),
        Some(der) => {
            let cert =
                PeerCertificate::from_der(der)?.verify(&env.ca_key, env.issued_at_ms, None)?;
            if !cert.is_admin() || cert.issued_by().is_some() {
                return Err(TrustError::NotAdmin(
                    "the document's signer has no admin certificate",
                ));
            }
            let signer = DocumentSigner {
                hub_id: cert.hub_id(),
                fingerprint: cert.fingerprint(),
                key_hash: cert.key_hash(),
            };
            (*cert.identity_key(), Some(signer))
        }
    };
    key.verify_strict(env.signed, &env.signature)
        .map_err(|_| TrustError::BadSignature(what))?;
    Ok(signer)
}

/// One member of the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestMember {
    /// The hub's id.
    pub hub_id: HubId,
    /// SHA-256 of its certificate.
    pub fingerprint: [u8; 32],
    /// Its trust level.
    pub trust: TrustLevel,
    /// Its roles.
    pub roles: Vec<String>,
}

/// The cluster manifest: the signed list of members at an epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// Monotonic epoch.
    pub epoch: u64,
    /// When it was signed (Unix ms).
    pub issued_at_ms: u64,
    /// The members.
    pub members: Vec<ManifestMember>,
}

impl Manifest {
    /// Signs the manifest with the CA.
    pub fn sign(&self, ca: &ClusterCa) -> Result<Vec<u8>, TrustError> {
        if self.members.len() > MAX_ENTRIES {
            return Err(TrustError::Malformed("manifest (too many members)"));
        }
        let mut entries = Vec::new();
        for m in &self.members {
            entries.extend_from_slice(&m.hub_id.0);
            entries.extend_from_slice(&m.fingerprint);
            entries.push(m.trust.to_u8());
            let too_many = || TrustError::Malformed("manifest member (more than 255 roles)");
            entries.push(u8::try_from(m.roles.len()).map_err(|_| too_many())?);
            for role in &m.roles {
                put_short_str(&mut entries, role)
                    .map_err(|_| TrustError::Malformed("manifest role (over 255 bytes)"))?;
            }
        }
        seal(
            ca,
            MANIFEST_MAGIC,
            self.epoch,
            self.issued_at_ms,
            self.members.len(),
            &entries,
        )
    }

    /// Parses and verifies a signed manifest against the cluster id.
    pub fn verify(bytes: &[u8], cluster: &ClusterId) -> Result<VerifiedManifest, TrustError> {
        const WHAT: &str = "manifest";
        let env = open(bytes, MANIFEST_MAGIC, WHAT)?;
        let signer = check_signature(&env, cluster, WHAT)?;
        let m = malformed(WHAT);
        let mut r = Reader::new(env.entries);
        let mut members = Vec::with_capacity(env.count);
        for _ in 0..env.count {
            let hub_id = r.hub().map_err(&m)?;
            let fingerprint = r.array::<32>().map_err(&m)?;
            let trust =
                TrustLevel::from_u8(r.u8().map_err(&m)?).ok_or(TrustError::Malformed(WHAT))?;
            let n = r.u8().map_err(&m)?;
            let roles = (0..n)
                .map(|_| r.short_str().map(str::to_owned))
                .collect::<Result<_, _>>()
                .map_err(&m)?;
            members.push(ManifestMember {
                hub_id,
                fingerprint,
                trust,
                roles,
            });
        }
        if !r.is_empty() {
            return Err(TrustError::Malformed(WHAT));
        }
        Ok(VerifiedManifest {
            manifest: Manifest {
                epoch: env.serial,
                issued_at_ms: env.issued_at_ms,
                members,
            },
            bytes: bytes.to_vec(),
            signer,
        })
    }
}

/// A manifest whose signature was checked against the cluster id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedManifest {
    manifest: Manifest,
    bytes: Vec<u8>,
    signer: Option<DocumentSigner>,
}

impl VerifiedManifest {
    /// The admin that signed it (`None`: the CA did).
    pub fn signer(&self) -> Option<&DocumentSigner> {
        self.signer.as_ref()
    }
    /// Its content.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Its signed bytes, to pass on.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// One revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// SHA-256 of the certificate.
    pub fingerprint: [u8; 32],
    /// SHA-256 of the certificate's identity key: refuses re-issued certificates for that key.
    pub key_hash: [u8; 32],
    /// When it was revoked (Unix ms).
    pub revoked_at_ms: u64,
    /// Why (at most 255 bytes; for people, never parsed).
    pub reason: String,
}

/// The revocation list: every revoked certificate, at a monotonic version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationList {
    /// Monotonic version; a list never replaces one with an equal or higher version.
    pub version: u64,
    /// When it was signed (Unix ms).
    pub issued_at_ms: u64,
    /// The revoked certificates.
    pub entries: Vec<Revocation>,
}

impl RevocationList {
    /// Signs the list with the CA.
    pub fn sign(&self, ca: &ClusterCa) -> Result<Vec<u8>, TrustError> {
        if self.entries.len() > MAX_ENTRIES {
            return Err(TrustError::Malformed("revocation list (too many entries)"));
        }
        let mut entries = Vec::new();
        for e in &self.entries {
            entries.extend_from_slice(&e.fingerprint);
            entries.extend_from_slice(&e.key_hash);
            entries.extend_from_slice(&e.revoked_at_ms.to_be_bytes());
            put_short_str(&mut entries, &e.reason)
                .map_err(|_| TrustError::Malformed("revocation reason (over 255 bytes)"))?;
        }
        seal(
            ca,
            REVOCATION_MAGIC,
            self.version,
            self.issued_at_ms,
            self.entries.len(),
            &entries,
        )
    }

    /// Parses and verifies a signed list against the cluster id.
    pub fn verify(bytes: &[u8], cluster: &ClusterId) -> Result<VerifiedRevocations, TrustError> {
        const WHAT: &str = "revocation list";
        let env = open(bytes, REVOCATION_MAGIC, WHAT)?;
        let signer = check_signature(&env, cluster, WHAT)?;
        let m = malformed(WHAT);
        let mut r = Reader::new(env.entries);
        let mut entries = Vec::with_capacity(env.count);
        for _ in 0..env.count {
            entries.push(Revocation {
                fingerprint: r.array::<32>().map_err(&m)?,
                key_hash: r.array::<32>().map_err(&m)?,
                revoked_at_ms: r.u64().map_err(&m)?,
                reason: r.short_str().map_err(&m)?.to_owned(),
            });
        }
        if !r.is_empty() {
            return Err(TrustError::Malformed(WHAT));
        }
        Ok(VerifiedRevocations {
            list: RevocationList {
                version: env.serial,
                issued_at_ms: env.issued_at_ms,
                entries,
            },
            bytes: bytes.to_vec(),
            signer,
        })
    }
}

/// A revocation list whose signature was checked against the cluster id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRevocations {
    list: RevocationList,
    bytes: Vec<u8>,
    signer: Option<DocumentSigner>,
}

impl VerifiedRevocations {
    /// The admin that signed it (`None`: the CA did).
    pub fn signer(&self) -> Option<&DocumentSigner> {
        self.signer.as_ref()
    }

    /// Whether this list revokes `cert`, or the admin certificate that issued it.
    pub fn revokes(&self, cert: &super::VerifiedPeer) -> bool {
        self.is_revoked(&cert.fingerprint(), &cert.key_hash())
            || cert
                .issuer_ids()
                .is_some_and(|(f, k)| self.is_revoked(&f, &k))
    }

    /// Refuses this list, whatever its version, if it or `held` revokes the admin that signed it.
    pub fn check_signer(&self, held: Option<&VerifiedRevocations>) -> Result<(), TrustError> {
        let signer = self.signer.as_ref();
        if self.refuses_signer_of(signer) || held.is_some_and(|h| h.refuses_signer_of(signer)) {
            return Err(TrustError::NotAdmin(
                "the admin that signed the list is revoked",
            ));
        }
        Ok(())
    }

    /// Whether this list revokes the admin that signed `signer`'s document: such a document is
    /// refused (a revoked admin's later signatures count for nothing).
    pub fn refuses_signer_of(&self, signer: Option<&DocumentSigner>) -> bool {
        signer.is_some_and(|s| self.is_revoked(&s.fingerprint, &s.key_hash))
    }

    /// Its content.
    pub fn list(&self) -> &RevocationList {
        &self.list
    }

    /// Its version.
    pub fn version(&self) -> u64 {
        self.list.version
    }

    /// Its signed bytes, to store and pass on.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Whether a certificate (by fingerprint) or its key (by hash) is revoked.
    pub fn is_revoked(&self, fingerprint: &[u8; 32], key_hash: &[u8; 32]) -> bool {
        self.list
            .entries
            .iter()
            .any(|e| e.fingerprint == *fingerprint || e.key_hash == *key_hash)
    }

    /// Keeps the newer of `held` and `self`: `Ok(self)` if `self` is strictly newer, else
    /// `Err(NotNewer)`. An older or equal list never replaces a newer one; a list signed by an
    /// admin that it or `held` revokes replaces nothing (`Err(NotAdmin)`).
    pub fn supersede(self, held: Option<&VerifiedRevocations>) -> Result<Self, TrustError> {
        self.check_signer(held)?;
        match held {
            Some(h) if h.version() >= self.version() => {
                Err(TrustError::NotNewer("revocation list"))
            }
            _ => Ok(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::cert::tests::NOW;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    #[test]
    fn an_admin_signs_documents_until_it_is_revoked() {
        use crate::trust::cert::tests::{admin, DAY_MS};
        let ca = ClusterCa::from_secret(&[1; 32]);
        let id = ca.cluster_id();
        let second = admin(&ca, 30, NOW + 365 * DAY_MS);
        let by_admin = RevocationList::verify(&list(2, 1).sign(&second).unwrap(), &id).unwrap();
        let signer = by_admin.signer().unwrap().clone();
        assert_eq!(signer.hub_id, HubId([30; 16]));
        assert_eq!(by_admin.list().entries.len(), 1);
        let members = Manifest {
            epoch: 3,
            issued_at_ms: NOW,
            members: vec![],
        };
        let manifest = Manifest::verify(&members.sign(&second).unwrap(), &id).unwrap();
        assert_eq!(manifest.signer(), Some(&signer));
        assert!(Manifest::verify(&members.sign(&ca).unwrap(), &id)
            .unwrap()
            .signer()
            .is_none());

        // The founder revokes the admin (version 3); the admin's later list (version 4) is
        // refused, and so is a list that revokes its own signer.
        let revoking = RevocationList {
            version: 3,
            issued_at_ms: NOW,
            entries: vec![Revocation {
                fingerprint: [0; 32],
                key_hash: signer.key_hash,
                revoked_at_ms: NOW,
                reason: "admin retired".into(),
            }],
        };
        let held = RevocationList::verify(&revoking.sign(&ca).unwrap(), &id).unwrap();
        let held = held.supersede(Some(&by_admin)).unwrap();
        let later = RevocationList::verify(&list(4, 7).sign(&second).unwrap(), &id).unwrap();
        assert!(held.refuses_signer_of(later.signer()));
        assert!(matches!(
            later.supersede(Some(&held)),
            Err(TrustError::NotAdmin(_))
        ));
        let mut own = revoking.clone();
        own.version = 9;
        let own = RevocationList::verify(&own.sign(&second).unwrap(), &id).unwrap();
        assert!(matches!(own.supersede(None), Err(TrustError::NotAdmin(_))));

        // A signer certificate from another CA, or one that is no admin's, does not verify.
        let stranger = admin(&ClusterCa::from_secret(&[2; 32]), 31, NOW + DAY_MS);
        let mut forged = list(5, 1).sign(&stranger).unwrap();
        forged[5..37].copy_from_slice(ca.public_key().as_bytes());
        assert!(RevocationList::verify(&forged, &id).is_err());
        // A document issued after its signer's certificate ended does not verify.
        let brief = admin(&ca, 32, NOW + DAY_MS);
        let mut late = list(6, 1);
        late.issued_at_ms = NOW + 2 * DAY_MS;
        assert_eq!(
            RevocationList::verify(&late.sign(&brief).unwrap(), &id).unwrap_err(),
            TrustError::Expired
        );
    }

    fn list(version: u64, fp: u8) -> RevocationList {
        RevocationList {
            version,
            issued_at_ms: NOW,
            entries: vec![Revocation {
                fingerprint: [fp; 32],
                key_hash: [fp + 1; 32],
                revoked_at_ms: NOW - 5,
                reason: "lost laptop".into(),
            }],
        }
    }

    #[test]
    fn revocation_round_trip_and_known_answer() {
        let ca = ClusterCa::from_secret(&[1; 32]);
        let bytes = list(7, 0xaa).sign(&ca).unwrap();
        let v = RevocationList::verify(&bytes, &ca.cluster_id()).unwrap();
        assert_eq!(v.list(), &list(7, 0xaa));
        assert!(v.is_revoked(&[0xaa; 32], &[0; 32]));
        assert!(v.is_revoked(&[0; 32], &[0xab; 32]));
        assert!(!v.is_revoked(&[0; 32], &[0; 32]));
        let head = "4852524c01".to_owned() + &hex::encode(ca.public_key().as_bytes());
        assert!(hex::encode(&bytes).starts_with(&head));
        assert_eq!(
            hex::encode(&bytes[37..55]),
            "0000000000000007000001a1ee565e000001"
        );
    }

    /// Signing checks what the encoding can say: a reason or role over 255 bytes, more than 255
    /// roles, or a document too large for the relay is an error (a reason was once cut at 255
    /// bytes without a word, and 300 roles were signed as 44).
    #[test]
    fn signing_past_a_limit_is_an_error() {
        let ca = ClusterCa::from_secret(&[1; 32]);
        let mut long = list(1, 1);
        long.entries[0].reason = "x".repeat(256);
        assert!(matches!(long.sign(&ca), Err(TrustError::Malformed(_))));
        long.entries[0].reason = "x".repeat(255);
        let v = RevocationList::verify(&long.sign(&ca).unwrap(), &ca.cluster_id()).unwrap();
        assert_eq!(v.list().entries[0].reason.len(), 255);
        let member = |roles: usize| ManifestMember {
            hub_id: HubId([1; 16]),
            fingerprint: [2; 32],
            trust: TrustLevel::Full,
            roles: vec!["r".into(); roles],
        };
        let manifest = |roles| Manifest {
            epoch: 1,
            issued_at_ms: NOW,
            members: vec![member(roles)],
        };
        assert!(matches!(
            manifest(256).sign(&ca),
            Err(TrustError::Malformed(_))
        ));
        assert!(manifest(255).sign(&ca).is_ok());
        // 2,000 entries with 255-byte reasons: about 660 KB, over one relay frame.
        let mut big = list(1, 1);
        big.entries = vec![long.entries[0].clone(); 2_000];
        assert!(matches!(big.sign(&ca), Err(TrustError::Malformed(_))));
    }

    #[test]
    fn forged_foreign_and_tampered_lists_are_refused() {
        let mut rng = StdRng::seed_from_u64(5);
        let ca = ClusterCa::generate(&mut rng);
        let other = ClusterCa::generate(&mut rng);
        let bytes = list(1, 1).sign(&other).unwrap();
        assert_eq!(
            RevocationList::verify(&bytes, &ca.cluster_id()).unwrap_err(),
            TrustError::ForeignCa
        );
        // A list signed by another key but claiming this CA's key.
        let mut forged = bytes.clone();
        forged[5..37].copy_from_slice(ca.public_key().as_bytes());
        assert_eq!(
            RevocationList::verify(&forged, &ca.cluster_id()).unwrap_err(),
            TrustError::BadSignature("revocation list")
        );
        let mut tampered = list(1, 1).sign(&ca).unwrap();
        tampered[44] ^= 1; // the version
        assert!(RevocationList::verify(&tampered, &ca.cluster_id()).is_err());
        assert!(RevocationList::verify(&[0; 10], &ca.cluster_id()).is_err());
    }

    #[test]
    fn older_or_equal_lists_never_replace_newer() {
        let ca = ClusterCa::from_secret(&[2; 32]);
        let id = ca.cluster_id();
        let v5 = RevocationList::verify(&list(5, 1).sign(&ca).unwrap(), &id).unwrap();
        let v4 = RevocationList::verify(&list(4, 2).sign(&ca).unwrap(), &id).unwrap();
        let v5b = RevocationList::verify(&list(5, 3).sign(&ca).unwrap(), &id).unwrap();
        let v6 = RevocationList::verify(&list(6, 4).sign(&ca).unwrap(), &id).unwrap();
        assert!(v4.supersede(Some(&v5)).is_err());
        assert!(v5b.supersede(Some(&v5)).is_err());
        assert_eq!(v6.clone().supersede(Some(&v5)).unwrap(), v6);
        assert!(v5.clone().supersede(None).is_ok());
    }

    #[test]
    fn manifest_round_trip_and_refusals() {
        let ca = ClusterCa::from_secret(&[3; 32]);
        let manifest = Manifest {
            epoch: 3,
            issued_at_ms: NOW,
            members: vec![ManifestMember {
                hub_id: HubId([9; 16]),
                fingerprint: [8; 32],
                trust: TrustLevel::Full,
                roles: vec!["founder".into()],
            }],
        };
        let bytes = manifest.sign(&ca).unwrap();
        let v = Manifest::verify(&bytes, &ca.cluster_id()).unwrap();
        assert_eq!(v.manifest(), &manifest);
        assert!(hex::encode(&bytes).starts_with("48524d4601"));
        let other = ClusterCa::from_secret(&[4; 32]);
        assert_eq!(
            Manifest::verify(&bytes, &other.cluster_id()).unwrap_err(),
            TrustError::ForeignCa
        );
        let mut tampered = bytes.clone();
        let at = bytes.len() - 70;
        tampered[at] ^= 1;
        assert!(Manifest::verify(&tampered, &ca.cluster_id()).is_err());
        // A revocation list is not a manifest.
        let rl = list(1, 1).sign(&ca).unwrap();
        assert!(Manifest::verify(&rl, &ca.cluster_id()).is_err());
    }
}
