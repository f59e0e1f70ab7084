//! The hub relay as a Cloudflare Worker.
//!
//! Flow: [`fetch`] routes `GET /v1/clusters/{cluster_id}/connect?hub={hub_id}` to the Durable
//! Object named by the cluster id ([`RelayRoom`]); the object answers `429` to a hub the room
//! keeps out for its rate (no socket, so a flooder that reconnects at once costs one answer;
//! the front Worker remembers that answer until its `Retry-After` and gives it itself), else
//! accepts the WebSocket with the Hibernation API and hands every event to
//! `shared_proto::relay::room::Room`, which checks logins, routes frames and
//! enforces revocations, then carries out the actions it returns. The Worker has no logic of its
//! own beyond that adapter, and no per-cluster configuration: the room trusts the cluster CA key
//! that the cluster id names.
//!
//! What survives hibernation: the sockets (the runtime keeps them); per socket, an attachment
//! with its connection id, when it was accepted, the hub its URL named, and its member info once
//! admitted (for a
//! pairing guest, its admission time and message count); and in the object's storage, the
//! cluster id, the newest revocation list and the login nonces. The room is rebuilt from those
//! on the first event after a wake-up.
//!
//! The hot path is a message that is one `Send` frame to a member: `webSocketMessage` runs
//! synchronously (no `Promise` unless something must be stored), finds the socket's connection
//! id in a `WeakMap`, reads only the frame's routing header into wasm, asks `Room::forward`, and
//! sends the runtime's own buffer on with that header rewritten to a `Recv`: the payload never
//! enters wasm memory. Everything else takes the room's general path (`Room::handle_message`).
//! docs/BENCHMARKS.md ("The Worker against a JS Durable Object") has what this saves.
//!
//! Deadlines are the room's (`Room::poll_timeout`): the object keeps one alarm, set to the
//! earliest of them after every event, and hands the alarm to `Room::handle_timeout`. A room of
//! members only has no deadline, so an idle cluster sets no alarm and is never woken.
//!
//! Nothing here may panic: a panic aborts the wasm instance and drops every hub in the room. All
//! fallible calls go through `Result`, and JS errors are logged and mapped to close code 1011.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use shared_proto::relay::frame::{
    KEEPALIVE_REQUEST, KEEPALIVE_RESPONSE, PROTOCOL_VERSION, ROUTING_HEADER_LEN,
};
use shared_proto::relay::path::{
    claimed_hub, kept_out_text, page_content_type, retry_after_secs, route, Route, BAD_CLUSTER_ID,
    BAD_HUB, KEPT_OUT_STATUS, NO_PAGE, PAGE,
};
use shared_proto::relay::room::{Action, ConnId, MemberInfo, Room, RoomConfig, Sockets};
use shared_proto::trust::login::LoginNonce;
use shared_proto::trust::ClusterId;
use shared_proto::{CloseCode, HubId};
use worker::wasm_bindgen::{self, prelude::wasm_bindgen, JsCast, JsValue};
use worker::{
    console_error, event, worker_sys, Context, Env, ListOptions, Request, Response,
    ResponseBuilder, Result, ScheduledTime, State, WebSocket, WebSocketPair,
};

/// The Durable Object binding name in `wrangler.toml`.
const ROOMS_BINDING: &str = "ROOMS";

/// Optional Worker variable: a comma-separated list of the cluster ids this relay serves.
const ALLOWED_CLUSTERS_VAR: &str = "ALLOWED_CLUSTERS";

/// Storage keys of the object: the cluster id (stored at the room's first login, so that a
/// connect to a cluster nobody logs in to leaves nothing behind), the newest revocation list, one
/// key per accepted login nonce (`n:` + hex nonce -> timestamp), kept while the login could be
/// replayed, and one per hub kept out for flooding (`p:` + hex hub id -> `until_ms,strikes`),
/// kept while its penalty counts.
const CLUSTER_KEY: &str = "cluster";
const REVOCATIONS_KEY: &str = "revocations";
/// Storage key of the old CA's successor document, once a rotation published one (hex).
const SUCCESSOR_KEY: &str = "successor";
const NONCE_PREFIX: &str = "n:";
const PENALTY_PREFIX: &str = "p:";

#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let url = req.url()?;
    match route(url.path()) {
        Route::Health => text(
            200,
            format!(
                "hub relay: relay protocol v{PROTOCOL_VERSION}; connect at /v1/clusters/{{cluster_id}}/connect\n"
            ),
        ),
        Route::NotFound => text(404, "not found\n".into()),
        Route::BadClusterId => text(400, BAD_CLUSTER_ID.into()),
        Route::Page(file) => page(url.clone(), &env, file).await,
        Route::Connect(cluster_id) => {
            if req.method() != worker::Method::Get || !is_websocket_upgrade(&req) {
                return text(
                    426,
                    "this endpoint takes a WebSocket upgrade (GET with Upgrade: websocket)\n"
                        .into(),
                );
            }
            let Ok(hub) = claimed_hub(url.query()) else {
                return text(400, BAD_HUB.into());
            };
            if !serves(&env, cluster_id) {
                return refuse_socket(CloseCode::ClusterNotServed, "this relay does not serve this cluster");
            }
            let now = now_ms();
            let wait = hub.and_then(|hub| KEPT_OUT.with(|k| k.borrow_mut().wait(cluster_id, &hub, now)));
            if let Some(wait) = wait {
                return kept_out(wait);
            }
            let stub = env
                .durable_object(ROOMS_BINDING)?
                .id_from_name(cluster_id)?
                .get_stub()?;
            let resp = stub.fetch_with_request(req).await?;
            if let (KEPT_OUT_STATUS, Some(hub)) = (resp.status_code(), hub) {
                if let Ok(Some(secs)) = resp.headers().get("retry-after") {
                    if let Ok(secs) = secs.parse::<u64>() {
                        let until = now.saturating_add(secs.saturating_mul(1000));
                        KEPT_OUT.with(|k| k.borrow_mut().insert(cluster_id, hub, until, now));
                    }
                }
            }
            Ok(resp)
        }
    }
}

