//! The hub's encrypted channel to every other hub: the sans-IO session layer
//! (`shared_proto::session::peer::PeerSessions`) and request layer
//! (`shared_proto::session::rpc::Rpc`) driven by a tokio task over the relay connection and the
//! LAN links. This module moves bytes and routes them; it decides nothing about peers.
//!
//! [`PeerClient::spawn`] owns a [`RelayClient`], the sessions and the request layer. The
//! application sends with [`PeerHandle::send`], asks with [`PeerHandle::ping`],
//! [`PeerHandle::info`], [`PeerHandle::apps`] and [`PeerHandle::call`] (a session is set up on
//! demand; messages wait in a bounded queue, and the call waits when the task is busy), and
//! receives with [`PeerClient::next_event`]: what peers send arrives decoded once, as
//! [`PeerEvent::Inbound`] (their requests, which the application answers with
//! [`PeerHandle::answer`], and their notices) or [`PeerEvent::Message`] (data). A client started
//! with [`Serving::Itself`] (a tool, a test) answers peers' requests on its own: pong, its info,
//! no apps.
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
//! Pairing messages (`shared_proto::session::pairing`) are not session traffic: they go to the
//! application as [`PeerEvent::Pairing`], and answers go out with [`PeerHandle::send_raw`].

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use shared_proto::agent::CallErrorCode;
use shared_proto::msg::Msg;
use shared_proto::session::core::{AnswerError, AskError, CoreEvent, PeerCore};
use shared_proto::session::noise::LocalIdentity;
use shared_proto::session::paths::RelaySaid;
use shared_proto::session::peer::SendError;
use shared_proto::session::rpc::{call_deadline, Answered, Failure, Request, RpcError};
pub use shared_proto::session::rpc::{
    Answer, CallRequest, Inbound, Listing, OutgoingCall, PeerRequest, Reply, Token,
};
use shared_proto::trust::{PeerCertificate, VerifiedPeer};
use shared_proto::HubId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::transport::lan::{Lan, LanEvent};
use crate::transport::relay::{RelayClient, RelayConfig, RelayError, RelayEvent};
use crate::unix_ms;

/// Bytes waiting for the relay connection above which the application's commands wait.
pub const OUTBOUND_HIGH: usize = 4 * 1024 * 1024;

/// Bytes waiting for the relay connection above which what incoming traffic would add (answers
/// to pings and requests) is dropped: a peer cannot make this hub queue without bound.
pub const OUTBOUND_MAX: usize = 16 * 1024 * 1024;

/// Events waiting for the application above which the relay connection is not read.
pub const TO_APP_HIGH: usize = 1024;

/// What a hub reports about itself to its peers (the `info` answer's JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerInfo {
    /// Its name.
    pub name: String,
    /// Its software version.
    pub version: String,
    /// Seconds since it started.
    pub uptime_s: u64,
}

impl PeerInfo {
    /// What this build reports for hub `name`, running since `started`.
    pub fn of_this_build(name: &str, started: Instant) -> Self {
        PeerInfo {
            name: name.to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: started.elapsed().as_secs(),
        }
    }
}

