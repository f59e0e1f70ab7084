//! `hub`: the hub's command line.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use hub_client::home::{Home, NewHub};
use hub_client::native_relay::{serve, Relay};
use hub_client::peers::{PeerClient, PeerError, PeerEvent};
use hub_client::{RelayClient, RelayConfig, RelayEvent};
use shared_proto::cluster::{ClusterId, Revocation, TrustLevel, VerifiedPeer};
use shared_proto::HubId;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A hub of a cluster: its identity and certificate, its relay connection, and a self-hosted
/// relay.
#[derive(Debug, Parser)]
#[command(name = "hub", version, about, propagate_version = true)]
struct Cli {
    /// The hub's data directory [default: ~/.hub].
    #[arg(long, global = true, env = "HUB_HOME", value_name = "DIR")]
    home: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or grow a cluster (the founder holds the cluster CA key).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// This hub's certificate.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Founder: revoke a certificate; the relay closes the hub at once and every hub learns it.
    RevokeCert {
        /// The certificate's SHA-256 fingerprint (64 hex digits, as `hub cert show` prints).
        fingerprint: String,
        /// Also refuse any certificate for this identity key (SHA-256, 64 hex digits).
        #[arg(long, value_name = "HEX")]
        key_hash: Option<String>,
        /// Why (kept in the list, for people).
        #[arg(long, default_value = "revoked by the founder")]
        reason: String,
        /// Sign and store the list without publishing it through the relay.
        #[arg(long)]
        offline: bool,
    },
    /// Run a relay natively (same protocol and close codes as the Cloudflare Worker).
    Relay {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8787", value_name = "ADDR")]
        listen: SocketAddr,
        /// Where revocation lists are kept across restarts [default: HOME/relay-state].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Serve only these cluster ids (comma-separated), like the Worker's ALLOWED_CLUSTERS.
        #[arg(long, value_delimiter = ',', value_name = "IDS")]
        allowed_clusters: Vec<ClusterId>,
    },
    /// Print this hub's id.
    Id,
    /// Measure round trips to another hub through the end-to-end encrypted session.
    Ping {
        /// The hub to ping (32 hex digits).
        peer: HubId,
        /// How many pings.
        #[arg(long, default_value_t = 4)]
        count: u32,
        #[command(flatten)]
        conn: ConnArgs,
    },
    /// Talk to the relay directly, for diagnostics.
    #[command(subcommand)]
    Debug(DebugCommand),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Founder: mint a new cluster CA and this hub's certificate (trust full, role founder).
    Create {
        /// This hub's name.
        #[arg(long)]
        name: String,
        /// The relay's URL (your Worker, or `hub relay`).
        #[arg(long, value_name = "URL")]
        relay: String,
        /// Certificate validity in days.
        #[arg(long, default_value_t = 365)]
        validity_days: u64,
    },
    /// Founder: mint a complete data directory for another hub (copy it to that device).
    AddHub {
        /// The new hub's name.
        #[arg(long)]
        name: String,
        /// The directory to create.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Trust level: read_only, agent_dispatch or full.
        #[arg(long, default_value = "agent_dispatch")]
        trust_level: TrustLevel,
        /// Roles, comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// Certificate validity in days.
        #[arg(long, default_value_t = 365)]
        validity_days: u64,
    },
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Print the certificate in human-readable form.
    Show,
    /// Print the certificate as PEM.
    Export,
}

#[derive(Debug, Subcommand)]
enum DebugCommand {
    /// Join the cluster's room and print presence and messages until interrupted.
    Listen {
        #[command(flatten)]
        conn: ConnArgs,
        /// Exit after this many messages.
        #[arg(long, value_name = "N")]
        count: Option<usize>,
    },
    /// Join the cluster's room, send one message to a hub, and report whether it was delivered.
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
    /// Use this relay URL instead of the one in hub.toml.
    #[arg(long, env = "HUB_RELAY_URL", value_name = "URL")]
    relay: Option<String>,
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(cli))
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
        }) => {
            hub_client::relay::connect_url(&relay, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
                .context("--relay")?;
            let spec = NewHub {
                name,
                trust: TrustLevel::Full,
                roles: vec!["founder".into()],
                validity_days,
            };
            let cluster = home.create_cluster(&relay, &spec)?;
            println!("created cluster {cluster}");
            println!("this hub: {}", home.certificate()?.hub_id());
            println!("data directory: {}", home.dir().display());
            Ok(())
        }
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
                validity_days,
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
            let cert = home.certificate()?;
            print_certificate(&cert, &home)?;
            Ok(())
        }
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
        } => {
            let state_dir = state_dir.unwrap_or_else(|| home.dir().join("relay-state"));
            run_relay(listen, state_dir, allowed_clusters).await
        }
        Command::Id => {
            println!("{}", home.certificate()?.hub_id());
            Ok(())
        }
        Command::Ping { peer, count, conn } => ping(&home, peer, count, conn).await,
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

