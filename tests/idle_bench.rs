//! Memory of `hub relay` per idle logged-in hub: N hubs (default 10,000, `IDLE_HUBS`), each the
//! hub's own `RelayClient` with its default settings, logged in to rooms of 1,000 (a room holds
//! at most 1,024), then to rooms of 10 (clusters as people have them: a few devices each), a
//! fresh relay process for each, then left idle but for their keepalives. Prints the relay's
//! resident memory before the first login and once all are in and settled, and the growth per
//! hub. Run with `scripts/bench-idle` (release `hub`).
// A benchmark measures and panics on setup failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use e2e::crowd::Crowd;
use e2e::{env_number, rss_kib, RelayKind, RelayProcess};

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

    let started = Instant::now();
    let mut crowd = Crowd::start(&relay.url(), n, per_room).await;
    crowd.all_welcomed(Duration::from_secs(300)).await;
    let logged_in = started.elapsed();
    // Presence announcements delivered, buffers back to idle: the highest of a few readings
    // taken over 10 s of idleness.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut after = 0;
    for _ in 0..10 {
        after = after.max(rss_kib(pid));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let relogins = crowd.drain();
    println!(
        "hub relay, {n} idle hubs in {} rooms of {per_room} (all in after {:.1} s, {relogins} logged in again meanwhile): RSS {before} KiB empty, {after} KiB with them: {:.1} KiB per idle hub",
        n.div_ceil(per_room),
        logged_in.as_secs_f64(),
        (after.saturating_sub(before)) as f64 / n as f64,
    );
}
