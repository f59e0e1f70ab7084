//! Cluster trust: the CA, peer certificates, the signed manifest and revocation list, and the
//! relay login proof.
//!
//! A cluster is named by its CA key: the [`ClusterId`] is the base32 of the first 20 bytes of
//! SHA-256 over the CA's Ed25519 public key. Anyone holding the CA public key can check that it
//! belongs to a cluster id, so the relay needs no per-cluster configuration: a hub presents the CA
//! key and its certificate, and the relay verifies the chain against the id in the URL.
//!
//! Everything here is pure: time is a `now` argument (Unix milliseconds) and randomness an RNG
//! argument, so the same checks run in the wasm32 Worker, in the hub and in tests. Parsing gives
//! an unverified value ([`PeerCertificate`], [`RevocationList::decode`]); only verification gives
//! the types the rest of the code trusts ([`VerifiedPeer`], [`VerifiedRevocations`]).

pub(crate) mod cert;
pub mod login;
pub mod renewal;
pub mod rotation;
mod signed;

use std::fmt;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};

pub use cert::{
    chain_parts, has_root_only_role, CertificateRequest, ClusterCa, PeerCertificate, VerifiedPeer,
    ADMIN_ROLE, HUB_EXTENSION_OID,
};
pub use signed::{
    DocumentSigner, Manifest, ManifestMember, Revocation, RevocationList, VerifiedManifest,
    VerifiedRevocations,
};

/// Length of a certificate fingerprint (SHA-256 of its DER).
pub const FINGERPRINT_LEN: usize = 32;

/// The SHA-256 of a certificate's DER encoding: how manifests and revocations name it.
pub fn fingerprint(der: &[u8]) -> [u8; FINGERPRINT_LEN] {
    Sha256::digest(der).into()
}

/// The SHA-256 of a hub's Ed25519 public key: revocation by key survives re-issued certificates.
pub fn key_hash(key: &VerifyingKey) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A cluster's id: 32 lowercase base32 characters naming the CA key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(String);

impl ClusterId {
    /// The id of the cluster whose CA public key is `ca`.
    pub fn from_ca_key(ca: &VerifyingKey) -> Self {
        let digest = Sha256::digest(ca.as_bytes());
        ClusterId(base32(&digest[..20]))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `ca` is the key this id names.
    pub fn names(&self, ca: &VerifyingKey) -> bool {
        Self::from_ca_key(ca) == *self
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for ClusterId {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 32 && s.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')) {
            Ok(ClusterId(s.to_owned()))
        } else {
            Err(TrustError::Malformed("cluster id"))
        }
    }
}

/// RFC 4648 base32, lowercase, no padding (input length a multiple of 5).
fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
    let mut out = String::with_capacity(bytes.len() * 8 / 5);
    for chunk in bytes.chunks(5) {
        let mut buf = [0u8; 5];
        buf[..chunk.len()].copy_from_slice(chunk);
        let n = buf.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
        for i in (0..8).rev() {
            out.push(char::from(ALPHABET[((n >> (i * 5)) & 31) as usize]));
        }
    }
    out
}

/// What a hub may do in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum TrustLevel {
    /// List apps and read; no calls that act.
    ReadOnly = 1,
    /// Dispatch agent calls to apps shared with it.
    AgentDispatch = 2,
    /// Everything, including administration.
    Full = 3,
}

impl TrustLevel {
    /// Its wire value.
    pub fn to_u8(self) -> u8 {
        self as u8
    }

    /// From its wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            1 => Some(Self::ReadOnly),
            2 => Some(Self::AgentDispatch),
            3 => Some(Self::Full),
            _ => None,
        }
    }

    /// Its name: `read_only`, `agent_dispatch` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ReadOnly => "read_only",
            Self::AgentDispatch => "agent_dispatch",
            Self::Full => "full",
        }
    }
}

impl fmt::Display for TrustLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TrustLevel {
    type Err = TrustError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read_only" => Ok(Self::ReadOnly),
            "agent_dispatch" => Ok(Self::AgentDispatch),
            "full" => Ok(Self::Full),
            _ => Err(TrustError::Malformed(
                "trust level (read_only, agent_dispatch or full)",
            )),
        }
    }
}

/// Why a certificate, signed document or login is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TrustError {
    /// Bytes that do not parse as what they claim to be.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Signed by a key other than the cluster's CA, or the signature does not verify.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// The CA key does not belong to the expected cluster id.
    #[error("the CA key does not belong to this cluster")]
    ForeignCa,
    /// `now` is before the certificate's `notBefore`.
    #[error("certificate not yet valid")]
    NotYetValid,
    /// `now` is after the certificate's `notAfter`.
    #[error("certificate expired")]
    Expired,
    /// The certificate is on the revocation list.
    #[error("certificate revoked")]
    Revoked,
    /// A signer without the power it used: an admin making an admin or a founder, a signer
    /// whose certificate is not an admin certificate, or whose admin certificate is revoked.
    #[error("not an admin: {0}")]
    NotAdmin(&'static str),
    /// A version or epoch not newer than the one held.
    #[error("{0} is not newer than the one held")]
    NotNewer(&'static str),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base32_known_answers() {
        // RFC 4648 test vectors, lowercased and without padding.
        assert_eq!(base32(b"fooba"), "mzxw6ytb");
        assert_eq!(base32(&[0xff; 5]), "77777777");
        assert_eq!(base32(&[0; 5]), "aaaaaaaa");
    }

    #[test]
    fn cluster_id_names_its_key() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]).verifying_key();
        let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]).verifying_key();
        let id = ClusterId::from_ca_key(&key);
        assert_eq!(id.as_str().len(), 32);
        assert!(crate::relay::path::is_valid_cluster_id(id.as_str()));
        assert!(id.names(&key));
        assert!(!id.names(&other));
        assert_eq!(id.as_str().parse::<ClusterId>().unwrap(), id);
        assert!("UPPER".parse::<ClusterId>().is_err());
    }

    #[test]
    fn trust_levels_round_trip() {
        for t in [
            TrustLevel::ReadOnly,
            TrustLevel::AgentDispatch,
            TrustLevel::Full,
        ] {
            assert_eq!(TrustLevel::from_u8(t.to_u8()), Some(t));
            assert_eq!(t.as_str().parse::<TrustLevel>().unwrap(), t);
        }
        assert_eq!(TrustLevel::from_u8(0), None);
        assert!("admin".parse::<TrustLevel>().is_err());
    }
}
