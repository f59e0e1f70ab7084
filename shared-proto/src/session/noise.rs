//! End-to-end sessions between hubs: `Noise_IK_25519_ChaChaPoly_BLAKE2s` (snow), sans-IO.
//!
//! The initiator knows the responder's static key from the responder's verified certificate
//! (IK). Flow, each step consuming the previous state (typestate):
//!
//! 1. [`Initiator::start`] -> first message; its payload carries a timestamp and the
//!    initiator's certificate.
//! 2. [`Responder::accept`] reads it: the initiator's certificate must chain to the cluster CA,
//!    be valid and unrevoked, and carry the static key the handshake proved; the timestamp must be
//!    within [`HANDSHAKE_MAX_AGE_MS`] of now and newer than the last one accepted from that hub
//!    ([`HandshakeReplay`]). It returns the
//!    [`Transport`] and the second message (payload: the responder's timestamp and certificate).
//! 3. [`Initiator::finish`] reads the second message and returns its [`Transport`].
//!
//! Transport messages are `counter: u64 | ciphertext` with an explicit counter (snow's stateless
//! transport), so messages may arrive out of order: a sliding window of [`REPLAY_WINDOW`]
//! counters accepts reordering inside it and refuses duplicates and anything older.
//!
//! X25519 is snow's (curve25519-dalek, portable), or with the feature `aws-lc` (the hub's),
//! aws-lc-rs's assembly ([`X25519_BACKEND`]): the X25519 operations of a handshake are most of
//! its cost, and aws-lc-rs does them in 0.44x curve25519-dalek's time here (275.0 vs 631.1 us
//! in one run of the noise bench, docs/BENCHMARKS.md).
//!
//! The prologue binds every session to the cluster: `"hub-relay noise v1\0" | cluster id`.
//! Time (`now_ms`) and randomness (an RNG) are arguments: nothing here reads a clock or the OS
//! RNG, so the whole handshake is deterministic under a seeded RNG in tests.

use std::collections::HashMap;

use rand_core::CryptoRngCore;
use snow::params::NoiseParams;
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

use crate::codec::Reader;
use crate::relay::frame::HubId;
use crate::trust::{ClusterId, PeerCertificate, TrustError, VerifiedPeer, VerifiedRevocations};

/// The Noise pattern, as the Noise spec names it.
pub const PATTERN: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";

/// Largest Noise message (the Noise spec's limit).
pub const MAX_NOISE_MESSAGE: usize = 65_535;

/// AEAD tag length.
pub const TAG_LEN: usize = 16;

/// Bytes a transport message adds to its plaintext: the counter and the tag.
pub const TRANSPORT_OVERHEAD: usize = 8 + TAG_LEN;

/// Largest plaintext of one transport message.
pub const MAX_TRANSPORT_PLAINTEXT: usize = MAX_NOISE_MESSAGE - TRANSPORT_OVERHEAD;

/// Counters remembered behind the highest one received.
pub const REPLAY_WINDOW: u64 = 8192;

/// A session should be replaced after this long (a new handshake; the old session keeps
/// receiving until the new one is in use, so nothing is lost).
pub const REKEY_AFTER_MS: u64 = 120_000;

/// ... or after this many messages sent.
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;

/// A session refuses to send or receive after this long: it must have been replaced.
pub const REJECT_AFTER_MS: u64 = 180_000;

/// A first message whose timestamp is further than this from the responder's clock, either way,
/// is refused ([`NoiseError::StaleHandshake`]): a captured one cannot be replayed later, even to
/// a responder that restarted and forgot the last timestamp it accepted. The same bound as the
/// relay login's.
pub const HANDSHAKE_MAX_AGE_MS: u64 = 60_000;

/// ... or after this many messages sent.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

const PROLOGUE_DOMAIN: &[u8] = b"hub-relay noise v1\0";

/// Why a handshake or transport message is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NoiseError {
    /// The Noise layer refused the message (bad MAC, wrong key, malformed).
    #[error("noise: {0}")]
    Noise(String),
    /// A payload that does not parse.
    #[error("malformed handshake payload")]
    Malformed,
    /// The peer's certificate is refused.
    #[error("peer certificate refused: {0}")]
    Certificate(#[from] TrustError),
    /// The handshake's static key is not the one the certificate names.
    #[error("the peer's static key does not match its certificate")]
    KeyMismatch,
    /// A first message whose timestamp is not newer than the last accepted from that hub.
    #[error("replayed handshake")]
    ReplayedHandshake,
    /// A first message whose timestamp is more than [`HANDSHAKE_MAX_AGE_MS`] from now.
    #[error("stale handshake: its timestamp is more than 60 s from this hub's clock")]
    StaleHandshake,
    /// A transport counter already received or older than the window.
    #[error("replayed or too old transport message")]
    Replayed,
    /// The session is past its reject limit (time or messages); a new handshake is needed.
    #[error("session expired; handshake again")]
    Expired,
    /// A plaintext over [`MAX_TRANSPORT_PLAINTEXT`].
    #[error("plaintext of {0} bytes exceeds one Noise message")]
    TooLarge(usize),
}

pub(crate) fn noise_err(e: snow::Error) -> NoiseError {
    NoiseError::Noise(e.to_string())
}

