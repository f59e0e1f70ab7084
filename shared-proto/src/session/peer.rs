//! The peer layer: Noise sessions with every other hub, on demand, as a sans-IO state machine.
//!
//! The application calls [`PeerSessions::send`] with a message for a hub; [`PeerSessions`] sets a
//! session up if there is none (fetching the peer's certificate first if it does not know it),
//! queues the message meanwhile (bounded), then fragments, encrypts and hands out relay payloads.
//! Payloads from the relay go to [`PeerSessions::handle_incoming`]. Time goes in through
//! `now_ms` and [`PeerSessions::handle_timeout`] (call it at [`PeerSessions::poll_timeout`]);
//! everything to do comes out of [`PeerSessions::poll_event`]: payloads to send, messages
//! received, sessions up and down.
//!
//! Peer messages (the payload of a relay `Send`/`Recv`), first byte the type (from the one
//! registry, [`crate::session::payload`]):
//!
//! ```text
//! 0x01 init      sender_index: u32 | Noise IK message 1
//! 0x02 response  sender_index: u32 | receiver_index: u32 | Noise IK message 2
//! 0x03 data      receiver_index: u32 | counter: u64 | ciphertext (see noise::Transport)
//! 0x04 cert?     (empty): asks the peer for its certificate
//! 0x05 cert      the sender's certificate (DER); trusted only after it verifies against the CA
//! ```
//!
//! A data plaintext is one fragment: `message_id: u32 | index: u16 | count: u16 | bytes`.
//!
//! Simultaneous open: if both hubs initiate, the hub with the lower id keeps its handshake and
//! ignores the other's first message; the other answers it. Rekey: a session that
//! `needs_rekey` is replaced by a new handshake; the old one keeps receiving until it expires, so
//! nothing in flight is lost. Lost handshake messages are retried with a new first message.

use std::collections::{HashMap, VecDeque};

use rand_core::CryptoRngCore;

use crate::codec::Reader;
use crate::relay::frame::{HubId, MAX_PAYLOAD};
use crate::session::noise::{
    HandshakeReplay, Initiator, LocalIdentity, NoiseError, Responder, Transport,
    MAX_TRANSPORT_PLAINTEXT,
};
use crate::session::payload::PayloadKind;
use crate::trust::{PeerCertificate, VerifiedPeer, VerifiedRevocations};

const INIT: u8 = PayloadKind::Init as u8;
const RESPONSE: u8 = PayloadKind::Response as u8;
const DATA: u8 = PayloadKind::Data as u8;
const CERT_REQUEST: u8 = PayloadKind::CertRequest as u8;
const CERT: u8 = PayloadKind::Cert as u8;

/// Bytes of one fragment's header.
const FRAGMENT_HEADER: usize = 8;

/// Largest piece of an application message per data message (fits one relay payload).
pub const FRAGMENT_DATA: usize = {
    let by_relay =
        MAX_PAYLOAD - 1 - 4 - crate::session::noise::TRANSPORT_OVERHEAD - FRAGMENT_HEADER;
    let by_noise = MAX_TRANSPORT_PLAINTEXT - FRAGMENT_HEADER;
    if by_relay < by_noise {
        by_relay
    } else {
        by_noise
    }
};

/// Largest application message.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// Messages queued per peer while its session is being set up.
pub const MAX_QUEUED: usize = 256;

/// Most messages of one peer being reassembled at once.
pub const MAX_PARTIAL_MESSAGES: usize = 4;

/// Most bytes of one peer's messages being reassembled at once: one whole [`MAX_MESSAGE`].
pub const MAX_PARTIAL_BYTES: usize = MAX_MESSAGE;

/// A message whose fragments have not all arrived this long after the first is dropped.
pub const REASSEMBLY_TIMEOUT_MS: u64 = 30_000;

/// A first message without answer is sent again (a new one) after this long...
pub const HANDSHAKE_RETRY_MS: u64 = 2_000;

/// ... this many times, then the queued messages are dropped and the failure reported.
pub const HANDSHAKE_ATTEMPTS: u32 = 5;

/// A responder sends nothing on a new session until the initiator's first transport message
/// arrives on it (key confirmation); one not confirmed this long after it was set up is dropped,
/// and the responder starts a handshake of its own.
pub const CONFIRM_TIMEOUT_MS: u64 = 5_000;

/// Data for a session this hub does not know (it restarted, or dropped it) makes it start a
/// handshake with the sender, at most this often per peer, so that a relay injecting such data
/// cannot make it hand-shake at will.
pub const UNKNOWN_SESSION_REHANDSHAKE_MS: u64 = 10_000;

/// A session that carried no message for this long is idle: the clock does not rekey it (it
/// is replaced at its next use, after a new handshake if it expired meanwhile), so a hub with
/// nothing to say sends nothing.
pub const IDLE_AFTER_MS: u64 = 60_000;

/// Hubs this hub holds state for without knowing their certificate (data came from them for an
/// unknown session, and their certificate was asked for). Past this, data from one more such
/// hub is dropped unanswered; such state is forgotten once idle for
/// [`UNKNOWN_SESSION_REHANDSHAKE_MS`]. What a stranger sends (a pairing guest may name any hub
/// id) cannot grow the table.
pub const MAX_STRANGERS: usize = 256;

/// Why a message could not be queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// Too many messages wait for this peer's session: try again later (backpressure).
    #[error("too many messages queued for this peer")]
    QueueFull,
    /// A message over [`MAX_MESSAGE`].
    #[error("message of {0} bytes exceeds {MAX_MESSAGE}")]
    TooLarge(usize),
    /// Sending to oneself.
    #[error("a hub does not open a session with itself")]
    ToSelf,
}

/// What the application must do or know.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Send this payload to `to` through the relay.
    Transmit {
        /// The destination hub.
        to: HubId,
        /// The relay payload.
        payload: Vec<u8>,
    },
    /// A whole message arrived from `from` over an authenticated session.
    Received {
        /// The sender, as its certificate names it.
        from: HubId,
        /// The message.
        message: Vec<u8>,
    },
    /// A session with `peer` is up (first, or after a rekey).
    Established {
        /// The peer.
        peer: HubId,
        /// Its certificate, as verified in the handshake.
        certificate: Box<VerifiedPeer>,
        /// Whether it replaced a session (a rekey, or the peer restarted and lost the old one:
        /// what was sent on that one may be lost).
        replaced: bool,
    },
    /// Setting up a session with `peer` failed, or a session was dropped; queued messages for
    /// it are gone.
    Failed {
        /// The peer.
        peer: HubId,
        /// Why.
        reason: String,
    },
}

struct Handshake {
    initiator: Initiator,
    index: u32,
    started_ms: u64,
    attempts: u32,
}

struct Session {
    transport: Transport,
    /// Our index: the peer puts it in the data messages it sends us.
    local_index: u32,
    /// The peer's index: we put it in the data messages we send.
    remote_index: u32,
    /// Whether the peer proved it holds the session: always for the initiator (message 2 did);
    /// for the responder, once the first transport message arrived on it.
    confirmed: bool,
    /// When it was set up.
    installed_ms: u64,
    /// When it last carried a message either way (its set-up counts).
    used_ms: u64,
}