fn print_certificate(cert: &VerifiedPeer, home: &Home) -> Result<()> {
    let date = |ms: u64| utc(ms / 1000);
    println!("hub id:       {}", cert.hub_id());
    println!("name:         {}", cert.name());
    println!("cluster:      {}", home.cluster_id()?);
    println!("trust level:  {}", cert.trust());
    println!("roles:        {}", cert.roles().join(", "));
    println!("not before:   {}", date(cert.not_before_ms()));
    println!("not after:    {}", date(cert.not_after_ms()));
    println!("fingerprint:  {}", hex::encode(cert.fingerprint()));
    println!("key hash:     {}", hex::encode(cert.key_hash()));
    println!("noise key:    {}", hex::encode(cert.noise_key()));
    Ok(())
}

/// `YYYY-MM-DD HH:MM:SS UTC` for Unix seconds (civil-from-days, proleptic Gregorian).
fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn parse_hash(text: &str, what: &str) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut out)
        .with_context(|| format!("{what} must be 64 hex digits"))?;
    Ok(out)
}

async fn revoke(
    home: &Home,
    fingerprint: &str,
    key_hash: Option<&str>,
    reason: String,
    offline: bool,
) -> Result<()> {
    let entry = Revocation {
        fingerprint: parse_hash(fingerprint, "the fingerprint")?,
        // All zeros matches no key: revocation by fingerprint only.
        key_hash: key_hash.map_or(Ok([0; 32]), |k| parse_hash(k, "--key-hash"))?,
        revoked_at_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        reason,
    };
    let list = home.revoke(entry)?;
    println!("signed revocation list version {}", list.version());
    if offline {
        return Ok(());
    }
    let conn = ConnArgs {
        relay: None,
        timeout: 10,
    };
    let (mut client, _) = connect(home, &conn).await?;
    // The client already passed the list on in its Hello; publishing again is harmless (an equal
    // version is ignored). The relay handles a socket's frames in order and closes a hub whose
    // list it refuses, so its answer to the status request confirms the list was taken.
    client.publish_revocations(list.bytes().to_vec()).await?;
    client.request_status().await?;
    tokio::time::timeout(Duration::from_secs(conn.timeout), async {
        loop {
            match client.next_event().await {
                Some(RelayEvent::Status(_)) => return Ok(()),
                Some(RelayEvent::Revocations(l)) if l.version() > list.version() => {
                    home.keep_revocations(&l)?;
                    bail!(
                        "the relay holds a newer list (version {}); revoke again",
                        l.version()
                    )
                }
                Some(RelayEvent::Disconnected { reason, .. }) => {
                    bail!("the relay closed the connection: {reason}")
                }
                Some(_) => {}
                None => bail!("the relay client stopped"),
            }
        }
    })
    .await
    .context("the relay did not confirm the revocation list")??;
    client.shutdown().await;
    println!("published: the relay enforces version {}", list.version());
    Ok(())
}

