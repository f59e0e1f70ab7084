//! The local admin HTTP API of `hub run` (axum), documented in `docs/API.md`, and the operator
//! console it serves at `/` ([`console`]).
//!
//! Every route but `/api/health` needs `Authorization: Bearer <token>`, a token made with
//! `hub tokens create` (or the one `hub run` mints for the local CLI). Tokens are stored as
//! SHA-256 and looked up by that hash, so no secret is compared in application code. Admin routes
//! also need an admin token. Errors are JSON: `{"error": {"code": "...", "message": "..."}}`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shared_proto::agent::CallErrorCode;
use shared_proto::relay::path::page_url;
use shared_proto::session::pairing::PairingToken;
use shared_proto::trust::TrustLevel;
use shared_proto::HubId;

pub use crate::hub::agent::CallAppRequest;
use crate::hub::agent::{AppView, HubAppsView, Principal};
pub use crate::hub::view::{
    CertificateView, IssuerView, JoinedView, PairingTokenView, PeerDetail, PeerView, PingView,
    RateLimitedView, RelayView, RevokedView, StatusView, SuspendedView,
};
use crate::hub::AuditQuery;
pub use crate::hub::CallSeries;
pub use crate::hub::MAX_PAIRING_TTL_S;
use crate::hub::{HubState, ServiceError};
use crate::mcp::{AgentBackend, AgentError, McpSurface};
pub use crate::node::access::{format_api_token, API_TOKEN_PREFIX};
use crate::node::store::ApiToken;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::RoleServer;

pub(crate) mod console;

type Shared = Arc<HubState>;

/// The API's routes over the hub's state.
pub(crate) fn router(state: Shared) -> Router {
    Router::new()
        .route("/api/health", get(health))
        .route("/api/status", get(status))
        .route(
            "/api/federation/generate-pairing-token",
            post(generate_pairing_token),
        )
        .route("/api/federation/pair", post(pair))
        .route("/api/cert/renew", post(renew_certificate))
        .route("/api/federation/peers", get(list_peers))
        .route("/api/federation/peers/{id}", get(get_peer))
        .route("/api/federation/peers/{id}", delete(revoke_peer))
        .route("/api/federation/peers/{id}/suspend", post(suspend_peer))
        .route("/api/federation/peers/{id}/trust", post(set_peer_trust))
        .route("/api/federation/peers/{id}/resume", post(resume_peer))
        .route("/api/federation/peers/{id}/ping", post(ping_peer))
        .route("/api/federation/peers/{id}/agents", get(peer_agents))
        .route("/api/federation/audit", get(audit_log))
        .route("/api/federation/audit/verify", get(audit_verify))
        .route("/api/federation/stats", get(stats))
        .route("/api/federation/stats/series", get(stats_series))
        .route("/api/apps", get(list_apps))
        .route("/api/apps/call", post(call_app))
        .route("/api/apps/{name}/sharing", put(set_sharing))
        .route("/api/events", get(console::events))
        .route("/", get(console::index))
        .route("/console/{file}", get(console::file))
        .nest_service(
            "/mcp",
            Router::new()
                .fallback_service(mcp_service(state.clone()))
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    mcp_auth,
                )),
        )
        .fallback(not_found)
        .layer(axum::Extension(console::Watchers::default()))
        .layer(axum::middleware::from_fn(console::guard))
        .with_state(state)
}

/// An error answer.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!("admin API: {e}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error (see the hub's log)",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        let message = e.to_string();
        let (status, code) = match e {
            ServiceError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ServiceError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ServiceError::NotJoined => (StatusCode::CONFLICT, "not_joined"),
            ServiceError::AlreadyJoined => (StatusCode::CONFLICT, "already_joined"),
            ServiceError::NotFounder => (StatusCode::FORBIDDEN, "not_founder"),
            ServiceError::NotAdmin => (StatusCode::FORBIDDEN, "not_admin"),
            ServiceError::Refused(_) => (StatusCode::FORBIDDEN, "refused"),
            ServiceError::PairingRefused(_) => (StatusCode::FORBIDDEN, "pairing_refused"),
            ServiceError::Relay(_) => (StatusCode::BAD_GATEWAY, "relay"),
            ServiceError::IssuerOffline(_) => (StatusCode::SERVICE_UNAVAILABLE, "issuer_offline"),
            ServiceError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ServiceError::Unreachable(_) => (StatusCode::BAD_GATEWAY, "unreachable"),
            ServiceError::Call { code, .. } => (call_status(code), code.name()),
            ServiceError::Home(_) | ServiceError::Store(_) | ServiceError::Task(_) => {
                return Self::internal(e)
            }
        };
        Self::new(status, code, message)
    }
}

impl From<crate::node::store::StoreError> for ApiError {
    fn from(e: crate::node::store::StoreError) -> Self {
        Self::internal(e)
    }
}

