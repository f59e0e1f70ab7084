#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    clippy::result_large_err
)]
//! Test harness for the end-to-end suites: starts a real relay (the Worker in workerd, or
//! `hub relay`) on a free 127.0.0.1 port, kills it on drop, and drives hubs against it.
//!
//! The workerd relay runs the wasm32 build in `relay-worker/build/` (made by
//! `scripts/build-worker`) with a capnp config written here, Durable Object storage on a
//! temporary disk directory, so a restart keeps the room's storage like a real deployment.
//! `hub relay` runs the `hub` binary from the cargo target directory. `scripts/test` builds both
//! before running the suite; a missing one fails the test with the command to run.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use hub_client::transport::backoff::Backoff;
use hub_client::{RelayClient, RelayConfig, RelayEvent};
use shared_proto::trust::login::Credentials;
use shared_proto::trust::{
    fingerprint, CertificateRequest, ClusterCa, ClusterId, Revocation, RevocationList, TrustLevel,
};
use shared_proto::HubId;

/// Which relay implementation a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    /// The Rust Worker, compiled to wasm32, in workerd.
    Workerd,
    /// `hub relay`, native.
    Native,
}

/// Polls `done` every 20 ms until it holds, for at most `limit` (then panics naming `what`);
/// how long it took.
pub fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "no {what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

/// A runtime for the async parts of a test (the CLI and API helpers block, and run outside it, or
/// inside it through [`blocking`]).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs a blocking helper (`hub` through the CLI, an API request) inside a test's runtime.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                repo_root().join(p)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"))
}

/// A number a benchmark takes from the environment (`name`), or `default` when unset or not a
/// number.
pub fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of a process (KiB), 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time a process has used so far (user and system, all its threads), in seconds, from
/// `/proc/PID/stat` (in clock ticks of 1/100 s, Linux's fixed `USER_HZ`); 0 once it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces): state is the first, utime the
    // 12th, stime the 13th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The `hub` binary under test: `HUB_BIN`, or the debug build in the target directory
