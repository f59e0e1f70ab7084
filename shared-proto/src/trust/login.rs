//! Relay admission: the login a hub puts in its `Hello`, and the relay's check of it.
//!
//! The login is `Hello` extension [`LOGIN_EXTENSION`]:
//!
//! ```text
//! ca_key: [32] | cert_len: u16 | cert: [cert_len] (DER) | timestamp_ms: u64 | nonce: [16] |
//! signature: [64]
//! ```
//!
//! `signature` is the hub's Ed25519 identity key (the certificate's subject key) over
//! `"hub-relay login v1\0" | cluster_id (u8 length, ASCII) | hub_id [16] | timestamp_ms | nonce`.
//! The relay admits the hub only if the CA key names the cluster id of the URL, the certificate
//! chains to it, is valid now and not revoked, names the `Hello`'s hub id, the timestamp is within
//! [`MAX_SKEW_MS`] of the relay's clock, the signature verifies, and the nonce was not seen inside
//! the skew window. It costs no extra round trip: the proof rides in the first frame.

use std::collections::HashMap;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;

use super::{ClusterId, PeerCertificate, TrustError, VerifiedPeer, VerifiedRevocations};
use crate::codec::Reader;
use crate::relay::close::CloseCode;
use crate::relay::frame::{Extension, Hello, HubId};

/// The `Hello` extension kind of the login.
pub const LOGIN_EXTENSION: u16 = 1;

/// The `Hello` extension kind of a pairing guest (a hub without a certificate yet): its body is
/// the 16-byte id of the member that issued the pairing token. See `room` for what a guest may do.
pub const PAIRING_EXTENSION: u16 = 2;

/// How far a login's timestamp may be from the relay's clock, either way.
pub const MAX_SKEW_MS: u64 = 60_000;

/// Most nonces a room remembers; past that, logins are refused until old ones expire.
pub const MAX_REMEMBERED_NONCES: usize = 100_000;

const DOMAIN: &[u8] = b"hub-relay login v1\0";

/// Why the relay refuses a login. Each maps to its own close code and says nothing else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LoginError {
    /// No login extension in the `Hello`.
    #[error("a certificate login is required")]
    Missing,
    /// The login does not parse.
    #[error("malformed login")]
    Malformed,
    /// The certificate is refused: foreign CA, bad signature, dates, revoked, or malformed.
    #[error(transparent)]
    Certificate(#[from] TrustError),
    /// The certificate names another hub id than the `Hello`.
    #[error("the certificate is for another hub id")]
    HubMismatch,
    /// The timestamp is too far from the relay's clock.
    #[error("login timestamp outside the allowed clock skew")]
    Stale,
    /// The proof of possession does not verify.
    #[error("bad proof of possession")]
    BadProof,
    /// The nonce was already used.
    #[error("replayed login")]
    Replayed,
    /// The room remembers too many recent nonces to check this one.
    #[error("too many logins; try again later")]
    Busy,
}

impl LoginError {
    /// The close code the relay sends.
    pub fn close_code(&self) -> CloseCode {
        match self {
            LoginError::Missing => CloseCode::CertificateRequired,
            LoginError::Malformed | LoginError::HubMismatch => CloseCode::BadCertificate,
            LoginError::Certificate(e) => match e {
                TrustError::ForeignCa => CloseCode::ForeignCluster,
                TrustError::NotYetValid => CloseCode::CertificateNotYetValid,
                TrustError::Expired => CloseCode::CertificateExpired,
                TrustError::Revoked => CloseCode::Revoked,
                _ => CloseCode::BadCertificate,
            },
            LoginError::Stale => CloseCode::StaleLogin,
            LoginError::BadProof => CloseCode::BadProof,
            LoginError::Replayed => CloseCode::ReplayedLogin,
            LoginError::Busy => CloseCode::TryAgainLater,
        }
    }
}