/// The binding of the Worker's static assets (wrangler.toml's `[assets]`): the phone page.
const ASSETS_BINDING: &str = "ASSETS";

/// A file of the phone page, from the static assets. On Cloudflare the assets are served before
/// the Worker runs; this serves them where they are a plain binding (workerd with a disk
/// service), with the type each needs (a module script must be JavaScript).
async fn page(mut url: worker::Url, env: &Env, file: &str) -> Result<Response> {
    if file.is_empty() {
        url.set_path(&format!("{PAGE}/"));
        return Response::redirect_with_status(url, 308);
    }
    let Ok(assets) = env.assets(ASSETS_BINDING) else {
        return text(404, NO_PAGE.into());
    };
    let path = if file.ends_with('/') {
        format!("{PAGE}{file}index.html")
    } else {
        format!("{PAGE}{file}")
    };
    url.set_path(&path);
    url.set_query(None);
    let mut found = assets.fetch(url.to_string(), None).await?;
    if found.status_code() != 200 {
        return text(404, "not found\n".into());
    }
    let body = found.bytes().await?;
    Ok(ResponseBuilder::new()
        .with_status(200)
        .with_header("content-type", page_content_type(&path))?
        .with_header("x-content-type-options", "nosniff")?
        .with_header("cache-control", "no-cache")?
        .fixed(body))
}

/// Most hubs the front Worker remembers as kept out (per isolate).
const MAX_KEPT_OUT: usize = 1024;

thread_local! {
    /// Hubs a room answered `429` for, until their `Retry-After`: this isolate answers their
    /// next connects itself, so a kept-out hub that reconnects at once costs the room nothing.
    static KEPT_OUT: RefCell<KeptOut> = RefCell::new(KeptOut::default());
}

/// The front Worker's memory of `429` answers: (cluster id, hub) -> until (Unix ms), at most
/// [`MAX_KEPT_OUT`] entries. Losing it (another isolate, an eviction) only sends the next
/// connect on to the room, which refuses it again.
#[derive(Debug, Default)]
struct KeptOut(HashMap<(String, HubId), u64>);

impl KeptOut {
    fn wait(&mut self, cluster: &str, hub: &HubId, now: u64) -> Option<u64> {
        let key = (cluster.to_owned(), *hub);
        match self.0.get(&key) {
            Some(&until) if now < until => Some(until - now),
            Some(_) => {
                self.0.remove(&key);
                None
            }
            None => None,
        }
    }

    fn insert(&mut self, cluster: &str, hub: HubId, until: u64, now: u64) {
        if self.0.len() >= MAX_KEPT_OUT {
            self.0.retain(|_, &mut t| now < t);
        }
        if self.0.len() < MAX_KEPT_OUT {
            self.0.insert((cluster.to_owned(), hub), until);
        }
    }
}

/// The answer to a hub kept out for its rate: `429`, `Retry-After`, why.
fn kept_out(wait_ms: u64) -> Result<Response> {
    let mut resp = text(KEPT_OUT_STATUS, kept_out_text(wait_ms))?;
    resp.headers_mut()
        .set("retry-after", &retry_after_secs(wait_ms).to_string())?;
    Ok(resp)
}

fn is_websocket_upgrade(req: &Request) -> bool {
    matches!(req.headers().get("Upgrade"), Ok(Some(v)) if v.eq_ignore_ascii_case("websocket"))
}

/// Whether `ALLOWED_CLUSTERS` (if set) lists the cluster.
fn serves(env: &Env, cluster_id: &str) -> bool {
    match env.var(ALLOWED_CLUSTERS_VAR) {
        Ok(list) => {
            let list = list.to_string();
            list.trim().is_empty() || list.split(',').any(|c| c.trim() == cluster_id)
        }
        Err(_) => true,
    }
}

/// Accepts the WebSocket only to close it at once with a documented code.
fn refuse_socket(code: CloseCode, reason: &str) -> Result<Response> {
    let pair = WebSocketPair::new()?;
    pair.server.accept()?;
    pair.server.close(Some(code.code()), Some(reason))?;
    Response::from_websocket(pair.client)
}

/// A plain-text answer, as `hub relay` gives.
fn text(status: u16, body: String) -> Result<Response> {
    Ok(ResponseBuilder::new()
        .with_status(status)
        .with_header("content-type", "text/plain; charset=utf-8")?
        .fixed(body.into_bytes()))
}