/// (benchmarks pick the release one through `HUB_BIN`).
pub fn hub_bin() -> PathBuf {
    let hub = std::env::var_os("HUB_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("debug/hub"));
    assert!(
        hub.exists(),
        "{} is missing: cargo build -p hub-client --bin hub (scripts/test does)",
        hub.display()
    );
    hub
}

/// A relay process under test. Killed (SIGKILL) when dropped.
///
/// No port is chosen by binding and releasing it (another process could take it in between):
/// workerd is handed a listening socket that the harness bound and keeps (`--socket-fd`, so a
/// restart serves the same socket and connections made meanwhile wait in its backlog);
/// `hub relay` binds port 0 itself and says which port it got, and binds that port again when
/// restarted.
#[derive(Debug)]
pub struct RelayProcess {
    kind: RelayKind,
    /// 0 until `hub relay` has said which port it got.
    port: u16,
    /// workerd's listening socket, kept open across restarts.
    listener: Option<TcpListener>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    allowed_clusters: Option<String>,
    /// More arguments for `hub relay`.
    extra_args: Vec<String>,
    /// The open-file soft limit `hub relay` is started with (`ulimit -Sn`), if set.
    soft_open_files: Option<u64>,
    /// workerd only: the socket of the JavaScript forwarder served beside the relay
    /// ([`RelayProcess::start_workerd_with_js_forwarder`]).
    js_forwarder: Option<TcpListener>,
}

impl RelayProcess {
    /// Starts a relay of `kind` on a free port and waits until it answers.
    pub fn start(kind: RelayKind) -> Self {
        Self::start_serving(kind, None)
    }

    /// `hub relay` with extra command-line arguments.
    pub fn start_native_with(args: &[&str]) -> Self {
        let mut relay = Self::native(args);
        relay.spawn();
        relay
    }

    /// `hub relay` with extra arguments, started under an open-file soft limit of `soft` (as a
    /// service manager or a login shell might start it).
    pub fn start_native_limited(soft: u64, args: &[&str]) -> Self {
        let mut relay = Self::native(args);
        relay.soft_open_files = Some(soft);
        relay.spawn();
        relay
    }

    /// `hub relay` with extra arguments, not started yet.
    fn native(args: &[&str]) -> Self {
        let mut relay = Self::new(RelayKind::Native, None);
        relay.extra_args = args.iter().map(|a| (*a).to_owned()).collect();
        relay
    }

    /// The Worker in workerd and, in the same workerd process on a port of its own, the minimal
    /// JavaScript Durable Object forwarder of `relay-worker/bench/js-forwarder.mjs` (the anchor
    /// the Worker's CPU cost is measured against).
    pub fn start_workerd_with_js_forwarder() -> Self {
        let mut relay = Self::new(RelayKind::Workerd, None);
        relay.js_forwarder = Some(TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0"));
        relay.write_workerd_config();
        relay.spawn();
        relay
    }

    /// [`RelayProcess::start`], serving only `allowed_clusters` (comma-separated) if given.
    pub fn start_serving(kind: RelayKind, allowed_clusters: Option<String>) -> Self {
        let mut relay = Self::new(kind, allowed_clusters);
        relay.spawn();
        relay
    }

    fn new(kind: RelayKind, allowed_clusters: Option<String>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut relay = RelayProcess {
            kind,
            port: 0,
            listener: None,
            dir,
            child: None,
            allowed_clusters,
            extra_args: Vec::new(),
            soft_open_files: None,
            js_forwarder: None,
        };
        if kind == RelayKind::Workerd {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
            relay.port = listener.local_addr().expect("local addr").port();
            relay.listener = Some(listener);
            relay.write_workerd_config();
        }
        relay
    }

    /// The relay process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The port it serves on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT` of the JavaScript forwarder, if this workerd serves one.
    pub fn js_forwarder_url(&self) -> Option<String> {
        let port = self.js_forwarder.as_ref()?.local_addr().ok()?.port();
        Some(format!("http://127.0.0.1:{port}"))
    }

    /// Kills the process at once (no goodbye to the hubs).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the relay again on the same port, with the same storage.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// What the relay printed so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("relay.log")).unwrap_or_default()
    }

    /// workerd only: every key the Durable Objects keep in their storage, across all objects
    /// (read from the SQLite files of the local disk storage).
    pub fn stored_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let Ok(dirs) = std::fs::read_dir(self.dir.path().join("do-storage")) else {
            return keys;
        };
        let mut files = Vec::new();
        for entry in dirs.flatten() {
            match std::fs::read_dir(entry.path()) {
                Ok(inner) => files.extend(inner.flatten().map(|e| e.path())),
                Err(_) => files.push(entry.path()),
            }
        }
        for file in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "sqlite"))
        {
            let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY;
            let Ok(db) = rusqlite::Connection::open_with_flags(file, flags) else {
                continue;
            };
            let Ok(mut stmt) = db.prepare("SELECT key FROM _cf_KV") else {
                continue;
            };
            let found: Vec<String> = match stmt.query_map([], |r| r.get::<_, String>(0)) {
                Ok(rows) => rows.flatten().collect(),
                Err(_) => Vec::new(),
            };
            keys.extend(found);
        }
        keys
    }

    fn write_workerd_config(&self) {
        let build = repo_root().join("relay-worker/build");
        for file in ["index.js", "index_bg.wasm"] {
            let src = build.join(file);
            assert!(
                src.exists(),
                "{} is missing: build the Worker with scripts/build-worker (scripts/test does)",
                src.display()
            );
            std::fs::copy(&src, self.dir.path().join(file)).expect("copy worker module");
        }
        std::fs::create_dir_all(self.dir.path().join("do-storage")).expect("storage dir");
        let (forwarder, forwarder_socket) = if self.js_forwarder.is_some() {
            let js = repo_root().join("relay-worker/bench/js-forwarder.mjs");
            std::fs::copy(&js, self.dir.path().join("js-forwarder.mjs")).expect("copy forwarder");
            (
                r#"
    (name = "js", worker = (
      modules = [ (name = "js-forwarder.mjs", esModule = embed "js-forwarder.mjs") ],
      compatibilityDate = "2026-11-01",
      durableObjectNamespaces = [
        (className = "JsForwarder", uniqueKey = "js-forwarder", enableSql = true),
      ],
      durableObjectStorage = (localDisk = "do-disk"),
      bindings = [ (name = "FORWARDERS", durableObjectNamespace = "JsForwarder") ],
    )),"#,
                r#", (name = "js", http = (), service = "js")"#,
            )
        } else {
            ("", "")
        };
        // The phone page, as wrangler.toml's `[assets]` binds it (when scripts/build-web built it).
        let web = repo_root().join("hub-web/build");
        let (web_service, web_binding) = if web.join("phone/index.html").exists() {
            (
                format!(
                    r#"
    (name = "web", disk = (path = "{}", writable = false)),"#,
                    web.display()
                ),
                r#", (name = "ASSETS", service = "web")"#,
            )
        } else {
            (String::new(), "")
        };
        let config = format!(
            r#"using Workerd = import "/workerd/workerd.capnp";
const config :Workerd.Config = (
  services = [
    (name = "main", worker = .relay),
    (name = "do-disk", disk = (path = "{storage}", writable = true)),{web_service}{forwarder}
  ],
  sockets = [ (name = "http", http = (), service = "main"){forwarder_socket} ],
);
const relay :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed "index.js"),
    (name = "index_bg.wasm", wasm = embed "index_bg.wasm"),
  ],
  compatibilityDate = "2026-11-01",
  durableObjectNamespaces = [
    (className = "RelayRoom", uniqueKey = "hub-relay-rooms", enableSql = true),
  ],
  durableObjectStorage = (localDisk = "do-disk"),
  bindings = [ (name = "ROOMS", durableObjectNamespace = "RelayRoom"){allowed}{web_binding} ],
);
"#,
            storage = self.dir.path().join("do-storage").display(),
            allowed = self
                .allowed_clusters
                .as_ref()
                .map(|list| format!(r#", (name = "ALLOWED_CLUSTERS", text = "{list}")"#))
                .unwrap_or_default(),
        );
        std::fs::write(self.dir.path().join("relay.capnp"), config).expect("write capnp");
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("relay.log"))
            .expect("relay log");
        let mut cmd = match self.kind {
            RelayKind::Workerd => {
                let workerd = repo_root().join("node_modules/.bin/workerd");
                assert!(
                    workerd.exists(),
                    "{} is missing: run scripts/setup",
                    workerd.display()
                );
                let listener = self.listener.as_ref().expect("workerd's socket");
                let mut c = Command::new(workerd);
                c.arg("serve")
                    .arg("relay.capnp")
                    .current_dir(self.dir.path());
                let mut fds = Vec::new();
                let sockets = [("http", Some(listener)), ("js", self.js_forwarder.as_ref())];
                for (name, listener) in sockets {
                    let Some(listener) = listener else { continue };
                    let child_fd = 3 + fds.len() as i32;
                    c.arg("--socket-fd").arg(format!("{name}={child_fd}"));
                    let dup = listener.try_clone().expect("dup socket");
                    fds.push(command_fds::FdMapping {
                        parent_fd: std::os::fd::OwnedFd::from(dup),
                        child_fd,
                    });
                }
                command_fds::CommandFdExt::fd_mappings(&mut c, fds).expect("fd mapping");
                c
            }
            RelayKind::Native => {
                let mut c = match self.soft_open_files {
                    // The shell sets the limit, then becomes the relay (same process id).
                    Some(soft) => {
                        let mut c = Command::new("sh");
                        c.arg("-c")
                            .arg(format!("ulimit -Sn {soft} && exec \"$0\" \"$@\""))
                            .arg(hub_bin());
                        c
                    }
                    None => Command::new(hub_bin()),
                };
                // Port 0 the first time; the same port again on a restart.
                c.args(["relay", "--listen", &format!("127.0.0.1:{}", self.port)])
                    .arg("--state-dir")
                    .arg(self.dir.path().join("relay-state"))
                    .env("RUST_LOG", "warn");
                if let Some(list) = &self.allowed_clusters {
                    c.arg("--allowed-clusters").arg(list);
                }
                c.args(&self.extra_args);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("start relay");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.port == 0 {
                // `hub relay` prints `listening on ADDR` once it has bound.
                self.port = self
                    .log()
                    .lines()
                    .find_map(|l| l.strip_prefix("listening on "))
                    .and_then(|a| a.trim().parse::<std::net::SocketAddr>().ok())
                    .map_or(0, |a| a.port());
            }
            if self.port == 0 {
                // Not bound yet.
            } else if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
                let mut resp = String::new();
                let _ = s.read_to_string(&mut resp);
                if resp.starts_with("HTTP/1.1 200") {
                    return;
                }
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("relay exited with {status}:\n{}", self.log());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("relay not ready on port {}:\n{}", self.port, self.log());
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub mod browser;
pub mod cli;
pub mod crowd;
pub mod load;
pub mod mcp;
pub mod netns;
pub mod path;

/// A hub id made of one repeated byte, for readable tests.
pub fn hub(b: u8) -> HubId {
    HubId([b; 16])
}

/// The `i`th of many hub ids (benchmarks with thousands of hubs).
pub fn nth_hub(i: usize) -> HubId {
    let mut b = [0x4e; 16];
    b[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    HubId(b)
}

/// The current time, Unix ms.
pub use hub_client::unix_ms as now_ms;

/// A test cluster: a CA that issues hub credentials and signs revocation lists.
#[derive(Debug)]
pub struct TestCluster {
    /// The CA.
    pub ca: ClusterCa,
}

impl Default for TestCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCluster {
    /// A cluster with a fresh CA.
    pub fn new() -> Self {
        TestCluster {
            ca: ClusterCa::generate(&mut rand::rngs::OsRng),
        }
    }

    /// The cluster id.
    pub fn id(&self) -> ClusterId {
        self.ca.cluster_id()
    }

    /// Credentials for hub `b`, valid from an hour ago for a day.
    pub fn hub(&self, b: u8) -> Arc<Credentials> {
        let now = now_ms();
        self.hub_valid(b, now - 3_600_000, now + 86_400_000)
    }

    /// Credentials for hub `b` with the given validity (Unix ms).
    pub fn hub_valid(&self, b: u8, not_before_ms: u64, not_after_ms: u64) -> Arc<Credentials> {
        self.hub_with(hub(b), noise_public(b), not_before_ms, not_after_ms)
    }

    /// Credentials for any hub id (benchmarks that need more than 255 hubs), valid from an
    /// hour ago for a day.
    pub fn hub_id(&self, id: HubId) -> Arc<Credentials> {
        let now = now_ms();
        self.hub_with(id, noise_public(id.0[0]), now - 3_600_000, now + 86_400_000)
    }

    /// An admin of this cluster: hub `b` with the role `admin`, signing under its admin
    /// certificate (valid from an hour ago for a day).
    pub fn admin(&self, b: u8) -> ClusterCa {
        let now = now_ms();
        let (identity, req) = request(hub(b), noise_public(b), now - 3_600_000, now + 86_400_000);
        let req = CertificateRequest {
            roles: vec![shared_proto::trust::ADMIN_ROLE.into()],
            ..req
        };
        let der = self.ca.issue(&req, &mut rand::rngs::OsRng).expect("issue");
        let cert = shared_proto::trust::PeerCertificate::from_der(&der)
            .and_then(|c| c.verify(&self.ca.public_key(), now, None))
            .expect("an admin certificate");
        ClusterCa::admin(identity, cert, self.ca.public_key()).expect("an admin")
    }

    /// Credentials for hub `b` issued by `admin` (a chain of two), valid from an hour ago for a
    /// day.
    pub fn hub_issued_by(&self, admin: &ClusterCa, b: u8) -> Arc<Credentials> {
        let now = now_ms();
        let (identity, req) = request(hub(b), noise_public(b), now - 3_600_000, now + 86_400_000);
        let cert_der = admin.issue(&req, &mut rand::rngs::OsRng).expect("issue");
        Arc::new(Credentials {
            ca_key: self.ca.public_key(),
            cert_der,
            hub_id: hub(b),
            identity,
        })
    }

    fn hub_with(
        &self,
        id: HubId,
        noise_key: [u8; 32],
        not_before_ms: u64,
        not_after_ms: u64,
    ) -> Arc<Credentials> {
        let (identity, req) = request(id, noise_key, not_before_ms, not_after_ms);
        let cert_der = self.ca.issue(&req, &mut rand::rngs::OsRng).expect("issue");
        Arc::new(Credentials {
            ca_key: self.ca.public_key(),
            cert_der,
            hub_id: id,
            identity,
        })
    }

    /// A signed revocation list at `version` revoking `hubs` by certificate fingerprint.
    pub fn revocations(&self, version: u64, hubs: &[&Credentials]) -> Vec<u8> {
        RevocationList {
            version,
            issued_at_ms: now_ms(),
            entries: hubs
                .iter()
                .map(|c| Revocation {
                    fingerprint: fingerprint(&c.cert_der),
                    key_hash: [0; 32],
                    revoked_at_ms: now_ms(),
                    reason: "test".into(),
                })
                .collect(),
        }
        .sign(&self.ca)
        .expect("sign")
    }
}

/// A fresh identity key and a certificate request for hub `id` (agent_dispatch, no roles).
fn request(
    id: HubId,
    noise_key: [u8; 32],
    not_before_ms: u64,
    not_after_ms: u64,
) -> (SigningKey, CertificateRequest) {
    let identity = SigningKey::generate(&mut rand::rngs::OsRng);
    let req = CertificateRequest {
        hub_id: id,
        name: format!("hub {id}"),
        trust: TrustLevel::AgentDispatch,
        roles: vec![],
        identity_key: identity.verifying_key(),
        noise_key,
        not_before_ms,
        not_after_ms,
    };
    (identity, req)
}

/// Relay-client settings for tests: quick reconnects.
pub fn test_config(relay: &RelayProcess, creds: Arc<Credentials>) -> RelayConfig {
    let mut config = RelayConfig::new(relay.url(), creds);
    config.backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
    config
}

/// Connects a hub and waits for its welcome; returns the client and the hubs it saw online.
pub async fn join(relay: &RelayProcess, creds: Arc<Credentials>) -> (RelayClient, Vec<HubId>) {
    join_with(test_config(relay, creds)).await
}

/// [`join`] with explicit settings.
pub async fn join_with(config: RelayConfig) -> (RelayClient, Vec<HubId>) {
    let mut client = RelayClient::spawn(config).expect("valid config");
    let event = expect_event(&mut client, "welcome", |e| {
        matches!(e, RelayEvent::Connected { .. })
    })
    .await;
    let RelayEvent::Connected { online } = event else {
        unreachable!()
    };
    (client, online)
}

/// A bare WebSocket to a relay, as [`lean_client`] gives.
pub type LeanSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A bare WebSocket to the relay at `relay_url`, logged in as hub `b` of `cluster` and welcomed:
/// the relay protocol with nothing of the hub's client (no tasks, no channels), the floor the
/// benchmarks measure `RelayClient` against.
pub async fn lean_client(relay_url: &str, cluster: &TestCluster, b: u8) -> LeanSocket {
    use futures_util::{SinkExt, StreamExt};
    use shared_proto::relay::frame::{frames, Frame};
    use tokio_tungstenite::tungstenite::Message;
    let creds = cluster.hub(b);
    let url =
        hub_client::transport::relay::connect_url(relay_url, cluster.id().as_str(), &creds.hub_id)
            .expect("connect url");
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
        .await
        .expect("connect to the relay");
    let login = creds.login(now_ms(), &mut rand::rngs::OsRng);
    let hello = Frame::Hello(creds.hello(&login))
        .to_message()
        .expect("hello");
    ws.send(Message::Binary(hello.into()))
        .await
        .expect("send hello");
    while let Some(m) = ws.next().await {
        if let Message::Binary(m) = m.expect("read welcome") {
            if frames(&m).any(|f| matches!(f, Ok(Frame::Welcome { .. }))) {
                return ws;
            }
        }
    }
    panic!("the relay closed before welcoming hub {b}");
}

/// Waits up to 15 s for an event matching `pred`, skipping others; panics otherwise.
pub async fn expect_event(
    client: &mut RelayClient,
    what: &str,
    pred: impl Fn(&RelayEvent) -> bool,
) -> RelayEvent {
    expect_event_within(client, what, Duration::from_secs(15), pred).await
}

/// [`expect_event`] with a custom limit.
pub async fn expect_event_within(
    client: &mut RelayClient,
    what: &str,
    limit: Duration,
    pred: impl Fn(&RelayEvent) -> bool,
) -> RelayEvent {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(limit, async {
        loop {
            match client.next_event().await {
                Some(e) if pred(&e) => return Some(e),
                Some(e) => seen.push(e),
                None => return None,
            }
        }
    })
    .await;
    match found {
        Ok(Some(e)) => e,
        Ok(None) => panic!("client stopped while waiting for {what}; saw {seen:?}"),
        Err(_) => panic!("no {what} within {limit:?}; saw {seen:?}"),
    }
}

/// Waits for a message from `from` and returns its payload.
pub async fn expect_message(client: &mut RelayClient, from: HubId) -> Vec<u8> {
    match expect_event(
        client,
        "message",
        |e| matches!(e, RelayEvent::Message { from: f, .. } if *f == from),
    )
    .await
    {
        RelayEvent::Message { payload, .. } => payload,
        _ => unreachable!(),
    }
}

/// A WebSocket proxy in front of a relay that records every message in both directions: what
/// the relay receives and sends, exactly (WebSocket masking undone), so a test can inspect it.
#[derive(Debug)]
pub struct TapProxy {
    port: u16,
    recorded: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TapProxy {
    /// Listens on a free port and forwards each WebSocket to the same path on `relay`.
    pub async fn start(relay: &RelayProcess) -> Self {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let recorded = Arc::new(std::sync::Mutex::new(Vec::new()));
        let upstream = relay.url().replace("http://", "ws://");
        let rec = recorded.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let rec = rec.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let mut path = String::new();
                    let capture = |req: &Request, resp: Response| {
                        path = req.uri().to_string();
                        Ok(resp)
                    };
                    let Ok(down) = tokio_tungstenite::accept_hdr_async(tcp, capture).await else {
                        return;
                    };
                    let Ok((up, _)) =
                        tokio_tungstenite::connect_async(format!("{upstream}{path}")).await
                    else {
                        return;
                    };
                    let (down_tx, down_rx) = down.split();
                    let (up_tx, up_rx) = up.split();
                    let to_relay = pump(down_rx, up_tx, rec.clone());
                    let to_hub = pump(up_rx, down_tx, rec);
                    tokio::join!(to_relay, to_hub);
                });
            }
        });
        TapProxy {
            port,
            recorded,
            task,
        }
    }

    /// The proxy's URL, to give hubs instead of the relay's.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every binary message seen so far, both directions.
    pub fn recorded(&self) -> Vec<Vec<u8>> {
        self.recorded.lock().expect("lock").clone()
    }
}