async fn run_relay(listen: SocketAddr, state_dir: PathBuf, allowed: Vec<ClusterId>) -> Result<()> {
    let mut relay = Relay::new(Some(state_dir.clone()))
        .with_context(|| format!("state directory {}", state_dir.display()))?;
    if !allowed.is_empty() {
        relay = relay.serve_only(allowed);
    }
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
    serve(listener, Arc::new(relay), stop_rx).await?;
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

/// Connects with the home's credentials; keeps any newer revocation list it hears of.
async fn connect(home: &Home, conn: &ConnArgs) -> Result<(RelayClient, Vec<HubId>)> {
    let relay = match &conn.relay {
        Some(url) => url.clone(),
        None => home.config()?.relay_url,
    };
    let mut config = RelayConfig::new(relay.clone(), home.credentials()?);
    config.revocations = home.revocations();
    let mut client = RelayClient::spawn(config)?;
    let online = tokio::time::timeout(Duration::from_secs(conn.timeout), async {
        loop {
            match client.next_event().await {
                Some(RelayEvent::Connected { online }) => return Ok(online),
                Some(RelayEvent::Disconnected {
                    retry_in: None,
                    reason,
                    code,
                }) => bail!(
                    "the relay refused this hub: {reason} (close code {})",
                    code.map_or_else(|| "none".to_owned(), |c| c.to_string())
                ),
                Some(RelayEvent::Disconnected { reason, .. }) => {
                    tracing::warn!("relay: {reason}; retrying");
                }
                Some(RelayEvent::Revocations(list)) => {
                    home.keep_revocations(&list)?;
                }
                Some(_) => {}
                None => bail!("the relay client stopped"),
            }
        }
    })
    .await
    .with_context(|| format!("no admission from {relay} within {} s", conn.timeout))??;
    Ok((client, online))
}

/// Starts the peer layer with the home's identity and waits until the relay admits the hub.
async fn connect_peers(home: &Home, conn: &ConnArgs) -> Result<PeerClient> {
    let relay = match &conn.relay {
        Some(url) => url.clone(),
        None => home.config()?.relay_url,
    };
    let mut config = RelayConfig::new(relay.clone(), home.credentials()?);
    config.revocations = home.revocations();
    let mut peers = PeerClient::spawn(config, home.noise_identity()?)?;
    tokio::time::timeout(Duration::from_secs(conn.timeout), async {
        loop {
            match peers.next_event().await {
                Some(PeerEvent::Relay(RelayEvent::Connected { .. })) => return Ok(()),
                Some(PeerEvent::Relay(RelayEvent::Disconnected {
                    retry_in: None,
                    reason,
                    code,
                })) => bail!(
                    "the relay refused this hub: {reason} (close code {})",
                    code.map_or_else(|| "none".to_owned(), |c| c.to_string())
                ),
                Some(PeerEvent::Relay(RelayEvent::Revocations(list))) => {
                    home.keep_revocations(&list)?;
                }
                Some(_) => {}
                None => bail!("the peer client stopped"),
            }
        }
    })
    .await
    .with_context(|| format!("no admission from {relay} within {} s", conn.timeout))??;
    Ok(peers)
}

async fn ping(home: &Home, peer: HubId, count: u32, conn: ConnArgs) -> Result<()> {
    let peers = connect_peers(home, &conn).await?;
    let limit = Duration::from_secs(conn.timeout);
    let mut rtts = Vec::new();
    for i in 0..count.max(1) {
        let rtt = peers
            .ping(peer, limit)
            .await
            .with_context(|| format!("ping {peer}"))?;
        let note = if i == 0 {
            " (includes the handshake)"
        } else {
            ""
        };
        println!(
            "reply from {peer}: {:.2} ms{note}",
            rtt.as_secs_f64() * 1000.0
        );
        rtts.push(rtt);
    }
    if rtts.len() > 1 {
        let mut steady: Vec<Duration> = rtts[1..].to_vec();
        steady.sort();
        println!(
            "{} pings; after the handshake: min {:.2} ms, median {:.2} ms, max {:.2} ms",
            rtts.len(),
            steady[0].as_secs_f64() * 1000.0,
            steady[steady.len() / 2].as_secs_f64() * 1000.0,
            steady[steady.len() - 1].as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

async fn debug_listen(home: &Home, conn: ConnArgs, count: Option<usize>) -> Result<()> {
    let mut peers = connect_peers(home, &conn).await?;
    println!("joined as {}", home.certificate()?.hub_id());
    let mut received = 0;
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            event = peers.next_event() => match event {
                Some(PeerEvent::Message { from, message }) => {
                    println!("message from {from}: {}", String::from_utf8_lossy(&message));
                    received += 1;
                    if count.is_some_and(|n| received >= n) {
                        break;
                    }
                }
                Some(PeerEvent::Relay(RelayEvent::PeerJoined(hub))) => println!("joined {hub}"),
                Some(PeerEvent::Relay(RelayEvent::PeerLeft(hub))) => println!("left {hub}"),
                Some(PeerEvent::Relay(RelayEvent::Revocations(list))) => {
                    home.keep_revocations(&list)?;
                    println!("revocation list version {}", list.version());
                }
                Some(PeerEvent::Relay(RelayEvent::Connected { online })) => {
                    println!("connected; {} other hub(s) online", online.len());
                }
                Some(PeerEvent::Relay(RelayEvent::Disconnected { reason, retry_in: None, code })) => {
                    println!("disconnected for good: {reason}");
                    bail!("disconnected for good: {reason} (close code {code:?})")
                }
                Some(PeerEvent::Relay(RelayEvent::Disconnected { reason, retry_in, .. })) => {
                    println!("disconnected ({reason}); retrying in {retry_in:?}");
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    Ok(())
}

async fn debug_send(home: &Home, conn: ConnArgs, to: HubId, message: String) -> Result<()> {
    let peers = connect_peers(home, &conn).await?;
    peers.send(to, message.into_bytes()).await?;
    // The session is ordered: the answer to a ping sent after the message proves its delivery.
    let rtt = peers
        .ping(to, Duration::from_secs(conn.timeout))
        .await
        .map_err(|e| match e {
            PeerError::Session { reason, .. } if reason == "not online" => {
                anyhow::anyhow!("{to} is not online in this cluster")
            }
            e => anyhow::anyhow!(e),
        })?;
    println!(
        "delivered to {to} over an end-to-end session (round trip {:.2} ms)",
        rtt.as_secs_f64() * 1000.0
    );
    Ok(())
}
