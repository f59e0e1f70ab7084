//! A flood against fair sharing, on 127.0.0.1: ten hubs (five pairs) ping each other and send
//! steady traffic, first alone (the baseline), then while an eleventh member floods a twelfth at
//! full speed, ignoring what the relay tells it and logging in again whenever it is closed.
//! Prints, per relay, the ten hubs' delivered frames per second and ping round trips (p50, p99)
//! in both runs and their ratios, and the relay process's memory. Run with `scripts/bench-flood`
//! (it builds the Worker and the release `hub` first).
//!
//! The flooder runs on its own thread at the lowest CPU priority, standing for a hub on another
//! machine: on this 2-core machine it would otherwise take a core from the relay and the ten
//! hubs whatever the relay does.
// A benchmark measures wall-clock time and panics on setup failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use e2e::{env_number, hub, join, rss_kib, RelayKind, RelayProcess, TestCluster};
use futures_util::{SinkExt, StreamExt};
use hub_client::transport::relay::connect_url;
use hub_client::RelayEvent;
use shared_proto::relay::frame::Frame;
use shared_proto::trust::login::Credentials;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

/// Pairs of hubs that ping and send.
const PAIRS: u8 = 5;
/// Steady traffic: each of the ten sends this many 1 KiB messages a second to its partner.
const STEADY_PER_S: u64 = 400;
const WARMUP: Duration = Duration::from_secs(2);

fn seconds() -> u64 {
    env_number("FLOOD_SECONDS", 10)
}

/// What the ten hubs measured.
#[derive(Default)]
struct Load {
    frames: AtomicU64,
    rtts: Mutex<Vec<Duration>>,
    measuring: AtomicBool,
    lost_pings: AtomicU64,
}

/// What the hubs of one run share: the measurements, their clock, their tasks (stopped at the
/// end of the run) and the signal to start traffic.
struct Ctx {
    load: Arc<Load>,
    epoch: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    go: tokio::sync::watch::Receiver<bool>,
}

