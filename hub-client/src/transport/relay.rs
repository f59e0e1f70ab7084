//! The hub's one outbound connection to its cluster's relay.
//!
//! [`RelayClient::spawn`] starts a task that connects, says `Hello`, and then runs one session
//! after another: whenever the socket drops, it waits a backoff delay (with jitter; reset once a
//! session was welcomed) and connects again, until [`RelayClient::shutdown`] or a final close
//! code (see [`CloseCode::should_reconnect`]). The application talks to it through a command
//! channel ([`RelayClient::send`]) and an event channel ([`RelayClient::next_event`]).
//!
//! [`run_session`] is one session over any WebSocket stream/sink, so it is tested over an
//! in-memory duplex as well as over TCP. Sends queued while no session runs wait in the bounded
//! command channel (backpressure) and go out after the next `Hello`; sends queued together are
//! batched into one WebSocket message.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rand::rngs::StdRng;
use rand::SeedableRng;
use shared_proto::relay::client::{ClientEvent, ClientSession};
use shared_proto::relay::frame::{
    Frame, HubId, RoomStatus, KEEPALIVE_REQUEST, KEEPALIVE_RESPONSE, MAX_MESSAGE, MAX_PAYLOAD,
};
use shared_proto::relay::liveness::{self, Liveness};
use shared_proto::relay::path::{
    connect_path, connect_query, is_valid_cluster_id, KEPT_OUT_STATUS,
};
use shared_proto::relay::rate::{Limits, Pacer, MAX_PENALTY_MS, PENALTY_MS};
use shared_proto::trust::rotation::VerifiedSuccessor;
use shared_proto::trust::{ClusterId, RevocationList, VerifiedRevocations};
use shared_proto::CloseCode;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{sleep, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::MaybeTlsStream;
use url::Url;

use crate::transport::backoff::Backoff;
use crate::transport::netwatch::{self, NetworkChanges};
use crate::unix_ms;

/// Target size of one batched WebSocket message the client sends.
const BATCH_TARGET: usize = 256 * 1024;

/// Errors of the relay client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The relay URL cannot be used.
    #[error("invalid relay URL: {0}")]
    InvalidUrl(String),
    /// The cluster id is not 1-64 characters of `A-Z a-z 0-9 - _`.
    #[error("invalid cluster id {0:?}")]
    InvalidClusterId(String),
    /// A payload over the protocol's limit.
    #[error("payload of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    PayloadTooLarge(usize),
    /// The client was shut down or gave up (after a final close code).
    #[error("the relay client has stopped")]
    Stopped,
    /// Something this hub would send is past a limit of the relay protocol.
    #[error("cannot send to the relay: {0}")]
    Frame(#[from] shared_proto::relay::frame::FrameError),
}

/// What the relay client tells the application.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayEvent {
    /// A session started: the relay admitted this hub. `online` are the other hubs.
    Connected {
        /// The other hubs online, ascending.
        online: Vec<HubId>,
    },
    /// A hub came online (or reconnected, which may mean it restarted).
    PeerJoined(HubId),
    /// A hub went offline.
    PeerLeft(HubId),
    /// A payload from another hub.
    Message {
        /// The sender.
        from: HubId,
        /// The payload.
        payload: Vec<u8>,
    },
    /// A payload this hub sent to `dst` was dropped: `dst` is not online.
    Undeliverable(HubId),
    /// The answer to [`RelayClient::request_status`].
    Status(RoomStatus),
    /// A newer signed revocation list (already verified for this cluster): store it.
    Revocations(VerifiedRevocations),
    /// The cluster moved to a new CA key (the successor document, verified for this cluster).
    Successor(Box<VerifiedSuccessor>),
    /// The relay dropped frames this hub sent, for a rate limit (its own, or that of the hub
    /// it sent to). The client has paused its sends for `retry_after` and goes on slower.
    RateLimited {
        /// Whose limit was hit: this hub's, or the receiver's.
        limited: HubId,
        /// How long sends were paused.
        retry_after: Duration,
        /// Frames dropped since the relay's previous notice.
        dropped: u32,
    },
    /// The relay announced a restart; the client reconnects after the delay it gave.
    Restarting {
        /// Suggested wait.
        reconnect_after: Duration,
    },
    /// The session ended. If `retry_in` is set the client reconnects after that delay.
    Disconnected {
        /// The relay's close code, if it sent one we know.
        code: Option<CloseCode>,
        /// What happened, for logs.
        reason: String,
        /// When the next attempt is made; `None` means the client has stopped for good.
        retry_in: Option<Duration>,
    },
}

/// Settings of a relay connection.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The relay's base URL: `ws://`, `wss://`, `http://` or `https://` (the last two map to
    /// WebSockets), with or without a path prefix.
    pub relay_url: String,
    /// The hub's certificate and keys; they name the cluster and the hub id. Each login reads
    /// them anew (a renewed certificate is used from the next one).
    pub credentials: super::CredentialsCell,
    /// The newest revocation list the hub holds (signed bytes), passed on to the relay.
    pub revocations: Option<Vec<u8>>,
    /// When the path to the relay is probed and given up as dead (an idle phone: probes
    /// seldom; `shared_proto::relay::liveness`).
    pub liveness: liveness::Settings,
    /// Whether a request of this hub waits for an answer: set by the peer layer, read by the
    /// session, which then checks the path eagerly.
    pub waiting: Arc<AtomicBool>,
    /// Changes of this host's network ([`crate::transport::netwatch::watch_network`]): a socket
    /// whose local address went away ends at once, one that may have lost its route is probed,
    /// and a reconnect waiting for its turn is tried at once. `None`: not watched.
    pub network: Option<NetworkChanges>,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Capacity of the command and event channels.
    pub queue: usize,
    /// What this connection has written, counted as it goes ([`RelayClient::sent`]).
    pub counters: Arc<SentCounters>,
}

