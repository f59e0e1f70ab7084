//! `hub mcp`: the MCP surface (`hub_client::mcp`) on stdio, for agent clients, through the
//! running hub's admin API.

use std::sync::Arc;

use anyhow::{Context, Result};
use hub_client::hub::agent::{CallAppRequest, HubAppsView};
use hub_client::mcp::{AgentBackend, AgentError, McpSurface};
use hub_client::node::home::Home;
use rmcp::model::CallToolResult;
use rmcp::service::RequestContext;
use rmcp::{RoleServer, ServiceExt};
use shared_proto::agent::CallErrorCode;

use crate::api_client::{Api, ApiError};

/// The running hub's admin API, with the CLI's token (principal `local`).
#[derive(Clone)]
struct ApiBackend(Arc<Api>);

/// The API's error as the agent surface tells it: with the call's code when the API gave one.
fn agent_error(e: anyhow::Error) -> AgentError {
    match e.downcast_ref::<ApiError>() {
        Some(api) => AgentError {
            code: CallErrorCode::from_name(&api.code),
            message: api.message.clone(),
        },
        None => AgentError::other(format!("{e:#}")),
    }
}

impl AgentBackend for ApiBackend {
    async fn apps(&self, _: &RequestContext<RoleServer>) -> Result<Vec<HubAppsView>, AgentError> {
        self.apps_now().await
    }

    async fn call(
        &self,
        _: &RequestContext<RoleServer>,
        req: CallAppRequest,
    ) -> Result<CallToolResult, AgentError> {
        let value = self.0.call_app(&req).await.map_err(agent_error)?;
        serde_json::from_value(value)
            .map_err(|e| AgentError::other(format!("the hub's result does not parse: {e}")))
    }

    async fn apps_now(&self) -> Result<Vec<HubAppsView>, AgentError> {
        self.0.apps().await.map_err(agent_error)
    }
}

pub(crate) async fn serve_stdio(home: &Home) -> Result<()> {
    let api = Api::find(home)
        .await?
        .context("no running hub here: start it with `hub run` (hub mcp serves through it)")?;
    let surface = McpSurface::new(ApiBackend(Arc::new(api)));
    let service = surface
        .clone()
        .serve(hub_client::mcp::stdio::framed_stdio())
        .await
        .context("starting the MCP session on stdio")?;
    let watcher = tokio::spawn(surface.watch(service.peer().clone()));
    let ended = service.waiting().await;
    watcher.abort();
    ended.context("the MCP session failed")?;
    Ok(())
}
