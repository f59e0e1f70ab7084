//! The browser hub as a member of its cluster, sans-IO: one relay connection at a time (the
//! page opens and closes the WebSocket; this decides what goes on it and when it is dead), the
//! peer core (`shared_proto::session::core`), the operator's listings and calls, and the phone
//! app served to the other hubs.
//!
//! The page calls [`WebHub::opened`] when a socket opens, hands it every message
//! ([`WebHub::handle_message`], [`WebHub::handle_text`]) and its close ([`WebHub::closed`]),
//! sends what [`WebHub::poll_send`] gives, wakes at [`WebHub::poll_timeout`] for
//! [`WebHub::handle_timeout`], and reads [`WebHub::poll_event`] after each of these: JSON events
//! for the page (see [`WebHub::poll_event`]).

use std::collections::{BTreeMap, HashMap, VecDeque};

use rand_core::{OsRng, RngCore};
use serde_json::{json, Value};
use shared_proto::agent::envelope::{ALL_SCOPES, ENVELOPE_V2, LISTING, MAX_LIFETIME_MS};
use shared_proto::agent::nonces::Nonces;
use shared_proto::agent::policy::Sharing;
use shared_proto::agent::{arguments_hash, CallErrorCode, Delegation};
use shared_proto::audit::Entry;
use shared_proto::msg::{Msg, SESSION_VERSION};
use shared_proto::relay::client::{ClientEvent, ClientSession};
use shared_proto::relay::frame::KEEPALIVE_RESPONSE;
use shared_proto::relay::liveness::{Action, Liveness, Settings};
use shared_proto::relay::path::{connect_path, connect_query};
use shared_proto::session::core::{CoreEvent, PeerCore};
use shared_proto::session::paths::RelaySaid;
use shared_proto::session::rpc::{
    call_deadline, Answer, Answered, CallRequest, Inbound, OutgoingCall, PeerRequest, Reply,
    Request, Token, MAX_CALL_TIMEOUT_MS,
};
use shared_proto::trust::login::Credentials;
use shared_proto::trust::renewal::{accept, is_admin, renewed_reason, Renewal, ASK_TIMEOUT_MS};
use shared_proto::trust::rotation::VerifiedSuccessor;
use shared_proto::trust::{VerifiedPeer, VerifiedRevocations};
use shared_proto::{CloseCode, Frame, HubId};

use crate::kept::{Kept, Loaded};
use crate::phone::{self, Admitted};
use crate::WebError;

/// The principal the page's calls are made for: the person holding the phone, as `hub mcp` is
/// the local user's (`principals:local@NAME` shares an app with them).
pub const PRINCIPAL: &str = "local";

/// Idle keepalives while the page is hidden: one a minute (shown: every 25 s).
pub const HIDDEN_IDLE_MS: u64 = 60_000;

/// How long a listing may take.
pub const LIST_TIMEOUT_MS: u64 = 5_000;

/// Slack of an envelope beyond its call's timeout (the way there, clock skew).
const ENVELOPE_SLACK_MS: u64 = 5_000;

/// Calls of the phone app the page runs at once; more are refused `busy` (a person answers one
/// question at a time).
pub const MAX_SERVING: usize = 16;

/// The page's requests waiting at once.
pub const MAX_ASKED: usize = 64;

/// One relay connection.
#[derive(Debug)]
struct Relay {
    session: ClientSession,
    liveness: Liveness,
}

/// What the page asked, waiting for its answer.
#[derive(Debug)]
struct Asked {
    id: u32,
    hub: HubId,
    what: AskedFor,
    app: String,
    tool: String,
    arguments_sha256: [u8; 32],
    bytes: u64,
    sent_ms: u64,
}

/// What a request of this hub is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AskedFor {
    /// A listing the page asked for.
    Apps,
    /// A call the page made.
    Call,
    /// A renewal of this hub's certificate (the hub's own, on its clock).
    Renew,
}

/// A call of the phone app handed to the page.
#[derive(Debug)]
struct Serving {
    from: HubId,
    token: Token,
    tool: &'static str,
    principal: String,
    arguments_sha256: [u8; 32],
    bytes: u64,
    started_ms: u64,
    /// The call's deadline on this hub's clock: unanswered then, it is refused `timeout`.
    deadline_ms: u64,
}

impl Serving {
    /// The audit entry of this call, ended at `now_ms` with `decision` and `reason`, having
    /// carried `bytes`.
    fn entry(self, decision: &str, reason: String, bytes: u64, now_ms: u64) -> Entry {
        Entry {
            kind: "call.in".into(),
            peer: Some(self.from),
            principal: self.principal,
            app: phone::APP.into(),
            tool: self.tool.into(),
            decision: decision.into(),
            reason,
            duration_ms: now_ms.saturating_sub(self.started_ms),
            arguments_sha256: Some(self.arguments_sha256),
            bytes: Some(bytes),
            ..Entry::default()
        }
    }
}

/// What this hub knows of another.
#[derive(Debug, Default)]
struct Peer {
    online: bool,
    cert: Option<VerifiedPeer>,
}

/// The browser hub. See the module docs.
pub struct WebHub {
    kept: Kept,
    credentials: Credentials,
    me: HubId,
    /// This hub's certificate, verified at open.
    certificate: VerifiedPeer,
    held: Option<VerifiedRevocations>,
    sharing: Sharing,
    audit_key: [u8; 32],
    revoked: bool,
    relay: Option<Relay>,
    hidden: bool,
    core: PeerCore,
    /// When this hub's certificate is renewed, and whether a renewal waits for its answer.
    renewal: Renewal,
    renewing: bool,
    /// The hubs it asks, in turn: the manifest's members with the founder or admin role.
    admins: Vec<HubId>,
    next_admin: usize,
    nonces: Nonces,
    /// The room's members this hub heard of (online now, or with a session): bounded by the
    /// room's own bound on members.
    peers: BTreeMap<HubId, Peer>,
    asked: HashMap<Token, Asked>,
    serving: HashMap<u32, Serving>,
    next_id: u32,
    out: VecDeque<Outgoing>,
    events: VecDeque<Value>,
}

impl std::fmt::Debug for WebHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebHub")
            .field("me", &self.me)
            .field("name", &self.certificate.name())
            .field("connected", &self.relay.is_some())
            .finish_non_exhaustive()
    }
}

/// A message for the WebSocket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// A binary message (frames).
    Binary(Vec<u8>),
    /// A keepalive probe (the text `ping`).
    Probe,
}