/// What a relay connection has written to its sockets, over all its sessions. On Cloudflare each
/// binary message is one incoming WebSocket message of the room's Durable Object (billed, and it
/// wakes a hibernated object); keepalives are answered by the runtime's auto-response and reach
/// neither the bill's request count nor the object.
#[derive(Debug, Default)]
pub struct SentCounters {
    messages: AtomicU64,
    frames: AtomicU64,
    keepalives: AtomicU64,
}

/// A reading of [`SentCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sent {
    /// Binary WebSocket messages (each a batch of frames).
    pub messages: u64,
    /// Frames in them.
    pub frames: u64,
    /// Keepalive text messages.
    pub keepalives: u64,
}

impl std::ops::Add for Sent {
    type Output = Sent;

    fn add(self, other: Sent) -> Sent {
        Sent {
            messages: self.messages + other.messages,
            frames: self.frames + other.frames,
            keepalives: self.keepalives + other.keepalives,
        }
    }
}

impl SentCounters {
    /// The counts so far.
    pub fn read(&self) -> Sent {
        Sent {
            messages: self.messages.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
            keepalives: self.keepalives.load(Ordering::Relaxed),
        }
    }

    fn message(&self, frames: u64) {
        self.messages.fetch_add(1, Ordering::Relaxed);
        self.frames.fetch_add(frames, Ordering::Relaxed);
    }

    fn keepalive(&self) {
        self.keepalives.fetch_add(1, Ordering::Relaxed);
    }
}

impl RelayConfig {
    /// Defaults: the liveness of [`liveness::Settings::HUB`], backoff 250 ms to 30 s.
    pub fn new(
        relay_url: impl Into<String>,
        credentials: impl Into<super::CredentialsCell>,
    ) -> Self {
        RelayConfig {
            relay_url: relay_url.into(),
            credentials: credentials.into(),
            revocations: None,
            liveness: liveness::Settings::HUB,
            waiting: Arc::default(),
            network: None,
            backoff: Backoff::default(),
            queue: 1024,
            counters: Arc::default(),
        }
    }

    /// The cluster the credentials belong to.
    pub fn cluster_id(&self) -> ClusterId {
        ClusterId::from_ca_key(&self.credentials.get().ca_key)
    }

    /// The WebSocket URL of this cluster's room, for this hub.
    pub fn connect_url(&self) -> Result<Url, RelayError> {
        connect_url(
            &self.relay_url,
            self.cluster_id().as_str(),
            &self.credentials.get().hub_id,
        )
    }
}

/// The WebSocket URL of a cluster's room on a relay, for `hub` (the `Hello` must name it).
pub fn connect_url(relay_url: &str, cluster_id: &str, hub: &HubId) -> Result<Url, RelayError> {
    if !is_valid_cluster_id(cluster_id) {
        return Err(RelayError::InvalidClusterId(cluster_id.to_owned()));
    }
    let mut url = Url::parse(relay_url).map_err(|e| RelayError::InvalidUrl(e.to_string()))?;
    let scheme = match url.scheme() {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        other => {
            return Err(RelayError::InvalidUrl(format!(
                "scheme {other:?}; use ws, wss, http or https"
            )))
        }
    };
    url.set_scheme(scheme)
        .map_err(|()| RelayError::InvalidUrl("cannot set the scheme".into()))?;
    let prefix = url.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("{prefix}{}", connect_path(cluster_id)));
    url.set_query(Some(&connect_query(hub)));
    Ok(url)
}

/// WebSocket limits matching the protocol's.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// What the application asks of a session.
#[derive(Debug)]
pub enum Command {
    /// Deliver a payload to a hub.
    Send {
        /// The destination.
        dst: HubId,
        /// The payload, at most [`MAX_PAYLOAD`] bytes.
        payload: Vec<u8>,
    },
    /// Ask for the room's status.
    Status,
    /// Publish a signed revocation list (the founder's, or a newer one passed on).
    Publish(Vec<u8>),
    /// Publish the old CA's successor document (a rotation).
    PublishSuccessor(Vec<u8>),
}

impl Command {
    /// A `Send`, checked against the payload limit.
    fn send(dst: HubId, payload: Vec<u8>) -> Result<Self, RelayError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(RelayError::PayloadTooLarge(payload.len()));
        }
        Ok(Command::Send { dst, payload })
    }

    /// A `Publish`, checked against the frame's limits.
    fn publish(signed: Vec<u8>) -> Result<Self, RelayError> {
        Frame::RevocationList(&signed).check()?;
        Ok(Command::Publish(signed))
    }
}

/// A running relay connection. Dropping it shuts the connection down.
#[derive(Debug)]
pub struct RelayClient {
    hub_id: HubId,
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<RelayEvent>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
    counters: Arc<SentCounters>,
}

impl RelayClient {
    /// Starts connecting in the background. Fails only on a config that can never work.
    pub fn spawn(config: RelayConfig) -> Result<Self, RelayError> {
        let url = config.connect_url()?;
        let (cmd_tx, cmd_rx) = mpsc::channel(config.queue.max(1));
        let (ev_tx, ev_rx) = mpsc::channel(config.queue.max(1));
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let hub_id = config.credentials.get().hub_id;
        let counters = config.counters.clone();
        let task = tokio::spawn(connection_loop(config, url, cmd_rx, ev_tx, shutdown_rx));
        Ok(RelayClient {
            hub_id,
            counters,
            commands: cmd_tx,
            events: ev_rx,
            shutdown: shutdown_tx,
            task: Some(task),
        })
    }

    /// This hub's id.
    pub fn hub_id(&self) -> HubId {
        self.hub_id
    }

    /// What this connection has written so far, over all its sessions.
    pub fn sent(&self) -> Sent {
        self.counters.read()
    }

    /// Queues a payload for another hub of the room. Waits while the queue is full.
    pub async fn send(&self, dst: HubId, payload: Vec<u8>) -> Result<(), RelayError> {
        self.commands
            .send(Command::send(dst, payload)?)
            .await
            .map_err(|_| RelayError::Stopped)
    }

