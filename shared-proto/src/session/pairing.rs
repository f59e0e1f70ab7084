//! Pairing: a hub without a certificate joins the cluster with a one-time token, through the
//! relay, in one Noise IK round trip to the hub that issued the token.
//!
//! The token (`hubpair1_` + base64url) carries the relay URL, the cluster id, the issuer's hub id
//! and Noise static key, and a 256-bit secret; the issuer keeps only the secret's SHA-256. The
//! new hub connects to the relay as a pairing guest (`Hello` extension 2, see `room`), which lets
//! it reach the issuer and nobody else, and sends:
//!
//! ```text
//! 0x10 request  Noise IK message 1 (to the issuer's static key from the token), payload:
//!               secret: [32] | identity_key: [32] | name: u8 len + UTF-8 | signature: [64]
//! 0x11 answer   Noise IK message 2, payload:
//!               0x00 | ca_key: [32] | cert: u16 len + DER | issuer_cert: u16 len + DER |
//!                      manifest: u32 len + signed manifest |
//!                      revocations: u32 len + signed list (length 0: none issued yet)
//!               0x01 | reason: UTF-8                       (refused: bad, used or expired token)
//! 0x12 refused  reason: UTF-8, unencrypted: the issuer could not read the request at all
//! ```
//!
//! `signature` is the new hub's Ed25519 identity key over `"hub-relay pairing request v1\0" |
//! cluster_id (u8 length, ASCII) | issuer [16] | noise_key [32] | identity_key [32] | name`, where
//! `noise_key` is the static key of the handshake: the certificate the issuer signs binds both
//! keys, and only their holder could ask for it. The prologue is `"hub-relay pairing v1\0" |
//! cluster_id`, so a pairing handshake cannot be taken for a session handshake or moved to
//! another cluster.
//!
//! What each side learns: the new hub knows it talks to the real issuer (only the holder of the
//! token's static key can answer message 1), and checks that the answer's CA key names the
//! token's cluster and that both certificates and the manifest verify against it. The issuer
//! learns the new hub's keys and name; the secret travels encrypted, so the relay cannot use it.
//! A refusal inside message 2 is authenticated; a `0x12` refusal is not (the relay could forge
//! one), so the new hub reports it as the issuer's but it proves nothing.

use std::fmt;

use data_encoding::BASE64URL_NOPAD;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use sha2::{Digest, Sha256};

use crate::codec::{put_short_str, Reader};
use crate::relay::frame::HubId;
use crate::session::noise::{
    noise_err, static_builder, LocalIdentity, NoiseError, MAX_NOISE_MESSAGE,
};
use crate::session::payload::PayloadKind;
use crate::trust::{
    ClusterId, Manifest, PeerCertificate, RevocationList, TrustError, VerifiedManifest,
    VerifiedPeer, VerifiedRevocations,
};

/// What every pairing token starts with.
pub const TOKEN_PREFIX: &str = "hubpair1_";

/// Bytes of a token's secret.
pub const SECRET_LEN: usize = 32;

/// Peer message type of a pairing request (guest to issuer).
pub const PAIR_REQUEST: u8 = PayloadKind::PairRequest as u8;
/// Peer message type of the issuer's answer.
pub const PAIR_ANSWER: u8 = PayloadKind::PairAnswer as u8;
/// Peer message type of an unauthenticated refusal.
pub const PAIR_REFUSED: u8 = PayloadKind::PairRefused as u8;

const TOKEN_FORMAT: u8 = 1;
const CHECK_LEN: usize = 4;
const PROLOGUE_DOMAIN: &[u8] = b"hub-relay pairing v1\0";
const REQUEST_DOMAIN: &[u8] = b"hub-relay pairing request v1\0";
const ACCEPTED: u8 = 0;
const REFUSED: u8 = 1;
/// Largest Noise payload of message 2 (IK: an ephemeral key and a tag around it).
const MAX_ANSWER_PAYLOAD: usize = MAX_NOISE_MESSAGE - 32 - 16;

