//! The local admin HTTP API of `hub run` (axum), documented in `docs/API.md`.
//!
//! Every route but `/api/health` needs `Authorization: Bearer <token>`, a token made with
//! `hub tokens create` (or the one `hub run` mints for the local CLI). Tokens are stored as
//! SHA-256 and looked up by that hash, so no secret is compared in application code. Admin routes
//! also need an admin token. Errors are JSON: `{"error": {"code": "...", "message": "..."}}`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use data_encoding::BASE64URL_NOPAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use shared_proto::cluster::TrustLevel;
use shared_proto::pairing::PairingToken;
use shared_proto::HubId;

use crate::daemon::HubState;
use crate::home::HomeError;
use crate::join::JoinError;
use crate::store::{ApiToken, PeerRecord, TokenTerms, MANIFEST, REVOCATIONS};
use crate::unix_ms;

/// What every API token starts with.
pub const API_TOKEN_PREFIX: &str = "hubapi_";

/// Longest pairing-token lifetime the API grants.
pub const MAX_PAIRING_TTL_S: u64 = 24 * 3600;

/// An API token's text for a secret.
pub fn format_api_token(secret: &[u8; 32]) -> String {
    format!("{API_TOKEN_PREFIX}{}", BASE64URL_NOPAD.encode(secret))
}

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
        .route("/api/federation/peers", get(list_peers))
        .route("/api/federation/peers/{id}", get(get_peer))
        .route("/api/federation/peers/{id}", delete(revoke_peer))
        .route("/api/federation/peers/{id}/suspend", post(suspend_peer))
        .route("/api/federation/peers/{id}/resume", post(resume_peer))
        .route("/api/federation/peers/{id}/ping", post(ping_peer))
        .fallback(not_found)
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

