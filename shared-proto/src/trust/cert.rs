//! The cluster CA and hub certificates: X.509 v3, Ed25519, with one private extension.
//!
//! Profile (see docs/PROTOCOL.md, "Certificate profile"):
//! - version 3, a random positive 16-byte serial, signature algorithm Ed25519 (1.3.101.112);
//! - issuer `CN=hub cluster CA <cluster id>`; subject `CN=<hub name>`;
//! - the subject public key is the hub's Ed25519 identity key (it signs relay logins);
//! - basicConstraints (critical) `CA:FALSE`; keyUsage (critical) `digitalSignature`; except an
//!   **admin certificate** (the root CA's certificate for a hub with the role `admin`):
//!   `CA:TRUE, pathlen:0`, keyUsage `digitalSignature, keyCertSign, cRLSign`;
//! - the hub extension [`HUB_EXTENSION_OID`] (not critical, so generic tools still read the
//!   certificate), an OCTET STRING holding
//!   `format: u8 = 1 | hub id: [16] | trust: u8 | noise key: [32] | name: str8 | roles: u8 count,
//!   then str8 each`, where `str8` is a `u8` length and UTF-8 bytes.
//!
//! A hub's certificate travels as a **chain**: its own certificate's DER, then, when an admin hub
//! issued it, the admin certificate's DER (two DER elements, back to back). The root CA issues
//! every admin certificate; an admin's key issues hub certificates only (path length 0).

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

/// basicConstraints (RFC 5280).
const BASIC_CONSTRAINTS_OID: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");

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

/// The role whose holder the root CA makes an admin (its certificate a CA certificate).
pub const ADMIN_ROLE: &str = "admin";

/// Roles an admin's key may not grant (only the root CA makes founders and admins).
const ROOT_ONLY_ROLES: [&str; 2] = ["founder", ADMIN_ROLE];

/// Whether `roles` hold one only the root CA grants (`founder`, `admin`): an admin neither
/// issues nor revokes such a hub.
pub fn has_root_only_role(roles: &[String]) -> bool {
    roles.iter().any(|r| ROOT_ONLY_ROLES.contains(&r.as_str()))
}

/// Who signs for a cluster: the root CA (the founder's Ed25519 key), or an admin hub (its own
/// identity key, under its admin certificate). Either issues hub certificates and signs the
/// manifest and the revocation list; only the root makes admins.
pub struct ClusterCa {
    key: SigningKey,
    /// For an admin: its admin certificate (issued by the root) and the root key.
    admin: Option<Admin>,
}