    /// Publishes a signed revocation list through the relay; it reaches every hub of the room and
    /// comes back as [`RelayEvent::Revocations`] once the relay has taken it.
    pub async fn publish_revocations(&self, signed: Vec<u8>) -> Result<(), RelayError> {
        self.commands
            .send(Command::publish(signed)?)
            .await
            .map_err(|_| RelayError::Stopped)
    }

    /// Publishes the old CA's successor document through the relay (a rotation): the room keeps
    /// it and hands it to its members.
    pub async fn publish_successor(&self, signed: Vec<u8>) -> Result<(), RelayError> {
        Frame::Successor(&signed).check()?;
        self.commands
            .send(Command::PublishSuccessor(signed))
            .await
            .map_err(|_| RelayError::Stopped)
    }

    /// Asks the relay for the room's status; the answer arrives as [`RelayEvent::Status`].
    pub async fn request_status(&self) -> Result<(), RelayError> {
        self.commands
            .send(Command::Status)
            .await
            .map_err(|_| RelayError::Stopped)
    }

    /// A sender of commands to this connection, to wait for room in its queue while also
    /// reading its events ([`RelaySender::reserve`]).
    pub fn sender(&self) -> RelaySender {
        RelaySender(self.commands.clone())
    }

    /// The next event; `None` once the client has stopped and every event was read.
    pub async fn next_event(&mut self) -> Option<RelayEvent> {
        self.events.recv().await
    }

    /// Closes the connection cleanly (close code 1000) and waits for the task to end.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Sends commands to a relay connection ([`RelayClient::sender`]).
#[derive(Debug, Clone)]
pub struct RelaySender(mpsc::Sender<Command>);

impl RelaySender {
    /// Waits for room in the connection's queue for one command. With the permit in hand the
    /// command is queued without waiting: a task that must also go on reading events waits for
    /// room in a `select!` instead of blocking in [`RelayClient::send`].
    pub async fn reserve(&self) -> Result<RelayPermit<'_>, RelayError> {
        self.0
            .reserve()
            .await
            .map(RelayPermit)
            .map_err(|_| RelayError::Stopped)
    }
}

/// Room for one command in a relay connection's queue ([`RelaySender::reserve`]).
#[derive(Debug)]
pub struct RelayPermit<'a>(mpsc::Permit<'a, Command>);

impl RelayPermit<'_> {
    /// Queues a payload for another hub, as [`RelayClient::send`] does.
    pub fn send(self, dst: HubId, payload: Vec<u8>) -> Result<(), RelayError> {
        self.0.send(Command::send(dst, payload)?);
        Ok(())
    }

    /// Queues a revocation list, as [`RelayClient::publish_revocations`] does.
    pub fn publish_revocations(self, signed: Vec<u8>) -> Result<(), RelayError> {
        self.0.send(Command::publish(signed)?);
        Ok(())
    }

    /// Queues a status request, as [`RelayClient::request_status`] does.
    pub fn request_status(self) {
        self.0.send(Command::Status);
    }
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionEnd {
    /// The application asked to stop; the socket was closed with 1000.
    Shutdown,
    /// The relay closed the socket, with this code if it gave one.
    Closed {
        /// The code.
        code: Option<u16>,
        /// The reason text.
        reason: String,
        /// Whether the relay had welcomed this hub in this session.
        welcomed: bool,
        /// A delay the relay asked for: with `Restarting`, or the `Retry-After` of a refused
        /// connect.
        restart_after: Option<Duration>,
    },
    /// The socket failed or went silent.
    Failed {
        /// What happened.
        reason: String,
        /// Whether the relay had welcomed this hub in this session.
        welcomed: bool,
    },
}

async fn connection_loop(
    config: RelayConfig,
    url: Url,
    mut commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<RelayEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = config.backoff.clone();
    let mut rng = StdRng::from_entropy();
    let mut network = config.network.clone();
    let cluster = config.cluster_id();
    let mut held = config
        .revocations
        .as_deref()
        .and_then(|b| RevocationList::verify(b, &cluster).ok());
    loop {
        let attempted = Instant::now();
        let connect = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async_with_config(url.as_str(), Some(ws_config()), true),
        );
        // A shutdown does not wait for a connection attempt to finish.
        let connected = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            connected = connect => connected,
        };
        let end = match connected {
            Err(_) => SessionEnd::Failed {
                reason: format!(
                    "connect to {url}: no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
                welcomed: false,
            },
            Ok(Ok((ws, _))) => {
                let local = match ws.get_ref() {
                    MaybeTlsStream::Plain(tcp) => tcp.local_addr().ok(),
                    MaybeTlsStream::Rustls(tls) => tls.get_ref().0.local_addr().ok(),
                    _ => None,
                };
                tracing::debug!(%url, ?local, "connected to relay");
                run_session(
                    ws,
                    local.map(|a| a.ip()),
                    &config,
                    &mut commands,
                    &events,
                    &mut shutdown,
                    &mut held,
                )
                .await
            }
            Ok(Err(e)) => kept_out(&e).unwrap_or_else(|| SessionEnd::Failed {
                reason: format!("connect to {url}: {e}"),
                welcomed: false,
            }),
        };
        let (code, reason, welcomed, restart_after) = match end {
            SessionEnd::Shutdown => return,
            SessionEnd::Closed {
                code,
                reason,
                welcomed,
                restart_after,
            } => (code, reason, welcomed, restart_after),
            SessionEnd::Failed { reason, welcomed } => (None, reason, welcomed, None),
        };
        if welcomed {
            backoff.reset();
        }
        let known = code.and_then(CloseCode::from_code);
        let final_code = known.is_some_and(|c| !c.should_reconnect());
        let retry_in =
            (!final_code).then(|| restart_after.unwrap_or_else(|| backoff.next_delay(&mut rng)));
        tracing::info!(?code, %reason, ?retry_in, "relay session ended");
        if events
            .send(RelayEvent::Disconnected {
                code: known,
                reason,
                retry_in,
            })
            .await
            .is_err()
        {
            return;
        }
        let Some(delay) = retry_in else {
            return;
        };
        // Wait, but stop at once on shutdown, and try soon when the network changed (a roaming
        // hub got an address or a route: `NETWORK_SETTLE` later, and at most once per
        // `NETWORK_RETRY_MIN`, so that a host whose routes churn does not reconnect without
        // end); sends stay queued for the next session.
        if let Some(network) = &mut network {
            network.mark_unchanged();
        }
        let wake = Instant::now() + delay;
        tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            () = tokio::time::sleep_until(wake) => {}
            () = network_changed(&mut network) => {
                // Once the change has settled (an address and its route come a few ms apart),
                // and not sooner than `NETWORK_RETRY_MIN` after the last attempt.
                let soonest = (Instant::now() + NETWORK_SETTLE)
                    .max(attempted + NETWORK_RETRY_MIN)
                    .min(wake);
                tracing::info!("the network changed: reconnecting to the relay now");
                tokio::select! {
                    biased;
                    _ = shutdown.changed() => return,
                    () = tokio::time::sleep_until(soonest) => {}
                }
            }
        }
    }
}

