//! The agent surface of the running hub: the apps of every hub an agent may see, and calls to
//! them, local or across the cluster under a signed delegation envelope; and the other side,
//! answering what peers ask of this hub's apps.
//!
//! Every rule lives here, once, for every surface (the admin API, `hub mcp`): who an agent is
//! ([`Principal`]: a name and the scopes its token grants), what another hub may see and call
//! (sharing policy, default deny, and trust levels, checked on the hub that runs the app), and
//! the checks on a call's envelope, each refusal with its own [`CallErrorCode`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::OsRng;
use rand::RngCore;
use rmcp::model::{CallToolResult, JsonObject, Tool};
use shared_proto::agent::{
    arguments_hash, check_call, trust_needed, CallErrorCode, Caller, Delegation,
};
use shared_proto::msg::Msg;
use shared_proto::trust::VerifiedPeer;
use shared_proto::HubId;

use super::{HubState, ServiceError};
use crate::apps::{hints, AppError};
use crate::node::audit;
use crate::node::store::{AppRecord, AuditEntry, NonceUse};
use crate::transport::peers::{OutgoingCall, PeerError, PeerHandle};
use crate::unix_ms;

/// How long a listing waits for each peer.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// A call's deadline when the caller gives none, and the longest one allowed.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest call deadline (the envelope lives at most 60 s).
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(55);
/// Calls from one peer running at once on this hub; more are refused as busy.
pub const MAX_CALLS_PER_PEER: usize = 16;

/// A call from a peer running on this hub: its task, and its audit entry as far as known (what
/// is recorded if the caller cancels it).
pub(crate) type RunningCall = (tokio::task::AbortHandle, AuditEntry);
/// Apps requests from peers being answered at once (each may start apps); more are refused.
pub const MAX_LISTINGS: usize = 16;
/// Largest tool result sent to a peer (JSON bytes); fragments carry it, up to 16 MiB a message.
pub const MAX_RESULT_BYTES: usize = 15 * 1024 * 1024;

/// Who an agent is: the name calls are made for (an API token's name, or `local` for `hub mcp`
/// on this machine) and the scopes its token grants (none: every app and tool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The operator's name, carried in delegation envelopes.
    pub name: String,
    /// `app:NAME` or `app:NAME/TOOL`; empty: no restriction.
    pub scopes: Vec<String>,
}

impl Principal {
    /// The local user, unrestricted.
    pub fn local() -> Self {
        Principal {
            name: "local".into(),
            scopes: Vec::new(),
        }
    }

    fn allows(&self, app: &str, tool: &str) -> bool {
        Delegation::scopes_allow(&self.scopes, app, tool)
    }

    fn allows_app(&self, app: &str) -> bool {
        Delegation::scopes_allow_app(&self.scopes, app)
    }
}

/// One app as listings show it; hubs answer each other's apps requests with an array of these.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AppView {
    /// Its name on its hub.
    pub name: String,
    /// Whether it can be called now.
    pub available: bool,
    /// Why not, if it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Its sharing policy (listed on its own hub only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing: Option<String>,
    /// The tools the asker may call, with their input schemas and annotations.
    pub tools: Vec<Tool>,
}

/// The apps of one hub, as an agent sees them.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HubAppsView {
    /// The hub's id.
    pub hub_id: String,
    /// Its name.
    pub hub_name: String,
    /// Whether it is this hub.
    pub local: bool,
    /// Whether it is reachable now.
    pub online: bool,
    /// What would carry a call: `local`, or `relay` (end-to-end session through the relay).
    pub path: String,
    /// Why its apps could not be listed, if they could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Its apps.
    pub apps: Vec<AppView>,
}

/// A call's outcome as surfaces return it.
pub type CallOutcome = Result<CallToolResult, ServiceError>;

impl From<AppError> for ServiceError {
    fn from(e: AppError) -> Self {
        ServiceError::Call {
            code: e.code,
            message: e.message,
        }
    }
}

