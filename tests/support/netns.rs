//! Hubs in network namespaces on a virtual bridge, the relay in its own namespace (root only):
//! what the LAN test and the LAN benchmark run on.
//!
//! Topology: hubs `a` and `b` (10.202.0.1 and .2 on `lan0`), joined by bridge `br0` in
//! namespace `l`; the relay in namespace `r` at 10.201.0.1, which each hub reaches over its own
//! point-to-point link (`wan0`), so the relay's interfaces count exactly what goes through it.
//!
//! Namespaces are named `hrt{pid}{a,b,l,r}`; a run deletes them when it ends, and the next run
//! deletes those of runs that were killed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where the relay listens, in its namespace.
pub const RELAY: &str = "10.201.0.1:7790";

/// The namespaces of one test run; deleted (with whatever runs in them) on drop.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    /// What runs in the namespaces, with the namespace each runs in.
    children: Vec<(String, Child)>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(args: &[&str]) {
    if let Err(e) = ip(args) {
        panic!("{e}");
    }
}

impl Net {
    /// The namespace called `name` (a, b: hubs; l: the bridge; r: the relay).
    pub fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Creates hubs `a` and `b` (LAN 10.202.0.1 and .2 on bridge `br0` in `l`) and the relay
    /// namespace `r` (10.201.0.1, reached by each hub over its own point-to-point link).
    pub fn create() -> Result<Net, String> {
        sweep_stale();
        let prefix = format!("hrt{}", std::process::id());
        let net = Net {
            prefix,
            children: Vec::new(),
        };
        for n in ["a", "b", "l", "r"] {
            ip(&["netns", "add", &net.ns(n)])?;
        }
        let (l, r) = (net.ns("l"), net.ns("r"));
        must(&["-n", &l, "link", "add", "br0", "type", "bridge"]);
        must(&["-n", &l, "link", "set", "br0", "up"]);
        must(&["-n", &r, "link", "set", "lo", "up"]);
        must(&["-n", &r, "addr", "add", "10.201.0.1/32", "dev", "lo"]);
        for (i, h) in ["a", "b"].into_iter().enumerate() {
            let ns = net.ns(h);
            let port = format!("p{h}");
            let wan = format!("w{h}");
            let k = i + 1;
            must(&["-n", &ns, "link", "set", "lo", "up"]);
            must(&[
                "-n", &ns, "link", "add", "lan0", "type", "veth", "peer", "name", &port, "netns",
                &l,
            ]);
            must(&["-n", &l, "link", "set", &port, "master", "br0"]);
            must(&["-n", &l, "link", "set", &port, "up"]);
            must(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.202.0.{k}/24"),
                "dev",
                "lan0",
            ]);
            must(&["-n", &ns, "link", "set", "lan0", "up"]);
            must(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "lan0"]);
            must(&[
                "-n", &ns, "link", "add", "wan0", "type", "veth", "peer", "name", &wan, "netns", &r,
            ]);
            must(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.201.{k}.2/30"),
                "dev",
                "wan0",
            ]);
            must(&[
                "-n",
                &r,
                "addr",
                "add",
                &format!("10.201.{k}.1/30"),
                "dev",
                &wan,
            ]);
            must(&["-n", &ns, "link", "set", "wan0", "up"]);
            must(&["-n", &r, "link", "set", &wan, "up"]);
            must(&[
                "-n",
                &ns,
                "route",
                "add",
                "10.201.0.1/32",
                "via",
                &format!("10.201.{k}.1"),
            ]);
        }
        Ok(net)
    }

    /// Starts `program ARGS` in namespace `ns`, output to `log`; stopped on drop.
    pub fn spawn(&mut self, ns: &str, log: &Path, program: &Path, args: &[&str]) {
        let log = std::fs::File::create(log).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns)])
            .arg(program)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("ip netns exec");
        self.children.push((ns.to_owned(), child));
    }

    /// Stops what runs in namespace `ns` (a hub, to start it again with other arguments).
    pub fn stop(&mut self, ns: &str) {
        for (_, c) in self.children.iter_mut().filter(|(n, _)| n == ns) {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.children.retain(|(n, _)| n != ns);
    }

    /// Starts `hub run ARGS` (LAN path on unless `args` say `--no-lan`) with home `dir` in
    /// namespace `ns`; its log beside it.
    pub fn run_hub(&mut self, ns: &str, dir: &Path, args: &[&str]) {
        let home = dir.to_string_lossy().into_owned();
        let mut all = vec!["--home", &home, "run", "--api-listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        self.spawn(ns, &dir.with_extension("log"), &crate::hub_bin(), &all);
    }

    /// Runs `ip ARGS`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        must(args);
    }

    /// Bytes the relay's namespace received and sent on the hubs' links so far.
    pub fn relay_bytes(&self) -> u64 {
        let out = Command::new("ip")
            .args(["-n", &self.ns("r"), "-s", "-j", "link", "show"])
            .output()
            .expect("ip link show");
        let links: Value = serde_json::from_slice(&out.stdout).expect("ip -j");
        links
            .as_array()
            .expect("links")
            .iter()
            .filter(|l| l["ifname"].as_str().is_some_and(|n| n.starts_with('w')))
            .map(|l| {
                l["stats64"]["rx"]["bytes"].as_u64().unwrap_or(0)
                    + l["stats64"]["tx"]["bytes"].as_u64().unwrap_or(0)
            })
            .sum()
    }

    /// Cuts (`false`) or restores the LAN: the bridge stops forwarding, silently, as a
    /// switch that lost power.
    pub fn set_bridge(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        must(&["-n", &self.ns("l"), "link", "set", "br0", state]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in ["a", "b", "l", "r"] {
            let _ = ip(&["netns", "del", &self.ns(n)]);
        }
    }
}

/// Deletes the namespaces of earlier runs whose process is gone (a run killed with SIGKILL
/// cannot clean up after itself).
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("hrt") else {
            continue;
        };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !pid.is_empty() && !Path::new(&format!("/proc/{pid}")).exists() {
            // What still runs in it (a run stopped by Ctrl-C leaves its hubs) is stopped first.
            if let Ok(pids) = Command::new("ip").args(["netns", "pids", name]).output() {
                for p in String::from_utf8_lossy(&pids.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", p]).status();
                }
            }
            let _ = ip(&["netns", "del", name]);
        }
    }
}

