//! `hub relay`: the relay run natively over tokio, for users without Cloudflare and as a fast
//! host for tests. Same URLs, same frames, same room logic (`shared_proto::relay::room`), same close
//! codes as the Worker.
//!
//! Each TCP connection is served by [`serve_connection`] with hyper (the request head must arrive
//! within [`HEAD_TIMEOUT`]) and routed exactly like the Worker's `fetch` (health text, 400, 404,
//! 426); a WebSocket upgrade to `/v1/clusters/{id}/connect?hub={hub_id}` joins that cluster's
//! room, unless the room keeps that hub out for its rate (`429`, no socket). A room is
//! a `Room` behind a mutex plus one outgoing queue per socket; the reader of each socket feeds the
//! room, and a writer task per socket drains its queue. When a message leaves a receiver's queue above
//! [`PUSHBACK_BYTES`], the reader of the socket that sent it waits (reads nothing more) until that
//! queue drains below it: a fast sender is slowed to what its receiver takes, through TCP, and
//! the receiver is not punished. A socket whose queue still reaches [`MAX_QUEUED_BYTES`] (many
//! senders at once, a receiver that stopped reading) is closed as a slow consumer, so one stalled
//! hub cannot make the relay buffer without bound.
//!
//! Deadlines (no `Hello` in time, a pairing guest's lifetime, a member idle past
//! [`IDLE_TIMEOUT_MS`]) are the room's: one timer task per room sleeps until
//! `Room::poll_timeout` and calls `Room::handle_timeout`. At most [`MAX_CONNECTIONS`] TCP
//! connections are served at once (`--max-connections`); past that, new ones are closed at once.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use shared_proto::relay::frame::{Frame, KEEPALIVE_REQUEST, KEEPALIVE_RESPONSE, PROTOCOL_VERSION};
use shared_proto::relay::path::{
    claimed_hub, kept_out_text, retry_after_secs, route, Route, BAD_CLUSTER_ID, BAD_HUB,
    KEPT_OUT_STATUS, NO_PAGE,
};
use shared_proto::relay::room::{Action, ConnId, MemberInfo, Room, RoomConfig, Sockets};
use shared_proto::trust::login::LoginNonce;
use shared_proto::trust::ClusterId;
use shared_proto::{CloseCode, HubId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{
    CloseCode as WsCloseCode, Data, OpCode,
};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};

use crate::transport::relay::ws_config;
use crate::unix_ms;

mod nonces;
use nonces::NonceLog;

/// Bytes queued for one socket before it is closed as a slow consumer.
pub const MAX_QUEUED_BYTES: usize = 32 * 1024 * 1024;

/// Bytes queued for one socket above which its senders wait for it.
pub const PUSHBACK_BYTES: usize = 4 * 1024 * 1024;

/// How long a connection has to send its whole HTTP request head.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Most TCP connections served at once, by default.
pub const MAX_CONNECTIONS: usize = 16_384;

/// The read buffer a connection starts with. tungstenite's default (128 KiB) is zeroed at the
/// first read and so stays resident for every idle hub; a frame longer than this is read into
/// room reserved for its whole length, so the buffer grows only for traffic and comes back.
const READ_BUFFER: usize = 4096;

/// A message longer than this goes out as WebSocket fragments of this size (RFC 6455 section
/// 5.4; the hub's WebSocket joins them). tungstenite's write buffer keeps the capacity of the
/// largest frame it has written for the life of the connection: sent whole, every hub of a big
/// room would keep its `Welcome` (16 bytes per hub online) and the largest presence batch it
/// was sent, idle or not. Each fragment is flushed before the next is written.
const WRITE_FRAGMENT: usize = 4096;

pub use shared_proto::relay::room::IDLE_TIMEOUT_MS;