/// The HTTP status of a refused or failed call.
fn call_status(code: CallErrorCode) -> StatusCode {
    use CallErrorCode as C;
    match code {
        C::NotShared | C::UnknownTool => StatusCode::NOT_FOUND,
        C::Timeout => StatusCode::GATEWAY_TIMEOUT,
        C::Busy => StatusCode::TOO_MANY_REQUESTS,
        C::AppUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::AppFailed => StatusCode::BAD_GATEWAY,
        C::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        C::BadEnvelope | C::ArgumentsMismatch => StatusCode::BAD_REQUEST,
        _ => StatusCode::FORBIDDEN,
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// A request with a valid token.
pub(crate) struct Authed {
    admin: bool,
    /// Who calls: the token's name (`local` for the CLI's token) and its scopes.
    principal: Principal,
}

/// A request with a valid admin token.
pub(crate) struct Admin;

fn bearer(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl FromRequestParts<Shared> for Authed {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required (hub tokens create)",
            )
        };
        let token = bearer(parts).ok_or_else(unauthorized)?.as_bytes().to_vec();
        let found = state.authenticate(token).await?;
        found
            .map(|t: ApiToken| Authed {
                admin: t.admin,
                principal: Principal {
                    name: crate::node::access::principal_of_token(&t.name).to_owned(),
                    scopes: t.scopes,
                },
            })
            .ok_or_else(unauthorized)
    }
}

impl FromRequestParts<Shared> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let Authed { admin, .. } = Authed::from_request_parts(parts, state).await?;
        if !admin {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "this route needs an admin token (hub tokens create --admin)",
            ));
        }
        Ok(Admin)
    }
}

/// A JSON body; an empty body is the type's default.
fn body<T: DeserializeOwned + Default>(bytes: &Bytes) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

fn peer_id(text: &str) -> Result<HubId, ApiError> {
    text.parse()
        .map_err(|_| ApiError::bad_request("a peer id is 32 hex digits"))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn status(State(state): State<Shared>, _: Authed) -> Result<Json<StatusView>, ApiError> {
    Ok(Json(state.status().await?))
}

/// `POST /api/federation/generate-pairing-token`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenRequest {
    /// The new hub's trust level (default `agent_dispatch`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trust_level: Option<String>,
    /// The new hub's roles.
    pub roles: Vec<String>,
    /// The token's lifetime (default 3600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Also answer the phone page's URL with the token in its fragment (`phone_url`) and a QR
    /// code of it (`qr_svg`), for a phone's camera to open.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub qr: bool,
}

async fn generate_pairing_token(
    State(state): State<Shared>,
    _: Admin,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let req: TokenRequest = body(&bytes)?;
    let trust = match req.trust_level.as_deref() {
        None => TrustLevel::AgentDispatch,
        Some(t) => t.parse().map_err(|_| {
            ApiError::bad_request("trust_level is read_only, agent_dispatch or full")
        })?,
    };
    let token = state
        .invite(trust, req.roles, req.ttl_seconds.unwrap_or(3600))
        .await?;
    let mut answer = serde_json::to_value(&token).map_err(ApiError::internal)?;
    if req.qr {
        let relay_url = PairingToken::parse(&token.token)
            .map_err(ApiError::internal)?
            .relay_url;
        let url = page_url(&relay_url, &format!("token={}", token.token));
        answer["qr_svg"] = Value::String(qr_svg(&url)?);
        answer["phone_url"] = Value::String(url);
    }
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// A QR code of `text` as an SVG document (black on white, with its quiet zone).
fn qr_svg(text: &str) -> Result<String, ApiError> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M)
        .map_err(ApiError::internal)?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(256, 256)
        .build())
}

/// `POST /api/federation/pair`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PairRequest {
    /// The token from `hub invite`.
    pub pairing_token: String,
    /// This hub's name.
    pub name: String,
}

async fn pair(State(state): State<Shared>, _: Admin, bytes: Bytes) -> Result<Response, ApiError> {
    let req: PairRequest = body(&bytes)?;
    if req.name.is_empty() {
        return Err(ApiError::bad_request("name (this hub's name) is required"));
    }
    let token = PairingToken::parse(&req.pairing_token)
        .map_err(|e| ApiError::bad_request(format!("pairing_token: {e}")))?;
    let joined = state.join(&token, &req.name).await?;
    Ok((StatusCode::CREATED, Json(joined)).into_response())
}

async fn list_peers(
    State(state): State<Shared>,
    _: Authed,
) -> Result<Json<Vec<PeerView>>, ApiError> {
    Ok(Json(state.peers().await?))
}

async fn get_peer(
    State(state): State<Shared>,
    _: Authed,
    Path(id): Path<String>,
) -> Result<Json<PeerDetail>, ApiError> {
    Ok(Json(state.peer(peer_id(&id)?).await?))
}

