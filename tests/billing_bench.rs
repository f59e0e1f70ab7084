//! What a cluster costs on Cloudflare, counted in local workerd: each WebSocket message a hub
//! writes to its room is one incoming message of the Durable Object (billed, and it wakes a
//! hibernated object), while keepalives are answered by the runtime's auto-response and reach
//! neither. Ten hubs, the hub's own `RelayClient` with its default settings, in one room; each
//! run counts the messages the ten wrote, the frames in them and the frames the others received
//! (forwarded by the room), and prints billed messages per forwarded frame:
//!
//! - idle for `BILLING_IDLE_SECONDS` (default 60): nothing to send, keepalives only;
//! - 100 frames/s across the cluster (each hub 10 a second, evenly spaced);
//! - 4,000 frames/s (each hub 400 a second, written 8 at a time every 20 ms, as the flood
//!   benchmark's steady load);
//! - as fast as the relay takes them, 5 s.
//!
//! Run with `scripts/bench-billing` (it builds the Worker first).
// A benchmark measures wall-clock time and panics on setup failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use e2e::{env_number, hub, join_with, RelayKind, RelayProcess, TestCluster};
use hub_client::transport::relay::{RelayConfig, RelaySender, Sent, SentCounters};
use hub_client::{RelayClient, RelayEvent};
use shared_proto::HubId;

const HUBS: u8 = 10;
const SECONDS: u64 = 10;

/// One hub: its sender, its counters, and the frames it received (counted by a reader task).
struct Member {
    id: HubId,
    sender: RelaySender,
    counters: Arc<SentCounters>,
    received: Arc<AtomicU64>,
    // Kept so that the client lives as long as the run.
    _reader: tokio::task::JoinHandle<()>,
}

async fn member(relay: &RelayProcess, cluster: &TestCluster, n: u8) -> Member {
    let config = RelayConfig::new(relay.url(), cluster.hub(n));
    let counters = config.counters.clone();
    let (mut client, _): (RelayClient, _) = join_with(config).await;
    let received = Arc::new(AtomicU64::new(0));
    let count = received.clone();
    let sender = client.sender();
    let reader = tokio::spawn(async move {
        while let Some(e) = client.next_event().await {
            if let RelayEvent::Message { .. } = e {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    Member {
        id: hub(n),
        sender,
        counters,
        received,
        _reader: reader,
    }
}

fn total(members: &[Member]) -> (Sent, u64) {
    members.iter().fold((Sent::default(), 0), |(s, r), m| {
        (
            s + m.counters.read(),
            r + m.received.load(Ordering::Relaxed),
        )
    })
}

/// Each hub sends `burst` frames of 1 KiB to the next hub every `every`, for `secs`, or as fast
/// as it can when `every` is zero.
async fn load(members: &[Member], every: Duration, burst: u32, secs: u64) {
    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let to = members[(i + 1) % members.len()].id;
        let sender = m.sender.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = (!every.is_zero()).then(|| tokio::time::interval(every));
            while tokio::time::Instant::now() < until {
                if let Some(tick) = tick.as_mut() {
                    tick.tick().await;
                }
                for _ in 0..burst {
                    let permit = sender.reserve().await.expect("client running");
                    permit.send(to, vec![b'S'; 1024]).expect("within limits");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn settle(members: &[Member], expected: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while total(members).1 < expected && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn report(what: &str, before: (Sent, u64), after: (Sent, u64), secs: f64) {
    let messages = after.0.messages - before.0.messages;
    let frames = after.0.frames - before.0.frames;
    let keepalives = after.0.keepalives - before.0.keepalives;
    let forwarded = after.1 - before.1;
    let per_frame = if forwarded == 0 {
        "-".to_owned()
    } else {
        format!("{:.3}", messages as f64 / forwarded as f64)
    };
    println!(
        "{what}: {messages} billed messages ({:.1}/s) carrying {frames} frames, {forwarded} frames forwarded, {per_frame} billed messages per forwarded frame; {keepalives} keepalives (auto-response, not billed)",
        messages as f64 / secs,
    );
}

#[tokio::main]
async fn main() {
    let idle: u64 = env_number("BILLING_IDLE_SECONDS", 60);
    let relay = RelayProcess::start(RelayKind::Workerd);
    let cluster = TestCluster::new();
    let mut members = Vec::new();
    for n in 1..=HUBS {
        members.push(member(&relay, &cluster, n).await);
    }
    // Presence announcements of the joins are done before the idle run starts.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let before = total(&members);
    tokio::time::sleep(Duration::from_secs(idle)).await;
    report(
        &format!("idle, {HUBS} hubs, {idle} s"),
        before,
        total(&members),
        idle as f64,
    );

    for (what, every, burst) in [
        (
            "100 frames/s (10 per hub, evenly spaced)",
            Duration::from_millis(100),
            1,
        ),
        (
            "4,000 frames/s (400 per hub, 8 every 20 ms)",
            Duration::from_millis(20),
            8,
        ),
    ] {
        let before = total(&members);
        load(&members, every, burst, SECONDS).await;
        let sent = total(&members).0.frames - before.0.frames;
        settle(&members, before.1 + sent).await;
        report(what, before, total(&members), SECONDS as f64);
    }
    let before = total(&members);
    let start = std::time::Instant::now();
    load(&members, Duration::ZERO, 64, 5).await;
    let sent = total(&members).0.frames - before.0.frames;
    settle(&members, before.1 + sent).await;
    report(
        "as fast as the relay takes them, 5 s",
        before,
        total(&members),
        start.elapsed().as_secs_f64(),
    );
}
