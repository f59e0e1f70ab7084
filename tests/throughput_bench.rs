//! Frames per second through `hub relay` against iroh-relay 1.4 and against a minimal forwarder,
//! each its own process on 127.0.0.1, in one run. `PAIRS` pairs of clients, each A sending 1 KiB
//! frames to its B, one frame per WebSocket message, with at most `WINDOW` not yet received:
//!
//! - `hub relay` (release): the hubs' protocol from bare sockets (`e2e::lean_client`: logged in,
//!   then `Send` frames; the relay checks, routes and rate-limits each);
//! - the floor: `min-forwarder` (tests/min_forwarder.rs), the same bare sockets and messages,
//!   forwarded unchanged to the other socket of the path;
//! - iroh-relay 1.4.1 from crates.io (`IROH_RELAY_BIN`, its own server in `--dev` mode, plain
//!   HTTP) with iroh's own client (`IROH_LOAD_BIN`, tests/iroh-load): datagrams of 1 KiB.
//!
//! Each A stays within `hub relay`'s per-member burst (8,192 frames), so that no rate limit slows
//! it: the comparison is of forwarding. Prints frames/s and the relay process's CPU per frame for
//! each, over `THROUGHPUT_RUNS` runs (default 3) of `THROUGHPUT_FRAMES` frames (default 128,000)
//! that rotate which goes first, and the ratios. Run with `scripts/bench-throughput`, which builds
//! iroh-relay and the iroh client first (without them the iroh-relay row is skipped).
// A benchmark measures wall-clock time and panics on setup failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use e2e::load::{forwarder_pair, room_pair, run_pairs, Throughput};
use e2e::{cpu_seconds, env_number, RelayKind, RelayProcess};

const PAIRS: u64 = 16;
const PAYLOAD: usize = 1024;
const WINDOW: u64 = 32;