/// The soonest a change of the network makes a hub try the relay again after its last attempt.
const NETWORK_RETRY_MIN: Duration = Duration::from_millis(250);

/// How long a hub lets a change of the network settle before it tries the relay again.
const NETWORK_SETTLE: Duration = Duration::from_millis(50);

/// A connect the relay refused because it keeps this hub out for its rate (`429`): the same
/// as a close with `4009`, and the hub waits as long as `Retry-After` says.
fn kept_out(e: &WsError) -> Option<SessionEnd> {
    let WsError::Http(resp) = e else {
        return None;
    };
    if resp.status().as_u16() != KEPT_OUT_STATUS {
        return None;
    }
    let wait = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(PENALTY_MS / 1000);
    let reason = resp
        .body()
        .as_deref()
        .map(|b| String::from_utf8_lossy(b).trim().to_owned())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "rate-limited: kept out".into());
    Some(SessionEnd::Closed {
        code: Some(CloseCode::RateLimited.code()),
        reason,
        welcomed: false,
        restart_after: Some(Duration::from_secs(wait.min(MAX_PENALTY_MS / 1000))),
    })
}

/// Waits for the next change of the network, forever if it is not watched.
async fn network_changed(network: &mut Option<NetworkChanges>) {
    match network {
        Some(rx) => {
            if rx.changed().await.is_err() {
                // The watch stopped: nothing more will change.
                *network = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Runs one session on an open WebSocket: `Hello`, then traffic both ways until it ends.
///
/// Reading never waits for writing: a writer task owns the socket's sending half, and the
/// session hands it whole messages through a short queue. While a message waits there (the
/// writer is busy with the one before) the session takes no command: they gather in the command
/// queue and go out together as the next message, one batch per write, and the application's
/// sends wait once that queue is full. It goes on reading what the relay sends meanwhile, so two
/// hubs sending to each other as fast as they can never wait on each other. A write that takes
/// longer than [`WRITE_TIMEOUT`] ends the session as stalled. `local` is the socket's local
/// address, if known: the session ends at once if a change of the network takes it away.
pub async fn run_session<S>(
    ws: S,
    local: Option<IpAddr>,
    config: &RelayConfig,
    commands: &mut mpsc::Receiver<Command>,
    events: &mpsc::Sender<RelayEvent>,
    shutdown: &mut watch::Receiver<bool>,
    held: &mut Option<VerifiedRevocations>,
) -> SessionEnd
where
    S: Stream<Item = Result<Message, WsError>>
        + Sink<Message, Error = WsError>
        + Unpin
        + Send
        + 'static,
{
    let mut network = config.network.clone();
    if let Some(network) = &mut network {
        network.mark_unchanged();
    }
    let opened = ClientSession::member(
        &config.credentials.get(),
        held.clone(),
        unix_ms(),
        &mut rand::rngs::OsRng,
    );
    let (mut session, hello) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            return SessionEnd::Failed {
                reason: format!("this hub's Hello: {e}"),
                welcomed: false,
            }
        }
    };
    let (sink, mut stream) = ws.split();
    let (out, out_rx) = mpsc::channel::<Message>(WRITE_QUEUE);
    let mut writer = Writer(tokio::spawn(write_loop(sink, out_rx)));
    // The queue is empty: this cannot fail.
    let _ = out.try_send(Message::Binary(hello.into()));
    config.counters.message(1);
    // The path's liveness runs on the session's own monotonic clock (ms since it opened).
    let opened = Instant::now();
    let clock = || u64::try_from(opened.elapsed().as_millis()).unwrap_or(u64::MAX);
    let waiting = || config.waiting.load(Ordering::Relaxed);
    let mut liveness = Liveness::new(config.liveness, 0);
    liveness.handle_sent(0);
    // What this hub sends stays below the relay's rate limits, and slows when told.
    let mut pacer = Pacer::new(Limits::default(), unix_ms());

    loop {
        let paced = pacer
            .ready_at(unix_ms())
            .map(|at| at.saturating_add(PACED_GATHER_MS));
        let check_at = opened + Duration::from_millis(liveness.poll_timeout());
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                writer.close(&out, close_message(CloseCode::Normal, "hub shutting down")).await;
                return SessionEnd::Shutdown;
            }
            ended = &mut writer.0 => {
                let reason = match ended {
                    Ok(Err(reason)) => reason,
                    _ => "the writer stopped".to_owned(),
                };
                return SessionEnd::Failed { reason, welcomed: session.welcomed() };
            }
            incoming = stream.next() => {
                let welcomed = session.welcomed();
                let msg = match incoming {
                    None => return SessionEnd::Failed { reason: "relay closed the stream".into(), welcomed },
                    Some(Err(e)) => return SessionEnd::Failed { reason: e.to_string(), welcomed },
                    Some(Ok(msg)) => msg,
                };
                liveness.handle_heard(clock(), waiting());
                match on_message(msg, &mut session, config, held, &mut pacer, events).await {
                    Ok(()) => {}
                    Err(Ending::Refuse(code, reason)) => {
                        writer.close(&out, close_message(code, &reason)).await;
                        return SessionEnd::Failed { reason, welcomed: session.welcomed() };
                    }
                    Err(Ending::End(end)) => return end,
                }
            }
            // A message waits for the writer: wake when it took them all. Meanwhile commands
            // gather into the next batch, so that under load a message carries many frames
            // (each message is billed on Cloudflare) and an idle writer still sends at once.
            _ = out.reserve_many(WRITE_QUEUE), if out.capacity() < WRITE_QUEUE => {}
            // Over the pace: wake when a frame may go again.
            () = sleep_until_ms(paced), if paced.is_some() => {}
            cmd = commands.recv(), if out.capacity() == WRITE_QUEUE && paced.is_none() => {
                let Some(cmd) = cmd else {
                    writer.close(&out, close_message(CloseCode::Normal, "hub shutting down")).await;
                    return SessionEnd::Shutdown;
                };
                let (batch, frames) = encode_batch(cmd, commands, &mut pacer);
                // This task is the queue's only sender and saw room in it.
                if frames > 0 && out.try_send(Message::Binary(batch.into())).is_ok() {
                    config.counters.message(frames);
                    liveness.handle_sent(clock());
                }
            }
            () = network_changed(&mut network) => {
                if let Some(ip) = local.filter(|ip| !netwatch::host_has_address(*ip)) {
                    let reason = format!("this host no longer has the address {ip} this socket was on");
                    return SessionEnd::Failed { reason, welcomed: session.welcomed() };
                }
                liveness.handle_network_changed(clock());
            }
            // The path is checked while the writer has room: a probe queued behind a full
            // queue would wait on the writes ahead of it, and a write that stalls ends the
            // session on its own (`WRITE_TIMEOUT`).
            () = tokio::time::sleep_until(check_at), if out.capacity() > 0 => {
                match liveness.handle_timeout(clock(), waiting()) {
                    Some(liveness::Action::Probe)
                        if out.try_send(Message::text(KEEPALIVE_REQUEST)).is_ok() =>
                    {
                        config.counters.keepalive();
                    }
                    Some(liveness::Action::Dead { silent_ms }) => {
                        let reason = format!("no answer to a keepalive; the relay said nothing for {silent_ms} ms");
                        return SessionEnd::Failed { reason, welcomed: session.welcomed() };
                    }
                    Some(liveness::Action::Probe) | None => {}
                }
            }
        }
    }
}