/// Who answers the requests of peers.
#[derive(Debug, Clone)]
pub enum Serving {
    /// The application: requests arrive as [`PeerEvent::Inbound`] and it answers each.
    Application,
    /// The client itself, for a hub that serves nothing (a tool, a test): it answers pings,
    /// info (with this name), apps with none, and refuses calls `not_shared`.
    Itself {
        /// The name its info gives.
        name: String,
    },
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
    /// The relay said the peer left (or is not online), and it has not come back: a new request
    /// to it is not made (one already waiting when it left waits for its return).
    #[error("{0} is not online at the relay")]
    Offline(HubId),
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
    /// A renewed certificate is not for this hub's keys.
    #[error("this hub's new certificate: {0}")]
    Certificate(String),
    /// The peer refused or failed a call, with a stable code.
    #[error("{peer}: {message} ({})", code.map_or("unknown code", |c| c.name()))]
    Call {
        /// The peer.
        peer: HubId,
        /// The code (`None`: a code this build does not know).
        code: Option<CallErrorCode>,
        /// Its details.
        message: String,
    },
    /// The request could not be made (too many waiting, a name over 255 bytes).
    #[error("cannot send the request: {0}")]
    Request(#[from] RpcError),
}

impl PeerError {
    /// The error of a request to `peer` that ended with `failure`.
    fn from_failure(peer: HubId, failure: Failure) -> Self {
        match failure {
            Failure::Refused(reason) => PeerError::Refused { peer, reason },
            Failure::Call { code, message, .. } => PeerError::Call {
                peer,
                code,
                message,
            },
            Failure::Timeout => PeerError::Timeout(peer),
            Failure::Session(reason) => PeerError::Session { peer, reason },
            // `Failure` may grow: what this build does not know is a failed session.
            other => PeerError::Session {
                peer,
                reason: other.to_string(),
            },
        }
    }
}

impl From<AskError> for PeerError {
    fn from(e: AskError) -> Self {
        match e {
            AskError::Offline(peer) => PeerError::Offline(peer),
            AskError::Request(e) => PeerError::Request(e),
            AskError::Send(e) => PeerError::Send(e),
        }
    }
}

impl From<AnswerError> for PeerError {
    fn from(e: AnswerError) -> Self {
        match e {
            AnswerError::Request(e) => PeerError::Request(e),
            AnswerError::Send(e) => PeerError::Send(e),
        }
    }
}

/// What the application receives.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerEvent {
    /// Application data from a hub, decrypted and authenticated.
    Message {
        /// The sender (as its certificate names it).
        from: HubId,
        /// The message.
        message: Vec<u8>,
    },
    /// A request or notice from a hub, decrypted, authenticated and decoded (never
    /// [`Inbound::Data`], which is [`PeerEvent::Message`], nor [`Inbound::Answer`], which goes
    /// to whoever asked).
    Inbound(Inbound),
    /// A relay event worth knowing (presence, revocations, disconnects).
    Relay(RelayEvent),
    /// A session with a peer is up; its certificate was verified in the handshake.
    Established {
        /// The peer's certificate.
        certificate: Box<shared_proto::trust::VerifiedPeer>,
    },
    /// A peer's handshake was refused for a reason that is its own fault (its certificate refused,
    /// or a static key its certificate does not name).
    HandshakeRefused {
        /// The peer, as the relay or the LAN link named it.
        peer: HubId,
        /// Why.
        reason: String,
        /// Whether it came over a LAN link (whose TLS proved the peer's certificate); over the
        /// relay, the sender is proven only if the relay lists it as a member online (a pairing
        /// guest may take the id of a member that is not).
        over_lan: bool,
    },
    /// A pairing message (from a pairing guest, or an issuer's answer).
    Pairing {
        /// The sender.
        from: HubId,
        /// The whole message.
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

/// An answer to one of this hub's requests, with its round trip.
#[derive(Debug)]
struct Replied {
    rtt: Duration,
    reply: Reply,
}

enum Command {
    /// A whole session message.
    Send {
        to: HubId,
        message: Vec<u8>,
        done: oneshot::Sender<Result<(), SendError>>,
    },
    Request {
        /// The handle's id of the request (what `Abandon` names).
        id: u64,
        to: HubId,
        request: Request,
        deadline_ms: u64,
        done: oneshot::Sender<Result<Replied, PeerError>>,
    },
    /// The asker of request `id` went away: the request ends, and a call's peer is told.
    Abandon {
        id: u64,
    },
    Answer {
        to: HubId,
        token: Token,
        answer: Answer,
        done: oneshot::Sender<Result<(), PeerError>>,
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
    /// This hub's certificate was renewed: handshakes carry it from now on.
    SetCertificate {
        cert: Box<VerifiedPeer>,
        done: oneshot::Sender<Result<(), PeerError>>,
    },
}

/// A running peer layer. Dropping it stops the task and the relay connection.
#[derive(Debug)]
pub struct PeerClient {
    handle: PeerHandle,
    events: mpsc::Receiver<PeerEvent>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

/// Sends, asks and answers through a [`PeerClient`]; cheap to clone, usable from many tasks.
#[derive(Debug, Clone)]
pub struct PeerHandle {
    commands: mpsc::Sender<Command>,
}

impl PeerClient {
    /// Connects to the relay with `relay` and runs sessions with `identity`'s static key,
    /// answering peers' requests itself ([`Serving::Itself`], with its certificate's name).
    pub fn spawn(relay: RelayConfig, identity: LocalIdentity) -> Result<Self, PeerError> {
        let name = PeerCertificate::from_der(&identity.cert_der)
            .map(|c| c.name().to_owned())
            .unwrap_or_default();
        Self::spawn_with(relay, identity, Serving::Itself { name }, None)
    }

    /// As [`PeerClient::spawn`], with `serving` answering peers' requests, and with `lan` (the
    /// LAN path and its events, from [`Lan::start`]) as the direct path to the peers it links
    /// to: the task routes each message to a peer by its LAN link when one is up, by the relay
    /// otherwise.
    pub fn spawn_with(
        relay: RelayConfig,
        identity: LocalIdentity,
        serving: Serving,
        lan: Option<(Lan, mpsc::Receiver<LanEvent>)>,
    ) -> Result<Self, PeerError> {
        let me = relay.credentials.get().hub_id;
        let relay_waiting = relay.waiting.clone();
        let client = RelayClient::spawn(relay)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (ev_tx, ev_rx) = mpsc::channel(1024);
        let (stop, stop_rx) = watch::channel(false);
        let mut rng = StdRng::from_entropy();
        let (lan, lan_events) = match lan {
            Some((lan, events)) => (Some(lan), Some(events)),
            None => (None, None),
        };
        let task = Task {
            core: PeerCore::new(identity, me, rng.next_u64()),
            waiters: HashMap::new(),
            tokens: HashMap::new(),
            q: Queues::default(),
            lan,
            serving,
            started: Instant::now(),
            rng,
            from_network: false,
            relay_waiting,
        };
        let task = tokio::spawn(task.run(client, lan_events, cmd_rx, ev_tx, stop_rx));
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

    /// Sends `message` to `to` over its session as it is, a session message of any kind: what a
    /// peer that does not keep to the protocol sends (tests of the bounds use it).
    #[doc(hidden)]
    pub async fn send_session_message(&self, to: HubId, message: Vec<u8>) -> Result<(), PeerError> {
        self.send_message(to, message).await
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

    /// Tells `to` which session version this hub speaks (once its session is up).
    pub async fn send_version(&self, to: HubId) -> Result<(), PeerError> {
        let version = shared_proto::msg::SESSION_VERSION;
        self.send_message(to, Msg::Version(version).to_vec()).await
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

    /// Answers request `token` of `to` (a request that reached the application as
    /// [`PeerEvent::Inbound`]); refused if it is answered, cancelled or forgotten already.
    pub async fn answer(&self, to: HubId, token: Token, answer: Answer) -> Result<(), PeerError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Answer {
                to,
                token,
                answer,
                done,
            })
            .await
            .map_err(|_| PeerError::Stopped)?;
        wait.await.map_err(|_| PeerError::Stopped)?
    }

    /// What `to` shares with this hub, for the principal a listing envelope signs (a peer of
    /// session version 2) or merely names (`principal`, for one of version 1): the JSON
    /// document of its answer.
    pub async fn apps(
        &self,
        to: HubId,
        listing: Listing,
        limit: Duration,
    ) -> Result<Vec<u8>, PeerError> {
        let request = match listing {
            Listing::Unsigned { principal } => Request::Apps { principal },
            Listing::Signed { envelope } => Request::SignedApps { envelope },
        };
        match self.request(to, request, deadline_in(limit)).await?.reply {
            Reply::Apps(body) => Ok(body),
            _ => Err(PeerError::Malformed(to)),
        }
    }

    /// Calls a tool on `to`: the tool result's JSON, or [`PeerError::Call`] with the code. The
    /// call's timeout is its deadline (`shared_proto::session::rpc::call_deadline`): the peer is
    /// told to stop if no result comes by then.
    pub async fn call(&self, to: HubId, call: OutgoingCall) -> Result<Vec<u8>, PeerError> {
        let deadline_ms = call_deadline(unix_ms(), call.timeout_ms);
        match self
            .request(to, Request::Call(call), deadline_ms)
            .await?
            .reply
        {
            Reply::CallResult(body) => Ok(body),
            _ => Err(PeerError::Malformed(to)),
        }
    }

    /// Round trip to `to` through the session (set up first if needed; that time is included in
    /// the first ping).
    pub async fn ping(&self, to: HubId, limit: Duration) -> Result<Duration, PeerError> {
        Ok(self
            .request(to, Request::Ping, deadline_in(limit))
            .await?
            .rtt)
    }

    /// What `to` reports about itself, asked over the session.
    pub async fn info(&self, to: HubId, limit: Duration) -> Result<PeerInfo, PeerError> {
        match self
            .request(to, Request::Info, deadline_in(limit))
            .await?
            .reply
        {
            Reply::Info(body) => {
                serde_json::from_slice(&body).map_err(|_| PeerError::Malformed(to))
            }
            _ => Err(PeerError::Malformed(to)),
        }
    }

    /// Sends `request` and waits for its answer; the task ends it by `deadline_ms` at the latest
    /// (with [`PeerError::Timeout`]). If this future is dropped first (its asker went away), the
    /// request is abandoned: a call's peer is told to stop at once.
    async fn request(
        &self,
        to: HubId,
        request: Request,
        deadline_ms: u64,
    ) -> Result<Replied, PeerError> {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::Request {
                id,
                to,
                request,
                deadline_ms,
                done,
            })
            .await
            .map_err(|_| PeerError::Stopped)?;
        let mut abandon = AbandonOnDrop {
            commands: Some(self.commands.clone()),
            id,
        };
        let answer = wait.await.map_err(|_| PeerError::Stopped)?;
        abandon.commands = None;
        answer
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

    /// This hub's certificate was renewed: new handshakes (rekeys included) carry `cert`.
    pub async fn set_certificate(&self, cert: VerifiedPeer) -> Result<(), PeerError> {
        let (done, wait) = oneshot::channel();
        self.commands
            .send(Command::SetCertificate {
                cert: Box::new(cert),
                done,
            })
            .await
            .map_err(|_| PeerError::Stopped)?;
        wait.await.map_err(|_| PeerError::Stopped)?
    }

    /// A new certificate for this hub's keys, asked of `admin` (an admin hub of session version
    /// 4 or later): its DER, not verified yet.
    pub async fn renew(&self, admin: HubId, limit: Duration) -> Result<Vec<u8>, PeerError> {
        match self
            .request(admin, Request::Renew, deadline_in(limit))
            .await?
            .reply
        {
            Reply::Renewed(der) => Ok(der),
            _ => Err(PeerError::Malformed(admin)),
        }
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
            Err(_) => Err(PeerError::Timeout(HubId([0; 16]))),
        }
    }
}

/// Abandons a request whose asker went away before its answer (dropped while armed).
struct AbandonOnDrop {
    commands: Option<mpsc::Sender<Command>>,
    id: u64,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(commands) = self.commands.take() {
            // Best effort: with the queue full, the request ends at its deadline instead.
            let _ = commands.try_send(Command::Abandon { id: self.id });
        }
    }
}

/// The deadline of a request waited for `limit` from now.
fn deadline_in(limit: Duration) -> u64 {
    unix_ms() + limit.as_millis() as u64
}

impl Drop for PeerClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Who waits for the answer to one of this hub's requests, and since when.
struct Waiter {
    /// The handle's id of the request.
    id: u64,
    sent: Instant,
    done: oneshot::Sender<Result<Replied, PeerError>>,
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

/// The peer task's state: the sans-IO core, who waits for what, the queues, the router.
struct Task {
    core: PeerCore,
    waiters: HashMap<Token, Waiter>,
    /// The token of each request waited for, by the handle's id.
    tokens: HashMap<u64, Token>,
    q: Queues,
    lan: Option<Lan>,
    serving: Serving,
    started: Instant,
    rng: StdRng,
    /// Whether what is being handled came from the network: transmissions it causes may be
    /// dropped past [`OUTBOUND_MAX`].
    from_network: bool,
    /// Whether a request of this hub waits for its answer: the relay connection checks its path
    /// eagerly meanwhile.
    relay_waiting: Arc<AtomicBool>,
}

impl Task {
    async fn run(
        mut self,
        mut relay: RelayClient,
        mut lan_events: Option<mpsc::Receiver<LanEvent>>,
        mut commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<PeerEvent>,
        mut stop: watch::Receiver<bool>,
    ) {
        let sender = relay.sender();
        let mut status_waiters: VecDeque<(Instant, oneshot::Sender<Duration>)> = VecDeque::new();
        loop {
            let timer = self
                .core
                .poll_timeout()
                .map(|at| Instant::now() + Duration::from_millis(at.saturating_sub(unix_ms())));
            self.from_network = false;
            // Not biased: every ready branch gets its turn, so heavy sending does not starve
            // reading, nor the other way round.
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                permit = sender.reserve(), if !self.q.outbound.is_empty() => {
                    let Ok(permit) = permit else { break };
                    let sent = match self.q.pop_outbound() {
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
                permit = events.reserve(), if !self.q.to_app.is_empty() => {
                    let Ok(permit) = permit else { break };
                    if let Some(event) = self.q.to_app.pop_front() {
                        permit.send(event);
                    }
                }
                cmd = commands.recv(), if self.q.outbound_bytes < OUTBOUND_HIGH => {
                    let Some(cmd) = cmd else { break };
                    if let Command::RelayRtt { done } = cmd {
                        self.q.push_outbound(Outbound::Status);
                        status_waiters.push_back((Instant::now(), done));
                    } else {
                        self.command(cmd);
                    }
                }
                event = relay.next_event(), if self.q.to_app.len() < TO_APP_HIGH => {
                    let Some(event) = event else { break };
                    self.from_network = true;
                    if let RelayEvent::Status(_) = event {
                        if let Some((sent, done)) = status_waiters.pop_front() {
                            let _ = done.send(sent.elapsed());
                        }
                    }
                    self.relay_event(event);
                }
                event = recv_opt(&mut lan_events), if self.q.to_app.len() < TO_APP_HIGH => {
                    self.from_network = true;
                    match event {
                        Some(event) => self.lan_event(event),
                        None => lan_events = None,
                    }
                }
                () = sleep_until_opt(timer) => {
                    self.core.handle_timeout(unix_ms(), &mut self.rng);
                }
            }
            self.drain();
        }
        // What the application has not been handed yet still reaches it (above all the relay's
        // last `Disconnected`, which says why it stopped), unless it stopped listening.
        for event in self.q.to_app.drain(..) {
            if events.send(event).await.is_err() {
                break;
            }
        }
        relay.shutdown().await;
    }

    /// One command of the application.
    fn command(&mut self, cmd: Command) {
        let now = unix_ms();
        match cmd {
            Command::Send { to, message, done } => {
                let _ = done.send(self.core.send(to, message, now, &mut self.rng));
            }
            Command::Request {
                id,
                to,
                request,
                deadline_ms,
                done,
            } => match self
                .core
                .request(to, &request, deadline_ms, now, &mut self.rng)
            {
                Ok(token) => {
                    let sent = Instant::now();
                    self.waiters.insert(token, Waiter { id, sent, done });
                    self.tokens.insert(id, token);
                }
                Err(e) => {
                    let _ = done.send(Err(e.into()));
                }
            },
            Command::Answer {
                to,
                token,
                answer,
                done,
            } => {
                let sent = self.core.answer(to, token, &answer, now, &mut self.rng);
                let _ = done.send(sent.map_err(PeerError::from));
            }
            Command::Abandon { id } => {
                if let Some(token) = self.tokens.remove(&id) {
                    self.waiters.remove(&token);
                    self.core.cancel(token, now, &mut self.rng);
                }
            }
            Command::Raw { to, payload } => self.q.push_outbound(Outbound::Send(to, payload)),
            Command::Publish { list } => self.q.push_outbound(Outbound::Publish(list)),
            Command::RelayRtt { .. } => {}
            Command::SetCertificate { cert, done } => {
                let set = self
                    .core
                    .set_certificate(&cert, unix_ms(), &mut self.rng)
                    .map_err(|e| PeerError::Certificate(e.to_string()));
                let _ = done.send(set);
            }
        }
    }

    /// A relay event: peer payloads go into the core, presence and revocations steer it, and
    /// the application hears of everything but payloads.
    fn relay_event(&mut self, event: RelayEvent) {
        let now = unix_ms();
        // Presence, and whose path came back after an outage: the sessions still hold (no new
        // handshake), and what waited for an answer meanwhile is sent again. A peer that left
        // keeps its session and the requests waiting on it (`session::paths`).
        let said = match &event {
            RelayEvent::Message { from, payload } => {
                self.core
                    .handle_incoming(*from, payload, false, now, &mut self.rng);
                return;
            }
            RelayEvent::Connected { online } => Some(RelaySaid::Welcome(online.clone())),
            RelayEvent::PeerJoined(hub) => Some(RelaySaid::Joined(*hub)),
            RelayEvent::PeerLeft(hub) => Some(RelaySaid::Left(*hub)),
            RelayEvent::Undeliverable(hub) => Some(RelaySaid::Undeliverable(*hub)),
            RelayEvent::Revocations(list) => {
                if let Some(lan) = &self.lan {
                    lan.set_revocations(list.clone());
                }
                self.core
                    .handle_revocations(list.clone(), now, &mut self.rng);
                None
            }
            _ => None,
        };
        if let Some(said) = said {
            self.core.handle_relay(&said, now, &mut self.rng);
        }
        self.q.to_app.push_back(PeerEvent::Relay(event));
    }

    /// An event of the LAN path.
    fn lan_event(&mut self, event: LanEvent) {
        match event {
            LanEvent::Message { from, payload } => {
                self.core
                    .handle_incoming(from, &payload, true, unix_ms(), &mut self.rng);
            }
            LanEvent::Up { peer, addr } => {
                self.core.set_linked(peer, true);
                self.q.to_app.push_back(PeerEvent::LinkUp { peer, addr });
            }
            LanEvent::Down {
                peer,
                reason,
                unsent,
            } => {
                self.core.set_linked(peer, false);
                // What the link may not have delivered goes by the relay; the session's replay
                // window drops whatever of it did arrive.
                for payload in unsent {
                    self.q.push_outbound(Outbound::Send(peer, payload));
                }
                self.q
                    .to_app
                    .push_back(PeerEvent::LinkDown { peer, reason });
            }
            LanEvent::Refused { addr, reason } => {
                self.q
                    .to_app
                    .push_back(PeerEvent::LinkRefused { addr, reason });
            }
        }
    }

    /// Moves what the core produced on: transmissions to the router, requests that ended to
    /// who waits for them, the rest to the application.
    fn drain(&mut self) {
        while let Some(event) = self.core.poll_event() {
            match event {
                CoreEvent::Transmit { to, payload } => self.route(to, payload),
                CoreEvent::Answered(answered) => self.finish(answered),
                CoreEvent::Data { from, data } => self.q.to_app.push_back(PeerEvent::Message {
                    from,
                    message: data,
                }),
                CoreEvent::Inbound(inbound) => match &self.serving {
                    Serving::Application => self.q.to_app.push_back(PeerEvent::Inbound(inbound)),
                    Serving::Itself { .. } => self.serve_itself(inbound),
                },
                CoreEvent::Pairing { from, message } => {
                    self.q
                        .to_app
                        .push_back(PeerEvent::Pairing { from, message });
                }
                CoreEvent::Established { certificate } => {
                    tracing::debug!(peer = %certificate.hub_id(), "session established");
                    self.q
                        .to_app
                        .push_back(PeerEvent::Established { certificate });
                }
                CoreEvent::HandshakeRefused {
                    peer,
                    reason,
                    over_link,
                } => {
                    tracing::warn!(%peer, "handshake refused: {reason}");
                    self.q.to_app.push_back(PeerEvent::HandshakeRefused {
                        peer,
                        reason,
                        over_lan: over_link,
                    });
                }
                CoreEvent::SessionFailed { peer, reason } => {
                    self.q
                        .to_app
                        .push_back(PeerEvent::SessionFailed { peer, reason });
                }
                _ => {}
            }
        }
        self.relay_waiting
            .store(self.core.outstanding() > 0, Ordering::Relaxed);
    }

    /// The router: a transmission goes by the peer's LAN link when a verified one is up and has
    /// room, by the relay otherwise. Transmissions caused by what peers sent are dropped while
    /// the relay queue is past [`OUTBOUND_MAX`].
    fn route(&mut self, to: HubId, payload: Vec<u8>) {
        let payload = match &self.lan {
            Some(lan) => match lan.try_send(to, payload) {
                Ok(()) => return,
                Err(payload) => payload,
            },
            None => payload,
        };
        if self.from_network && self.q.outbound_bytes > OUTBOUND_MAX {
            tracing::debug!(peer = %to, "relay queue full: an answer was dropped");
            return;
        }
        self.q.push_outbound(Outbound::Send(to, payload));
    }

    /// [`Serving::Itself`]: the answers of a hub that serves nothing.
    fn serve_itself(&mut self, inbound: Inbound) {
        let Serving::Itself { name } = &self.serving else {
            return;
        };
        let (request, answer) = match inbound {
            Inbound::Ping(r) => (r, Answer::Pong),
            Inbound::Info(r) => {
                let info = PeerInfo::of_this_build(name, self.started);
                (
                    r,
                    Answer::Info(serde_json::to_vec(&info).unwrap_or_default()),
                )
            }
            Inbound::Apps { request, .. } => (request, Answer::Apps(b"[]".to_vec())),
            Inbound::Renew(request) => (
                request,
                Answer::Refused(shared_proto::trust::renewal::NOT_ADMIN.into()),
            ),
            Inbound::Call(c) => (
                PeerRequest {
                    from: c.from,
                    token: c.token,
                },
                Answer::CallError {
                    code: CallErrorCode::NotShared,
                    message: "this hub shares no apps".into(),
                },
            ),
            _ => return,
        };
        let _ = self.core.answer(
            request.from,
            request.token,
            &answer,
            unix_ms(),
            &mut self.rng,
        );
    }

    /// A request of this hub ended: its waiter gets the reply or the error.
    fn finish(&mut self, answered: Answered) {
        let Some(waiter) = self.waiters.remove(&answered.token) else {
            return;
        };
        self.tokens.remove(&waiter.id);
        let peer = answered.peer;
        let result = answered
            .result
            .map(|reply| Replied {
                rtt: waiter.sent.elapsed(),
                reply,
            })
            .map_err(|f| PeerError::from_failure(peer, f));
        let _ = waiter.done.send(result);
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
