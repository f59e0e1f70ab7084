//! The cluster CA and hub certificates: X.509 v3, Ed25519, with one private extension.
//!
//! Profile (see docs/PROTOCOL.md, "Certificate profile"):
//! - version 3, a random positive 16-byte serial, signature algorithm Ed25519 (1.3.101.112);
//! - issuer `CN=hub cluster CA <cluster id>`; subject `CN=<hub name>`;
//! - the subject public key is the hub's Ed25519 identity key (it signs relay logins);
//! - basicConstraints (critical) `CA:FALSE`; keyUsage (critical) `digitalSignature`;
//! - the hub extension [`HUB_EXTENSION_OID`] (not critical, so generic tools still read the
//!   certificate), an OCTET STRING holding
//!   `format: u8 = 1 | hub id: [16] | trust: u8 | noise key: [32] | name: str8 | roles: u8 count,
//!   then str8 each`, where `str8` is a `u8` length and UTF-8 bytes.

use std::time::Duration;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use x509_cert::der::asn1::{BitString, GeneralizedTime, OctetString, UtcTime};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::{Decode, Encode, EncodePem};
use x509_cert::ext::pkix::{BasicConstraints, KeyUsage, KeyUsages};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use x509_cert::time::{Time, Validity};
use x509_cert::{Certificate, TbsCertificate, Version};

use super::{fingerprint, key_hash, ClusterId, TrustError, TrustLevel, VerifiedRevocations};
use crate::codec::{put_short_str, Reader};
use crate::relay::frame::HubId;

/// Ed25519 (RFC 8410).
const ED25519_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// The hub extension. The arc is a private-enterprise placeholder, not yet registered with IANA;
/// register one before the first stable release (changing it is a certificate format change).
pub const HUB_EXTENSION_OID: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.62851.1.1");

const HUB_EXTENSION_FORMAT: u8 = 1;

/// Most roles in one certificate, and longest name or role.
const MAX_ROLES: usize = 16;
const MAX_TEXT: usize = 64;

/// What a certificate says about a hub, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateRequest {
    /// The hub's id.
    pub hub_id: HubId,
    /// Its human name (1-64 bytes).
    pub name: String,
    /// Its trust level.
    pub trust: TrustLevel,
    /// Its roles (at most 16, each 1-64 bytes).
    pub roles: Vec<String>,
    /// Its Ed25519 identity key.
    pub identity_key: VerifyingKey,
    /// Its X25519 Noise static public key.
    pub noise_key: [u8; 32],
    /// Start of validity (Unix ms).
    pub not_before_ms: u64,
    /// End of validity (Unix ms).
    pub not_after_ms: u64,
}

impl CertificateRequest {
    fn check(&self) -> Result<(), TrustError> {
        let text_ok = |s: &str| !s.is_empty() && s.len() <= MAX_TEXT;
        if !text_ok(&self.name) {
            return Err(TrustError::Malformed("hub name (1 to 64 bytes)"));
        }
        if self.roles.len() > MAX_ROLES || !self.roles.iter().all(|r| text_ok(r)) {
            return Err(TrustError::Malformed(
                "roles (at most 16, each 1 to 64 bytes)",
            ));
        }
        if self.not_after_ms <= self.not_before_ms {
            return Err(TrustError::Malformed(
                "validity (notAfter must follow notBefore)",
            ));
        }
        Ok(())
    }

    fn extension_value(&self) -> Vec<u8> {
        let mut v = vec![HUB_EXTENSION_FORMAT];
        v.extend_from_slice(&self.hub_id.0);
        v.push(self.trust.to_u8());
        v.extend_from_slice(&self.noise_key);
        // `check` bounded the name, the roles and their number (far below 255).
        let _ = put_short_str(&mut v, &self.name);
        v.push(self.roles.len().min(MAX_ROLES) as u8);
        for role in self.roles.iter().take(MAX_ROLES) {
            let _ = put_short_str(&mut v, role);
        }
        v
    }
}

