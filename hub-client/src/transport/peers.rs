//! The hub's encrypted channel to every other hub: `shared_proto::session::peer::PeerSessions` driven by a
//! tokio task over the relay connection.
//!
//! [`PeerClient::spawn`] owns a [`RelayClient`] and the sessions. The application sends with
//! [`PeerClient::send`] (a session is set up on demand; messages wait in a bounded queue, and the
//! call waits when the task is busy) and receives with [`PeerClient::next_event`].
//!
//! The task never waits on one direction while the other is blocked: what it sends to the relay
//! connection and what it hands to the application wait in its own queues, and it waits for room
//! in either inside one `select!` while it goes on reading. Past [`OUTBOUND_HIGH`] bytes for the
//! relay it stops taking the application's commands (its sends wait); past [`TO_APP_HIGH`] events
//! for the application it stops reading the relay (TCP pushes back on the senders). An
//! application must therefore read its events while it sends, or send from another task. Presence
//! drives the sessions: a hub that leaves loses its session and what was queued for it; a hub that
//! reconnects (it may have restarted) gets a new session, queued messages kept; a revocation list
//! that revokes a peer drops its session at once.
//!
//! Messages are `shared_proto::msg::Msg`: application data; ping and pong, so
//! [`PeerClient::ping`] measures a round trip through the session itself; info request and info
//! (name, version, uptime), so a hub can ask what a peer reports about itself; refused, the
//! answer to any request from a peer this hub refuses (suspended); and the manifest (the signed
//! cluster manifest the sender holds: hubs pass it on when a session comes up, so a manifest the
//! founder signs reaches every hub that talks to one that has it).
//!
//! Pairing messages (`shared_proto::session::pairing`) are not session traffic: they go to the
//! application as [`PeerEvent::Pairing`], and answers go out with [`PeerClient::send_raw`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::sync::Arc;

use shared_proto::agent::CallErrorCode;
use shared_proto::msg::Msg;
use shared_proto::session::noise::{LocalIdentity, NoiseError};
use shared_proto::session::pairing::is_pairing_message;
use shared_proto::session::peer::{Event, PeerSessions, SendError};
use shared_proto::trust::PeerCertificate;
use shared_proto::HubId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::transport::lan::{Lan, LanEvent};
use crate::transport::relay::{RelayClient, RelayConfig, RelayError, RelayEvent};
use crate::unix_ms;

/// What a request asks for.
#[derive(Debug, Clone)]
enum Request {
    Ping,
    Info,
    Apps { principal: String },
    Call(OutgoingCall),
}

impl Request {
    fn message(&self, token: u64) -> Result<Vec<u8>, shared_proto::msg::MsgError> {
        match self {
            Request::Ping => Ok(Msg::Ping { token }.to_vec()),
            Request::Info => Ok(Msg::InfoRequest { token }.to_vec()),
            Request::Apps { principal } => Msg::AppsRequest { token, principal }.encode(),
            Request::Call(c) => Msg::Call {
                token,
                timeout_ms: c.timeout_ms,
                app: &c.app,
                tool: &c.tool,
                envelope: &c.envelope,
                arguments: &c.arguments,
            }
            .encode(),
        }
    }
}

/// A call of a tool of an app on another hub, as [`PeerHandle::call`] sends it.
#[derive(Debug, Clone)]
pub struct OutgoingCall {
    /// How long the caller waits.
    pub timeout_ms: u32,
    /// The app.
    pub app: String,
    /// The tool.
    pub tool: String,
    /// The signed delegation envelope.
    pub envelope: Vec<u8>,
    /// The arguments (a JSON object), the bytes the envelope's hash binds.
    pub arguments: Vec<u8>,
}

/// Bytes waiting for the relay connection above which the application's commands wait.
pub const OUTBOUND_HIGH: usize = 4 * 1024 * 1024;

/// Bytes waiting for the relay connection above which what incoming traffic would add (answers
/// to pings and requests) is dropped: a peer cannot make this hub queue without bound.
pub const OUTBOUND_MAX: usize = 16 * 1024 * 1024;

/// Events waiting for the application above which the relay connection is not read.
pub const TO_APP_HIGH: usize = 1024;

/// Requests (pings, info) waiting for their answer at once; more are refused at once.
pub const MAX_PENDING_REQUESTS: usize = 1024;

/// What a hub reports about itself to its peers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerInfo {
    /// Its name.
    pub name: String,
    /// Its software version.
    pub version: String,
    /// Seconds since it started.
    pub uptime_s: u64,
}

