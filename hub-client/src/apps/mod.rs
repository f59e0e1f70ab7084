//! The hub's apps: local MCP servers it starts (a command, MCP over stdio) or reaches (a
//! streamable-HTTP URL on this machine), driven with `rmcp`'s client.
//!
//! [`AppHost`] starts an app the first time it is used and keeps it; an app that fails to start,
//! or exits, is started again on its next use, after a backoff that doubles from 1 s to 60 s with
//! each failure in a row. Until then it is unavailable, with the reason. An app whose record
//! changes (`hub apps add` again) is restarted with the new one; [`AppHost::shutdown`] stops them
//! all. A failing app never fails the hub: its callers get an error naming it. An app that says
//! its tool list changed (`notifications/tools/list_changed`) has it listed again before its
//! next use, so the checks read what its tools say now.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rmcp::model::{CallToolRequestParams, CallToolResult, JsonObject, Tool};
use rmcp::service::{NotificationContext, Peer, RunningService, ServiceError};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use shared_proto::agent::{CallErrorCode, ToolHints};

use crate::node::store::{AppRecord, AppSource};

/// How long an app may take to start and say which tools it has.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// First wait before starting a failed app again; it doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait before starting a failed app again.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why an app did not give a tool result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AppError {
    /// The stable code (also on the wire between hubs).
    pub code: CallErrorCode,
    /// Details, for people.
    pub message: String,
}

impl AppError {
    pub(crate) fn new(code: CallErrorCode, message: impl Into<String>) -> Self {
        AppError {
            code,
            message: message.into(),
        }
    }
}

/// What a tool says of itself (its annotations).
pub fn hints(tool: &Tool) -> ToolHints {
    let a = tool.annotations.as_ref();
    ToolHints {
        read_only: a.and_then(|a| a.read_only_hint).unwrap_or(false),
        destructive: a.and_then(|a| a.destructive_hint).unwrap_or(false),
    }
}

/// What a tool of `app` is, as the sharing checks read it: the kind the operator pinned, or else
/// what the tool says of itself.
pub fn tool_hints(app: &AppRecord, tool: &Tool) -> ToolHints {
    app.tool_kinds
        .get(tool.name.as_ref())
        .map_or_else(|| hints(tool), |kind| kind.hints())
}

/// A tool of `app` as listings show it: with the annotations of its pinned kind, if pinned.
pub fn as_listed(app: &AppRecord, tool: &Tool) -> Tool {
    let mut tool = tool.clone();
    if let Some(kind) = app.tool_kinds.get(tool.name.as_ref()) {
        let h = kind.hints();
        let mut annotations = tool.annotations.take().unwrap_or_default();
        annotations.read_only_hint = Some(h.read_only);
        annotations.destructive_hint = Some(h.destructive);
        tool.annotations = Some(annotations);
    }
    tool
}

/// The hub as an app's MCP client: it notes when the app says its tool list changed.
#[derive(Debug, Clone, Default)]
struct AppClient {
    tools_changed: Arc<AtomicBool>,
}

impl ClientHandler for AppClient {
    fn on_tool_list_changed(
        &self,
        _context: NotificationContext<RoleClient>,
    ) -> impl std::future::Future<Output = ()> + Send + '_ {
        self.tools_changed.store(true, Ordering::Release);
        std::future::ready(())
    }
}

/// One app's running connection and what is known of it.
#[derive(Default)]
struct Slot {
    /// The record it was started from.
    source: Option<AppSource>,
    service: Option<RunningService<RoleClient, AppClient>>,
    tools: Arc<Vec<Tool>>,
    failures: u32,
    retry_at: Option<Instant>,
    last_error: Option<String>,
}

impl Slot {
    fn failed(&mut self, error: String) {
        self.service = None;
        self.failures = self.failures.saturating_add(1);
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << self.failures.saturating_sub(1).min(6))
            .min(MAX_BACKOFF);
        self.retry_at = Some(Instant::now() + backoff);
        self.last_error = Some(error);
    }
}

/// The apps of this hub, started on demand.
#[derive(Default)]
pub struct AppHost {
    slots: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>,
}

impl std::fmt::Debug for AppHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppHost").finish_non_exhaustive()
    }
}

impl AppHost {
    /// No app started yet.
    pub fn new() -> Self {
        Self::default()
    }

