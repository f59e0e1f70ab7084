//! The Worker's CPU per forwarded message against a minimal hand-written JavaScript Durable
//! Object (`relay-worker/bench/js-forwarder.mjs`), both served by the same workerd process, driven
//! by the same lean client (bare WebSockets, `e2e::lean_client`), one WebSocket message per frame
//! (unbatched). For each relay:
//!
//! - throughput: `PAIRS` pairs of sockets, each pair in a room of its own (a cluster for the Rust
//!   room, a Durable Object for the JS one), A sends `WORKER_CPU_FRAMES` frames of 1 KiB in all
//!   to its B with at most `WINDOW` unanswered; frames/s delivered, and workerd's CPU time (from
//!   /proc, every thread) per frame;
//! - round trips: one pair, A sends a frame, B sends it back as soon as it reads it, A waits.
//!
//! The relays alternate (JS then Rust, Rust then JS, ...) `WORKER_CPU_RUNS` times in one process, and
//! the ratios Rust / JS are printed per run and over all runs. Run with `scripts/bench-worker-cpu`
//! (it builds the Worker first). `WORKER_CPU_PROFILE=rust` (or `js`) instead runs that relay's
//! throughput alone, for as long as `WORKER_CPU_FRAMES` says, after printing workerd's process
//! id: attach a profiler (`perf record -g -p PID`) to see where its time goes.
// A benchmark measures wall-clock time and panics on setup failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Duration;

use e2e::load::{self, forwarder_pair, room_pair, run_pairs, Pair, Throughput};
use e2e::{env_number, RelayProcess};

/// Pairs sending at once. Each A stays within the room's per-member burst (8,192 frames), so
/// that no rate limit slows the Rust room: the comparison is of forwarding alone.
const PAIRS: usize = 4;
const PAYLOAD: usize = 1024;
/// Frames a sender may have on the way before it waits for its receiver.
const WINDOW: u64 = 32;
const ROUNDS: usize = 2000;
const WARMUP_ROUNDS: usize = 100;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Relay {
    Js,
    Rust,
}

impl Relay {
    fn name(self) -> &'static str {
        match self {
            Relay::Js => "JS Durable Object",
            Relay::Rust => "Rust room",
        }
    }
}

/// What one run of one relay measured.
#[derive(Default, Clone, Copy)]
struct Figures {
    load: Throughput,
    p50: Duration,
    p99: Duration,
}

/// Two sockets in a fresh room of `relay`: a cluster of the Rust room, or an object of the JS
/// forwarder (which passes A's `Send` on unchanged; the Rust room as a `Recv`).
async fn pair(server: &RelayProcess, relay: Relay, payload: usize) -> Pair {
    match relay {
        Relay::Rust => room_pair(&server.url(), payload).await,
        Relay::Js => {
            let url = server
                .js_forwarder_url()
                .expect("workerd serves the JS forwarder");
            forwarder_pair(&url, payload).await
        }
    }
}

async fn throughput(server: &RelayProcess, relay: Relay, total: u64) -> Throughput {
    let mut pairs = Vec::new();
    for _ in 0..PAIRS {
        pairs.push(pair(server, relay, PAYLOAD).await);
    }
    let pid = server.pid().expect("workerd runs");
    run_pairs(pairs, total / PAIRS as u64, WINDOW, pid).await
}

/// Round trips of one 32-byte frame (the JS forwarder passes it on unchanged, the Rust room as
/// a `Recv`); p50 and p99.
async fn round_trips(server: &RelayProcess, relay: Relay) -> (Duration, Duration) {
    let mut rtts = load::round_trips(pair(server, relay, 32).await, ROUNDS, WARMUP_ROUNDS).await;
    rtts.sort();
    (rtts[rtts.len() / 2], rtts[rtts.len() * 99 / 100])
}

fn print(relay: Relay, f: &Figures) {
    println!(
        "  {:<18} {:>7.0} frames/s  {:>6.1} us CPU/frame  RTT p50 {:>6.3} ms  p99 {:>6.3} ms",
        relay.name(),
        f.load.per_second(),
        f.load.cpu_us_per_frame(),
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3
    );
}

fn ratios(what: &str, rust: &Figures, js: &Figures) {
    println!(
        "  {what:<18} Rust / JS: frames/s {:.2}x  CPU/frame {:.2}x  RTT p50 {:.2}x  p99 {:.2}x",
        rust.load.per_second() / js.load.per_second(),
        rust.load.cpu_us_per_frame() / js.load.cpu_us_per_frame(),
        rust.p50.as_secs_f64() / js.p50.as_secs_f64(),
        rust.p99.as_secs_f64() / js.p99.as_secs_f64()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let total: u64 = env_number("WORKER_CPU_FRAMES", 20_000);
    let runs: usize = env_number("WORKER_CPU_RUNS", 6);
    let server = RelayProcess::start_workerd_with_js_forwarder();
    if let Ok(only) = std::env::var("WORKER_CPU_PROFILE") {
        let relay = match only.as_str() {
            "rust" => Relay::Rust,
            "js" => Relay::Js,
            other => panic!("WORKER_CPU_PROFILE is rust or js, not {other:?}"),
        };
        println!("workerd pid {}", server.pid().expect("workerd runs"));
        let load = throughput(&server, relay, total).await;
        print(
            relay,
            &Figures {
                load,
                ..Figures::default()
            },
        );
        return;
    }
    println!(
        "{PAIRS} pairs, {total} frames of {PAYLOAD} B per run (window {WINDOW}); \
         {ROUNDS} round trips of 32 B; one workerd process, {runs} runs"
    );
    // A first pass of each, not counted: workerd compiles the modules on first use.
    for relay in [Relay::Js, Relay::Rust] {
        throughput(&server, relay, PAIRS as u64 * 100).await;
    }
    let mut sums = [Figures::default(), Figures::default()];
    let mut p50s: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut p99s: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for run in 1..=runs {
        println!("run {run}");
        let mut figures = [Figures::default(), Figures::default()];
        // Each goes first in every other run.
        let order = if run % 2 == 1 { [0, 1] } else { [1, 0] };
        for i in order {
            let relay = [Relay::Js, Relay::Rust][i];
            let load = throughput(&server, relay, total).await;
            let (p50, p99) = round_trips(&server, relay).await;
            let f = Figures { load, p50, p99 };
            print(relay, &f);
            sums[i].load.add(&load);
            p50s[i].push(f.p50);
            p99s[i].push(f.p99);
            figures[i] = f;
        }
        ratios("this run", &figures[1], &figures[0]);
    }
    // Over all runs: frames and CPU summed, the median run's round trips.
    for i in 0..2 {
        p50s[i].sort();
        p99s[i].sort();
        sums[i].p50 = p50s[i][runs / 2];
        sums[i].p99 = p99s[i][runs / 2];
    }
    println!("all runs (round trips: the median run)");
    print(Relay::Js, &sums[0]);
    print(Relay::Rust, &sums[1]);
    ratios("all runs", &sums[1], &sums[0]);
}