/// What this hub answers about itself, and whom it refuses. Shared with the application, which
/// may change the refused set at any time (suspending a peer).
#[derive(Debug)]
pub struct LocalPolicy {
    /// This hub's name.
    name: std::sync::RwLock<String>,
    /// When this hub started.
    pub started: Instant,
    /// Peers whose requests are refused.
    pub refused: std::sync::RwLock<std::collections::HashSet<HubId>>,
}

impl LocalPolicy {
    /// A policy that refuses nobody.
    pub fn new(name: impl Into<String>) -> Self {
        LocalPolicy {
            name: std::sync::RwLock::new(name.into()),
            started: Instant::now(),
            refused: Default::default(),
        }
    }

    /// Changes the name this hub reports (after it joins).
    pub fn set_name(&self, name: &str) {
        if let Ok(mut n) = self.name.write() {
            *n = name.to_owned();
        }
    }

    fn refuses(&self, peer: &HubId) -> bool {
        self.refused.read().map_or(true, |r| r.contains(peer))
    }

    fn info(&self) -> PeerInfo {
        PeerInfo {
            name: self.name.read().map(|n| n.clone()).unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.started.elapsed().as_secs(),
        }
    }
}

/// Errors of the peer layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The relay connection could not start.
    #[error(transparent)]
    Relay(#[from] RelayError),
    /// The message was refused (too large, queue full, to self).
    #[error(transparent)]
    Send(#[from] SendError),
    /// The session with the peer could not be set up or was dropped.
    #[error("session with {peer} failed: {reason}")]
    Session {
        /// The peer.
        peer: HubId,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("no answer from {0} in time")]
    Timeout(HubId),
    /// The peer refused the request.
    #[error("{peer} refused: {reason}")]
    Refused {
        /// The peer.
        peer: HubId,
        /// Its reason.
        reason: String,
    },
    /// The peer's answer does not parse.
    #[error("malformed answer from {0}")]
    Malformed(HubId),
    /// The peer client has stopped.
    #[error("the peer client has stopped")]
    Stopped,
    /// Too many requests are waiting for answers.
    #[error("{MAX_PENDING_REQUESTS} requests are waiting for answers already")]
    TooManyRequests,
    /// The peer refused or failed a call, with a stable code.
    #[error("{peer}: {message} ({})", code.map_or("unknown code", |c| c.name()))]
    Call {
        /// The peer.
        peer: HubId,
        /// The code (`None`: a code this build does not know).
        code: Option<shared_proto::agent::CallErrorCode>,
        /// Its details.
        message: String,
    },
    /// The request could not be encoded (a name over 255 bytes).
    #[error("cannot send the request: {0}")]
    Encode(#[from] shared_proto::msg::MsgError),
}

/// What the application receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// A message from a hub, decrypted and authenticated.
    Message {
        /// The sender (as its certificate names it).
        from: HubId,
        /// The message.
        message: Vec<u8>,
    },
    /// A relay event worth knowing (presence, revocations, disconnects).
    Relay(RelayEvent),
    /// A session with a peer is up; its certificate was verified in the handshake.
    Established {
        /// The peer's certificate.
        certificate: Box<shared_proto::trust::VerifiedPeer>,
    },
    /// A peer passed on the manifest it holds (signed bytes, not verified yet).
    Manifest {
        /// The sender.
        from: HubId,
        /// The signed manifest.
        manifest: Vec<u8>,
    },
    /// A peer passed on its signed audit head (not verified yet).
    AuditHead {
        /// The sender.
        from: HubId,
        /// The signed head (`shared_proto::audit::Head::sign`).
        head: Vec<u8>,
    },
    /// A peer passed on what it sees of the other hubs (not decoded yet).
    Views {
        /// The sender.
        from: HubId,
        /// The message body (`shared_proto::audit::Views::encode`).
        views: Vec<u8>,
    },
    /// A peer's handshake was refused for a reason that is its own fault (its certificate refused,
    /// or a static key its certificate does not name).
    HandshakeRefused {
        /// The peer, as the relay named it.
        peer: HubId,
        /// Why.
        reason: String,
    },
    /// A pairing message (from a pairing guest, or an issuer's answer).
    Pairing {
        /// The sender.
        from: HubId,
        /// The whole message.
        message: Vec<u8>,
    },
    /// A request for this hub's apps (apps request, call or cancel: a whole session message, to
    /// decode with `Msg::decode`) from a peer this hub does not refuse. Answer it with
    /// [`PeerHandle::answer`].
    AppRequest {
        /// The sender (as its certificate names it).
        from: HubId,
        /// The whole session message.
        message: Vec<u8>,
    },
    /// A session with a peer failed or was dropped.
    SessionFailed {
        /// The peer.
        peer: HubId,
        /// Why.
        reason: String,
    },
    /// A verified LAN link to a peer is up: messages to it go direct.
    LinkUp {
        /// The peer (as its certificate names it).
        peer: HubId,
        /// Its address.
        addr: std::net::SocketAddr,
    },
    /// A LAN link went down: messages to the peer go by the relay again (what the link had not
    /// delivered was handed to the relay).
    LinkDown {
        /// The peer.
        peer: HubId,
        /// Why.
        reason: String,
    },
    /// A LAN connection was refused in its TLS handshake.
    LinkRefused {
        /// The remote address.
        addr: std::net::SocketAddr,
        /// Why.
        reason: String,
    },
}

enum Command {
    Send {
        to: HubId,
        message: Vec<u8>,
        done: oneshot::Sender<Result<(), SendError>>,
    },
    Request {
        to: HubId,
        kind: Request,
        limit: Duration,
        done: oneshot::Sender<Result<Reply, PeerError>>,
    },
    Raw {
        to: HubId,
        payload: Vec<u8>,
    },
    Publish {
        list: Vec<u8>,
    },
    RelayRtt {
        done: oneshot::Sender<Duration>,
    },
}

/// An answer to a request: its round trip and body.
struct Reply {
    rtt: Duration,
    body: Vec<u8>,
}

/// A running peer layer. Dropping it stops the task and the relay connection.
#[derive(Debug)]
pub struct PeerClient {
    handle: PeerHandle,
    events: mpsc::Receiver<PeerEvent>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Sends, pings and asks through a [`PeerClient`]; cheap to clone, usable from many tasks.
#[derive(Debug, Clone)]
pub struct PeerHandle {
    commands: mpsc::Sender<Command>,
}

impl PeerClient {
    /// Connects to the relay with `relay` and runs sessions with `identity`'s static key.
    pub fn spawn(relay: RelayConfig, identity: LocalIdentity) -> Result<Self, PeerError> {
        let name = PeerCertificate::from_der(&identity.cert_der)
            .map(|c| c.name().to_owned())
            .unwrap_or_default();
        Self::spawn_with(relay, identity, Arc::new(LocalPolicy::new(name)), None)
    }

    /// As [`PeerClient::spawn`], answering and refusing by `policy`, and with `lan` (the LAN
    /// path and its events, from [`Lan::start`]) as the direct path to the peers it links to:
    /// the task routes each message to a peer by its LAN link when one is up, by the relay
    /// otherwise.
    pub fn spawn_with(
        relay: RelayConfig,
        identity: LocalIdentity,
        policy: Arc<LocalPolicy>,
        lan: Option<(Lan, mpsc::Receiver<LanEvent>)>,
    ) -> Result<Self, PeerError> {
        let me = relay.credentials.hub_id;
        let client = RelayClient::spawn(relay)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        let sessions = PeerSessions::new(identity, me);
        let task = tokio::spawn(run(client, lan, sessions, cmd_rx, ev_tx, stop_rx, policy));
        Ok(PeerClient {
            handle: PeerHandle { commands: cmd_tx },
            events: ev_rx,
            stop,
            task,
        })
    }

    /// A handle for sending from other tasks.
    pub fn handle(&self) -> PeerHandle {
        self.handle.clone()
    }

    /// Sends `message` to `to` over an end-to-end session.
    pub async fn send(&self, to: HubId, message: Vec<u8>) -> Result<(), PeerError> {
        self.handle.send(to, message).await
    }

    /// Round trip to `to` through the session; see [`PeerHandle::ping`].
    pub async fn ping(&self, to: HubId, limit: Duration) -> Result<Duration, PeerError> {
        self.handle.ping(to, limit).await
    }

    /// The next event; `None` once the client has stopped.
    pub async fn next_event(&mut self) -> Option<PeerEvent> {
        self.events.recv().await
    }

    /// Closes the relay connection cleanly (code 1000, so peers see this hub leave at once) and
    /// waits for the task to end.
    pub async fn shutdown(mut self) {
        if self.stop.send(true).is_ok() {
            // Events may still be queued: drop them so the task is never blocked on them.
            self.events.close();
            let _ = (&mut self.task).await;
        }
    }
}

impl PeerHandle {
    /// Sends `message` to `to` over an end-to-end session.
    pub async fn send(&self, to: HubId, message: Vec<u8>) -> Result<(), PeerError> {
        self.send_message(to, Msg::Data(&message).to_vec()).await
    }

    /// Sends the signed cluster manifest to `to` over its session.
    pub async fn send_manifest(&self, to: HubId, manifest: &[u8]) -> Result<(), PeerError> {
        self.send_message(to, Msg::Manifest(manifest).to_vec())
            .await
    }

    /// Sends this hub's signed audit head to `to` over its session.
    pub async fn send_audit_head(&self, to: HubId, head: &[u8]) -> Result<(), PeerError> {
        self.send_message(to, Msg::AuditHead(head).to_vec()).await
    }

    /// Sends what this hub sees of the other hubs to `to` over its session.
    pub async fn send_views(&self, to: HubId, views: &[u8]) -> Result<(), PeerError> {
        self.send_message(to, Msg::Views(views).to_vec()).await
    }

    async fn send_message(&self, to: HubId, message: Vec<u8>) -> Result<(), PeerError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Send { to, message, done })
            .await
            .map_err(|_| PeerError::Stopped)?;
        wait.await
            .map_err(|_| PeerError::Stopped)?
            .map_err(PeerError::from)
    }

    /// Sends a whole session message (an answer to a [`PeerEvent::AppRequest`]).
    pub async fn answer(&self, to: HubId, message: Vec<u8>) -> Result<(), PeerError> {
        self.send_message(to, message).await
    }

    /// What `to` shares with this hub, for `principal`: the JSON document of its answer.
    pub async fn apps(
        &self,
        to: HubId,
        principal: &str,
        limit: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        let principal = principal.to_owned();
        Ok(self
            .request(to, Request::Apps { principal }, limit)
            .await?
            .body)
    }

    /// Calls a tool on `to`: the tool result's JSON, or [`PeerError::Call`] with the code. The
    /// peer is told to stop if no result comes within `limit`.
    pub async fn call(
        &self,
        to: HubId,
        call: OutgoingCall,
        limit: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        Ok(self.request(to, Request::Call(call), limit).await?.body)
    }

    /// Round trip to `to` through the session (set up first if needed; that time is included in
    /// the first ping).
    pub async fn ping(&self, to: HubId, limit: Duration) -> Result<Duration, PeerError> {
        Ok(self.request(to, Request::Ping, limit).await?.rtt)
    }

    /// What `to` reports about itself, asked over the session.
    pub async fn info(&self, to: HubId, limit: Duration) -> Result<PeerInfo, PeerError> {
        let reply = self.request(to, Request::Info, limit).await?;
        serde_json::from_slice(&reply.body).map_err(|_| PeerError::Malformed(to))
    }

    async fn request(&self, to: HubId, kind: Request, limit: Duration) -> Result<Reply, PeerError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Request {
                to,
                kind,
                limit,
                done,
            })
            .await
            .map_err(|_| PeerError::Stopped)?;
        match tokio::time::timeout(limit, wait).await {
            Ok(r) => r.map_err(|_| PeerError::Stopped)?,
            Err(_) => Err(PeerError::Timeout(to)),
        }
    }

    /// Sends a payload to `to` through the relay as it is, outside any session (pairing).
    pub async fn send_raw(&self, to: HubId, payload: Vec<u8>) -> Result<(), PeerError> {
        self.commands
            .send(Command::Raw { to, payload })
            .await
            .map_err(|_| PeerError::Stopped)
    }

    /// Publishes a signed revocation list through the relay.
    pub async fn publish_revocations(&self, list: Vec<u8>) -> Result<(), PeerError> {
        self.commands
            .send(Command::Publish { list })
            .await
            .map_err(|_| PeerError::Stopped)
    }

    /// Round trip to the relay itself (a status request and its answer).
    pub async fn relay_rtt(&self, limit: Duration) -> Result<Duration, PeerError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::RelayRtt { done })
            .await
            .map_err(|_| PeerError::Stopped)?;
        match tokio::time::timeout(limit, wait).await {
            Ok(r) => r.map_err(|_| PeerError::Stopped),
            Err(_) => Err(PeerError::Stopped),
        }
    }
}

