//! A hub's peer core, sans-IO: the session layer ([`PeerSessions`]), the request layer ([`Rpc`])
//! and the relay's word on the other hubs ([`Paths`]) put together, as every hub runs them (the
//! native hub's tokio task and the browser hub alike). The transport hands it what arrives
//! (payloads from the relay or a LAN link, what the relay says of the hubs, revocation lists,
//! the clock) and the application's requests and answers; it hands back [`CoreEvent`]s in order:
//! payloads to transmit, requests of peers to answer, answers to this hub's requests, sessions
//! up and down.
//!
//! Calling pattern: after any `handle_*`, `request`, `answer`, `send` or `cancel`, drain
//! [`PeerCore::poll_event`] until `None`, and wake at [`PeerCore::poll_timeout`] (Unix ms) to call
//! [`PeerCore::handle_timeout`]. A transmission goes to the peer's direct link if the transport
//! has one up (it says so with [`PeerCore::set_linked`]), by the relay otherwise.

use std::collections::{HashSet, VecDeque};

use rand_core::CryptoRngCore;

use crate::relay::frame::HubId;
use crate::session::noise::{LocalIdentity, NoiseError};
use crate::session::pairing::is_pairing_message;
use crate::session::paths::{Paths, RelaySaid};
use crate::session::peer::{Event, PeerSessions, SendError};
use crate::session::rpc::{Answer, Answered, Inbound, Request, Rpc, RpcError, Token};
use crate::trust::{VerifiedPeer, VerifiedRevocations};