/// Why pairing failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PairingError {
    /// The text is not a pairing token.
    #[error("not a pairing token (tokens start with `{TOKEN_PREFIX}`)")]
    NotAToken,
    /// The token's checksum does not match: a typo, a truncation, or an altered token.
    #[error("the pairing token is damaged or was altered (checksum mismatch)")]
    Damaged,
    /// A pairing message that does not parse.
    #[error("malformed pairing message")]
    Malformed,
    /// The Noise layer refused a message.
    #[error(transparent)]
    Noise(#[from] NoiseError),
    /// The issuer refused (inside the encrypted answer: authentic).
    #[error("the issuer refused: {0}")]
    Refused(String),
    /// An unauthenticated refusal (the issuer could not read the request).
    #[error(
        "the issuer could not read the request: {0} (is the token from this cluster's issuer?)"
    )]
    Unreadable(String),
    /// The answer does not match the token or the request.
    #[error("the issuer's answer does not match: {0}")]
    Mismatch(&'static str),
    /// A certificate or the manifest was refused.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The request's proof of possession does not verify.
    #[error("bad proof of possession of the identity key")]
    BadProof,
    /// The answer would not fit one Noise message.
    #[error("the answer is too large for one message ({0} bytes)")]
    TooLarge(usize),
    /// The relay URL is longer than a token can carry.
    #[error("the relay URL is {0} bytes; a pairing token carries at most 2,048")]
    UrlTooLong(usize),
}

/// Longest relay URL a pairing token carries.
pub const MAX_URL: usize = 2048;

/// A pairing token, as `hub invite` prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingToken {
    /// The relay's base URL.
    pub relay_url: String,
    /// The cluster.
    pub cluster: ClusterId,
    /// The issuing hub.
    pub issuer: HubId,
    /// The issuer's Noise static public key.
    pub issuer_noise_key: [u8; 32],
    /// The one-time secret.
    pub secret: [u8; SECRET_LEN],
}

impl fmt::Debug for PairingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingToken")
            .field("relay_url", &self.relay_url)
            .field("cluster", &self.cluster)
            .field("issuer", &self.issuer)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl PairingToken {
    /// The token as text: `hubpair1_` and the base64url of
    /// `format: u8 = 1 | cluster_id: [32] ASCII | issuer: [16] | issuer_noise_key: [32] |
    /// secret: [32] | relay_url: u16 len + UTF-8 | check: [4]`, `check` being the first 4 bytes
    /// of the SHA-256 of everything before it.
    pub fn encode(&self) -> Result<String, PairingError> {
        let mut b = vec![TOKEN_FORMAT];
        b.extend_from_slice(self.cluster.as_str().as_bytes());
        b.extend_from_slice(&self.issuer.0);
        b.extend_from_slice(&self.issuer_noise_key);
        b.extend_from_slice(&self.secret);
        let url = self.relay_url.as_bytes();
        if url.len() > MAX_URL {
            return Err(PairingError::UrlTooLong(url.len()));
        }
        b.extend_from_slice(&(url.len() as u16).to_be_bytes());
        b.extend_from_slice(url);
        let check = Sha256::digest(&b);
        b.extend_from_slice(&check[..CHECK_LEN]);
        Ok(format!("{TOKEN_PREFIX}{}", BASE64URL_NOPAD.encode(&b)))
    }

    /// Reads a token (surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<Self, PairingError> {
        let body = text
            .trim()
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(PairingError::NotAToken)?;
        let bytes = BASE64URL_NOPAD
            .decode(body.as_bytes())
            .map_err(|_| PairingError::Damaged)?;
        if bytes.len() < CHECK_LEN {
            return Err(PairingError::Damaged);
        }
        let (content, check) = bytes.split_at(bytes.len() - CHECK_LEN);
        if Sha256::digest(content)[..CHECK_LEN] != *check {
            return Err(PairingError::Damaged);
        }
        let mut r = Reader::new(content);
        let m = |_| PairingError::Damaged;
        if r.u8().map_err(m)? != TOKEN_FORMAT {
            return Err(PairingError::NotAToken);
        }
        let cluster = std::str::from_utf8(r.take(32).map_err(m)?)
            .ok()
            .and_then(|s| s.parse::<ClusterId>().ok())
            .ok_or(PairingError::Damaged)?;
        let issuer = r.hub().map_err(m)?;
        let issuer_noise_key = r.array::<32>().map_err(m)?;
        let secret = r.array::<SECRET_LEN>().map_err(m)?;
        let len = usize::from(r.u16().map_err(m)?);
        if len > MAX_URL {
            return Err(PairingError::UrlTooLong(len));
        }
        let relay_url = std::str::from_utf8(r.take(len).map_err(m)?)
            .map_err(|_| PairingError::Damaged)?
            .to_owned();
        if !r.is_empty() {
            return Err(PairingError::Damaged);
        }
        Ok(PairingToken {
            relay_url,
            cluster,
            issuer,
            issuer_noise_key,
            secret,
        })
    }
}