/// How long one write to a socket may take before the socket is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest HTTP request head read before the upgrade.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// What the writer task of a socket does next.
#[derive(Debug)]
enum Outgoing {
    Binary(Vec<u8>),
    Text(&'static str),
    Close(CloseCode, String),
}

#[derive(Debug)]
struct Peer {
    tx: mpsc::UnboundedSender<Outgoing>,
    queue: Arc<Queue>,
}

/// The bytes waiting in one socket's outgoing queue, and a signal when it drains.
#[derive(Debug, Default)]
struct Queue {
    bytes: AtomicUsize,
    drained: tokio::sync::Notify,
    /// Set when the writer stopped: nobody waits for this queue any more.
    closed: std::sync::atomic::AtomicBool,
}

impl Queue {
    fn congested(&self) -> bool {
        !self.closed.load(Ordering::Relaxed) && self.bytes.load(Ordering::Relaxed) > PUSHBACK_BYTES
    }

    /// Waits until the queue is back below [`PUSHBACK_BYTES`] or its writer stopped, at most
    /// the write timeout (a writer that cannot write for that long gives up).
    async fn wait_drained(&self) {
        let wait = async {
            loop {
                let drained = self.drained.notified();
                tokio::pin!(drained);
                drained.as_mut().enable();
                if !self.congested() {
                    return;
                }
                drained.await;
            }
        };
        let _ = tokio::time::timeout(WRITE_TIMEOUT, wait).await;
    }
}

#[derive(Debug)]
struct RoomEntry {
    room: Room,
    peers: Peers,
    /// Wakes the room's timer task when a deadline earlier than the one it sleeps for appears.
    timer: Arc<tokio::sync::Notify>,
    /// The deadline the timer task sleeps until.
    armed: Option<u64>,
}

/// A signed document a room keeps for its cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kept {
    /// The newest revocation list.
    Revocations,
    /// The old CA's successor document (a rotation).
    Successor,
}

impl Kept {
    fn extension(self) -> &'static str {
        match self {
            Kept::Revocations => "revocations",
            Kept::Successor => "successor",
        }
    }
}

/// The relay's rooms, one per cluster id, and each cluster's newest revocation list and
/// successor document (kept while the relay runs, and in `state_dir` if it has one, so that
/// they survive restarts).
#[derive(Debug)]
pub struct Relay {
    rooms: Mutex<HashMap<ClusterId, Arc<Mutex<RoomEntry>>>>,
    documents: Mutex<HashMap<(ClusterId, Kept), Vec<u8>>>,
    state_dir: Option<PathBuf>,
    allowed: Option<Vec<ClusterId>>,
    next_conn: AtomicU64,
    connections: Arc<tokio::sync::Semaphore>,
    idle_timeout_ms: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a room half-updated in a way that matters
    // more than losing the relay; recover the guard rather than poisoning every later caller.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Relay {
    /// A relay that keeps revocation lists in `state_dir` (created if missing), or only in
    /// memory without one.
    pub fn new(state_dir: Option<PathBuf>) -> std::io::Result<Self> {
        if let Some(dir) = &state_dir {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Relay {
            rooms: Mutex::default(),
            documents: Mutex::default(),
            state_dir,
            allowed: None,
            next_conn: AtomicU64::new(0),
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            idle_timeout_ms: IDLE_TIMEOUT_MS,
        })
    }