/// How a message from the relay ends a session.
enum Ending {
    /// The relay broke the protocol: close with this code and reason.
    Refuse(CloseCode, String),
    /// The session is over (the relay closed it).
    End(SessionEnd),
}

/// One message from the relay: what it carries goes to the hub as events; a close or a
/// protocol error ends the session.
async fn on_message(
    msg: Message,
    session: &mut ClientSession,
    config: &RelayConfig,
    held: &mut Option<VerifiedRevocations>,
    pacer: &mut Pacer,
    events: &mpsc::Sender<RelayEvent>,
) -> Result<(), Ending> {
    match msg {
        Message::Binary(bytes) => {
            let mut decoded = Vec::new();
            let result = session.handle_message(&bytes, &mut decoded);
            for event in decoded {
                match &event {
                    ClientEvent::Revocations(list) => *held = Some(list.clone()),
                    ClientEvent::RateLimited {
                        limited,
                        retry_after_ms,
                        dropped,
                    } => {
                        let whose = if *limited == config.credentials.get().hub_id {
                            "this hub sends more than its share".to_owned()
                        } else {
                            format!("hub {limited} is sent more than its share")
                        };
                        tracing::warn!(
                            dropped,
                            retry_after_ms,
                            "rate-limited by the relay ({whose}); slowing down"
                        );
                        pacer.rate_limited(*retry_after_ms, unix_ms());
                    }
                    _ => {}
                }
                if events.send(relay_event(event)).await.is_err() {
                    break;
                }
            }
            result.map_err(|e| Ending::Refuse(e.close_code(), e.to_string()))
        }
        Message::Text(t) if t.as_str() == KEEPALIVE_RESPONSE => Ok(()),
        Message::Close(frame) => {
            let (code, reason) = frame
                .map(|f| (Some(u16::from(f.code)), f.reason.to_string()))
                .unwrap_or((None, String::new()));
            let restart_after = session.restart_after_ms().map(Duration::from_millis);
            Err(Ending::End(SessionEnd::Closed {
                code,
                reason,
                welcomed: session.welcomed(),
                restart_after,
            }))
        }
        // Pings are answered by tungstenite; anything else is ignored.
        _ => Ok(()),
    }
}

/// The frames of `first` and of the commands waiting after it, as one message (up to
/// [`BATCH_TARGET`] bytes, and as far as the pace allows), and how many frames it holds.
fn encode_batch(
    first: Command,
    commands: &mut mpsc::Receiver<Command>,
    pacer: &mut Pacer,
) -> (Vec<u8>, u64) {
    let mut batch = Vec::new();
    let mut frames = 0;
    let mut next = Some(first);
    let now = unix_ms();
    while let Some(cmd) = next.take() {
        // `send` and `publish_revocations` checked the limits already.
        let before = batch.len();
        let encoded = match cmd {
            Command::Send { dst, payload } => Frame::Send {
                dst,
                payload: &payload,
            }
            .encode(&mut batch),
            Command::Status => Frame::StatusRequest.encode(&mut batch),
            Command::Publish(doc) => Frame::RevocationList(&doc).encode(&mut batch),
            Command::PublishSuccessor(doc) => Frame::Successor(&doc).encode(&mut batch),
        };
        match encoded {
            Ok(()) => {
                pacer.sent(batch.len() - before, now);
                frames += 1;
            }
            Err(e) => tracing::warn!("dropped a frame past the protocol's limits: {e}"),
        }
        if batch.len() < BATCH_TARGET && pacer.ready_at(now).is_none() {
            next = commands.try_recv().ok();
        }
    }
    (batch, frames)
}

