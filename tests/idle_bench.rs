//! Memory of `hub relay` per idle logged-in hub: N hubs (default 10,000, `IDLE_HUBS`), each the
//! hub's own `RelayClient` with its default settings, logged in to rooms of 1,000 (a room holds
//! at most 1,024), then to rooms of 10 (clusters as people have them: a few devices each), a
//! fresh relay process for each, then left idle but for their keepalives. Prints the relay's
//! resident memory before the first login and once all are in and settled, and the growth per
//! hub. Run with `scripts/bench-idle` (release `hub`).
// A benchmark measures and panics on setup failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use e2e::{env_number, nth_hub, rss_kib, RelayKind, RelayProcess, TestCluster};
use hub_client::transport::relay::{RelayClient, RelayConfig, RelayEvent};
use tokio::sync::mpsc;

#[tokio::main]
async fn main() {
    let n: usize = env_number("IDLE_HUBS", 10_000);
    for per_room in [1000, 10] {
        idle(n, per_room).await;
    }
}

async fn idle(n: usize, per_room: usize) {
    let relay = RelayProcess::start(RelayKind::Native);
    let pid = relay.pid().expect("running");
    // What the relay holds with nobody in.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = rss_kib(pid);

    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut clients = Vec::with_capacity(n);
    let mut cluster = TestCluster::new();
    let started = Instant::now();
    for i in 0..n {
        if i > 0 && i % per_room == 0 {
            cluster = TestCluster::new();
        }
        let config = RelayConfig::new(relay.url(), cluster.hub_id(nth_hub(i)));
        let mut client = RelayClient::spawn(config).expect("config");
        let tx = tx.clone();
        // Every event is read (presence announcements too), as a hub does.
        clients.push(tokio::spawn(async move {
            while let Some(event) = client.next_event().await {
                if let RelayEvent::Connected { .. } = event {
                    let _ = tx.send(i);
                }
            }
        }));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut welcomed = vec![false; n];
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while count < n {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(i)) if !welcomed[i] => {
                welcomed[i] = true;
                count += 1;
            }
            Ok(Some(_)) => {}
            _ => panic!("only {count} of {n} hubs logged in within 300 s"),
        }
    }
    let logged_in = started.elapsed();
    // Presence announcements delivered, buffers back to idle: the highest of a few readings
    // taken over 10 s of idleness.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut after = 0;
    for _ in 0..10 {
        after = after.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let mut relogins = 0;
    while rx.try_recv().is_ok() {
        relogins += 1;
    }
    println!(
        "hub relay, {n} idle hubs in {} rooms of {per_room} (all in after {:.1} s, {relogins} logged in again meanwhile): RSS {before} KiB empty, {after} KiB with them: {:.1} KiB per idle hub",
        n.div_ceil(per_room),
        logged_in.as_secs_f64(),
        (after.saturating_sub(before)) as f64 / n as f64,
    );
    for c in clients {
        c.abort();
    }
}