/// What the object stores with each socket so that routing survives hibernation.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Attachment {
    /// Connection id (below 2^53: JS numbers).
    c: f64,
    /// When the socket was accepted (Unix ms), for the hello timeout.
    t: f64,
    /// The hub its connect URL named (hex; empty if none); its `Hello` must name the same.
    #[serde(default)]
    h: String,
    /// The cluster (the room is rebuilt from the sockets' attachments when nothing is stored:
    /// the cluster id is stored only once a hub logged in).
    #[serde(default)]
    k: String,
    /// Once admitted: hub id, certificate fingerprint, key hash (hex).
    m: Option<(String, String, String)>,
    /// For a pairing guest: the issuer's hub id (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    g: Option<String>,
    /// When it was admitted (Unix ms).
    #[serde(default)]
    a: f64,
    /// For a pairing guest: the `Send` frames it has sent.
    #[serde(default, skip_serializing_if = "is_zero")]
    s: u32,
    /// For a hub an admin certified: the admin certificate's fingerprint and key hash (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    i: Option<(String, String)>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Attachment {
    fn conn(&self) -> ConnId {
        ConnId(self.c as u64)
    }

    /// The hub the connect URL named, if it named one.
    fn named(&self) -> Option<HubId> {
        self.h.parse().ok()
    }

    fn member(&self) -> Option<MemberInfo> {
        let (h, f, k) = self.m.as_ref()?;
        let mut fingerprint = [0u8; 32];
        let mut key_hash = [0u8; 32];
        hex::decode_to_slice(f, &mut fingerprint).ok()?;
        hex::decode_to_slice(k, &mut key_hash).ok()?;
        let guest_of = match &self.g {
            Some(issuer) => Some(issuer.parse().ok()?),
            None => None,
        };
        let issuer = match &self.i {
            Some((f, k)) => {
                let (mut fp, mut kh) = ([0u8; 32], [0u8; 32]);
                hex::decode_to_slice(f, &mut fp).ok()?;
                hex::decode_to_slice(k, &mut kh).ok()?;
                Some((fp, kh))
            }
            None => None,
        };
        Some(MemberInfo {
            hub: h.parse().ok()?,
            fingerprint,
            key_hash,
            issuer,
            guest_of,
            admitted_ms: self.a as u64,
            sends: self.s,
        })
    }
}

/// One cluster's room: the Durable Object adapter over [`Room`], exported to JavaScript as the
/// class `RelayRoom` (wrangler.toml's `class_name`).
///
/// Written against wasm-bindgen rather than workers-rs's `#[durable_object]`: that macro makes
/// every handler `async`, so each message would cost a `Promise`, a closure given to JavaScript
/// and a microtask. Here `webSocketMessage` runs the room at once and returns nothing, and
/// returns a `Promise` only when something must be stored first (a login's nonce, a revocation
/// list, the alarm) or the room must be rebuilt from storage after a wake-up.
#[wasm_bindgen(wasm_bindgen = ::worker::wasm_bindgen)]
pub struct RelayRoom {
    inner: Rc<Inner>,
}

/// The object's state, shared with the futures of its asynchronous handlers.
struct Inner {
    state: State,
    /// Built on the first event (it needs the cluster id and list from storage).
    room: RefCell<Option<Room>>,
    sockets: RefCell<HashMap<ConnId, WebSocket>>,
    /// Each socket's connection id, by the socket object: what a message names its connection
    /// by, one lookup rather than reading the socket's attachment back on every message.
    conn_ids: js_sys::WeakMap,
    next_conn: Cell<u64>,
    /// When the alarm is set for (Unix ms), as far as this instance knows ([`alarm_to_set`]: a
    /// time at or before now counts as none).
    alarm_at: Cell<Option<u64>>,
    /// Whether the cluster id is in storage (it is written at the first login).
    cluster_stored: Cell<bool>,
    /// When the earliest stored login nonce stops counting (Unix ms): storage is pruned then,
    /// not at every alarm.
    nonces_expire_at: Cell<Option<u64>>,
}

impl std::fmt::Debug for RelayRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayRoom")
            .field("room", &self.inner.room)
            .field("sockets", &self.inner.sockets.borrow().len())
            .finish_non_exhaustive()
    }
}

/// A handler's result as JavaScript sees it.
type JsResult = std::result::Result<JsValue, JsValue>;

#[wasm_bindgen(
    wasm_bindgen = ::worker::wasm_bindgen,
    wasm_bindgen_futures = ::worker::wasm_bindgen_futures,
    js_sys = ::worker::js_sys
)]
impl RelayRoom {
    #[wasm_bindgen(constructor)]
    pub fn new(state: worker_sys::DurableObjectState, _env: Env) -> Self {
        RelayRoom {
            inner: Rc::new(Inner::new(State::from(state))),
        }
    }

    pub async fn fetch(&self, req: worker_sys::web_sys::Request) -> JsResult {
        let resp = self.inner.fetch(req.into()).await?;
        Ok(worker_sys::web_sys::Response::from(resp).into())
    }

