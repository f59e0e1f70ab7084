#![allow(clippy::unwrap_used, clippy::expect_used)]
//! An agent in the tests: an MCP client (rmcp) that starts `hub mcp` as a desktop agent client
//! would, and the real MCP server the hubs serve as an app.

use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::Value;

use crate::cli::HubHome;
use crate::{hub_bin, repo_root};

/// The third-party MCP server (`@modelcontextprotocol/server-everything`), as scripts/setup
/// installs it.
pub fn everything() -> String {
    let bin = repo_root().join("node_modules/.bin/mcp-server-everything");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup",
        bin.display()
    );
    bin.display().to_string()
}

/// An MCP client that starts `hub mcp` for `home` as a desktop agent client would.
pub async fn mcp_client(home: &HubHome) -> RunningService<RoleClient, ()> {
    let mut cmd = tokio::process::Command::new(hub_bin());
    cmd.arg("--home").arg(&home.dir).arg("mcp");
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    ().serve(transport).await.unwrap()
}

/// Calls `tool` with `args` (a JSON object).
pub async fn call(
    client: &RunningService<RoleClient, ()>,
    tool: &str,
    args: Value,
) -> CallToolResult {
    let mut params = CallToolRequestParams::new(tool.to_owned());
    params.arguments = args.as_object().cloned();
    client.call_tool(params).await.unwrap()
}

/// The text of a tool result.
pub fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}
