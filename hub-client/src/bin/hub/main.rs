//! `hub`: the hub's command line. One module per command (group); `args` holds the clap
//! definitions, `api_client` the typed client of a running hub's admin API.

mod api_client;
mod apps;
mod args;
mod audit;
mod cluster;
mod join;
mod mcp;
mod peers;
mod relay;
mod run;
mod session;
mod tokens;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use hub_client::node::home::{Home, NewHub};
use hub_client::node::store::TokenTerms;
use hub_client::relay_server::Relay;
use shared_proto::trust::TrustLevel;

use crate::api_client::Api;
use crate::args::CertCommand;
use crate::args::Cli;
use crate::args::ClusterCommand;
use crate::args::Command;
use crate::args::DebugCommand;
use crate::args::PeersCommand;
use crate::args::WebCommand;
use crate::cluster::print_certificate;
use crate::cluster::revoke;
use crate::join::join;
use crate::peers::peers_command;
use crate::peers::ping_via_api;
use crate::peers::status;
use crate::relay::run_relay;
use crate::run::run_hub;
use crate::session::debug_listen;
use crate::session::debug_send;
use crate::session::ping;
use crate::tokens::tokens;

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rmcp=warn"));
    // A backtrace helps with a bug, not with a user's mistake: shown only when asked for debug
    // logs, whatever RUST_BACKTRACE says.
    let debug = filter
        .max_level_hint()
        .is_some_and(|l| l >= tracing::level_filters::LevelFilter::DEBUG);
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{}", error_report(&e, debug));
            std::process::ExitCode::FAILURE
        }
    }
}

/// `error: WHAT`, one `caused by:` line per cause, and the backtrace only if `debug`.
fn error_report(e: &anyhow::Error, debug: bool) -> String {
    use std::fmt::Write;
    let mut out = format!("error: {e}");
    for cause in e.chain().skip(1) {
        let _ = write!(out, "\n  caused by: {cause}");
    }
    if debug && e.backtrace().status() == std::backtrace::BacktraceStatus::Captured {
        let _ = write!(out, "\n\n{}", e.backtrace());
    }
    out
}