/// A benchmark's own process, killed when dropped, with its output read line by line.
struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Spawned {
    fn start(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {cmd:?}: {e}"));
        let (tx, lines) = mpsc::channel();
        let out: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        Spawned { child, lines }
    }

    /// The rest of the first line (within 600 s) that contains `marker`.
    fn wait_for(&self, marker: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(600))
                .unwrap_or_else(|_| panic!("no line with {marker:?} within 600 s"));
            if let Some((_, rest)) = line.split_once(marker) {
                return rest.trim().to_owned();
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// iroh-relay, serving plain HTTP on a port of its own choosing, and its URL.
fn start_iroh(bin: &str, dir: &std::path::Path) -> (Spawned, String) {
    let config = dir.join("iroh-relay.toml");
    std::fs::write(
        &config,
        "enable_relay = true\nhttp_bind_addr = \"127.0.0.1:0\"\n\
         enable_quic_addr_discovery = false\nenable_metrics = false\n",
    )
    .unwrap();
    let relay = Spawned::start(
        Command::new(bin)
            .arg("--dev")
            .arg("--config-path")
            .arg(&config)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1"),
    );
    let addr = relay.wait_for("relay: serving on ");
    (relay, format!("http://{addr}"))
}

/// One run of iroh's client against iroh-relay.
fn iroh_run(load_bin: &str, url: &str, relay_pid: u32, frames: u64) -> Throughput {
    let mut load = Command::new(load_bin);
    load.arg(url)
        .arg(PAIRS.to_string())
        .arg(frames.to_string())
        .arg(PAYLOAD.to_string())
        .arg(WINDOW.to_string());
    let mut child = load
        .stdout(Stdio::piped())
        .spawn()
        .expect("start iroh-load");
    let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut line = |out: &mut std::io::Lines<BufReader<ChildStdout>>| {
        out.next()
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("iroh-load ended early: {:?}", child.wait()))
    };
    assert_eq!(line(&mut out), "ready");
    let cpu_before = cpu_seconds(relay_pid);
    let result = line(&mut out);
    let cpu = cpu_seconds(relay_pid) - cpu_before;
    let words: Vec<&str> = result.split_whitespace().collect();
    let (Some(frames), Some(seconds)) = (
        words.get(1).and_then(|w| w.parse().ok()),
        words.get(3).and_then(|w| w.parse().ok()),
    ) else {
        panic!("iroh-load said {result:?}");
    };
    assert!(child.wait().unwrap().success(), "iroh-load failed");
    Throughput {
        frames,
        seconds,
        cpu,
    }
}

fn print(name: &str, t: &Throughput) {
    println!(
        "  {name:<22} {:>8.0} frames/s  {:>6.1} us CPU/frame",
        t.per_second(),
        t.cpu_us_per_frame()
    );
}

fn ratio(what: &str, a: &Throughput, b: &Throughput, goal: &str) {
    println!(
        "  {what:<34} frames/s {:.2}x  CPU/frame {:.2}x  (goal {goal})",
        a.per_second() / b.per_second(),
        a.cpu_us_per_frame() / b.cpu_us_per_frame()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total: u64 = env_number("THROUGHPUT_FRAMES", 128_000);
    let runs: usize = env_number("THROUGHPUT_RUNS", 3);
    let per_pair = total / PAIRS;
    assert!(
        per_pair <= 8192,
        "each pair must stay within a member's burst"
    );

    let hub = RelayProcess::start(RelayKind::Native);
    let forwarder = Spawned::start(&mut Command::new(env!("CARGO_BIN_EXE_min-forwarder")));
    let forwarder_url = format!("http://{}", forwarder.wait_for("listening on "));
    let dir = tempfile::tempdir().unwrap();
    let iroh = match (
        std::env::var("IROH_RELAY_BIN"),
        std::env::var("IROH_LOAD_BIN"),
    ) {
        (Ok(relay), Ok(load)) => {
            let (process, url) = start_iroh(&relay, dir.path());
            Some((process, url, load))
        }
        _ => {
            println!("iroh-relay: skipped (IROH_RELAY_BIN and IROH_LOAD_BIN unset; scripts/bench-throughput sets them)");
            None
        }
    };
    println!(
        "{PAIRS} pairs, {total} frames of {PAYLOAD} B per run, one per message (window {WINDOW}); {runs} runs"
    );
    let names = ["hub relay", "minimal forwarder", "iroh-relay 1.4.1"];
    let mut sums = [Throughput::default(); 3];
    for run in 0..runs {
        println!("run {}", run + 1);
        for k in 0..3 {
            let i = (run + k) % 3;
            let t = match i {
                0 => {
                    let mut pairs = Vec::new();
                    for _ in 0..PAIRS {
                        pairs.push(room_pair(&hub.url(), PAYLOAD).await);
                    }
                    run_pairs(pairs, per_pair, WINDOW, hub.pid().unwrap()).await
                }
                1 => {
                    let mut pairs = Vec::new();
                    for _ in 0..PAIRS {
                        pairs.push(forwarder_pair(&forwarder_url, PAYLOAD).await);
                    }
                    run_pairs(pairs, per_pair, WINDOW, forwarder.pid()).await
                }
                _ => match &iroh {
                    Some((process, url, load)) => {
                        let (load, url, pid) = (load.clone(), url.clone(), process.pid());
                        tokio::task::spawn_blocking(move || iroh_run(&load, &url, pid, total))
                            .await
                            .unwrap()
                    }
                    None => continue,
                },
            };
            print(names[i], &t);
            sums[i].add(&t);
        }
    }
    println!("all runs");
    for i in 0..3 {
        if sums[i].frames > 0 {
            print(names[i], &sums[i]);
        }
    }
    ratio(
        "hub relay / minimal forwarder",
        &sums[0],
        &sums[1],
        ">= 0.8x frames/s",
    );
    if sums[2].frames > 0 {
        ratio(
            "hub relay / iroh-relay",
            &sums[0],
            &sums[2],
            ">= 1.5x frames/s",
        );
    }
}