    /// Closes an admitted hub that sends nothing for this long (default [`IDLE_TIMEOUT_MS`]).
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout_ms = timeout.as_millis().min(u128::from(u64::MAX)) as u64;
        self
    }

    /// Serves at most `max` TCP connections at once (default [`MAX_CONNECTIONS`]).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.connections = Arc::new(tokio::sync::Semaphore::new(max));
        self
    }

    /// Serves only these clusters (like the Worker's `ALLOWED_CLUSTERS`); others are closed
    /// with 4019 as soon as their WebSocket opens.
    pub fn serve_only(mut self, clusters: Vec<ClusterId>) -> Self {
        self.allowed = Some(clusters);
        self
    }

    /// How much longer `hub` is kept out of `cluster`'s room for its rate (ms), if it is.
    fn kept_out(&self, cluster: &ClusterId, hub: &HubId) -> Option<u64> {
        let entry = lock(&self.rooms).get(cluster).cloned()?;
        let e = lock(&entry);
        e.room.kept_out(hub, unix_ms())
    }

    fn serves(&self, cluster: &ClusterId) -> bool {
        self.allowed
            .as_ref()
            .is_none_or(|list| list.contains(cluster))
    }

    fn document_path(&self, kind: Kept, cluster: &ClusterId) -> Option<PathBuf> {
        self.state_dir
            .as_ref()
            .map(|d| d.join(format!("{cluster}.{}", kind.extension())))
    }

    /// The document of `kind` known for `cluster`: in memory, else on disk.
    fn stored_document(&self, kind: Kept, cluster: &ClusterId) -> Option<Vec<u8>> {
        let key = (cluster.clone(), kind);
        if let Some(bytes) = lock(&self.documents).get(&key) {
            return Some(bytes.clone());
        }
        let bytes = std::fs::read(self.document_path(kind, cluster)?).ok()?;
        lock(&self.documents).insert(key, bytes.clone());
        Some(bytes)
    }

    /// Keeps a document the room accepted (a newer list, the first successor).
    fn keep_document(&self, kind: Kept, cluster: &ClusterId, bytes: Vec<u8>) {
        if let Some(path) = self.document_path(kind, cluster) {
            // Write then rename: a crash leaves the old document or the new one, never half.
            let tmp = path.with_extension(format!("{}.tmp", kind.extension()));
            if let Err(e) = std::fs::write(&tmp, &bytes).and_then(|()| std::fs::rename(&tmp, &path))
            {
                tracing::error!(%cluster, "could not store the {}: {e}", kind.extension());
            }
        }
        lock(&self.documents).insert((cluster.clone(), kind), bytes);
    }

    fn room(&self, cluster: &ClusterId) -> Arc<Mutex<RoomEntry>> {
        let mut rooms = lock(&self.rooms);
        if let Some(entry) = rooms.get(cluster) {
            return entry.clone();
        }
        // Forget rooms that hold nothing worth keeping (no socket, no live login nonce).
        let now = unix_ms();
        rooms.retain(|_, e| !lock(e).room.is_idle(now));
        let mut config = RoomConfig::new(cluster.clone(), now);
        config.idle_timeout_ms = Some(self.idle_timeout_ms);
        let mut room = Room::new(config);
        if let Some(bytes) = self.stored_document(Kept::Revocations, cluster) {
            room.set_revocations(&bytes);
        }
        if let Some(bytes) = self.stored_document(Kept::Successor, cluster) {
            room.set_successor(&bytes);
        }
        let mut peers = Peers::default();
        if let Some(dir) = &self.state_dir {
            match NonceLog::open(dir.join(format!("{cluster}.nonces")), now) {
                Ok((log, live)) => {
                    for login in live {
                        room.remember_login(login);
                    }
                    peers.nonces = Some(log);
                }
                Err(e) => tracing::error!(%cluster, "could not open the login nonce file: {e}"),
            }
        }
        let timer = Arc::new(tokio::sync::Notify::new());
        let entry = Arc::new(Mutex::new(RoomEntry {
            room,
            peers,
            timer: timer.clone(),
            armed: None,
        }));
        tokio::spawn(run_timers(Arc::downgrade(&entry), timer));
        rooms.insert(cluster.clone(), entry.clone());
        entry
    }

    fn forget_if_empty(&self, cluster_id: &ClusterId, entry: &Arc<Mutex<RoomEntry>>) {
        let mut rooms = lock(&self.rooms);
        if lock(entry).room.is_idle(unix_ms()) {
            rooms.remove(cluster_id);
        }
    }

    /// Tells every socket that the relay is going away, then closes it with 1001.
    pub fn announce_restart(&self, reconnect_after: Duration) {
        let notice = Frame::Restarting {
            reconnect_after_ms: reconnect_after.as_millis().min(u128::from(u32::MAX)) as u32,
        }
        .to_message()
        .ok();
        for entry in lock(&self.rooms).values() {
            for peer in lock(entry).peers.map.values() {
                if let Some(notice) = &notice {
                    let _ = peer.tx.send(Outgoing::Binary(notice.clone()));
                }
                let _ = peer.tx.send(Outgoing::Close(
                    CloseCode::GoingAway,
                    "relay restarting".into(),
                ));
            }
        }
    }
}