    /// A message from a socket: carried out at once; a `Promise` only for what must wait for
    /// storage.
    #[wasm_bindgen(js_name = webSocketMessage)]
    pub fn websocket_message(
        &self,
        ws: worker_sys::web_sys::WebSocket,
        message: JsValue,
    ) -> JsValue {
        let ws = WebSocket::from(ws);
        let inner = self.inner.clone();
        if inner.room.borrow().is_some() {
            return match inner.message(&ws, &message) {
                None => JsValue::UNDEFINED,
                Some(pending) => promise(async move { inner.complete(pending).await }),
            };
        }
        promise(async move {
            if !inner.ensure_room(None).await? {
                return Ok(());
            }
            match inner.message(&ws, &message) {
                None => Ok(()),
                Some(pending) => inner.complete(pending).await,
            }
        })
    }

    #[wasm_bindgen(js_name = webSocketClose)]
    pub async fn websocket_close(
        &self,
        ws: worker_sys::web_sys::WebSocket,
        code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> JsResult {
        let ws = WebSocket::from(ws);
        // Complete the closing handshake; 1005/1006 cannot be sent back.
        let echo = match code {
            1005 | 1006 => CloseCode::Normal.code(),
            c => u16::try_from(c).unwrap_or(CloseCode::Normal.code()),
        };
        let _ = ws.close(Some(echo), Some("closed"));
        self.inner.disconnect(&ws).await?;
        Ok(JsValue::UNDEFINED)
    }

    #[wasm_bindgen(js_name = webSocketError)]
    pub async fn websocket_error(
        &self,
        ws: worker_sys::web_sys::WebSocket,
        _error: JsValue,
    ) -> JsResult {
        self.inner.disconnect(&WebSocket::from(ws)).await?;
        Ok(JsValue::UNDEFINED)
    }

    pub async fn alarm(&self) -> JsResult {
        self.inner.alarm().await?;
        Ok(JsValue::UNDEFINED)
    }
}

/// `work` as a JavaScript `Promise`.
fn promise(work: impl std::future::Future<Output = Result<()>> + 'static) -> JsValue {
    worker::wasm_bindgen_futures::future_to_promise(async move {
        work.await.map_err(JsValue::from)?;
        Ok(JsValue::UNDEFINED)
    })
    .into()
}

/// What is left of an event once the room has handled it, to be done after storage.
#[derive(Debug)]
enum Pending {
    /// Store these first, then carry out the rest: no hub is welcomed on a login whose nonce a
    /// restart could lose.
    StoreFirst { durable: ToStore, rest: Vec<Action> },
    /// All carried out; only this is left to store (the alarm moved).
    Store(ToStore),
}

impl Inner {
    fn new(state: State) -> Self {
        // Keepalives are answered by the runtime without waking the object.
        match worker_sys::WebSocketRequestResponsePair::new(KEEPALIVE_REQUEST, KEEPALIVE_RESPONSE) {
            Ok(pair) => {
                if let Err(e) = state.as_raw().set_websocket_auto_response(&pair) {
                    log_js("setWebSocketAutoResponse", &e);
                }
            }
            Err(e) => log_js("WebSocketRequestResponsePair", &e),
        }
        Inner {
            state,
            room: RefCell::new(None),
            sockets: RefCell::new(HashMap::new()),
            conn_ids: js_sys::WeakMap::new(),
            next_conn: Cell::new(1),
            alarm_at: Cell::new(None),
            cluster_stored: Cell::new(false),
            nonces_expire_at: Cell::new(None),
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        let url = req.url()?;
        let Route::Connect(cluster_id) = route(url.path()) else {
            return text(404, "not found\n".into());
        };
        let Ok(cluster) = cluster_id.parse::<ClusterId>() else {
            return text(400, BAD_CLUSTER_ID.into());
        };
        let Ok(hub) = claimed_hub(url.query()) else {
            return text(400, BAD_HUB.into());
        };
        self.ensure_room(Some(&cluster)).await?;
        let now = now_ms();
        let wait = hub.and_then(|hub| {
            self.room
                .borrow()
                .as_ref()
                .and_then(|room| room.kept_out(&hub, now))
        });
        if let Some(wait) = wait {
            return kept_out(wait);
        }
        let pair = WebSocketPair::new()?;
        let conn = ConnId(self.next_conn.get());
        self.next_conn.set(conn.0 + 1);
        let server = pair.server;
        server.serialize_attachment(Attachment {
            c: conn.0 as f64,
            t: now as f64,
            h: hub.map(|h| h.to_string()).unwrap_or_default(),
            k: cluster.to_string(),
            m: None,
            g: None,
            a: 0.0,
            s: 0,
            i: None,
        })?;
        self.state
            .as_raw()
            .accept_websocket(server.as_ref())
            .map_err(worker::Error::from)?;
        self.add_socket(conn, server);
        self.with_room(|room, actions| room.handle_connect(conn, now, hub, actions))
            .await?;
        Response::from_websocket(pair.client)
    }

    /// A message from `ws`, handled at once; what is left to store, if anything.
    fn message(&self, ws: &WebSocket, message: &JsValue) -> Option<Pending> {
        let conn = self.conn_of(ws)?;
        let now = now_ms();
        self.run(|room, actions| match message.as_string() {
            None => self.binary(room, conn, now, message, actions),
            Some(text) if text == KEEPALIVE_REQUEST => {
                // Normally answered by the runtime; answer here when it was not.
                room.handle_keepalive(conn, now);
                let _ = ws.send_with_str(KEEPALIVE_RESPONSE);
            }
            Some(_) => room.handle_text(conn, actions),
        })
    }

    async fn alarm(&self) -> Result<()> {
        // The alarm that fired is spent (whatever a rebuild read from storage meanwhile): the
        // room's next deadline, if any, sets a new one below.
        self.alarm_at.set(None);
        if !self.ensure_room(None).await? {
            return Ok(());
        }
        self.alarm_at.set(None);
        let now = now_ms();
        self.with_room(|room, actions| room.handle_timeout(now, actions))
            .await?;
        if self.nonces_expire_at.get().is_some_and(|at| at <= now) {
            self.load_nonces(now, false).await?;
        }
        Ok(())
    }
}

/// Now, in Unix ms (one call into JavaScript, no `Date` object).
fn now_ms() -> u64 {
    js_sys::Date::now() as u64
}

impl Inner {
    /// Builds the room if this instance has none yet: the cluster id from storage, from `hint`
    /// (a connect), or from a socket's attachment; the revocation list and the penalties from
    /// storage; the members from the sockets' attachments. `false`: there is no room to build
    /// (nobody ever logged in, and no socket is left).
    async fn ensure_room(&self, hint: Option<&ClusterId>) -> Result<bool> {
        if self.room.borrow().is_some() {
            return Ok(true);
        }
        let storage = self.state.storage();
        let now = now_ms();
        // A stored alarm in the past has fired or was dropped: it counts as none.
        let alarm = storage.get_alarm().await?;
        self.alarm_at
            .set(alarm.map(|at| at.max(0) as u64).filter(|&at| at > now));
        let sockets: Vec<(WebSocket, Option<Attachment>)> = self
            .state
            .as_raw()
            .get_websockets()
            .unwrap_or_else(|e| {
                log_js("getWebSockets", &e);
                Vec::new()
            })
            .into_iter()
            .map(|raw| {
                let ws = WebSocket::from(raw);
                let att = ws.deserialize_attachment::<Attachment>().ok().flatten();
                (ws, att)
            })
            .collect();
        let stored: Option<ClusterId> = storage
            .get::<String>(CLUSTER_KEY)
            .await?
            .and_then(|s| s.parse().ok());
        self.cluster_stored.set(stored.is_some());
        let from_sockets = || {
            sockets
                .iter()
                .find_map(|(_, att)| att.as_ref()?.k.parse::<ClusterId>().ok())
        };
        let Some(cluster) = stored.or_else(|| hint.cloned()).or_else(from_sockets) else {
            for (ws, _) in &sockets {
                let _ = ws.close(
                    Some(CloseCode::InternalError.code()),
                    Some("connection state lost"),
                );
            }
            return Ok(false);
        };
        let mut room = Room::new(RoomConfig::new(cluster, now));
        if let Some(hex_list) = storage.get::<String>(REVOCATIONS_KEY).await? {
            if let Ok(bytes) = hex::decode(hex_list) {
                room.set_revocations(&bytes);
            }
        }
        if let Some(hex_doc) = storage.get::<String>(SUCCESSOR_KEY).await? {
            if let Ok(bytes) = hex::decode(hex_doc) {
                room.set_successor(&bytes);
            }
        }
        self.load_penalties(&mut room, now).await?;
        // Another event may have built the room while storage was read.
        if self.room.borrow().is_some() {
            return Ok(true);
        }
        let mut actions = Vec::new();
        let mut next = self.next_conn.get();
        for (ws, att) in sockets {
            match att.map(|att| (att.conn(), att.t, att.named(), att.member())) {
                Some((conn, accepted, named, member)) => {
                    next = next.max(conn.0 + 1);
                    room.restore(conn, accepted as u64, named, member, now, &mut actions);
                    self.add_socket(conn, ws);
                }
                None => {
                    let _ = ws.close(
                        Some(CloseCode::InternalError.code()),
                        Some("connection state lost"),
                    );
                }
            }
        }
        self.next_conn.set(next);
        *self.room.borrow_mut() = Some(room);
        self.with_room(|_, out| out.append(&mut actions)).await?;
        // Logins accepted before the eviction must stay unreplayable.
        self.load_nonces(now, true).await?;
        Ok(true)
    }