/// Which X25519 the sessions use: `aws-lc-rs` with the feature `aws-lc`, else
/// `curve25519-dalek` (snow's).
pub const X25519_BACKEND: &str = if cfg!(feature = "aws-lc") {
    "aws-lc-rs"
} else {
    "curve25519-dalek"
};

/// The sessions' X25519 ([`X25519_BACKEND`]).
fn x25519() -> Result<Box<dyn Dh>, NoiseError> {
    Resolver(Vec::new())
        .resolve_dh(&snow::params::DHChoice::Curve25519)
        .ok_or_else(|| NoiseError::Noise("X25519 unavailable".into()))
}

/// The X25519 public key of a static secret.
pub fn public_key(secret: &[u8; 32]) -> Result<[u8; 32], NoiseError> {
    Ok(X25519Key::from_secret(secret)?.public())
}

/// An X25519 key pair with the sessions' X25519 ([`X25519_BACKEND`]), as a handshake uses its
/// keys: the public key computed once, then any number of agreements (benchmarks measure a
/// handshake's floor with it).
pub struct X25519Key(Box<dyn Dh>);

impl std::fmt::Debug for X25519Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("X25519Key").finish_non_exhaustive()
    }
}

impl X25519Key {
    /// The key pair of `secret`.
    pub fn from_secret(secret: &[u8; 32]) -> Result<Self, NoiseError> {
        let mut dh = x25519()?;
        dh.set(secret);
        Ok(X25519Key(dh))
    }

    /// Its public key.
    pub fn public(&self) -> [u8; 32] {
        let mut public = [0u8; 32];
        if let Some(p) = self.0.pubkey().get(..32) {
            public.copy_from_slice(p);
        }
        public
    }

    /// The shared secret with `public`.
    pub fn agree(&self, public: &[u8; 32]) -> Result<[u8; 32], NoiseError> {
        let mut out = [0u8; 32];
        self.0.dh(public, &mut out).map_err(noise_err)?;
        Ok(out)
    }
}

/// X25519 by aws-lc-rs (its field arithmetic in assembly).
#[cfg(feature = "aws-lc")]
#[derive(Default)]
struct AwsLcX25519 {
    secret: zeroize::Zeroizing<[u8; 32]>,
    public: [u8; 32],
    /// The secret as aws-lc holds it (made once: making it also computes the public key).
    key: Option<aws_lc_rs::agreement::PrivateKey>,
}

#[cfg(feature = "aws-lc")]
impl Dh for AwsLcX25519 {
    fn name(&self) -> &'static str {
        "25519"
    }

    fn pub_len(&self) -> usize {
        32
    }

    fn priv_len(&self) -> usize {
        32
    }

    fn set(&mut self, privkey: &[u8]) {
        use aws_lc_rs::agreement::{PrivateKey, X25519};
        self.public = [0; 32];
        self.key = None;
        let Ok(secret) = <[u8; 32]>::try_from(privkey) else {
            return;
        };
        *self.secret = secret;
        // Cannot fail for 32 bytes; without a key every DH fails, none succeeds.
        self.key = PrivateKey::from_private_key(&X25519, privkey).ok();
        let public = self.key.as_ref().and_then(|k| k.compute_public_key().ok());
        if let Some(public) = public.and_then(|p| <[u8; 32]>::try_from(p.as_ref()).ok()) {
            self.public = public;
        }
    }

    fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        rng.try_fill_bytes(&mut secret[..])?;
        self.set(&secret[..]);
        Ok(())
    }

    fn pubkey(&self) -> &[u8] {
        &self.public
    }

    fn privkey(&self) -> &[u8] {
        &self.secret[..]
    }

    /// Refuses a public key whose shared secret is all zeros (a low-order point), as RFC 7748
    /// allows and Noise recommends: such a key contributes nothing.
    fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
        use aws_lc_rs::agreement::{agree, UnparsedPublicKey, X25519};
        let key = self.key.as_ref().ok_or(snow::Error::Dh)?;
        // snow hands over its key buffers whole (longer than a key): the key is their start.
        let out = out.get_mut(..32).ok_or(snow::Error::Dh)?;
        let pubkey = pubkey.get(..32).ok_or(snow::Error::Dh)?;
        agree(
            key,
            UnparsedPublicKey::new(&X25519, pubkey),
            snow::Error::Dh,
            |shared| {
                out.copy_from_slice(shared);
                Ok(())
            },
        )
    }
}

/// An X25519 static secret: never printed, zeroed when dropped.
#[derive(Clone, zeroize::ZeroizeOnDrop)]
pub struct StaticSecret([u8; 32]);

impl StaticSecret {
    /// The secret's bytes (to hand to the Noise handshake or to write into the key file).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl From<[u8; 32]> for StaticSecret {
    fn from(bytes: [u8; 32]) -> Self {
        StaticSecret(bytes)
    }
}

impl std::fmt::Debug for StaticSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticSecret(<redacted>)")
    }
}

/// A hub's Noise identity: its X25519 static key pair and certificate.
#[derive(Debug, Clone)]
pub struct LocalIdentity {
    /// The cluster.
    pub cluster: ClusterId,
    /// The cluster CA key (to verify peers).
    pub ca_key: ed25519_dalek::VerifyingKey,
    /// X25519 static secret; its public half is in the certificate.
    pub static_secret: StaticSecret,
    /// This hub's certificate (DER).
    pub cert_der: Vec<u8>,
}

