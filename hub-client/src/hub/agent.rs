//! The agent surface of the running hub: the apps of every hub an agent may see, and calls to
//! them, local or across the cluster under a signed delegation envelope. Every surface (the admin
//! API, `/mcp`, `hub mcp` through the API) calls [`HubState::list_apps`] and [`HubState::call`];
//! the other side, answering what peers ask of this hub, is `serve`.
//!
//! Who an agent is ([`Principal`]: a name and the scopes its token grants) limits what it sees
//! and calls here; what another hub may see and call (sharing policy, default deny, trust
//! levels) is checked on the hub that runs the app.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::OsRng;
use rand::RngCore;
use rmcp::model::{CallToolResult, Tool};
use shared_proto::agent::{
    arguments_hash, CallErrorCode, Delegation, ALL_SCOPES, ENVELOPE_V1, ENVELOPE_V2, LISTING,
};
use shared_proto::session::rpc::MAX_CALL_TIMEOUT_MS;
use shared_proto::HubId;

use super::{HubState, Member, ServiceError};
use crate::apps::AppError;
use crate::node::access::LOCAL_PRINCIPAL;
use crate::node::audit::{self, AuditKind, Decision};
use crate::node::store::AppRecord;
use crate::transport::peers::{Listing, OutgoingCall};
use crate::unix_ms;

/// How long a listing waits for each peer.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long resolving a hub's name may wait for online hubs this one never met to say who they
/// are.
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);
/// What every hub answers to as itself, besides its id and name; all a hub that has not
/// created or joined a cluster answers to (it has neither yet), and its id in listings.
pub const LOCAL_HUB: &str = "local";

/// A call's deadline when the caller gives none.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest call deadline (the envelope lives at most 60 s).
pub const MAX_CALL_TIMEOUT: Duration = Duration::from_millis(MAX_CALL_TIMEOUT_MS);
/// A call's envelope expires this long after the call's deadline (the target checks the
/// envelope when the call arrives; this is the slack for the way there and clock skew).
pub const ENVELOPE_SLACK: Duration = Duration::from_secs(5);

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
            name: LOCAL_PRINCIPAL.into(),
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

/// A call of a tool of an app on a hub of the cluster, as every surface asks for it
/// (`POST /api/apps/call`, MCP's `app.call`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CallAppRequest {
    /// The hub: its id, or its name.
    pub hub: String,
    /// The app.
    pub app: String,
    /// The tool.
    pub tool: String,
    /// The tool's arguments (a JSON object).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<serde_json::Map<String, serde_json::Value>>,
    /// How long to wait, in ms (default 30,000, at most 55,000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

impl CallAppRequest {
    /// How long the call may take: what it asks, or the default, at most [`MAX_CALL_TIMEOUT`].
    /// The one place a call's deadline is set; the envelope's expiry and the peer layer's
    /// deadline follow from it.
    pub fn timeout(&self) -> Duration {
        self.timeout_ms
            .map_or(DEFAULT_CALL_TIMEOUT, Duration::from_millis)
            .min(MAX_CALL_TIMEOUT)
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
    /// What would carry a call: `local`, `lan` (a direct link) or `relay` (end-to-end session
    /// through the relay).
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
        ServiceError::call(e.code, e.message)
    }
}

