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
use hub_client::store::TokenTerms;
use hub_client::unix_ms;
use hub_client::{RelayClient, RelayEvent};
use shared_proto::cluster::{ClusterId, Revocation, TrustLevel, VerifiedPeer};
use shared_proto::pairing::PairingToken;
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
        /// Most TCP connections served at once; past that, new ones are closed at once.
        #[arg(long, default_value_t = hub_client::native_relay::MAX_CONNECTIONS, value_name = "N")]
        max_connections: usize,
        /// Close a hub that sends nothing, not even a keepalive, for this many seconds (4008).
        #[arg(long, default_value_t = hub_client::native_relay::IDLE_TIMEOUT_MS / 1000, value_name = "SECS")]
        idle_timeout: u64,
    },
    /// Run the hub: relay connection, sessions, pairing (founder) and the local admin API.
    Run {
        /// Where the admin API listens (keep it on loopback).
        #[arg(
            long,
            default_value = "127.0.0.1:7780",
            env = "HUB_API_LISTEN",
            value_name = "ADDR"
        )]
        api_listen: SocketAddr,
    },
    /// Founder: make a one-time pairing token for a new hub (printed once; only its hash is kept).
    Invite {
        /// Trust level of the new hub: read_only, agent_dispatch or full.
        #[arg(long, default_value = "agent_dispatch")]
        trust_level: TrustLevel,
        /// Roles of the new hub, comma-separated.
        #[arg(long, value_delimiter = ',')]
        roles: Vec<String>,
        /// How long the token is valid: 90s, 30m, 1h, 1d (at most 24h).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        ttl: Duration,
    },
    /// Join a cluster with a pairing token from `hub invite` (the issuer must be running).
    Join {
        /// The token (hubpair1_...).
        token: String,
        /// This hub's name.
        #[arg(long)]
        name: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 20, value_name = "SECS")]
        timeout: u64,
    },
    /// List, inspect, revoke, suspend and resume peers.
    Peers {
        #[command(subcommand)]
        command: Option<PeersCommand>,
    },
    /// This hub's state: cluster, relay connection and round trip, peers online, documents.
    Status,
    /// API tokens for the local admin API.
    #[command(subcommand)]
    Tokens(TokensCommand),
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
enum PeersCommand {
    /// Peers not revoked, most recently seen first (the default).
    List,
    /// One peer, with what it reports about itself if it is online.
    Show {
        /// The peer's hub id.
        id: HubId,
    },
    /// Founder: revoke a peer cluster-wide (kept for audit); the relay cuts it off at once.
    Revoke {
        /// The peer's hub id.
        id: HubId,
        /// Why (kept in the revocation list).
        #[arg(long, default_value = "revoked by the founder")]
        reason: String,
    },
    /// Refuse a peer's calls until it is resumed.
    Suspend {
        /// The peer's hub id.
        id: HubId,
    },
    /// Accept a suspended peer's calls again.
    Resume {
        /// The peer's hub id.
        id: HubId,
    },
}