impl From<HomeError> for ApiError {
    fn from(e: HomeError) -> Self {
        match e {
            HomeError::NotFounder => Self::new(
                StatusCode::FORBIDDEN,
                "not_founder",
                "only the hub holding the cluster CA key (the founder) can do this",
            ),
            HomeError::NotInitialized(_) => Self::new(
                StatusCode::CONFLICT,
                "not_joined",
                "this hub is not a member of a cluster yet",
            ),
            e => Self::internal(e),
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::internal(e)
    }
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

/// A request with a valid token.
pub(crate) struct Authed {
    admin: bool,
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
        let token = bearer(parts).ok_or_else(unauthorized)?;
        let found = state.store().use_api_token(token.as_bytes(), unix_ms())?;
        found
            .map(|t: ApiToken| Authed { admin: t.admin })
            .ok_or_else(unauthorized)
    }
}

impl FromRequestParts<Shared> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> Result<Self, ApiError> {
        let Authed { admin } = Authed::from_request_parts(parts, state).await?;
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

async fn status(State(state): State<Shared>, _: Authed) -> Result<Json<Value>, ApiError> {
    let home = &state.home;
    if !home.is_initialized() {
        return Ok(Json(json!({ "joined": false })));
    }
    let cert = home.certificate()?;
    let relay = state.relay_state();
    let rtt = crate::daemon::relay_rtt(&state).await;
    let (manifest_epoch, revocation_version) = {
        let store = state.store();
        (
            store.document(MANIFEST)?.map(|d| d.serial),
            store.document(REVOCATIONS)?.map(|d| d.serial),
        )
    };
    Ok(Json(json!({
        "joined": true,
        "hub_id": cert.hub_id().to_string(),
        "name": cert.name(),
        "cluster_id": home.cluster_id()?.to_string(),
        "trust_level": cert.trust().as_str(),
        "founder": home.is_founder(),
        "relay": {
            "url": home.config()?.relay_url,
            "connected": relay.connected,
            "rtt_ms": rtt.map(|d| d.as_secs_f64() * 1000.0),
            "last_error": relay.last_error,
        },
        "peers_online": relay.online.len(),
        "manifest_epoch": manifest_epoch,
        "revocation_version": revocation_version,
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct TokenRequest {
    trust_level: Option<String>,
    roles: Vec<String>,
    ttl_seconds: Option<u64>,
}

async fn generate_pairing_token(
    State(state): State<Shared>,
    _: Admin,
    bytes: Bytes,
) -> Result<Response, ApiError> {
    let req: TokenRequest = body(&bytes)?;
    let ttl = req.ttl_seconds.unwrap_or(3600);
    if ttl == 0 || ttl > MAX_PAIRING_TTL_S {
        return Err(ApiError::bad_request(format!(
            "ttl_seconds must be 1 to {MAX_PAIRING_TTL_S}"
        )));
    }
    let trust = match req.trust_level.as_deref() {
        None => TrustLevel::AgentDispatch,
        Some(t) => t.parse().map_err(|_| {
            ApiError::bad_request("trust_level is read_only, agent_dispatch or full")
        })?,
    };
    let terms = TokenTerms {
        trust,
        roles: req.roles,
    };
    let token = state.home.invite(&terms, ttl * 1000)?;
    let body = json!({
        "token": token.encode(),
        "issuer": token.issuer.to_string(),
        "cluster_id": token.cluster.to_string(),
        "trust_level": terms.trust.as_str(),
        "roles": terms.roles,
        "expires_at": unix_ms() + ttl * 1000,
        "expires_in_seconds": ttl,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct PairRequest {
    pairing_token: String,
    name: String,
}

async fn pair(State(state): State<Shared>, _: Admin, bytes: Bytes) -> Result<Response, ApiError> {
    let req: PairRequest = body(&bytes)?;
    if req.name.is_empty() {
        return Err(ApiError::bad_request("name (this hub's name) is required"));
    }
    let token = PairingToken::parse(&req.pairing_token)
        .map_err(|e| ApiError::bad_request(format!("pairing_token: {e}")))?;
    let _one_at_a_time = state.joining.lock().await;
    if state.home.is_initialized() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_joined",
            "this hub is already a member of a cluster",
        ));
    }
    let joined = crate::join::join(&state.home, &token, &req.name, Duration::from_secs(20))
        .await
        .map_err(join_error)?;
    state.policy.set_name(joined.certificate.name());
    state.joined.notify_one();
    let body = json!({
        "id": joined.certificate.hub_id().to_string(),
        "name": joined.certificate.name(),
        "cluster_id": token.cluster.to_string(),
        "trust_level": joined.certificate.trust().as_str(),
        "roles": joined.certificate.roles(),
        "issuer": {
            "id": joined.issuer.hub_id().to_string(),
            "name": joined.issuer.name(),
        },
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

fn join_error(e: JoinError) -> ApiError {
    use shared_proto::pairing::PairingError;
    let message = e.to_string();
    match e {
        JoinError::Pairing(PairingError::Refused(_) | PairingError::Unreadable(_)) => {
            ApiError::new(StatusCode::FORBIDDEN, "pairing_refused", message)
        }
        JoinError::IssuerOffline => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "issuer_offline", message)
        }
        JoinError::Timeout(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message),
        JoinError::Home(e) => e.into(),
        _ => ApiError::new(StatusCode::BAD_GATEWAY, "relay", message),
    }
}

/// A peer as the API (and the CLI, offline) shows it.
#[derive(Debug, Serialize)]
pub struct PeerView {
    id: String,
    name: String,
    endpoint: String,
    public_key: String,
    trust_level: &'static str,
    roles: Vec<String>,
    paired_at: u64,
    revoked_at: Option<u64>,
    suspended_at: Option<u64>,
    last_seen_at: Option<u64>,
    /// Absent when unknown (the hub is not running).
    #[serde(skip_serializing_if = "Option::is_none")]
    online: Option<bool>,
}

impl PeerView {
    /// `p` as stored; `online` is the relay's presence, if this hub is connected to know it.
    pub fn new(p: PeerRecord, online: Option<&BTreeSet<HubId>>) -> Self {
        let online = online.map(|set| p.revoked_at.is_none() && set.contains(&p.id));
        // A peer online now was last seen now.
        let last_seen_at = if online == Some(true) {
            Some(unix_ms())
        } else {
            p.last_seen_at
        };
        PeerView {
            id: p.id.to_string(),
            name: p.name,
            endpoint: p.endpoint,
            public_key: p.public_key,
            trust_level: p.trust.as_str(),
            roles: p.roles,
            paired_at: p.paired_at,
            revoked_at: p.revoked_at,
            suspended_at: p.suspended_at,
            last_seen_at,
            online,
        }
    }
}

async fn list_peers(State(state): State<Shared>, _: Authed) -> Result<Json<Value>, ApiError> {
    let peers = state.store().active_peers()?;
    let online = state.relay_state().online;
    let views: Vec<PeerView> = peers
        .into_iter()
        .map(|p| PeerView::new(p, Some(&online)))
        .collect();
    Ok(Json(json!(views)))
}

fn known_peer(state: &HubState, id: &str) -> Result<PeerRecord, ApiError> {
    let id = peer_id(id)?;
    state
        .store()
        .peer(id)?
        .ok_or_else(|| ApiError::not_found(format!("no peer {id}")))
}

async fn get_peer(
    State(state): State<Shared>,
    _: Authed,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let record = known_peer(&state, &id)?;
    let peer = record.id;
    let mut out = json!(PeerView::new(record, Some(&state.relay_state().online)));
    let online = out["online"].as_bool().unwrap_or(false);
    let (reported, error) = match state.member() {
        Some(member) if online => match member.info(peer, Duration::from_secs(5)).await {
            Ok(info) => (json!(info), Value::Null),
            Err(e) => (Value::Null, json!(e.to_string())),
        },
        _ => (Value::Null, json!("not online")),
    };
    out["reported"] = reported;
    out["report_error"] = error;
    Ok(Json(out))
}

async fn revoke_peer(
    State(state): State<Shared>,
    _: Admin,
    Path(id): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let record = known_peer(&state, &id)?;
    if record.revoked_at.is_some() {
        return Err(ApiError::not_found(format!(
            "peer {} is already revoked",
            record.id
        )));
    }
    let reason = query
        .get("reason")
        .cloned()
        .unwrap_or_else(|| "revoked by the founder".into());
    let version = crate::daemon::revoke_peer(&state, &record, reason).await?;
    Ok(Json(json!({
        "ok": true,
        "id": record.id.to_string(),
        "revocation_version": version,
    })))
}

fn set_suspended(state: &HubState, id: &str, suspend: bool) -> Result<Json<Value>, ApiError> {
    let id = peer_id(id)?;
    let at = suspend.then(unix_ms);
    if !state.store().set_suspended(id, at)? {
        return Err(ApiError::not_found(format!("no active peer {id}")));
    }
    state.set_refused(id, suspend);
    Ok(Json(
        json!({ "ok": true, "id": id.to_string(), "suspended_at": at }),
    ))
}

async fn suspend_peer(
    State(state): State<Shared>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_suspended(&state, &id, true)
}

async fn resume_peer(
    State(state): State<Shared>,
    _: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    set_suspended(&state, &id, false)
}

async fn ping_peer(
    State(state): State<Shared>,
    _: Authed,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let peer = peer_id(&id)?;
    let member = state.member().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "not_joined",
            "this hub is not a member of a cluster yet",
        )
    })?;
    let rtt = member
        .ping(peer, Duration::from_secs(10))
        .await
        .map_err(|e| match e {
            crate::peers::PeerError::Refused { .. } => {
                ApiError::new(StatusCode::FORBIDDEN, "refused", e.to_string())
            }
            e => ApiError::new(StatusCode::BAD_GATEWAY, "unreachable", e.to_string()),
        })?;
    Ok(Json(
        json!({ "id": peer.to_string(), "rtt_ms": rtt.as_secs_f64() * 1000.0 }),
    ))
}