fn refused(code: CallErrorCode, message: impl Into<String>) -> ServiceError {
    ServiceError::Call {
        code,
        message: message.into(),
    }
}

impl HubState {
    /// The apps of every hub `principal` may see: this hub's (all of them, within the
    /// principal's scopes), then each online peer's (what it shares with this hub and
    /// principal), asked at once.
    pub async fn list_apps(self: &Arc<Self>, principal: &Principal) -> Vec<HubAppsView> {
        let mut out = Vec::new();
        let me = self.home.certificate().ok();
        let records = self
            .blocking(|state| Ok(state.store().apps()?))
            .await
            .unwrap_or_default();
        let mut local = Vec::new();
        for app in records.iter().filter(|a| principal.allows_app(&a.name)) {
            let mut view = self
                .app_view(app, |t| principal.allows(&app.name, &t.name))
                .await;
            view.sharing = Some(app.sharing.to_string());
            local.push(view);
        }
        if let Some(me) = &me {
            out.push(HubAppsView {
                hub_id: me.hub_id().to_string(),
                hub_name: me.name().to_owned(),
                local: true,
                online: true,
                path: "local".into(),
                error: None,
                apps: local,
            });
        }
        let Some(member) = self.member() else {
            return out;
        };
        let online = self.online();
        let peers = self
            .blocking(|state| Ok(state.store().active_peers()?))
            .await
            .unwrap_or_default();
        let names: HashMap<HubId, String> = peers.into_iter().map(|p| (p.id, p.name)).collect();
        let asks = online.iter().map(|hub| {
            let member = member.clone();
            let hub = *hub;
            let principal = principal.name.clone();
            async move { (hub, member.apps(hub, &principal, LIST_TIMEOUT).await) }
        });
        for (hub, answer) in futures_util::future::join_all(asks).await {
            let (apps, error) = match answer.map_err(|e| e.to_string()).and_then(|body| {
                serde_json::from_slice::<Vec<AppView>>(&body)
                    .map_err(|e| format!("malformed answer: {e}"))
            }) {
                Ok(apps) => (apps, None),
                Err(e) => (Vec::new(), Some(e)),
            };
            let apps = apps
                .into_iter()
                .filter(|a| principal.allows_app(&a.name))
                .map(|mut a| {
                    a.tools.retain(|t| principal.allows(&a.name, &t.name));
                    a
                })
                .collect();
            out.push(HubAppsView {
                hub_id: hub.to_string(),
                hub_name: names.get(&hub).cloned().unwrap_or_default(),
                local: false,
                online: true,
                path: self.path_to(&hub).into(),
                error,
                apps,
            });
        }
        out
    }

    /// What peer `hub` shares with this hub for `principal`.
    pub async fn peer_apps(
        self: &Arc<Self>,
        hub: HubId,
        principal: &Principal,
    ) -> Result<Vec<AppView>, ServiceError> {
        let member = self.member().ok_or(ServiceError::NotJoined)?;
        let body = member
            .apps(hub, &principal.name, LIST_TIMEOUT)
            .await
            .map_err(|e| match e {
                PeerError::Refused { .. } => ServiceError::Refused(e.to_string()),
                PeerError::Timeout(_) => ServiceError::Timeout(e.to_string()),
                e => ServiceError::Unreachable(e.to_string()),
            })?;
        serde_json::from_slice(&body)
            .map_err(|e| ServiceError::Unreachable(format!("malformed answer from {hub}: {e}")))
    }

