//! The hub relay as a Cloudflare Worker.
//!
//! Flow: [`fetch`] routes `GET /v1/clusters/{cluster_id}/connect` to the Durable Object named by
//! the cluster id ([`RelayRoom`]); the object accepts the WebSocket with the Hibernation API and
//! hands every event to `shared_proto::room::Room`, then performs the actions it returns. The
//! Worker holds no logic of its own beyond that adapter.
//!
//! What survives hibernation: the sockets themselves (the runtime keeps them) and, per socket, an
//! attachment with its connection id, its hub id once admitted, and when it was accepted. When
//! the object wakes, the constructor rebuilds the room from those attachments.
//!
//! Nothing here may panic: a panic aborts the wasm instance and drops every hub in the room. All
//! fallible calls go through `Result`, and JS errors are logged and mapped to close code 1011.
#![forbid(unsafe_code)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use shared_proto::frame::{HubId, KEEPALIVE_REQUEST, KEEPALIVE_RESPONSE, PROTOCOL_VERSION};
use shared_proto::path::{route, Route};
use shared_proto::room::{Action, ConnId, Room, RoomConfig, Sockets};
use shared_proto::CloseCode;
use worker::{
    console_error, durable_object, event, wasm_bindgen::JsValue, worker_sys, Context, Date,
    DurableObject, Env, Request, Response, ResponseBuilder, Result, State, WebSocket,
    WebSocketIncomingMessage, WebSocketPair,
};

/// The Durable Object binding name in `wrangler.toml`.
const ROOMS_BINDING: &str = "ROOMS";

/// How long a socket may stay open without sending its `Hello`.
const HELLO_TIMEOUT_MS: u64 = 10_000;

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
        Route::BadClusterId => text(
            400,
            "a cluster id is 1 to 64 characters of A-Z a-z 0-9 - _\n".into(),
        ),
        Route::Connect(cluster_id) => {
            if req.method() != worker::Method::Get || !is_websocket_upgrade(&req) {
                return text(
                    426,
                    "this endpoint takes a WebSocket upgrade (GET with Upgrade: websocket)\n".into(),
                );
            }
            let stub = env
                .durable_object(ROOMS_BINDING)?
                .id_from_name(cluster_id)?
                .get_stub()?;
            stub.fetch_with_request(req).await
        }
    }
}

fn is_websocket_upgrade(req: &Request) -> bool {
    matches!(req.headers().get("Upgrade"), Ok(Some(v)) if v.eq_ignore_ascii_case("websocket"))
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
    /// Hub id (hex) once admitted.
    h: Option<String>,
    /// When the socket was accepted (Unix ms), for the hello timeout.
    t: f64,
}

impl Attachment {
    fn conn(&self) -> ConnId {
        ConnId(self.c as u64)
    }

    fn hub(&self) -> Option<HubId> {
        self.h.as_deref().and_then(|h| h.parse().ok())
    }
}

/// One cluster's room: the Durable Object adapter over [`Room`].
#[durable_object]
pub struct RelayRoom {
    state: State,
    room: RefCell<Room>,
    sockets: RefCell<HashMap<ConnId, WebSocket>>,
    next_conn: Cell<u64>,
}

impl std::fmt::Debug for RelayRoom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayRoom")
            .field("room", &self.room)
            .field("sockets", &self.sockets.borrow().len())
            .finish_non_exhaustive()
    }
}

impl DurableObject for RelayRoom {
    fn new(state: State, _env: Env) -> Self {
        let now = Date::now().as_millis();
        let mut room = Room::new(RoomConfig::new(now));
        let mut sockets = HashMap::new();
        let mut next = 1;
        let mut actions = Vec::new();
        // Keepalives are answered by the runtime without waking the object.
        match worker_sys::WebSocketRequestResponsePair::new(KEEPALIVE_REQUEST, KEEPALIVE_RESPONSE) {
            Ok(pair) => {
                if let Err(e) = state.as_raw().set_websocket_auto_response(&pair) {
                    log_js("setWebSocketAutoResponse", &e);
                }
            }
            Err(e) => log_js("WebSocketRequestResponsePair", &e),
        }
        // After a hibernation the sockets are still open: rebuild the room from attachments.
        match state.as_raw().get_websockets() {
            Ok(list) => {
                for raw in list {
                    let ws = WebSocket::from(raw);
                    match ws.deserialize_attachment::<Attachment>() {
                        Ok(Some(att)) => {
                            let conn = att.conn();
                            next = next.max(conn.0 + 1);
                            room.restore(conn, att.hub(), &mut actions);
                            sockets.insert(conn, ws);
                        }
                        _ => {
                            let _ = ws.close(
                                Some(CloseCode::InternalError.code()),
                                Some("connection state lost"),
                            );
                        }
                    }
                }
            }
            Err(e) => log_js("getWebSockets", &e),
        }
        let this = RelayRoom {
            state,
            room: RefCell::new(room),
            sockets: RefCell::new(sockets),
            next_conn: Cell::new(next),
        };
        this.perform(actions);
        this
    }