/// What the transport or the application must do or know, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CoreEvent {
    /// Send this payload to `to` (by its direct link if one is up, by the relay otherwise).
    Transmit {
        /// The destination hub.
        to: HubId,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A request or notice of a peer, decoded (never [`Inbound::Data`], which is
    /// [`CoreEvent::Data`], nor [`Inbound::Answer`], which is [`CoreEvent::Answered`]).
    Inbound(Inbound),
    /// Application data from a peer.
    Data {
        /// The sender, as its certificate names it.
        from: HubId,
        /// The data.
        data: Vec<u8>,
    },
    /// A request of this hub ended: its answer, or why none came.
    Answered(Answered),
    /// A pairing message (from a pairing guest, or an issuer's answer), outside any session.
    Pairing {
        /// The sender.
        from: HubId,
        /// The whole message.
        message: Vec<u8>,
    },
    /// A session with a peer is up; its certificate was verified in the handshake.
    Established {
        /// The peer's certificate.
        certificate: Box<VerifiedPeer>,
    },
    /// A peer's handshake was refused for a reason that is its own fault (its certificate
    /// refused, or a static key its certificate does not name).
    HandshakeRefused {
        /// The peer, as the relay or the link named it.
        peer: HubId,
        /// Why.
        reason: String,
        /// Whether it came over a direct link (whose TLS proved the peer's certificate).
        over_link: bool,
    },
    /// A session with a peer failed or was dropped (requests on it ended).
    SessionFailed {
        /// The peer.
        peer: HubId,
        /// Why.
        reason: String,
    },
}

/// Why a request was not made. (Exhaustive, as the layers' own errors are what it wraps.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AskError {
    /// The relay said the peer left (or is not online) and it has not come back.
    #[error("{0} is not online at the relay")]
    Offline(HubId),
    /// The request layer refused it (too many waiting, a name over its bound).
    #[error("cannot send the request: {0}")]
    Request(#[from] RpcError),
    /// The session layer refused its message (queue full, too large, to self).
    #[error(transparent)]
    Send(#[from] SendError),
}

/// Why an answer was not sent. (Exhaustive.)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// Answered, cancelled or forgotten already, or not encodable.
    #[error(transparent)]
    Request(#[from] RpcError),
    /// The session layer refused the answer.
    #[error(transparent)]
    Send(#[from] SendError),
}

/// One hub's sessions, requests and paths. See the module docs for the calling pattern.
pub struct PeerCore {
    sessions: PeerSessions,
    rpc: Rpc,
    paths: Paths,
    /// Peers with a direct link up (the transport says so): the relay's word does not stop
    /// requests to them, and an outage of the relay loses them nothing.
    linked: HashSet<HubId>,
    events: VecDeque<CoreEvent>,
}

impl std::fmt::Debug for PeerCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerCore")
            .field("outstanding", &self.rpc.outstanding())
            .field("linked", &self.linked.len())
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

impl PeerCore {
    /// The core of hub `me` with its Noise identity; its request tokens count up from
    /// `first_token` (random: see `Rpc::new`).
    pub fn new(identity: LocalIdentity, me: HubId, first_token: Token) -> Self {
        PeerCore {
            sessions: PeerSessions::new(identity, me),
            rpc: Rpc::new(first_token),
            paths: Paths::new(),
            linked: HashSet::new(),
            events: VecDeque::new(),
        }
    }

    /// The next thing to do or know.
    pub fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    /// When [`PeerCore::handle_timeout`] is next due (Unix ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        [self.sessions.poll_timeout(), self.rpc.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    /// The clock reached `now_ms`: handshakes retried, sessions rekeyed, requests past their
    /// deadlines ended.
    pub fn handle_timeout(&mut self, now_ms: u64, rng: &mut impl CryptoRngCore) {
        self.sessions.handle_timeout(now_ms, rng);
        self.rpc.handle_timeout(now_ms);
        self.drain(now_ms, rng);
    }

    /// How many requests of this hub wait for their answers (while any does, the transport
    /// checks its relay path eagerly: `relay::liveness`).
    pub fn outstanding(&self) -> usize {
        self.rpc.outstanding()
    }

    /// This hub's certificate was renewed: handshakes carry it from now on, and the sessions up
    /// are rekeyed now ([`PeerSessions::set_certificate`]).
    pub fn set_certificate(
        &mut self,
        cert: &VerifiedPeer,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), crate::session::noise::NoiseError> {
        self.sessions.set_certificate(cert, now_ms, rng)?;
        self.drain(now_ms, rng);
        Ok(())
    }

    /// A peer certificate known ahead of a handshake (from the peer's own announcement).
    pub fn add_certificate(&mut self, cert: VerifiedPeer) {
        self.sessions.add_certificate(cert);
    }

    /// A newer revocation list: sessions of revoked peers end at once.
    pub fn handle_revocations(
        &mut self,
        list: VerifiedRevocations,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        self.sessions.set_revocations(list);
        self.drain(now_ms, rng);
    }

    /// Whether a direct link to `peer` is up.
    pub fn set_linked(&mut self, peer: HubId, up: bool) {
        if up {
            self.linked.insert(peer);
        } else {
            self.linked.remove(&peer);
        }
    }

    /// What the relay said of the hubs. Whose path came back gets again what waits for its
    /// answers on the sessions held (peers of session version 3 tell repetitions from new
    /// requests); with nothing waiting, an empty message asks whether it still holds the session
    /// (one that restarted answers with a handshake). A peer linked directly lost nothing.
    pub fn handle_relay(&mut self, said: &RelaySaid, now_ms: u64, rng: &mut impl CryptoRngCore) {
        for peer in self.paths.handle_relay(said) {
            if self.linked.contains(&peer) {
                continue;
            }
            if self.rpc.resend(peer) == 0 {
                self.sessions.probe(peer, now_ms);
            }
        }
        self.drain(now_ms, rng);
    }

    /// A payload from `from`, by the relay or a direct link (`over_link`).
    pub fn handle_incoming(
        &mut self,
        from: HubId,
        payload: &[u8],
        over_link: bool,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) {
        if is_pairing_message(payload) {
            // Pairing guests hold no certificate: they never link.
            if !over_link {
                self.events.push_back(CoreEvent::Pairing {
                    from,
                    message: payload.to_vec(),
                });
            }
            return;
        }
        match self.sessions.handle_incoming(from, payload, now_ms, rng) {
            Ok(()) => {}
            Err(e @ (NoiseError::Certificate(_) | NoiseError::KeyMismatch)) => {
                self.events.push_back(CoreEvent::HandshakeRefused {
                    peer: from,
                    reason: e.to_string(),
                    over_link,
                });
            }
            // Noise from the network (a stale session, a forged message) changes nothing.
            Err(_) => {}
        }
        self.drain(now_ms, rng);
    }

    /// Asks `request` of `to`, waited for until `deadline_ms`: its token (the
    /// [`CoreEvent::Answered`] that ends it names it).
    pub fn request(
        &mut self,
        to: HubId,
        request: &Request,
        deadline_ms: u64,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Token, AskError> {
        if !self.paths.may_ask(to, self.linked.contains(&to)) {
            return Err(AskError::Offline(to));
        }
        let (token, message) = self.rpc.request(to, request, deadline_ms)?;
        // A call queued behind this hub's calls in flight to `to` has no message yet: it goes
        // out when its turn comes.
        if let Some(message) = message {
            if let Err(e) = self.sessions.send(to, message, now_ms, rng) {
                self.rpc.abandon(token);
                return Err(e.into());
            }
        }
        self.drain(now_ms, rng);
        Ok(token)
    }

    /// Nobody waits for request `token` any more: a call's peer is told to stop.
    pub fn cancel(&mut self, token: Token, now_ms: u64, rng: &mut impl CryptoRngCore) {
        self.rpc.cancel(token);
        self.drain(now_ms, rng);
    }

    /// Answers request `token` of `to` (one that came as [`CoreEvent::Inbound`]).
    pub fn answer(
        &mut self,
        to: HubId,
        token: Token,
        answer: &Answer,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), AnswerError> {
        let message = self.rpc.answer(to, token, answer)?;
        let sent = self.sessions.send(to, message, now_ms, rng);
        self.drain(now_ms, rng);
        Ok(sent?)
    }

    /// Sends a whole session message to `to` (data, a notice: `msg::Msg`).
    pub fn send(
        &mut self,
        to: HubId,
        message: Vec<u8>,
        now_ms: u64,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(), SendError> {
        let sent = self.sessions.send(to, message, now_ms, rng);
        self.drain(now_ms, rng);
        sent
    }

    /// Moves what the layers produced on: the request layer's messages into the sessions,
    /// messages received into the request layer, the rest to [`CoreEvent`]s.
    fn drain(&mut self, now_ms: u64, rng: &mut impl CryptoRngCore) {
        loop {
            while let Some(t) = self.rpc.poll_transmit(now_ms) {
                let sent = self.sessions.send(t.to, t.message, now_ms, rng);
                if let (Err(e), Some(token)) = (sent, t.request) {
                    self.rpc.handle_unsent(token, &e.to_string());
                }
            }
            while let Some(answered) = self.rpc.poll_answered() {
                self.events.push_back(CoreEvent::Answered(answered));
            }
            let Some(event) = self.sessions.poll_event() else {
                break;
            };
            self.session_event(event, now_ms);
        }
    }

    fn session_event(&mut self, event: Event, now_ms: u64) {
        match event {
            Event::Transmit { to, payload } => {
                self.events.push_back(CoreEvent::Transmit { to, payload });
            }
            Event::Received { from, message } => self.received(from, &message, now_ms),
            Event::Established {
                peer,
                certificate,
                replaced,
            } => {
                if replaced {
                    // The peer may have lost the old session (it restarted) and what was sent on
                    // it: what waits goes again on the new one.
                    self.rpc.resend(peer);
                }
                self.events
                    .push_back(CoreEvent::Established { certificate });
            }
            Event::Failed { peer, reason } => {
                self.rpc.handle_session_failed(peer, &reason);
                self.events
                    .push_back(CoreEvent::SessionFailed { peer, reason });
            }
        }
    }

    /// A whole message from a peer's session, decoded once by the request layer (what cannot be
    /// decoded is dropped: the request layer answered what it could).
    fn received(&mut self, from: HubId, message: &[u8], now_ms: u64) {
        let Ok(Some(inbound)) = self.rpc.handle_received(from, message, now_ms) else {
            return;
        };
        let event = match inbound {
            Inbound::Answer(answered) => CoreEvent::Answered(answered),
            Inbound::Data { from, data } => CoreEvent::Data { from, data },
            inbound => CoreEvent::Inbound(inbound),
        };
        self.events.push_back(event);
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;
    use crate::msg::SESSION_VERSION;
    use crate::session::rpc::{Reply, MAX_CALL_TIMEOUT_MS};
    use crate::session::testing::{identity, A, B, NOW};

    /// Two hubs' cores and a relay between them that delivers, or loses, what they transmit.
    struct Net {
        cores: [PeerCore; 2],
        /// What each hub was told, other than transmissions.
        seen: [Vec<CoreEvent>; 2],
        rng: StdRng,
        now: u64,
    }

    impl Net {
        fn new() -> Self {
            let (a, a_cert) = identity(1);
            let (b, b_cert) = identity(2);
            let mut cores = [PeerCore::new(a, A, 10), PeerCore::new(b, B, 20)];
            cores[0].add_certificate(b_cert);
            cores[1].add_certificate(a_cert);
            let mut net = Net {
                cores,
                seen: [Vec::new(), Vec::new()],
                rng: StdRng::seed_from_u64(7),
                now: NOW,
            };
            // Both welcomed with the other online, and both saying their session version.
            for (i, other) in [(0, B), (1, A)] {
                let rng = &mut net.rng;
                net.cores[i].handle_relay(&RelaySaid::Welcome(vec![other]), NOW, rng);
                let version = crate::msg::Msg::Version(SESSION_VERSION).to_vec();
                net.cores[i].send(other, version, NOW, rng).unwrap();
            }
            net.run(false);
            net.seen = [Vec::new(), Vec::new()];
            net
        }

        /// Moves transmissions until there are none (lost if `lose`); keeps the rest.
        fn run(&mut self, lose: bool) {
            loop {
                let mut moved = false;
                for (i, from) in [(0, A), (1, B)] {
                    while let Some(event) = self.cores[i].poll_event() {
                        match event {
                            CoreEvent::Transmit { payload, .. } => {
                                moved = true;
                                if !lose {
                                    let (now, rng) = (self.now, &mut self.rng);
                                    self.cores[1 - i]
                                        .handle_incoming(from, &payload, false, now, rng);
                                }
                            }
                            other => self.seen[i].push(other),
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
        }

        fn take_inbound(&mut self, i: usize) -> Vec<Inbound> {
            let seen = std::mem::take(&mut self.seen[i]);
            let (inbound, rest): (Vec<_>, Vec<_>) = seen
                .into_iter()
                .partition(|e| matches!(e, CoreEvent::Inbound(_)));
            self.seen[i] = rest;
            inbound
                .into_iter()
                .filter_map(|e| match e {
                    CoreEvent::Inbound(i) => Some(i),
                    _ => None,
                })
                .collect()
        }

        fn answered(&self, i: usize) -> Vec<&Answered> {
            self.seen[i]
                .iter()
                .filter_map(|e| match e {
                    CoreEvent::Answered(a) => Some(a),
                    _ => None,
                })
                .collect()
        }
    }

    #[test]
    fn a_request_and_its_answer_cross_between_two_cores() {
        let mut net = Net::new();
        let (now, rng) = (net.now, &mut net.rng);
        let token = net.cores[0]
            .request(B, &Request::Ping, now + 5_000, now, rng)
            .unwrap();
        assert_eq!(net.cores[0].outstanding(), 1);
        net.run(false);
        let inbound = net.take_inbound(1);
        let [Inbound::Ping(request)] = inbound.as_slice() else {
            panic!("{inbound:?}");
        };
        assert_eq!(request.from, A);
        let (now, rng) = (net.now, &mut net.rng);
        net.cores[1]
            .answer(A, request.token, &Answer::Pong, now, rng)
            .unwrap();
        net.run(false);
        let answered = net.answered(0);
        assert_eq!(answered.len(), 1, "{:?}", net.seen[0]);
        assert_eq!(answered[0].token, token);
        assert_eq!(answered[0].result, Ok(Reply::Pong));
        assert_eq!(net.cores[0].outstanding(), 0);
    }

    #[test]
    fn a_hub_the_relay_said_left_is_not_asked_until_it_joins_or_links() {
        let mut net = Net::new();
        let (now, rng) = (net.now, &mut net.rng);
        net.cores[0].handle_relay(&RelaySaid::Left(B), now, rng);
        assert_eq!(
            net.cores[0].request(B, &Request::Ping, now + 5_000, now, rng),
            Err(AskError::Offline(B))
        );
        net.cores[0].set_linked(B, true);
        assert!(net.cores[0]
            .request(B, &Request::Ping, now + 5_000, now, rng)
            .is_ok());
        net.cores[0].set_linked(B, false);
        net.cores[0].handle_relay(&RelaySaid::Undeliverable(B), now, rng);
        assert!(net.cores[0]
            .request(B, &Request::Info, now + 5_000, now, rng)
            .is_err());
        net.cores[0].handle_relay(&RelaySaid::Joined(B), now, rng);
        assert!(net.cores[0]
            .request(B, &Request::Info, now + 5_000, now, rng)
            .is_ok());
    }

    #[test]
    fn a_call_lost_in_an_outage_goes_again_when_the_path_comes_back_and_runs_once() {
        let mut net = Net::new();
        let (now, rng) = (net.now, &mut net.rng);
        let call = crate::session::rpc::OutgoingCall {
            timeout_ms: 30_000,
            app: "tools".into(),
            tool: "sleep".into(),
            envelope: vec![1, 2, 3],
            arguments: b"{}".to_vec(),
        };
        let deadline = now + MAX_CALL_TIMEOUT_MS;
        let token = net.cores[0]
            .request(B, &Request::Call(call), deadline, now, rng)
            .unwrap();
        // The relay path is dead: the call is lost on its way.
        net.run(true);
        assert!(net.take_inbound(1).is_empty());
        // A's connection comes back: welcomed again with B online; what waits goes again.
        let (now, rng) = (net.now + 4_000, &mut net.rng);
        net.cores[0].handle_relay(&RelaySaid::Welcome(vec![B]), now, rng);
        net.run(false);
        let inbound = net.take_inbound(1);
        let [Inbound::Call(got)] = inbound.as_slice() else {
            panic!("{inbound:?}");
        };
        let got_token = got.token;
        // Its answer is lost too; B's path comes back and A sends the call again: B does not run
        // it twice, it answers again what it answered.
        let (now, rng) = (net.now + 5_000, &mut net.rng);
        net.cores[1]
            .answer(
                A,
                got_token,
                &Answer::CallResult(b"{\"ok\":1}".to_vec()),
                now,
                rng,
            )
            .unwrap();
        net.run(true);
        assert!(net.answered(0).is_empty());
        let rng = &mut net.rng;
        net.cores[0].handle_relay(&RelaySaid::Joined(B), now, rng);
        net.run(false);
        assert!(
            net.take_inbound(1).is_empty(),
            "the repeated call reached the application"
        );
        let answered = net.answered(0);
        assert_eq!(answered.len(), 1, "{:?}", net.seen[0]);
        assert_eq!(answered[0].token, token);
        assert_eq!(
            answered[0].result,
            Ok(Reply::CallResult(b"{\"ok\":1}".to_vec()))
        );
    }

    #[test]
    fn pairing_messages_are_not_session_traffic_and_never_come_over_a_link() {
        let (a, _) = identity(1);
        let mut core = PeerCore::new(a, A, 1);
        let mut rng = StdRng::seed_from_u64(1);
        let message = vec![crate::session::pairing::PAIR_REQUEST, 1, 2, 3];
        core.handle_incoming(B, &message, true, NOW, &mut rng);
        assert_eq!(core.poll_event(), None);
        core.handle_incoming(B, &message, false, NOW, &mut rng);
        assert_eq!(
            core.poll_event(),
            Some(CoreEvent::Pairing { from: B, message })
        );
    }
}