impl LocalIdentity {
    fn prologue(&self) -> Vec<u8> {
        let mut p = PROLOGUE_DOMAIN.to_vec();
        p.extend_from_slice(self.cluster.as_str().as_bytes());
        p
    }

    fn payload(&self, now_ms: u64) -> Vec<u8> {
        let mut p = Vec::with_capacity(10 + self.cert_der.len());
        p.extend_from_slice(&now_ms.to_be_bytes());
        p.extend_from_slice(&(self.cert_der.len() as u16).to_be_bytes());
        p.extend_from_slice(&self.cert_der);
        p
    }
}

/// snow's default primitives, with randomness taken from the caller (drawn up front).
struct CallerRandom(Vec<u8>);

impl Random for CallerRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        if dest.len() > self.0.len() {
            return Err(snow::Error::Rng);
        }
        let rest = self.0.split_off(dest.len());
        dest.copy_from_slice(&self.0);
        self.0 = rest;
        Ok(())
    }
}

struct Resolver(Vec<u8>);

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        Some(Box::new(CallerRandom(self.0.clone())))
    }
    fn resolve_dh(&self, choice: &snow::params::DHChoice) -> Option<Box<dyn Dh>> {
        #[cfg(feature = "aws-lc")]
        if matches!(choice, snow::params::DHChoice::Curve25519) {
            return Some(Box::new(AwsLcX25519::default()));
        }
        DefaultResolver.resolve_dh(choice)
    }
    fn resolve_hash(&self, choice: &snow::params::HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }
    fn resolve_cipher(&self, choice: &snow::params::CipherChoice) -> Option<Box<dyn Cipher>> {
        DefaultResolver.resolve_cipher(choice)
    }
}

fn builder<'a>(
    local: &'a LocalIdentity,
    prologue: &'a [u8],
    rng: &mut impl CryptoRngCore,
) -> Result<snow::Builder<'a>, NoiseError> {
    static_builder(local.static_secret.as_bytes(), prologue, rng)
}

/// A Noise IK builder for `static_secret`, with the caller's randomness.
pub(crate) fn static_builder<'a>(
    static_secret: &'a [u8; 32],
    prologue: &'a [u8],
    rng: &mut impl CryptoRngCore,
) -> Result<snow::Builder<'a>, NoiseError> {
    let params: NoiseParams = PATTERN.parse().map_err(noise_err)?;
    // IK draws one ephemeral key per side.
    let mut seed = vec![0u8; 32];
    rng.fill_bytes(&mut seed);
    snow::Builder::with_resolver(params, Box::new(Resolver(seed)))
        .local_private_key(static_secret)
        .and_then(|b| b.prologue(prologue))
        .map_err(noise_err)
}

/// Reads a handshake message into `hs` and its payload: the sender's timestamp and its
/// certificate, verified against the static key the message proved ([`read_payload`]).
fn read_handshake(
    hs: &mut snow::HandshakeState,
    local: &LocalIdentity,
    msg: &[u8],
    now_ms: u64,
    revocations: Option<&VerifiedRevocations>,
    known: Option<&VerifiedPeer>,
) -> Result<(u64, VerifiedPeer), NoiseError> {
    let mut payload = vec![0u8; MAX_NOISE_MESSAGE];
    let n = hs.read_message(msg, &mut payload).map_err(noise_err)?;
    let remote = hs.get_remote_static().map(<[u8]>::to_vec);
    read_payload(
        local,
        &payload[..n],
        remote.as_deref(),
        now_ms,
        revocations,
        known,
    )
}

/// Reads a handshake payload: the sender's timestamp and certificate, verified.
fn read_payload(
    local: &LocalIdentity,
    payload: &[u8],
    remote_static: Option<&[u8]>,
    now_ms: u64,
    revocations: Option<&VerifiedRevocations>,
    known: Option<&VerifiedPeer>,
) -> Result<(u64, VerifiedPeer), NoiseError> {
    let mut r = Reader::new(payload);
    let m = |_| NoiseError::Malformed;
    let timestamp = r.u64().map_err(m)?;
    let len = usize::from(r.u16().map_err(m)?);
    let der = r.take(len).map_err(m)?;
    if !r.is_empty() {
        return Err(NoiseError::Malformed);
    }
    // A certificate met before (the same bytes) is not parsed and signature-checked again; its
    // dates and the revocation list are.
    let peer = match known {
        Some(known) if known.der() == der => known.recheck(now_ms, revocations)?,
        _ => PeerCertificate::from_der(der)?.verify(&local.ca_key, now_ms, revocations)?,
    };
    if remote_static != Some(peer.noise_key().as_slice()) {
        return Err(NoiseError::KeyMismatch);
    }
    Ok((timestamp, peer))
}