    fn slot(&self, name: &str) -> Arc<tokio::sync::Mutex<Slot>> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slots.entry(name.to_owned()).or_default().clone()
    }

    /// The app's tools, starting it if needed.
    pub async fn tools(&self, app: &AppRecord) -> Result<Arc<Vec<Tool>>, AppError> {
        Ok(self.connected(app).await?.1)
    }

    /// The app's running connection and tools, starting it if needed (and allowed by its
    /// backoff).
    async fn connected(
        &self,
        app: &AppRecord,
    ) -> Result<(Peer<RoleClient>, Arc<Vec<Tool>>), AppError> {
        let slot = self.slot(&app.name);
        let mut slot = slot.lock().await;
        if slot.source.as_ref() != Some(&app.source) {
            // New, or its record changed: start afresh.
            if let Some(old) = slot.service.take() {
                let _ = old.cancel().await;
            }
            *slot = Slot {
                source: Some(app.source.clone()),
                ..Slot::default()
            };
        }
        if let Some(service) = &slot.service {
            if !service.is_closed() {
                let peer = service.peer().clone();
                if service
                    .service()
                    .tools_changed
                    .swap(false, Ordering::AcqRel)
                {
                    // Listed again now: its tools (and what they say of themselves) changed.
                    match tokio::time::timeout(START_TIMEOUT, peer.list_all_tools()).await {
                        Ok(Ok(tools)) => {
                            tracing::info!(app = %app.name, tools = tools.len(), "app tools changed");
                            slot.tools = Arc::new(tools);
                        }
                        _ => {
                            slot.failed("listing its changed tools failed".into());
                            return Err(AppError::new(
                                CallErrorCode::AppUnavailable,
                                format!("app {}: listing its changed tools failed", app.name),
                            ));
                        }
                    }
                }
                return Ok((peer, slot.tools.clone()));
            }
            slot.failed("the app exited".into());
        }
        if let Some(at) = slot.retry_at {
            let now = Instant::now();
            if at > now {
                return Err(AppError::new(
                    CallErrorCode::AppUnavailable,
                    format!(
                        "app {} is unavailable ({}); next start in {} ms",
                        app.name,
                        slot.last_error.as_deref().unwrap_or("failed"),
                        (at - now).as_millis()
                    ),
                ));
            }
        }
        match tokio::time::timeout(START_TIMEOUT, start(&app.source)).await {
            Ok(Ok((service, tools))) => {
                tracing::info!(app = %app.name, tools = tools.len(), "app started");
                let peer = service.peer().clone();
                let tools = Arc::new(tools);
                slot.service = Some(service);
                slot.tools = tools.clone();
                slot.failures = 0;
                slot.retry_at = None;
                slot.last_error = None;
                Ok((peer, tools))
            }
            Ok(Err(reason)) => {
                tracing::warn!(app = %app.name, "app failed to start: {reason}");
                slot.failed(reason.clone());
                Err(AppError::new(
                    CallErrorCode::AppUnavailable,
                    format!("app {} could not start: {reason}", app.name),
                ))
            }
            Err(_) => {
                let reason = format!("it did not start within {START_TIMEOUT:?}");
                tracing::warn!(app = %app.name, "app failed to start: {reason}");
                slot.failed(reason.clone());
                Err(AppError::new(
                    CallErrorCode::AppUnavailable,
                    format!("app {}: {reason}", app.name),
                ))
            }
        }
    }

    /// Calls `tool` of `app` with `arguments`, waiting at most `timeout`.
    pub async fn call(
        &self,
        app: &AppRecord,
        tool: &str,
        arguments: Option<JsonObject>,
        timeout: Duration,
    ) -> Result<CallToolResult, AppError> {
        let (peer, tools) = self.connected(app).await?;
        if !tools.iter().any(|t| t.name == tool) {
            return Err(AppError::new(
                CallErrorCode::UnknownTool,
                format!("app {} has no tool {tool}", app.name),
            ));
        }
        let mut params = CallToolRequestParams::new(tool.to_owned());
        params.arguments = arguments;
        match tokio::time::timeout(timeout, peer.call_tool(params)).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(ServiceError::McpError(e))) => Err(AppError::new(
                CallErrorCode::AppFailed,
                format!("app {}: {}", app.name, e.message),
            )),
            Ok(Err(e)) => {
                // The connection is gone (the app exited, most likely): start it again later.
                let reason = format!("the app failed during a call: {e}");
                tracing::warn!(app = %app.name, "{reason}");
                self.slot(&app.name).lock().await.failed(reason.clone());
                Err(AppError::new(
                    CallErrorCode::AppFailed,
                    format!("app {}: {reason}", app.name),
                ))
            }
            Err(_) => Err(AppError::new(
                CallErrorCode::Timeout,
                format!("app {} gave no result within {timeout:?}", app.name),
            )),
        }
    }

    /// Stops every app.
    pub async fn shutdown(&self) {
        let slots: Vec<_> = self
            .slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .map(|(_, s)| s)
            .collect();
        for slot in slots {
            if let Some(service) = slot.lock().await.service.take() {
                let _ = service.cancel().await;
            }
        }
    }
}

/// Starts an app and lists its tools.
async fn start(
    source: &AppSource,
) -> Result<(RunningService<RoleClient, AppClient>, Vec<Tool>), String> {
    let client = AppClient::default();
    let service = match source {
        AppSource::Command {
            program,
            args,
            env,
            cwd,
        } => {
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args);
            cmd.envs(env.iter().map(|(k, v)| (k, v)));
            if let Some(dir) = cwd {
                cmd.current_dir(dir);
            }
            let (transport, _) = TokioChildProcess::builder(cmd)
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot run {program}: {e}"))?;
            client.serve(transport).await.map_err(|e| e.to_string())?
        }
        AppSource::Url(url) => {
            let transport = StreamableHttpClientTransport::from_uri(url.as_str());
            client.serve(transport).await.map_err(|e| e.to_string())?
        }
    };
    let tools = service
        .peer()
        .list_all_tools()
        .await
        .map_err(|e| format!("listing its tools: {e}"))?;
    Ok((service, tools))
}