async fn revoke_peer(
    State(state): State<Shared>,
    _: Admin,
    Path(id): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<RevokedView>, ApiError> {
    let id = peer_id(&id)?;
    let reason = query
        .get("reason")
        .cloned()
        .unwrap_or_else(|| "revoked by an admin".into());
    Ok(Json(state.revoke(id, reason).await?))
}

/// `POST /api/federation/peers/{id}/trust`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustRequest {
    /// The peer's new trust level.
    pub trust_level: String,
    /// Its new roles (unchanged if absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
}

async fn set_peer_trust(
    State(state): State<Shared>,
    _: Admin,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<crate::hub::view::TermsView>, ApiError> {
    let id = peer_id(&id)?;
    let req: TrustRequest = serde_json::from_slice(&bytes)
        .map_err(|e| ServiceError::BadRequest(format!("the body: {e}")))?;
    let trust = req.trust_level.parse().map_err(|_| {
        ServiceError::BadRequest(format!(
            "trust_level {:?}: read_only, agent_dispatch or full",
            req.trust_level
        ))
    })?;
    Ok(Json(state.set_trust(id, trust, req.roles).await?))
}

/// `POST /api/cert/renew`: this hub's certificate renewed now.
async fn renew_certificate(
    State(state): State<Shared>,
    _: Admin,
) -> Result<Json<crate::hub::view::CertificateView>, ApiError> {
    let member = state.joined_member()?;
    let cert = state.renew(&member).await?;
    let renew_at = state.renewal_due(&cert);
    Ok(Json(crate::hub::view::CertificateView::of(
        &cert,
        renew_at,
        crate::unix_ms(),
    )))
}

async fn suspend_peer(
    State(state): State<Shared>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<SuspendedView>, ApiError> {
    Ok(Json(state.suspend(peer_id(&id)?, true).await?))
}

async fn resume_peer(
    State(state): State<Shared>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<SuspendedView>, ApiError> {
    Ok(Json(state.suspend(peer_id(&id)?, false).await?))
}

async fn ping_peer(
    State(state): State<Shared>,
    _: Authed,
    Path(id): Path<String>,
) -> Result<Json<PingView>, ApiError> {
    Ok(Json(state.ping(peer_id(&id)?).await?))
}

/// The MCP surface for one request's agent, in process: the principal is the one the `/mcp`
/// route's bearer token names.
#[derive(Clone)]
struct LocalBackend(Shared);

impl LocalBackend {
    /// The principal `mcp_auth` found for the HTTP request behind this MCP message.
    fn principal(&self, context: &RequestContext<RoleServer>) -> Result<Principal, AgentError> {
        context
            .extensions
            .get::<Parts>()
            .and_then(|parts| parts.extensions.get::<Principal>())
            .cloned()
            .ok_or_else(|| AgentError::other("unauthenticated MCP request"))
    }
}

impl AgentBackend for LocalBackend {
    async fn apps(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> Result<Vec<HubAppsView>, AgentError> {
        let principal = self.principal(context)?;
        Ok(self.0.list_apps(&principal).await)
    }

    async fn call(
        &self,
        context: &RequestContext<RoleServer>,
        req: CallAppRequest,
    ) -> Result<CallToolResult, AgentError> {
        let principal = self.principal(context)?;
        Ok(self.0.call(&principal, req).await?)
    }

    async fn apps_now(&self) -> Result<Vec<HubAppsView>, AgentError> {
        Err(AgentError::other("no agent outside a request"))
    }
}

/// Every `/mcp` request needs a valid bearer token; its principal goes with the request.
async fn mcp_auth(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let host = parts
        .headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    if !console::host_is_loopback(host) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "host_refused",
            "/mcp answers only to a loopback Host (localhost, 127.0.0.1, [::1])",
        )
        .into_response();
    }
    if parts.headers.contains_key(axum::http::header::ORIGIN) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_refused",
            "/mcp refuses requests from web pages (any Origin header)",
        )
        .into_response();
    }
    match Authed::from_request_parts(&mut parts, &state).await {
        Ok(authed) => {
            parts.extensions.insert(authed.principal);
            next.run(axum::extract::Request::from_parts(parts, body))
                .await
        }
        Err(e) => e.into_response(),
    }
}

/// `/mcp`: the MCP surface over streamable HTTP. Every request needs a bearer token (the
/// principal of its calls); the `Host` must be loopback and a request with an `Origin` header
/// (a browser page) is refused, against DNS rebinding. One surface serves every session, so
/// they share its directory of tool names.
fn mcp_service(
    state: Shared,
) -> StreamableHttpService<McpSurface<LocalBackend>, LocalSessionManager> {
    let config = StreamableHttpServerConfig::default().enforce_origin_validation();
    let surface = McpSurface::new(LocalBackend(state));
    StreamableHttpService::new(move || Ok(surface.clone()), Arc::default(), config)
}