/// A hub home used inside namespace `ns`.
#[derive(Debug, Clone)]
pub struct NsHub {
    /// Its namespace.
    pub ns: String,
    /// Its home directory.
    pub dir: PathBuf,
}

impl NsHub {
    /// Runs `hub --home DIR ARGS` in the namespace, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(crate::hub_bin())
            .arg("--home")
            .arg(&self.dir)
            .args(args)
            .env_remove("HUB_NO_LAN")
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec hub");
        assert!(
            out.status.success(),
            "hub {args:?} in {} failed:\n{}{}",
            self.ns,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// [`NsHub::ok`] in a thread of its own: a command that waits (a call) while the test changes
    /// the network.
    pub fn ok_in_thread(&self, args: &[&str]) -> std::thread::JoinHandle<String> {
        let hub = self.clone();
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        std::thread::spawn(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            hub.ok(&args)
        })
    }

    /// A call of `b`'s test app tool `sleep` for `ms` (at most 45 s), in a thread of its own.
    pub fn call_sleep_in_thread(&self, ms: u64) -> std::thread::JoinHandle<String> {
        let args = format!("{{\"ms\":{ms}}}");
        self.ok_in_thread(&[
            "apps",
            "call",
            "b",
            "tools",
            "sleep",
            "--args",
            &args,
            "--timeout",
            "45s",
        ])
    }

    /// Runs `hub ARGS` until its stdout satisfies `pred` (up to `limit`).
    pub fn ok_when(
        &self,
        args: &[&str],
        limit: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let out = self.ok(args);
            if pred(&out) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {limit:?}; last:\n{out}\nlog:\n{}",
                self.ns,
                std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The admin API's answer to `GET path`, asked from inside the namespace.
    pub fn api(&self, path: &str) -> Value {
        let url = std::fs::read_to_string(self.dir.join("api.url")).expect("api.url");
        let token = std::fs::read_to_string(self.dir.join("cli.token")).expect("cli.token");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "curl", "-fsS", "-H"])
            .arg(format!("authorization: Bearer {}", token.trim()))
            .arg(format!("{}{path}", url.trim()))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// The path to `peer` as `hub peers` shows it.
    pub fn path_to(&self, peer: &str) -> String {
        let out = self.ok(&["peers"]);
        out.lines()
            .find(|l| l.starts_with(peer))
            .and_then(|l| l.split_whitespace().nth(3))
            .unwrap_or_default()
            .to_owned()
    }
}

/// Whether `hub status` says `n` hubs are linked on the LAN.
pub fn linked(n: usize) -> impl Fn(&str) -> bool {
    move |out: &str| out.contains(&format!(", {n} linked"))
}

/// The relay, as the hubs reach it.
pub const RELAY_URL: &str = "ws://10.201.0.1:7790";

/// A running two-hub cluster on a [`Net`]: `a` founded it, `b` joined and shares app `tools`
/// (the test app) with the cluster. Both run with their LAN path on.
#[derive(Debug)]
pub struct TwoHubs {
    /// The namespaces and processes (dropped first: the hubs stop before their homes go).
    pub net: Net,
    /// The founder.
    pub a: NsHub,
    /// The member.
    pub b: NsHub,
    /// `b`'s hub id.
    pub b_id: String,
    _dir: tempfile::TempDir,
}

impl TwoHubs {
    /// Creates the namespaces, starts the relay and both hubs; `Err` if namespaces cannot be
    /// created here. `test_app` is the test MCP server's binary.
    pub fn start(test_app: &str) -> Result<TwoHubs, String> {
        Self::start_with(test_app, &[])
    }

    /// [`TwoHubs::start`], with `hub_args` for both `hub run`s (`--no-lan`: by the relay only).
    pub fn start_with(test_app: &str, hub_args: &[&str]) -> Result<TwoHubs, String> {
        let mut net = Net::create()?;
        let dir = tempfile::tempdir().expect("tempdir");
        let hub_bin = crate::hub_bin();
        net.spawn(
            "r",
            &dir.path().join("relay.log"),
            &hub_bin,
            &["relay", "--listen", RELAY],
        );
        let a = NsHub {
            ns: net.ns("a"),
            dir: dir.path().join("a"),
        };
        let b = NsHub {
            ns: net.ns("b"),
            dir: dir.path().join("b"),
        };
        a.ok(&["cluster", "create", "--name", "a", "--relay", RELAY_URL]);
        net.run_hub("a", &a.dir, hub_args);
        a.ok_when(
            &["status"],
            Duration::from_secs(20),
            "relay connection",
            |s| s.contains("connected"),
        );
        let token = a.ok(&["invite"]).trim().to_owned();
        b.ok(&["join", &token, "--name", "b"]);
        b.ok(&["apps", "add", "tools", "--command", test_app]);
        b.ok(&["apps", "share", "tools", "--cluster"]);
        net.run_hub("b", &b.dir, hub_args);
        let b_id = b.ok(&["id"]).trim().to_owned();
        Ok(TwoHubs {
            net,
            a,
            b,
            b_id,
            _dir: dir,
        })
    }
}