/// A cluster's certificate authority: the founder's Ed25519 key. It issues hub certificates and
/// signs the manifest and the revocation list.
pub struct ClusterCa {
    key: SigningKey,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret key.
        f.debug_struct("ClusterCa")
            .field("cluster_id", &self.cluster_id())
            .finish_non_exhaustive()
    }
}

fn time(ms: u64) -> Result<Time, TrustError> {
    let d = Duration::from_millis(ms);
    // RFC 5280: UTCTime through 2049, GeneralizedTime from 2050.
    const Y2050_MS: u64 = 2_524_608_000_000;
    if ms < Y2050_MS {
        UtcTime::from_unix_duration(d).map(Time::UtcTime)
    } else {
        GeneralizedTime::from_unix_duration(d).map(Time::GeneralTime)
    }
    .map_err(|_| TrustError::Malformed("validity time"))
}

fn ed25519_alg() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: ED25519_OID,
        parameters: None,
    }
}

fn der_err(_: x509_cert::der::Error) -> TrustError {
    TrustError::Malformed("certificate")
}

impl ClusterCa {
    /// Mints a new CA key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        ClusterCa {
            key: SigningKey::generate(rng),
        }
    }

    /// The CA from its 32-byte secret key.
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        ClusterCa {
            key: SigningKey::from_bytes(secret),
        }
    }

    /// The 32-byte secret key, for storage (mode 0600).
    pub fn secret(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The CA public key.
    pub fn public_key(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// The cluster this CA names.
    pub fn cluster_id(&self) -> ClusterId {
        ClusterId::from_ca_key(&self.public_key())
    }

    pub(super) fn sign(&self, msg: &[u8]) -> Signature {
        self.key.sign(msg)
    }

    /// Issues a certificate for `req`; returns its DER encoding.
    pub fn issue(
        &self,
        req: &CertificateRequest,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, TrustError> {
        req.check()?;
        let mut serial = [0u8; 16];
        rng.fill_bytes(&mut serial);
        serial[0] &= 0x7f; // positive
        serial[0] |= 0x01; // and no leading zero byte to strip
        let issuer: Name = format!("CN=hub cluster CA {}", self.cluster_id())
            .parse()
            .map_err(der_err)?;
        let subject: Name = format!("CN={}", escape_rdn(&req.name))
            .parse()
            .map_err(der_err)?;
        let extensions = vec![
            Extension {
                extn_id: ObjectIdentifier::new_unwrap("2.5.29.19"),
                critical: true,
                extn_value: OctetString::new(
                    BasicConstraints {
                        ca: false,
                        path_len_constraint: None,
                    }
                    .to_der()
                    .map_err(der_err)?,
                )
                .map_err(der_err)?,
            },
            Extension {
                extn_id: ObjectIdentifier::new_unwrap("2.5.29.15"),
                critical: true,
                extn_value: OctetString::new(
                    KeyUsage(KeyUsages::DigitalSignature.into())
                        .to_der()
                        .map_err(der_err)?,
                )
                .map_err(der_err)?,
            },
            Extension {
                extn_id: HUB_EXTENSION_OID,
                critical: false,
                extn_value: OctetString::new(req.extension_value()).map_err(der_err)?,
            },
        ];
        let tbs = TbsCertificate {
            version: Version::V3,
            serial_number: SerialNumber::new(&serial).map_err(der_err)?,
            signature: ed25519_alg(),
            issuer,
            validity: Validity {
                not_before: time(req.not_before_ms)?,
                not_after: time(req.not_after_ms)?,
            },
            subject,
            subject_public_key_info: SubjectPublicKeyInfoOwned {
                algorithm: ed25519_alg(),
                subject_public_key: BitString::from_bytes(req.identity_key.as_bytes())
                    .map_err(der_err)?,
            },
            issuer_unique_id: None,
            subject_unique_id: None,
            extensions: Some(extensions),
        };
        let tbs_der = tbs.to_der().map_err(der_err)?;
        let signature = self.key.sign(&tbs_der);
        let cert = Certificate {
            tbs_certificate: tbs,
            signature_algorithm: ed25519_alg(),
            signature: BitString::from_bytes(&signature.to_bytes()).map_err(der_err)?,
        };
        cert.to_der().map_err(der_err)
    }
}

/// Escapes the characters RFC 4514 reserves in a distinguished-name value.
fn escape_rdn(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        let reserved = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i + 1 == value.chars().count() && c == ' ');
        if reserved {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A parsed hub certificate whose signature and dates are not checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    der: Vec<u8>,
    tbs_der: Vec<u8>,
    signature: [u8; 64],
    hub_id: HubId,
    name: String,
    trust: TrustLevel,
    roles: Vec<String>,
    identity_key: VerifyingKey,
    noise_key: [u8; 32],
    not_before_ms: u64,
    not_after_ms: u64,
}

impl PeerCertificate {
    /// Parses a DER certificate of the profile above.
    pub fn from_der(der: &[u8]) -> Result<Self, TrustError> {
        let cert = Certificate::from_der(der).map_err(der_err)?;
        // DER is canonical: a certificate that does not re-encode to the same bytes is not DER.
        if cert.to_der().map_err(der_err)? != der {
            return Err(TrustError::Malformed("certificate (not DER)"));
        }
        let tbs = &cert.tbs_certificate;
        if cert.signature_algorithm.oid != ED25519_OID
            || tbs.signature.oid != ED25519_OID
            || tbs.subject_public_key_info.algorithm.oid != ED25519_OID
            || tbs.version != Version::V3
        {
            return Err(TrustError::Malformed(
                "certificate (not an Ed25519 v3 certificate)",
            ));
        }
        let signature: [u8; 64] = cert
            .signature
            .as_bytes()
            .and_then(|b| b.try_into().ok())
            .ok_or(TrustError::Malformed("certificate signature"))?;
        let key_bytes: [u8; 32] = tbs
            .subject_public_key_info
            .subject_public_key
            .as_bytes()
            .and_then(|b| b.try_into().ok())
            .ok_or(TrustError::Malformed("certificate public key"))?;
        let identity_key = VerifyingKey::from_bytes(&key_bytes)
            .map_err(|_| TrustError::Malformed("certificate public key"))?;
        let ext = tbs
            .extensions
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|e| e.extn_id == HUB_EXTENSION_OID)
            .ok_or(TrustError::Malformed("certificate (no hub extension)"))?;
        let malformed = |_| TrustError::Malformed("hub extension");
        let mut r = Reader::new(ext.extn_value.as_bytes());
        if r.u8().map_err(malformed)? != HUB_EXTENSION_FORMAT {
            return Err(TrustError::Malformed("hub extension format"));
        }
        let hub_id = r.hub().map_err(malformed)?;
        let trust = TrustLevel::from_u8(r.u8().map_err(malformed)?)
            .ok_or(TrustError::Malformed("trust level"))?;
        let noise_key = r.array::<32>().map_err(malformed)?;
        let name = r.short_str().map_err(malformed)?.to_owned();
        let count = usize::from(r.u8().map_err(malformed)?);
        if count > MAX_ROLES {
            return Err(TrustError::Malformed("roles"));
        }
        let roles = (0..count)
            .map(|_| r.short_str().map(str::to_owned))
            .collect::<Result<Vec<_>, _>>()
            .map_err(malformed)?;
        if !r.is_empty() {
            return Err(TrustError::Malformed("hub extension (trailing bytes)"));
        }
        Ok(PeerCertificate {
            der: der.to_vec(),
            tbs_der: tbs.to_der().map_err(der_err)?,
            signature,
            hub_id,
            name,
            trust,
            roles,
            identity_key,
            noise_key,
            not_before_ms: tbs.validity.not_before.to_unix_duration().as_millis() as u64,
            not_after_ms: tbs.validity.not_after.to_unix_duration().as_millis() as u64,
        })
    }

    /// Checks the CA signature, the validity at `now_ms` and, if given, the revocation list.
    pub fn verify(
        self,
        ca: &VerifyingKey,
        now_ms: u64,
        revocations: Option<&VerifiedRevocations>,
    ) -> Result<VerifiedPeer, TrustError> {
        let sig = Signature::from_bytes(&self.signature);
        ca.verify_strict(&self.tbs_der, &sig)
            .map_err(|_| TrustError::BadSignature("certificate"))?;
        self.check_validity(now_ms, revocations)
    }

    /// The validity at `now_ms` and, if given, the revocation list (not the signature).
    fn check_validity(
        self,
        now_ms: u64,
        revocations: Option<&VerifiedRevocations>,
    ) -> Result<VerifiedPeer, TrustError> {
        if now_ms < self.not_before_ms {
            return Err(TrustError::NotYetValid);
        }
        if now_ms > self.not_after_ms {
            return Err(TrustError::Expired);
        }
        if revocations.is_some_and(|r| r.is_revoked(&self.fingerprint(), &self.key_hash())) {
            return Err(TrustError::Revoked);
        }
        Ok(VerifiedPeer { cert: self })
    }

    /// The hub id the certificate claims.
    pub fn hub_id(&self) -> HubId {
        self.hub_id
    }

    /// Start of validity (Unix ms), as it says (not verified).
    pub fn not_before_ms(&self) -> u64 {
        self.not_before_ms
    }

    /// The subject's Ed25519 key the certificate claims (not verified yet).
    pub fn identity_key(&self) -> &VerifyingKey {
        &self.identity_key
    }

    /// The name the certificate claims.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// SHA-256 of the DER.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.der)
    }

    /// SHA-256 of the identity key.
    pub fn key_hash(&self) -> [u8; 32] {
        key_hash(&self.identity_key)
    }

    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.der
    }
}