    /// Gives the room the penalties stored before it was rebuilt; deletes those past counting.
    async fn load_penalties(&self, room: &mut Room, now: u64) -> Result<()> {
        let storage = self.state.storage();
        let stored = storage
            .list_with_options(ListOptions::new().prefix(PENALTY_PREFIX))
            .await?;
        let mut entries = Vec::new();
        stored.for_each(&mut |value, key| {
            if let (Some(key), Some(value)) = (key.as_string(), value.as_string()) {
                entries.push((key, value));
            }
        });
        let mut expired = Vec::new();
        for (key, value) in entries {
            let hub = key
                .strip_prefix(PENALTY_PREFIX)
                .and_then(|h| h.parse::<HubId>().ok());
            let parsed = value
                .split_once(',')
                .and_then(|(u, s)| Some((u.parse::<u64>().ok()?, s.parse::<u32>().ok()?)));
            match (hub, parsed) {
                (Some(hub), Some((until, strikes))) if !penalty_expired(until, now) => {
                    room.restore_penalty(hub, until, strikes, now);
                }
                _ => expired.push(key),
            }
        }
        if !expired.is_empty() {
            storage.delete_multiple(expired).await?;
        }
        Ok(())
    }

    /// Reads the stored login nonces: deletes those that can no longer be replayed and, if
    /// `restore`, gives the others to the room.
    async fn load_nonces(&self, now: u64, restore: bool) -> Result<()> {
        let storage = self.state.storage();
        let stored = storage
            .list_with_options(ListOptions::new().prefix(NONCE_PREFIX))
            .await?;
        let mut expired = Vec::new();
        let mut live = Vec::new();
        stored.for_each(&mut |value, key| {
            let (Some(key), Some(ts)) = (key.as_string(), value.as_f64()) else {
                return;
            };
            let mut nonce = [0u8; 16];
            let parsed = key
                .strip_prefix(NONCE_PREFIX)
                .is_some_and(|h| hex::decode_to_slice(h, &mut nonce).is_ok());
            let login = LoginNonce {
                nonce,
                timestamp_ms: ts as u64,
            };
            if parsed && login.is_live(now) {
                live.push(login);
            } else {
                expired.push(key);
            }
        });
        self.nonces_expire_at
            .set(live.iter().map(nonce_expiry).min());
        if restore {
            if let Some(room) = self.room.borrow_mut().as_mut() {
                for login in live {
                    room.remember_login(login);
                }
            }
        }
        if !expired.is_empty() {
            storage.delete_multiple(expired).await?;
        }
        Ok(())
    }