impl HubState {
    /// The apps of every hub `principal` may see: this hub's (all of them, within the
    /// principal's scopes), then each online peer's (what it shares with this hub and
    /// principal), asked at once.
    pub async fn list_apps(self: &Arc<Self>, principal: &Principal) -> Vec<HubAppsView> {
        let mut out = Vec::new();
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
        let Some(member) = self.member() else {
            // A hub on its own (no cluster yet): its apps, under `local`.
            out.push(HubAppsView {
                hub_id: LOCAL_HUB.into(),
                hub_name: LOCAL_HUB.into(),
                local: true,
                online: true,
                path: "local".into(),
                error: None,
                apps: local,
            });
            return out;
        };
        out.push(HubAppsView {
            hub_id: member.hub_id.to_string(),
            hub_name: member.name.clone(),
            local: true,
            online: true,
            path: "local".into(),
            error: None,
            apps: local,
        });
        let online = self.book.online();
        let peers = self
            .blocking(|state| Ok(state.store().active_peers()?))
            .await
            .unwrap_or_default();
        let names: HashMap<HubId, String> = peers.into_iter().map(|p| (p.id, p.name)).collect();
        let asks = online.iter().map(|hub| {
            let state = self.clone();
            let hub = *hub;
            async move { (hub, state.peer_apps(hub, principal).await) }
        });
        for (hub, answer) in futures_util::future::join_all(asks).await {
            let (apps, error) = match answer {
                Ok(apps) => (apps, None),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            out.push(HubAppsView {
                hub_id: hub.to_string(),
                hub_name: names.get(&hub).cloned().unwrap_or_default(),
                local: false,
                online: true,
                path: self.book.path_to(&hub).as_str().into(),
                error,
                apps,
            });
        }
        out
    }

    /// What peer `hub` shares with this hub for `principal`, within the principal's scopes. A
    /// peer of session version 2 gets the principal and scopes signed (a listing envelope); one
    /// of version 1 only the principal's name, which it cannot check.
    pub async fn peer_apps(
        self: &Arc<Self>,
        hub: HubId,
        principal: &Principal,
    ) -> Result<Vec<AppView>, ServiceError> {
        let member = self.joined_member()?;
        let listing = if self.book.session_version(hub) >= 2 {
            let envelope =
                self.sign_envelope(&member, hub, principal, LISTING, LISTING, b"", LIST_TIMEOUT)?;
            Listing::Signed { envelope }
        } else {
            Listing::Unsigned {
                principal: principal.name.clone(),
            }
        };
        let body = member.peers.apps(hub, listing, LIST_TIMEOUT).await?;
        let apps: Vec<AppView> = serde_json::from_slice(&body)
            .map_err(|e| ServiceError::Unreachable(format!("malformed answer from {hub}: {e}")))?;
        Ok(apps
            .into_iter()
            .filter(|a| principal.allows_app(&a.name))
            .map(|mut a| {
                a.tools.retain(|t| principal.allows(&a.name, &t.name));
                a
            })
            .collect())
    }

    /// A hub named by its id or its name: this hub (also [`LOCAL_HUB`]) or a known peer; `None`
    /// for this hub when it is on its own (no cluster yet: it has no id).
    pub async fn resolve_hub(self: &Arc<Self>, text: &str) -> Result<Option<HubId>, ServiceError> {
        let member = self.member();
        if text == LOCAL_HUB {
            return Ok(member.map(|m| m.hub_id));
        }
        if let Ok(id) = text.parse::<HubId>() {
            return Ok(Some(id));
        }
        let Some(member) = member else {
            return Err(ServiceError::NotFound(format!(
                "no hub named {text}: this hub is not a member of a cluster yet, and calls only \
                 its own apps (hub \"{LOCAL_HUB}\"); hub cluster create or hub join makes it one"
            )));
        };
        if text == member.name {
            return Ok(Some(member.hub_id));
        }
        self.resolve_peer(&member, text).await.map(Some)
    }

    /// A peer named `text`.
    async fn resolve_peer(
        self: &Arc<Self>,
        member: &Member,
        text: &str,
    ) -> Result<HubId, ServiceError> {
        if let Some(found) = self.hubs_named(text).await? {
            return found;
        }
        // Online hubs this one has no session with yet (met neither in a session nor by pairing)
        // are asked who they are: their certificates name them.
        let known = self.book.with_sessions();
        let unmet: Vec<HubId> = self
            .book
            .online()
            .into_iter()
            .filter(|h| !known.contains(h))
            .collect();
        if !unmet.is_empty() {
            let pings = unmet
                .iter()
                .map(|hub| member.peers.ping(*hub, RESOLVE_TIMEOUT));
            futures_util::future::join_all(pings).await;
            // The sessions' certificates reach the book through the event loop: give it a moment.
            let deadline = tokio::time::Instant::now() + RESOLVE_TIMEOUT;
            while unmet.iter().any(|h| self.book.certificate(*h).is_none())
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if let Some(found) = self.hubs_named(text).await? {
                return found;
            }
        }
        Err(ServiceError::NotFound(format!(
            "no hub named {text} among the {} this hub knows ({} online); give its id",
            self.blocking(|state| Ok(state.store().active_peers()?.len()))
                .await?,
            self.book.online().len()
        )))
    }

    /// The hubs named `name`, by the certificates of the sessions up (what they are now) and the
    /// peers recorded (what they were): one (`Some(Ok)`), several (`Some(Err)`), none (`None`).
    /// A hub recorded but not online resolves (a call to it then says it is offline).
    async fn hubs_named(
        self: &Arc<Self>,
        name: &str,
    ) -> Result<Option<Result<HubId, ServiceError>>, ServiceError> {
        let mut found: Vec<HubId> = self
            .book
            .with_sessions()
            .into_iter()
            .filter(|h| self.book.certificate(*h).is_some_and(|c| c.name() == name))
            .collect();
        let wanted = name.to_owned();
        let recorded = self
            .blocking(move |state| Ok(state.store().active_peers()?))
            .await?;
        found.extend(
            recorded
                .into_iter()
                .filter(|p| p.name == wanted)
                .map(|p| p.id),
        );
        found.sort();
        found.dedup();
        Ok(match found.as_slice() {
            [] => None,
            [id] => Some(Ok(*id)),
            _ => Some(Err(ServiceError::BadRequest(format!(
                "{} hubs are named {name}: give its id",
                found.len()
            )))),
        })
    }

    pub(crate) async fn app_view(&self, app: &AppRecord, keep: impl Fn(&Tool) -> bool) -> AppView {
        match self.apps.tools(app).await {
            Ok(tools) => AppView {
                name: app.name.clone(),
                available: true,
                reason: None,
                sharing: None,
                tools: tools
                    .iter()
                    .map(|t| crate::apps::as_listed(app, t))
                    .filter(|t| keep(t))
                    .collect(),
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

    /// Calls a tool for `principal`, as `request` asks: the hub resolved by id or name, the
    /// deadline set once ([`CallAppRequest::timeout`]).
    pub async fn call(
        self: &Arc<Self>,
        principal: &Principal,
        request: CallAppRequest,
    ) -> CallOutcome {
        let hub = self.resolve_hub(&request.hub).await?;
        let timeout = request.timeout();
        if !principal.allows(&request.app, &request.tool) {
            return Err(ServiceError::call(
                CallErrorCode::ScopeDenied,
                format!(
                    "the token's scopes do not grant {}/{}",
                    request.app, request.tool
                ),
            ));
        }
        match (hub, self.member()) {
            (None, _) => self.call_local(&request, timeout).await,
            (Some(hub), Some(member)) if hub == member.hub_id => {
                self.call_local(&request, timeout).await
            }
            (Some(hub), _) => self.call_peer(principal, hub, request, timeout).await,
        }
    }

    /// A call of one of this hub's own apps.
    async fn call_local(
        self: &Arc<Self>,
        request: &CallAppRequest,
        timeout: Duration,
    ) -> CallOutcome {
        let name = request.app.clone();
        let record = self
            .blocking(move |state| Ok(state.store().app(&name)?))
            .await?
            .ok_or_else(|| {
                ServiceError::call(CallErrorCode::NotShared, format!("no app {}", request.app))
            })?;
        Ok(self
            .apps
            .call(&record, &request.tool, request.arguments.clone(), timeout)
            .await?)
    }

    /// A delegation envelope this hub signs for `principal`'s request to `target`: a call of
    /// `tool` of `app` with `arguments`, or a listing ([`LISTING`], no arguments), valid for
    /// `lifetime`. Its scopes are the principal's; an unrestricted principal's are
    /// [`ALL_SCOPES`] in an envelope of version 2, for a peer of session version 2, and none in
    /// one of version 1 (which reads no scopes as unrestricted), for an older peer.
    #[allow(clippy::too_many_arguments)]
    fn sign_envelope(
        &self,
        member: &Member,
        target: HubId,
        principal: &Principal,
        app: &str,
        tool: &str,
        arguments: &[u8],
        lifetime: Duration,
    ) -> Result<Vec<u8>, ServiceError> {
        let now = unix_ms();
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        // A peer that said it speaks session version 2 reads envelopes of version 2, where an
        // unrestricted principal is `*`; an older one only version 1, where it is no scopes.
        let (version, scopes) = match self.book.session_version(target) {
            v if v >= 2 && principal.scopes.is_empty() => {
                (ENVELOPE_V2, vec![ALL_SCOPES.to_owned()])
            }
            v if v >= 2 => (ENVELOPE_V2, principal.scopes.clone()),
            _ => (ENVELOPE_V1, principal.scopes.clone()),
        };
        Delegation {
            version,
            origin: member.hub_id,
            target,
            issued_at_ms: now,
            expires_at_ms: now + lifetime.as_millis() as u64,
            nonce,
            arguments_sha256: arguments_hash(arguments),
            principal: principal.name.clone(),
            app: app.to_owned(),
            tool: tool.to_owned(),
            scopes,
        }
        .sign(&member.credentials.get().identity)
        .map_err(|_| ServiceError::BadRequest("names or scopes over 255 bytes".into()))
    }

    /// A call of an app on peer `hub`, under an envelope this hub signs, recorded as `call.out`.
    async fn call_peer(
        self: &Arc<Self>,
        principal: &Principal,
        hub: HubId,
        request: CallAppRequest,
        timeout: Duration,
    ) -> CallOutcome {
        let member = self.joined_member()?;
        let arguments = serde_json::to_vec(&request.arguments.unwrap_or_default())
            .map_err(|e| ServiceError::BadRequest(format!("arguments: {e}")))?;
        let arguments_sha256 = arguments_hash(&arguments);
        let envelope = self.sign_envelope(
            &member,
            hub,
            principal,
            &request.app,
            &request.tool,
            &arguments,
            timeout + ENVELOPE_SLACK,
        )?;
        let mut record = audit::entry(AuditKind::CallOut, Some(hub), Decision::None, "");
        record.principal = principal.name.clone();
        record.app = request.app.clone();
        record.tool = request.tool.clone();
        record.arguments_sha256 = Some(arguments_sha256);
        let arguments_len = arguments.len();
        let call = OutgoingCall {
            timeout_ms: timeout.as_millis() as u32,
            app: request.app,
            tool: request.tool,
            envelope,
            arguments,
        };
        let started = std::time::Instant::now();
        let answer = member
            .peers
            .call(hub, call)
            .await
            .map_err(|e| match ServiceError::from(e) {
                ServiceError::Unreachable(why) if !self.book.online().contains(&hub) => {
                    ServiceError::Unreachable(format!(
                        "hub {hub} is not online (offline, or reconnecting to the relay): {why}"
                    ))
                }
                e => e,
            });
        record.duration_ms = started.elapsed().as_millis() as u64;
        record.bytes = Some((arguments_len + answer.as_ref().map_or(0, Vec::len)) as u64);
        match &answer {
            Ok(_) => audit::decide(&mut record, Decision::Ok, ""),
            Err(ServiceError::Call { code, .. }) => {
                audit::decide(&mut record, Decision::Refused, code.name())
            }
            Err(e) => audit::decide(&mut record, Decision::Failed, e.to_string()),
        }
        // The answer does not wait for the disk: the entry lands with the journal's next batch.
        self.record_later(record).await;
        let body = answer?;
        serde_json::from_slice(&body)
            .map_err(|e| ServiceError::Unreachable(format!("malformed result from {hub}: {e}")))
    }
}