/// The initiator's side of a handshake in progress.
pub struct Initiator {
    hs: snow::HandshakeState,
    responder: VerifiedPeer,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiator")
            .field("responder", &self.responder.hub_id())
            .finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a handshake with `responder` (its verified certificate gives its static key);
    /// returns the state and the first message to send.
    pub fn start(
        local: &LocalIdentity,
        responder: &VerifiedPeer,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Vec<u8>), NoiseError> {
        let prologue = local.prologue();
        let mut hs = builder(local, &prologue, rng)?
            .remote_public_key(responder.noise_key())
            .and_then(|b| b.build_initiator())
            .map_err(noise_err)?;
        let mut msg = vec![0u8; MAX_NOISE_MESSAGE];
        let n = hs
            .write_message(&local.payload(now_ms), &mut msg)
            .map_err(noise_err)?;
        msg.truncate(n);
        Ok((
            Initiator {
                hs,
                responder: responder.clone(),
            },
            msg,
        ))
    }

    /// The hub this handshake is with.
    pub fn responder(&self) -> HubId {
        self.responder.hub_id()
    }

    /// Reads the responder's answer; the handshake is complete.
    pub fn finish(
        mut self,
        local: &LocalIdentity,
        msg: &[u8],
        now_ms: u64,
        revocations: Option<&VerifiedRevocations>,
    ) -> Result<Transport, NoiseError> {
        let (_, peer) = read_handshake(
            &mut self.hs,
            local,
            msg,
            now_ms,
            revocations,
            Some(&self.responder),
        )?;
        if peer.hub_id() != self.responder.hub_id() {
            return Err(NoiseError::KeyMismatch);
        }
        Transport::new(self.hs, peer, now_ms)
    }
}

/// The last first-message timestamp accepted from each hub: a first message is accepted only if
/// its timestamp is newer, so a captured one cannot be replayed.
#[derive(Debug, Default)]
pub struct HandshakeReplay {
    last: HashMap<HubId, u64>,
}

/// The responder's side: reads a first message and answers it.
#[derive(Debug)]
pub struct Responder;

impl Responder {
    /// Reads a first message; if the initiator is acceptable, returns the session and the answer
    /// to send. `known`: the certificate this hub already verified for the hub the message claims
    /// to come from, if any (used only if the message carries the same bytes).
    pub fn accept(
        local: &LocalIdentity,
        msg: &[u8],
        now_ms: u64,
        revocations: Option<&VerifiedRevocations>,
        replay: &mut HandshakeReplay,
        known: Option<&VerifiedPeer>,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Transport, Vec<u8>), NoiseError> {
        let prologue = local.prologue();
        let mut hs = builder(local, &prologue, rng)?
            .build_responder()
            .map_err(noise_err)?;
        let (timestamp, peer) = read_handshake(&mut hs, local, msg, now_ms, revocations, known)?;
        if timestamp.abs_diff(now_ms) > HANDSHAKE_MAX_AGE_MS {
            return Err(NoiseError::StaleHandshake);
        }
        let last = replay.last.entry(peer.hub_id()).or_insert(0);
        if timestamp <= *last {
            return Err(NoiseError::ReplayedHandshake);
        }
        *last = timestamp;
        let mut answer = vec![0u8; MAX_NOISE_MESSAGE];
        let n = hs
            .write_message(&local.payload(now_ms), &mut answer)
            .map_err(noise_err)?;
        answer.truncate(n);
        Ok((Transport::new(hs, peer, now_ms)?, answer))
    }
}

/// Which counters were received: RFC 6479's sliding bitmap. It holds one word more than the
/// window, so every one of the [`REPLAY_WINDOW`] counters up to the highest is tracked.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    /// Highest counter accepted, plus one (0: none yet).
    next: u64,
    bits: Vec<u64>,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        ReplayWindow {
            next: 0,
            bits: vec![0; Self::WORDS as usize],
        }
    }
}

impl ReplayWindow {
    const WORDS: u64 = REPLAY_WINDOW / 64 + 1;

    /// Whether `counter` may be accepted (not seen, not older than the window).
    pub fn check(&self, counter: u64) -> bool {
        if counter >= self.next {
            return true;
        }
        // next > counter >= 0, so next >= 1 and `next - 1` is the highest counter accepted.
        if self.next - 1 - counter >= REPLAY_WINDOW {
            return false;
        }
        let word = ((counter / 64) % Self::WORDS) as usize;
        self.bits[word] & (1 << (counter % 64)) == 0
    }

    /// Marks `counter` as received (call only after it authenticated).
    pub fn mark(&mut self, counter: u64) {
        if counter >= self.next {
            // Clear the words the window slides over.
            let old_top = if self.next == 0 {
                0
            } else {
                (self.next - 1) / 64
            };
            let new_top = counter / 64;
            let first_clear = if self.next == 0 { 0 } else { old_top + 1 };
            for w in first_clear..=new_top.min(first_clear + Self::WORDS - 1) {
                self.bits[(w % Self::WORDS) as usize] = 0;
            }
            self.next = counter + 1;
        }
        let word = ((counter / 64) % Self::WORDS) as usize;
        self.bits[word] |= 1 << (counter % 64);
    }
}