fn prologue(cluster: &ClusterId) -> Vec<u8> {
    [PROLOGUE_DOMAIN, cluster.as_str().as_bytes()].concat()
}

fn signed_request(
    cluster: &ClusterId,
    issuer: &HubId,
    noise_key: &[u8; 32],
    identity_key: &VerifyingKey,
    name: &str,
) -> Vec<u8> {
    let mut m = REQUEST_DOMAIN.to_vec();
    m.push(cluster.as_str().len() as u8);
    m.extend_from_slice(cluster.as_str().as_bytes());
    m.extend_from_slice(&issuer.0);
    m.extend_from_slice(noise_key);
    m.extend_from_slice(identity_key.as_bytes());
    m.extend_from_slice(name.as_bytes());
    m
}

/// The refusal of a request whose hub name is empty or longer than 64 bytes.
pub const NAME_REFUSAL: &str = "the hub name must be 1 to 64 bytes";

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
}

/// What the new hub asks for.
#[derive(Debug)]
pub struct JoinRequest<'a> {
    /// Its name (1 to 64 bytes; it goes in the certificate).
    pub name: &'a str,
    /// Its Ed25519 identity key.
    pub identity: &'a SigningKey,
    /// Its X25519 Noise static secret.
    pub noise_secret: &'a [u8; 32],
}

/// What a successful pairing gives the new hub, all verified against the cluster.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The cluster CA public key (it names the token's cluster).
    pub ca_key: VerifyingKey,
    /// The new hub's certificate.
    pub certificate: VerifiedPeer,
    /// The issuer's certificate.
    pub issuer: VerifiedPeer,
    /// The manifest that lists the new hub.
    pub manifest: VerifiedManifest,
    /// The cluster's newest revocation list, if one was issued.
    pub revocations: Option<VerifiedRevocations>,
}

/// The new hub's side of a pairing in progress.
pub struct Joiner {
    hs: snow::HandshakeState,
    token: PairingToken,
    identity_key: VerifyingKey,
    noise_key: [u8; 32],
}

impl fmt::Debug for Joiner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Joiner")
            .field("issuer", &self.token.issuer)
            .finish_non_exhaustive()
    }
}

impl Joiner {
    /// Starts pairing with `token`'s issuer; returns the state and the request to send it.
    pub fn start(
        token: &PairingToken,
        request: &JoinRequest<'_>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Vec<u8>), PairingError> {
        if !valid_name(request.name) {
            return Err(TrustError::Malformed("hub name (1 to 64 bytes)").into());
        }
        Self::begin(token, request, rng)
    }

    /// [`Joiner::start`] without checking the name (tests make the requests a faulty hub would).
    fn begin(
        token: &PairingToken,
        request: &JoinRequest<'_>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Vec<u8>), PairingError> {
        let noise_key = crate::session::noise::public_key(request.noise_secret)?;
        let identity_key = request.identity.verifying_key();
        let prologue = prologue(&token.cluster);
        let mut hs = static_builder(request.noise_secret, &prologue, rng)?
            .remote_public_key(&token.issuer_noise_key)
            .and_then(|b| b.build_initiator())
            .map_err(noise_err)?;
        let signature = request.identity.sign(&signed_request(
            &token.cluster,
            &token.issuer,
            &noise_key,
            &identity_key,
            request.name,
        ));
        let mut payload = token.secret.to_vec();
        payload.extend_from_slice(identity_key.as_bytes());
        // The name was checked to be 1 to 64 bytes above.
        let _ = put_short_str(&mut payload, request.name);
        payload.extend_from_slice(&signature.to_bytes());
        let mut msg = vec![0u8; 1 + MAX_NOISE_MESSAGE];
        msg[0] = PAIR_REQUEST;
        let n = hs
            .write_message(&payload, &mut msg[1..])
            .map_err(noise_err)?;
        msg.truncate(1 + n);
        let joiner = Joiner {
            hs,
            token: token.clone(),
            identity_key,
            noise_key,
        };
        Ok((joiner, msg))
    }