#[derive(Default)]
struct PeerState {
    cert: Option<VerifiedPeer>,
    awaiting_cert: bool,
    handshake: Option<Handshake>,
    current: Option<Session>,
    previous: Option<Session>,
    queue: VecDeque<Vec<u8>>,
    partial: HashMap<u32, Partial>,
    /// Bytes held in `partial`.
    partial_bytes: usize,
    next_message_id: u32,
    /// A session is wanted though nothing is queued (data came for a session this hub does not
    /// know): the handshake starts once the certificate is known.
    wanted: bool,
    /// When data for an unknown session last made this hub hand-shake with the peer.
    last_unknown_ms: Option<u64>,
}

struct Partial {
    pieces: Vec<Option<Vec<u8>>>,
    received: usize,
    /// When its first fragment arrived.
    started_ms: u64,
}

/// Every session of one hub. See the module docs for the calling pattern.
pub struct PeerSessions {
    local: LocalIdentity,
    me: HubId,
    peers: HashMap<HubId, PeerState>,
    by_index: HashMap<u32, HubId>,
    replay: HandshakeReplay,
    revocations: Option<VerifiedRevocations>,
    events: VecDeque<Event>,
    /// The timestamp of our last first message: each new one is strictly later, as the
    /// responder's replay check requires, even within one millisecond.
    last_init_ms: u64,
}

impl std::fmt::Debug for PeerSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSessions")
            .field("me", &self.me)
            .field("peers", &self.peers.len())
            .finish_non_exhaustive()
    }
}

impl PeerSessions {
    /// The sessions of hub `me` with identity `local`.
    pub fn new(local: LocalIdentity, me: HubId) -> Self {
        PeerSessions {
            local,
            me,
            peers: HashMap::new(),
            by_index: HashMap::new(),
            replay: HandshakeReplay::default(),
            revocations: None,
            events: VecDeque::new(),
            last_init_ms: 0,
        }
    }