    /// A binary message. One `Send` frame to a member goes on as the same JavaScript buffer with
    /// its routing header rewritten (`Room::forward`): the payload is never copied into wasm
    /// memory or out again. Anything else is copied in whole and handled by the room.
    fn binary(
        &self,
        room: &mut Room,
        conn: ConnId,
        now: u64,
        message: &JsValue,
        actions: &mut Vec<Action>,
    ) {
        let view = js_sys::Uint8Array::new(message);
        let len = view.length() as usize;
        if len >= ROUTING_HEADER_LEN {
            let head_view = view.subarray(0, ROUTING_HEADER_LEN as u32);
            let mut head = [0u8; ROUTING_HEADER_LEN];
            head_view.copy_to(&mut head);
            if let Some(fwd) = room.forward(conn, now, &head, len) {
                head_view.copy_from(&fwd.header);
                let sent = match self.sockets.borrow().get(&fwd.conn) {
                    Some(to) => raw(to).send_with_array_buffer_view(&view).is_ok(),
                    None => true,
                };
                if !sent {
                    let mut sockets = SocketMap::new(&self.sockets);
                    room.refused_message(fwd.conn, CloseCode::InternalError, &mut sockets, actions);
                }
                return;
            }
        }
        room.handle_message(conn, now, &view.to_vec(), actions);
    }

    /// Runs `f` on the room and carries out the actions it produced, then lets the alarm
    /// follow the room's earliest deadline (see [`Inner::run`]).
    async fn with_room(&self, f: impl FnOnce(&mut Room, &mut Vec<Action>)) -> Result<()> {
        match self.run(f) {
            Some(pending) => self.complete(pending).await,
            None => Ok(()),
        }
    }

    /// Runs `f` on the room and carries out at once what needs no storage. What must be stored
    /// durably (login nonces, a revocation list) comes back with the actions it must precede;
    /// when there is none, the actions are carried out here and only a moved alarm may be left.
    fn run(&self, f: impl FnOnce(&mut Room, &mut Vec<Action>)) -> Option<Pending> {
        let mut actions = Vec::new();
        {
            let mut guard = self.room.borrow_mut();
            f(guard.as_mut()?, &mut actions);
        }
        if !actions.iter().any(|a| {
            matches!(
                a,
                Action::RememberLogin(_)
                    | Action::StoreRevocations { .. }
                    | Action::StoreSuccessor { .. }
            )
        }) {
            return self.perform(actions).map(Pending::Store);
        }
        let mut durable = ToStore::default();
        let mut rest = Vec::with_capacity(actions.len());
        for action in actions {
            match action {
                Action::RememberLogin(login) => durable.logins.push(login),
                Action::StoreRevocations { bytes } => durable.revocations = Some(bytes),
                Action::StoreSuccessor { bytes } => durable.successor = Some(bytes),
                other => rest.push(other),
            }
        }
        Some(Pending::StoreFirst { durable, rest })
    }

    /// Stores what an event left, in order.
    async fn complete(&self, pending: Pending) -> Result<()> {
        match pending {
            Pending::StoreFirst { durable, rest } => {
                self.persist(durable).await?;
                match self.perform(rest) {
                    Some(after) => self.persist(after).await,
                    None => Ok(()),
                }
            }
            Pending::Store(store) => self.persist(store).await,
        }
    }

    /// Carries out `actions` on the sockets; what is then left to store (the alarm, if the
    /// room's earliest deadline is sooner than the one set), if anything.
    fn perform(&self, actions: Vec<Action>) -> Option<ToStore> {
        let mut guard = self.room.borrow_mut();
        let room = guard.as_mut()?;
        let mut sockets = SocketMap::new(&self.sockets);
        room.perform(actions, &mut sockets);
        let mut store = sockets.store;
        store.deadline = room.poll_timeout().filter(|&at| self.sooner_than_alarm(at));
        (!store.is_empty()).then_some(store)
    }

