//! The MCP surface for agents: one server, over any [`AgentBackend`]. `hub mcp` serves it on
//! stdio through the running hub's admin API; the running hub serves it at `/mcp` (streamable
//! HTTP) on its API address, in process.
//!
//! Tools: `apps.list` (every app of every hub this hub may use, with their tools), `app.call`
//! (a tool of an app on a hub, by hub id or name), and each of those tools directly, named
//! `APP_TOOL_HUB8` (the hub's first 8 id digits; at most 64 characters of `[A-Za-z0-9_-]`), so an
//! agent can call it like any tool. The list is read again at each `tools/list`; on stdio it is
//! also read every few seconds and the client is told (`notifications/tools/list_changed`) when it
//! changed.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Value};

use shared_proto::agent::CallErrorCode;

use crate::hub::agent::{CallAppRequest, HubAppsView};
use crate::hub::ServiceError;

pub mod stdio;

/// How often `watch` lists the apps of the cluster again to notice changes.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Why the agent surface could not list the apps or give a call's result: the call's stable
/// code when there is one (what an agent can act on), and details for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentError {
    /// The code of a refused or failed call.
    pub code: Option<CallErrorCode>,
    /// Details.
    pub message: String,
}

impl AgentError {
    /// An error without a call code.
    pub fn other(message: impl Into<String>) -> Self {
        AgentError {
            code: None,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for AgentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.code {
            Some(code) => write!(f, "{}: {}", code.name(), self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for AgentError {}

impl From<ServiceError> for AgentError {
    fn from(e: ServiceError) -> Self {
        AgentError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// What the MCP surface stands on: the apps of the cluster and calls to them, for one agent.
pub trait AgentBackend: Clone + Send + Sync + 'static {
    /// The apps of every hub the agent may see.
    fn apps(
        &self,
        context: &RequestContext<RoleServer>,
    ) -> impl Future<Output = Result<Vec<HubAppsView>, AgentError>> + Send;

    /// A call; the tool's result, or why not (for the agent to read).
    fn call(
        &self,
        context: &RequestContext<RoleServer>,
        req: CallAppRequest,
    ) -> impl Future<Output = Result<CallToolResult, AgentError>> + Send;

    /// The apps, outside any request (for `watch`).
    fn apps_now(&self) -> impl Future<Output = Result<Vec<HubAppsView>, AgentError>> + Send;
}

/// Where a directly exposed tool lives.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    hub: String,
    app: String,
    tool: String,
}

/// The directly exposed tools, by name.
type Directory = BTreeMap<String, (Target, Tool)>;

/// The MCP server of the agent surface.
#[derive(Debug, Clone)]
pub struct McpSurface<B> {
    backend: B,
    directory: Arc<RwLock<Directory>>,
}

impl<B: AgentBackend> McpSurface<B> {
    /// A server over `backend`.
    pub fn new(backend: B) -> Self {
        McpSurface {
            backend,
            directory: Arc::default(),
        }
    }

    /// Rebuilds the directory from a listing; whether it changed.
    fn update(&self, hubs: &[HubAppsView]) -> bool {
        let fresh = directory(hubs);
        let mut held = self
            .directory
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = !held.keys().eq(fresh.keys())
            || held.iter().zip(fresh.iter()).any(|(a, b)| a.1 .1 != b.1 .1);
        *held = fresh;
        changed
    }

    /// Lists the apps again every [`REFRESH`] and tells the client when the tools changed; ends
    /// when the client is gone.
    pub async fn watch(self, peer: Peer<RoleServer>) {
        if let Ok(hubs) = self.backend.apps_now().await {
            self.update(&hubs);
        }
        loop {
            tokio::time::sleep(REFRESH).await;
            let Ok(hubs) = self.backend.apps_now().await else {
                continue;
            };
            if self.update(&hubs) && peer.notify_tool_list_changed().await.is_err() {
                return;
            }
        }
    }

    /// The app and tool a directly exposed name stands for.
    fn target(&self, name: &str) -> Option<Target> {
        self.directory
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .map(|(t, _)| t.clone())
    }

    async fn call(
        &self,
        context: &RequestContext<RoleServer>,
        req: CallAppRequest,
    ) -> CallToolResult {
        let what = format!("{}/{} on {}", req.app, req.tool, req.hub);
        match self.backend.call(context, req).await {
            Ok(result) => result,
            Err(e) => CallToolResult::error(vec![ContentBlock::text(format!("{what}: {e}"))]),
        }
    }
}

/// The directly exposed tools of a listing.
fn directory(hubs: &[HubAppsView]) -> Directory {
    let mut out = Directory::new();
    for hub in hubs {
        for app in &hub.apps {
            for tool in &app.tools {
                let short = &hub.hub_id[..hub.hub_id.len().min(8)];
                let mut name = exposed_name(&app.name, &tool.name, short);
                let mut n = 2;
                while out.contains_key(&name) {
                    name = format!("{}_{n}", &name[..name.len().min(60)]);
                    n += 1;
                }
                let mut exposed = tool.clone();
                exposed.name = name.clone().into();
                let on = format!("[{} on hub {} ({})]", app.name, hub.hub_name, short);
                exposed.description = Some(match &tool.description {
                    Some(d) => format!("{on} {d}").into(),
                    None => on.into(),
                });
                let target = Target {
                    hub: hub.hub_id.clone(),
                    app: app.name.clone(),
                    tool: tool.name.to_string(),
                };
                out.insert(name, (target, exposed));
            }
        }
    }
    out
}

/// `APP_TOOL_HUB8`, characters outside `[A-Za-z0-9_-]` replaced by `_`, at most 64 characters
/// (app and tool shortened, the hub's part kept).
fn exposed_name(app: &str, tool: &str, hub8: &str) -> String {
    let clean = |s: &str, max: usize| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .take(max)
            .collect()
    };
    let app = clean(app, 20);
    let tool = clean(tool, 64 - app.len() - hub8.len() - 2);
    format!("{app}_{tool}_{hub8}")
}

fn object(v: Value) -> Arc<JsonObject> {
    Arc::new(v.as_object().cloned().unwrap_or_default())
}

fn own_tools() -> Vec<Tool> {
    vec![
        Tool::new(
            "apps.list",
            "List the apps of every hub of the cluster that this hub may use: hub id and name, \
             online, each app's tools with input schemas and annotations, and the path a call \
             would take.",
            object(json!({ "type": "object", "properties": {} })),
        ),
        Tool::new(
            "app.call",
            "Call a tool of an app on a hub of the cluster (this one or another): the tool's \
             result as the app gave it.",
            object(json!({
                "type": "object",
                "properties": {
                    "hub": { "type": "string", "description": "the hub's id or name" },
                    "app": { "type": "string" },
                    "tool": { "type": "string" },
                    "arguments": { "type": "object", "description": "the tool's arguments" }
                },
                "required": ["hub", "app", "tool"]
            })),
        ),
    ]
}

impl<B: AgentBackend> ServerHandler for McpSurface<B> {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("hub", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "The apps of every hub of this cluster. apps.list shows them; app.call calls one; \
             each tool is also exposed directly as APP_TOOL_HUB8.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        if let Ok(hubs) = self.backend.apps(&context).await {
            self.update(&hubs);
        }
        let mut tools = own_tools();
        let directory = self
            .directory
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tools.extend(directory.values().map(|(_, t)| t.clone()));
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        let result = match request.name.as_ref() {
            "apps.list" => match self.backend.apps(&context).await {
                Ok(hubs) => {
                    let text = serde_json::to_string_pretty(&hubs).unwrap_or_default();
                    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
                    r.structured_content = Some(json!({ "hubs": hubs }));
                    r
                }
                Err(e) => CallToolResult::error(vec![ContentBlock::text(e.to_string())]),
            },
            "app.call" => {
                let field = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_owned);
                let (Some(hub), Some(app), Some(tool)) =
                    (field("hub"), field("app"), field("tool"))
                else {
                    return Err(McpError::invalid_params(
                        "app.call needs hub, app and tool (strings)",
                        None,
                    ));
                };
                let arguments = args.get("arguments").and_then(Value::as_object).cloned();
                self.call(
                    &context,
                    CallAppRequest {
                        hub,
                        app,
                        tool,
                        arguments,
                        timeout_ms: None,
                    },
                )
                .await
            }
            name => {
                let mut target = self.target(name);
                if target.is_none() {
                    // Not in the directory (another principal's listing replaced it, or none
                    // was made since the hub started): list for this caller, then look again.
                    if let Ok(hubs) = self.backend.apps(&context).await {
                        self.update(&hubs);
                    }
                    target = self.target(name);
                }
                let Some(target) = target else {
                    return Err(McpError::invalid_params(format!("no tool {name}"), None));
                };
                self.call(
                    &context,
                    CallAppRequest {
                        hub: target.hub,
                        app: target.app,
                        tool: target.tool,
                        arguments: Some(args),
                        timeout_ms: None,
                    },
                )
                .await
            }
        };
        Ok(result.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_names_are_clean_and_short() {
        assert_eq!(
            exposed_name("fs", "read_file", "1a2b3c4d"),
            "fs_read_file_1a2b3c4d"
        );
        assert_eq!(
            exposed_name("my app", "do.it", "1a2b3c4d"),
            "my_app_do_it_1a2b3c4d"
        );
        let long = exposed_name(&"a".repeat(100), &"t".repeat(100), "1a2b3c4d");
        assert_eq!(long.len(), 64);
        assert!(long.ends_with("_1a2b3c4d"));
    }
}