impl WebHub {
    /// The hub of the kept state, checked at `now_ms`.
    pub fn open(kept: Kept, now_ms: u64) -> Result<Self, WebError> {
        let Loaded {
            credentials,
            identity,
            certificate,
            manifest,
            revocations,
            sharing,
            revoked,
            audit_key,
        } = kept.load(now_ms)?;
        let me = certificate.hub_id();
        let admins = manifest
            .manifest()
            .members
            .iter()
            .filter(|m| m.hub_id != me && is_admin(&m.roles))
            .map(|m| m.hub_id)
            .collect();
        let mut hub = WebHub {
            core: PeerCore::new(identity, me, OsRng.next_u64()),
            renewal: Renewal::new(&certificate),
            renewing: false,
            admins,
            next_admin: 0,
            kept,
            credentials,
            me,
            certificate,
            held: revocations.clone(),
            sharing,
            audit_key,
            revoked,
            relay: None,
            hidden: false,
            nonces: Nonces::new(),
            peers: BTreeMap::new(),
            asked: HashMap::new(),
            serving: HashMap::new(),
            next_id: 1,
            out: VecDeque::new(),
            events: VecDeque::new(),
        };
        if let Some(list) = revocations {
            hub.core.handle_revocations(list, now_ms, &mut OsRng);
        }
        Ok(hub)
    }

    /// This hub's id.
    pub fn id(&self) -> HubId {
        self.me
    }

    /// This hub's name.
    pub fn name(&self) -> &str {
        self.certificate.name()
    }

    /// The kept state as it is now (the page stores it after a `kept` event).
    pub fn kept(&self) -> &Kept {
        &self.kept
    }

    /// Whether the cluster revoked this hub: it connects no more.
    pub fn revoked(&self) -> bool {
        self.revoked
    }

    /// The relay's base URL.
    pub fn relay_url(&self) -> &str {
        &self.kept.relay_url
    }

    /// The path of the cluster's room, after the relay URL's own path.
    pub fn path(&self) -> String {
        connect_path(self.core_cluster().as_str())
    }

    /// The connect query (this hub's id).
    pub fn query(&self) -> String {
        connect_query(&self.me)
    }

    fn core_cluster(&self) -> shared_proto::trust::ClusterId {
        shared_proto::trust::ClusterId::from_ca_key(&self.credentials.ca_key)
    }

    /// The phone app's sharing policy.
    pub fn sharing(&self) -> String {
        self.sharing.to_string()
    }

    /// Sets the phone app's sharing policy (audited, kept).
    pub fn set_sharing(&mut self, policy: &str, now_ms: u64) -> Result<(), WebError> {
        let sharing: Sharing =
            policy
                .parse()
                .map_err(|e: shared_proto::agent::policy::ParseSharingError| {
                    WebError::Request(e.to_string())
                })?;
        sharing
            .require_qualified()
            .map_err(|e| WebError::Request(e.to_string()))?;
        self.sharing = sharing;
        self.kept.sharing = self.sharing.to_string();
        self.audit(
            now_ms,
            Entry {
                kind: "app.share".into(),
                app: phone::APP.into(),
                decision: "ok".into(),
                reason: format!("shared: {}", self.kept.sharing),
                ..Entry::default()
            },
        );
        Ok(())
    }

    /// A WebSocket to the relay opened at `now_ms`: the login goes first.
    pub fn opened(&mut self, now_ms: u64) -> Result<(), WebError> {
        if self.revoked {
            return Err(WebError::Request("this hub was revoked".into()));
        }
        let (session, opening) =
            ClientSession::member(&self.credentials, self.held.clone(), now_ms, &mut OsRng)
                .map_err(|e| WebError::Relay(e.to_string()))?;
        self.out.clear();
        self.out.push_back(Outgoing::Binary(opening));
        let idle = if self.hidden {
            HIDDEN_IDLE_MS
        } else {
            Settings::HUB.idle_ms
        };
        let mut liveness = Liveness::new(Settings::HUB.with_idle(idle), now_ms);
        liveness.handle_sent(now_ms);
        self.relay = Some(Relay { session, liveness });
        Ok(())
    }

    /// The socket closed (`code`, `reason` as the close frame said): the hub waits to connect
    /// again; a revocation ends it for good.
    pub fn closed(&mut self, code: u16, reason: &str) {
        self.relay = None;
        self.out.clear();
        for peer in self.peers.values_mut() {
            peer.online = false;
        }
        match CloseCode::from_code(code) {
            Some(CloseCode::Revoked) => {
                self.set_revoked(&format!("the relay refused this hub: {reason}"));
            }
            Some(CloseCode::Moved) => self.set_revoked(&format!(
                "the cluster moved to a new CA key and this phone did not follow in time ({reason}): pair it again"
            )),
            _ => {}
        }
        self.events
            .push_back(json!({"type": "closed", "code": code, "reason": reason}));
        self.events.push_back(json!({"type": "hubs"}));
    }

    /// The delay the relay asked for before connecting again, if it did.
    pub fn restart_after_ms(&self) -> Option<u64> {
        self.relay
            .as_ref()
            .and_then(|r| r.session.restart_after_ms())
    }

    /// The cluster moved to a new CA key (docs/PROTOCOL.md section 9): this hub takes its
    /// certificate from the document and becomes the hub of the new cluster (its kept state
    /// replaced, its sessions to start anew); the page drops the socket and connects to the new
    /// room (`moved`). A document without a certificate for it, or past its grace period, is
    /// said (`move_failed`) and changes nothing.
    fn on_successor(&mut self, successor: &VerifiedSuccessor, now_ms: u64) {
        let cluster = successor.new_cluster().to_string();
        let moved = successor
            .certificate_for(&self.certificate, now_ms)
            .map_err(|e| e.to_string())
            .and_then(|cert| {
                let mut kept = self.kept.clone();
                kept.ca_key = hex::encode(successor.new_ca_key().as_bytes());
                kept.certificate = hex::encode(cert.der());
                kept.manifest = hex::encode(successor.manifest().bytes());
                kept.revocations = successor.revocations().map(|l| hex::encode(l.bytes()));
                WebHub::open(kept, now_ms).map_err(|e| e.to_string())
            });
        match moved {
            Ok(mut hub) => {
                hub.events = std::mem::take(&mut self.events);
                hub.audit(
                    now_ms,
                    Entry {
                        kind: "cluster.move".into(),
                        decision: "ok".into(),
                        reason: format!(
                            "moved from cluster {} to {cluster} (a new CA key)",
                            successor.old_cluster()
                        ),
                        ..Entry::default()
                    },
                );
                hub.events.push_back(json!({"type": "kept"}));
                hub.events
                    .push_back(json!({"type": "moved", "cluster": cluster}));
                *self = hub;
            }
            Err(error) => self
                .events
                .push_back(json!({"type": "move_failed", "cluster": cluster, "error": error})),
        }
    }

    fn set_revoked(&mut self, why: &str) {
        if !self.revoked {
            self.revoked = true;
            self.kept.revoked = Some(why.to_owned());
            self.events.push_back(json!({"type": "kept"}));
            self.events
                .push_back(json!({"type": "revoked", "reason": why}));
        }
    }

    /// The network changed (the browser went `online`, or the page became visible): the path is
    /// asked at once.
    pub fn network_changed(&mut self, now_ms: u64) {
        if let Some(relay) = &mut self.relay {
            relay.liveness.handle_network_changed(now_ms);
        }
    }