/// An established session: encrypts and decrypts transport messages.
pub struct Transport {
    state: snow::StatelessTransportState,
    peer: VerifiedPeer,
    established_ms: u64,
    sent: u64,
    window: ReplayWindow,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("peer", &self.peer.hub_id())
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Transport {
    fn new(hs: snow::HandshakeState, peer: VerifiedPeer, now_ms: u64) -> Result<Self, NoiseError> {
        Ok(Transport {
            state: hs.into_stateless_transport_mode().map_err(noise_err)?,
            peer,
            established_ms: now_ms,
            sent: 0,
            window: ReplayWindow::default(),
        })
    }

    /// The peer's verified certificate.
    pub fn peer(&self) -> &VerifiedPeer {
        &self.peer
    }

    /// Whether the session should be replaced by a new handshake (it still works).
    pub fn needs_rekey(&self, now_ms: u64) -> bool {
        self.sent >= REKEY_AFTER_MESSAGES
            || now_ms.saturating_sub(self.established_ms) >= REKEY_AFTER_MS
    }

    /// Whether the session is past its reject limit: it neither sends nor receives any more.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.sent >= REJECT_AFTER_MESSAGES
            || now_ms.saturating_sub(self.established_ms) >= REJECT_AFTER_MS
    }

    fn check_alive(&self, now_ms: u64) -> Result<(), NoiseError> {
        if self.is_expired(now_ms) {
            return Err(NoiseError::Expired);
        }
        Ok(())
    }

    /// Encrypts `plaintext` as one transport message, appended to `out`.
    pub fn encrypt(
        &mut self,
        plaintext: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), NoiseError> {
        self.check_alive(now_ms)?;
        if plaintext.len() > MAX_TRANSPORT_PLAINTEXT {
            return Err(NoiseError::TooLarge(plaintext.len()));
        }
        let counter = self.sent;
        let start = out.len();
        out.extend_from_slice(&counter.to_be_bytes());
        out.resize(start + 8 + plaintext.len() + TAG_LEN, 0);
        let n = self
            .state
            .write_message(counter, plaintext, &mut out[start + 8..])
            .map_err(noise_err)?;
        out.truncate(start + 8 + n);
        self.sent += 1;
        Ok(())
    }