    /// Whether the alarm must move for the room's earliest deadline `at` ([`alarm_to_set`]).
    fn sooner_than_alarm(&self, at: u64) -> bool {
        alarm_to_set(at, self.alarm_at.get(), now_ms()).is_some()
    }

    /// Stores an accepted revocation list and login nonces so that they survive hibernation
    /// and restarts, and moves the alarm to the room's earliest deadline if that is sooner.
    async fn persist(&self, store: ToStore) -> Result<()> {
        let storage = self.state.storage();
        // Checked again: another event may have set a sooner alarm since this one's was chosen.
        let arm = store
            .deadline
            .and_then(|at| alarm_to_set(at, self.alarm_at.get(), now_ms()));
        if let Some(at) = arm {
            let date = js_sys::Date::new(&JsValue::from_f64(at as f64));
            storage.set_alarm(ScheduledTime::new(date)).await?;
            self.alarm_at.set(Some(at));
        }
        if !store.logins.is_empty() && !self.cluster_stored.get() {
            let cluster = self.room.borrow().as_ref().map(|r| r.cluster().to_string());
            if let Some(cluster) = cluster {
                storage.put(CLUSTER_KEY, cluster).await?;
                self.cluster_stored.set(true);
            }
        }
        if let Some(bytes) = store.revocations {
            storage.put(REVOCATIONS_KEY, hex::encode(bytes)).await?;
        }
        if let Some(bytes) = store.successor {
            storage.put(SUCCESSOR_KEY, hex::encode(bytes)).await?;
        }
        for login in &store.logins {
            let key = format!("{NONCE_PREFIX}{}", hex::encode(login.nonce));
            storage.put(&key, login.timestamp_ms as f64).await?;
            let expiry = nonce_expiry(login);
            self.nonces_expire_at.set(Some(
                self.nonces_expire_at
                    .get()
                    .map_or(expiry, |e| e.min(expiry)),
            ));
        }
        for (hub, until, strikes) in store.penalties {
            let key = format!("{PENALTY_PREFIX}{hub}");
            storage.put(&key, format!("{until},{strikes}")).await?;
        }
        Ok(())
    }

    /// A socket of the room, under its connection id.
    fn add_socket(&self, conn: ConnId, ws: WebSocket) {
        self.conn_ids
            .set(js_object(&ws), &JsValue::from_f64(conn.0 as f64));
        self.sockets.borrow_mut().insert(conn, ws);
    }

    /// The connection id of a socket of the room (`None` for one the room never took: a socket
    /// `ensure_room` closed for an unreadable attachment).
    fn conn_of(&self, ws: &WebSocket) -> Option<ConnId> {
        self.conn_ids
            .get(js_object(ws))
            .as_f64()
            .map(|c| ConnId(c as u64))
    }

    async fn disconnect(&self, ws: &WebSocket) -> Result<()> {
        if !self.ensure_room(None).await? {
            return Ok(());
        }
        let Some(conn) = self.conn_of(ws) else {
            return Ok(());
        };
        self.sockets.borrow_mut().remove(&conn);
        let now = now_ms();
        self.with_room(|room, actions| room.handle_disconnect(conn, now, actions))
            .await
    }
}

/// What a room's actions asked to store durably.
#[derive(Debug, Default)]
struct ToStore {
    revocations: Option<Vec<u8>>,
    successor: Option<Vec<u8>>,
    logins: Vec<LoginNonce>,
    /// Hubs kept out for flooding: (hub, until, strikes).
    penalties: Vec<(HubId, u64, u32)>,
    /// The room's earliest deadline: the alarm must fire by then.
    deadline: Option<u64>,
}

impl ToStore {
    fn is_empty(&self) -> bool {
        self.deadline.is_none()
            && self.revocations.is_none()
            && self.successor.is_none()
            && self.logins.is_empty()
            && self.penalties.is_empty()
    }
}

/// The alarm to set for the room's earliest deadline `at`, given the alarm recorded as set
/// (`recorded`), at `now` (all Unix ms): `None` when the recorded alarm fires in time. A recorded
/// time at or before `now` counts as no alarm (it fired, or the runtime dropped an alarm set in
/// the past, as local workerd does), and an alarm is never set at or before `now`.
fn alarm_to_set(at: u64, recorded: Option<u64>, now: u64) -> Option<u64> {
    let at = at.max(now + 1);
    match recorded.filter(|&set| set > now) {
        Some(set) if set <= at => None,
        _ => Some(at),
    }
}

/// When a stored login nonce stops counting (its login can no longer pass the skew check).
fn nonce_expiry(login: &LoginNonce) -> u64 {
    login
        .timestamp_ms
        .saturating_add(shared_proto::trust::login::MAX_SKEW_MS)
        .saturating_add(1)
}

/// Whether a stored penalty no longer counts at `now` (its hub is let in, and the next
/// penalty starts from the first again).
fn penalty_expired(until_ms: u64, now: u64) -> bool {
    now >= until_ms.saturating_add(shared_proto::relay::rate::PENALTY_MEMORY_MS)
}

/// The object's sockets, as the room drives them.
struct SocketMap<'a> {
    sockets: &'a RefCell<HashMap<ConnId, WebSocket>>,
    store: ToStore,
}

impl<'a> SocketMap<'a> {
    fn new(sockets: &'a RefCell<HashMap<ConnId, WebSocket>>) -> Self {
        SocketMap {
            sockets,
            store: ToStore::default(),
        }
    }