    /// The page was hidden or shown: idle keepalives once a minute while hidden.
    pub fn set_hidden(&mut self, hidden: bool) {
        self.hidden = hidden;
        let idle = if hidden {
            HIDDEN_IDLE_MS
        } else {
            Settings::HUB.idle_ms
        };
        if let Some(relay) = &mut self.relay {
            relay.liveness.set_idle(idle);
        }
    }

    /// The next message for the WebSocket.
    pub fn poll_send(&mut self) -> Option<Outgoing> {
        self.out.pop_front()
    }

    /// The next event for the page, a JSON object with a `type`:
    ///
    /// - `hubs`: the hubs known changed (read [`WebHub::hubs`]);
    /// - `answer` (`id`, `ok`, and `apps`, `result` or `error`): one of the page's requests ended;
    /// - `serve` (`id`, `tool`, `arguments`, `hub`, `principal`, `deadline_ms`): run a tool of
    ///   the phone app and answer with [`WebHub::answer_call`] or [`WebHub::fail_call`];
    /// - `cancelled` (`id`): the caller stopped waiting for call `id`;
    /// - `audit` (`entry`): a new audit entry (its MAC chains it to the one before);
    /// - `kept`: the kept state changed (store [`WebHub::kept`]);
    /// - `revoked` (`reason`): the cluster revoked this hub; it connects no more;
    /// - `dead`: the relay path is dead: close the socket (the page connects again);
    /// - `closed` (`code`, `reason`): the socket closed.
    pub fn poll_event(&mut self) -> Option<Value> {
        self.events.pop_front()
    }