    /// The next thing to do, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Whether a session with `peer` is up.
    pub fn is_established(&self, peer: &HubId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| p.current.as_ref().is_some_and(|s| s.confirmed))
    }

    /// This hub's certificate was renewed: handshakes from now on carry `cert`, and every
    /// session up is rekeyed now (idle ones too: once per renewal), so that its peer holds the
    /// new certificate at once; the old sessions keep receiving meanwhile. Refused unless it is
    /// for this hub and its Noise key.
    pub fn set_certificate(
        &mut self,
        cert: &VerifiedPeer,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), NoiseError> {
        let public = crate::session::noise::public_key(self.local.static_secret.as_bytes())?;
        if cert.hub_id() != self.me || *cert.noise_key() != public {
            return Err(NoiseError::KeyMismatch);
        }
        self.local.cert_der = cert.der().to_vec();
        let up: Vec<(HubId, VerifiedPeer)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.current.is_some() && p.handshake.is_none())
            .filter_map(|(h, p)| Some((*h, p.cert.clone()?)))
            .collect();
        for (peer, their) in up {
            self.start_handshake(peer, &their, now_ms, 1, rng);
        }
        Ok(())
    }

    /// Gives the layer a peer's certificate (from a directory); it is used to start handshakes.
    pub fn add_certificate(&mut self, cert: VerifiedPeer) {
        let hub = cert.hub_id();
        self.peers.entry(hub).or_default().cert = Some(cert);
    }

    /// Takes a newer revocation list: sessions with revoked peers end at once.
    pub fn set_revocations(&mut self, list: VerifiedRevocations) {
        let revoked: Vec<HubId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                let certs = p
                    .current
                    .iter()
                    .chain(p.previous.iter())
                    .map(|s| s.transport.peer())
                    .chain(p.cert.iter());
                certs.into_iter().any(|c| list.revokes(c))
            })
            .map(|(h, _)| *h)
            .collect();
        self.revocations = Some(list);
        for hub in revoked {
            self.drop_peer(hub, "certificate revoked");
        }
    }

    /// Ends every session with `peer` (it left, restarted or was revoked).
    pub fn drop_peer(&mut self, peer: HubId, reason: &str) {
        if let Some(state) = self.peers.remove(&peer) {
            for s in state.current.iter().chain(state.previous.iter()) {
                self.by_index.remove(&s.local_index);
            }
            if let Some(h) = &state.handshake {
                self.by_index.remove(&h.index);
            }
            self.events.push_back(Event::Failed {
                peer,
                reason: reason.to_owned(),
            });
        }
    }

    /// Forgets the sessions with `peer` but keeps its queued messages (it reconnected and may have
    /// restarted, losing its side): a new handshake starts if messages wait.
    pub fn reset_peer(&mut self, peer: HubId, now_ms: u64, rng: &mut impl CryptoRngCore) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let indices: Vec<u32> = state
            .current
            .take()
            .into_iter()
            .chain(state.previous.take())
            .map(|s| s.local_index)
            .chain(state.handshake.take().map(|h| h.index))
            .collect();
        state.partial.clear();
        state.partial_bytes = 0;
        state.awaiting_cert = false;
        let waiting = !state.queue.is_empty();
        for i in indices {
            self.by_index.remove(&i);
        }
        if waiting {
            self.connect(peer, now_ms, rng);
        }
    }

    /// Sends an empty message on the current session with `peer`, if there is one: a peer that
    /// lost its side (it restarted) answers with a handshake, one that did not ignores it.
    pub fn probe(&mut self, peer: HubId, now_ms: u64) {
        self.transmit_keepalive(peer, now_ms);
    }

    /// Queues `message` for `to`; sets a session up if needed.
    pub fn send(
        &mut self,
        to: HubId,
        message: Vec<u8>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), SendError> {
        if to == self.me {
            return Err(SendError::ToSelf);
        }
        if message.len() > MAX_MESSAGE {
            return Err(SendError::TooLarge(message.len()));
        }
        let state = self.peers.entry(to).or_default();
        // A session past its reject limit (the hub was idle for minutes) is retired: the message
        // waits for a new handshake instead of failing on the dead session.
        if state
            .current
            .as_ref()
            .is_some_and(|s| s.transport.is_expired(now_ms))
        {
            for s in state
                .current
                .take()
                .into_iter()
                .chain(state.previous.take())
            {
                self.by_index.remove(&s.local_index);
            }
        }
        if state.current.as_ref().is_some_and(|s| s.confirmed) {
            self.transmit_message(to, &message, now_ms);
            self.maybe_rekey(to, now_ms, rng);
            return Ok(());
        }
        if state.queue.len() >= MAX_QUEUED {
            return Err(SendError::QueueFull);
        }
        state.queue.push_back(message);
        // A session set up by the peer and not confirmed yet: the queue goes when it is.
        if state.current.is_none() {
            self.connect(to, now_ms, rng);
        }
        Ok(())
    }

    /// Starts a handshake with `peer` unless one runs; asks for its certificate if unknown.
    fn connect(&mut self, peer: HubId, now_ms: u64, rng: &mut impl CryptoRngCore) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if state.handshake.is_some() {
            return;
        }
        let Some(cert) = state.cert.clone() else {
            if !state.awaiting_cert {
                state.awaiting_cert = true;
                self.events.push_back(Event::Transmit {
                    to: peer,
                    payload: vec![CERT_REQUEST],
                });
            }
            return;
        };
        self.start_handshake(peer, &cert, now_ms, 1, rng);
    }

    fn start_handshake(
        &mut self,
        peer: HubId,
        cert: &VerifiedPeer,
        now_ms: u64,
        attempts: u32,
        rng: &mut impl CryptoRngCore,
    ) {
        let stamp = now_ms.max(self.last_init_ms + 1);
        self.last_init_ms = stamp;
        match Initiator::start(&self.local, cert, stamp, rng) {
            Ok((initiator, msg)) => {
                let index = self.new_index(peer, rng);
                let mut payload = vec![INIT];
                payload.extend_from_slice(&index.to_be_bytes());
                payload.extend_from_slice(&msg);
                if let Some(state) = self.peers.get_mut(&peer) {
                    if let Some(old) = state.handshake.take() {
                        self.by_index.remove(&old.index);
                    }
                    state.handshake = Some(Handshake {
                        initiator,
                        index,
                        started_ms: now_ms,
                        attempts,
                    });
                }
                self.events.push_back(Event::Transmit { to: peer, payload });
            }
            Err(e) => self.drop_peer(peer, &format!("handshake: {e}")),
        }
    }

    fn new_index(&mut self, peer: HubId, rng: &mut impl CryptoRngCore) -> u32 {
        loop {
            let i = rng.next_u32();
            if i != 0 && !self.by_index.contains_key(&i) {
                self.by_index.insert(i, peer);
                return i;
            }
        }
    }

    /// The earliest time [`PeerSessions::handle_timeout`] has work (Unix ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        self.peers
            .values()
            .flat_map(|p| {
                let handshake = p
                    .handshake
                    .as_ref()
                    .map(|h| h.started_ms + HANDSHAKE_RETRY_MS);
                let partial = p
                    .partial
                    .values()
                    .map(|m| m.started_ms + REASSEMBLY_TIMEOUT_MS)
                    .min();
                let unconfirmed = p
                    .current
                    .as_ref()
                    .filter(|s| !s.confirmed)
                    .map(|s| s.installed_ms + CONFIRM_TIMEOUT_MS);
                let stranger = p
                    .last_unknown_ms
                    .filter(|_| {
                        p.cert.is_none()
                            && p.handshake.is_none()
                            && p.current.is_none()
                            && p.previous.is_none()
                            && p.queue.is_empty()
                            && p.partial.is_empty()
                    })
                    .map(|at| at + UNKNOWN_SESSION_REHANDSHAKE_MS);
                handshake
                    .into_iter()
                    .chain(partial)
                    .chain(unconfirmed)
                    .chain(stranger)
            })
            .min()
    }

    /// Retries unanswered handshakes, gives up after [`HANDSHAKE_ATTEMPTS`], starts rekeys and
    /// drops expired sessions.
    pub fn handle_timeout(&mut self, now_ms: u64, rng: &mut impl CryptoRngCore) {
        let unconfirmed: Vec<HubId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.current
                    .as_ref()
                    .is_some_and(|s| !s.confirmed && now_ms >= s.installed_ms + CONFIRM_TIMEOUT_MS)
            })
            .map(|(h, _)| *h)
            .collect();
        for peer in unconfirmed {
            // Nobody proved they hold it (a replayed first message, or the initiator is gone):
            // set up a session of our own.
            if let Some(s) = self.peers.get_mut(&peer).and_then(|p| p.current.take()) {
                self.by_index.remove(&s.local_index);
            }
            self.connect(peer, now_ms, rng);
        }
        let due: Vec<(HubId, u32)> = self
            .peers
            .iter()
            .filter_map(|(hub, p)| {
                let h = p.handshake.as_ref()?;
                (now_ms >= h.started_ms + HANDSHAKE_RETRY_MS).then_some((*hub, h.attempts))
            })
            .collect();
        for (peer, attempts) in due {
            if attempts >= HANDSHAKE_ATTEMPTS {
                self.drop_peer(peer, "no answer to the handshake");
                continue;
            }
            let cert = self.peers.get(&peer).and_then(|p| p.cert.clone());
            if let Some(cert) = cert {
                self.start_handshake(peer, &cert, now_ms, attempts + 1, rng);
            }
        }
        // Only sessions in use are rekeyed on the clock; an idle one is replaced when it is next
        // used (a hub with nothing to say sends nothing: a phone's battery).
        let active: Vec<HubId> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.current
                    .as_ref()
                    .is_some_and(|s| now_ms < s.used_ms.saturating_add(IDLE_AFTER_MS))
            })
            .map(|(h, _)| *h)
            .collect();
        for peer in active {
            self.maybe_rekey(peer, now_ms, rng);
        }
        self.forget_idle_strangers(now_ms);
        for state in self.peers.values_mut() {
            let before = state.partial.len();
            state
                .partial
                .retain(|_, m| now_ms < m.started_ms + REASSEMBLY_TIMEOUT_MS);
            if state.partial.len() != before {
                state.partial_bytes = state
                    .partial
                    .values()
                    .flat_map(|m| m.pieces.iter().flatten())
                    .map(Vec::len)
                    .sum();
            }
        }
    }

    fn maybe_rekey(&mut self, peer: HubId, now_ms: u64, rng: &mut impl CryptoRngCore) {
        let Some(state) = self.peers.get(&peer) else {
            return;
        };
        let due = state.handshake.is_none()
            && state
                .current
                .as_ref()
                .is_some_and(|s| s.transport.needs_rekey(now_ms));
        if let (true, Some(cert)) = (due, state.cert.clone()) {
            self.start_handshake(peer, &cert, now_ms, 1, rng);
        }
    }

    /// A payload from `from` arrived through the relay.
    pub fn handle_incoming(
        &mut self,
        from: HubId,
        payload: &[u8],
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), NoiseError> {
        let Some((&kind, body)) = payload.split_first() else {
            return Err(NoiseError::Malformed);
        };
        match kind {
            CERT_REQUEST => {
                self.events.push_back(Event::Transmit {
                    to: from,
                    payload: [&[CERT][..], &self.local.cert_der].concat(),
                });
                Ok(())
            }
            CERT => self.handle_cert(from, body, now_ms, rng),
            INIT => self.handle_init(from, body, now_ms, rng),
            RESPONSE => self.handle_response(from, body, now_ms),
            DATA => self.handle_data(from, body, now_ms, rng),
            _ => Err(NoiseError::Malformed),
        }
    }

    fn handle_cert(
        &mut self,
        from: HubId,
        der: &[u8],
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), NoiseError> {
        let cert = PeerCertificate::from_der(der)?.verify(
            &self.local.ca_key,
            now_ms,
            self.revocations.as_ref(),
        )?;
        if cert.hub_id() != from {
            return Err(NoiseError::KeyMismatch);
        }
        let state = self.peers.entry(from).or_default();
        state.cert = Some(cert);
        state.awaiting_cert = false;
        if !state.queue.is_empty() || state.wanted {
            state.wanted = false;
            self.connect(from, now_ms, rng);
        }
        Ok(())
    }

    fn handle_init(
        &mut self,
        from: HubId,
        body: &[u8],
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), NoiseError> {
        let mut r = Reader::new(body);
        let remote_index = r.u32().map_err(|_| NoiseError::Malformed)?;
        let msg = r.rest();
        // Simultaneous open: the lower hub id keeps its own handshake.
        let initiating = self.peers.get(&from).is_some_and(|p| p.handshake.is_some());
        if initiating && self.me < from {
            return Ok(());
        }
        let known = self.peers.get(&from).and_then(|p| p.cert.clone());
        let (transport, answer) = Responder::accept(
            &self.local,
            msg,
            now_ms,
            self.revocations.as_ref(),
            &mut self.replay,
            known.as_ref(),
            rng,
        )?;
        if transport.peer().hub_id() != from {
            return Err(NoiseError::KeyMismatch);
        }
        let local_index = self.new_index(from, rng);
        let mut payload = vec![RESPONSE];
        payload.extend_from_slice(&local_index.to_be_bytes());
        payload.extend_from_slice(&remote_index.to_be_bytes());
        payload.extend_from_slice(&answer);
        self.events.push_back(Event::Transmit { to: from, payload });
        let cert = transport.peer().clone();
        let state = self.peers.entry(from).or_default();
        if let Some(h) = state.handshake.take() {
            self.by_index.remove(&h.index);
        }
        state.cert = Some(cert);
        self.install(from, transport, local_index, remote_index, now_ms, false);
        Ok(())
    }

    fn handle_response(&mut self, from: HubId, body: &[u8], now_ms: u64) -> Result<(), NoiseError> {
        let mut r = Reader::new(body);
        let remote_index = r.u32().map_err(|_| NoiseError::Malformed)?;
        let local_index = r.u32().map_err(|_| NoiseError::Malformed)?;
        let msg = r.rest();
        let Some(state) = self.peers.get_mut(&from) else {
            return Ok(());
        };
        // An answer to an older attempt, or to nothing: ignore it.
        if state.handshake.as_ref().map(|h| h.index) != Some(local_index) {
            return Ok(());
        }
        let Some(h) = state.handshake.take() else {
            return Ok(());
        };
        let transport = h
            .initiator
            .finish(&self.local, msg, now_ms, self.revocations.as_ref())?;
        self.install(from, transport, local_index, remote_index, now_ms, true);
        Ok(())
    }

    /// Makes a new session current (the old one stays for receiving). The initiator's
    /// (`confirmed`) flushes the queue at once, or confirms the session with an empty transport
    /// message if nothing waits; the responder's waits for that confirmation.
    fn install(
        &mut self,
        peer: HubId,
        transport: Transport,
        local_index: u32,
        remote_index: u32,
        now_ms: u64,
        confirmed: bool,
    ) {
        let certificate = Box::new(transport.peer().clone());
        let session = Session {
            transport,
            local_index,
            remote_index,
            confirmed,
            installed_ms: now_ms,
            used_ms: now_ms,
        };
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        if let Some(old) = state.previous.take() {
            self.by_index.remove(&old.local_index);
        }
        self.by_index.insert(session.local_index, peer);
        state.previous = state.current.replace(session);
        let replaced = state.previous.is_some();
        self.events.push_back(Event::Established {
            peer,
            certificate,
            replaced,
        });
        if confirmed && !self.flush(peer, now_ms) {
            self.transmit_keepalive(peer, now_ms);
        }
    }

    /// Sends what waits for `peer` on its current session; whether anything did.
    fn flush(&mut self, peer: HubId, now_ms: u64) -> bool {
        let Some(state) = self.peers.get_mut(&peer) else {
            return false;
        };
        let queued: Vec<Vec<u8>> = state.queue.drain(..).collect();
        let any = !queued.is_empty();
        for message in queued {
            self.transmit_message(peer, &message, now_ms);
        }
        any
    }

    /// An empty transport message: confirms a new session to its responder.
    fn transmit_keepalive(&mut self, peer: HubId, now_ms: u64) {
        let Some(session) = self.peers.get_mut(&peer).and_then(|p| p.current.as_mut()) else {
            return;
        };
        let mut payload = vec![DATA];
        payload.extend_from_slice(&session.remote_index.to_be_bytes());
        if let Err(e) = session.transport.encrypt(&[], now_ms, &mut payload) {
            self.drop_peer(peer, &format!("session: {e}"));
            return;
        }
        self.events.push_back(Event::Transmit { to: peer, payload });
    }

    /// Data came from `from` for a session this hub does not know: it restarted or dropped the
    /// session, and the sender goes on using it. Hand-shake with the sender (at most every
    /// [`UNKNOWN_SESSION_REHANDSHAKE_MS`]).
    fn unknown_session(&mut self, from: HubId, now_ms: u64, rng: &mut impl CryptoRngCore) {
        if !self.peers.contains_key(&from) && self.strangers() >= MAX_STRANGERS {
            return;
        }
        let state = self.peers.entry(from).or_default();
        if state.handshake.is_some()
            || state
                .last_unknown_ms
                .is_some_and(|at| now_ms < at + UNKNOWN_SESSION_REHANDSHAKE_MS)
        {
            return;
        }
        state.last_unknown_ms = Some(now_ms);
        // Without its certificate, `connect` asks for it; the handshake starts when it comes.
        state.wanted = state.cert.is_none();
        self.connect(from, now_ms, rng);
    }

    /// Hubs held without a certificate.
    fn strangers(&self) -> usize {
        self.peers.values().filter(|p| p.cert.is_none()).count()
    }

    /// Forgets the hubs held without a certificate, with nothing waiting and no session, idle
    /// for [`UNKNOWN_SESSION_REHANDSHAKE_MS`].
    fn forget_idle_strangers(&mut self, now_ms: u64) {
        self.peers.retain(|_, p| {
            let idle = p.cert.is_none()
                && p.handshake.is_none()
                && p.current.is_none()
                && p.previous.is_none()
                && p.queue.is_empty()
                && p.partial.is_empty()
                && p.last_unknown_ms
                    .is_none_or(|at| now_ms >= at + UNKNOWN_SESSION_REHANDSHAKE_MS);
            !idle
        });
    }

    /// Fragments, encrypts and hands out `message` on the current session.
    fn transmit_message(&mut self, peer: HubId, message: &[u8], now_ms: u64) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        let Some(session) = state.current.as_mut() else {
            return;
        };
        if !message.is_empty() {
            session.used_ms = now_ms;
        }
        let id = state.next_message_id;
        state.next_message_id = state.next_message_id.wrapping_add(1);
        let pieces: Vec<&[u8]> = if message.is_empty() {
            vec![&[]]
        } else {
            message.chunks(FRAGMENT_DATA).collect()
        };
        let count = pieces.len() as u16;
        let mut plain = Vec::with_capacity(FRAGMENT_HEADER + FRAGMENT_DATA);
        let mut failed = None;
        for (i, piece) in pieces.into_iter().enumerate() {
            plain.clear();
            plain.extend_from_slice(&id.to_be_bytes());
            plain.extend_from_slice(&(i as u16).to_be_bytes());
            plain.extend_from_slice(&count.to_be_bytes());
            plain.extend_from_slice(piece);
            let mut payload = vec![DATA];
            payload.extend_from_slice(&session.remote_index.to_be_bytes());
            if let Err(e) = session.transport.encrypt(&plain, now_ms, &mut payload) {
                failed = Some(e);
                break;
            }
            self.events.push_back(Event::Transmit { to: peer, payload });
        }
        if let Some(e) = failed {
            self.drop_peer(peer, &format!("session: {e}"));
        }
    }

    fn handle_data(
        &mut self,
        from: HubId,
        body: &[u8],
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), NoiseError> {
        let mut r = Reader::new(body);
        let index = r.u32().map_err(|_| NoiseError::Malformed)?;
        let msg = r.rest();
        let session = match self.by_index.get(&index) {
            Some(hub) if *hub == from => self.peers.get_mut(&from).and_then(|state| {
                [state.current.as_mut(), state.previous.as_mut()]
                    .into_iter()
                    .flatten()
                    .find(|s| s.local_index == index)
            }),
            _ => None,
        };
        let Some(session) = session else {
            self.unknown_session(from, now_ms, rng);
            return Err(NoiseError::Noise("unknown session".into()));
        };
        let mut plain = Vec::new();
        session.transport.decrypt(msg, now_ms, &mut plain)?;
        if !plain.is_empty() {
            session.used_ms = now_ms;
        }
        if !session.confirmed {
            // The initiator holds the session: what waited for it goes now.
            session.confirmed = true;
            self.flush(from, now_ms);
        }
        if plain.is_empty() {
            return Ok(()); // a keepalive: it only confirms
        }
        let Some(state) = self.peers.get_mut(&from) else {
            return Ok(());
        };
        let mut f = Reader::new(&plain);
        let m = |_| NoiseError::Malformed;
        let id = f.u32().map_err(m)?;
        let i = f.u16().map_err(m)?;
        let count = f.u16().map_err(m)?;
        let piece = f.rest();
        if count == 0
            || i >= count
            || usize::from(count) * FRAGMENT_DATA > MAX_MESSAGE + FRAGMENT_DATA
        {
            return Err(NoiseError::Malformed);
        }
        if count == 1 {
            self.events.push_back(Event::Received {
                from,
                message: piece.to_vec(),
            });
            return Ok(());
        }
        // A peer cannot make us hold more than a few partial messages, nor more than one whole
        // message's bytes, nor any of it for long (`handle_timeout`).
        if !state.partial.contains_key(&id) && state.partial.len() >= MAX_PARTIAL_MESSAGES {
            return Err(NoiseError::Noise("too many partial messages".into()));
        }
        if state.partial_bytes + piece.len() > MAX_PARTIAL_BYTES {
            // The message that does not fit is dropped whole, so the others can complete.
            if let Some(dropped) = state.partial.remove(&id) {
                state.partial_bytes -= dropped.pieces.iter().flatten().map(Vec::len).sum::<usize>();
            }
            return Err(NoiseError::Noise(
                "partial messages past the reassembly limit".into(),
            ));
        }
        let p = state.partial.entry(id).or_insert_with(|| Partial {
            pieces: vec![None; usize::from(count)],
            received: 0,
            started_ms: now_ms,
        });
        if p.pieces.len() != usize::from(count) {
            return Err(NoiseError::Malformed);
        }
        let slot = &mut p.pieces[usize::from(i)];
        if slot.is_none() {
            *slot = Some(piece.to_vec());
            p.received += 1;
            state.partial_bytes += piece.len();
        }
        if p.received == p.pieces.len() {
            if let Some(done) = state.partial.remove(&id) {
                let message: Vec<u8> = done.pieces.into_iter().flatten().flatten().collect();
                state.partial_bytes -= message.len();
                self.events.push_back(Event::Received { from, message });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::testing::{ca, sessions, A, B, NOW};
    use crate::trust::{Revocation, RevocationList};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    /// Two hubs and a virtual network between them, with a virtual clock.
    struct Pair {
        a: PeerSessions,
        b: PeerSessions,
        now: u64,
        rng: StdRng,
        /// Payloads in flight: (to_b, payload).
        wire: VecDeque<(bool, Vec<u8>)>,
        got_a: Vec<Vec<u8>>,
        got_b: Vec<Vec<u8>>,
        failed: Vec<(bool, String)>,
        /// Certificates of sessions that came up: (at hub A, its fingerprint).
        established: Vec<(bool, [u8; 32])>,
    }

    impl Pair {
        fn new() -> Self {
            Pair {
                a: sessions(1).0,
                b: sessions(2).0,
                now: NOW,
                rng: StdRng::seed_from_u64(1),
                wire: VecDeque::new(),
                got_a: vec![],
                got_b: vec![],
                failed: vec![],
                established: vec![],
            }
        }

        /// Moves events into the wire and the inboxes.
        fn collect(&mut self) {
            // `from_a`: events of hub A travel to B, and the reverse.
            for from_a in [true, false] {
                let (hub, inbox) = if from_a {
                    (&mut self.a, &mut self.got_a)
                } else {
                    (&mut self.b, &mut self.got_b)
                };
                while let Some(e) = hub.poll_event() {
                    match e {
                        Event::Transmit { payload, .. } => self.wire.push_back((from_a, payload)),
                        Event::Received { message, .. } => inbox.push(message),
                        Event::Failed { reason, .. } => self.failed.push((from_a, reason)),
                        Event::Established { certificate, .. } => {
                            self.established.push((from_a, certificate.fingerprint()))
                        }
                    }
                }
            }
        }

        /// The kind bytes of the payloads in flight, in order.
        fn kinds_in_flight(&self) -> Vec<u8> {
            self.wire.iter().map(|(_, w)| w[0]).collect()
        }

        /// Delivers everything in flight, in order, until quiet.
        fn drive(&mut self) {
            self.collect();
            while let Some((to_b, payload)) = self.wire.pop_front() {
                let r = if to_b {
                    self.b
                        .handle_incoming(HubId([1; 16]), &payload, self.now, &mut self.rng)
                } else {
                    self.a
                        .handle_incoming(HubId([2; 16]), &payload, self.now, &mut self.rng)
                };
                r.unwrap();
                self.collect();
            }
        }
    }

    /// A peer whose certificate an admin issued sets a session up with its chain; revoking the
    /// admin ends the session, as revoking the peer would.
    #[test]
    fn revoking_an_admin_ends_the_sessions_of_the_hubs_it_certified() {
        use crate::session::testing::identity_issued_by;
        use crate::trust::cert::tests::{admin, DAY_MS};
        let second = admin(&ca(), 40, NOW + 365 * DAY_MS);
        let (local, cert_a) = identity_issued_by(1, &second);
        assert_eq!(cert_a.issued_by(), Some(HubId([40; 16])));
        let mut p = Pair::new();
        p.a = PeerSessions::new(local, A);
        p.a.send(B, b"hello".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        assert_eq!(p.got_b, vec![b"hello".to_vec()]);
        assert!(p.established.contains(&(false, cert_a.fingerprint())));
        let list = RevocationList {
            version: 1,
            issued_at_ms: NOW,
            entries: vec![Revocation {
                fingerprint: [0; 32],
                key_hash: cert_a.issuer_ids().unwrap().1,
                revoked_at_ms: NOW,
                reason: "admin retired".into(),
            }],
        };
        let list = RevocationList::verify(&list.sign(&ca()).unwrap(), &ca().cluster_id()).unwrap();
        p.b.set_revocations(list);
        assert!(!p.b.is_established(&A));
        p.collect();
        assert_eq!(p.failed, vec![(false, "certificate revoked".into())]);
    }

    /// Data for unknown sessions from thousands of made-up hub ids (a pairing guest may name
    /// any): at most `MAX_STRANGERS` are held, each is forgotten once idle, and a real peer's
    /// session is not hurt. (Once every such id stayed in the table for good.)
    #[test]
    fn strangers_cannot_grow_the_session_table() {
        let mut p = Pair::new();
        p.a.send(B, b"before".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        for i in 0..5_000u32 {
            let mut id = [0xee; 16];
            id[..4].copy_from_slice(&i.to_be_bytes());
            let junk = [&[DATA][..], &i.wrapping_add(7).to_be_bytes(), b"junk"].concat();
            let r = p.b.handle_incoming(HubId(id), &junk, p.now, &mut p.rng);
            assert!(r.is_err());
            assert!(p.b.peers.len() <= MAX_STRANGERS + 1, "at {i}");
        }
        // Their certificate requests went out (to the first ones only), and are dropped here.
        while p.b.poll_event().is_some() {}
        assert_eq!(p.b.strangers(), MAX_STRANGERS);
        assert_eq!(
            p.b.poll_timeout(),
            Some(p.now + UNKNOWN_SESSION_REHANDSHAKE_MS)
        );
        p.now += UNKNOWN_SESSION_REHANDSHAKE_MS;
        p.b.handle_timeout(p.now, &mut p.rng);
        assert_eq!(p.b.strangers(), 0);
        assert_eq!(p.b.peers.len(), 1);
        p.a.send(B, b"after".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        assert_eq!(p.got_b, vec![b"before".to_vec(), b"after".to_vec()]);
    }

    #[test]
    fn on_demand_session_fetches_the_certificate_and_delivers_queued_messages() {
        let mut p = Pair::new();
        p.a.send(B, b"one".to_vec(), p.now, &mut p.rng).unwrap();
        p.a.send(B, b"two".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        assert_eq!(p.got_b, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(p.a.is_established(&B) && p.b.is_established(&A));
        p.b.send(A, b"back".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        assert_eq!(p.got_a, vec![b"back".to_vec()]);
    }

    /// The responder sends nothing on a new session until the initiator's first transport
    /// message proves the initiator holds it (key confirmation): what it has to send waits.
    #[test]
    fn the_responder_waits_for_key_confirmation_before_sending() {
        let mut p = Pair::new();
        let (_, cert_b) = sessions(2);
        p.a.add_certificate(cert_b);
        p.a.send(B, b"a1".to_vec(), p.now, &mut p.rng).unwrap();
        p.collect();
        let (_, init) = p.wire.pop_front().unwrap();
        assert_eq!(init[0], INIT);
        p.b.handle_incoming(A, &init, p.now, &mut p.rng).unwrap();
        p.b.send(A, b"b1".to_vec(), p.now, &mut p.rng).unwrap();
        p.collect();
        let kinds = p.kinds_in_flight();
        assert_eq!(
            kinds,
            vec![RESPONSE],
            "the responder sent data before confirmation"
        );
        assert!(!p.b.is_established(&A));
        p.drive();
        assert_eq!(p.got_b, vec![b"a1".to_vec()]);
        assert_eq!(p.got_a, vec![b"b1".to_vec()]);
        assert!(p.b.is_established(&A));

        // An initiator with nothing to send (a rekey started by the timer, of a session in use)
        // confirms with an empty transport message; the responder's new session is confirmed by
        // it alone.
        let old = p.b.peers[&A].current.as_ref().unwrap().local_index;
        p.now += crate::session::noise::REKEY_AFTER_MS - 10_000;
        p.b.send(A, b"b2".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        p.now += 10_000;
        p.a.handle_timeout(p.now, &mut p.rng);
        p.drive();
        let new = p.b.peers[&A].current.as_ref().unwrap();
        assert_ne!(new.local_index, old, "no rekey");
        assert!(
            new.confirmed,
            "the responder's new session was not confirmed"
        );
        assert_eq!(
            p.got_b,
            vec![b"a1".to_vec()],
            "a keepalive is not a message"
        );
    }

    /// A first message captured and replayed to a hub that restarted: refused once stale; when
    /// fresh, answered, but the hub sends nothing on that session, and sets up one of its own
    /// when no confirmation comes. Data for a session it no longer knows makes it hand-shake
    /// with the sender at once (at most every `UNKNOWN_SESSION_REHANDSHAKE_MS`).
    #[test]
    fn a_replayed_first_message_after_a_restart_cannot_cut_peers_off() {
        let mut p = Pair::new();
        let (_, cert_b) = sessions(2);
        p.a.add_certificate(cert_b);
        p.a.send(B, b"hi".to_vec(), p.now, &mut p.rng).unwrap();
        p.collect();
        let init = p.wire.front().unwrap().1.clone();
        p.drive();
        assert_eq!(p.got_b, vec![b"hi".to_vec()]);

        // B restarts: same identity, nothing remembered.
        p.b = sessions(2).0;
        p.now += 1_000;
        let stale = p.now + crate::session::noise::HANDSHAKE_MAX_AGE_MS;
        assert_eq!(
            p.b.handle_incoming(A, &init, stale, &mut p.rng),
            Err(NoiseError::StaleHandshake)
        );
        p.b.handle_incoming(A, &init, p.now, &mut p.rng).unwrap();
        p.b.send(A, b"after the restart".to_vec(), p.now, &mut p.rng)
            .unwrap();
        p.drive(); // A ignores the answer to a handshake it did not start
        assert!(p.got_a.is_empty(), "sent on a session nobody can read");
        p.now += CONFIRM_TIMEOUT_MS;
        assert!(p.b.poll_timeout().is_some_and(|t| t <= p.now));
        p.b.handle_timeout(p.now, &mut p.rng);
        p.drive();
        assert_eq!(p.got_a, vec![b"after the restart".to_vec()]);

        // B restarts again; A's data on its old session makes B start a handshake.
        p.b = sessions(2).0;
        p.now += 1_000;
        p.a.send(B, b"lost".to_vec(), p.now, &mut p.rng).unwrap();
        p.collect();
        let (_, data) = p.wire.pop_front().unwrap();
        assert_eq!(data[0], DATA);
        assert!(p.b.handle_incoming(A, &data, p.now, &mut p.rng).is_err());
        p.collect();
        let kinds = p.kinds_in_flight();
        // It knows A's certificate from nothing yet: it asks for it first.
        assert_eq!(kinds, vec![CERT_REQUEST]);
        p.drive();
        assert!(p.b.is_established(&A) && p.a.is_established(&B));
        // Not again right away: a relay cannot make it hand-shake at will.
        p.wire.clear();
        p.b = sessions(2).0;
        p.now += 1_000;
        assert!(p.b.handle_incoming(A, &data, p.now, &mut p.rng).is_err());
        assert!(p
            .b
            .handle_incoming(A, &data, p.now + 1, &mut p.rng)
            .is_err());
        p.collect();
        assert_eq!(p.wire.len(), 1, "one handshake per peer per interval");
        p.drive();
        p.a.send(B, b"again".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        assert_eq!(p.got_b.last(), Some(&b"again".to_vec()));
    }

    #[test]
    fn a_full_fragment_fits_one_relay_payload() {
        // docs/PROTOCOL.md states this figure: it is part of the wire contract.
        assert_eq!(FRAGMENT_DATA, 65_499);
        let mut p = Pair::new();
        p.a.send(B, vec![1; FRAGMENT_DATA], p.now, &mut p.rng)
            .unwrap();
        p.drive();
        p.a.send(B, vec![2; FRAGMENT_DATA], p.now, &mut p.rng)
            .unwrap();
        p.collect();
        let (_, payload) = p.wire.pop_front().unwrap();
        assert_eq!(payload.len(), MAX_PAYLOAD);
    }

    /// A peer that sends fragments and never the last one cannot make us hold more than one
    /// whole message's bytes, nor hold them for more than the reassembly timeout (once it could
    /// park 4 x 16 MiB for as long as the session lasted).
    #[test]
    fn partial_messages_are_bounded_in_bytes_and_in_time() {
        let mut p = Pair::new();
        p.a.send(B, b"hi".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        let big = vec![7u8; 10 * 1024 * 1024];
        p.a.send(B, big.clone(), p.now, &mut p.rng).unwrap();
        p.a.send(B, big.clone(), p.now, &mut p.rng).unwrap();
        p.collect();
        let fragments: Vec<Vec<u8>> = p.wire.drain(..).map(|(_, f)| f).collect();
        let per_message = fragments.len() / 2;
        let (first, second) = fragments.split_at(per_message);
        for f in &first[..per_message - 1] {
            p.b.handle_incoming(A, f, p.now, &mut p.rng).unwrap();
        }
        let refused = second
            .iter()
            .filter(|f| p.b.handle_incoming(A, f, p.now, &mut p.rng).is_err())
            .count();
        assert!(refused > 0, "20 MiB held for reassembly");
        assert_eq!(p.b.poll_timeout(), Some(p.now + REASSEMBLY_TIMEOUT_MS));
        p.b.handle_timeout(p.now + REASSEMBLY_TIMEOUT_MS - 1, &mut p.rng);
        p.b.handle_incoming(A, &first[per_message - 1], p.now, &mut p.rng)
            .unwrap();
        p.collect();
        assert_eq!(p.got_b.last(), Some(&big), "completed within its time");

        // Again, but the last fragment comes after the timeout: the rest was dropped.
        p.a.send(B, big.clone(), p.now, &mut p.rng).unwrap();
        p.collect();
        let fragments: Vec<Vec<u8>> = p.wire.drain(..).map(|(_, f)| f).collect();
        let (last, rest) = fragments.split_last().unwrap();
        for f in rest {
            p.b.handle_incoming(A, f, p.now, &mut p.rng).unwrap();
        }
        let received = p.got_b.len();
        p.b.handle_timeout(p.now + REASSEMBLY_TIMEOUT_MS, &mut p.rng);
        p.b.handle_incoming(A, last, p.now + REASSEMBLY_TIMEOUT_MS, &mut p.rng)
            .unwrap();
        p.collect();
        assert_eq!(p.got_b.len(), received, "an expired message was completed");
    }

    #[test]
    fn large_messages_are_fragmented_and_reassembled() {
        let mut p = Pair::new();
        let big: Vec<u8> = (0..(3 * FRAGMENT_DATA + 17))
            .map(|i| (i % 251) as u8)
            .collect();
        p.a.send(B, big.clone(), p.now, &mut p.rng).unwrap();
        p.a.send(B, Vec::new(), p.now, &mut p.rng).unwrap();
        p.drive();
        assert_eq!(p.got_b, vec![big, Vec::new()]);
        assert!(p.wire.is_empty());
        assert_eq!(
            p.a.send(B, vec![0; MAX_MESSAGE + 1], p.now, &mut p.rng),
            Err(SendError::TooLarge(MAX_MESSAGE + 1))
        );
    }

    #[test]
    fn simultaneous_open_settles_on_one_session() {
        let mut p = Pair::new();
        let (_, cert_a) = sessions(1);
        let (_, cert_b) = sessions(2);
        p.a.add_certificate(cert_b);
        p.b.add_certificate(cert_a);
        p.a.send(B, b"from a".to_vec(), p.now, &mut p.rng).unwrap();
        p.b.send(A, b"from b".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        assert_eq!(p.got_b, vec![b"from a".to_vec()]);
        assert_eq!(p.got_a, vec![b"from b".to_vec()]);
        // One session each way: the same indices pair up.
        let (sa, sb) = (
            p.a.peers[&B].current.as_ref().unwrap(),
            p.b.peers[&A].current.as_ref().unwrap(),
        );
        assert_eq!(sa.remote_index, sb.local_index);
        assert_eq!(sb.remote_index, sa.local_index);
        assert!(p.a.peers[&B].previous.is_none() && p.b.peers[&A].previous.is_none());
    }

    #[test]
    fn a_lost_first_message_is_retried_and_a_dead_peer_reported() {
        let mut p = Pair::new();
        let (_, cert_b) = sessions(2);
        p.a.add_certificate(cert_b);
        p.a.send(B, b"hello".to_vec(), p.now, &mut p.rng).unwrap();
        p.collect();
        assert_eq!(p.wire.len(), 1);
        p.wire.clear(); // lost
        p.now += HANDSHAKE_RETRY_MS;
        assert_eq!(p.a.poll_timeout(), Some(p.now));
        p.a.handle_timeout(p.now, &mut p.rng);
        p.drive();
        assert_eq!(p.got_b, vec![b"hello".to_vec()]);
        // A peer that never answers: given up after the attempts, reported.
        let mut q = Pair::new();
        let (_, cert_b) = sessions(2);
        q.a.add_certificate(cert_b);
        q.a.send(B, b"x".to_vec(), q.now, &mut q.rng).unwrap();
        for _ in 0..HANDSHAKE_ATTEMPTS {
            q.now += HANDSHAKE_RETRY_MS;
            q.a.handle_timeout(q.now, &mut q.rng);
        }
        q.collect();
        assert_eq!(q.failed, vec![(true, "no answer to the handshake".into())]);
    }

    #[test]
    fn a_session_idle_past_its_reject_limit_is_replaced_on_the_next_send() {
        let mut p = Pair::new();
        p.a.send(B, b"early".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        // Nothing sent for longer than a session may live (no timer ran meanwhile).
        p.now += crate::session::noise::REJECT_AFTER_MS + 1;
        p.a.send(B, b"after a long pause".to_vec(), p.now, &mut p.rng)
            .unwrap();
        p.drive();
        assert!(p.failed.is_empty(), "{:?}", p.failed);
        assert_eq!(
            p.got_b,
            vec![b"early".to_vec(), b"after a long pause".to_vec()]
        );
    }

    #[test]
    fn an_idle_session_is_not_rekeyed_by_the_clock_and_is_replaced_at_its_next_use() {
        let mut p = Pair::new();
        p.a.send(B, b"hello".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        let old = p.a.peers[&B].current.as_ref().unwrap().local_index;
        // Four minutes with nothing to say, the clocks ticking: nothing goes out either way.
        for _ in 0..24 {
            p.now += 10_000;
            p.a.handle_timeout(p.now, &mut p.rng);
            p.b.handle_timeout(p.now, &mut p.rng);
            p.collect();
            assert!(
                p.wire.is_empty(),
                "an idle hub sent {:?}",
                p.kinds_in_flight()
            );
        }
        // The next message goes on a new session (the old one expired), and arrives.
        p.a.send(B, b"after a quiet while".to_vec(), p.now, &mut p.rng)
            .unwrap();
        p.drive();
        assert_ne!(p.a.peers[&B].current.as_ref().unwrap().local_index, old);
        assert_eq!(
            p.got_b,
            vec![b"hello".to_vec(), b"after a quiet while".to_vec()]
        );
    }

    /// A renewed certificate reaches the peer at once by a rekey, the session going on and
    /// nothing lost; one for other keys is refused.
    #[test]
    fn a_renewed_certificate_reaches_the_peer_at_the_next_rekey() {
        let mut p = Pair::new();
        p.a.send(B, b"before".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        let (_, old) = crate::session::testing::identity(1);
        let req = crate::trust::renewal::renewed(&old, None, p.now);
        let der = ca().issue(&req, &mut StdRng::seed_from_u64(3)).unwrap();
        let new = crate::trust::renewal::accept(&old, &der, &ca().public_key(), p.now).unwrap();
        let (_, other) = crate::session::testing::identity(2);
        assert!(matches!(
            p.a.set_certificate(&other, p.now, &mut p.rng),
            Err(NoiseError::KeyMismatch)
        ));
        p.established.clear();
        // A message in flight on the old session as the renewal rekeys it.
        p.now += 1_000;
        p.a.send(B, b"during".to_vec(), p.now, &mut p.rng).unwrap();
        p.a.set_certificate(&new, p.now, &mut p.rng).unwrap();
        p.drive();
        p.a.send(B, b"after".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        assert!(p.failed.is_empty(), "{:?}", p.failed);
        // B holds A's new certificate at once, though the session was not due for a rekey.
        let at_b: Vec<_> = p.established.iter().filter(|(a, _)| !a).collect();
        assert_eq!(at_b, [&(false, new.fingerprint())]);
        assert_eq!(
            p.got_b,
            [b"before".to_vec(), b"during".to_vec(), b"after".to_vec()]
        );
    }

    #[test]
    fn rekey_mid_stream_loses_nothing() {
        let mut p = Pair::new();
        p.a.send(B, b"before".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        let old = p.a.peers[&B].current.as_ref().unwrap().local_index;
        p.now += crate::session::noise::REKEY_AFTER_MS;
        // A message sent on the old session as the rekey starts (the send triggers it) is held
        // back in flight...
        p.a.send(B, b"in flight".to_vec(), p.now, &mut p.rng)
            .unwrap();
        p.collect();
        let (in_flight, rest): (Vec<_>, Vec<_>) = p
            .wire
            .drain(..)
            .partition(|(_, payload)| payload[0] == DATA);
        p.wire.extend(rest);
        assert_eq!(p.wire.len(), 1, "the rekey's first message");
        p.drive();
        assert!(
            p.b.peers[&A].previous.is_some(),
            "the old session is kept for receiving"
        );
        // ... and arrives after the new session is up: still accepted.
        for (_, payload) in in_flight {
            p.b.handle_incoming(A, &payload, p.now, &mut p.rng).unwrap();
        }
        p.collect();
        p.a.send(B, b"after".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        assert_ne!(p.a.peers[&B].current.as_ref().unwrap().local_index, old);
        let mut got = p.got_b.clone();
        got.sort();
        assert_eq!(
            got,
            vec![b"after".to_vec(), b"before".to_vec(), b"in flight".to_vec()]
        );
    }

    #[test]
    fn a_peer_that_restarts_gets_a_new_session_and_nothing_queued_is_lost() {
        let mut p = Pair::new();
        p.a.send(B, b"one".to_vec(), p.now, &mut p.rng).unwrap();
        p.drive();
        // B restarts (new state, same identity); A hears it rejoined while a message waits.
        p.b = sessions(2).0;
        p.a.reset_peer(B, p.now, &mut p.rng);
        p.a.send(B, b"two".to_vec(), p.now, &mut p.rng).unwrap();
        p.a.reset_peer(B, p.now, &mut p.rng);
        p.drive();
        assert_eq!(p.got_b, vec![b"one".to_vec(), b"two".to_vec()]);
        assert!(p.a.is_established(&B) && p.b.is_established(&A));
    }

    #[test]
    fn revocation_drops_sessions_and_duplicates_are_refused() {
        let mut p = Pair::new();
        p.a.send(B, b"x".to_vec(), p.now, &mut p.rng).unwrap();
        p.collect();
        // Capture the data message to replay it later.
        p.drive();
        p.a.send(B, b"y".to_vec(), p.now, &mut p.rng).unwrap();
        p.collect();
        let (_, data) = p.wire.pop_front().unwrap();
        p.b.handle_incoming(A, &data, p.now, &mut p.rng).unwrap();
        assert_eq!(
            p.b.handle_incoming(A, &data, p.now, &mut p.rng),
            Err(NoiseError::Replayed)
        );
        let (_, cert_a) = sessions(1);
        let list = RevocationList {
            version: 1,
            issued_at_ms: NOW,
            entries: vec![Revocation {
                fingerprint: cert_a.fingerprint(),
                key_hash: [0; 32],
                revoked_at_ms: NOW,
                reason: "gone".into(),
            }],
        };
        let list = RevocationList::verify(&list.sign(&ca()).unwrap(), &ca().cluster_id()).unwrap();
        p.b.set_revocations(list);
        assert!(!p.b.is_established(&A));
        p.collect();
        assert_eq!(p.failed, vec![(false, "certificate revoked".into())]);
        // The revoked hub cannot set a new session up either.
        p.a.drop_peer(B, "test");
        p.a.send(B, b"z".to_vec(), p.now, &mut p.rng).unwrap();
        p.collect();
        let mut refused = false;
        while let Some((to_b, payload)) = p.wire.pop_front() {
            let r = if to_b {
                p.b.handle_incoming(A, &payload, p.now, &mut p.rng)
            } else {
                p.a.handle_incoming(B, &payload, p.now, &mut p.rng)
            };
            refused |= r.is_err();
            p.collect();
        }
        assert!(refused);
        assert!(!p.b.is_established(&A));
    }
}