    /// A hub named by its id or its name: this hub or a known peer.
    pub async fn resolve_hub(self: &Arc<Self>, text: &str) -> Result<HubId, ServiceError> {
        if let Ok(id) = text.parse::<HubId>() {
            return Ok(id);
        }
        let me = self.home.certificate()?;
        if text == me.name() {
            return Ok(me.hub_id());
        }
        let name = text.to_owned();
        let found: Vec<HubId> = self
            .blocking(move |state| Ok(state.store().active_peers()?))
            .await?
            .into_iter()
            .filter(|p| p.name == name)
            .map(|p| p.id)
            .collect();
        match found.as_slice() {
            [id] => Ok(*id),
            [] => Err(ServiceError::NotFound(format!("no hub named {text}"))),
            _ => Err(ServiceError::BadRequest(format!(
                "{} hubs are named {text}: give its id",
                found.len()
            ))),
        }
    }

    async fn app_view(&self, app: &AppRecord, keep: impl Fn(&Tool) -> bool) -> AppView {
        match self.apps.tools(app).await {
            Ok(tools) => AppView {
                name: app.name.clone(),
                available: true,
                reason: None,
                sharing: None,
                tools: tools.iter().filter(|t| keep(t)).cloned().collect(),
            },
            Err(e) => AppView {
                name: app.name.clone(),
                available: false,
                reason: Some(e.message),
                sharing: None,
                tools: Vec::new(),
            },
        }
    }

    /// Calls `tool` of `app` on `hub` (this hub's id, or a peer's) for `principal`.
    pub async fn call_app(
        self: &Arc<Self>,
        principal: &Principal,
        hub: HubId,
        app: &str,
        tool: &str,
        arguments: Option<JsonObject>,
        timeout: Option<Duration>,
    ) -> CallOutcome {
        let timeout = timeout
            .unwrap_or(DEFAULT_CALL_TIMEOUT)
            .min(MAX_CALL_TIMEOUT);
        if !principal.allows(app, tool) {
            return Err(refused(
                CallErrorCode::ScopeDenied,
                format!("the token's scopes do not grant {app}/{tool}"),
            ));
        }
        let me = self.home.certificate()?.hub_id();
        if hub == me {
            let name = app.to_owned();
            let record = self
                .blocking(move |state| Ok(state.store().app(&name)?))
                .await?
                .ok_or_else(|| refused(CallErrorCode::NotShared, format!("no app {app}")))?;
            return Ok(self.apps.call(&record, tool, arguments, timeout).await?);
        }
        let member = self.member().ok_or(ServiceError::NotJoined)?;
        let arguments = serde_json::to_vec(&arguments.unwrap_or_default())
            .map_err(|e| ServiceError::BadRequest(format!("arguments: {e}")))?;
        let credentials = self.home.credentials()?;
        let now = unix_ms();
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        let arguments_sha256 = arguments_hash(&arguments);
        let envelope = Delegation {
            origin: me,
            target: hub,
            issued_at_ms: now,
            expires_at_ms: now + timeout.as_millis() as u64 + 5_000,
            nonce,
            arguments_sha256,
            principal: principal.name.clone(),
            app: app.to_owned(),
            tool: tool.to_owned(),
            scopes: principal.scopes.clone(),
        }
        .sign(&credentials.identity)
        .map_err(|_| ServiceError::BadRequest("names or scopes over 255 bytes".into()))?;
        let mut record = audit::entry("call.out", Some(hub), "", "");
        record.principal = principal.name.clone();
        record.app = app.to_owned();
        record.tool = tool.to_owned();
        record.arguments_sha256 = Some(arguments_sha256);
        let arguments_len = arguments.len();
        let call = OutgoingCall {
            timeout_ms: timeout.as_millis() as u32,
            app: app.to_owned(),
            tool: tool.to_owned(),
            envelope,
            arguments,
        };
        let started = std::time::Instant::now();
        let answer = member
            .call(hub, call, timeout + Duration::from_secs(2))
            .await;
        record.duration_ms = started.elapsed().as_millis() as u64;
        record.bytes = Some((arguments_len + answer.as_ref().map_or(0, Vec::len)) as u64);
        (record.decision, record.reason) = match &answer {
            Ok(_) => ("ok".into(), String::new()),
            Err(PeerError::Call {
                code: Some(code), ..
            }) => ("refused".into(), code.name().into()),
            Err(e) => ("failed".into(), e.to_string()),
        };
        self.record(record).await;
        let body = answer.map_err(|e| match e {
            PeerError::Call { code, message, .. } => ServiceError::Call {
                code: code.unwrap_or(CallErrorCode::AppFailed),
                message,
            },
            PeerError::Timeout(_) => refused(
                CallErrorCode::Timeout,
                format!("no result from hub {hub} within {timeout:?}"),
            ),
            PeerError::Refused { .. } => refused(CallErrorCode::Suspended, e.to_string()),
            e => ServiceError::Unreachable(e.to_string()),
        })?;
        serde_json::from_slice(&body)
            .map_err(|e| ServiceError::Unreachable(format!("malformed result from {hub}: {e}")))
    }