async fn run(cli: Cli) -> Result<()> {
    let home = Home::new(match cli.home.clone() {
        Some(dir) => dir,
        None => default_home()?,
    });
    match cli.command {
        Command::Cluster(ClusterCommand::Create {
            name,
            relay,
            validity_days,
            validity_minutes,
        }) => {
            hub_client::transport::relay::connect_url(
                &relay,
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                &shared_proto::HubId([0; 16]),
            )
            .context("--relay")?;
            let max = shared_proto::session::pairing::MAX_URL;
            if relay.len() > max {
                bail!("--relay: a relay URL is at most {max} bytes (pairing tokens carry it)");
            }
            let spec = NewHub {
                name,
                trust: TrustLevel::Full,
                roles: vec!["founder".into()],
                validity_ms: validity_minutes
                    .map_or(validity_days.saturating_mul(86_400_000), |m| {
                        m.saturating_mul(60_000)
                    }),
            };
            let cluster = home.create_cluster(&relay, &spec)?;
            println!("created cluster {cluster}");
            println!("this hub: {}", home.certificate()?.hub_id());
            println!("data directory: {}", home.dir().display());
            Ok(())
        }
        Command::Cluster(ClusterCommand::Backup { out, passphrase }) => {
            crate::cluster::backup(&home, &out, &passphrase)
        }
        Command::Cluster(ClusterCommand::Rotate { grace }) => {
            crate::cluster::rotate(&home, grace).await
        }
        Command::Cluster(ClusterCommand::Restore {
            file,
            name,
            relay,
            passphrase,
        }) => crate::cluster::restore(&home, &file, name, relay.as_deref(), &passphrase),
        Command::Cluster(ClusterCommand::AddHub {
            name,
            out,
            trust_level,
            roles,
            validity_days,
        }) => {
            let spec = NewHub {
                name,
                trust: trust_level,
                roles,
                validity_ms: validity_days.saturating_mul(86_400_000),
            };
            let peer = home.add_hub(&Home::new(&out), &spec)?;
            println!(
                "created hub {} ({}) in {}",
                peer.hub_id(),
                peer.name(),
                out.display()
            );
            println!("fingerprint {}", hex::encode(peer.fingerprint()));
            Ok(())
        }
        Command::Cert(CertCommand::Show) => {
            let cert = home.certificate_held()?;
            print_certificate(&cert, &home)?;
            Ok(())
        }
        Command::Cert(CertCommand::Renew) => crate::cluster::renew(&home).await,
        Command::Cert(CertCommand::Export) => {
            print!("{}", home.certificate()?.to_pem()?);
            Ok(())
        }
        Command::RevokeCert {
            fingerprint,
            key_hash,
            reason,
            offline,
        } => revoke(&home, &fingerprint, key_hash.as_deref(), reason, offline).await,
        Command::Relay {
            listen,
            state_dir,
            allowed_clusters,
            max_connections,
            idle_timeout,
        } => {
            crate::relay::raise_open_files(max_connections);
            let state_dir = state_dir.unwrap_or_else(|| home.dir().join("relay-state"));
            let relay = Relay::new(Some(state_dir.clone()))
                .with_context(|| format!("state directory {}", state_dir.display()))?
                .max_connections(max_connections)
                .idle_timeout(Duration::from_secs(idle_timeout));
            let relay = if allowed_clusters.is_empty() {
                relay
            } else {
                relay.serve_only(allowed_clusters)
            };
            run_relay(listen, relay).await
        }
        Command::Run {
            api_listen,
            audit_head_interval,
            no_lan,
            lan_listen,
            audit_retention,
            cert_validity_minutes,
            bench_unaudited,
            bench_no_network_watch,
        } => {
            let options = hub_client::daemon::Options {
                audit_head_interval: Duration::from_secs(audit_head_interval.max(1)),
                audited: !bench_unaudited,
                lan: (!no_lan).then_some(lan_listen),
                mdns: true,
                watch_network: !bench_no_network_watch,
                audit_retention,
                cert_validity: cert_validity_minutes.map_or(
                    Duration::from_millis(hub_client::node::home::CERT_VALIDITY_MS),
                    |m| {
                        tracing::warn!("certificates signed at pairing are valid {m} minute(s) (--cert-validity-minutes, for tests)");
                        Duration::from_secs(m.saturating_mul(60))
                    },
                ),
            };
            run_hub(home, api_listen, options).await
        }
        Command::Invite {
            trust_level,
            roles,
            ttl,
        } => {
            if ttl.is_zero() || ttl > Duration::from_secs(24 * 3600) {
                bail!("--ttl must be between 1s and 24h");
            }
            let terms = TokenTerms {
                trust: trust_level,
                roles,
            };
            let token = home.invite(&terms, ttl.as_millis() as u64)?;
            eprintln!(
                "pairing token for a {} hub, valid {} s, single use; the new hub runs:",
                trust_level,
                ttl.as_secs()
            );
            eprintln!("  hub join <TOKEN> --name <NAME>");
            println!("{}", token.encode()?);
            Ok(())
        }
        Command::Join {
            token,
            name,
            timeout,
        } => join(&home, &token, &name, timeout).await,
        Command::Peers { command } => {
            peers_command(&home, command.unwrap_or(PeersCommand::List)).await
        }
        Command::Status => status(&home).await,
        Command::Tokens(cmd) => tokens(&home, cmd),
        Command::Apps(cmd) => crate::apps::apps_command(&home, cmd).await,
        Command::Audit(cmd) => crate::audit::audit_command(&home, cmd),
        Command::Stats { json } => crate::audit::stats_command(&home, json),
        Command::Mcp => crate::mcp::serve_stdio(&home).await,
        Command::Web(WebCommand::Export { dir }) => {
            let written = hub_client::web::export(&dir)?;
            println!(
                "wrote the phone page ({written} files) to {}: serve it over HTTPS, and open \
                 its URL followed by #token= and a token from `hub invite` on the phone",
                dir.display()
            );
            Ok(())
        }
        Command::Id => {
            println!("{}", home.certificate()?.hub_id());
            Ok(())
        }
        Command::Ping { peer, count, conn } => match Api::find(&home).await? {
            Some(api) => ping_via_api(&api, peer, count).await,
            None => ping(&home, peer, count, conn).await,
        },
        Command::Debug(DebugCommand::Listen { conn, count }) => {
            debug_listen(&home, conn, count).await
        }
        Command::Debug(DebugCommand::Send { conn, to, message }) => {
            debug_send(&home, conn, to, message).await
        }
    }
}

fn default_home() -> Result<PathBuf> {
    let base = std::env::var_os("HOME").context("neither --home, HUB_HOME nor HOME is set")?;
    Ok(PathBuf::from(base).join(".hub"))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