impl Drop for PeerClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A request waiting for its answer: the peer, when it was sent, until when the caller waits,
/// and who waits for the answer.
struct PendingRequest {
    peer: HubId,
    sent: Instant,
    deadline: Instant,
    /// A call: the peer is sent `Cancel` if its caller stops waiting.
    cancel_on_expiry: bool,
    done: oneshot::Sender<Result<Reply, PeerError>>,
}

struct Pending {
    requests: HashMap<u64, PendingRequest>,
    policy: Arc<LocalPolicy>,
}

impl Pending {
    /// The earliest time a request's caller stops waiting.
    fn next_deadline(&self) -> Option<Instant> {
        self.requests.values().map(|r| r.deadline).min()
    }

    /// Forgets the requests whose deadline passed, telling their callers `Timeout`; returns the
    /// calls among them, whose peers are to be told.
    fn expire(&mut self, now: Instant) -> Vec<(HubId, u64)> {
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, r)| r.deadline <= now)
            .map(|(token, _)| *token)
            .collect();
        let mut cancelled = Vec::new();
        for token in expired {
            if let Some(r) = self.requests.remove(&token) {
                if r.cancel_on_expiry {
                    cancelled.push((r.peer, token));
                }
                // The caller may still be waiting (its timer and this one race): it gets the
                // same answer either way.
                let _ = r.done.send(Err(PeerError::Timeout(r.peer)));
            }
        }
        cancelled
    }
}