/// The sockets of one room (each one's outgoing queue), a revocation list to store, and the
/// room's login nonce file (with a state directory).
#[derive(Debug, Default)]
struct Peers {
    map: HashMap<ConnId, Peer>,
    /// Documents the room accepted during the current `perform`, to keep.
    store: Vec<(Kept, Vec<u8>)>,
    nonces: Option<NonceLog>,
    /// Queues that went past [`PUSHBACK_BYTES`] during the current `perform`.
    congested: Vec<Arc<Queue>>,
}

impl Sockets for Peers {
    fn send(&mut self, conn: ConnId, message: Vec<u8>) -> Result<(), CloseCode> {
        let Some(peer) = self.map.get(&conn) else {
            return Ok(());
        };
        let len = message.len();
        let queued = peer.queue.bytes.fetch_add(len, Ordering::Relaxed) + len;
        if queued > MAX_QUEUED_BYTES {
            peer.queue.bytes.fetch_sub(len, Ordering::Relaxed);
            return Err(CloseCode::SlowConsumer);
        }
        if queued > PUSHBACK_BYTES && !self.congested.iter().any(|q| Arc::ptr_eq(q, &peer.queue)) {
            self.congested.push(peer.queue.clone());
        }
        peer.tx
            .send(Outgoing::Binary(message))
            .map_err(|_| CloseCode::InternalError)
    }

    fn close(&mut self, conn: ConnId, code: CloseCode, reason: String) {
        if let Some(peer) = self.map.remove(&conn) {
            let _ = peer.tx.send(Outgoing::Close(code, reason));
        }
    }

    fn admitted(&mut self, _conn: ConnId, _member: MemberInfo) {}

    fn store_revocations(&mut self, bytes: Vec<u8>) {
        self.store.push((Kept::Revocations, bytes));
    }

    fn store_successor(&mut self, bytes: Vec<u8>) {
        self.store.push((Kept::Successor, bytes));
    }

    /// Written before the hub is welcomed (the room asks before it sends the `Welcome`), so a
    /// login accepted once is refused after a restart too. Without a state directory, the
    /// room's memory is all there is.
    fn remember_login(&mut self, login: LoginNonce) {
        if let Some(log) = &mut self.nonces {
            if let Err(e) = log.append(&login, unix_ms()) {
                tracing::error!("could not store a login nonce: {e}");
            }
        }
    }
}

impl RoomEntry {
    /// Carries out the room's actions (the room is locked by the caller), and wakes the timer
    /// task if the room now has an earlier deadline; returns a revocation list to store, if the
    /// room accepted one.
    fn perform(&mut self, actions: Vec<Action>) -> Vec<(Kept, Vec<u8>)> {
        self.room.perform(actions, &mut self.peers);
        if let Some(at) = self.room.poll_timeout() {
            if self.armed.is_none_or(|armed| at < armed) {
                self.armed = Some(at);
                self.timer.notify_one();
            }
        }
        std::mem::take(&mut self.peers.store)
    }
}

/// A room's timer task: sleeps until the room's earliest deadline and hands it to the room.
/// Ends once the room is forgotten.
async fn run_timers(entry: std::sync::Weak<Mutex<RoomEntry>>, timer: Arc<tokio::sync::Notify>) {
    // Without a deadline, look again this often (to notice that the room is gone).
    const IDLE_CHECK: Duration = Duration::from_secs(60);
    loop {
        let next = {
            let Some(entry) = entry.upgrade() else {
                return;
            };
            let mut e = lock(&entry);
            e.armed = e.room.poll_timeout();
            e.armed
        };
        let sleep = next.map_or(IDLE_CHECK, |at| {
            Duration::from_millis(at.saturating_sub(unix_ms()))
        });
        tokio::select! {
            () = tokio::time::sleep(sleep) => {}
            () = timer.notified() => continue,
        }
        if next.is_none() {
            continue;
        }
        let Some(entry) = entry.upgrade() else {
            return;
        };
        let mut e = lock(&entry);
        let mut actions = Vec::new();
        e.room.handle_timeout(unix_ms(), &mut actions);
        let _ = e.perform(actions);
    }
}