    /// Answers a peer's apps request, call or cancel ([`crate::transport::peers::PeerEvent::AppRequest`]).
    /// Runs calls on their own tasks; never fails outward (a refusal is an answer).
    pub(crate) fn serve_peer(self: &Arc<Self>, member: PeerHandle, from: HubId, message: Vec<u8>) {
        // Runs on the hub's event loop, in the order peers' messages arrive: the bounds are
        // checked and the work registered here; the work itself runs on its own task.
        let Ok(msg) = Msg::decode(&message) else {
            return;
        };
        let answer_later = |answer: Vec<u8>| {
            let member = member.clone();
            tokio::spawn(async move {
                if let Err(e) = member.answer(from, answer).await {
                    tracing::debug!(peer = %from, "answer not sent: {e}");
                }
            });
        };
        match msg {
            Msg::AppsRequest { token, principal } => {
                let Ok(permit) = self.listings.clone().try_acquire_owned() else {
                    let reason = "busy: too many listings are being answered";
                    answer_later(Msg::Refused { token, reason }.to_vec());
                    return;
                };
                let state = self.clone();
                let principal = principal.to_owned();
                tokio::spawn(async move {
                    let apps = state.apps_for_peer(from, &principal).await;
                    drop(permit);
                    let body = serde_json::to_vec(&apps).unwrap_or_else(|_| b"[]".to_vec());
                    let answer = Msg::Apps { token, apps: &body }.to_vec();
                    if let Err(e) = member.answer(from, answer).await {
                        tracing::debug!(peer = %from, "apps answer not sent: {e}");
                    }
                });
            }
            Msg::Call { token, .. } => {
                let key = (from, token);
                // What is known of the call before it runs (what a cancel records, too).
                let mut record = call_in_entry(from, &msg);
                let mut running = self.calls();
                if running.keys().filter(|(p, _)| *p == from).count() >= MAX_CALLS_PER_PEER {
                    let why = "too many calls from this hub are running";
                    answer_later(call_error(token, CallErrorCode::Busy, why));
                    record.decision = "refused".into();
                    record.reason = format!("{}: {why}", CallErrorCode::Busy.name());
                    let state = self.clone();
                    tokio::spawn(async move { state.record(record).await });
                    return;
                }
                let state = self.clone();
                let pending = record.clone();
                // The task removes itself from `running` when done; it waits for this lock, so
                // it is inserted first.
                let task = tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let outcome = state.run_peer_call(from, &message).await;
                    record.duration_ms = started.elapsed().as_millis() as u64;
                    let result_len = outcome.as_ref().map_or(0, Vec::len);
                    record.bytes = Some(record.bytes.unwrap_or(0) + result_len as u64);
                    (record.decision, record.reason) = match &outcome {
                        Ok(_) => ("allowed".into(), "ok".into()),
                        Err((code, why)) if refusal(*code) => {
                            ("refused".into(), format!("{}: {why}", code.name()))
                        }
                        Err((code, why)) => ("allowed".into(), format!("{}: {why}", code.name())),
                    };
                    let answer = match outcome {
                        Ok(result) => Msg::CallResult {
                            token,
                            result: &result,
                        }
                        .to_vec(),
                        Err((code, why)) => call_error(token, code, &why),
                    };
                    state.calls().remove(&key);
                    // The answer does not wait for the disk: both are done when the task ends.
                    let (_, sent) = tokio::join!(state.record(record), member.answer(from, answer));
                    if let Err(e) = sent {
                        tracing::debug!(peer = %from, "call result not sent: {e}");
                    }
                });
                running.insert(key, (task.abort_handle(), pending));
            }
            Msg::Cancel { token } => {
                let cancelled = self.calls().remove(&(from, token));
                if let Some((task, mut record)) = cancelled {
                    task.abort();
                    tracing::debug!(peer = %from, "call cancelled by its caller");
                    record.duration_ms = unix_ms().saturating_sub(record.at_ms);
                    record.decision = "allowed".into();
                    record.reason = "cancelled: the caller stopped waiting".into();
                    let state = self.clone();
                    tokio::spawn(async move { state.record(record).await });
                }
            }
            _ => {}
        }
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, HashMap<(HubId, u64), RunningCall>> {
        self.calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The certificate the peer's session was set up with, unless the peer is revoked (by the
    /// held revocation list or its record) or suspended.
    async fn caller_certificate(
        self: &Arc<Self>,
        from: HubId,
    ) -> Result<VerifiedPeer, CallErrorCode> {
        let cert = self
            .peer_certs
            .read()
            .ok()
            .and_then(|certs| certs.get(&from).cloned())
            .ok_or(CallErrorCode::WrongSigner)?;
        let held = self
            .blocking(move |state| {
                let store = state.store();
                let record = store.peer(from)?;
                let list = state.home.held_revocations(&store)?;
                Ok((record, list))
            })
            .await;
        let Ok((record, list)) = held else {
            return Err(CallErrorCode::Busy);
        };
        if list.is_some_and(|l| l.is_revoked(&cert.fingerprint(), &cert.key_hash()))
            || record.as_ref().is_some_and(|r| r.revoked_at.is_some())
        {
            return Err(CallErrorCode::Revoked);
        }
        if record.as_ref().is_some_and(|r| r.suspended_at.is_some()) {
            return Err(CallErrorCode::Suspended);
        }
        Ok(cert)
    }

    /// What this hub shares with `from` for `principal`: the apps whose policy admits it, each
    /// with the tools its trust level may call.
    async fn apps_for_peer(self: &Arc<Self>, from: HubId, principal: &str) -> Vec<AppView> {
        let Ok(cert) = self.caller_certificate(from).await else {
            return Vec::new();
        };
        let apps = self
            .blocking(|state| Ok(state.store().apps()?))
            .await
            .unwrap_or_default();
        let caller = Caller {
            hub: from,
            trust: cert.trust(),
            roles: cert.roles(),
            principal: Some(principal),
        };
        let mut out = Vec::new();
        for app in apps.iter().filter(|a| a.sharing.admits(&caller)) {
            let view = self
                .app_view(app, |t| {
                    caller.trust >= trust_needed(hints(t), app.require_trust)
                })
                .await;
            out.push(view);
        }
        out
    }

    /// Checks and runs a call from `from`; the result's JSON, or why not.
    async fn run_peer_call(
        self: &Arc<Self>,
        from: HubId,
        message: &[u8],
    ) -> Result<Vec<u8>, (CallErrorCode, String)> {
        let Ok(Msg::Call {
            timeout_ms,
            app,
            tool,
            envelope,
            arguments,
            ..
        }) = Msg::decode(message)
        else {
            return Err((CallErrorCode::BadEnvelope, "not a call".into()));
        };
        let no = |code: CallErrorCode| (code, code.to_string());
        let cert = self.caller_certificate(from).await.map_err(no)?;
        let me = self
            .home
            .certificate()
            .map_err(|_| no(CallErrorCode::AppUnavailable))?;
        let now = unix_ms();
        let delegation = Delegation::verify(
            envelope,
            from,
            cert.identity_key(),
            me.hub_id(),
            now,
            app,
            tool,
            arguments,
        )
        .map_err(no)?;
        let (nonce, expires) = (delegation.nonce, delegation.expires_at_ms);
        let used = self
            .blocking(move |state| Ok(state.store().use_delegation_nonce(&nonce, expires, now)?))
            .await
            .map_err(|_| no(CallErrorCode::Busy))?;
        match used {
            NonceUse::Fresh => {}
            NonceUse::Replayed => return Err(no(CallErrorCode::Replayed)),
            NonceUse::Full => return Err(no(CallErrorCode::Busy)),
        }
        if !Delegation::scopes_allow(&delegation.scopes, app, tool) {
            return Err(no(CallErrorCode::ScopeDenied));
        }
        let caller = Caller {
            hub: from,
            trust: cert.trust(),
            roles: cert.roles(),
            principal: Some(&delegation.principal),
        };
        let name = app.to_owned();
        let record = self
            .blocking(move |state| Ok(state.store().app(&name)?))
            .await
            .ok()
            .flatten()
            .filter(|a| a.sharing.admits(&caller))
            .ok_or_else(|| no(CallErrorCode::NotShared))?;
        let tools = self
            .apps
            .tools(&record)
            .await
            .map_err(|e| (e.code, e.message))?;
        let hints = tools
            .iter()
            .find(|t| t.name == tool)
            .map(hints)
            .ok_or_else(|| no(CallErrorCode::UnknownTool))?;
        check_call(&record.sharing, record.require_trust, hints, &caller).map_err(no)?;
        let arguments: Option<JsonObject> = if arguments.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(arguments).map_err(|e| {
                (
                    CallErrorCode::ArgumentsMismatch,
                    format!("arguments are not a JSON object: {e}"),
                )
            })?)
        };
        let timeout = Duration::from_millis(u64::from(timeout_ms)).min(MAX_CALL_TIMEOUT);
        tracing::info!(peer = %from, principal = %delegation.principal, app, tool, "call from a peer");
        let result = self
            .apps
            .call(&record, tool, arguments, timeout)
            .await
            .map_err(|e| (e.code, e.message))?;
        let body = serde_json::to_vec(&result)
            .map_err(|e| (CallErrorCode::AppFailed, format!("result: {e}")))?;
        if body.len() > MAX_RESULT_BYTES {
            return Err((
                CallErrorCode::TooLarge,
                format!(
                    "the result is {} bytes, over {MAX_RESULT_BYTES}",
                    body.len()
                ),
            ));
        }
        Ok(body)
    }
}

/// Whether a code is a refusal (a check failed) rather than a failure of the app or the call.
fn refusal(code: CallErrorCode) -> bool {
    !matches!(
        code,
        CallErrorCode::AppUnavailable
            | CallErrorCode::AppFailed
            | CallErrorCode::Timeout
            | CallErrorCode::Cancelled
            | CallErrorCode::TooLarge
    )
}

/// The audit entry of a call from `from`: what the message and its envelope say (the principal
/// as the envelope claims it, even when the envelope is refused).
fn call_in_entry(from: HubId, call: &Msg<'_>) -> AuditEntry {
    let mut record = audit::entry("call.in", Some(from), "", "");
    if let Msg::Call {
        app,
        tool,
        envelope,
        arguments,
        ..
    } = *call
    {
        record.app = app.to_owned();
        record.tool = tool.to_owned();
        record.arguments_sha256 = Some(arguments_hash(arguments));
        record.bytes = Some(arguments.len() as u64);
        if let Ok(d) = Delegation::decode(envelope) {
            record.principal = d.principal;
        }
    }
    record
}

fn call_error(token: u64, code: CallErrorCode, message: &str) -> Vec<u8> {
    Msg::CallError {
        token,
        code: code.to_u16(),
        message,
    }
    .to_vec()
}
