//! `hub apps`: this hub's apps (local MCP servers), kept in its store; calls go through the
//! running hub.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use hub_client::apps::{hints, tool_hints, AppHost};
use hub_client::hub::agent::CallAppRequest;
use hub_client::node::audit::{self, AuditKind, Decision};
use hub_client::node::home::Home;
use hub_client::node::store::AppSource;
use hub_client::unix_ms;
use shared_proto::agent::Sharing;

use crate::api_client::Api;
use crate::args::AppsCommand;

pub(crate) async fn apps_command(home: &Home, cmd: AppsCommand) -> Result<()> {
    let store = home.store()?;
    match cmd {
        AppsCommand::Add {
            name,
            command,
            url,
            env,
            cwd,
        } => {
            check_name(&name)?;
            let source = match (command, url) {
                (Some(command), None) => {
                    let mut words = shlex::split(&command)
                        .with_context(|| format!("--command {command:?}: unbalanced quotes"))?
                        .into_iter();
                    let program = words.next().context("--command is empty")?;
                    let env = env
                        .iter()
                        .map(|kv| {
                            kv.split_once('=')
                                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                                .with_context(|| format!("--env {kv:?}: expected K=V"))
                        })
                        .collect::<Result<_>>()?;
                    AppSource::Command {
                        program,
                        args: words.collect(),
                        env,
                        cwd: cwd.map(|d| d.display().to_string()),
                    }
                }
                (None, Some(url)) => {
                    let parsed = url::Url::parse(&url).with_context(|| format!("--url {url:?}"))?;
                    if !matches!(parsed.scheme(), "http" | "https") {
                        bail!("--url {url:?}: expected an http:// or https:// URL");
                    }
                    AppSource::Url(url)
                }
                _ => bail!("give --command or --url"),
            };
            let existed = store.app(&name)?.is_some();
            store.put_app(&name, &source, unix_ms())?;
            let mut entry = audit::entry(AuditKind::AppAdd, None, Decision::Ok, &describe(&source));
            entry.app = name.clone();
            audit::record(home, &store, entry);
            if existed {
                println!("app {name} updated (its sharing is unchanged)");
            } else {
                println!(
                    "app {name} added; it is shared with nobody: hub apps share {name} --cluster"
                );
            }
        }
        AppsCommand::List => {
            let apps = store.apps()?;
            if apps.is_empty() {
                println!("no apps: hub apps add NAME --command \"CMD ARGS...\"");
            }
            for app in apps {
                let trust = app
                    .require_trust
                    .map_or(String::new(), |t| format!("  (requires {t})"));
                println!(
                    "{:<20}  {:<28}  {}{trust}",
                    app.name,
                    app.sharing.to_string(),
                    describe(&app.source)
                );
            }
        }
        AppsCommand::Show { name } => {
            let app = store
                .app(&name)?
                .with_context(|| format!("no app {name}"))?;
            println!("app      {}", app.name);
            println!("reached  {}", describe(&app.source));
            println!("shared   {}", app.sharing);
            if let Some(t) = app.require_trust {
                println!("requires {t}");
            }
            let host = AppHost::new();
            let tools = host.tools(&app).await;
            host.shutdown().await;
            let tools = tools.map_err(|e| anyhow::anyhow!("{}", e.message))?;
            println!("tools    {}", tools.len());
            for tool in tools.iter() {
                let kind = match app.tool_kinds.get(tool.name.as_ref()) {
                    Some(pinned) => {
                        format!("{pinned}, pinned; the app says {}", hints(tool).kind())
                    }
                    None => tool_hints(&app, tool).kind().to_string(),
                };
                println!();
                println!("  {} ({kind})", tool.name);
                if let Some(d) = &tool.description {
                    println!("    {}", d.lines().next().unwrap_or_default());
                }
                println!(
                    "    input {}",
                    serde_json::to_string(&*tool.input_schema).unwrap_or_default()
                );
            }
        }
        AppsCommand::Share {
            name,
            local_only,
            cluster,
            roles,
            hubs,
            principals,
            require_trust,
            tool_kinds,
        } => {
            let sharing = if cluster {
                Sharing::Cluster
            } else if !roles.is_empty() {
                Sharing::Roles(roles)
            } else if !hubs.is_empty() {
                Sharing::Hubs(hubs)
            } else if !principals.is_empty() {
                Sharing::Principals(principals)
            } else if local_only {
                Sharing::LocalOnly
            } else {
                bail!("say with whom: --local-only, --cluster, --roles, --hubs or --principals");
            };
            sharing.require_qualified()?;
            let pins = tool_kinds
                .iter()
                .map(|pin| {
                    let (tool, kind) = pin
                        .split_once('=')
                        .with_context(|| format!("--tool-kind {pin}: write TOOL=KIND"))?;
                    let kind = audit::parse_pin_kind(kind).map_err(anyhow::Error::msg)?;
                    Ok((tool.to_owned(), kind))
                })
                .collect::<Result<audit::ToolPins>>()?;
            if !audit::share_app(home, &store, &name, &sharing, require_trust, &pins)? {
                bail!("no app {name}");
            }
            println!("app {name} is shared with: {sharing}");
            for (tool, kind) in &pins {
                match kind {
                    Some(kind) => println!("tool {tool} is pinned {kind}"),
                    None => println!("tool {tool} is what the app says it is"),
                }
            }
        }
        AppsCommand::Remove { name } => {
            if !store.remove_app(&name)? {
                bail!("no app {name}");
            }
            let mut entry = audit::entry(AuditKind::AppRemove, None, Decision::Ok, "");
            entry.app = name.clone();
            audit::record(home, &store, entry);
            println!("app {name} removed");
        }
        AppsCommand::Call {
            hub,
            app,
            tool,
            args,
            timeout,
        } => {
            let arguments: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(&args).context("--args must be a JSON object")?;
            let api = Api::find(home)
                .await?
                .context("no running hub here: start it with hub run")?;
            let req = CallAppRequest {
                hub,
                app,
                tool,
                arguments: Some(arguments),
                timeout_ms: Some(timeout.min(Duration::from_secs(55)).as_millis() as u64),
            };
            let result = api.call_app(&req).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
    }
    Ok(())
}

fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !ok {
        bail!("an app name is 1 to 64 letters, digits, '-' or '_'");
    }
    Ok(())
}

fn describe(source: &AppSource) -> String {
    match source {
        AppSource::Command { program, args, .. } => {
            let mut words = vec![program.clone()];
            words.extend(args.iter().cloned());
            shlex::try_join(words.iter().map(String::as_str)).unwrap_or_else(|_| words.join(" "))
        }
        AppSource::Url(url) => url.clone(),
    }
}