impl Drop for TapProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards WebSocket messages from `rx` to `tx`, recording binary ones, until either side ends.
async fn pump<R, T>(mut rx: R, mut tx: T, rec: Arc<std::sync::Mutex<Vec<Vec<u8>>>>)
where
    R: futures_util::Stream<
            Item = Result<
                tokio_tungstenite::tungstenite::Message,
                tokio_tungstenite::tungstenite::Error,
            >,
        > + Unpin,
    T: futures_util::Sink<tokio_tungstenite::tungstenite::Message> + Unpin,
{
    use futures_util::{SinkExt, StreamExt};
    while let Some(Ok(m)) = rx.next().await {
        if let tokio_tungstenite::tungstenite::Message::Binary(b) = &m {
            rec.lock().expect("lock").push(b.to_vec());
        }
        if tx.send(m).await.is_err() {
            break;
        }
    }
}

/// The X25519 public key of hub `b`'s Noise static secret (`[b; 32]`).
fn noise_public(b: u8) -> [u8; 32] {
    x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([b; 32])).to_bytes()
}

/// A hub of `cluster` with a Noise identity, for the peer layer.
pub fn peer_hub(
    cluster: &TestCluster,
    b: u8,
) -> (
    Arc<Credentials>,
    shared_proto::session::noise::LocalIdentity,
) {
    let creds = cluster.hub(b);
    let local = shared_proto::session::noise::LocalIdentity {
        cluster: cluster.id(),
        ca_key: cluster.ca.public_key(),
        static_secret: [b; 32].into(),
        cert_der: creds.cert_der.clone(),
    };
    (creds, local)
}