    /// When [`WebHub::handle_timeout`] is next due (Unix ms).
    pub fn poll_timeout(&self) -> Option<u64> {
        [
            self.core.poll_timeout(),
            self.relay.as_ref().map(|r| r.liveness.poll_timeout()),
            self.nonces.poll_timeout(),
            self.serving.values().map(|s| s.deadline_ms).min(),
            (self.relay.is_some() && !self.renewing && !self.revoked)
                .then(|| self.renewal.poll_timeout()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// The clock reached `now_ms`.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        // Calls of the phone nobody answered are refused at their deadline (before the request
        // layer forgets them at the same instant).
        let mut due: Vec<u32> = self
            .serving
            .iter()
            .filter(|(_, s)| s.deadline_ms <= now_ms)
            .map(|(id, _)| *id)
            .collect();
        due.sort_unstable();
        for id in due {
            let why = "nobody answered on the phone before the call's deadline".to_owned();
            let _ = self.finish_serving(id, Err((CallErrorCode::Timeout, why)), now_ms);
            self.events
                .push_back(json!({"type": "cancelled", "id": id}));
        }
        self.core.handle_timeout(now_ms, &mut OsRng);
        self.nonces.handle_timeout(now_ms);
        self.maybe_renew(now_ms);
        let waiting = self.core.outstanding() > 0;
        if let Some(relay) = &mut self.relay {
            match relay.liveness.handle_timeout(now_ms, waiting) {
                Some(Action::Probe) => self.out.push_back(Outgoing::Probe),
                Some(Action::Dead { silent_ms }) => {
                    self.events
                        .push_back(json!({"type": "dead", "silent_ms": silent_ms}));
                }
                None => {}
            }
        }
        self.drain(now_ms);
    }

    /// A text message from the relay (the keepalive's answer).
    pub fn handle_text(&mut self, text: &str, now_ms: u64) {
        let waiting = self.core.outstanding() > 0;
        if let Some(relay) = &mut self.relay {
            if text == KEEPALIVE_RESPONSE {
                relay.liveness.handle_heard(now_ms, waiting);
            }
        }
    }

    /// A binary message from the relay. An error means the relay broke the protocol: close the
    /// socket with the code returned.
    pub fn handle_message(&mut self, message: &[u8], now_ms: u64) -> Result<(), (u16, String)> {
        let waiting = self.core.outstanding() > 0;
        let Some(relay) = &mut self.relay else {
            return Ok(());
        };
        relay.liveness.handle_heard(now_ms, waiting);
        let mut events = Vec::new();
        let handled = relay.session.handle_message(message, &mut events);
        for event in events {
            self.relay_event(event, now_ms);
        }
        self.drain(now_ms);
        handled.map_err(|e| (e.close_code().code(), e.to_string()))
    }

    fn relay_event(&mut self, event: ClientEvent, now_ms: u64) {
        let said = match event {
            ClientEvent::Message { from, payload } => {
                self.core
                    .handle_incoming(from, &payload, false, now_ms, &mut OsRng);
                return;
            }
            ClientEvent::Welcome { online } => {
                for peer in self.peers.values_mut() {
                    peer.online = false;
                }
                for hub in &online {
                    self.peers.entry(*hub).or_default().online = true;
                }
                self.events.push_back(json!({"type": "connected"}));
                RelaySaid::Welcome(online)
            }
            ClientEvent::PeerJoined(hub) => {
                self.peers.entry(hub).or_default().online = true;
                RelaySaid::Joined(hub)
            }
            ClientEvent::PeerLeft(hub) => {
                if let Some(peer) = self.peers.get_mut(&hub) {
                    peer.online = false;
                }
                RelaySaid::Left(hub)
            }
            ClientEvent::Undeliverable(hub) => RelaySaid::Undeliverable(hub),
            ClientEvent::Revocations(list) => {
                self.on_revocations(list, now_ms);
                return;
            }
            ClientEvent::Successor(successor) => {
                self.on_successor(&successor, now_ms);
                return;
            }
            // Pacing, status and restarts change nothing the page must know now.
            _ => return,
        };
        self.core.handle_relay(&said, now_ms, &mut OsRng);
        self.events.push_back(json!({"type": "hubs"}));
    }

    fn on_revocations(&mut self, list: VerifiedRevocations, now_ms: u64) {
        let me_revoked = list.revokes(&self.certificate);
        self.kept.revocations = Some(hex::encode(list.bytes()));
        self.held = Some(list.clone());
        self.core.handle_revocations(list, now_ms, &mut OsRng);
        self.events.push_back(json!({"type": "kept"}));
        if me_revoked {
            self.set_revoked("the cluster revoked this hub's certificate");
        }
    }

    /// The hubs known: id, name (once a session told it), trust, online.
    pub fn hubs(&self) -> Value {
        let hubs: Vec<Value> = self
            .peers
            .iter()
            .map(|(id, p)| {
                json!({
                    "id": id.to_string(),
                    "name": p.cert.as_ref().map(|c| c.name().to_owned()),
                    "trust": p.cert.as_ref().map(|c| c.trust().to_string()),
                    "online": p.online,
                })
            })
            .collect();
        json!({
            "me": {"id": self.me.to_string(), "name": self.certificate.name()},
            "connected": self.relay.as_ref().is_some_and(|r| r.session.welcomed()),
            "hubs": hubs,
        })
    }

    fn hub_id(text: &str) -> Result<HubId, WebError> {
        text.parse()
            .map_err(|_| WebError::Request(format!("{text:?} is not a hub id")))
    }

    fn take_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    fn envelope(
        &self,
        target: HubId,
        app: &str,
        tool: &str,
        arguments: &[u8],
        lifetime_ms: u64,
        now_ms: u64,
    ) -> Result<Vec<u8>, WebError> {
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        Delegation {
            version: ENVELOPE_V2,
            origin: self.me,
            target,
            issued_at_ms: now_ms,
            expires_at_ms: now_ms + lifetime_ms.min(MAX_LIFETIME_MS),
            nonce,
            arguments_sha256: arguments_hash(arguments),
            principal: PRINCIPAL.into(),
            app: app.to_owned(),
            tool: tool.to_owned(),
            scopes: vec![ALL_SCOPES.to_owned()],
        }
        .sign(&self.credentials.identity)
        .map_err(|_| WebError::Request("an app or tool name over 255 bytes".into()))
    }

    fn ask(
        &mut self,
        hub: HubId,
        request: &Request,
        deadline_ms: u64,
        asked: Asked,
        now_ms: u64,
    ) -> Result<u32, WebError> {
        if self.relay.is_none() {
            return Err(WebError::NotConnected);
        }
        if self.asked.len() >= MAX_ASKED {
            return Err(WebError::Request(format!(
                "{MAX_ASKED} requests wait already: try again when one has ended"
            )));
        }
        let token = self
            .core
            .request(hub, request, deadline_ms, now_ms, &mut OsRng)
            .map_err(|e| WebError::Request(e.to_string()))?;
        let id = asked.id;
        self.asked.insert(token, asked);
        self.drain(now_ms);
        Ok(id)
    }

    /// Asks hub `hub` (its id) which apps it shares with this hub: the request's id (its
    /// `answer` event names it).
    pub fn list_apps(&mut self, hub: &str, now_ms: u64) -> Result<u32, WebError> {
        let hub = Self::hub_id(hub)?;
        let envelope = self.envelope(hub, LISTING, LISTING, b"", LIST_TIMEOUT_MS, now_ms)?;
        let asked = Asked {
            id: self.take_id(),
            hub,
            what: AskedFor::Apps,
            app: String::new(),
            tool: String::new(),
            arguments_sha256: [0; 32],
            bytes: 0,
            sent_ms: now_ms,
        };
        self.ask(
            hub,
            &Request::SignedApps { envelope },
            now_ms + LIST_TIMEOUT_MS,
            asked,
            now_ms,
        )
    }

    /// Calls `tool` of `app` on hub `hub` with `arguments` (a JSON object), within
    /// `timeout_ms`: the request's id. Audited as `call.out`.
    pub fn call(
        &mut self,
        hub: &str,
        app: &str,
        tool: &str,
        arguments: &str,
        timeout_ms: u32,
        now_ms: u64,
    ) -> Result<u32, WebError> {
        let hub = Self::hub_id(hub)?;
        let arguments = shared_proto::agent::arguments::canonical(arguments)
            .map_err(|e| WebError::Request(e.to_string()))?;
        let timeout_ms = u64::from(timeout_ms).clamp(1_000, MAX_CALL_TIMEOUT_MS);
        let envelope = self.envelope(
            hub,
            app,
            tool,
            &arguments,
            timeout_ms + ENVELOPE_SLACK_MS,
            now_ms,
        )?;
        let asked = Asked {
            id: self.take_id(),
            hub,
            what: AskedFor::Call,
            app: app.to_owned(),
            tool: tool.to_owned(),
            arguments_sha256: arguments_hash(&arguments),
            bytes: arguments.len() as u64,
            sent_ms: now_ms,
        };
        let call = OutgoingCall {
            timeout_ms: timeout_ms as u32,
            app: app.to_owned(),
            tool: tool.to_owned(),
            envelope,
            arguments,
        };
        let deadline = call_deadline(now_ms, call.timeout_ms);
        self.ask(hub, &Request::Call(call), deadline, asked, now_ms)
    }

    /// The page's result of call `id` of the phone app (an MCP tool result, JSON).
    pub fn answer_call(&mut self, id: u32, result: &str, now_ms: u64) -> Result<(), WebError> {
        let value: Value = serde_json::from_str(result)
            .map_err(|e| WebError::Request(format!("the result is not JSON: {e}")))?;
        let body = serde_json::to_vec(&value).unwrap_or_default();
        self.finish_serving(id, Ok(body), now_ms)
    }

    /// Call `id` of the phone app failed or was refused by the person (`message` says why).
    pub fn fail_call(
        &mut self,
        id: u32,
        refused: bool,
        message: &str,
        now_ms: u64,
    ) -> Result<(), WebError> {
        let code = if refused {
            CallErrorCode::NotShared
        } else {
            CallErrorCode::AppFailed
        };
        self.finish_serving(id, Err((code, message.to_owned())), now_ms)
    }

    fn finish_serving(
        &mut self,
        id: u32,
        outcome: Result<Vec<u8>, (CallErrorCode, String)>,
        now_ms: u64,
    ) -> Result<(), WebError> {
        let serving = self
            .serving
            .remove(&id)
            .ok_or_else(|| WebError::Request(format!("no call {id} waits (ended or cancelled)")))?;
        let (decision, reason, bytes, answer) = match outcome {
            Ok(body) => (
                "ok",
                "answered".to_owned(),
                serving.bytes + body.len() as u64,
                Answer::CallResult(body),
            ),
            Err((code, message)) => (
                "failed",
                format!("{}: {message}", code.name()),
                serving.bytes,
                Answer::CallError { code, message },
            ),
        };
        let (from, token) = (serving.from, serving.token);
        self.audit(now_ms, serving.entry(decision, reason, bytes, now_ms));
        let sent = self.core.answer(from, token, &answer, now_ms, &mut OsRng);
        self.drain(now_ms);
        sent.map_err(|e| WebError::Request(format!("the answer was not sent: {e}")))
    }

    /// Appends `entry` to the audit chain: the page gets it with its MAC, and the kept head.
    fn audit(&mut self, now_ms: u64, mut entry: Entry) {
        let prev: [u8; 32] = hex::decode(&self.kept.audit_mac)
            .ok()
            .and_then(|v| v.try_into().ok())
            .unwrap_or([0; 32]);
        entry.seq = self.kept.audit_seq + 1;
        entry.at_ms = now_ms;
        entry.count = Some(1);
        entry.bytes.get_or_insert(0);
        let entry = entry.bounded();
        let mac = entry.mac(&self.audit_key, &prev);
        self.kept.audit_seq = entry.seq;
        self.kept.audit_mac = hex::encode(mac);
        self.events.push_back(json!({
            "type": "audit",
            "entry": {
                "seq": entry.seq,
                "at_ms": entry.at_ms,
                "kind": entry.kind,
                "peer": entry.peer.map(|p| p.to_string()),
                "hub": entry.peer.and_then(|p| self.peer_name(p)),
                "principal": entry.principal,
                "app": entry.app,
                "tool": entry.tool,
                "decision": entry.decision,
                "reason": entry.reason,
                "duration_ms": entry.duration_ms,
                "arguments_sha256": entry.arguments_sha256.map(hex::encode),
                "bytes": entry.bytes,
                "mac": hex::encode(mac),
            }
        }));
        self.events.push_back(json!({"type": "kept"}));
    }

    fn peer_name(&self, hub: HubId) -> Option<String> {
        self.peers
            .get(&hub)
            .and_then(|p| p.cert.as_ref())
            .map(|c| c.name().to_owned())
    }

    /// Moves what the core produced on.
    fn drain(&mut self, now_ms: u64) {
        while let Some(event) = self.core.poll_event() {
            match event {
                CoreEvent::Transmit { to, payload } => {
                    let frame = Frame::Send {
                        dst: to,
                        payload: &payload,
                    };
                    if let (Some(relay), Ok(message)) = (&mut self.relay, frame.to_message()) {
                        relay.liveness.handle_sent(now_ms);
                        self.out.push_back(Outgoing::Binary(message));
                    }
                }
                CoreEvent::Answered(answered) => self.answered(answered, now_ms),
                CoreEvent::Inbound(inbound) => self.inbound(inbound, now_ms),
                CoreEvent::Established { certificate } => {
                    let hub = certificate.hub_id();
                    // Known to the room (the relay admitted it), or it could not have a session.
                    self.peers.entry(hub).or_default().cert = Some(*certificate);
                    let version = Msg::Version(SESSION_VERSION).to_vec();
                    let _ = self.core.send(hub, version, now_ms, &mut OsRng);
                    self.events.push_back(json!({"type": "hubs"}));
                }
                // Data, pairing messages (this hub issues no tokens), failed sessions (their
                // requests end on their own) and refused handshakes change nothing here.
                _ => {}
            }
        }
    }

    /// Asks an admin for a new certificate when the one held is due (two thirds into its
    /// term), the admins in turn after a failure.
    fn maybe_renew(&mut self, now_ms: u64) {
        if self.relay.is_none() || self.renewing || self.revoked || !self.renewal.is_due(now_ms) {
            return;
        }
        let Some(admin) =
            (!self.admins.is_empty()).then(|| self.admins[self.next_admin % self.admins.len()])
        else {
            return self.renewal_failed("no admin hub in the manifest".into(), now_ms);
        };
        let asked = Asked {
            id: self.take_id(),
            hub: admin,
            what: AskedFor::Renew,
            app: String::new(),
            tool: String::new(),
            arguments_sha256: [0; 32],
            bytes: 0,
            sent_ms: now_ms,
        };
        match self.ask(
            admin,
            &Request::Renew,
            now_ms + ASK_TIMEOUT_MS,
            asked,
            now_ms,
        ) {
            Ok(_) => self.renewing = true,
            Err(e) => self.renewal_failed(e.to_string(), now_ms),
        }
    }

    /// A renewal attempt failed: the next admin is asked after a backoff, and the page is told
    /// (it says so as the end nears).
    fn renewal_failed(&mut self, why: String, now_ms: u64) {
        self.next_admin += 1;
        self.renewal
            .handle_failure(now_ms, self.certificate.not_after_ms());
        self.events.push_back(json!({
            "type": "renewal_failed",
            "error": why,
            "not_after_ms": self.certificate.not_after_ms(),
        }));
    }

    /// An admin's answer to a renewal request: the certificate taken if it renews this hub's
    /// (kept, used at the next login, and carried to the peers by rekeying every session now).
    fn renewed(&mut self, admin: HubId, result: Result<Reply, String>, now_ms: u64) {
        self.renewing = false;
        let taken = result.and_then(|reply| match reply {
            Reply::Renewed(der) => {
                accept(&self.certificate, &der, &self.credentials.ca_key, now_ms)
                    .map_err(|e| e.to_string())
            }
            _ => Err("an answer of the wrong kind".into()),
        });
        let new = match taken {
            Ok(new) => new,
            Err(why) => return self.renewal_failed(why, now_ms),
        };
        if let Err(e) = self.core.set_certificate(&new, now_ms, &mut OsRng) {
            return self.renewal_failed(e.to_string(), now_ms);
        }
        self.kept.certificate = hex::encode(new.der());
        self.credentials.cert_der = new.der().to_vec();
        self.renewal.handle_renewed(&new);
        self.certificate = new;
        self.events.push_back(json!({
            "type": "renewed",
            "not_after_ms": self.certificate.not_after_ms(),
        }));
        // The audit entry asks the page to keep the state, the new certificate with it.
        self.audit(
            now_ms,
            Entry {
                kind: "cert.renew".into(),
                peer: Some(admin),
                decision: "ok".into(),
                reason: renewed_reason(self.certificate.not_after_ms()),
                ..Entry::default()
            },
        );
    }

    fn answered(&mut self, answered: Answered, now_ms: u64) {
        let Some(asked) = self.asked.remove(&answered.token) else {
            return;
        };
        if asked.what == AskedFor::Renew {
            let result = answered.result.map_err(|f| f.to_string());
            return self.renewed(asked.hub, result, now_ms);
        }
        let event = match answered.result {
            Ok(Reply::Apps(body)) => {
                let apps: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                json!({"type": "answer", "id": asked.id, "ok": true, "apps": apps})
            }
            Ok(Reply::CallResult(body)) => {
                let result: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                self.audit_call_out(&asked, "ok", "answered", body.len() as u64, now_ms);
                json!({"type": "answer", "id": asked.id, "ok": true, "result": result})
            }
            Ok(_) => {
                json!({"type": "answer", "id": asked.id, "ok": false, "error": "an answer of the wrong kind"})
            }
            Err(failure) => {
                let error = failure.to_string();
                if asked.what == AskedFor::Call {
                    self.audit_call_out(&asked, "failed", &error, 0, now_ms);
                }
                json!({"type": "answer", "id": asked.id, "ok": false, "error": error})
            }
        };
        self.events.push_back(event);
    }

    fn audit_call_out(
        &mut self,
        asked: &Asked,
        decision: &str,
        reason: &str,
        bytes: u64,
        now_ms: u64,
    ) {
        self.audit(
            now_ms,
            Entry {
                kind: "call.out".into(),
                peer: Some(asked.hub),
                principal: PRINCIPAL.into(),
                app: asked.app.clone(),
                tool: asked.tool.clone(),
                decision: decision.into(),
                reason: reason.into(),
                duration_ms: now_ms.saturating_sub(asked.sent_ms),
                arguments_sha256: Some(asked.arguments_sha256),
                bytes: Some(asked.bytes + bytes),
                ..Entry::default()
            },
        );
    }

    /// A request of another hub.
    fn inbound(&mut self, inbound: Inbound, now_ms: u64) {
        let (request, answer) = match inbound {
            Inbound::Ping(request) => (request, Answer::Pong),
            Inbound::Info(request) => {
                let info = json!({"name": self.certificate.name(), "version": env!("CARGO_PKG_VERSION"), "uptime_s": 0});
                (
                    request,
                    Answer::Info(serde_json::to_vec(&info).unwrap_or_default()),
                )
            }
            Inbound::Apps { request, listing } => {
                let answer = match self.cert_of(request.from) {
                    Some(cert) => {
                        match phone::listing(&self.sharing, cert, self.me, &listing, now_ms) {
                            Ok(body) => Answer::Apps(body),
                            Err(code) => Answer::Refused(code.to_string()),
                        }
                    }
                    None => Answer::Apps(b"[]".to_vec()),
                };
                (request, answer)
            }
            Inbound::Call(call) => {
                self.serve(call, now_ms);
                return;
            }
            Inbound::Cancel(request) => {
                self.cancel_serving(&request, now_ms);
                return;
            }
            // A browser hub holds no CA key.
            Inbound::Renew(request) => (
                request,
                Answer::Refused(shared_proto::trust::renewal::NOT_ADMIN.into()),
            ),
            // Versions are the request layer's; manifests, audit heads and views are for hubs
            // that keep a quorum (this one does not).
            _ => return,
        };
        let _ = self
            .core
            .answer(request.from, request.token, &answer, now_ms, &mut OsRng);
    }

    fn cert_of(&self, hub: HubId) -> Option<&VerifiedPeer> {
        self.peers.get(&hub).and_then(|p| p.cert.as_ref())
    }

    /// A call of the phone app: checked, audited, handed to the page (or refused).
    fn serve(&mut self, call: CallRequest, now_ms: u64) {
        let cert = self.peers.get(&call.from).and_then(|p| p.cert.as_ref());
        let checked = match cert {
            None => Err((
                CallErrorCode::NotShared,
                "no session certificate".to_owned(),
            )),
            Some(_) if self.serving.len() >= MAX_SERVING => Err((
                CallErrorCode::Busy,
                format!("{MAX_SERVING} calls of the phone wait already"),
            )),
            Some(cert) => phone::check(
                &self.sharing,
                cert,
                self.me,
                &call,
                &mut self.nonces,
                now_ms,
            ),
        };
        let sha = arguments_hash(&call.arguments);
        match checked {
            Ok(Admitted {
                tool,
                arguments,
                principal,
            }) => {
                let id = self.take_id();
                self.events.push_back(json!({
                    "type": "serve",
                    "id": id,
                    "tool": tool,
                    "arguments": arguments,
                    "hub": self.peer_name(call.from),
                    "principal": principal,
                    "deadline_ms": call.deadline_ms,
                }));
                self.serving.insert(
                    id,
                    Serving {
                        from: call.from,
                        token: call.token,
                        tool,
                        principal,
                        arguments_sha256: sha,
                        bytes: call.arguments.len() as u64,
                        started_ms: now_ms,
                        deadline_ms: call.deadline_ms,
                    },
                );
            }
            Err((code, message)) => {
                let principal = Delegation::decode(&call.envelope)
                    .map(|d| d.principal)
                    .unwrap_or_default();
                self.audit(
                    now_ms,
                    Entry {
                        kind: "call.in".into(),
                        peer: Some(call.from),
                        principal,
                        app: call.app.clone(),
                        tool: call.tool.clone(),
                        decision: "refused".into(),
                        reason: format!("{}: {message}", code.name()),
                        arguments_sha256: Some(sha),
                        bytes: Some(call.arguments.len() as u64),
                        ..Entry::default()
                    },
                );
                let answer = Answer::CallError { code, message };
                let _ = self
                    .core
                    .answer(call.from, call.token, &answer, now_ms, &mut OsRng);
            }
        }
    }

    fn cancel_serving(&mut self, request: &PeerRequest, now_ms: u64) {
        let Some(id) = self
            .serving
            .iter()
            .find(|(_, s)| s.from == request.from && s.token == request.token)
            .map(|(id, _)| *id)
        else {
            return;
        };
        if let Some(serving) = self.serving.remove(&id) {
            let reason = "cancelled: the caller stopped waiting".to_owned();
            self.audit(now_ms, serving.entry("allowed", reason, 0, now_ms));
            self.events
                .push_back(json!({"type": "cancelled", "id": id}));
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use shared_proto::relay::frame::{frames, PROTOCOL_VERSION};
    use shared_proto::session::noise::LocalIdentity;
    use shared_proto::session::rpc::Failure;
    use shared_proto::trust::TrustLevel;

    use super::*;
    use crate::testing::{ca, hub, hub_with, kept, TestHub, NOW};
    use shared_proto::trust::renewal::{due_at, renewed};
    use shared_proto::trust::ClusterCa;

    /// The browser hub and a desk (a peer core, as the native hub runs it) in one room of a
    /// relay that only passes payloads between them.
    struct Room {
        web: WebHub,
        desk: PeerCore,
        desk_id: HubId,
        desk_seen: Vec<CoreEvent>,
        web_events: Vec<Value>,
        probes: usize,
        /// Binary messages the browser hub sent.
        messages: usize,
        rng: StdRng,
        now: u64,
    }

    impl Room {
        fn new(trust: TrustLevel) -> Self {
            let ca = ca(1);
            Self::of(&ca, &hub(&ca, 1, TrustLevel::Full), &hub(&ca, 9, trust))
        }

        /// The room of `desk` and the browser hub `phone`.
        fn of(ca: &ClusterCa, desk: &TestHub, phone: &TestHub) -> Self {
            let mut web = WebHub::open(kept(ca, phone, phone, &[desk, phone]), NOW).unwrap();
            web.opened(NOW).unwrap();
            let desk_identity = LocalIdentity {
                cluster: ca.cluster_id(),
                ca_key: ca.public_key(),
                static_secret: desk.noise_secret.into(),
                cert_der: desk.cert.der().to_vec(),
            };
            let desk_id = desk.cert.hub_id();
            let mut core = PeerCore::new(desk_identity, desk_id, 5);
            core.add_certificate(phone.cert.clone());
            let mut room = Room {
                web,
                desk: core,
                desk_id,
                desk_seen: Vec::new(),
                web_events: Vec::new(),
                probes: 0,
                messages: 0,
                rng: StdRng::seed_from_u64(3),
                now: NOW,
            };
            let welcome = Frame::Welcome {
                version: PROTOCOL_VERSION,
                online: vec![desk_id],
            };
            room.web
                .handle_message(&welcome.to_message().unwrap(), NOW)
                .unwrap();
            let (now, rng) = (room.now, &mut room.rng);
            let phone_id = room.web.id();
            room.desk
                .handle_relay(&RelaySaid::Welcome(vec![phone_id]), now, rng);
            room.run();
            room
        }

        /// Passes what either side sends until neither sends anything; the relay answers probes.
        fn run(&mut self) {
            loop {
                let mut moved = false;
                while let Some(out) = self.web.poll_send() {
                    moved = true;
                    match out {
                        Outgoing::Probe => {
                            self.probes += 1;
                            self.web.handle_text(KEEPALIVE_RESPONSE, self.now);
                        }
                        Outgoing::Binary(message) => {
                            self.messages += 1;
                            for frame in frames(&message) {
                                if let Ok(Frame::Send { payload, .. }) = frame {
                                    let (now, rng, from) = (self.now, &mut self.rng, self.web.id());
                                    self.desk.handle_incoming(from, payload, false, now, rng);
                                }
                            }
                        }
                    }
                }
                while let Some(event) = self.desk.poll_event() {
                    match event {
                        CoreEvent::Transmit { payload, .. } => {
                            moved = true;
                            let recv = Frame::Recv {
                                src: self.desk_id,
                                payload: &payload,
                            };
                            self.web
                                .handle_message(&recv.to_message().unwrap(), self.now)
                                .unwrap();
                        }
                        other => self.desk_seen.push(other),
                    }
                }
                while let Some(event) = self.web.poll_event() {
                    self.web_events.push(event);
                }
                if !moved {
                    return;
                }
            }
        }

        /// Runs both sides' timers up to `to`.
        fn advance(&mut self, to: u64) {
            loop {
                let next = [self.web.poll_timeout(), self.desk.poll_timeout()]
                    .into_iter()
                    .flatten()
                    .min()
                    .unwrap_or(to);
                if next > to {
                    self.now = to;
                    return;
                }
                self.now = next.max(self.now);
                self.web.handle_timeout(self.now);
                let rng = &mut self.rng;
                self.desk.handle_timeout(self.now, rng);
                self.run();
                if self.now >= to {
                    return;
                }
            }
        }

        /// The desk calls `tool` of the phone app.
        fn desk_calls(&mut self, desk: &TestHub, tool: &str, arguments: &str) -> Token {
            let phone = self.web.id();
            let envelope = Delegation {
                version: ENVELOPE_V2,
                origin: self.desk_id,
                target: phone,
                issued_at_ms: self.now,
                expires_at_ms: self.now + 35_000,
                nonce: rand::random(),
                arguments_sha256: arguments_hash(arguments.as_bytes()),
                principal: "ann".into(),
                app: phone::APP.into(),
                tool: tool.into(),
                scopes: vec![ALL_SCOPES.into()],
            }
            .sign(&desk.identity)
            .unwrap();
            let call = OutgoingCall {
                timeout_ms: 30_000,
                app: phone::APP.into(),
                tool: tool.into(),
                envelope,
                arguments: arguments.as_bytes().to_vec(),
            };
            let (now, rng) = (self.now, &mut self.rng);
            let deadline = call_deadline(now, call.timeout_ms);
            let token = self
                .desk
                .request(phone, &Request::Call(call), deadline, now, rng)
                .unwrap();
            self.run();
            token
        }

        fn desk_answer(&self, token: Token) -> Option<&Result<Reply, Failure>> {
            self.desk_seen.iter().find_map(|e| match e {
                CoreEvent::Answered(a) if a.token == token => Some(&a.result),
                _ => None,
            })
        }

        /// The code the phone refused call `token` with, if it did.
        fn desk_refusal(&self, token: Token) -> Option<CallErrorCode> {
            match self.desk_answer(token) {
                Some(Err(Failure::Call { code, .. })) => *code,
                _ => None,
            }
        }

        fn events(&self, kind: &str) -> Vec<&Value> {
            self.web_events
                .iter()
                .filter(|e| e["type"] == kind)
                .collect()
        }
    }

    #[test]
    fn the_desk_asks_the_phone_and_gets_the_persons_answer_or_a_refusal_at_the_deadline() {
        let desk = hub(&ca(1), 1, TrustLevel::Full);
        let mut room = Room::new(TrustLevel::AgentDispatch);
        // Shared with nobody: refused, and audited.
        let token = room.desk_calls(&desk, "ask", r#"{"question":"Deploy?"}"#);
        assert_eq!(
            room.desk_refusal(token),
            Some(CallErrorCode::NotShared),
            "{:?}",
            room.desk_seen
        );
        room.web.set_sharing("cluster", room.now).unwrap();
        let token = room.desk_calls(&desk, "ask", r#"{"question":"Deploy?"}"#);
        let serve = room.events("serve");
        assert_eq!(serve.len(), 1, "{:?}", room.web_events);
        assert_eq!(serve[0]["arguments"]["question"], "Deploy?");
        assert_eq!(serve[0]["principal"], "ann");
        let id = serve[0]["id"].as_u64().unwrap() as u32;
        room.web
            .answer_call(
                id,
                r#"{"content":[{"type":"text","text":"yes"}]}"#,
                room.now,
            )
            .unwrap();
        room.run();
        let Some(Ok(Reply::CallResult(body))) = room.desk_answer(token) else {
            panic!("{:?}", room.desk_seen);
        };
        assert!(String::from_utf8_lossy(body).contains("yes"));
        // A second question nobody answers: refused `timeout` at its deadline.
        let token = room.desk_calls(&desk, "ask", r#"{"question":"Really?"}"#);
        room.advance(room.now + 31_000);
        assert_eq!(
            room.desk_refusal(token),
            Some(CallErrorCode::Timeout),
            "{:?}",
            room.desk_seen
        );
        assert_eq!(room.events("cancelled").len(), 1);
        // Everything is in the audit chain, in order, each entry's MAC chained to the one before.
        let audit: Vec<&Value> = room.events("audit");
        let seqs: Vec<u64> = audit
            .iter()
            .map(|e| e["entry"]["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4], "{audit:?}");
        let kinds: Vec<(&str, &str)> = audit
            .iter()
            .map(|e| {
                (
                    e["entry"]["kind"].as_str().unwrap(),
                    e["entry"]["decision"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("call.in", "refused"),
                ("app.share", "ok"),
                ("call.in", "ok"),
                ("call.in", "failed")
            ]
        );
        assert_eq!(room.web.kept().audit_seq, 4);
    }

    #[test]
    fn a_hidden_idle_page_sends_a_keepalive_a_minute_and_nothing_else() {
        let mut room = Room::new(TrustLevel::AgentDispatch);
        let start = room.now;
        room.advance(start + 600_000);
        let shown = room.probes;
        assert_eq!(shown, 24, "every 25 s while shown");
        room.web.set_hidden(true);
        room.probes = 0;
        let messages = room.messages;
        room.advance(start + 600_000 + 3_600_000);
        assert!(
            (59..=60).contains(&room.probes),
            "{} in the hour",
            room.probes
        );
        assert_eq!(room.messages, messages, "nothing but keepalives");
    }

    /// A phone whose certificate is valid a minute asks the founder for a new one two thirds
    /// into it, takes it (kept, and carried to the desk by a rekey), and opens again after the
    /// first one ended; one for other keys is refused and asked again.
    #[test]
    fn the_browser_hub_renews_its_certificate_from_the_founder() {
        let ca = ca(1);
        let year = (NOW - 86_400_000, NOW + 365 * 86_400_000);
        let desk = hub_with(&ca, 1, TrustLevel::Full, "founder", year);
        let phone = hub_with(
            &ca,
            9,
            TrustLevel::AgentDispatch,
            "phone",
            (NOW - 6_000, NOW + 60_000),
        );
        let other = hub_with(&ca, 7, TrustLevel::Full, "phone", year);
        let mut room = Room::of(&ca, &desk, &phone);
        let due = due_at(&phone.cert);
        let asked = |room: &mut Room| {
            room.desk_seen.iter().rev().find_map(|e| match e {
                CoreEvent::Inbound(Inbound::Renew(r)) => Some(r.clone()),
                _ => None,
            })
        };
        room.advance(due - 1);
        assert!(asked(&mut room).is_none(), "not before it is due");
        room.advance(due);
        let first = asked(&mut room).expect("a renewal request at two thirds");
        assert_eq!(first.from, phone.cert.hub_id());
        // Answered with another hub's certificate: refused, asked again after 5 s.
        let wrong = ca
            .issue(&renewed(&other.cert, None, room.now), &mut room.rng)
            .unwrap();
        let (now, rng) = (room.now, &mut room.rng);
        room.desk
            .answer(first.from, first.token, &Answer::Renewed(wrong), now, rng)
            .unwrap();
        room.run();
        let failed: Vec<_> = room.events("renewal_failed");
        assert_eq!(failed.len(), 1, "{failed:?}");
        assert_eq!(room.web.kept().certificate, hex::encode(phone.cert.der()));
        room.desk_seen.clear();
        room.advance(room.now + 5_000);
        let second = asked(&mut room).expect("asked again");
        let der = ca
            .issue(&renewed(&phone.cert, None, room.now), &mut room.rng)
            .unwrap();
        let (now, rng) = (room.now, &mut room.rng);
        room.desk
            .answer(
                second.from,
                second.token,
                &Answer::Renewed(der.clone()),
                now,
                rng,
            )
            .unwrap();
        room.run();
        assert_eq!(room.events("renewed").len(), 1);
        assert_eq!(room.web.kept().certificate, hex::encode(&der));
        let renewal: Vec<_> = room
            .events("audit")
            .into_iter()
            .filter(|e| e["entry"]["kind"] == "cert.renew")
            .collect();
        assert_eq!(renewal.len(), 1);
        // The desk's session came up again with the new certificate, at once.
        let fingerprint = shared_proto::trust::fingerprint(&der);
        assert!(room.desk_seen.iter().any(|e| matches!(
            e,
            CoreEvent::Established { certificate, .. } if certificate.fingerprint() == fingerprint
        )));
        // The kept state opens after the first certificate ended.
        let kept = room.web.kept().clone();
        assert!(WebHub::open(kept, NOW + 61_000).is_ok());
    }

    /// docs/PROTOCOL.md section 9, "Rotation of the CA key": the browser hub follows the
    /// successor document the relay hands it (its kept state names the new cluster, its next
    /// socket goes to the new room), and says so when the document has nothing for it.
    #[test]
    fn the_browser_hub_follows_the_cluster_to_a_new_ca_key() {
        use crate::testing::{manifest, DAY_MS};
        use shared_proto::trust::renewal::renewed;
        use shared_proto::trust::rotation::Successor;
        let old = ca(1);
        let desk = hub(&old, 1, TrustLevel::Full);
        let phone = hub(&old, 9, TrustLevel::AgentDispatch);
        let mut room = Room::of(&old, &desk, &phone);
        let before = room.web.path();
        let new = ca(2);
        let successor = |certificates: Vec<Vec<u8>>| {
            Successor {
                new_ca_key: new.public_key(),
                grace_until_ms: NOW + DAY_MS,
                manifest: manifest(&new, &[]),
                revocations: None,
                certificates,
            }
            .sign(&old, NOW)
            .unwrap()
        };
        // Nothing for this hub: said, nothing changes.
        let other = successor(vec![]);
        room.web
            .handle_message(&Frame::Successor(&other).to_message().unwrap(), NOW)
            .unwrap();
        room.run();
        assert_eq!(room.events("move_failed").len(), 1);
        assert_eq!(room.web.path(), before);
        // Its certificate from the new key: it follows.
        let mut rng = StdRng::seed_from_u64(8);
        let cert = new
            .issue(&renewed(&phone.cert, None, NOW), &mut rng)
            .unwrap();
        let doc = successor(vec![cert.clone()]);
        room.web
            .handle_message(&Frame::Successor(&doc).to_message().unwrap(), NOW)
            .unwrap();
        room.run();
        let moved = room.events("moved");
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0]["cluster"], new.cluster_id().to_string());
        assert_eq!(room.web.kept().certificate, hex::encode(&cert));
        assert_eq!(
            room.web.kept().ca_key,
            hex::encode(new.public_key().as_bytes())
        );
        assert!(room.web.path().contains(new.cluster_id().as_str()));
        assert!(room
            .events("audit")
            .iter()
            .any(|e| e["entry"]["kind"] == "cluster.move"));
        // The kept state opens as the new cluster's hub, with the same id and audit chain.
        let reopened = WebHub::open(room.web.kept().clone(), NOW + 1000).unwrap();
        assert_eq!(reopened.id(), phone.cert.hub_id());
        // A phone that did not follow in time is told to pair again, and stops.
        let mut late = Room::of(&old, &desk, &phone);
        late.web
            .closed(CloseCode::Moved.code(), "the cluster moved to x");
        late.run();
        assert!(late.web.revoked());
        assert!(late.events("revoked")[0]["reason"]
            .as_str()
            .unwrap()
            .contains("pair it again"));
    }

    #[test]
    fn a_hub_the_relay_refuses_as_revoked_stops_and_says_so() {
        let mut room = Room::new(TrustLevel::AgentDispatch);
        room.web
            .closed(CloseCode::Revoked.code(), "certificate revoked");
        room.run();
        assert_eq!(room.events("revoked").len(), 1);
        assert!(room.web.revoked());
        assert!(room.web.kept().revoked.is_some());
        assert!(room.web.opened(room.now).is_err());
        // Closed for another reason, a hub connects again.
        let mut other = Room::new(TrustLevel::AgentDispatch);
        other.web.closed(1006, "");
        assert!(!other.web.revoked());
        assert!(other.web.opened(other.now).is_ok());
    }
}
