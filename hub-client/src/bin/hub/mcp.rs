//! `hub mcp`: an MCP server on stdio, for agent clients, backed by the running hub's admin API.
//!
//! Tools: `apps.list` (every app of every hub this hub may use, with their tools), `app.call`
//! (a tool of an app on a hub, by hub id or name), and each of those tools directly, named
//! `APP_TOOL_HUB8` (the hub's first 8 id digits; at most 64 characters of `[A-Za-z0-9_-]`), so an
//! agent can call it like any tool. The list is refreshed every few seconds and clients are told
//! (`notifications/tools/list_changed`) when it changes.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result};
use hub_client::api::CallAppRequest;
use hub_client::hub::agent::HubAppsView;
use hub_client::node::home::Home;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    JsonObject, ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{Peer, RequestContext};
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Value};

use crate::api_client::Api;

/// How often the apps of the cluster are listed again to notice changes.
const REFRESH: Duration = Duration::from_secs(5);

/// Where a directly exposed tool lives.
#[derive(Debug, Clone, PartialEq)]
struct Target {
    hub: String,
    app: String,
    tool: String,
}

/// The directly exposed tools, by name.
type Directory = BTreeMap<String, (Target, Tool)>;

#[derive(Clone)]
struct HubMcp {
    api: Arc<Api>,
    directory: Arc<RwLock<Directory>>,
}

pub(crate) async fn serve_stdio(home: &Home) -> Result<()> {
    let api = Api::find(home)
        .await?
        .context("no running hub here: start it with `hub run` (hub mcp serves through it)")?;
    let server = HubMcp {
        api: Arc::new(api),
        directory: Arc::default(),
    };
    server.refresh().await;
    let service = server
        .clone()
        .serve(rmcp::transport::stdio())
        .await
        .context("starting the MCP session on stdio")?;
    let watcher = tokio::spawn(watch(server, service.peer().clone()));
    let ended = service.waiting().await;
    watcher.abort();
    ended.context("the MCP session failed")?;
    Ok(())
}

/// Lists the apps again every [`REFRESH`] and tells the client when the tools changed.
async fn watch(server: HubMcp, peer: Peer<RoleServer>) {
    loop {
        tokio::time::sleep(REFRESH).await;
        if server.refresh().await {
            if let Err(e) = peer.notify_tool_list_changed().await {
                tracing::debug!("list_changed not sent: {e}");
                return;
            }
        }
    }
}

impl HubMcp {
    /// Lists the apps of the cluster and rebuilds the directory; whether its names changed.
    async fn refresh(&self) -> bool {
        let Ok(hubs) = self.api.apps().await else {
            return false;
        };
        let fresh = directory(&hubs);
        let mut held = self
            .directory
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = !held.keys().eq(fresh.keys())
            || held.iter().zip(fresh.iter()).any(|(a, b)| a.1 .1 != b.1 .1);
        *held = fresh;
        changed
    }

    async fn call(&self, req: CallAppRequest) -> CallToolResult {
        match self.api.call_app(&req).await {
            Ok(result) => serde_json::from_value(result).unwrap_or_else(|e| {
                CallToolResult::error(vec![ContentBlock::text(format!(
                    "the hub's result does not parse: {e}"
                ))])
            }),
            Err(e) => CallToolResult::error(vec![ContentBlock::text(format!(
                "{}/{} on {}: {e:#}",
                req.app, req.tool, req.hub
            ))]),
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

impl ServerHandler for HubMcp {
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
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
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
        _context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        let result = match request.name.as_ref() {
            "apps.list" => match self.api.apps().await {
                Ok(hubs) => {
                    let text = serde_json::to_string_pretty(&hubs).unwrap_or_default();
                    let mut r = CallToolResult::success(vec![ContentBlock::text(text)]);
                    r.structured_content = Some(json!({ "hubs": hubs }));
                    r
                }
                Err(e) => CallToolResult::error(vec![ContentBlock::text(format!("{e:#}"))]),
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
                self.call(CallAppRequest {
                    hub,
                    app,
                    tool,
                    arguments,
                    timeout_ms: None,
                })
                .await
            }
            name => {
                let target = self
                    .directory
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .get(name)
                    .map(|(t, _)| t.clone());
                let Some(target) = target else {
                    return Err(McpError::invalid_params(format!("no tool {name}"), None));
                };
                self.call(CallAppRequest {
                    hub: target.hub,
                    app: target.app,
                    tool: target.tool,
                    arguments: Some(args),
                    timeout_ms: None,
                })
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