/// Sleeps until `at` (Unix ms); `None`: forever.
async fn sleep_until_ms(at: Option<u64>) {
    match at {
        Some(at) => sleep(Duration::from_millis(at.saturating_sub(unix_ms()))).await,
        None => std::future::pending().await,
    }
}

/// A hub over its pace waits this much longer than the pacer asks, so that what goes next is a
/// batch of frames rather than one at a time as the budget trickles back (each message is one
/// billed request on Cloudflare). It delays only frames the pace already held back.
const PACED_GATHER_MS: u64 = 10;

/// Messages waiting for the socket's writer task.
const WRITE_QUEUE: usize = 4;

/// How long one write to the relay may take before the connection counts as stalled.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long connecting to the relay (TCP, TLS, WebSocket upgrade) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// The writer task of a session; aborted when the session ends.
struct Writer(JoinHandle<Result<(), String>>);

impl Writer {
    /// Queues a close frame and gives the writer a moment to send it and close the socket.
    async fn close(&mut self, out: &mpsc::Sender<Message>, message: Message) {
        if out.try_send(message).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut self.0).await;
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends what the session queues, each write within [`WRITE_TIMEOUT`]; after a close frame,
/// closes the socket and ends.
async fn write_loop<K>(mut sink: K, mut queue: mpsc::Receiver<Message>) -> Result<(), String>
where
    K: Sink<Message, Error = WsError> + Unpin,
{
    while let Some(message) = queue.recv().await {
        let last = matches!(message, Message::Close(_));
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("send: {e}")),
            Err(_) => {
                return Err(format!(
                    "a write took longer than {} s: the connection is stalled",
                    WRITE_TIMEOUT.as_secs()
                ))
            }
        }
        if last {
            let _ = tokio::time::timeout(Duration::from_secs(2), sink.close()).await;
            return Ok(());
        }
    }
    Ok(())
}

fn close_message(code: CloseCode, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: reason.to_owned().into(),
    }))
}