async fn list_apps(
    State(state): State<Shared>,
    authed: Authed,
) -> Result<Json<Vec<HubAppsView>>, ApiError> {
    Ok(Json(state.list_apps(&authed.principal).await))
}

async fn call_app(
    State(state): State<Shared>,
    authed: Authed,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: CallAppRequest = body(&bytes)?;
    let result = state.call(&authed.principal, req).await?;
    Ok(Json(
        serde_json::to_value(result).map_err(ApiError::internal)?,
    ))
}

/// `GET /api/federation/stats/series?hours=N` (default 24, at most 720): calls in and out per
/// hour, and how many were refused, from the audit log.
async fn stats_series(
    State(state): State<Shared>,
    _: Authed,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<CallSeries>, ApiError> {
    let hours: u64 = match query.get("hours") {
        None => 24,
        Some(h) => h
            .parse()
            .map_err(|_| ApiError::bad_request("hours is 1 to 720"))?,
    };
    Ok(Json(state.stats_series(hours).await?))
}

/// `GET /api/federation/audit/verify`: the whole chain checked with the hub's key.
async fn audit_verify(State(state): State<Shared>, _: Admin) -> Result<Json<Value>, ApiError> {
    Ok(Json(match state.audit_verify().await? {
        Ok((entries, mac)) => {
            json!({ "ok": true, "entries": entries, "head_mac": hex::encode(mac) })
        }
        Err(e) => json!({ "ok": false, "seq": e.seq(), "error": e.to_string() }),
    }))
}

/// `PUT /api/apps/{name}/sharing`.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SharingRequest {
    /// `local`, `cluster`, `roles:A,B`, `hubs:ID,ID` or `principals:A,B`.
    pub sharing: String,
    /// The least trust level a calling hub needs, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub require_trust: Option<String>,
    /// Tool kinds to pin: tool name to `read_only`, `write`, `destructive`, or `app` (unpinned).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub tool_kinds: std::collections::BTreeMap<String, String>,
}

async fn set_sharing(
    State(state): State<Shared>,
    _: Admin,
    Path(name): Path<String>,
    bytes: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: SharingRequest = body(&bytes)?;
    let sharing: shared_proto::agent::Sharing = req
        .sharing
        .parse()
        .map_err(|e| ApiError::bad_request(format!("sharing: {e}")))?;
    sharing
        .require_qualified()
        .map_err(|e| ApiError::bad_request(format!("sharing: {e}")))?;
    let trust = req
        .require_trust
        .as_deref()
        .map(str::parse::<TrustLevel>)
        .transpose()
        .map_err(|_| ApiError::bad_request("require_trust is read_only, agent_dispatch or full"))?;
    let pins = req
        .tool_kinds
        .iter()
        .map(|(tool, kind)| Ok((tool.clone(), crate::node::audit::parse_pin_kind(kind)?)))
        .collect::<Result<crate::node::audit::ToolPins, String>>()
        .map_err(ApiError::bad_request)?;
    let shown = sharing.to_string();
    state
        .set_sharing(name.clone(), sharing, trust, pins)
        .await?;
    Ok(Json(json!({
        "name": name,
        "sharing": shown,
        "require_trust": trust.map(TrustLevel::as_str),
    })))
}

/// Federation statistics: the last hour, day and all time.
async fn stats(
    State(state): State<Shared>,
    _: Authed,
) -> Result<Json<Vec<crate::hub::view::StatsWindow>>, ApiError> {
    Ok(Json(state.stats().await?))
}

/// The audit log, oldest first: `?peer=ID&since_ms=T&limit=N` (default 100, at most 10,000, the
/// newest ones).
async fn audit_log(
    State(state): State<Shared>,
    _: Admin,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let peer = query.get("peer").map(|p| peer_id(p)).transpose()?;
    let number = |key: &str, default: u64| -> Result<u64, ApiError> {
        query.get(key).map_or(Ok(default), |v| {
            v.parse()
                .map_err(|_| ApiError::bad_request(format!("{key} must be a number")))
        })
    };
    let query = AuditQuery {
        peer,
        since_ms: number("since_ms", 0)?,
        limit: number("limit", 100)?,
    };
    let entries = state.audit_entries(query).await?;
    Ok(Json(
        entries
            .iter()
            .map(|(e, mac)| crate::node::audit::to_json(e, mac))
            .collect(),
    ))
}

/// What a peer shares with this hub (its answer to an apps request).
async fn peer_agents(
    State(state): State<Shared>,
    authed: Authed,
    Path(id): Path<String>,
) -> Result<Json<Vec<AppView>>, ApiError> {
    Ok(Json(
        state.peer_apps(peer_id(&id)?, &authed.principal).await?,
    ))
}