struct Admin {
    certificate: VerifiedPeer,
    root: VerifyingKey,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret key.
        f.debug_struct("ClusterCa")
            .field("cluster_id", &self.cluster_id())
            .field(
                "admin",
                &self.admin.as_ref().map(|a| a.certificate.hub_id()),
            )
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
            admin: None,
        }
    }

    /// The CA from its 32-byte secret key.
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        ClusterCa {
            key: SigningKey::from_bytes(secret),
            admin: None,
        }
    }

    /// An admin hub signing for the cluster with its identity key, under `certificate` (its own,
    /// verified against the root CA): refused unless that is an admin certificate for this key.
    pub fn admin(
        identity: SigningKey,
        certificate: VerifiedPeer,
        root: VerifyingKey,
    ) -> Result<Self, TrustError> {
        if !certificate.is_admin() || *certificate.identity_key() != identity.verifying_key() {
            return Err(TrustError::NotAdmin(
                "this hub's certificate is not an admin certificate for its key",
            ));
        }
        Ok(ClusterCa {
            key: identity,
            admin: Some(Admin { certificate, root }),
        })
    }

    /// The root's 32-byte secret key, for storage (mode 0600); `None` for an admin (whose key is
    /// its identity key, kept with it).
    pub fn secret(&self) -> Option<[u8; 32]> {
        self.admin.is_none().then(|| self.key.to_bytes())
    }

    /// The cluster CA (root) public key: what every certificate and document verifies against,
    /// for an admin too.
    pub fn public_key(&self) -> VerifyingKey {
        self.admin
            .as_ref()
            .map_or_else(|| self.key.verifying_key(), |a| a.root)
    }

    /// The admin certificate this signer signs under (`None` for the root).
    pub fn admin_certificate(&self) -> Option<&VerifiedPeer> {
        self.admin.as_ref().map(|a| &a.certificate)
    }

    /// The cluster this CA names.
    pub fn cluster_id(&self) -> ClusterId {
        ClusterId::from_ca_key(&self.public_key())
    }

    pub(super) fn sign(&self, msg: &[u8]) -> Signature {
        self.key.sign(msg)
    }

    /// Issues a certificate for `req`; returns its chain: the DER encoding, followed by the
    /// admin certificate's when an admin issues it. The root makes an admin certificate for a
    /// request with the role `admin`; an admin refuses the roles `admin` and `founder`
    /// ([`TrustError::NotAdmin`]).
    pub fn issue(
        &self,
        req: &CertificateRequest,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, TrustError> {
        req.check()?;
        if self.admin.is_some() && has_root_only_role(&req.roles) {
            return Err(TrustError::NotAdmin(
                "only the founder makes founders and admins",
            ));
        }
        let ca = self.admin.is_none() && req.roles.iter().any(|r| r == ADMIN_ROLE);
        let mut serial = [0u8; 16];
        rng.fill_bytes(&mut serial);
        serial[0] &= 0x7f; // positive
        serial[0] |= 0x01; // and no leading zero byte to strip
                           // The issuer's name is the signer's subject, so generic tools build the chain.
        let issuer = match &self.admin {
            Some(a) => format!("CN={}", escape_rdn(a.certificate.name())),
            None => format!("CN=hub cluster CA {}", self.cluster_id()),
        };
        let issuer: Name = issuer.parse().map_err(der_err)?;
        let usages = if ca {
            KeyUsages::DigitalSignature | KeyUsages::KeyCertSign | KeyUsages::CRLSign
        } else {
            KeyUsages::DigitalSignature.into()
        };
        let subject: Name = format!("CN={}", escape_rdn(&req.name))
            .parse()
            .map_err(der_err)?;
        let extensions = vec![
            Extension {
                extn_id: BASIC_CONSTRAINTS_OID,
                critical: true,
                extn_value: OctetString::new(
                    BasicConstraints {
                        ca,
                        path_len_constraint: ca.then_some(0),
                    }
                    .to_der()
                    .map_err(der_err)?,
                )
                .map_err(der_err)?,
            },
            Extension {
                extn_id: ObjectIdentifier::new_unwrap("2.5.29.15"),
                critical: true,
                extn_value: OctetString::new(KeyUsage(usages).to_der().map_err(der_err)?)
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
        let mut chain = cert.to_der().map_err(der_err)?;
        if let Some(a) = &self.admin {
            chain.extend_from_slice(a.certificate.der());
        }
        Ok(chain)
    }
}

/// A chain's certificates, each one's DER (what TLS sends as separate certificates); bytes that
/// are not a chain come back whole, for the parser to refuse.
pub fn chain_parts(chain: &[u8]) -> Vec<&[u8]> {
    match der_element_len(chain) {
        Some(n) if n < chain.len() => vec![&chain[..n], &chain[n..]],
        _ => vec![chain],
    }
}

/// The length of the DER element (tag, length, contents) at the start of `bytes`.
fn der_element_len(bytes: &[u8]) -> Option<usize> {
    let first = *bytes.get(1)?;
    let (header, len) = if first < 0x80 {
        (2, usize::from(first))
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let len = bytes
            .get(2..2 + n)?
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (2 + n, len)
    };
    header
        .checked_add(len)
        .filter(|total| *total <= bytes.len())
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

/// A parsed hub certificate (with the admin certificate that issued it, if one did) whose
/// signatures and dates are not checked yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCertificate {
    /// The chain as it came: this certificate's DER, then its issuer's if an admin issued it.
    der: Vec<u8>,
    /// How much of `der` is this certificate.
    own_len: usize,
    /// `CA:TRUE, pathlen:0`: an admin certificate.
    ca: bool,
    /// The admin certificate that issued this one (`None`: the root CA did).
    issuer: Option<Box<PeerCertificate>>,
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
    /// Parses a certificate chain of the profile above: one DER certificate, or a hub
    /// certificate followed by the admin certificate that issued it.
    pub fn from_der(der: &[u8]) -> Result<Self, TrustError> {
        let own_len = der_element_len(der).ok_or(TrustError::Malformed("certificate (not DER)"))?;
        let (own, rest) = der.split_at(own_len);
        let mut cert = Self::parse_one(own)?;
        if !rest.is_empty() {
            let issuer = Self::parse_one(rest)?;
            if !issuer.ca || cert.ca {
                return Err(TrustError::Malformed(
                    "certificate chain (a hub certificate, then the admin certificate that issued it)",
                ));
            }
            cert.issuer = Some(Box::new(issuer));
            cert.der = der.to_vec();
        }
        Ok(cert)
    }

    /// Parses one DER certificate.
    fn parse_one(der: &[u8]) -> Result<Self, TrustError> {
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
        let extensions = tbs.extensions.as_deref().unwrap_or_default();
        let constraints = extensions
            .iter()
            .find(|e| e.extn_id == BASIC_CONSTRAINTS_OID)
            .map(|e| BasicConstraints::from_der(e.extn_value.as_bytes()))
            .transpose()
            .map_err(|_| TrustError::Malformed("basic constraints"))?;
        let ca = match constraints {
            None | Some(BasicConstraints { ca: false, .. }) => false,
            Some(BasicConstraints {
                ca: true,
                path_len_constraint: Some(0),
            }) => true,
            Some(_) => {
                return Err(TrustError::Malformed(
                    "basic constraints (a CA certificate must have path length 0)",
                ))
            }
        };
        let ext = extensions
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
            own_len: der.len(),
            ca,
            issuer: None,
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

    /// Checks the chain's signatures (the admin certificate's by the CA, the hub's by the admin;
    /// or the hub's by the CA), the validity of each at `now_ms` and, if given, that the list
    /// revokes neither.
    pub fn verify(
        self,
        ca: &VerifyingKey,
        now_ms: u64,
        revocations: Option<&VerifiedRevocations>,
    ) -> Result<VerifiedPeer, TrustError> {
        let signer = match &self.issuer {
            Some(admin) => {
                admin.check_signature(ca, "admin certificate")?;
                &admin.identity_key
            }
            None => ca,
        };
        self.check_signature(signer, "certificate")?;
        self.check_validity(now_ms, revocations)
    }

    fn check_signature(&self, key: &VerifyingKey, what: &'static str) -> Result<(), TrustError> {
        key.verify_strict(&self.tbs_der, &Signature::from_bytes(&self.signature))
            .map_err(|_| TrustError::BadSignature(what))
    }

    /// The validity at `now_ms` and, if given, the revocation list, of this certificate and its
    /// issuer (not the signatures).
    fn check_validity(
        self,
        now_ms: u64,
        revocations: Option<&VerifiedRevocations>,
    ) -> Result<VerifiedPeer, TrustError> {
        for cert in std::iter::once(&self).chain(self.issuer.as_deref()) {
            if now_ms < cert.not_before_ms {
                return Err(TrustError::NotYetValid);
            }
            if now_ms > cert.not_after_ms {
                return Err(TrustError::Expired);
            }
            if revocations.is_some_and(|r| r.is_revoked(&cert.fingerprint(), &cert.key_hash())) {
                return Err(TrustError::Revoked);
            }
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

    /// SHA-256 of this certificate's DER (not its issuer's).
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(&self.der[..self.own_len])
    }

    /// SHA-256 of the identity key.
    pub fn key_hash(&self) -> [u8; 32] {
        key_hash(&self.identity_key)
    }

    /// The chain's bytes, as parsed.
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
    /// SHA-256 of the hub's own certificate's DER (what the manifest and revocation lists name).
    pub fn fingerprint(&self) -> [u8; 32] {
        self.cert.fingerprint()
    }
    /// SHA-256 of the identity key.
    pub fn key_hash(&self) -> [u8; 32] {
        self.cert.key_hash()
    }
    /// The chain's bytes: what this hub presents at login, in handshakes and keeps as `hub.der`.
    pub fn der(&self) -> &[u8] {
        &self.cert.der
    }
    /// Whether this is an admin certificate (`CA:TRUE, pathlen:0`, issued by the root CA).
    pub fn is_admin(&self) -> bool {
        self.cert.ca
    }
    /// The admin hub that issued this certificate (`None`: the root CA did).
    pub fn issued_by(&self) -> Option<HubId> {
        self.cert.issuer.as_ref().map(|i| i.hub_id)
    }
    /// The fingerprint and key hash of the admin certificate that issued this one.
    pub fn issuer_ids(&self) -> Option<([u8; 32], [u8; 32])> {
        self.cert
            .issuer
            .as_ref()
            .map(|i| (i.fingerprint(), i.key_hash()))
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
    /// The chain in PEM (the hub's certificate, then its issuer's).
    pub fn to_pem(&self) -> Result<String, TrustError> {
        let (own, issuer) = self.cert.der.split_at(self.cert.own_len);
        let mut pem = String::new();
        for der in [own, issuer].into_iter().filter(|d| !d.is_empty()) {
            let c = Certificate::from_der(der).map_err(der_err)?;
            pem.push_str(
                &c.to_pem(x509_cert::der::pem::LineEnding::LF)
                    .map_err(der_err)?,
            );
        }
        Ok(pem)
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

    /// The root's certificate for a hub with the role `admin`, and that hub as a signer.
    pub(crate) fn admin(ca: &ClusterCa, id: u8, not_after_ms: u64) -> ClusterCa {
        let key = SigningKey::from_bytes(&[id; 32]);
        let mut req = request(id, &key);
        req.roles = vec![ADMIN_ROLE.into()];
        req.not_after_ms = not_after_ms;
        let der = ca
            .issue(&req, &mut StdRng::seed_from_u64(u64::from(id)))
            .unwrap();
        let cert = PeerCertificate::from_der(&der)
            .unwrap()
            .verify(&ca.public_key(), NOW, None)
            .unwrap();
        assert!(cert.is_admin(), "the role admin makes an admin certificate");
        ClusterCa::admin(key, cert, ca.public_key()).unwrap()
    }

    #[test]
    fn an_admin_issues_certificates_that_chain_to_the_root() {
        let mut rng = StdRng::seed_from_u64(4);
        let ca = ClusterCa::generate(&mut rng);
        let admin = admin(&ca, 20, NOW + 365 * DAY_MS);
        assert_eq!(admin.public_key(), ca.public_key());
        assert_eq!(admin.cluster_id(), ca.cluster_id());
        assert!(admin.secret().is_none() && ca.secret().is_some());
        let hub_key = SigningKey::generate(&mut rng);
        let chain = admin.issue(&request(3, &hub_key), &mut rng).unwrap();
        let peer = PeerCertificate::from_der(&chain)
            .unwrap()
            .verify(&ca.public_key(), NOW, None)
            .unwrap();
        assert_eq!(peer.issued_by(), Some(HubId([20; 16])));
        assert!(!peer.is_admin());
        assert_eq!(peer.der(), &chain[..]);
        let own_len = der_element_len(&chain).unwrap();
        assert!(own_len < chain.len());
        assert_eq!(peer.fingerprint(), fingerprint(&chain[..own_len]));
        assert_eq!(
            peer.to_pem().unwrap().matches("BEGIN CERTIFICATE").count(),
            2
        );
        // The leaf names the admin as its issuer, as generic chain builders expect.
        let leaf = Certificate::from_der(&chain[..own_len]).unwrap();
        assert_eq!(leaf.tbs_certificate.issuer.to_string(), "CN=hub 20");

        // An admin makes no admins or founders, and cannot sign as a hub that is not an admin.
        let mut req = request(4, &hub_key);
        req.roles = vec![ADMIN_ROLE.into()];
        assert!(matches!(
            admin.issue(&req, &mut rng),
            Err(TrustError::NotAdmin(_))
        ));
        req.roles = vec!["founder".into()];
        assert!(matches!(
            admin.issue(&req, &mut rng),
            Err(TrustError::NotAdmin(_))
        ));
        let plain = PeerCertificate::from_der(&ca.issue(&request(5, &hub_key), &mut rng).unwrap())
            .unwrap()
            .verify(&ca.public_key(), NOW, None)
            .unwrap();
        assert!(matches!(
            ClusterCa::admin(hub_key.clone(), plain.clone(), ca.public_key()),
            Err(TrustError::NotAdmin(_))
        ));
        // ... nor with another key than its certificate's.
        let cert = admin.admin_certificate().unwrap().clone();
        assert!(matches!(
            ClusterCa::admin(hub_key.clone(), cert, ca.public_key()),
            Err(TrustError::NotAdmin(_))
        ));

        // A chain whose second certificate is not an admin certificate does not parse.
        let mut forged = chain[..own_len].to_vec();
        forged.extend_from_slice(plain.der());
        assert!(matches!(
            PeerCertificate::from_der(&forged),
            Err(TrustError::Malformed(_))
        ));
        // Trailing bytes after a certificate are not a chain either.
        let mut trailing = plain.der().to_vec();
        trailing.push(0);
        assert!(PeerCertificate::from_der(&trailing).is_err());
    }

    #[test]
    fn a_chain_is_refused_when_its_admin_is_forged_expired_or_revoked() {
        let mut rng = StdRng::seed_from_u64(5);
        let ca = ClusterCa::generate(&mut rng);
        let hub_key = SigningKey::generate(&mut rng);
        let verify = |chain: &[u8], now, revocations| {
            PeerCertificate::from_der(chain)
                .unwrap()
                .verify(&ca.public_key(), now, revocations)
        };

        // An admin certificate from another CA: its signature does not verify.
        let stranger = ClusterCa::generate(&mut rng);
        let foreign = admin(&stranger, 21, NOW + 365 * DAY_MS);
        let chain = foreign.issue(&request(3, &hub_key), &mut rng).unwrap();
        assert_eq!(
            verify(&chain, NOW, None).unwrap_err(),
            TrustError::BadSignature("admin certificate")
        );

        // A hub certificate an admin did not sign, presented under its admin certificate.
        let short = admin(&ca, 22, NOW + 10 * DAY_MS);
        let own = ca.issue(&request(3, &hub_key), &mut rng).unwrap();
        let mut wrong = own.clone();
        wrong.extend_from_slice(short.admin_certificate().unwrap().der());
        assert_eq!(
            verify(&wrong, NOW, None).unwrap_err(),
            TrustError::BadSignature("certificate")
        );

        // The admin's certificate ends before the hub's: the chain ends with it.
        let chain = short.issue(&request(3, &hub_key), &mut rng).unwrap();
        assert!(verify(&chain, NOW + 9 * DAY_MS, None).is_ok());
        assert_eq!(
            verify(&chain, NOW + 11 * DAY_MS, None).unwrap_err(),
            TrustError::Expired
        );
        let held = verify(&chain, NOW, None).unwrap();
        assert_eq!(
            held.recheck(NOW + 11 * DAY_MS, None).unwrap_err(),
            TrustError::Expired
        );

        // The admin revoked (by its key): every certificate it issued is refused.
        let list = super::super::RevocationList {
            version: 1,
            issued_at_ms: NOW,
            entries: vec![super::super::Revocation {
                fingerprint: [0; 32],
                key_hash: key_hash(&SigningKey::from_bytes(&[22; 32]).verifying_key()),
                revoked_at_ms: NOW,
                reason: "admin retired".into(),
            }],
        };
        let list = super::super::RevocationList::verify(&list.sign(&ca).unwrap(), &ca.cluster_id())
            .unwrap();
        assert_eq!(
            verify(&chain, NOW, Some(&list)).unwrap_err(),
            TrustError::Revoked
        );
        assert_eq!(
            held.recheck(NOW, Some(&list)).unwrap_err(),
            TrustError::Revoked
        );
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