/// Accepts connections until `shutdown` turns true; then announces a restart to every hub.
pub async fn serve(
    listener: TcpListener,
    relay: Arc<Relay>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                relay.announce_restart(Duration::from_secs(1));
                // Let the writers flush their close frames.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return Ok(());
            }
            accepted = listener.accept() => {
                let (stream, addr) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = relay.connections.clone().try_acquire_owned() else {
                    // Full: the connection is dropped at once (the hub retries with backoff).
                    tracing::warn!(%addr, "connection limit reached; closing a new connection");
                    continue;
                };
                tokio::spawn(serve_connection(stream, addr, relay.clone(), Arc::new(permit)));
            }
        }
    }
}

/// Serves one TCP connection with hyper: plain HTTP answers (routed exactly like the Worker's
/// `fetch`: health text, 400, 404, 426), or a WebSocket upgrade into a room. The request head
/// must arrive within [`HEAD_TIMEOUT`]. `permit` (a place under `--max-connections`) is held
/// until the connection and any WebSocket it became are gone.
pub async fn serve_connection(
    stream: TcpStream,
    addr: SocketAddr,
    relay: Arc<Relay>,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) {
    let _ = stream.set_nodelay(true);
    let service = hyper::service::service_fn(move |req| {
        let (relay, permit) = (relay.clone(), permit.clone());
        async move { Ok::<_, std::convert::Infallible>(handle_request(req, addr, relay, permit)) }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_REQUEST_HEAD)
        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
        .with_upgrades()
        .await;
    if let Err(e) = served {
        tracing::debug!(%addr, "connection ended: {e}");
    }
}

type Body = http_body_util::Full<hyper::body::Bytes>;

/// A plain-text answer, as the Worker gives; the connection closes after it.
fn text(status: u16, body: impl Into<String>) -> hyper::Response<Body> {
    let mut resp = hyper::Response::new(Body::from(body.into()));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("close"),
    );
    resp
}