/// A certificate that chains to the cluster CA, is within its validity and is not revoked (as
/// of the check). Only [`PeerCertificate::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPeer {
    cert: PeerCertificate,
}

impl VerifiedPeer {
    /// The hub's id.
    pub fn hub_id(&self) -> HubId {
        self.cert.hub_id
    }
    /// The hub's name.
    pub fn name(&self) -> &str {
        &self.cert.name
    }
    /// The hub's trust level.
    pub fn trust(&self) -> TrustLevel {
        self.cert.trust
    }
    /// The hub's roles.
    pub fn roles(&self) -> &[String] {
        &self.cert.roles
    }
    /// The hub's Ed25519 identity key.
    pub fn identity_key(&self) -> &VerifyingKey {
        &self.cert.identity_key
    }
    /// The hub's X25519 Noise static key.
    pub fn noise_key(&self) -> &[u8; 32] {
        &self.cert.noise_key
    }
    /// Validity start (Unix ms).
    pub fn not_before_ms(&self) -> u64 {
        self.cert.not_before_ms
    }
    /// Validity end (Unix ms).
    pub fn not_after_ms(&self) -> u64 {
        self.cert.not_after_ms
    }
    /// SHA-256 of the DER.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.cert.fingerprint()
    }
    /// SHA-256 of the identity key.
    pub fn key_hash(&self) -> [u8; 32] {
        self.cert.key_hash()
    }
    /// The DER bytes.
    pub fn der(&self) -> &[u8] {
        &self.cert.der
    }
    /// This certificate checked again at `now_ms` (its validity, and the revocation list if
    /// given). Its CA signature was checked when it was verified and is not checked again: what
    /// a hub that meets the same certificate again (the same DER bytes) does instead of parsing
    /// and verifying it anew.
    pub fn recheck(
        &self,
        now_ms: u64,
        revocations: Option<&VerifiedRevocations>,
    ) -> Result<VerifiedPeer, TrustError> {
        self.cert.clone().check_validity(now_ms, revocations)
    }
    /// The certificate in PEM.
    pub fn to_pem(&self) -> Result<String, TrustError> {
        Certificate::from_der(&self.cert.der)
            .and_then(|c| c.to_pem(x509_cert::der::pem::LineEnding::LF))
            .map_err(der_err)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    pub(crate) const DAY_MS: u64 = 86_400_000;
    pub(crate) const NOW: u64 = 1_795_000_000_000; // 2026-11-18

    pub(crate) fn request(id: u8, key: &SigningKey) -> CertificateRequest {
        CertificateRequest {
            hub_id: HubId([id; 16]),
            name: format!("hub {id}"),
            trust: TrustLevel::AgentDispatch,
            roles: vec!["desktop".into(), "apps".into()],
            identity_key: key.verifying_key(),
            noise_key: [id; 32],
            not_before_ms: NOW - DAY_MS,
            not_after_ms: NOW + 365 * DAY_MS,
        }
    }

    #[test]
    fn issue_parse_verify_round_trip() {
        let mut rng = StdRng::seed_from_u64(1);
        let ca = ClusterCa::generate(&mut rng);
        let hub_key = SigningKey::generate(&mut rng);
        let req = request(3, &hub_key);
        let der = ca.issue(&req, &mut rng).unwrap();
        let peer = PeerCertificate::from_der(&der)
            .unwrap()
            .verify(&ca.public_key(), NOW, None)
            .unwrap();
        assert_eq!(peer.hub_id(), req.hub_id);
        assert_eq!(peer.name(), "hub 3");
        assert_eq!(peer.trust(), TrustLevel::AgentDispatch);
        assert_eq!(peer.roles(), ["desktop", "apps"]);
        assert_eq!(peer.noise_key(), &[3; 32]);
        assert_eq!(peer.identity_key(), &hub_key.verifying_key());
        // Dates survive at second precision.
        assert_eq!(peer.not_before_ms(), req.not_before_ms);
        assert!(peer
            .to_pem()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----\n"));
    }

    /// docs/PROTOCOL.md section 9: the hub extension's `extnValue` holds the layout directly
    /// (format byte, then the hub id), not a second OCTET STRING (which would start `0x04`).
    #[test]
    fn the_hub_extension_value_is_not_wrapped_twice() {
        let ca = ClusterCa::from_secret(&[1; 32]);
        let req = request(3, &SigningKey::from_bytes(&[2; 32]));
        let der = ca.issue(&req, &mut StdRng::seed_from_u64(9)).unwrap();
        let cert = Certificate::from_der(&der).unwrap();
        let ext = cert
            .tbs_certificate
            .extensions
            .unwrap()
            .into_iter()
            .find(|e| e.extn_id == HUB_EXTENSION_OID)
            .unwrap();
        assert!(!ext.critical);
        let value = ext.extn_value.as_bytes();
        assert_eq!(value[0], 1, "format");
        assert_eq!(value[1..17], req.hub_id.0);
    }

    /// Known answer: the same CA, key, request and RNG give the same DER, byte for byte.
    #[test]
    fn known_answer_encoding() {
        let ca = ClusterCa::from_secret(&[1; 32]);
        let hub_key = SigningKey::from_bytes(&[2; 32]);
        let der = ca
            .issue(&request(3, &hub_key), &mut StdRng::seed_from_u64(9))
            .unwrap();
        assert_eq!(
            hex::encode(fingerprint(&der)),
            "d5be557ab9dbf528faf8d9af69f9c0bb447c06efbe1555cbd2ee7e9cbb0f9a4d",
            "certificate DER changed: {}",
            hex::encode(&der)
        );
        assert_eq!(ca.cluster_id().as_str(), "gr2q7gf5lh6pzfdnurnkvputhpqvjjfv");
    }

    /// An independent X.509 parser (openssl, when installed) reads what we issue.
    #[test]
    fn openssl_reads_the_certificate() {
        let Ok(out) = std::process::Command::new("openssl")
            .arg("version")
            .output()
        else {
            eprintln!("openssl not installed; skipping the cross-check");
            return;
        };
        assert!(out.status.success());
        let ca = ClusterCa::from_secret(&[1; 32]);
        let key = SigningKey::from_bytes(&[2; 32]);
        let der = ca
            .issue(&request(3, &key), &mut StdRng::seed_from_u64(9))
            .unwrap();
        let dir = std::env::temp_dir().join(format!("hubcert-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("hub.der");
        std::fs::write(&path, &der).unwrap();
        let out = std::process::Command::new("openssl")
            .args(["x509", "-inform", "der", "-noout", "-text", "-in"])
            .arg(&path)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        for want in [
            "Version: 3 (0x2)",
            "Signature Algorithm: ED25519",
            "Subject: CN = hub 3",
            &format!("Issuer: CN = hub cluster CA {}", ca.cluster_id()),
            "CA:FALSE",
            "Digital Signature",
            "1.3.6.1.4.1.62851.1.1",
        ] {
            assert!(
                text.contains(want),
                "openssl output lacks {want:?}:\n{text}"
            );
        }
    }

    #[test]
    fn forged_expired_and_premature_certificates_are_refused() {
        let mut rng = StdRng::seed_from_u64(2);
        let ca = ClusterCa::generate(&mut rng);
        let other = ClusterCa::generate(&mut rng);
        let key = SigningKey::generate(&mut rng);
        let der = other.issue(&request(1, &key), &mut rng).unwrap();
        let parsed = PeerCertificate::from_der(&der).unwrap();
        assert_eq!(
            parsed.verify(&ca.public_key(), NOW, None).unwrap_err(),
            TrustError::BadSignature("certificate")
        );
        let der = ca.issue(&request(1, &key), &mut rng).unwrap();
        let parsed = PeerCertificate::from_der(&der).unwrap();
        assert_eq!(
            parsed
                .clone()
                .verify(&ca.public_key(), NOW + 400 * DAY_MS, None)
                .unwrap_err(),
            TrustError::Expired
        );
        assert_eq!(
            parsed
                .verify(&ca.public_key(), NOW - 2 * DAY_MS, None)
                .unwrap_err(),
            TrustError::NotYetValid
        );
        // A flipped bit in the signed part breaks the signature (or the parse).
        let mut tampered = der.clone();
        let at = tampered.len() / 2;
        tampered[at] ^= 1;
        let refused = PeerCertificate::from_der(&tampered)
            .and_then(|c| c.verify(&ca.public_key(), NOW, None));
        assert!(refused.is_err());
        assert!(PeerCertificate::from_der(b"not a certificate").is_err());
    }

    #[test]
    fn bad_requests_are_refused() {
        let mut rng = StdRng::seed_from_u64(3);
        let ca = ClusterCa::generate(&mut rng);
        let key = SigningKey::generate(&mut rng);
        let mut req = request(1, &key);
        req.name = String::new();
        assert!(ca.issue(&req, &mut rng).is_err());
        let mut req = request(1, &key);
        req.not_after_ms = req.not_before_ms;
        assert!(ca.issue(&req, &mut rng).is_err());
        // Reserved characters in names are escaped, not interpreted.
        let mut req = request(1, &key);
        req.name = "a,b=c+d".into();
        let der = ca.issue(&req, &mut rng).unwrap();
        let peer = PeerCertificate::from_der(&der)
            .unwrap()
            .verify(&ca.public_key(), NOW, None)
            .unwrap();
        assert_eq!(peer.name(), "a,b=c+d");
    }
}