    /// Reads the issuer's answer (a whole peer message) at `now_ms`.
    pub fn finish(mut self, message: &[u8], now_ms: u64) -> Result<Joined, PairingError> {
        let (&kind, body) = message.split_first().ok_or(PairingError::Malformed)?;
        match kind {
            PAIR_ANSWER => {}
            PAIR_REFUSED => {
                return Err(PairingError::Unreadable(
                    String::from_utf8_lossy(body).into_owned(),
                ))
            }
            _ => return Err(PairingError::Malformed),
        }
        let mut payload = vec![0u8; MAX_NOISE_MESSAGE];
        let n = self
            .hs
            .read_message(body, &mut payload)
            .map_err(noise_err)?;
        read_answer(
            &payload[..n],
            &self.token,
            &self.identity_key,
            &self.noise_key,
            now_ms,
        )
    }
}

/// The joiner's reading of a decrypted answer: the CA key must name the token's cluster, the
/// issuer's certificate must be the token's issuer, the new certificate must carry this hub's
/// keys, and the manifest must list it, all verified.
fn read_answer(
    payload: &[u8],
    token: &PairingToken,
    identity_key: &VerifyingKey,
    noise_key: &[u8; 32],
    now_ms: u64,
) -> Result<Joined, PairingError> {
    let mut r = Reader::new(payload);
    let m = |_| PairingError::Malformed;
    match r.u8().map_err(m)? {
        ACCEPTED => {}
        REFUSED => {
            return Err(PairingError::Refused(
                String::from_utf8_lossy(r.rest()).into_owned(),
            ))
        }
        _ => return Err(PairingError::Malformed),
    }
    let ca_key = VerifyingKey::from_bytes(&r.array::<32>().map_err(m)?)
        .map_err(|_| PairingError::Malformed)?;
    let len = usize::from(r.u16().map_err(m)?);
    let cert = r.take(len).map_err(m)?;
    let len = usize::from(r.u16().map_err(m)?);
    let issuer_cert = r.take(len).map_err(m)?;
    let len = r.u32().map_err(m)? as usize;
    let manifest = r.take(len).map_err(m)?;
    let len = r.u32().map_err(m)? as usize;
    let revocations = r.take(len).map_err(m)?;
    if !r.is_empty() {
        return Err(PairingError::Malformed);
    }
    if !token.cluster.names(&ca_key) {
        return Err(PairingError::Mismatch(
            "the CA key does not name the token's cluster",
        ));
    }
    let revocations = match revocations {
        [] => None,
        list => Some(RevocationList::verify(list, &token.cluster)?),
    };
    let issuer =
        PeerCertificate::from_der(issuer_cert)?.verify(&ca_key, now_ms, revocations.as_ref())?;
    if issuer.hub_id() != token.issuer || *issuer.noise_key() != token.issuer_noise_key {
        return Err(PairingError::Mismatch(
            "the issuer's certificate is not the token's issuer",
        ));
    }
    let certificate = PeerCertificate::from_der(cert)?.verify(&ca_key, now_ms, None)?;
    if certificate.identity_key() != identity_key || certificate.noise_key() != noise_key {
        return Err(PairingError::Mismatch(
            "the certificate is not for this hub's keys",
        ));
    }
    let manifest = Manifest::verify(manifest, &token.cluster)?;
    if !manifest
        .manifest()
        .members
        .iter()
        .any(|m| m.hub_id == certificate.hub_id() && m.fingerprint == certificate.fingerprint())
    {
        return Err(PairingError::Mismatch(
            "the manifest does not list this hub",
        ));
    }
    Ok(Joined {
        ca_key,
        certificate,
        issuer,
        manifest,
        revocations,
    })
}

/// Internals for the fuzz targets (`--cfg fuzzing`).
#[cfg(fuzzing)]
pub mod fuzzing {
    use super::*;