fn handle_request(
    req: hyper::Request<hyper::body::Incoming>,
    addr: SocketAddr,
    relay: Arc<Relay>,
    permit: Arc<tokio::sync::OwnedSemaphorePermit>,
) -> hyper::Response<Body> {
    let cluster_id = match route(req.uri().path()) {
        Route::Health => {
            return text(
                200,
                format!(
                    "hub relay: relay protocol v{PROTOCOL_VERSION}; connect at /v1/clusters/{{cluster_id}}/connect\n"
                ),
            )
        }
        Route::NotFound => return text(404, "not found\n"),
        Route::Page(_) => return text(404, NO_PAGE),
        Route::BadClusterId => return text(400, BAD_CLUSTER_ID),
        Route::Connect(id) => match id.parse::<ClusterId>() {
            Ok(c) => c,
            Err(_) => return text(400, BAD_CLUSTER_ID),
        },
    };
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let upgrade =
        header(hyper::header::UPGRADE).is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = header(hyper::header::SEC_WEBSOCKET_KEY).map(str::to_owned);
    let (true, true, Some(key)) = (req.method() == hyper::Method::GET, upgrade, key) else {
        let mut resp = text(
            426,
            "this endpoint takes a WebSocket upgrade (GET with Upgrade: websocket)\n",
        );
        resp.headers_mut().insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static("websocket"),
        );
        return resp;
    };
    let Ok(hub) = claimed_hub(req.uri().query()) else {
        return text(400, BAD_HUB);
    };
    if let Some(wait) = hub.and_then(|hub| relay.kept_out(&cluster_id, &hub)) {
        let mut resp = text(KEPT_OUT_STATUS, kept_out_text(wait));
        resp.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from(retry_after_secs(wait)),
        );
        return resp;
    }
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::debug!(%addr, "upgrade failed: {e}");
                return;
            }
        };
        let io = hyper_util::rt::TokioIo::new(upgraded);
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            io,
            tokio_tungstenite::tungstenite::protocol::Role::Server,
            Some(ws_config().read_buffer_size(READ_BUFFER)),
        )
        .await;
        if relay.serves(&cluster_id) {
            run_socket(ws, addr, &relay, &cluster_id, hub).await;
        } else {
            let frame = CloseFrame {
                code: WsCloseCode::from(CloseCode::ClusterNotServed.code()),
                reason: "this relay does not serve this cluster".into(),
            };
            let _ = ws.close(Some(frame)).await;
        }
        drop(permit);
    });
    let mut resp = hyper::Response::new(Body::default());
    *resp.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let headers = resp.headers_mut();
    headers.insert(
        hyper::header::UPGRADE,
        hyper::header::HeaderValue::from_static("websocket"),
    );
    headers.insert(
        hyper::header::CONNECTION,
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    if let Ok(accept) = hyper::header::HeaderValue::from_str(&accept) {
        headers.insert(hyper::header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    resp
}

async fn run_socket<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    addr: SocketAddr,
    relay: &Relay,
    cluster_id: &ClusterId,
    hub: Option<HubId>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = ConnId(relay.next_conn.fetch_add(1, Ordering::Relaxed));
    let entry = relay.room(cluster_id);
    let (tx, rx) = mpsc::unbounded_channel();
    let queue = Arc::new(Queue::default());
    {
        let mut e = lock(&entry);
        e.peers.map.insert(
            conn,
            Peer {
                tx: tx.clone(),
                queue: queue.clone(),
            },
        );
        let mut actions = Vec::new();
        e.room.handle_connect(conn, unix_ms(), hub, &mut actions);
        let _ = e.perform(actions);
    }
    let (sink, mut stream) = ws.split();
    // The writer ends after the room closes the socket (its close frame sent), or on a failed
    // write; the reader stops with it.
    let mut writer = tokio::spawn(write_loop(sink, rx, queue));

    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            _ = &mut writer => break,
        };
        let mut actions = Vec::new();
        match next {
            Some(Ok(Message::Binary(bytes))) => {
                let (alive, stored, congested, throttled) = {
                    let mut e = lock(&entry);
                    let now = unix_ms();
                    e.room.handle_message(conn, now, &bytes, &mut actions);
                    let stored = e.perform(actions);
                    let congested = std::mem::take(&mut e.peers.congested);
                    let throttled = e.room.throttled_until(conn, now);
                    (
                        e.peers.map.contains_key(&conn),
                        stored,
                        congested,
                        throttled,
                    )
                };
                for (kind, bytes) in stored {
                    relay.keep_document(kind, cluster_id, bytes);
                }
                if !alive {
                    // The room closed this socket (protocol error, replaced, slow, revoked).
                    break;
                }
                // Push back: read nothing more from this sender until its receivers caught up,
                // and, over its rate limit, until the limit lets it send again (the room told
                // it so): a flood waits in its own TCP buffers, not in the relay.
                for queue in congested {
                    queue.wait_drained().await;
                }
                if let Some(until) = throttled {
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(until.saturating_sub(unix_ms()))) => {}
                        _ = &mut writer => break,
                    }
                }
            }
            Some(Ok(Message::Text(t))) if t.as_str() == KEEPALIVE_REQUEST => {
                lock(&entry).room.handle_keepalive(conn, unix_ms());
                let _ = tx.send(Outgoing::Text(KEEPALIVE_RESPONSE));
            }
            Some(Ok(Message::Text(_))) => {
                let mut e = lock(&entry);
                e.room.handle_text(conn, &mut actions);
                let _ = e.perform(actions);
                break;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Ok(Message::Close(_))) | None => break,
            Some(Err(WsError::Capacity(e))) => {
                close_now(&entry, conn, CloseCode::TooLarge, e.to_string());
                break;
            }
            Some(Err(e)) => {
                tracing::debug!(%addr, "socket error: {e}");
                break;
            }
        }
    }
    {
        let mut e = lock(&entry);
        let mut actions = Vec::new();
        e.room.handle_disconnect(conn, unix_ms(), &mut actions);
        let _ = e.perform(actions);
        if let Some(peer) = e.peers.map.remove(&conn) {
            let _ = peer
                .tx
                .send(Outgoing::Close(CloseCode::Normal, "closed".into()));
        }
    }
    drop(tx);
    if !writer.is_finished() {
        let _ = writer.await;
    }
    relay.forget_if_empty(cluster_id, &entry);
}

