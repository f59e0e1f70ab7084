//! Driving `hub` processes: one-shot CLI commands against a home directory, and `hub run`
//! with its admin API.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::hub_bin;

/// A hub's home directory and the CLI over it.
#[derive(Debug)]
pub struct HubHome {
    /// The directory.
    pub dir: PathBuf,
    /// The `hub` binary its commands run (`hub_bin()` if none).
    bin: Option<PathBuf>,
}

impl HubHome {
    /// A home at `dir` (not created until a command writes it).
    pub fn new(dir: impl AsRef<Path>) -> Self {
        HubHome {
            dir: dir.as_ref().to_path_buf(),
            bin: None,
        }
    }

    /// A home at `dir` whose commands run the `hub` binary at `bin` (another build, to compare).
    pub fn with_bin(dir: impl AsRef<Path>, bin: impl AsRef<Path>) -> Self {
        HubHome {
            dir: dir.as_ref().to_path_buf(),
            bin: Some(bin.as_ref().to_path_buf()),
        }
    }

    /// A `hub` command with this home. `hub run` runs without its LAN path (`HUB_NO_LAN`):
    /// these hubs share one host, and what they test is the relay path (tests/lan.rs runs hubs
    /// with it, each in its own network namespace).
    pub fn command(&self) -> Command {
        let mut c = Command::new(self.bin.clone().unwrap_or_else(hub_bin));
        c.arg("--home")
            .arg(&self.dir)
            .env("HUB_NO_LAN", "1")
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .env_remove("HUB_RELAY_URL")
            .stdin(Stdio::null());
        c
    }

    /// Runs `hub ARGS` to completion.
    pub fn output(&self, args: &[&str]) -> Output {
        self.command()
            .args(args)
            .output()
            .expect("run the hub binary")
    }

    /// Runs `hub ARGS`, which must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            out.status.success(),
            "hub {args:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `hub ARGS` (which must succeed) until its stdout satisfies `pred`, for up to 15 s
    /// (what a running hub knows of others arrives over the relay); returns that stdout.
    pub fn ok_when(&self, args: &[&str], what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            let out = self.ok(args);
            if pred(&out) {
                return out;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "hub {args:?}: no {what} within 15 s; last output:\n{out}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The `call.in` entries of this hub's audit log from `peer` (hub id), once there is one
    /// (an entry is written as its call is answered, and may reach the store just after).
    pub fn calls_in(&self, peer: &str) -> Vec<Value> {
        let log = self.ok_when(
            &["audit", "list", "--json", "--peer", peer],
            "a call.in entry",
            |out| out.contains("\"call.in\""),
        );
        log.lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("a JSON line"))
            .filter(|e| e["kind"] == "call.in")
            .collect()
    }

    /// A founder `desk` in `dir` of a new cluster on `relay_url`, with app `app` (`command`)
    /// shared with the cluster, running.
    pub fn founder_sharing(
        dir: &Path,
        relay_url: &str,
        app: &str,
        command: &str,
    ) -> (HubHome, RunningHub) {
        let desk = HubHome::new(dir.join("desk"));
        desk.create_cluster("desk", relay_url);
        desk.ok(&["apps", "add", app, "--command", command]);
        desk.ok(&["apps", "share", app, "--cluster"]);
        let running = desk.run();
        (desk, running)
    }

    /// Runs `hub ARGS`, which must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.output(args);
        assert!(
            !out.status.success(),
            "hub {args:?} succeeded but should have failed:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `hub cluster create --name NAME --relay URL`: this home founds a cluster.
    pub fn create_cluster(&self, name: &str, relay_url: &str) -> String {
        let out = self.ok(&["cluster", "create", "--name", name, "--relay", relay_url]);
        assert!(out.contains("created cluster"), "{out}");
        out
    }

    /// This hub's id.
    pub fn id(&self) -> String {
        self.ok(&["id"]).trim().to_owned()
    }

    /// Its store, opened behind the hub's back (to tamper with it).
    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.dir.join("hub.db")).expect("the hub's store opens")
    }

