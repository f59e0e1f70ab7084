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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{cpu_seconds, env_number, hub, lean_client, LeanSocket, RelayProcess, TestCluster};
use futures_util::{SinkExt, StreamExt};
use shared_proto::relay::frame::{frames, Frame};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

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
    frames: u64,
    seconds: f64,
    cpu: f64,
    p50: Duration,
    p99: Duration,
}

impl Figures {
    fn per_second(&self) -> f64 {
        self.frames as f64 / self.seconds
    }

    fn cpu_us_per_frame(&self) -> f64 {
        self.cpu * 1e6 / self.frames as f64
    }

    fn add(&mut self, other: &Figures) {
        self.frames += other.frames;
        self.seconds += other.seconds;
        self.cpu += other.cpu;
    }
}

/// Two sockets in a fresh room of `relay`, and the message A sends (a `Send` to B; the JS
/// forwarder passes it on unchanged, the Rust room as a `Recv`).
async fn pair(
    server: &RelayProcess,
    relay: Relay,
    payload: usize,
) -> (LeanSocket, LeanSocket, Vec<u8>) {
    let message = Frame::Send {
        dst: hub(2),
        payload: &vec![7u8; payload],
    }
    .to_message()
    .unwrap();
    match relay {
        Relay::Rust => {
            let cluster = TestCluster::new();
            let a = lean_client(&server.url(), &cluster, 1).await;
            let b = lean_client(&server.url(), &cluster, 2).await;
            (a, b, message)
        }
        Relay::Js => {
            let url = server
                .js_forwarder_url()
                .expect("workerd serves the JS forwarder");
            let room = format!(
                "{}/room/{}",
                url.replace("http", "ws"),
                TestCluster::new().id()
            );
            let connect = || async {
                tokio_tungstenite::connect_async_with_config(room.as_str(), None, true)
                    .await
                    .expect("connect to the JS forwarder")
                    .0
            };
            let a = connect().await;
            let b = connect().await;
            (a, b, message)
        }
    }
}

/// Whether `m` is the relayed frame (not presence or another small frame of the room's).
fn is_payload(m: &Message, payload: usize) -> bool {
    matches!(m, Message::Binary(b) if b.len() >= payload)
}

async fn throughput(server: &RelayProcess, relay: Relay, total: u64) -> Figures {
    let per_pair = total / PAIRS as u64;
    let mut pairs = Vec::new();
    for _ in 0..PAIRS {
        pairs.push(pair(server, relay, PAYLOAD).await);
    }
    let pid = server.pid().expect("workerd runs");
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut a, mut b, message) in pairs {
        let received = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Notify::new());
        let (r, p) = (received.clone(), progress.clone());
        let reader = tokio::spawn(async move {
            while let Some(m) = b.next().await {
                if is_payload(&m.expect("read"), PAYLOAD) {
                    let n = r.fetch_add(1, Ordering::Relaxed) + 1;
                    p.notify_one();
                    if n == per_pair {
                        return b;
                    }
                }
            }
            panic!("the receiver's socket closed");
        });
        tasks.push(tokio::spawn(async move {
            for sent in 0..per_pair {
                while sent - received.load(Ordering::Relaxed) >= WINDOW {
                    progress.notified().await;
                }
                a.send(Message::Binary(message.clone().into()))
                    .await
                    .unwrap();
            }
            let b = tokio::time::timeout(Duration::from_secs(120), reader)
                .await
                .expect("every frame arrives within 120 s")
                .unwrap();
            (a, b)
        }));
    }
    let mut sockets = Vec::new();
    for task in tasks {
        sockets.push(task.await.unwrap());
    }
    let figures = Figures {
        frames: per_pair * PAIRS as u64,
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds(pid) - cpu_before,
        ..Figures::default()
    };
    for (a, b) in sockets {
        close(a).await;
        close(b).await;
    }
    figures
}

/// Closes a socket and waits for the relay's answer, so that the next measurement does not
/// pay for this one's goodbyes.
async fn close(mut ws: LeanSocket) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

/// Round trips of one frame: B sends back what it reads (for the Rust room, as a `Send` to the
/// hub it came from; for the JS forwarder, unchanged).
async fn round_trips(server: &RelayProcess, relay: Relay) -> (Duration, Duration) {
    let (mut a, mut b, message) = pair(server, relay, 32).await;
    let echo = tokio::spawn(async move {
        let mut echoed = 0;
        while echoed < ROUNDS + WARMUP_ROUNDS {
            let Some(Ok(Message::Binary(m))) = b.next().await else {
                continue;
            };
            let mut back = Vec::new();
            for f in frames(&m).flatten() {
                if let Frame::Recv { src, payload } = f {
                    Frame::Send { dst: src, payload }.encode(&mut back).unwrap();
                }
            }
            if relay == Relay::Js && m.len() >= 32 {
                back = m.to_vec();
            }
            if !back.is_empty() {
                b.send(Message::Binary(back.into())).await.unwrap();
                echoed += 1;
            }
        }
        b
    });
    let mut rtts = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS + WARMUP_ROUNDS {
        let start = Instant::now();
        a.send(Message::Binary(message.clone().into()))
            .await
            .unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), a.next())
                .await
                .expect("the frame comes back within 10 s")
                .expect("socket open")
                .expect("read");
            if is_payload(&m, 32) {
                break;
            }
        }
        if i >= WARMUP_ROUNDS {
            rtts.push(start.elapsed());
        }
    }
    close(a).await;
    close(echo.await.unwrap()).await;
    rtts.sort();
    (rtts[rtts.len() / 2], rtts[rtts.len() * 99 / 100])
}

fn print(relay: Relay, f: &Figures) {
    println!(
        "  {:<18} {:>7.0} frames/s  {:>6.1} us CPU/frame  RTT p50 {:>6.3} ms  p99 {:>6.3} ms",
        relay.name(),
        f.per_second(),
        f.cpu_us_per_frame(),
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3
    );
}

fn ratios(what: &str, rust: &Figures, js: &Figures) {
    println!(
        "  {what:<18} Rust / JS: frames/s {:.2}x  CPU/frame {:.2}x  RTT p50 {:.2}x  p99 {:.2}x",
        rust.per_second() / js.per_second(),
        rust.cpu_us_per_frame() / js.cpu_us_per_frame(),
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
        print(relay, &throughput(&server, relay, total).await);
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
            let mut f = throughput(&server, relay, total).await;
            (f.p50, f.p99) = round_trips(&server, relay).await;
            print(relay, &f);
            sums[i].add(&f);
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