/// One hub of a pair: answers pings, counts steady frames, records round trips; `pinger` also
/// pings its partner in a closed loop. Both send steady traffic.
async fn member(
    relay: &RelayProcess,
    creds: Arc<Credentials>,
    partner: shared_proto::HubId,
    pinger: bool,
    ctx: &mut Ctx,
) {
    let (load, epoch, go) = (ctx.load.clone(), ctx.epoch, ctx.go.clone());
    let tasks = &mut ctx.tasks;
    let (mut client, _) = join(relay, creds).await;
    let sender = client.sender();
    let (pong_tx, mut pong_rx) = mpsc::channel::<()>(1);
    let reader_load = load.clone();
    let echo = sender.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(e) = client.next_event().await {
            let RelayEvent::Message { from, mut payload } = e else {
                continue;
            };
            match payload.first() {
                Some(b'P') => {
                    payload[0] = b'Q';
                    if let Ok(permit) = echo.reserve().await {
                        let _ = permit.send(from, payload);
                    }
                }
                Some(b'Q') => {
                    let sent = u64::from_be_bytes(payload[1..9].try_into().unwrap());
                    let rtt = epoch.elapsed() - Duration::from_nanos(sent);
                    if reader_load.measuring.load(Ordering::Relaxed) {
                        reader_load.rtts.lock().unwrap().push(rtt);
                    }
                    let _ = pong_tx.try_send(());
                }
                Some(b'S') if reader_load.measuring.load(Ordering::Relaxed) => {
                    reader_load.frames.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
        }
        client.shutdown().await;
    }));
    let steady = sender.clone();
    let mut started = go.clone();
    tasks.push(tokio::spawn(async move {
        let _ = started.wait_for(|go| *go).await;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let per_tick = STEADY_PER_S / 50;
        loop {
            tick.tick().await;
            for _ in 0..per_tick {
                let mut payload = vec![0u8; 1024];
                payload[0] = b'S';
                let Ok(permit) = steady.reserve().await else {
                    return;
                };
                let _ = permit.send(partner, payload);
            }
        }
    }));
    if pinger {
        let mut started = go.clone();
        tasks.push(tokio::spawn(async move {
            let _ = started.wait_for(|go| *go).await;
            loop {
                let mut payload = vec![0u8; 32];
                payload[0] = b'P';
                let at = epoch.elapsed().as_nanos() as u64;
                payload[1..9].copy_from_slice(&at.to_be_bytes());
                let Ok(permit) = sender.reserve().await else {
                    return;
                };
                let _ = permit.send(partner, payload);
                if tokio::time::timeout(Duration::from_secs(5), pong_rx.recv())
                    .await
                    .is_err()
                {
                    load.lost_pings.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
}

/// The flooder: logs in as `creds` and sends 64 frames of 1 KiB to `target` per message as
/// fast as the socket takes them; when the relay closes it, or refuses its connect (a kept-out
/// hub gets `429`), tries again after `pause`. Runs on its own thread, at the lowest priority,
/// until `stop`. Returns the frames written, the `RateLimited` notices, the logins (`Hello`s
/// sent) and the refused connects.
fn flood(
    url: String,
    creds: Arc<Credentials>,
    target: shared_proto::HubId,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, u64, u64, u64)> {
    std::thread::spawn(move || {
        if let Ok(me) = std::fs::read_link("/proc/thread-self") {
            if let Some(tid) = me.file_name().and_then(|t| t.to_str()) {
                let _ = std::process::Command::new("renice")
                    .args(["-n", "19", "-p", tid])
                    .output();
            }
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let payload = vec![0x55u8; 1024];
            let message: Vec<u8> = (0..64)
                .flat_map(|_| {
                    Frame::Send {
                        dst: target,
                        payload: &payload,
                    }
                    .to_message()
                    .unwrap()
                })
                .collect();
            let (mut sent, mut notices, mut logins, mut refused) = (0u64, 0u64, 0u64, 0u64);
            while !stop.load(Ordering::Relaxed) {
                let Ok((ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
                    refused += 1;
                    tokio::time::sleep(pause).await;
                    continue;
                };
                let (mut sink, mut stream) = ws.split();
                let ext = creds.login(e2e::now_ms(), &mut rand::rngs::OsRng);
                let hello = Frame::Hello(creds.hello(&ext)).to_message().unwrap();
                if sink.send(Message::Binary(hello.into())).await.is_err() {
                    continue;
                }
                logins += 1;
                let reading = async {
                    let mut n = 0u64;
                    while let Some(Ok(msg)) = stream.next().await {
                        if let Message::Binary(b) = msg {
                            n += shared_proto::relay::frame::frames(&b)
                                .filter(|f| matches!(f, Ok(Frame::RateLimited { .. })))
                                .count() as u64;
                        }
                    }
                    n
                };
                let writing = async {
                    while !stop.load(Ordering::Relaxed)
                        && sink
                            .send(Message::Binary(message.clone().into()))
                            .await
                            .is_ok()
                    {
                        sent += 64;
                    }
                    let _ = sink.close().await;
                };
                let (n, ()) = tokio::join!(reading, writing);
                notices += n;
                tokio::time::sleep(pause).await;
            }
            (sent, notices, logins, refused)
        })
    })
}

struct Run {
    frames_per_s: f64,
    p50: Duration,
    p99: Duration,
    pings: usize,
    lost: u64,
    rss_start: u64,
    rss_peak: u64,
    flood: Option<(u64, u64, u64, u64)>,
}

async fn run(kind: RelayKind, flooder: Option<Duration>) -> Run {
    let relay = RelayProcess::start(kind);
    let pid = relay.pid().unwrap();
    let cluster = TestCluster::new();
    let load = Arc::new(Load::default());
    // Traffic starts once every hub is in (a ping to a hub not in yet would be lost).
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let mut ctx = Ctx {
        load: load.clone(),
        epoch: Instant::now(),
        tasks: Vec::new(),
        go,
    };
    for p in 0..PAIRS {
        let (a, b) = (10 + 2 * p, 11 + 2 * p);
        member(&relay, cluster.hub(a), hub(b), true, &mut ctx).await;
        member(&relay, cluster.hub(b), hub(a), false, &mut ctx).await;
    }
    let _ = go_tx.send(true);
    let mut tasks = ctx.tasks;
    // The flooded hub reads normally (and is counted nowhere).
    let (mut target, _) = join(&relay, cluster.hub(2)).await;
    tasks.push(tokio::spawn(async move {
        while target.next_event().await.is_some() {}
    }));
    let rss_start = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flooder.map(|pause| {
        let url = connect_url(&relay.url(), cluster.id().as_str(), &hub(1)).unwrap();
        flood(url.to_string(), cluster.hub(1), hub(2), pause, stop.clone())
    });
    tokio::time::sleep(WARMUP).await;
    load.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let mut rss_peak = rss_start;
    while started.elapsed() < Duration::from_secs(seconds()) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        rss_peak = rss_peak.max(rss_kib(pid));
    }
    load.measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let flood = flooder.map(|f| f.join().unwrap());
    for task in tasks {
        task.abort();
    }
    let mut rtts = std::mem::take(&mut *load.rtts.lock().unwrap());
    rtts.sort();
    let pct = |q: usize| rtts.get(rtts.len() * q / 100).copied().unwrap_or_default();
    Run {
        frames_per_s: load.frames.load(Ordering::Relaxed) as f64 / elapsed,
        p50: pct(50),
        p99: pct(99),
        pings: rtts.len(),
        lost: load.lost_pings.load(Ordering::Relaxed),
        rss_start,
        rss_peak,
        flood,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!(
        "{PAIRS} pairs: each hub sends {STEADY_PER_S} x 1 KiB/s to its partner, one of each pair pings (32 B, closed loop); \
         {}s measured after {}s warm-up",
        seconds(),
        WARMUP.as_secs()
    );
    let only = std::env::var("FLOOD_RELAYS").unwrap_or_default();
    for kind in [RelayKind::Native, RelayKind::Workerd] {
        let (name, key) = match kind {
            RelayKind::Native => ("hub relay", "native"),
            RelayKind::Workerd => ("workerd", "workerd"),
        };
        if !only.is_empty() && !only.split(',').any(|k| k.trim() == key) {
            continue;
        }
        let base = run(kind, None).await;
        let runs = [
            ("flood, at once", run(kind, Some(Duration::ZERO)).await),
            ("flood, 1 s", run(kind, Some(Duration::from_secs(1))).await),
        ];
        println!(
            "{name:<10} {:<15} frames/s {:>6.0}  ping p50 {:>7.3} ms  p99 {:>7.3} ms  ({} pings, {} lost)  relay RSS {} -> peak {} MiB",
            "baseline",
            base.frames_per_s,
            ms(base.p50),
            ms(base.p99),
            base.pings,
            base.lost,
            base.rss_start / 1024,
            base.rss_peak / 1024
        );
        for (what, r) in &runs {
            let (sent, notices, logins, refused) = r.flood.unwrap_or_default();
            println!(
                "{name:<10} {what:<15} frames/s {:>6.0}  ping p50 {:>7.3} ms  p99 {:>7.3} ms  ({} pings, {} lost)  relay RSS {} -> peak {} MiB; \
                 flooder: {sent} frames written, {notices} RateLimited, {logins} logins, {refused} connects refused",
                r.frames_per_s,
                ms(r.p50),
                ms(r.p99),
                r.pings,
                r.lost,
                r.rss_start / 1024,
                r.rss_peak / 1024
            );
            println!(
                "{name:<10} {what:<15} ratio to baseline: frames/s {:.3}  p50 {:.2}  p99 {:.2}  relay memory growth {} MiB (baseline: {} MiB)",
                r.frames_per_s / base.frames_per_s,
                ms(r.p50) / ms(base.p50),
                ms(r.p99) / ms(base.p99),
                r.rss_peak.saturating_sub(r.rss_start) / 1024,
                base.rss_peak.saturating_sub(base.rss_start) / 1024
            );
        }
    }
}