    /// Rewrites the reason of the first audit entry of `kind` behind the hub's back, without
    /// its MAC; returns the entry's sequence number.
    pub fn rewrite_audit_reason(&self, kind: &str, reason: &str) -> i64 {
        let db = self.db();
        let seq: i64 = db
            .query_row(
                "SELECT seq FROM audit_log WHERE kind = ?1 ORDER BY seq LIMIT 1",
                [kind],
                |r| r.get(0),
            )
            .expect("an audit entry of that kind");
        db.execute(
            "UPDATE audit_log SET reason = ?2 WHERE seq = ?1",
            rusqlite::params![seq, reason],
        )
        .expect("the entry rewritten");
        seq
    }

    /// Starts `hub run` on a free port and waits until its API answers (and, for a member,
    /// until it is connected to the relay).
    pub fn run(&self) -> RunningHub {
        self.run_with(&[])
    }

    /// [`HubHome::run`] with more arguments for `hub run`.
    pub fn run_with(&self, args: &[&str]) -> RunningHub {
        let mut child = self
            .command()
            .args(["run", "--api-listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.dir.with_extension("log"))
                    .expect("run log"),
            )
            .spawn()
            .expect("start hub run");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the API address");
        let base = line
            .trim()
            .strip_prefix("admin API on ")
            .unwrap_or_else(|| panic!("unexpected first line from hub run: {line:?}"))
            .to_owned();
        let hub = RunningHub {
            child,
            base,
            log: self.dir.with_extension("log"),
            cli_token: self.dir.join("cli.token"),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(status) = hub.get_json("/api/status", Some(&hub.cli_token())) {
                if status["joined"] == false || status["relay"]["connected"] == true {
                    return hub;
                }
            }
            assert!(
                Instant::now() < deadline,
                "hub run did not come up:\n{}",
                hub.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A `hub run` process; killed on drop.
#[derive(Debug)]
pub struct RunningHub {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    log: PathBuf,
    cli_token: PathBuf,
}

/// An HTTP answer: status and JSON body (`Null` if the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    /// The status code.
    pub status: u16,
    /// The body.
    pub json: Value,
}

impl RunningHub {
    /// The admin token `hub run` minted for the local CLI.
    pub fn cli_token(&self) -> String {
        std::fs::read_to_string(&self.cli_token)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A request to the API.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> Answer {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        let resp = req.send().expect("the API answers");
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        Answer {
            status,
            json: serde_json::from_str(&text).unwrap_or(Value::Null),
        }
    }

    fn get_json(&self, path: &str, token: Option<&str>) -> Result<Value, reqwest::Error> {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let mut req = client.get(format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()?.error_for_status()?.json()
    }

    /// Waits (up to 20 s) for the process to exit by itself; returns whether it succeeded.
    pub fn wait_exit(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            assert!(
                Instant::now() < deadline,
                "hub run did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal (`STOP`, `CONT`, `TERM`, `KILL`) to the process.
    pub fn signal(&self, name: &str) {
        signal(self.child.id(), name);
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Bytes received but not yet read by process `pid` on its TCP connections to port `port` of
/// 127.0.0.1 (from `/proc`): how a test sees that a message has reached a stopped process.
pub fn unread_bytes(pid: u32, port: u16) -> u64 {
    let mut inodes = std::collections::HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
            {
                inodes.insert(inode.to_owned());
            }
        }
    }
    let remote = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (rem, queues, inode) = (f.get(2)?, f.get(4)?, f.get(9)?);
            if *rem != remote || !inodes.contains(*inode) {
                return None;
            }
            u64::from_str_radix(queues.split(':').nth(1)?, 16).ok()
        })
        .sum()
}

/// Waits (up to 20 s) until process `pid` has more unread bytes from `port` than `before`.
pub fn wait_for_unread_bytes(pid: u32, port: u16, before: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while unread_bytes(pid, port) <= before {
        assert!(
            Instant::now() < deadline,
            "nothing reached process {pid} from port {port} within 20 s"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends signal `name` to `pid` with kill(1).
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill -{name} {pid}");
}

impl Drop for RunningHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