/// Sends one binary message: whole, or past [`WRITE_FRAGMENT`] bytes as fragments of that
/// size, each flushed.
async fn send_binary<S>(sink: &mut S, message: Vec<u8>) -> Result<(), WsError>
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    if message.len() <= WRITE_FRAGMENT {
        return sink.send(Message::Binary(message.into())).await;
    }
    let message = Bytes::from(message);
    let mut start = 0;
    while start < message.len() {
        let end = (start + WRITE_FRAGMENT).min(message.len());
        let opcode = if start == 0 {
            Data::Binary
        } else {
            Data::Continue
        };
        let fragment = WsFrame::message(
            message.slice(start..end),
            OpCode::Data(opcode),
            end == message.len(),
        );
        sink.send(Message::Frame(fragment)).await?;
        start = end;
    }
    Ok(())
}

/// Closes a socket for a reason the room did not see (transport limits, timeouts).
fn close_now(entry: &Mutex<RoomEntry>, conn: ConnId, code: CloseCode, reason: String) {
    let mut e = lock(entry);
    if let Some(peer) = e.peers.map.remove(&conn) {
        let _ = peer.tx.send(Outgoing::Close(code, reason));
    }
    let mut actions = Vec::new();
    e.room.handle_disconnect(conn, unix_ms(), &mut actions);
    let _ = e.perform(actions);
}

async fn write_loop<S>(sink: S, rx: mpsc::UnboundedReceiver<Outgoing>, queue: Arc<Queue>)
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    write_messages(sink, rx, &queue).await;
    queue.closed.store(true, Ordering::Relaxed);
    queue.drained.notify_waiters();
}

async fn write_messages<S>(mut sink: S, mut rx: mpsc::UnboundedReceiver<Outgoing>, queue: &Queue)
where
    S: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    while let Some(out) = rx.recv().await {
        let sent = match out {
            Outgoing::Binary(bytes) => {
                let before = queue.bytes.fetch_sub(bytes.len(), Ordering::Relaxed);
                if before > PUSHBACK_BYTES && before - bytes.len() <= PUSHBACK_BYTES {
                    queue.drained.notify_waiters();
                }
                tokio::time::timeout(WRITE_TIMEOUT, send_binary(&mut sink, bytes)).await
            }
            Outgoing::Text(t) => {
                tokio::time::timeout(WRITE_TIMEOUT, sink.send(Message::text(t))).await
            }
            Outgoing::Close(code, reason) => {
                let close = Message::Close(Some(CloseFrame {
                    code: WsCloseCode::from(code.code()),
                    reason: reason.into(),
                }));
                let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(close)).await;
                // When the peer closed first, tungstenite refuses to send our close frame and has
                // queued its answer to the peer's instead (RFC 6455 section 5.5.1: the same code):
                // closing the sink flushes it either way.
                let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.close()).await;
                return;
            }
        };
        if !matches!(sent, Ok(Ok(()))) {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_long_message_goes_as_fragments_that_join_into_it() {
        let message: Vec<u8> = (0..3 * WRITE_FRAGMENT + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        let mut sent: Vec<Message> = Vec::new();
        let mut sink = (&mut sent).sink_map_err(|never: std::convert::Infallible| match never {});
        send_binary(&mut sink, message.clone()).await.unwrap();
        let frames: Vec<WsFrame> = sent
            .into_iter()
            .map(|m| match m {
                Message::Frame(f) => f,
                other => panic!("not a raw frame: {other:?}"),
            })
            .collect();
        let shape: Vec<(OpCode, bool, usize)> = frames
            .iter()
            .map(|f| (f.header().opcode, f.header().is_final, f.payload().len()))
            .collect();
        assert_eq!(
            shape,
            vec![
                (OpCode::Data(Data::Binary), false, WRITE_FRAGMENT),
                (OpCode::Data(Data::Continue), false, WRITE_FRAGMENT),
                (OpCode::Data(Data::Continue), false, WRITE_FRAGMENT),
                (OpCode::Data(Data::Continue), true, 5),
            ]
        );
        let joined: Vec<u8> = frames.iter().flat_map(|f| f.payload().to_vec()).collect();
        assert_eq!(joined, message);
    }
}
