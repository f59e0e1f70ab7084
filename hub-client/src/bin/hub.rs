//! `hub`: the hub's command line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hub_client::native_relay::{serve, Relay};
use hub_client::{RelayClient, RelayConfig, RelayEvent};
use rand::RngCore;
use shared_proto::frame::HUB_ID_LEN;
use shared_proto::HubId;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A hub of a cluster: its relay connection, and a self-hosted relay.
#[derive(Debug, Parser)]
#[command(name = "hub", version, about, propagate_version = true)]
struct Cli {
    /// The hub's data directory.
    #[arg(long, global = true, env = "HUB_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a relay natively (same protocol and close codes as the Cloudflare Worker).
    Relay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787", value_name = "ADDR")]
        listen: SocketAddr,
    },
    /// Print this hub's id (created on first use in the data directory).
    Id,
    /// Talk to a relay directly, for diagnostics.
    #[command(subcommand)]
    Debug(DebugCommand),
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Join a cluster's room and print presence and messages until interrupted.
    Listen {
        #[command(flatten)]
        conn: ConnArgs,
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
    },
    /// Join a cluster's room, send one message to a hub, and report whether it was delivered.
    Send {
        #[command(flatten)]
        conn: ConnArgs,
        /// The destination hub id (32 hex digits).
        #[arg(long, value_name = "HUB_ID")]
        to: HubId,
        /// The message text.
        message: String,
    },
}

#[derive(Debug, Args)]
struct ConnArgs {
    /// The relay's URL (ws://, wss://, http:// or https://).
    #[arg(long, env = "HUB_RELAY_URL", value_name = "URL")]
    relay: String,
    /// The cluster id.
    #[arg(long, env = "HUB_CLUSTER_ID", value_name = "ID")]
    cluster: String,
    /// Use this hub id instead of the data directory's.
    #[arg(long, value_name = "HUB_ID")]
    hub_id: Option<HubId>,
    /// Give up if the relay has not admitted the hub within this many seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    timeout: u64,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let home = cli.home.clone().map_or_else(default_home, Ok)?;
    match cli.command {
        Command::Relay { listen } => run_relay(listen).await,
        Command::Id => {
            println!("{}", load_or_create_hub_id(&home)?);
            Ok(())
        }
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

/// The hub id kept in `HOME/hub-id`, created (random) the first time.
fn load_or_create_hub_id(home: &Path) -> Result<HubId> {
    let path = home.join("hub-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a hub id", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(home)
                .with_context(|| format!("creating {}", home.display()))?;
            let mut id = [0u8; HUB_ID_LEN];
            rand::rngs::OsRng.fill_bytes(&mut id);
            let id = HubId(id);
            // Write then rename, so a crash never leaves a half-written id.
            let tmp = home.join("hub-id.tmp");
            std::fs::write(&tmp, format!("{id}\n"))
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

async fn run_relay(listen: SocketAddr) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!("relay listening on ws://{addr}/v1/clusters/{{cluster_id}}/connect");
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("listening on {addr}");
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    serve(listener, Arc::new(Relay::default()), stop_rx).await?;
    tracing::info!("relay stopped");
    Ok(())
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

async fn connect(home: &Path, conn: &ConnArgs) -> Result<(RelayClient, Vec<HubId>)> {
    let hub_id = match conn.hub_id {
        Some(id) => id,
        None => load_or_create_hub_id(home)?,
    };
    let mut client = RelayClient::spawn(RelayConfig::new(&conn.relay, &conn.cluster, hub_id))?;
    let online = tokio::time::timeout(Duration::from_secs(conn.timeout), async {
        loop {
            match client.next_event().await {
                Some(RelayEvent::Connected { online }) => return Ok(online),
                Some(RelayEvent::Disconnected {
                    retry_in: None,
                    reason,
                    code,
                }) => bail!("the relay refused this hub: {reason} (code {code:?})"),
                Some(RelayEvent::Disconnected { reason, .. }) => {
                    tracing::warn!("relay: {reason}; retrying");
                }
                Some(_) => {}
                None => bail!("the relay client stopped"),
            }
        }
    })
    .await
    .with_context(|| format!("no admission from {} within {} s", conn.relay, conn.timeout))??;
    Ok((client, online))
}

async fn debug_listen(home: &Path, conn: ConnArgs, count: Option<usize>) -> Result<()> {
    let (mut client, online) = connect(home, &conn).await?;
    println!("joined as {}", client.hub_id());
    for hub in online {
        println!("online {hub}");
    }
    let mut received = 0;
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            event = client.next_event() => match event {
                Some(RelayEvent::PeerJoined(hub)) => println!("joined {hub}"),
                Some(RelayEvent::PeerLeft(hub)) => println!("left {hub}"),
                Some(RelayEvent::Message { from, payload }) => {
                    println!("message from {from}: {}", String::from_utf8_lossy(&payload));
                    received += 1;
                    if count.is_some_and(|n| received >= n) {
                        break;
                    }
                }
                Some(RelayEvent::Connected { online }) => {
                    println!("reconnected; {} other hub(s) online", online.len());
                }
                Some(RelayEvent::Disconnected { reason, retry_in: None, .. }) => {
                    bail!("disconnected for good: {reason}")
                }
                Some(RelayEvent::Disconnected { reason, retry_in, .. }) => {
                    println!("disconnected ({reason}); retrying in {retry_in:?}");
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    client.shutdown().await;
    Ok(())
}

async fn debug_send(home: &Path, conn: ConnArgs, to: HubId, message: String) -> Result<()> {
    let (mut client, _online) = connect(home, &conn).await?;
    client.send(to, message.into_bytes()).await?;
    // The relay handles a socket's frames in order: its answer to a status request proves the
    // message before it was routed (or reported undeliverable).
    client.request_status().await?;
    let outcome = tokio::time::timeout(Duration::from_secs(conn.timeout), async {
        loop {
            match client.next_event().await {
                Some(RelayEvent::Undeliverable(hub)) if hub == to => {
                    return Err(anyhow::anyhow!("{to} is not online in this cluster"))
                }
                Some(RelayEvent::Status(_)) => return Ok(()),
                Some(_) => {}
                None => return Err(anyhow::anyhow!("the relay client stopped")),
            }
        }
    })
    .await
    .context("no answer from the relay")?;
    client.shutdown().await;
    outcome?;
    println!("delivered to {to}");
    Ok(())
}