    /// Reads a decrypted answer that accepts the pairing and names `ca_key`, followed by
    /// `rest` (the certificates, the manifest and the revocation list, length-prefixed), as a
    /// joiner with these keys would.
    pub fn read_accepted_answer(
        ca_key: &VerifyingKey,
        rest: &[u8],
        token: &PairingToken,
        identity_key: &VerifyingKey,
        noise_key: &[u8; 32],
        now_ms: u64,
    ) -> Result<Joined, PairingError> {
        let mut payload = vec![ACCEPTED];
        payload.extend_from_slice(ca_key.as_bytes());
        payload.extend_from_slice(rest);
        read_answer(&payload, token, identity_key, noise_key, now_ms)
    }
}

/// A pairing request the issuer has read: who asks, with which secret. Answer it with
/// [`PairingRequest::accept`] or [`PairingRequest::refuse`].
pub struct PairingRequest {
    hs: snow::HandshakeState,
    secret: [u8; SECRET_LEN],
    /// The name the new hub asks for.
    pub name: String,
    /// Its Ed25519 identity key (proven).
    pub identity_key: VerifyingKey,
    /// Its Noise static key (the handshake's).
    pub noise_key: [u8; 32],
}

impl fmt::Debug for PairingRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PairingRequest")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl PairingRequest {
    /// Reads a request (a whole peer message) sent to the issuer `local` (hub id `issuer`).
    pub fn read(
        local: &LocalIdentity,
        issuer: HubId,
        message: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, PairingError> {
        let (&kind, body) = message.split_first().ok_or(PairingError::Malformed)?;
        if kind != PAIR_REQUEST {
            return Err(PairingError::Malformed);
        }
        let prologue = prologue(&local.cluster);
        let mut hs = static_builder(local.static_secret.as_bytes(), &prologue, rng)?
            .build_responder()
            .map_err(noise_err)?;
        let mut payload = vec![0u8; MAX_NOISE_MESSAGE];
        let n = hs.read_message(body, &mut payload).map_err(noise_err)?;
        let noise_key: [u8; 32] = hs
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or(PairingError::Malformed)?;
        let mut r = Reader::new(&payload[..n]);
        let m = |_| PairingError::Malformed;
        let secret = r.array::<SECRET_LEN>().map_err(m)?;
        let identity_key = VerifyingKey::from_bytes(&r.array::<32>().map_err(m)?)
            .map_err(|_| PairingError::Malformed)?;
        let name = r.short_str().map_err(m)?.to_owned();
        let signature = Signature::from_bytes(&r.array::<64>().map_err(m)?);
        if !r.is_empty() {
            return Err(PairingError::Malformed);
        }
        let signed = signed_request(&local.cluster, &issuer, &noise_key, &identity_key, &name);
        identity_key
            .verify_strict(&signed, &signature)
            .map_err(|_| PairingError::BadProof)?;
        Ok(PairingRequest {
            hs,
            secret,
            name,
            identity_key,
            noise_key,
        })
    }

    /// Why the issuer must refuse it whatever its token, if it must: a name that does not fit a
    /// certificate (1 to 64 bytes). Check before redeeming the token, and answer with
    /// [`PairingRequest::refuse`].
    pub fn unfit(&self) -> Option<&'static str> {
        (!valid_name(&self.name)).then_some(NAME_REFUSAL)
    }

    /// The token secret it presents (compare only its hash).
    pub fn secret(&self) -> &[u8; SECRET_LEN] {
        &self.secret
    }

    /// The answer that admits it: its certificate, the issuer's, the manifest listing it, and
    /// the newest revocation list if there is one.
    pub fn accept(
        self,
        local: &LocalIdentity,
        certificate_der: &[u8],
        manifest: &[u8],
        revocations: Option<&[u8]>,
    ) -> Result<Vec<u8>, PairingError> {
        let too_long = |n: usize| PairingError::TooLarge(n);
        let mut p = vec![ACCEPTED];
        p.extend_from_slice(local.ca_key.as_bytes());
        for der in [certificate_der, &local.cert_der] {
            let len = u16::try_from(der.len()).map_err(|_| too_long(der.len()))?;
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(der);
        }
        for doc in [manifest, revocations.unwrap_or_default()] {
            let len = u32::try_from(doc.len()).map_err(|_| too_long(doc.len()))?;
            p.extend_from_slice(&len.to_be_bytes());
            p.extend_from_slice(doc);
        }
        self.answer(&p)
    }

    /// The answer that refuses it, with a reason the new hub shows (never a secret).
    pub fn refuse(self, reason: &str) -> Result<Vec<u8>, PairingError> {
        let mut p = vec![REFUSED];
        p.extend_from_slice(reason.as_bytes());
        self.answer(&p)
    }

    fn answer(mut self, payload: &[u8]) -> Result<Vec<u8>, PairingError> {
        if payload.len() > MAX_ANSWER_PAYLOAD {
            return Err(PairingError::TooLarge(payload.len()));
        }
        let mut msg = vec![0u8; 1 + MAX_NOISE_MESSAGE];
        msg[0] = PAIR_ANSWER;
        let n = self
            .hs
            .write_message(payload, &mut msg[1..])
            .map_err(noise_err)?;
        msg.truncate(1 + n);
        Ok(msg)
    }
}

