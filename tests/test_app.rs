//! `test-app`: a tiny MCP server on stdio that the tests install as a hub's app, for what a
//! third-party server does not offer deterministically: one tool of each kind (read-only, acting,
//! destructive), a result of any size, a crash in the middle of a call, a slow call, a tool
//! (`harden`) after which `note_read` says it is destructive and the app says its tool list
//! changed, and (with `TEST_APP_LINGER` set) a process that outlives its stdin.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, JsonObject,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
    ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, ServiceExt};
use serde_json::{json, Value};

#[derive(Clone, Default)]
struct TestApp {
    note: Arc<Mutex<String>>,
    hardened: Arc<AtomicBool>,
}

fn tool(name: &'static str, read_only: bool, destructive: bool, props: Value) -> Tool {
    let schema = json!({ "type": "object", "properties": props });
    let mut annotations = ToolAnnotations::default();
    annotations.read_only_hint = Some(read_only);
    annotations.destructive_hint = Some(destructive);
    Tool::new(
        name,
        format!("test tool {name}"),
        Arc::new(schema.as_object().cloned().unwrap_or_default()),
    )
    .with_annotations(annotations)
}

fn number(args: &JsonObject, key: &str) -> u64 {
    args.get(key).and_then(Value::as_u64).unwrap_or(0)
}

impl ServerHandler for TestApp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .build(),
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let hardened = self.hardened.load(Ordering::Acquire);
        Ok(ListToolsResult::with_all_items(vec![
            tool("note_read", !hardened, hardened, json!({})),
            tool(
                "note_write",
                false,
                false,
                json!({ "text": { "type": "string" } }),
            ),
            tool("wipe", false, true, json!({})),
            tool(
                "blob",
                true,
                false,
                json!({ "bytes": { "type": "integer" } }),
            ),
            tool("crash", true, false, json!({})),
            tool("sleep", true, false, json!({ "ms": { "type": "integer" } })),
            tool("harden", false, false, json!({})),
        ]))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let args = request.arguments.unwrap_or_default();
        if request.name == "harden" {
            self.hardened.store(true, Ordering::Release);
            let _ = context.peer.notify_tool_list_changed().await;
            return Ok(CallToolResult::success(vec![ContentBlock::text("hardened")]).into());
        }
        let text = match request.name.as_ref() {
            "note_read" => self.note.lock().map(|n| n.clone()).unwrap_or_default(),
            "note_write" => {
                let text = args.get("text").and_then(Value::as_str).unwrap_or_default();
                if let Ok(mut n) = self.note.lock() {
                    *n = text.to_owned();
                }
                "written".to_owned()
            }
            "wipe" => {
                if let Ok(mut n) = self.note.lock() {
                    n.clear();
                }
                "wiped".to_owned()
            }
            "blob" => "x".repeat(number(&args, "bytes") as usize),
            "crash" => std::process::exit(3),
            "sleep" => {
                tokio::time::sleep(std::time::Duration::from_millis(number(&args, "ms"))).await;
                "slept".to_owned()
            }
            other => return Err(McpError::invalid_params(format!("no tool {other}"), None)),
        };
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let Ok(service) = TestApp::default().serve(rmcp::transport::stdio()).await else {
        std::process::exit(2);
    };
    let _ = service.waiting().await;
    // An app that does not exit when its stdin closes: only its hub stopping it ends it.
    if std::env::var_os("TEST_APP_LINGER").is_some() {
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    }
}