    fn get(&self, conn: ConnId) -> Option<WebSocket> {
        self.sockets.borrow().get(&conn).cloned()
    }
}

impl Sockets for SocketMap<'_> {
    fn send(&mut self, conn: ConnId, message: Vec<u8>) -> std::result::Result<(), CloseCode> {
        match self.get(conn) {
            // A copy out of wasm memory: workerd sends from the buffer it is given, later.
            Some(ws) => raw(&ws)
                .send_with_array_buffer_view(&js_sys::Uint8Array::from(message.as_slice()))
                .map_err(|_| CloseCode::InternalError),
            None => Ok(()),
        }
    }

    fn close(&mut self, conn: ConnId, code: CloseCode, reason: String) {
        if let Some(ws) = self.sockets.borrow_mut().remove(&conn) {
            let _ = ws.close(Some(code.code()), Some(reason));
        }
    }

    fn admitted(&mut self, conn: ConnId, member: MemberInfo) {
        let Some(ws) = self.get(conn) else {
            return;
        };
        let (accepted, cluster) = ws
            .deserialize_attachment::<Attachment>()
            .ok()
            .flatten()
            .map_or((0.0, String::new()), |a| (a.t, a.k));
        // A member's own hub is the one its URL named (the room checked).
        let att = Attachment {
            c: conn.0 as f64,
            t: accepted,
            h: String::new(),
            k: cluster,
            m: Some((
                member.hub.to_string(),
                hex::encode(member.fingerprint),
                hex::encode(member.key_hash),
            )),
            g: member.guest_of.map(|h| h.to_string()),
            a: member.admitted_ms as f64,
            s: member.sends,
            i: member.issuer.map(|(f, k)| (hex::encode(f), hex::encode(k))),
        };
        if let Err(e) = ws.serialize_attachment(att) {
            console_error!("could not store the member with its socket: {e}");
        }
    }

    fn store_revocations(&mut self, bytes: Vec<u8>) {
        self.store.revocations = Some(bytes);
    }

    fn store_successor(&mut self, bytes: Vec<u8>) {
        self.store.successor = Some(bytes);
    }

    fn remember_login(&mut self, login: LoginNonce) {
        self.store.logins.push(login);
    }

    fn store_penalty(&mut self, hub: HubId, until_ms: u64, strikes: u32) {
        self.store.penalties.push((hub, until_ms, strikes));
    }
}

/// The runtime's socket under workers-rs's wrapper.
fn raw(ws: &WebSocket) -> &worker_sys::web_sys::WebSocket {
    ws.as_ref()
}

/// A socket as the object a `WeakMap` keys by.
fn js_object(ws: &WebSocket) -> &js_sys::Object {
    raw(ws).unchecked_ref()
}

fn log_js(what: &str, e: &JsValue) {
    console_error!("{what} failed: {e:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    /// The rule that picks the alarm: never in the past, never trusting a recorded time that
    /// has passed (once that made the object refuse every later deadline, so sockets that never
    /// said Hello stayed open for good), and not moved when the one set fires in time.
    #[test]
    fn the_alarm_is_set_for_the_next_deadline_and_never_in_the_past() {
        // Nothing set: the deadline.
        assert_eq!(alarm_to_set(NOW + 10_000, None, NOW), Some(NOW + 10_000));
        // A deadline already due: just after now, not at or before it.
        assert_eq!(alarm_to_set(NOW - 5, None, NOW), Some(NOW + 1));
        assert_eq!(alarm_to_set(NOW, None, NOW), Some(NOW + 1));
        // Set sooner than the deadline, still ahead: nothing to do.
        assert_eq!(alarm_to_set(NOW + 10_000, Some(NOW + 5_000), NOW), None);
        assert_eq!(alarm_to_set(NOW + 10_000, Some(NOW + 10_000), NOW), None);
        // Set later: moved sooner.
        assert_eq!(
            alarm_to_set(NOW + 10_000, Some(NOW + 20_000), NOW),
            Some(NOW + 10_000)
        );
        // Recorded at or before now (fired, or dropped): counts as none.
        assert_eq!(
            alarm_to_set(NOW + 10_000, Some(NOW - 1), NOW),
            Some(NOW + 10_000)
        );
        assert_eq!(
            alarm_to_set(NOW + 10_000, Some(NOW), NOW),
            Some(NOW + 10_000)
        );
    }

    #[test]
    fn stored_nonces_and_penalties_expire_when_they_stop_counting() {
        let login = LoginNonce {
            nonce: [1; 16],
            timestamp_ms: NOW,
        };
        let expiry = nonce_expiry(&login);
        assert!(login.is_live(expiry - 1) && !login.is_live(expiry));
        let memory = shared_proto::relay::rate::PENALTY_MEMORY_MS;
        assert!(!penalty_expired(NOW, NOW + memory - 1));
        assert!(penalty_expired(NOW, NOW + memory));
    }
}