/// What waits for the relay connection.
enum Outbound {
    Send(HubId, Vec<u8>),
    Publish(Vec<u8>),
    Status,
}

/// The task's queues toward the relay connection and toward the application.
#[derive(Default)]
struct Queues {
    outbound: VecDeque<Outbound>,
    outbound_bytes: usize,
    to_app: VecDeque<PeerEvent>,
}

impl Queues {
    fn push_outbound(&mut self, item: Outbound) {
        self.outbound_bytes += Self::size(&item);
        self.outbound.push_back(item);
    }

    fn pop_outbound(&mut self) -> Option<Outbound> {
        let item = self.outbound.pop_front()?;
        self.outbound_bytes -= Self::size(&item);
        Some(item)
    }

    fn size(item: &Outbound) -> usize {
        match item {
            Outbound::Send(_, payload) => payload.len(),
            Outbound::Publish(list) => list.len(),
            Outbound::Status => 0,
        }
    }
}

async fn run(
    mut relay: RelayClient,
    lan: Option<(Lan, mpsc::Receiver<LanEvent>)>,
    mut sessions: PeerSessions,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<PeerEvent>,
    mut stop: watch::Receiver<bool>,
    policy: Arc<LocalPolicy>,
) {
    let mut rng = StdRng::from_entropy();
    let mut pending = Pending {
        requests: HashMap::new(),
        policy,
    };
    let mut q = Queues::default();
    let sender = relay.sender();
    let mut connected_before = false;
    let mut status_waiters: VecDeque<(Instant, oneshot::Sender<Duration>)> = VecDeque::new();
    let (lan, mut lan_events) = match lan {
        Some((lan, events)) => (Some(lan), Some(events)),
        None => (None, None),
    };
    let linked = |hub: &HubId| lan.as_ref().is_some_and(|l| l.is_linked(hub));
    loop {
        let session_timer = sessions
            .poll_timeout()
            .map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(unix_ms())));
        let timer = [session_timer, pending.next_deadline()]
            .into_iter()
            .flatten()
            .min();
        // Transmissions caused by what peers sent may be dropped past `OUTBOUND_MAX`.
        let mut from_network = false;
        // Not biased: every ready branch gets its turn, so heavy sending does not starve
        // reading, nor the other way round.
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            permit = sender.reserve(), if !q.outbound.is_empty() => {
                let Ok(permit) = permit else { break };
                let sent = match q.pop_outbound() {
                    Some(Outbound::Send(to, payload)) => permit.send(to, payload),
                    Some(Outbound::Publish(list)) => permit.publish_revocations(list),
                    Some(Outbound::Status) => {
                        permit.request_status();
                        Ok(())
                    }
                    None => Ok(()),
                };
                if let Err(e) = sent {
                    tracing::warn!("not sent to the relay: {e}");
                }
            }
            permit = events.reserve(), if !q.to_app.is_empty() => {
                let Ok(permit) = permit else { break };
                if let Some(event) = q.to_app.pop_front() {
                    permit.send(event);
                }
            }
            cmd = commands.recv(), if q.outbound_bytes < OUTBOUND_HIGH => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Command::Send { to, message, done } => {
                        let _ = done.send(sessions.send(to, message, unix_ms(), &mut rng));
                    }
                    Command::Request { to, kind, limit, done } => {
                        if pending.requests.len() >= MAX_PENDING_REQUESTS {
                            for (peer, token) in pending.expire(Instant::now()) {
                                let _ = sessions.send(peer, Msg::Cancel { token }.to_vec(), unix_ms(), &mut rng);
                            }
                        }
                        if pending.requests.len() >= MAX_PENDING_REQUESTS {
                            let _ = done.send(Err(PeerError::TooManyRequests));
                            continue;
                        }
                        let token = rng.next_u64();
                        let msg = match kind.message(token) {
                            Ok(m) => m,
                            Err(e) => {
                                let _ = done.send(Err(e.into()));
                                continue;
                            }
                        };
                        let cancel_on_expiry = matches!(kind, Request::Call(_));
                        match sessions.send(to, msg, unix_ms(), &mut rng) {
                            Ok(()) => {
                                let sent = Instant::now();
                                let req = PendingRequest { peer: to, sent, deadline: sent + limit, cancel_on_expiry, done };
                                pending.requests.insert(token, req);
                            }
                            Err(e) => {
                                let _ = done.send(Err(e.into()));
                            }
                        }
                    }
                    Command::Raw { to, payload } => q.push_outbound(Outbound::Send(to, payload)),
                    Command::Publish { list } => q.push_outbound(Outbound::Publish(list)),
                    Command::RelayRtt { done } => {
                        q.push_outbound(Outbound::Status);
                        status_waiters.push_back((Instant::now(), done));
                    }
                }
            }
            event = relay.next_event(), if q.to_app.len() < TO_APP_HIGH => {
                let Some(event) = event else { break };
                from_network = true;
                match &event {
                    RelayEvent::Message { from, payload } if is_pairing_message(payload) => {
                        let ev = PeerEvent::Pairing { from: *from, message: payload.clone() };
                        q.to_app.push_back(ev);
                    }
                    RelayEvent::Message { from, payload } => {
                        incoming(&mut sessions, &mut q, *from, payload, &mut rng);
                    }
                    // A peer linked on the LAN keeps its session while the relay loses it (and
                    // did not restart: its link would have dropped).
                    RelayEvent::PeerLeft(hub) if !linked(hub) => sessions.drop_peer(*hub, "left the relay"),
                    RelayEvent::Undeliverable(hub) if !linked(hub) => sessions.drop_peer(*hub, "not online"),
                    RelayEvent::PeerJoined(hub) if !linked(hub) => sessions.reset_peer(*hub, unix_ms(), &mut rng),
                    RelayEvent::Revocations(list) => {
                        if let Some(lan) = &lan {
                            lan.set_revocations(list.clone());
                        }
                        sessions.set_revocations(list.clone());
                    }
                    RelayEvent::Status(_) => {
                        if let Some((sent, done)) = status_waiters.pop_front() {
                            let _ = done.send(sent.elapsed());
                        }
                    }
                    RelayEvent::Connected { .. } => {
                        // After a reconnect, peers may have dropped their side of our sessions.
                        if connected_before {
                            sessions.reset_all(unix_ms(), &mut rng);
                        }
                        connected_before = true;
                    }
                    _ => {}
                }
                if !matches!(event, RelayEvent::Message { .. }) {
                    q.to_app.push_back(PeerEvent::Relay(event));
                }
            }
            event = recv_opt(&mut lan_events), if q.to_app.len() < TO_APP_HIGH => {
                from_network = true;
                match event {
                    // Pairing guests hold no certificate: they never link.
                    Some(LanEvent::Message { from, payload }) if !is_pairing_message(&payload) => {
                        incoming(&mut sessions, &mut q, from, &payload, &mut rng);
                    }
                    Some(LanEvent::Up { peer, addr }) => {
                        q.to_app.push_back(PeerEvent::LinkUp { peer, addr });
                    }
                    Some(LanEvent::Down { peer, reason, unsent }) => {
                        // What the link may not have delivered goes by the relay; the session's
                        // replay window drops whatever of it did arrive.
                        for payload in unsent {
                            q.push_outbound(Outbound::Send(peer, payload));
                        }
                        q.to_app.push_back(PeerEvent::LinkDown { peer, reason });
                    }
                    Some(LanEvent::Refused { addr, reason }) => {
                        q.to_app.push_back(PeerEvent::LinkRefused { addr, reason });
                    }
                    Some(_) => {}
                    None => lan_events = None,
                }
            }
            () = sleep_until_opt(timer) => {
                sessions.handle_timeout(unix_ms(), &mut rng);
                for (peer, token) in pending.expire(Instant::now()) {
                    let _ = sessions.send(peer, Msg::Cancel { token }.to_vec(), unix_ms(), &mut rng);
                }
            }
        }
        drain(
            &mut sessions,
            &mut q,
            &mut pending,
            lan.as_ref(),
            &mut rng,
            from_network,
        );
    }
    // What the application has not been handed yet still reaches it (above all the relay's last
    // `Disconnected`, which says why it stopped), unless it stopped listening.
    for event in q.to_app.drain(..) {
        if events.send(event).await.is_err() {
            break;
        }
    }
    relay.shutdown().await;
}