fn signed_message(
    cluster: &ClusterId,
    hub: &HubId,
    timestamp_ms: u64,
    nonce: &[u8; 16],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + 1 + 32 + 16 + 8 + 16);
    m.extend_from_slice(DOMAIN);
    m.push(cluster.as_str().len() as u8);
    m.extend_from_slice(cluster.as_str().as_bytes());
    m.extend_from_slice(&hub.0);
    m.extend_from_slice(&timestamp_ms.to_be_bytes());
    m.extend_from_slice(nonce);
    m
}

/// What a hub needs to log in to its cluster's room.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The cluster CA public key.
    pub ca_key: VerifyingKey,
    /// The hub's certificate (DER).
    pub cert_der: Vec<u8>,
    /// The hub's id (as in the certificate).
    pub hub_id: HubId,
    /// The hub's Ed25519 identity key (the certificate's subject key).
    pub identity: SigningKey,
}

impl Credentials {
    /// The login extension body for a `Hello` sent at `now_ms`.
    pub fn login(&self, now_ms: u64, rng: &mut impl CryptoRngCore) -> Vec<u8> {
        let cluster = ClusterId::from_ca_key(&self.ca_key);
        let mut nonce = [0u8; 16];
        rng.fill_bytes(&mut nonce);
        let sig = self
            .identity
            .sign(&signed_message(&cluster, &self.hub_id, now_ms, &nonce));
        let mut out = Vec::with_capacity(32 + 2 + self.cert_der.len() + 8 + 16 + 64);
        out.extend_from_slice(self.ca_key.as_bytes());
        out.extend_from_slice(&(self.cert_der.len() as u16).to_be_bytes());
        out.extend_from_slice(&self.cert_der);
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sig.to_bytes());
        out
    }

    /// A `Hello` carrying a fresh login. `ext` must outlive the hello.
    pub fn hello<'a>(&self, ext: &'a [u8]) -> Hello<'a> {
        let mut hello = Hello::new(self.hub_id);
        hello.extensions.push(Extension {
            kind: LOGIN_EXTENSION,
            data: ext,
        });
        hello
    }
}

/// The nonce and timestamp of an accepted login: what a relay must remember (durably, where the
/// room can be evicted from memory) so that the login cannot be replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginNonce {
    /// The login's nonce.
    pub nonce: [u8; 16],
    /// The login's timestamp (Unix ms): the nonce matters until `timestamp_ms + MAX_SKEW_MS`.
    pub timestamp_ms: u64,
}

impl LoginNonce {
    /// Whether a login with this timestamp could still pass the skew check at `now_ms`.
    pub fn is_live(&self, now_ms: u64) -> bool {
        self.timestamp_ms.saturating_add(MAX_SKEW_MS) >= now_ms
    }
}

/// The nonces of recent logins, so that none is accepted twice inside the skew window.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashMap<[u8; 16], u64>,
}

impl ReplayGuard {
    /// Records `nonce` (with the login's timestamp) unless it was seen; forgets nonces whose
    /// timestamp can no longer pass the skew check.
    fn check_and_remember(
        &mut self,
        nonce: [u8; 16],
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), LoginError> {
        if self.seen.contains_key(&nonce) {
            return Err(LoginError::Replayed);
        }
        if self.seen.len() >= MAX_REMEMBERED_NONCES {
            self.prune(now_ms);
            if self.seen.len() >= MAX_REMEMBERED_NONCES {
                return Err(LoginError::Busy);
            }
        }
        self.seen.insert(nonce, timestamp_ms);
        Ok(())
    }

    /// Remembers a nonce accepted earlier (restored from storage).
    pub fn remember(&mut self, login: LoginNonce) {
        self.seen.insert(login.nonce, login.timestamp_ms);
    }

    /// Forgets nonces that can no longer be replayed at `now_ms`.
    pub fn prune(&mut self, now_ms: u64) {
        self.seen.retain(|nonce, ts| {
            LoginNonce {
                nonce: *nonce,
                timestamp_ms: *ts,
            }
            .is_live(now_ms)
        });
    }

