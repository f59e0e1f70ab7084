//! The typed client of a running hub's admin API, found through the files `node::access` names
//! (`api.url` and `cli.token`).

use std::time::Duration;

use anyhow::{bail, Context, Result};
use hub_client::api::{PeerDetail, PeerView, PingView, RevokedView, StatusView, SuspendedView};
use hub_client::hub::agent::{CallAppRequest, HubAppsView};
use hub_client::node::access;
use hub_client::node::home::Home;
use reqwest::Method;
use shared_proto::HubId;

/// The admin API of a running hub, found through `api.url` and `cli.token` in the home.
pub(crate) struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    /// How long a running hub has to answer its health check.
    const FIND_TIMEOUT: Duration = Duration::from_secs(3);
    /// How long one API call may take.
    const CALL_TIMEOUT: Duration = Duration::from_secs(60);

    /// The running hub's API, if one is running: `None` when there is no `api.url` or nothing
    /// listens there any more (a crash leaves the files behind); an error when something listens
    /// but does not answer its health check in time (a stuck hub must not be mistaken for a
    /// stopped one, or the CLI would open a second relay connection in its place).
    pub(crate) async fn find(home: &Home) -> Result<Option<Api>> {
        let Some((base, token)) = access::find(home) else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Self::FIND_TIMEOUT)
            // Long enough for the longest app call (55 s) and its way back.
            .timeout(Self::CALL_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let api = Api {
            base,
            token,
            client,
        };
        let health = api
            .client
            .get(format!("{}/api/health", api.base))
            .timeout(Self::FIND_TIMEOUT)
            .send()
            .await;
        match health {
            Ok(resp) if resp.status().is_success() => Ok(Some(api)),
            Err(e) if e.is_timeout() => bail!(
                "the running hub at {} (from {}) did not answer within {} s; \
                 is it stuck? stop it, or remove that file if no hub runs",
                api.base,
                home.dir().join(access::API_URL_FILE).display(),
                Self::FIND_TIMEOUT.as_secs()
            ),
            _ => Ok(None),
        }
    }

    /// One call: the answer's JSON as `T`, or the API's error message.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
    ) -> Result<T> {
        self.call_with(method, path, None).await
    }

    /// One call with a JSON body.
    async fn call_with<T: serde::de::DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.context("the running hub did not answer")?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("reading the hub's answer")?;
        if !status.is_success() {
            let error = serde_json::from_slice::<ErrorAnswer>(&bytes).map_or_else(
                |_| ApiError {
                    code: String::new(),
                    message: status.to_string(),
                },
                |e| e.error,
            );
            return Err(error.into());
        }
        serde_json::from_slice(&bytes).context("the hub's answer does not parse")
    }

    /// `GET /api/apps`: the apps of every hub this hub may use.
    pub(crate) async fn apps(&self) -> Result<Vec<HubAppsView>> {
        self.call(Method::GET, "/api/apps").await
    }

    /// `POST /api/apps/call`: the tool's MCP result (JSON).
    pub(crate) async fn call_app(&self, req: &CallAppRequest) -> Result<serde_json::Value> {
        let body = serde_json::to_value(req).context("encoding the call")?;
        self.call_with(Method::POST, "/api/apps/call", Some(body))
            .await
    }

    /// `GET /api/status`.
    pub(crate) async fn status(&self) -> Result<StatusView> {
        self.call(Method::GET, "/api/status").await
    }

    /// `GET /api/federation/peers`.
    pub(crate) async fn peers(&self) -> Result<Vec<PeerView>> {
        self.call(Method::GET, "/api/federation/peers").await
    }

    /// `GET /api/federation/peers/{id}`.
    pub(crate) async fn peer(&self, id: HubId) -> Result<PeerDetail> {
        self.call(Method::GET, &format!("/api/federation/peers/{id}"))
            .await
    }

    /// `DELETE /api/federation/peers/{id}`.
    pub(crate) async fn revoke(&self, id: HubId, reason: &str) -> Result<RevokedView> {
        let reason: String = url::form_urlencoded::byte_serialize(reason.as_bytes()).collect();
        let path = format!("/api/federation/peers/{id}?reason={reason}");
        self.call(Method::DELETE, &path).await
    }

    /// `POST /api/federation/peers/{id}/suspend` or `.../resume`.
    pub(crate) async fn suspend(&self, id: HubId, suspend: bool) -> Result<SuspendedView> {
        let verb = if suspend { "suspend" } else { "resume" };
        let path = format!("/api/federation/peers/{id}/{verb}");
        self.call(Method::POST, &path).await
    }

    /// `POST /api/federation/peers/{id}/ping`.
    /// `POST /api/federation/peers/{id}/trust`.
    pub(crate) async fn set_trust(
        &self,
        id: HubId,
        level: shared_proto::trust::TrustLevel,
        roles: Option<Vec<String>>,
    ) -> Result<hub_client::hub::view::TermsView> {
        let body = serde_json::json!({ "trust_level": level.as_str(), "roles": roles });
        self.call_with(
            Method::POST,
            &format!("/api/federation/peers/{id}/trust"),
            Some(body),
        )
        .await
    }

    /// `POST /api/cert/renew`.
    pub(crate) async fn renew(&self) -> Result<hub_client::hub::view::CertificateView> {
        self.call(Method::POST, "/api/cert/renew").await
    }

    pub(crate) async fn ping(&self, id: HubId) -> Result<PingView> {
        self.call(Method::POST, &format!("/api/federation/peers/{id}/ping"))
            .await
    }
}

/// An error answer: `{"error": {"code", "message"}}`.
#[derive(serde::Deserialize)]
struct ErrorAnswer {
    error: ApiError,
}

/// The API's error: its stable code (a call's code for refused and failed calls) and message.
#[derive(Debug, serde::Deserialize, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ApiError {
    /// `not_found`, `not_shared`, ... (empty when the answer was not the API's JSON).
    #[serde(default)]
    pub(crate) code: String,
    /// For people.
    pub(crate) message: String,
}