#[derive(Debug, Subcommand)]
enum TokensCommand {
    /// Make an API token (printed once; only its hash is kept).
    Create {
        /// A name to recognize it by.
        #[arg(long)]
        name: String,
        /// Allow admin routes (pairing, revoke, suspend).
        #[arg(long)]
        admin: bool,
        /// Expire after this long (90s, 30m, 12h, 30d); never by default.
        #[arg(long, value_parser = parse_duration)]
        expires: Option<Duration>,
    },
    /// List API tokens (names and dates, never secrets).
    List,
    /// Delete the API tokens with this name.
    Delete {
        /// The name.
        name: String,
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

fn main() -> std::process::ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
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
            max_connections,
            idle_timeout,
        } => {
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
        Command::Run { api_listen } => run_hub(home, api_listen).await,
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
            println!("{}", token.encode());
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
    if !offline {
        ensure_not_running(home).await?;
    }
    let entry = Revocation {
        fingerprint: parse_hash(fingerprint, "the fingerprint")?,
        // All zeros matches no key: revocation by fingerprint only.
        key_hash: key_hash.map_or(Ok([0; 32]), |k| parse_hash(k, "--key-hash"))?,
        revoked_at_ms: unix_ms(),
        reason,
    };
    let list = home.revoke(entry)?;
    println!("signed revocation list version {}", list.version());
    if offline {
        return Ok(());
    }
    publish(home, &list).await
}

/// Publishes a revocation list through a short relay connection and waits for the relay to take
/// it.
async fn publish(home: &Home, list: &shared_proto::cluster::VerifiedRevocations) -> Result<()> {
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

async fn run_relay(listen: SocketAddr, relay: Relay) -> Result<()> {
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

/// Refuses to open a second relay connection for a hub that `hub run` serves: the relay keeps
/// one connection per hub id, so the newer one would replace the running hub's (4004). Commands
/// that try the API first (`ping`, `peers revoke`) have checked already; the others call this.
async fn ensure_not_running(home: &Home) -> Result<()> {
    if Api::find(home).await?.is_some() {
        bail!(
            "this hub is running (`hub run`): a second connection would replace it at the relay; \
             use `hub peers`, `hub ping` or `hub status`, which go through it, or stop it first"
        );
    }
    Ok(())
}

/// Connects with the home's credentials; keeps any newer revocation list it hears of.
async fn connect(home: &Home, conn: &ConnArgs) -> Result<(RelayClient, Vec<HubId>)> {
    let config = home.relay_config(conn.relay.as_deref())?;
    let relay = config.relay_url.clone();
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
    let config = home.relay_config(conn.relay.as_deref())?;
    let relay = config.relay_url.clone();
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
    ensure_not_running(home).await?;
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
    ensure_not_running(home).await?;
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

/// `90s`, `30m`, `1h`, `7d`, or plain seconds.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (n, unit) = text.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, like 30m or 1h"))?;
    let secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => return Err(format!("unknown unit {other:?}; use s, m, h or d")),
    };
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

async fn run_hub(home: Home, api_listen: SocketAddr) -> Result<()> {
    if !api_listen.ip().is_loopback() {
        tracing::warn!("the admin API listens on {api_listen}, not loopback: anyone who can reach it and holds a token can manage this hub");
    }
    let listener = TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("cannot listen on {api_listen}"))?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("admin API on http://{}", listener.local_addr()?);
    hub_client::daemon::run(home, listener, shutdown_signal()).await?;
    Ok(())
}

async fn join(home: &Home, token: &str, name: &str, timeout: u64) -> Result<()> {
    let token = PairingToken::parse(token)?;
    if home.is_initialized() {
        bail!(
            "{} already holds a hub; use another --home",
            home.dir().display()
        );
    }
    let joined = hub_client::join::join(home, &token, name, Duration::from_secs(timeout))
        .await
        .context("pairing failed")?;
    println!(
        "joined cluster {} as {} ({}), trust level {}",
        token.cluster,
        joined.certificate.hub_id(),
        joined.certificate.name(),
        joined.certificate.trust()
    );
    println!(
        "paired with {} ({})",
        joined.issuer.hub_id(),
        joined.issuer.name()
    );
    // Prove the membership: the relay admits the new certificate.
    let conn = ConnArgs {
        relay: None,
        timeout,
    };
    let (client, online) = connect(home, &conn).await?;
    client.shutdown().await;
    println!(
        "the relay admits this hub; {} other hub(s) online; start it with `hub run`",
        online.len()
    );
    Ok(())
}

/// The admin API of a running hub, found through `api.url` and `cli.token` in the home.
struct Api {
    base: String,
    token: String,
    client: reqwest::Client,
}

impl Api {
    /// How long a running hub has to answer its health check.
    const FIND_TIMEOUT: Duration = Duration::from_secs(3);
    /// How long one API call may take.
    const CALL_TIMEOUT: Duration = Duration::from_secs(30);

    /// The running hub's API, if one is running: `None` when there is no `api.url` or nothing
    /// listens there any more (a crash leaves the files behind); an error when something listens
    /// but does not answer its health check in time (a stuck hub must not be mistaken for a
    /// stopped one, or the CLI would open a second relay connection in its place).
    async fn find(home: &Home) -> Result<Option<Api>> {
        let Ok(base) = std::fs::read_to_string(home.dir().join("api.url")) else {
            return Ok(None);
        };
        let Ok(token) = std::fs::read_to_string(home.dir().join("cli.token")) else {
            return Ok(None);
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Self::FIND_TIMEOUT)
            .timeout(Self::CALL_TIMEOUT)
            .build()
            .context("building the HTTP client")?;
        let api = Api {
            base: base.trim().to_owned(),
            token: token.trim().to_owned(),
            client,
        };
        let health = api
            .client
            .get(format!("{}/api/health", api.base))
            .timeout(Self::FIND_TIMEOUT)
            .send()
            .await;
        match health {
            Ok(resp) if resp.status().is_success() => Ok(Some(api)),
            Err(e) if e.is_timeout() => bail!(
                "the running hub at {} (from {}) did not answer within {} s; \
                 is it stuck? stop it, or remove that file if no hub runs",
                api.base,
                home.dir().join("api.url").display(),
                Self::FIND_TIMEOUT.as_secs()
            ),
            _ => Ok(None),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.context("the running hub did not answer")?;
        let status = resp.status();
        let value: serde_json::Value = resp.json().await.unwrap_or_default();
        if !status.is_success() {
            let message = value["error"]["message"]
                .as_str()
                .map_or_else(|| status.to_string(), str::to_owned);
            bail!("{message}");
        }
        Ok(value)
    }
}

fn ago(ms: Option<u64>) -> String {
    match ms {
        None => "never".into(),
        Some(t) => {
            let s = unix_ms().saturating_sub(t) / 1000;
            match s {
                0..=59 => format!("{s}s ago"),
                60..=3599 => format!("{}m ago", s / 60),
                3600..=86_399 => format!("{}h ago", s / 3600),
                _ => format!("{}d ago", s / 86_400),
            }
        }
    }
}

fn print_peers(peers: &[serde_json::Value]) {
    if peers.is_empty() {
        println!("no peers");
        return;
    }
    println!(
        "{:<32}  {:<16}  {:<8}  {:<14}  {:<10}  state",
        "ID", "NAME", "ONLINE", "TRUST", "LAST SEEN"
    );
    for p in peers {
        let online = match p["online"].as_bool() {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        let state = if p["suspended_at"].is_u64() {
            "suspended"
        } else {
            "active"
        };
        println!(
            "{:<32}  {:<16}  {:<8}  {:<14}  {:<10}  {state}",
            p["id"].as_str().unwrap_or_default(),
            p["name"].as_str().unwrap_or_default(),
            online,
            p["trust_level"].as_str().unwrap_or_default(),
            ago(p["last_seen_at"].as_u64()),
        );
    }
}

fn peer_json(p: hub_client::store::PeerRecord) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(hub_client::api::PeerView::new(
        p, None,
    ))?)
}

async fn peers_command(home: &Home, cmd: PeersCommand) -> Result<()> {
    let api = Api::find(home).await?;
    match (cmd, api) {
        (PeersCommand::List, Some(api)) => {
            let peers = api
                .call(reqwest::Method::GET, "/api/federation/peers", None)
                .await?;
            print_peers(peers.as_array().map_or(&[][..], Vec::as_slice));
        }
        (PeersCommand::List, None) => {
            let peers = home
                .hub_store()?
                .active_peers()?
                .into_iter()
                .map(peer_json)
                .collect::<Result<Vec<_>>>()?;
            eprintln!("(the hub is not running: online state unknown)");
            print_peers(&peers);
        }
        (PeersCommand::Show { id }, Some(api)) => {
            let peer = api
                .call(
                    reqwest::Method::GET,
                    &format!("/api/federation/peers/{id}"),
                    None,
                )
                .await?;
            println!("{}", serde_json::to_string_pretty(&peer)?);
        }
        (PeersCommand::Show { id }, None) => {
            let peer = home
                .hub_store()?
                .peer(id)?
                .with_context(|| format!("no peer {id}"))?;
            println!("{}", serde_json::to_string_pretty(&peer_json(peer)?)?);
        }
        (PeersCommand::Revoke { id, reason }, Some(api)) => {
            let path = format!("/api/federation/peers/{id}?reason={}", url_encode(&reason));
            let out = api.call(reqwest::Method::DELETE, &path, None).await?;
            println!(
                "revoked {id}; revocation list version {} published",
                out["revocation_version"]
            );
        }
        (PeersCommand::Revoke { id, reason }, None) => {
            let peer = home
                .hub_store()?
                .peer(id)?
                .filter(|p| p.revoked_at.is_none())
                .with_context(|| format!("no active peer {id}"))?;
            let list = home.revoke_peer(&peer, reason)?;
            println!(
                "revoked {id}; signed revocation list version {}",
                list.version()
            );
            publish(home, &list).await?;
        }
        (PeersCommand::Suspend { id }, Some(api)) => {
            let path = format!("/api/federation/peers/{id}/suspend");
            api.call(reqwest::Method::POST, &path, None).await?;
            println!("suspended {id}: its calls are refused until `hub peers resume {id}`");
        }
        (PeersCommand::Resume { id }, Some(api)) => {
            let path = format!("/api/federation/peers/{id}/resume");
            api.call(reqwest::Method::POST, &path, None).await?;
            println!("resumed {id}");
        }
        (PeersCommand::Suspend { id }, None) => {
            if !home.hub_store()?.set_suspended(id, Some(unix_ms()))? {
                bail!("no active peer {id}");
            }
            println!("suspended {id}: its calls are refused until `hub peers resume {id}`");
        }
        (PeersCommand::Resume { id }, None) => {
            if !home.hub_store()?.set_suspended(id, None)? {
                bail!("no active peer {id}");
            }
            println!("resumed {id}");
        }
    }
    Ok(())
}

fn url_encode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

async fn status(home: &Home) -> Result<()> {
    if let Some(api) = Api::find(home).await? {
        let s = api.call(reqwest::Method::GET, "/api/status", None).await?;
        if s["joined"] == false {
            println!(
                "running, not a member of a cluster yet (POST /api/federation/pair or hub join)"
            );
            return Ok(());
        }
        println!(
            "hub:          {} ({})",
            s["hub_id"].as_str().unwrap_or_default(),
            s["name"].as_str().unwrap_or_default()
        );
        println!(
            "cluster:      {}",
            s["cluster_id"].as_str().unwrap_or_default()
        );
        println!("running:      yes");
        let relay = &s["relay"];
        let state = if relay["connected"] == true {
            match relay["rtt_ms"].as_f64() {
                Some(rtt) => format!("connected, round trip {rtt:.2} ms"),
                None => "connected".to_owned(),
            }
        } else {
            format!(
                "disconnected ({})",
                relay["last_error"].as_str().unwrap_or("connecting")
            )
        };
        println!(
            "relay:        {} {state}",
            relay["url"].as_str().unwrap_or_default()
        );
        println!("peers online: {}", s["peers_online"]);
        let serial =
            |v: &serde_json::Value| v.as_u64().map_or_else(|| "none".into(), |n| n.to_string());
        println!("manifest:     epoch {}", serial(&s["manifest_epoch"]));
        println!("revocations:  version {}", serial(&s["revocation_version"]));
        return Ok(());
    }
    let cert = home.certificate()?;
    let store = home.store()?;
    let doc = |kind| -> Result<String> {
        Ok(store
            .document(kind)?
            .map_or_else(|| "none".to_owned(), |d| d.serial.to_string()))
    };
    println!("hub:          {} ({})", cert.hub_id(), cert.name());
    println!("cluster:      {}", home.cluster_id()?);
    println!("running:      no (start it with `hub run`)");
    println!("relay:        {} (not connected)", home.config()?.relay_url);
    println!("manifest:     epoch {}", doc(hub_client::store::MANIFEST)?);
    println!(
        "revocations:  version {}",
        doc(hub_client::store::REVOCATIONS)?
    );
    Ok(())
}

fn tokens(home: &Home, cmd: TokensCommand) -> Result<()> {
    let store = home.store()?;
    match cmd {
        TokensCommand::Create {
            name,
            admin,
            expires,
        } => {
            use rand::RngCore;
            let mut secret = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut secret);
            let token = hub_client::api::format_api_token(&secret);
            let now = unix_ms();
            let expires_at = expires.map(|d| now + d.as_millis() as u64);
            store.add_api_token(token.as_bytes(), &name, admin, now, expires_at)?;
            eprintln!(
                "API token {name:?} ({}); shown once, store it now:",
                if admin { "admin" } else { "read" }
            );
            println!("{token}");
        }
        TokensCommand::List => {
            let tokens = store.api_tokens()?;
            if tokens.is_empty() {
                println!("no API tokens");
            }
            for t in tokens {
                println!(
                    "{:<24}  {:<5}  created {}  expires {}  last used {}",
                    t.name,
                    if t.admin { "admin" } else { "read" },
                    ago(Some(t.created_at)),
                    t.expires_at
                        .map_or_else(|| "never".into(), |e| utc(e / 1000)),
                    ago(t.last_used_at)
                );
            }
        }
        TokensCommand::Delete { name } => {
            let n = store.delete_api_tokens(&name)?;
            if n == 0 {
                bail!("no API token named {name:?}");
            }
            println!("deleted {n} token(s) named {name:?}");
        }
    }
    Ok(())
}

async fn ping_via_api(api: &Api, peer: HubId, count: u32) -> Result<()> {
    for _ in 0..count.max(1) {
        let out = api
            .call(
                reqwest::Method::POST,
                &format!("/api/federation/peers/{peer}/ping"),
                None,
            )
            .await
            .with_context(|| format!("ping {peer}"))?;
        println!(
            "reply from {peer}: {:.2} ms (through the running hub)",
            out["rtt_ms"].as_f64().unwrap_or_default()
        );
    }
    Ok(())
}