/// What the application hears of a session event.
fn relay_event(event: ClientEvent) -> RelayEvent {
    match event {
        ClientEvent::Welcome { online } => RelayEvent::Connected { online },
        ClientEvent::Message { from, payload } => RelayEvent::Message { from, payload },
        ClientEvent::PeerJoined(hub) => RelayEvent::PeerJoined(hub),
        ClientEvent::PeerLeft(hub) => RelayEvent::PeerLeft(hub),
        ClientEvent::Undeliverable(hub) => RelayEvent::Undeliverable(hub),
        ClientEvent::Status(status) => RelayEvent::Status(status),
        ClientEvent::Restarting { after_ms } => RelayEvent::Restarting {
            reconnect_after: Duration::from_millis(after_ms),
        },
        ClientEvent::Revocations(list) => RelayEvent::Revocations(list),
        ClientEvent::Successor(s) => RelayEvent::Successor(s),
        ClientEvent::RateLimited {
            limited,
            retry_after_ms,
            dropped,
        } => RelayEvent::RateLimited {
            limited,
            retry_after: Duration::from_millis(retry_after_ms),
            dropped,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::relay::frame::decode_message;
    use shared_proto::trust::login::Credentials;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    use ed25519_dalek::SigningKey;
    use shared_proto::relay::frame::{Extension, Hello};
    use shared_proto::trust::login::LOGIN_EXTENSION;
    use shared_proto::trust::{CertificateRequest, ClusterCa, TrustLevel};

    fn hub(b: u8) -> HubId {
        HubId([b; 16])
    }

    /// Credentials of hub `b` in a test cluster.
    fn creds(b: u8) -> Arc<Credentials> {
        let ca = ClusterCa::from_secret(&[9; 32]);
        let identity = SigningKey::from_bytes(&[b; 32]);
        let now = unix_ms();
        let req = CertificateRequest {
            hub_id: hub(b),
            name: format!("hub {b}"),
            trust: TrustLevel::Full,
            roles: vec![],
            identity_key: identity.verifying_key(),
            noise_key: [b; 32],
            not_before_ms: now - 60_000,
            not_after_ms: now + 3_600_000,
        };
        let cert_der = ca.issue(&req, &mut rand::rngs::OsRng).unwrap();
        Arc::new(Credentials {
            ca_key: ca.public_key(),
            cert_der,
            hub_id: hub(b),
            identity,
        })
    }

    /// A client and a relay WebSocket joined by an in-memory duplex.
    /// `run_session` on `ws` in a task: its command sender, event receiver, stop switch and
    /// the task.
    #[allow(clippy::type_complexity)]
    fn spawn_session(
        ws: WebSocketStream<tokio::io::DuplexStream>,
        config: RelayConfig,
    ) -> (
        mpsc::Sender<Command>,
        mpsc::Receiver<RelayEvent>,
        watch::Sender<bool>,
        JoinHandle<SessionEnd>,
    ) {
        let (cmd_tx, commands) = mpsc::channel(16);
        let (events, ev_rx) = mpsc::channel(16);
        let (stop_tx, stop) = watch::channel(false);
        let mut ends = Ends {
            commands,
            events,
            stop,
            held: None,
        };
        let session = tokio::spawn(async move { ends.run(ws, &config).await });
        (cmd_tx, ev_rx, stop_tx, session)
    }

    async fn duplex_pair() -> (
        WebSocketStream<tokio::io::DuplexStream>,
        WebSocketStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        (
            WebSocketStream::from_raw_socket(a, Role::Client, None).await,
            WebSocketStream::from_raw_socket(b, Role::Server, None).await,
        )
    }

    /// What a session runs with besides its socket, for tests that run sessions one after
    /// another.
    struct Ends {
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<RelayEvent>,
        stop: watch::Receiver<bool>,
        held: Option<VerifiedRevocations>,
    }

    impl Ends {
        async fn run(
            &mut self,
            ws: WebSocketStream<tokio::io::DuplexStream>,
            config: &RelayConfig,
        ) -> SessionEnd {
            run_session(
                ws,
                None,
                config,
                &mut self.commands,
                &self.events,
                &mut self.stop,
                &mut self.held,
            )
            .await
        }
    }

    fn config(b: u8) -> RelayConfig {
        RelayConfig::new("ws://unused", creds(b))
    }

    fn is_login_hello(frame: &Frame<'_>, h: HubId) -> bool {
        matches!(frame, Frame::Hello(Hello { version: 1, hub, extensions })
            if *hub == h && matches!(extensions.as_slice(), [Extension { kind: LOGIN_EXTENSION, .. }]))
    }

    #[test]
    fn connect_urls() {
        let c1 = "gr2q7gf5lh6pzfdnurnkvputhpqvjjfv";
        let h = HubId([0xab; 16]);
        let hex = "ab".repeat(16);
        let u = connect_url("http://127.0.0.1:8787", c1, &h).unwrap();
        assert_eq!(
            u.as_str(),
            format!("ws://127.0.0.1:8787/v1/clusters/{c1}/connect?hub={hex}")
        );
        let u = connect_url("https://relay.example.com/base/?x=1", c1, &h).unwrap();
        assert_eq!(
            u.as_str(),
            format!("wss://relay.example.com/base/v1/clusters/{c1}/connect?hub={hex}")
        );
        assert!(matches!(
            connect_url("ftp://x", c1, &h),
            Err(RelayError::InvalidUrl(_))
        ));
        assert!(matches!(
            connect_url("ws://x", "a b", &h),
            Err(RelayError::InvalidClusterId(_))
        ));
    }

    /// One session over an in-memory duplex: hello first, sends batched, events decoded,
    /// keepalive sent when idle, a clean close on shutdown.
    #[tokio::test(start_paused = true)]
    async fn session_over_duplex() {
        let (client_ws, mut relay_ws) = duplex_pair().await;
        let mut config = config(1);
        config.liveness = liveness::Settings::HUB.with_idle(5_000);
        let counters = config.counters.clone();
        let (cmd_tx, mut ev_rx, stop_tx, session) = spawn_session(client_ws, config);
        // Two sends queued before the session's first write go out in one message after the
        // hello.
        for (dst, payload) in [(hub(2), b"one"), (hub(3), b"two")] {
            let payload = payload.to_vec();
            cmd_tx.send(Command::Send { dst, payload }).await.unwrap();
        }

        let Message::Binary(first) = relay_ws.next().await.unwrap().unwrap() else {
            panic!()
        };
        let frames = decode_message(&first).unwrap();
        assert!(
            frames.len() == 1 && is_login_hello(&frames[0], hub(1)),
            "{frames:?}"
        );
        let Message::Binary(batch) = relay_ws.next().await.unwrap().unwrap() else {
            panic!()
        };
        assert_eq!(
            decode_message(&batch).unwrap(),
            vec![
                Frame::Send {
                    dst: hub(2),
                    payload: b"one"
                },
                Frame::Send {
                    dst: hub(3),
                    payload: b"two"
                }
            ]
        );
        let mut msg = Frame::Welcome {
            version: 1,
            online: vec![hub(2)],
        }
        .to_message()
        .unwrap();
        Frame::Recv {
            src: hub(2),
            payload: b"hey",
        }
        .encode(&mut msg)
        .unwrap();
        relay_ws.send(Message::Binary(msg.into())).await.unwrap();
        assert_eq!(
            ev_rx.recv().await.unwrap(),
            RelayEvent::Connected {
                online: vec![hub(2)]
            }
        );
        assert_eq!(
            ev_rx.recv().await.unwrap(),
            RelayEvent::Message {
                from: hub(2),
                payload: b"hey".to_vec()
            }
        );
        // Idle: a keepalive goes out (virtual time).
        let Message::Text(ping) = relay_ws.next().await.unwrap().unwrap() else {
            panic!()
        };
        assert_eq!(ping.as_str(), KEEPALIVE_REQUEST);
        // Counted as written: the hello, then two frames in one message, then the keepalive.
        assert_eq!(
            counters.read(),
            Sent {
                messages: 2,
                frames: 3,
                keepalives: 1
            }
        );
        relay_ws
            .send(Message::text(KEEPALIVE_RESPONSE))
            .await
            .unwrap();
        stop_tx.send(true).unwrap();
        let Message::Close(Some(frame)) = relay_ws.next().await.unwrap().unwrap() else {
            panic!()
        };
        assert_eq!(u16::from(frame.code), 1000);
        assert_eq!(session.await.unwrap(), SessionEnd::Shutdown);
    }

    /// Told it is rate-limited, the client says so to the application and sends nothing more
    /// until the retry time has passed.
    #[tokio::test]
    async fn a_rate_limited_client_pauses_and_says_so() {
        let (client_ws, mut relay_ws) = duplex_pair().await;
        let (cmd_tx, mut ev_rx, _stop_tx, _session) = spawn_session(client_ws, config(1));
        let _hello = relay_ws.next().await.unwrap().unwrap();
        let mut msg = Frame::Welcome {
            version: 1,
            online: vec![hub(2)],
        }
        .to_message()
        .unwrap();
        Frame::RateLimited {
            limited: hub(1),
            retry_after_ms: 400,
            dropped: 12,
        }
        .encode(&mut msg)
        .unwrap();
        relay_ws.send(Message::Binary(msg.into())).await.unwrap();
        assert!(matches!(
            ev_rx.recv().await.unwrap(),
            RelayEvent::Connected { .. }
        ));
        let told = std::time::Instant::now();
        assert_eq!(
            ev_rx.recv().await.unwrap(),
            RelayEvent::RateLimited {
                limited: hub(1),
                retry_after: Duration::from_millis(400),
                dropped: 12
            }
        );
        cmd_tx
            .send(Command::Send {
                dst: hub(2),
                payload: b"later".to_vec(),
            })
            .await
            .unwrap();
        let Message::Binary(sent) = relay_ws.next().await.unwrap().unwrap() else {
            panic!()
        };
        // A lower bound only: the pause is the behaviour under test, not a speed.
        assert!(
            told.elapsed() >= Duration::from_millis(390),
            "{:?}",
            told.elapsed()
        );
        assert_eq!(
            decode_message(&sent).unwrap(),
            vec![Frame::Send {
                dst: hub(2),
                payload: b"later"
            }]
        );
    }

    /// A relay that stops answering keepalives is declared dead; a relay close ends the
    /// session with its code; a malformed relay frame is a failure.
    #[tokio::test(start_paused = true)]
    async fn session_ends() {
        // Silent relay.
        let (a, _b) = tokio::io::duplex(1 << 16);
        let ws = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let mut config = config(1);
        config.liveness = liveness::Settings::HUB.with_idle(1_000);
        let (_cmd_tx, commands) = mpsc::channel(4);
        let (events, _ev_rx) = mpsc::channel(4);
        let (_stop_tx, stop) = watch::channel(false);
        let mut ends = Ends {
            commands,
            events,
            stop,
            held: None,
        };
        let end = ends.run(ws, &config).await;
        assert!(
            matches!(end, SessionEnd::Failed { ref reason, .. } if reason.contains("keepalive")),
            "{end:?}"
        );

        // Relay closes with Replaced.
        let (ws, mut relay) = duplex_pair().await;
        let task = tokio::spawn(async move {
            let _hello = relay.next().await;
            relay
                .send(close_message(CloseCode::Replaced, "newer"))
                .await
                .unwrap();
            relay
        });
        let end = ends.run(ws, &config).await;
        assert!(
            matches!(
                end,
                SessionEnd::Closed {
                    code: Some(4004),
                    ..
                }
            ),
            "{end:?}"
        );
        drop(task);

        // Relay sends garbage.
        let (ws, mut relay) = duplex_pair().await;
        let task = tokio::spawn(async move {
            let _hello = relay.next().await;
            relay
                .send(Message::Binary(vec![0xee, 0, 0, 0, 0].into()))
                .await
                .unwrap();
            relay.next().await
        });
        let end = ends.run(ws, &config).await;
        assert!(
            matches!(end, SessionEnd::Failed { ref reason, .. } if reason.contains("bad frame")),
            "{end:?}"
        );
        let closed = task.await.unwrap();
        assert!(matches!(closed, Some(Ok(Message::Close(Some(f)))) if u16::from(f.code) == 4000));
    }

    /// A relay that stops reading: once the socket's buffers are full a write waits, and after
    /// the write timeout the session ends as stalled, although the relay's keepalive answers
    /// still arrive (reading goes on while writing waits).
    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_ends_the_session() {
        let (a, b) = tokio::io::duplex(64 * 1024);
        let ws = WebSocketStream::from_raw_socket(a, Role::Client, None).await;
        let mut relay = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        let config = config(1);
        let (cmd_tx, cmd_rx) = mpsc::channel(1024);
        let (ev_tx, mut ev_rx) = mpsc::channel(16);
        let (_stop_tx, stop_rx) = watch::channel(false);
        // The relay welcomes, then only writes: keepalive answers every second, never reading.
        let task = tokio::spawn(async move {
            let _hello = relay.next().await;
            let welcome = Frame::Welcome {
                version: 1,
                online: vec![],
            };
            let welcome = welcome.to_message().unwrap();
            relay.send(Message::Binary(welcome.into())).await.unwrap();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if relay.send(Message::text(KEEPALIVE_RESPONSE)).await.is_err() {
                    break;
                }
            }
        });
        let feeder = tokio::spawn(async move {
            while cmd_tx
                .send(Command::Send {
                    dst: hub(2),
                    payload: vec![0; 60_000],
                })
                .await
                .is_ok()
            {}
        });
        let started = Instant::now();
        let mut ends = Ends {
            commands: cmd_rx,
            events: ev_tx,
            stop: stop_rx,
            held: None,
        };
        let session = ends.run(ws, &config);
        let end = tokio::select! {
            end = session => end,
            _ = async { while ev_rx.recv().await.is_some() {} } => unreachable!(),
        };
        assert!(
            matches!(end, SessionEnd::Failed { ref reason, welcomed: true } if reason.contains("stalled")),
            "{end:?}"
        );
        assert!(started.elapsed() >= WRITE_TIMEOUT);
        task.abort();
        feeder.abort();
    }

    /// A relay address that accepts the TCP connection and never answers the upgrade: the
    /// attempt ends after the connect timeout and is retried; a shutdown during an attempt ends
    /// the client at once (it once waited for the attempt, which could wait forever).
    #[tokio::test(start_paused = true)]
    async fn connecting_is_bounded_and_shutdown_cancels_it() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let mut client = RelayClient::spawn(RelayConfig::new(url, creds(1))).unwrap();
        match client.next_event().await.unwrap() {
            RelayEvent::Disconnected {
                reason, retry_in, ..
            } => {
                assert!(reason.contains("no answer within 15 s"), "{reason}");
                assert!(retry_in.is_some());
            }
            other => panic!("{other:?}"),
        }
        // The next attempt is under way (and would never finish by itself).
        tokio::time::sleep(Duration::from_secs(5)).await;
        let stopped = tokio::time::timeout(Duration::from_secs(1), client.shutdown()).await;
        assert!(
            stopped.is_ok(),
            "shutdown waited for the connection attempt"
        );
        drop(listener);
    }
}
