//! The command line: every command and option (clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use shared_proto::trust::{ClusterId, TrustLevel};
use shared_proto::HubId;

/// A hub of a cluster: its identity and certificate, its relay connection, and a self-hosted
/// relay.
#[derive(Debug, Parser)]
#[command(name = "hub", version, about, propagate_version = true)]
pub(crate) struct Cli {
    /// The hub's data directory [default: ~/.hub].
    #[arg(long, global = true, env = "HUB_HOME", value_name = "DIR")]
    pub(crate) home: Option<PathBuf>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create or grow a cluster (the founder holds the cluster CA key).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// This hub's certificate.
    #[command(subcommand)]
    Cert(CertCommand),
    /// Founder or admin: revoke a certificate; the relay closes the hub at once and every hub
    /// learns it.
    RevokeCert {
        /// The certificate's SHA-256 fingerprint (64 hex digits, as `hub cert show` prints).
        fingerprint: String,
        /// Also refuse any certificate for this identity key (SHA-256, 64 hex digits).
        #[arg(long, value_name = "HEX")]
        key_hash: Option<String>,
        /// Why (kept in the list, for people).
        #[arg(long, default_value = "revoked by an admin")]
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
        /// Where revocation lists and recent login nonces are kept across restarts
        /// [default: HOME/relay-state].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Serve only these cluster ids (comma-separated), like the Worker's ALLOWED_CLUSTERS.
        #[arg(long, value_delimiter = ',', value_name = "IDS")]
        allowed_clusters: Vec<ClusterId>,
        /// Most TCP connections served at once; past that, new ones are closed at once.
        #[arg(long, default_value_t = hub_client::relay_server::MAX_CONNECTIONS, value_name = "N")]
        max_connections: usize,
        /// Close a hub that sends nothing, not even a keepalive, for this many seconds (4008).
        #[arg(long, default_value_t = hub_client::relay_server::IDLE_TIMEOUT_MS / 1000, value_name = "SECS")]
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
        /// Send this hub's signed audit head to its peers this often (also whenever a session
        /// comes up), so that they notice if its log is cut or rolled back.
        #[arg(long, default_value_t = 30, value_name = "SECS")]
        audit_head_interval: u64,
        /// No LAN path: do not advertise or browse by mDNS (`_aiappuse._tcp`), accept no direct
        /// links; every message goes by the relay.
        #[arg(long, env = "HUB_NO_LAN", value_parser = clap::builder::BoolishValueParser::new())]
        no_lan: bool,
        /// Where the LAN path accepts direct links from the cluster's other hubs (mutually
        /// authenticated TLS 1.3); port 0 picks one, which mDNS advertises.
        #[arg(
            long,
            default_value = "0.0.0.0:0",
            env = "HUB_LAN_LISTEN",
            value_name = "ADDR"
        )]
        lan_listen: SocketAddr,
        /// Move audit entries older than this (400d) out of the store, at start and every hour, into new files in HOME/audit-archive/ (as `hub audit
        /// archive` does); kept in the store forever by default.
        #[arg(long, value_parser = parse_duration, value_name = "AGE")]
        audit_retention: Option<Duration>,
        /// For tests only: certificates signed at pairing are valid this many minutes (a year by
        /// default), to see renewals happen. Hidden from --help; logged as a warning.
        #[arg(long, hide = true, value_name = "MINUTES")]
        cert_validity_minutes: Option<u64>,
        /// For benchmarks only: record nothing in the audit log (scripts/bench-apps measures
        /// what auditing costs a call with it). Hidden from --help; logged as a warning.
        #[arg(long, hide = true)]
        bench_unaudited: bool,
        /// For benchmarks only: do not react to changes of the host's network (scripts/bench-roaming
        /// measures what the reaction saves a roaming hub). Hidden from --help; logged as a warning.
        #[arg(long, hide = true)]
        bench_no_network_watch: bool,
    },
    /// Founder or admin: make a one-time pairing token for a new hub (printed once; only its hash
    /// is kept).
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
    /// This hub's apps (local MCP servers): add, list, show, share, remove, call.
    #[command(subcommand)]
    Apps(AppsCommand),
    /// Federation statistics from the audit log: calls in and out, refusals by code, tokens,
    /// pairings, over the last hour, day and all time, in total and per peer.
    Stats {
        /// As JSON (what `GET /api/federation/stats` answers).
        #[arg(long)]
        json: bool,
    },
    /// The federation audit log: list, verify the chain, export.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Serve MCP on stdio for an agent client, connected to the running hub: the apps of every
    /// hub of the cluster that this hub may use. Put `hub mcp` (with `--home` if needed) in the
    /// client's MCP server configuration.
    Mcp,
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
    /// The phone page (a hub in the browser): write it out for a static HTTPS host.
    #[command(subcommand)]
    Web(WebCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum WebCommand {
    /// Write the phone page's files into DIR (new or empty), to serve from any static HTTPS
    /// host: a phone opens DIR's URL, or the link in the console's pairing QR code on your own
    /// host (the relay Worker serves the same page at /phone/). Whoever serves the page is
    /// trusted with the phones' keys: see docs/OPERATIONS.md.
    Export {
        /// Where to write the page.
        dir: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ClusterCommand {
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
        /// For tests only: certificate validity in minutes (instead of days), to see renewals
        /// happen. Hidden from --help.
        #[arg(long, hide = true, value_name = "MINUTES")]
        validity_minutes: Option<u64>,
    },
    /// Founder or admin: mint a complete data directory for another hub (copy it to that device).
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
    /// Founder: write the cluster CA key, the signed manifest and revocation list and the peer
    /// list to FILE, encrypted under a passphrase (age, scrypt). Keep it offline, away from
    /// this machine: `hub cluster restore` makes a new machine the cluster's admin with it.
    Backup {
        /// The backup to write (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Founder, with the hub stopped: replace the cluster CA key (after a leak, or on schedule).
    /// The old key signs a successor document naming the new one, with a certificate from the
    /// new key for every member this hub knows a certificate of; the relay hands it to the
    /// members in the old room, and each moves to the new cluster on its own. Start the hub
    /// again afterwards: it runs in the new cluster.
    Rotate {
        /// How long members that are offline now may still move when they come back (`14d`,
        /// `12h`, ...); after it the old room refuses every login (4022).
        #[arg(long, default_value = "14d", value_parser = parse_duration)]
        grace: Duration,
    },
    /// Make this (empty) home the cluster's admin again from a backup, after the founder's
    /// machine was lost: a new identity for this machine, certified by the restored CA key.
    Restore {
        /// The backup (from `hub cluster backup`).
        file: PathBuf,
        /// This hub's name.
        #[arg(long)]
        name: String,
        /// The relay's URL, if it changed since the backup.
        #[arg(long, value_name = "URL")]
        relay: Option<String>,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
}

/// Where a backup's passphrase comes from: a file, the environment, or the terminal.
#[derive(Debug, Args)]
pub(crate) struct PassphraseArgs {
    /// Read the passphrase from this file's first line instead of asking on the terminal
    /// (also: the HUB_BACKUP_PASSPHRASE environment variable).
    #[arg(long, value_name = "FILE")]
    pub(crate) passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum PeersCommand {
    /// Peers not revoked, most recently seen first (the default).
    List,
    /// One peer, with what it reports about itself if it is online.
    Show {
        /// The peer's hub id.
        id: HubId,
    },
    /// Founder or admin: revoke a peer cluster-wide (kept for audit); the relay cuts it off at
    /// once (revoking an admin cuts off the hubs it certified too).
    Revoke {
        /// The peer's hub id.
        id: HubId,
        /// Why (kept in the revocation list).
        #[arg(long, default_value = "revoked by an admin")]
        reason: String,
    },
    /// Founder: set a peer's trust level (and roles): the manifest says so at once, and the
    /// peer takes a certificate under the new terms as soon as it hears (audited). The role
    /// `admin` makes it a second admin: its certificate lets it pair, renew and revoke.
    SetTrust {
        /// The peer's hub id.
        id: HubId,
        /// read_only, agent_dispatch or full.
        level: TrustLevel,
        /// Its roles, comma-separated (unchanged if not given).
        #[arg(long, value_delimiter = ',', value_name = "ROLES")]
        roles: Option<Vec<String>>,
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
pub(crate) enum TokensCommand {
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
        /// Only these apps and tools may be called with it: app:NAME or app:NAME/TOOL,
        /// comma-separated (an agent's token); all by default.
        #[arg(long, value_delimiter = ',', value_name = "SCOPES")]
        scopes: Vec<String>,
        /// Refuse it after this many requests.
        #[arg(long, value_name = "N")]
        max_uses: Option<u64>,
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
pub(crate) enum AuditCommand {
    /// The newest entries, oldest first.
    List {
        /// Only entries about this peer.
        #[arg(long, value_name = "ID")]
        peer: Option<HubId>,
        /// Only entries newer than this (90s, 30m, 1h, 7d).
        #[arg(long, value_parser = parse_duration, value_name = "AGE")]
        since: Option<Duration>,
        /// At most this many entries.
        #[arg(long, default_value_t = 50, value_name = "N")]
        limit: u64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Check the whole chain with this hub's audit key (from its signed checkpoint if older
    /// entries were archived): exit status 0 only if every entry verifies; otherwise the first
    /// bad entry and why.
    Verify {
        /// Check this archive (from `hub audit archive`) on its own instead.
        #[arg(long, value_name = "FILE")]
        archive: Option<PathBuf>,
    },
    /// Every entry as JSON lines, with its MAC (hex), for an auditor holding the key.
    Export,
    /// Move the entries older than a date out of the store into a new file (JSON lines, a
    /// header first) that `hub audit verify --archive` checks on its own; the store keeps a
    /// checkpoint signed by this hub where the log now starts, and shrinks.
    Archive {
        /// Archive the entries before this: a UTC date (2026-01-31, 2026-01-31T12:00:00Z) or an
        /// age (400d: older than 400 days).
        #[arg(long, value_parser = parse_before, value_name = "DATE")]
        before: u64,
        /// The archive to write (must not exist).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum AppsCommand {
    /// Add an app (or replace how it is reached); it is shared with nobody until `hub apps share`.
    Add {
        /// Its name on this hub (letters, digits, `-` and `_`).
        name: String,
        /// The command that runs it, speaking MCP on stdio ("npx -y @modelcontextprotocol/server-everything").
        #[arg(
            long,
            value_name = "\"CMD ARGS...\"",
            conflicts_with = "url",
            required_unless_present = "url"
        )]
        command: Option<String>,
        /// Where it serves MCP over streamable HTTP on this machine.
        #[arg(long, value_name = "URL")]
        url: Option<String>,
        /// Environment variables for the command (repeatable).
        #[arg(long = "env", value_name = "K=V", requires = "command")]
        env: Vec<String>,
        /// The command's working directory.
        #[arg(long, value_name = "DIR", requires = "command")]
        cwd: Option<PathBuf>,
    },
    /// List the apps and who they are shared with.
    List,
    /// One app: how it is reached, its sharing, and its tools with their input schemas (the app
    /// is started to ask).
    Show {
        /// The app.
        name: String,
    },
    /// Say who else may see and call an app (default: nobody). One of the modes.
    Share {
        /// The app.
        name: String,
        /// Nobody but this hub's own agents.
        #[arg(long, group = "mode")]
        local_only: bool,
        /// Every hub of the cluster.
        #[arg(long, group = "mode")]
        cluster: bool,
        /// Hubs whose certificate has one of these roles.
        #[arg(long, value_delimiter = ',', group = "mode", value_name = "ROLES")]
        roles: Vec<String>,
        /// These hubs.
        #[arg(long, value_delimiter = ',', group = "mode", value_name = "IDS")]
        hubs: Vec<HubId>,
        /// Calls made for these operators: NAME@HUB, an API token's name on the hub (name or id)
        /// that forwards the call, or NAME@* for that name on any hub.
        #[arg(
            long,
            value_delimiter = ',',
            group = "mode",
            value_name = "NAME@HUB,..."
        )]
        principals: Vec<String>,
        /// The least trust level a calling hub needs for any tool of this app.
        #[arg(long, value_name = "LEVEL")]
        require_trust: Option<TrustLevel>,
        /// Pin a tool's kind, whatever the app says of it: read_only (read_only hubs may call
        /// it), write (agent_dispatch), destructive (full), or app to unpin it. Repeatable.
        #[arg(long = "tool-kind", value_name = "TOOL=KIND")]
        tool_kinds: Vec<String>,
    },
    /// Remove an app.
    Remove {
        /// The app.
        name: String,
    },
    /// Call a tool of an app on any hub, through the running hub (prints the MCP result as JSON).
    Call {
        /// The hub: its id or name.
        hub: String,
        /// The app.
        app: String,
        /// The tool.
        tool: String,
        /// The arguments, a JSON object.
        #[arg(long, default_value = "{}", value_name = "JSON")]
        args: String,
        /// Give up after this long (at most 55s).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertCommand {
    /// Print the certificate in human-readable form.
    Show,
    /// Renew this hub's certificate now (the running hub does it on its own two thirds into
    /// its term): asked of an admin hub over a session, or signed here by the founder.
    Renew,
    /// Print the certificate as PEM.
    Export,
}

#[derive(Debug, Subcommand)]
pub(crate) enum DebugCommand {
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
pub(crate) struct ConnArgs {
    /// Use this relay URL instead of the one in hub.toml.
    #[arg(long, env = "HUB_RELAY_URL", value_name = "URL")]
    pub(crate) relay: Option<String>,
    /// Give up if the relay has not admitted the hub within this many seconds.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub(crate) timeout: u64,
}

/// A moment before now, as Unix ms: `YYYY-MM-DD` (midnight UTC), `YYYY-MM-DDTHH:MM:SSZ`, or an
/// age (`400d`) back from now.
pub(crate) fn parse_before(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(age) = parse_duration(text) {
        return Ok(hub_client::unix_ms().saturating_sub(age.as_millis() as u64));
    }
    let bad = || {
        format!("{text:?}: expected a date (2026-01-31 or 2026-01-31T12:00:00Z) or an age (400d)")
    };
    let (date, time) = match text.split_once(['T', ' ']) {
        Some((d, t)) => (d, t.trim_end_matches('Z')),
        None => (text, "00:00:00"),
    };
    let numbers = |s: &str, sep: char| -> Result<Vec<i64>, String> {
        s.split(sep)
            .map(|n| n.parse::<i64>().map_err(|_| bad()))
            .collect()
    };
    let (ymd, hms) = (numbers(date, '-')?, numbers(time, ':')?);
    let [y, m, d] = <[i64; 3]>::try_from(ymd).map_err(|_| bad())?;
    let [hh, mm, ss] = <[i64; 3]>::try_from(hms).map_err(|_| bad())?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    // Days from civil (proleptic Gregorian), the inverse of `cluster::utc`.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs * 1000).map_err(|_| bad())
}

/// `90s`, `30m`, `1h`, `7d`, or plain seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_read_as_utc_and_nonsense_is_refused() {
        // The values `date -u -d ... +%s` gives.
        assert_eq!(parse_before("2026-12-07"), Ok(1_796_601_600_000));
        assert_eq!(parse_before("2024-02-29T13:14:15Z"), Ok(1_709_212_455_000));
        assert_eq!(parse_before("2024-02-29 13:14:15"), Ok(1_709_212_455_000));
        assert_eq!(
            crate::cluster::utc(1_709_212_455),
            "2024-02-29 13:14:15 UTC"
        );
        let now = hub_client::unix_ms();
        let age = parse_before("1d").unwrap();
        assert!(age <= now - 86_400_000 && age > now - 86_400_000 - 60_000);
        for bad in [
            "2026-13-01",
            "2026-12",
            "yesterday",
            "2026-12-07T25:00:00Z",
            "",
        ] {
            assert!(parse_before(bad).is_err(), "{bad}");
        }
    }
}