/// A peer payload from either path into the sessions.
fn incoming(
    sessions: &mut PeerSessions,
    q: &mut Queues,
    from: HubId,
    payload: &[u8],
    rng: &mut StdRng,
) {
    match sessions.handle_incoming(from, payload, unix_ms(), rng) {
        Ok(()) => {}
        Err(e @ (NoiseError::Certificate(_) | NoiseError::KeyMismatch)) => {
            tracing::warn!(%from, "handshake refused: {e}");
            q.to_app.push_back(PeerEvent::HandshakeRefused {
                peer: from,
                reason: e.to_string(),
            });
        }
        Err(e) => tracing::debug!(%from, "peer message refused: {e}"),
    }
}

async fn recv_opt<T>(rx: &mut Option<mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Moves what the sessions produced into the task's queues. This is the router: a transmission
/// goes by the peer's LAN link when a verified one is up and has room, by the relay otherwise.
/// Transmissions caused by what peers sent (`from_network`) are dropped while the relay queue is
/// past [`OUTBOUND_MAX`].
fn drain(
    sessions: &mut PeerSessions,
    q: &mut Queues,
    pending: &mut Pending,
    lan: Option<&Lan>,
    rng: &mut StdRng,
    from_network: bool,
) {
    while let Some(event) = sessions.poll_event() {
        match event {
            Event::Transmit { to, payload } => {
                let payload = match lan {
                    Some(lan) => match lan.try_send(to, payload) {
                        Ok(()) => continue,
                        Err(payload) => payload,
                    },
                    None => payload,
                };
                if from_network && q.outbound_bytes > OUTBOUND_MAX {
                    tracing::debug!(peer = %to, "relay queue full: an answer was dropped");
                    continue;
                }
                q.push_outbound(Outbound::Send(to, payload));
            }
            Event::Received { from, message } => match Msg::decode(&message) {
                Ok(Msg::Data(body)) => {
                    if pending.policy.refuses(&from) {
                        tracing::debug!(%from, "message from a refused peer dropped");
                        continue;
                    }
                    q.to_app.push_back(PeerEvent::Message {
                        from,
                        message: body.to_vec(),
                    });
                }
                Ok(Msg::AuditHead(body)) => {
                    q.to_app.push_back(PeerEvent::AuditHead {
                        from,
                        head: body.to_vec(),
                    });
                }
                Ok(Msg::Views(body)) => {
                    q.to_app.push_back(PeerEvent::Views {
                        from,
                        views: body.to_vec(),
                    });
                }
                Ok(Msg::Manifest(body)) => {
                    q.to_app.push_back(PeerEvent::Manifest {
                        from,
                        manifest: body.to_vec(),
                    });
                }
                Ok(request @ (Msg::Ping { token } | Msg::InfoRequest { token })) => {
                    let info;
                    let answer = if pending.policy.refuses(&from) {
                        Msg::Refused {
                            token,
                            reason: "suspended by this hub",
                        }
                    } else if matches!(request, Msg::Ping { .. }) {
                        Msg::Pong { token }
                    } else {
                        info = serde_json::to_vec(&pending.policy.info()).unwrap_or_default();
                        Msg::Info { token, info: &info }
                    };
                    let _ = sessions.send(from, answer.to_vec(), unix_ms(), rng);
                }
                Ok(
                    request @ (Msg::AppsRequest { token, .. }
                    | Msg::Call { token, .. }
                    | Msg::Cancel { token }),
                ) if pending.policy.refuses(&from) => {
                    let reason = "suspended by this hub";
                    let answer = match request {
                        Msg::AppsRequest { .. } => Msg::Refused { token, reason },
                        Msg::Call { .. } => Msg::CallError {
                            token,
                            code: CallErrorCode::Suspended.to_u16(),
                            message: reason,
                        },
                        _ => continue,
                    };
                    let _ = sessions.send(from, answer.to_vec(), unix_ms(), rng);
                }
                Ok(Msg::AppsRequest { .. } | Msg::Call { .. } | Msg::Cancel { .. }) => {
                    q.to_app.push_back(PeerEvent::AppRequest { from, message });
                }
                Ok(
                    answer @ (Msg::Pong { token }
                    | Msg::Info { token, .. }
                    | Msg::Refused { token, .. }
                    | Msg::Apps { token, .. }
                    | Msg::CallResult { token, .. }
                    | Msg::CallError { token, .. }),
                ) => {
                    let Some(req) = pending.requests.remove(&token) else {
                        continue;
                    };
                    if req.peer != from {
                        pending.requests.insert(token, req);
                        continue;
                    }
                    let result = match answer {
                        Msg::Refused { reason, .. } => Err(PeerError::Refused {
                            peer: from,
                            reason: reason.to_owned(),
                        }),
                        Msg::CallError { code, message, .. } => Err(PeerError::Call {
                            peer: from,
                            code: CallErrorCode::from_u16(code),
                            message: message.to_owned(),
                        }),
                        Msg::Info { info: body, .. }
                        | Msg::Apps { apps: body, .. }
                        | Msg::CallResult { result: body, .. } => Ok(Reply {
                            rtt: req.sent.elapsed(),
                            body: body.to_vec(),
                        }),
                        _ => Ok(Reply {
                            rtt: req.sent.elapsed(),
                            body: Vec::new(),
                        }),
                    };
                    let _ = req.done.send(result);
                }
                Err(e) => tracing::debug!(%from, "session message refused: {e}"),
            },
            Event::Established { peer, certificate } => {
                tracing::debug!(%peer, "session established");
                q.to_app.push_back(PeerEvent::Established { certificate });
            }
            Event::Failed { peer, reason } => {
                let failed: Vec<u64> = pending
                    .requests
                    .iter()
                    .filter(|(_, p)| p.peer == peer)
                    .map(|(t, _)| *t)
                    .collect();
                for t in failed {
                    if let Some(req) = pending.requests.remove(&t) {
                        let _ = req.done.send(Err(PeerError::Session {
                            peer,
                            reason: reason.clone(),
                        }));
                    }
                }
                q.to_app
                    .push_back(PeerEvent::SessionFailed { peer, reason });
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request whose caller stopped waiting is forgotten at its deadline: the map of pending
    /// requests holds only requests someone still waits for (once they stayed forever).
    #[test]
    fn requests_are_forgotten_when_their_caller_stops_waiting() {
        let mut pending = Pending {
            requests: HashMap::new(),
            policy: Arc::new(LocalPolicy::new("test")),
        };
        let now = Instant::now();
        let mut waiting = Vec::new();
        for (token, limit) in [(1u64, 1), (2, 5), (3, 10)] {
            let (done, wait) = oneshot::channel();
            waiting.push(wait);
            let req = PendingRequest {
                peer: HubId([token as u8; 16]),
                sent: now,
                deadline: now + Duration::from_secs(limit),
                // Request 1 is a call: its peer is to be told when its caller stops waiting.
                cancel_on_expiry: token == 1,
                done,
            };
            pending.requests.insert(token, req);
        }
        assert_eq!(pending.next_deadline(), Some(now + Duration::from_secs(1)));
        let cancelled = pending.expire(now + Duration::from_secs(5));
        assert_eq!(cancelled, vec![(HubId([1; 16]), 1)]);
        let mut left: Vec<u64> = pending.requests.keys().copied().collect();
        left.sort_unstable();
        assert_eq!(left, vec![3]);
        assert_eq!(pending.next_deadline(), Some(now + Duration::from_secs(10)));
        // Their callers were told it timed out (not that the peer client stopped).
        for mut wait in waiting.drain(..2) {
            assert!(matches!(wait.try_recv(), Ok(Err(PeerError::Timeout(_)))));
        }
    }
}