/// An unencrypted refusal, for a request the issuer cannot read.
pub fn refused_unreadable(reason: &str) -> Vec<u8> {
    [&[PAIR_REFUSED][..], reason.as_bytes()].concat()
}

/// Whether a peer message belongs to pairing (and not to the session layer).
pub fn is_pairing_message(message: &[u8]) -> bool {
    PayloadKind::of(message).is_some_and(PayloadKind::is_pairing)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::noise::tests::{hub, Hub};
    use crate::trust::cert::tests::NOW;
    use crate::trust::{CertificateRequest, ClusterCa, ManifestMember, TrustLevel};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ca() -> ClusterCa {
        ClusterCa::from_secret(&[7; 32])
    }

    fn token(issuer: &Hub) -> PairingToken {
        PairingToken {
            relay_url: "ws://127.0.0.1:8787".into(),
            cluster: ca().cluster_id(),
            issuer: issuer.cert.hub_id(),
            issuer_noise_key: *issuer.cert.noise_key(),
            secret: [9; SECRET_LEN],
        }
    }

    /// What the issuer does with a request it accepts: sign a certificate and a manifest.
    fn admit(issuer: &Hub, req: PairingRequest) -> Vec<u8> {
        let ca = ca();
        let cert = ca
            .issue(
                &CertificateRequest {
                    hub_id: HubId([0x42; 16]),
                    name: req.name.clone(),
                    trust: TrustLevel::AgentDispatch,
                    roles: vec![],
                    identity_key: req.identity_key,
                    noise_key: req.noise_key,
                    not_before_ms: NOW - 1,
                    not_after_ms: NOW + 1_000_000,
                },
                &mut StdRng::seed_from_u64(3),
            )
            .unwrap();
        let manifest = Manifest {
            epoch: 2,
            issued_at_ms: NOW,
            members: vec![ManifestMember {
                hub_id: HubId([0x42; 16]),
                fingerprint: crate::trust::fingerprint(&cert),
                trust: TrustLevel::AgentDispatch,
                roles: vec![],
            }],
        }
        .sign(&ca)
        .unwrap();
        let revocations = crate::trust::RevocationList {
            version: 4,
            issued_at_ms: NOW,
            entries: vec![],
        }
        .sign(&ca)
        .unwrap();
        req.accept(&issuer.local, &cert, &manifest, Some(&revocations))
            .unwrap()
    }

    fn keys() -> (SigningKey, [u8; 32]) {
        (SigningKey::from_bytes(&[0x51; 32]), [0x52; 32])
    }

    #[test]
    fn tokens_round_trip_and_hide_their_secret_in_debug() {
        let issuer = hub(&ca(), 1);
        let t = token(&issuer);
        let text = t.encode().unwrap();
        assert!(text.starts_with(TOKEN_PREFIX));
        assert_eq!(PairingToken::parse(&format!("  {text}\n")).unwrap(), t);
        assert!(!format!("{t:?}").contains("9, 9"));
        // A URL longer than a token carries is an error, not a URL cut short (it once was cut
        // at 65,535 bytes without a word).
        let mut long = t.clone();
        long.relay_url = format!("wss://{}.example", "a".repeat(MAX_URL));
        assert_eq!(
            long.encode(),
            Err(PairingError::UrlTooLong(long.relay_url.len()))
        );
    }

    #[test]
    fn damaged_or_altered_tokens_are_refused() {
        let issuer = hub(&ca(), 1);
        let text = token(&issuer).encode().unwrap();
        assert_eq!(PairingToken::parse("hello"), Err(PairingError::NotAToken));
        assert_eq!(
            PairingToken::parse(&text[..text.len() - 3]),
            Err(PairingError::Damaged)
        );
        // Flip one character anywhere in the body: the checksum catches it.
        let body_start = TOKEN_PREFIX.len();
        for i in [body_start, body_start + 40, text.len() - 1] {
            let mut chars: Vec<char> = text.chars().collect();
            chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
            let altered: String = chars.into_iter().collect();
            assert_eq!(
                PairingToken::parse(&altered),
                Err(PairingError::Damaged),
                "at {i}"
            );
        }
    }

    #[test]
    fn a_new_hub_pairs_in_one_round_trip_and_checks_everything_it_gets() {
        let issuer = hub(&ca(), 1);
        let (identity, noise) = keys();
        let mut rng = StdRng::seed_from_u64(1);
        let request = JoinRequest {
            name: "laptop",
            identity: &identity,
            noise_secret: &noise,
        };
        let (joiner, m1) = Joiner::start(&token(&issuer), &request, &mut rng).unwrap();
        assert!(is_pairing_message(&m1));
        let req = PairingRequest::read(&issuer.local, issuer.cert.hub_id(), &m1, &mut rng).unwrap();
        assert_eq!(req.secret(), &[9; SECRET_LEN]);
        assert_eq!(req.name, "laptop");
        assert_eq!(req.identity_key, identity.verifying_key());
        assert_eq!(
            req.noise_key,
            crate::session::noise::public_key(&noise).unwrap()
        );
        let joined = joiner.finish(&admit(&issuer, req), NOW).unwrap();
        assert_eq!(joined.certificate.name(), "laptop");
        assert_eq!(joined.issuer.hub_id(), issuer.cert.hub_id());
        assert_eq!(joined.ca_key, ca().public_key());
        assert_eq!(joined.manifest.manifest().epoch, 2);
        assert_eq!(joined.revocations.unwrap().version(), 4);
        // The secret travels encrypted.
        assert!(!m1.windows(SECRET_LEN).any(|w| w == [9; SECRET_LEN]));
    }

    #[test]
    fn a_refusal_is_authenticated_and_reported() {
        let issuer = hub(&ca(), 1);
        let (identity, noise) = keys();
        let mut rng = StdRng::seed_from_u64(2);
        let request = JoinRequest {
            name: "phone",
            identity: &identity,
            noise_secret: &noise,
        };
        let (joiner, m1) = Joiner::start(&token(&issuer), &request, &mut rng).unwrap();
        let req = PairingRequest::read(&issuer.local, issuer.cert.hub_id(), &m1, &mut rng).unwrap();
        let answer = req
            .refuse("invalid, used or expired pairing token")
            .unwrap();
        assert_eq!(
            joiner.finish(&answer, NOW).unwrap_err(),
            PairingError::Refused("invalid, used or expired pairing token".into())
        );
    }

    /// A request whose name does not fit a certificate (a hub that skipped the check) is read,
    /// found unfit, and refused with the reason, authenticated.
    #[test]
    fn a_name_out_of_bounds_is_refused_with_its_reason() {
        let issuer = hub(&ca(), 1);
        let (identity, noise) = keys();
        let mut rng = StdRng::seed_from_u64(2);
        let long = "n".repeat(65);
        for name in ["", long.as_str()] {
            let request = JoinRequest {
                name,
                identity: &identity,
                noise_secret: &noise,
            };
            assert!(Joiner::start(&token(&issuer), &request, &mut rng).is_err());
            let (joiner, m1) = Joiner::begin(&token(&issuer), &request, &mut rng).unwrap();
            let req =
                PairingRequest::read(&issuer.local, issuer.cert.hub_id(), &m1, &mut rng).unwrap();
            let why = req.unfit().unwrap();
            let answer = req.refuse(why).unwrap();
            assert_eq!(
                joiner.finish(&answer, NOW).unwrap_err(),
                PairingError::Refused(NAME_REFUSAL.into())
            );
        }
        let ok = JoinRequest {
            name: &long[..64],
            identity: &identity,
            noise_secret: &noise,
        };
        let (_, m1) = Joiner::start(&token(&issuer), &ok, &mut rng).unwrap();
        let req = PairingRequest::read(&issuer.local, issuer.cert.hub_id(), &m1, &mut rng).unwrap();
        assert_eq!(req.unfit(), None);
    }

    #[test]
    fn a_token_with_another_issuer_key_cannot_be_read_and_an_impostor_cannot_answer() {
        let issuer = hub(&ca(), 1);
        let impostor = hub(&ca(), 2);
        let (identity, noise) = keys();
        let mut rng = StdRng::seed_from_u64(3);
        let request = JoinRequest {
            name: "phone",
            identity: &identity,
            noise_secret: &noise,
        };
        // A token altered to name the impostor's key (checksum recomputed): the real issuer
        // cannot read the request.
        let mut t = token(&issuer);
        t.issuer_noise_key = *impostor.cert.noise_key();
        let (_, m1) = Joiner::start(&t, &request, &mut rng).unwrap();
        assert!(matches!(
            PairingRequest::read(&issuer.local, issuer.cert.hub_id(), &m1, &mut rng),
            Err(PairingError::Noise(_))
        ));
        // The impostor reads it (it holds that key) but its answer names a hub that is not the
        // token's issuer: refused.
        let (joiner, m1) = Joiner::start(&t, &request, &mut rng).unwrap();
        let req =
            PairingRequest::read(&impostor.local, issuer.cert.hub_id(), &m1, &mut rng).unwrap();
        assert!(matches!(
            joiner.finish(&admit(&impostor, req), NOW),
            Err(PairingError::Mismatch(_))
        ));
        // An answer from another cluster's CA is refused.
        let (joiner, m1) = Joiner::start(&token(&issuer), &request, &mut rng).unwrap();
        let mut foreign = hub(&ClusterCa::from_secret(&[8; 32]), 1);
        foreign.local.static_secret = issuer.local.static_secret.clone();
        foreign.local.cluster = ca().cluster_id();
        let req =
            PairingRequest::read(&foreign.local, issuer.cert.hub_id(), &m1, &mut rng).unwrap();
        assert!(matches!(
            joiner.finish(&admit(&foreign, req), NOW),
            Err(PairingError::Mismatch(_))
        ));
    }

    #[test]
    fn a_request_with_a_forged_proof_is_refused() {
        let issuer = hub(&ca(), 1);
        let (identity, noise) = keys();
        let mut rng = StdRng::seed_from_u64(4);
        // Build a request by hand whose signature is by another key.
        let cluster = ca().cluster_id();
        let prologue = prologue(&cluster);
        let mut hs = static_builder(&noise, &prologue, &mut rng)
            .unwrap()
            .remote_public_key(issuer.cert.noise_key())
            .unwrap()
            .build_initiator()
            .unwrap();
        let noise_key = crate::session::noise::public_key(&noise).unwrap();
        let other = SigningKey::from_bytes(&[0x77; 32]);
        let sig = other.sign(&signed_request(
            &cluster,
            &issuer.cert.hub_id(),
            &noise_key,
            &identity.verifying_key(),
            "thief",
        ));
        let mut payload = [9u8; SECRET_LEN].to_vec();
        payload.extend_from_slice(identity.verifying_key().as_bytes());
        put_short_str(&mut payload, "thief").unwrap();
        payload.extend_from_slice(&sig.to_bytes());
        let mut msg = vec![0u8; 1 + MAX_NOISE_MESSAGE];
        msg[0] = PAIR_REQUEST;
        let n = hs.write_message(&payload, &mut msg[1..]).unwrap();
        msg.truncate(1 + n);
        assert_eq!(
            PairingRequest::read(&issuer.local, issuer.cert.hub_id(), &msg, &mut rng).unwrap_err(),
            PairingError::BadProof
        );
    }

    #[test]
    fn an_unreadable_refusal_is_reported_as_such() {
        let issuer = hub(&ca(), 1);
        let (identity, noise) = keys();
        let request = JoinRequest {
            name: "phone",
            identity: &identity,
            noise_secret: &noise,
        };
        let (joiner, _) =
            Joiner::start(&token(&issuer), &request, &mut StdRng::seed_from_u64(5)).unwrap();
        assert!(matches!(
            joiner.finish(&refused_unreadable("cannot decrypt"), NOW),
            Err(PairingError::Unreadable(r)) if r == "cannot decrypt"
        ));
    }
}