    /// Whether no nonce is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Checks the login in `hello` for `cluster` at `now_ms`; see the module docs for the rules.
pub fn verify_login(
    hello: &Hello<'_>,
    cluster: &ClusterId,
    now_ms: u64,
    revocations: Option<&VerifiedRevocations>,
    guard: &mut ReplayGuard,
) -> Result<(VerifiedPeer, LoginNonce), LoginError> {
    let ext = hello
        .extensions
        .iter()
        .find(|e| e.kind == LOGIN_EXTENSION)
        .ok_or(LoginError::Missing)?;
    let mut r = Reader::new(ext.data);
    let m = |_| LoginError::Malformed;
    let ca_key = VerifyingKey::from_bytes(&r.array::<32>().map_err(m)?)
        .map_err(|_| LoginError::Malformed)?;
    let cert_len = usize::from(r.u16().map_err(m)?);
    let cert_der = r.take(cert_len).map_err(m)?;
    let timestamp_ms = r.u64().map_err(m)?;
    let nonce = r.array::<16>().map_err(m)?;
    let signature = Signature::from_bytes(&r.array::<64>().map_err(m)?);
    if !r.is_empty() {
        return Err(LoginError::Malformed);
    }
    if !cluster.names(&ca_key) {
        return Err(TrustError::ForeignCa.into());
    }
    let peer = PeerCertificate::from_der(cert_der)?.verify(&ca_key, now_ms, revocations)?;
    if peer.hub_id() != hello.hub {
        return Err(LoginError::HubMismatch);
    }
    if timestamp_ms.abs_diff(now_ms) > MAX_SKEW_MS {
        return Err(LoginError::Stale);
    }
    peer.identity_key()
        .verify_strict(
            &signed_message(cluster, &hello.hub, timestamp_ms, &nonce),
            &signature,
        )
        .map_err(|_| LoginError::BadProof)?;
    guard.check_and_remember(nonce, timestamp_ms, now_ms)?;
    Ok((
        peer,
        LoginNonce {
            nonce,
            timestamp_ms,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::cert::tests::{request, DAY_MS, NOW};
    use crate::trust::{ClusterCa, Revocation, RevocationList};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    struct Fixture {
        ca: ClusterCa,
        creds: Credentials,
        rng: StdRng,
    }

    fn fixture() -> Fixture {
        let mut rng = StdRng::seed_from_u64(11);
        let ca = ClusterCa::generate(&mut rng);
        let identity = SigningKey::generate(&mut rng);
        let cert_der = ca.issue(&request(4, &identity), &mut rng).unwrap();
        let creds = Credentials {
            ca_key: ca.public_key(),
            cert_der,
            hub_id: HubId([4; 16]),
            identity,
        };
        Fixture { ca, creds, rng }
    }

    fn check(
        f: &Fixture,
        ext: &[u8],
        now: u64,
        rl: Option<&VerifiedRevocations>,
        guard: &mut ReplayGuard,
    ) -> Result<(VerifiedPeer, LoginNonce), LoginError> {
        verify_login(&f.creds.hello(ext), &f.ca.cluster_id(), now, rl, guard)
    }

    #[test]
    fn a_good_login_is_admitted_once() {
        let mut f = fixture();
        let ext = f.creds.login(NOW, &mut f.rng);
        let mut guard = ReplayGuard::default();
        let (peer, _) = check(&f, &ext, NOW + 1_000, None, &mut guard).unwrap();
        assert_eq!(peer.hub_id(), HubId([4; 16]));
        assert_eq!(
            check(&f, &ext, NOW + 2_000, None, &mut guard).unwrap_err(),
            LoginError::Replayed
        );
        // A fresh login (new nonce) is fine.
        let ext2 = f.creds.login(NOW, &mut f.rng);
        assert!(check(&f, &ext2, NOW, None, &mut guard).is_ok());
    }

    #[test]
    fn each_bad_login_is_refused_with_its_own_reason() {
        let mut f = fixture();
        let mut guard = ReplayGuard::default();
        // Missing.
        let hello = Hello::new(HubId([4; 16]));
        assert_eq!(
            verify_login(&hello, &f.ca.cluster_id(), NOW, None, &mut guard).unwrap_err(),
            LoginError::Missing
        );
        // Stale, both ways.
        let ext = f.creds.login(NOW - MAX_SKEW_MS - 1, &mut f.rng);
        assert_eq!(
            check(&f, &ext, NOW, None, &mut guard).unwrap_err(),
            LoginError::Stale
        );
        let ext = f.creds.login(NOW + MAX_SKEW_MS + 1, &mut f.rng);
        assert_eq!(
            check(&f, &ext, NOW, None, &mut guard).unwrap_err(),
            LoginError::Stale
        );
        // Expired / not yet valid certificate.
        let ext = f.creds.login(NOW + 400 * DAY_MS, &mut f.rng);
        assert_eq!(
            check(&f, &ext, NOW + 400 * DAY_MS, None, &mut guard).unwrap_err(),
            LoginError::Certificate(TrustError::Expired)
        );
        let ext = f.creds.login(NOW - 2 * DAY_MS, &mut f.rng);
        assert_eq!(
            check(&f, &ext, NOW - 2 * DAY_MS, None, &mut guard).unwrap_err(),
            LoginError::Certificate(TrustError::NotYetValid)
        );
        // Another cluster's CA.
        let other = ClusterCa::generate(&mut f.rng);
        let ext = f.creds.login(NOW, &mut f.rng);
        assert_eq!(
            verify_login(
                &f.creds.hello(&ext),
                &other.cluster_id(),
                NOW,
                None,
                &mut guard
            )
            .unwrap_err(),
            LoginError::Certificate(TrustError::ForeignCa)
        );
        // A certificate from another CA presented with this CA's key.
        let forged = other
            .issue(&request(4, &f.creds.identity), &mut f.rng)
            .unwrap();
        let forged_creds = Credentials {
            cert_der: forged,
            ..Credentials {
                ca_key: f.creds.ca_key,
                cert_der: vec![],
                hub_id: f.creds.hub_id,
                identity: f.creds.identity.clone(),
            }
        };
        let ext = forged_creds.login(NOW, &mut f.rng);
        assert_eq!(
            check(&f, &ext, NOW, None, &mut guard).unwrap_err(),
            LoginError::Certificate(TrustError::BadSignature("certificate"))
        );
        // A proof signed by a key other than the certificate's.
        let thief = Credentials {
            identity: SigningKey::generate(&mut f.rng),
            cert_der: f.creds.cert_der.clone(),
            ca_key: f.creds.ca_key,
            hub_id: f.creds.hub_id,
        };
        let ext = thief.login(NOW, &mut f.rng);
        assert_eq!(
            check(&f, &ext, NOW, None, &mut guard).unwrap_err(),
            LoginError::BadProof
        );
        // Hello for another hub id than the certificate's.
        let ext = f.creds.login(NOW, &mut f.rng);
        let mut hello = f.creds.hello(&ext);
        hello.hub = HubId([5; 16]);
        assert_eq!(
            verify_login(&hello, &f.ca.cluster_id(), NOW, None, &mut guard).unwrap_err(),
            LoginError::HubMismatch
        );
        // Revoked, by fingerprint.
        let fp = crate::trust::fingerprint(&f.creds.cert_der);
        let rl = RevocationList {
            version: 1,
            issued_at_ms: NOW,
            entries: vec![Revocation {
                fingerprint: fp,
                key_hash: [0; 32],
                revoked_at_ms: NOW,
                reason: "test".into(),
            }],
        };
        let rl = RevocationList::verify(&rl.sign(&f.ca).unwrap(), &f.ca.cluster_id()).unwrap();
        let ext = f.creds.login(NOW, &mut f.rng);
        assert_eq!(
            check(&f, &ext, NOW, Some(&rl), &mut guard).unwrap_err(),
            LoginError::Certificate(TrustError::Revoked)
        );
        // Truncated.
        let ext = f.creds.login(NOW, &mut f.rng);
        assert_eq!(
            check(&f, &ext[..ext.len() - 1], NOW, None, &mut guard).unwrap_err(),
            LoginError::Malformed
        );
        // None of the refused logins used up a nonce slot.
        assert!(guard.is_empty());
    }
}