    /// Decrypts one transport message into `out` (cleared first).
    pub fn decrypt(
        &mut self,
        message: &[u8],
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), NoiseError> {
        self.check_alive(now_ms)?;
        if message.len() < TRANSPORT_OVERHEAD || message.len() > MAX_NOISE_MESSAGE {
            return Err(NoiseError::Noise("transport message length".into()));
        }
        let (head, ct) = message.split_at(8);
        let mut c = [0u8; 8];
        c.copy_from_slice(head);
        let counter = u64::from_be_bytes(c);
        if !self.window.check(counter) {
            return Err(NoiseError::Replayed);
        }
        out.clear();
        out.resize(ct.len(), 0);
        let n = self
            .state
            .read_message(counter, ct, out)
            .map_err(noise_err)?;
        out.truncate(n);
        self.window.mark(counter);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::trust::cert::tests::{request, NOW};
    use crate::trust::{ClusterCa, Revocation, RevocationList};
    use ed25519_dalek::SigningKey;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    pub(crate) struct Hub {
        pub(crate) local: LocalIdentity,
        pub(crate) cert: VerifiedPeer,
    }

    /// A low-order public key (here: zero) gives an all-zero shared secret; aws-lc-rs refuses
    /// it, so such a key cannot take part in a session.
    #[cfg(feature = "aws-lc")]
    #[test]
    fn a_low_order_public_key_is_refused() {
        let key = X25519Key::from_secret(&[5; 32]).unwrap();
        assert!(key.agree(&[0; 32]).is_err());
        let public = public_key(&[6; 32]).unwrap();
        assert_eq!(
            key.agree(&public).unwrap(),
            x25519_dalek::StaticSecret::from([5; 32])
                .diffie_hellman(&x25519_dalek::PublicKey::from(public))
                .to_bytes()
        );
    }

    /// The X25519 public key of `secret`, through snow's own DH.
    pub(crate) fn x25519_public(secret: &[u8; 32]) -> [u8; 32] {
        public_key(secret).unwrap()
    }

    pub(crate) fn hub(ca: &ClusterCa, id: u8) -> Hub {
        let static_secret = [id; 32];
        let identity = SigningKey::from_bytes(&[id.wrapping_add(100); 32]);
        let mut req = request(id, &identity);
        req.noise_key = x25519_public(&static_secret);
        let cert_der = ca
            .issue(&req, &mut StdRng::seed_from_u64(u64::from(id)))
            .unwrap();
        let cert = PeerCertificate::from_der(&cert_der)
            .unwrap()
            .verify(&ca.public_key(), NOW, None)
            .unwrap();
        Hub {
            local: LocalIdentity {
                cluster: ca.cluster_id(),
                ca_key: ca.public_key(),
                static_secret: static_secret.into(),
                cert_der,
            },
            cert,
        }
    }

    /// A two-party harness: a completed handshake between hubs 1 (initiator) and 2.
    fn pair(seed: u64) -> (Hub, Hub, Transport, Transport) {
        let ca = ClusterCa::from_secret(&[5; 32]);
        let (a, b) = (hub(&ca, 1), hub(&ca, 2));
        let mut rng = StdRng::seed_from_u64(seed);
        let (init, m1) = Initiator::start(&a.local, &b.cert, NOW, &mut rng).unwrap();
        let mut replay = HandshakeReplay::default();
        let (tb, m2) =
            Responder::accept(&b.local, &m1, NOW, None, &mut replay, None, &mut rng).unwrap();
        let ta = init.finish(&a.local, &m2, NOW, None).unwrap();
        (a, b, ta, tb)
    }

    /// An RNG that yields one byte value forever: the ephemeral keys become known constants.
    struct Fixed(u8);

    impl rand_core::RngCore for Fixed {
        fn next_u32(&mut self) -> u32 {
            u32::from_ne_bytes([self.0; 4])
        }
        fn next_u64(&mut self) -> u64 {
            u64::from_ne_bytes([self.0; 8])
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.fill(self.0);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            dest.fill(self.0);
            Ok(())
        }
    }

    impl rand_core::CryptoRng for Fixed {}

    #[test]
    fn debug_never_prints_the_static_secret() {
        let ca = ClusterCa::from_secret(&[5; 32]);
        let h = hub(&ca, 0xab);
        let printed = format!("{:?} {:#?}", h.local, h.local);
        assert!(printed.contains("StaticSecret(<redacted>)"), "{printed}");
        // The secret is [0xab; 32]: neither its bytes as Debug prints an array, nor in hex.
        assert!(
            !printed.contains(&format!("{:?}", [0xabu8; 32])),
            "{printed}"
        );
        assert!(!printed.contains(&hex::encode([0xabu8; 32])), "{printed}");
    }

    /// Known answers from a second, independent implementation written from the Noise spec
    /// (`scripts/noise-ik-vectors.py`, Python `cryptography` + `hashlib`): snow as configured
    /// here (pattern, resolver, caller-supplied randomness, prologue) must produce the same
    /// bytes.
    #[test]
    fn known_answer_vectors() {
        let ca = ClusterCa::from_secret(&[5; 32]);
        let identity = |secret: u8| LocalIdentity {
            cluster: "gr2q7gf5lh6pzfdnurnkvputhpqvjjfv".parse().unwrap(),
            ca_key: ca.public_key(),
            static_secret: [secret; 32].into(),
            cert_der: Vec::new(),
        };
        let (i, r) = (identity(1), identity(2));
        let (pi, pr) = (i.prologue(), r.prologue());
        let mut init = builder(&i, &pi, &mut Fixed(3))
            .unwrap()
            .remote_public_key(&x25519_public(&[2; 32]))
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut resp = builder(&r, &pr, &mut Fixed(4))
            .unwrap()
            .build_responder()
            .unwrap();
        let mut m1 = [0u8; 256];
        let n1 = init.write_message(b"kat payload 1", &mut m1).unwrap();
        assert_eq!(
            hex::encode(&m1[..n1]),
            "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef224391bcfef3f1b0f0\
             51873c2103356110f8056ef928c4354783347c74dc7b71b722410aeadc0ea5a8c4aaeb8fb927d65c\
             84638e41e65a0ae31b573e3ab7478d39d24e0e6632fb5bb017396c9c43"
        );
        let mut p = [0u8; 256];
        let n = resp.read_message(&m1[..n1], &mut p).unwrap();
        assert_eq!(&p[..n], b"kat payload 1");
        let mut m2 = [0u8; 256];
        let n2 = resp.write_message(b"kat payload 2", &mut m2).unwrap();
        assert_eq!(
            hex::encode(&m2[..n2]),
            "ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10bc28cea86c0ff71\
             1089e381a58bc32c9c9a277b9fda28b5cdb71786e180"
        );
        let n = init.read_message(&m2[..n2], &mut p).unwrap();
        assert_eq!(&p[..n], b"kat payload 2");
        assert_eq!(
            hex::encode(init.get_handshake_hash()),
            "13cf5a9e4599ad5d8c8e6671c10409bdbdb495bddfced967b63ea999e5201eea"
        );
        let init = init.into_stateless_transport_mode().unwrap();
        let resp = resp.into_stateless_transport_mode().unwrap();
        let mut t = [0u8; 64];
        let n = init.write_message(0, b"kat transport", &mut t).unwrap();
        assert_eq!(
            hex::encode(&t[..n]),
            "7d9e1f5ccdebb4342aeceadf09d1229fb3a6fab0f28d893f2885976a12"
        );
        let n = resp.write_message(0, b"kat answer", &mut t).unwrap();
        assert_eq!(
            hex::encode(&t[..n]),
            "11dc7f7b4a99d862cad0020897f20725fd315974976e77d584b9"
        );
    }

    #[test]
    fn handshake_and_transport_both_ways() {
        let (_, _, mut ta, mut tb) = pair(1);
        assert_eq!(ta.peer().hub_id(), HubId([2; 16]));
        assert_eq!(tb.peer().hub_id(), HubId([1; 16]));
        let mut wire = Vec::new();
        ta.encrypt(b"hello b", NOW, &mut wire).unwrap();
        assert!(
            !wire.windows(7).any(|w| w == b"hello b"),
            "plaintext on the wire"
        );
        let mut out = Vec::new();
        tb.decrypt(&wire, NOW, &mut out).unwrap();
        assert_eq!(out, b"hello b");
        wire.clear();
        tb.encrypt(b"hello a", NOW, &mut wire).unwrap();
        ta.decrypt(&wire, NOW, &mut out).unwrap();
        assert_eq!(out, b"hello a");
    }

    /// Known answer: the same keys, certificates, time and RNG give the same first message.
    #[test]
    fn handshake_is_deterministic_under_a_seeded_rng() {
        let ca = ClusterCa::from_secret(&[5; 32]);
        let (a, b) = (hub(&ca, 1), hub(&ca, 2));
        let m1 = |seed| {
            Initiator::start(&a.local, &b.cert, NOW, &mut StdRng::seed_from_u64(seed))
                .unwrap()
                .1
        };
        assert_eq!(m1(7), m1(7));
        assert_ne!(m1(7), m1(8));
        // e (32) + encrypted s (32 + 16) + encrypted payload (10 + cert + 16).
        assert_eq!(m1(7).len(), 32 + 48 + 10 + a.local.cert_der.len() + 16);
    }

    #[test]
    fn replayed_duplicated_and_old_transport_messages_are_refused_reordering_is_fine() {
        let (_, _, mut ta, mut tb) = pair(2);
        let msgs: Vec<Vec<u8>> = (0..5u8)
            .map(|i| {
                let mut w = Vec::new();
                ta.encrypt(&[i], NOW, &mut w).unwrap();
                w
            })
            .collect();
        let mut out = Vec::new();
        for i in [2, 0, 4, 1, 3] {
            tb.decrypt(&msgs[i], NOW, &mut out).unwrap();
            assert_eq!(out, [i as u8]);
        }
        assert_eq!(
            tb.decrypt(&msgs[3], NOW, &mut out),
            Err(NoiseError::Replayed)
        );
        // Far ahead: the early counters fall out of the window.
        for _ in 0..(REPLAY_WINDOW + 10) {
            let mut w = Vec::new();
            ta.encrypt(b"x", NOW, &mut w).unwrap();
            if ta.sent == REPLAY_WINDOW + 15 {
                tb.decrypt(&w, NOW, &mut out).unwrap();
            }
        }
        let mut late = Vec::new();
        // A forged message with an old counter is refused before any decryption.
        late.extend_from_slice(&6u64.to_be_bytes());
        late.extend_from_slice(&[0; 20]);
        assert_eq!(tb.decrypt(&late, NOW, &mut out), Err(NoiseError::Replayed));
        // A tampered message is refused and does not advance the window.
        let mut w = Vec::new();
        ta.encrypt(b"y", NOW, &mut w).unwrap();
        let last = w.len() - 1;
        w[last] ^= 1;
        assert!(matches!(
            tb.decrypt(&w, NOW, &mut out),
            Err(NoiseError::Noise(_))
        ));
        w[last] ^= 1;
        tb.decrypt(&w, NOW, &mut out).unwrap();
    }

    #[test]
    fn replay_window_edges() {
        let mut w = ReplayWindow::default();
        assert!(w.check(0));
        w.mark(0);
        assert!(!w.check(0));
        w.mark(10_000);
        assert!(!w.check(10_000));
        assert!(w.check(9_999));
        assert!(w.check(10_000 - (REPLAY_WINDOW - 1)));
        assert!(!w.check(10_000 - REPLAY_WINDOW));
        // Every counter inside the window is tracked individually.
        for c in (10_000 - (REPLAY_WINDOW - 1))..10_000 {
            assert!(w.check(c));
            w.mark(c);
            assert!(!w.check(c));
        }
        w.mark(9_999);
        assert!(!w.check(9_999));
        // A jump much wider than the window clears every bit.
        w.mark(1_000_000);
        assert!(w.check(999_999));
    }

    #[test]
    fn a_replayed_first_message_is_refused() {
        let ca = ClusterCa::from_secret(&[5; 32]);
        let (a, b) = (hub(&ca, 1), hub(&ca, 2));
        let mut rng = StdRng::seed_from_u64(3);
        let (_, m1) = Initiator::start(&a.local, &b.cert, NOW, &mut rng).unwrap();
        let mut replay = HandshakeReplay::default();
        Responder::accept(&b.local, &m1, NOW, None, &mut replay, None, &mut rng).unwrap();
        assert_eq!(
            Responder::accept(&b.local, &m1, NOW + 5, None, &mut replay, None, &mut rng)
                .unwrap_err(),
            NoiseError::ReplayedHandshake
        );
        // A newer first message from the same hub is fine.
        let (_, m1b) = Initiator::start(&a.local, &b.cert, NOW + 1, &mut rng).unwrap();
        assert!(
            Responder::accept(&b.local, &m1b, NOW + 5, None, &mut replay, None, &mut rng).is_ok()
        );
        // Stale either way: refused even by a responder that remembers nothing.
        for at in [
            NOW + 1 + HANDSHAKE_MAX_AGE_MS + 1,
            NOW + 1 - HANDSHAKE_MAX_AGE_MS - 1,
        ] {
            let mut fresh = HandshakeReplay::default();
            assert_eq!(
                Responder::accept(&b.local, &m1b, at, None, &mut fresh, None, &mut rng)
                    .unwrap_err(),
                NoiseError::StaleHandshake
            );
        }
    }

    /// A signed list (version 1) revoking one certificate, by fingerprint or key hash.
    fn revoking(ca: &ClusterCa, fingerprint: [u8; 32], key_hash: [u8; 32]) -> VerifiedRevocations {
        let list = RevocationList {
            version: 1,
            issued_at_ms: NOW,
            entries: vec![Revocation {
                fingerprint,
                key_hash,
                revoked_at_ms: NOW,
                reason: "gone".into(),
            }],
        };
        RevocationList::verify(&list.sign(ca).unwrap(), &ca.cluster_id()).unwrap()
    }

    #[test]
    fn revoked_or_foreign_initiators_cannot_complete_a_handshake() {
        let ca = ClusterCa::from_secret(&[5; 32]);
        let (a, b) = (hub(&ca, 1), hub(&ca, 2));
        let mut rng = StdRng::seed_from_u64(4);
        // Revoked initiator.
        let list = revoking(&ca, a.cert.fingerprint(), [0; 32]);
        let (_, m1) = Initiator::start(&a.local, &b.cert, NOW, &mut rng).unwrap();
        let mut replay = HandshakeReplay::default();
        assert_eq!(
            Responder::accept(&b.local, &m1, NOW, Some(&list), &mut replay, None, &mut rng)
                .unwrap_err(),
            NoiseError::Certificate(TrustError::Revoked)
        );
        // A hub of another cluster (another CA), even knowing b's static key.
        let other = ClusterCa::from_secret(&[6; 32]);
        let mut stranger = hub(&other, 3);
        stranger.local.cluster = ca.cluster_id(); // same prologue, foreign certificate
        let (_, m1) = Initiator::start(&stranger.local, &b.cert, NOW, &mut rng).unwrap();
        assert_eq!(
            Responder::accept(&b.local, &m1, NOW, None, &mut replay, None, &mut rng).unwrap_err(),
            NoiseError::Certificate(TrustError::BadSignature("certificate"))
        );
        // A hub presenting a's certificate without a's static key.
        let mut thief = hub(&ca, 4);
        thief.local.cert_der = a.local.cert_der.clone();
        let (_, m1) = Initiator::start(&thief.local, &b.cert, NOW, &mut rng).unwrap();
        assert_eq!(
            Responder::accept(&b.local, &m1, NOW, None, &mut replay, None, &mut rng).unwrap_err(),
            NoiseError::KeyMismatch
        );
    }

    /// A certificate met before is not verified again, but its dates and the revocation list are
    /// checked each time, and the handshake must still prove its key.
    #[test]
    fn a_known_certificate_is_rechecked_not_trusted_blindly() {
        let ca = ClusterCa::from_secret(&[5; 32]);
        let (a, b) = (hub(&ca, 1), hub(&ca, 2));
        let mut rng = StdRng::seed_from_u64(5);
        let mut replay = HandshakeReplay::default();
        let known = Some(&a.cert);
        let (_, m1) = Initiator::start(&a.local, &b.cert, NOW, &mut rng).unwrap();
        assert!(Responder::accept(&b.local, &m1, NOW, None, &mut replay, known, &mut rng).is_ok());
        // Revoked since.
        let list = revoking(&ca, [0; 32], a.cert.key_hash());
        let (_, m1) = Initiator::start(&a.local, &b.cert, NOW + 1, &mut rng).unwrap();
        assert_eq!(
            Responder::accept(
                &b.local,
                &m1,
                NOW + 1,
                Some(&list),
                &mut replay,
                known,
                &mut rng
            )
            .unwrap_err(),
            NoiseError::Certificate(TrustError::Revoked)
        );
        // Expired since.
        let late = a.cert.not_after_ms() + 1;
        let (_, m1) = Initiator::start(&a.local, &b.cert, late, &mut rng).unwrap();
        assert_eq!(
            Responder::accept(&b.local, &m1, late, None, &mut replay, known, &mut rng).unwrap_err(),
            NoiseError::Certificate(TrustError::Expired)
        );
        // Its certificate without its static key.
        let mut thief = hub(&ca, 4);
        thief.local.cert_der = a.local.cert_der.clone();
        let (_, m1) = Initiator::start(&thief.local, &b.cert, NOW + 2, &mut rng).unwrap();
        assert_eq!(
            Responder::accept(&b.local, &m1, NOW + 2, None, &mut replay, known, &mut rng)
                .unwrap_err(),
            NoiseError::KeyMismatch
        );
    }

    #[test]
    fn sessions_ask_for_rekey_then_expire() {
        let (_, _, mut ta, _) = pair(5);
        assert!(!ta.needs_rekey(NOW + REKEY_AFTER_MS - 1));
        assert!(ta.needs_rekey(NOW + REKEY_AFTER_MS));
        let mut w = Vec::new();
        assert!(ta
            .encrypt(b"still fine", NOW + REKEY_AFTER_MS, &mut w)
            .is_ok());
        assert_eq!(
            ta.encrypt(b"too late", NOW + REJECT_AFTER_MS, &mut w),
            Err(NoiseError::Expired)
        );
        let big = vec![0u8; MAX_TRANSPORT_PLAINTEXT + 1];
        assert_eq!(
            ta.encrypt(&big, NOW, &mut w),
            Err(NoiseError::TooLarge(big.len()))
        );
    }
}