    async fn fetch(&self, _req: Request) -> Result<Response> {
        let pair = WebSocketPair::new()?;
        let conn = ConnId(self.next_conn.get());
        self.next_conn.set(conn.0 + 1);
        let now = Date::now().as_millis();
        let server = pair.server;
        server.serialize_attachment(Attachment {
            c: conn.0 as f64,
            h: None,
            t: now as f64,
        })?;
        self.state
            .as_raw()
            .accept_websocket(server.as_ref())
            .map_err(worker::Error::from)?;
        self.room.borrow_mut().handle_connect(conn);
        self.sockets.borrow_mut().insert(conn, server);
        // One alarm serves every pending socket: it closes those past the deadline and re-arms.
        let storage = self.state.storage();
        if matches!(storage.get_alarm().await, Ok(None)) {
            storage
                .set_alarm(std::time::Duration::from_millis(HELLO_TIMEOUT_MS))
                .await?;
        }
        Response::from_websocket(pair.client)
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let Some(conn) = self.conn_of(&ws) else {
            return Ok(());
        };
        let mut actions = Vec::new();
        {
            let mut room = self.room.borrow_mut();
            match message {
                WebSocketIncomingMessage::Binary(bytes) => {
                    room.handle_message(conn, &bytes, &mut actions)
                }
                WebSocketIncomingMessage::String(text) if text == KEEPALIVE_REQUEST => {
                    // Normally answered by the runtime; answer here when it was not.
                    let _ = ws.send_with_str(KEEPALIVE_RESPONSE);
                }
                WebSocketIncomingMessage::String(_) => room.handle_text(conn, &mut actions),
            }
        }
        self.perform(actions);
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        // Complete the closing handshake; 1005/1006 cannot be sent back.
        let echo = match code {
            1005 | 1006 => CloseCode::Normal.code(),
            c => u16::try_from(c).unwrap_or(CloseCode::Normal.code()),
        };
        let _ = ws.close(Some(echo), Some("closed"));
        self.disconnect(&ws);
        Ok(())
    }

    async fn websocket_error(&self, ws: WebSocket, _error: worker::Error) -> Result<()> {
        self.disconnect(&ws);
        Ok(())
    }

    async fn alarm(&self) -> Result<Response> {
        let now = Date::now().as_millis();
        let mut earliest_pending: Option<u64> = None;
        let mut actions = Vec::new();
        let sockets: Vec<(ConnId, WebSocket)> = self
            .sockets
            .borrow()
            .iter()
            .map(|(c, w)| (*c, w.clone()))
            .collect();
        for (conn, ws) in sockets {
            let Ok(Some(att)) = ws.deserialize_attachment::<Attachment>() else {
                continue;
            };
            if att.h.is_some() {
                continue;
            }
            let deadline = att.t as u64 + HELLO_TIMEOUT_MS;
            if deadline <= now {
                actions.push(Action::Close {
                    conn,
                    code: CloseCode::HelloTimeout,
                    reason: "no Hello within 10 s".into(),
                });
                self.room.borrow_mut().handle_disconnect(conn, &mut actions);
            } else {
                earliest_pending = Some(earliest_pending.map_or(deadline, |e| e.min(deadline)));
            }
        }
        self.perform(actions);
        if let Some(deadline) = earliest_pending {
            let delay = deadline.saturating_sub(now).max(1);
            self.state
                .storage()
                .set_alarm(std::time::Duration::from_millis(delay))
                .await?;
        }
        Response::ok("")
    }
}

impl RelayRoom {
    /// The connection id of a socket, from the in-memory map or its attachment.
    fn conn_of(&self, ws: &WebSocket) -> Option<ConnId> {
        match ws.deserialize_attachment::<Attachment>() {
            Ok(Some(att)) => Some(att.conn()),
            Ok(None) => None,
            Err(e) => {
                console_error!("unreadable socket attachment: {e}");
                None
            }
        }
    }

    fn disconnect(&self, ws: &WebSocket) {
        let Some(conn) = self.conn_of(ws) else {
            return;
        };
        self.sockets.borrow_mut().remove(&conn);
        let mut actions = Vec::new();
        self.room.borrow_mut().handle_disconnect(conn, &mut actions);
        self.perform(actions);
    }

    /// Carries out the room's actions, in order; nothing here can fail the whole object.
    fn perform(&self, actions: Vec<Action>) {
        let mut sockets = SocketMap(&self.sockets);
        self.room.borrow_mut().perform(actions, &mut sockets);
    }
}

/// The object's sockets, as the room drives them.
struct SocketMap<'a>(&'a RefCell<HashMap<ConnId, WebSocket>>);

impl SocketMap<'_> {
    fn get(&self, conn: ConnId) -> Option<WebSocket> {
        self.0.borrow().get(&conn).cloned()
    }
}

impl Sockets for SocketMap<'_> {
    fn send(&mut self, conn: ConnId, message: Vec<u8>) -> std::result::Result<(), CloseCode> {
        match self.get(conn) {
            Some(ws) => ws
                .send_with_bytes(&message)
                .map_err(|_| CloseCode::InternalError),
            None => Ok(()),
        }
    }

    fn close(&mut self, conn: ConnId, code: CloseCode, reason: String) {
        if let Some(ws) = self.0.borrow_mut().remove(&conn) {
            let _ = ws.close(Some(code.code()), Some(reason));
        }
    }

    fn admitted(&mut self, conn: ConnId, hub: HubId) {
        let Some(ws) = self.get(conn) else {
            return;
        };
        let accepted = ws
            .deserialize_attachment::<Attachment>()
            .ok()
            .flatten()
            .map_or(0.0, |a| a.t);
        let att = Attachment {
            c: conn.0 as f64,
            h: Some(hub.to_string()),
            t: accepted,
        };
        if let Err(e) = ws.serialize_attachment(att) {
            console_error!("could not store the hub id with its socket: {e}");
        }
    }
}

fn log_js(what: &str, e: &JsValue) {
    console_error!("{what} failed: {e:?}");
}
