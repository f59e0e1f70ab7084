//! Restart storms: N hubs, each the hub's own `RelayClient` with its default settings (keepalive,
//! reconnect backoff 250 ms to 30 s with jitter), are logged in to one room; the relay process is
//! killed and started again on the same port (workerd: the same listening socket and storage);
//! prints how long until 95% and 100% of the hubs were welcomed again, counted from the kill,
//! and how many connection attempts were refused meanwhile (by code). `hub relay` with 1,000
//! hubs and workerd with 500, in one run. Run with `scripts/bench-restart`.
// A benchmark measures wall-clock time and panics on setup failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e::crowd::{Crowd, Seen};
use e2e::{RelayKind, RelayProcess};

async fn storm(kind: RelayKind, n: usize) {
    let mut relay = RelayProcess::start(kind);
    let mut crowd = Crowd::start(&relay.url(), n, n).await;
    crowd.all_welcomed(Duration::from_secs(120)).await;
    // Idle for a moment, then the restart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    crowd.drain();
    let killed = Instant::now();
    relay.restart();
    let mut back: Vec<f64> = Vec::with_capacity(n);
    let mut again = vec![false; n];
    let mut closes: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while back.len() < n {
        match tokio::time::timeout_at(deadline.into(), crowd.seen.recv()).await {
            Ok(Some(Seen::Welcomed(i, at))) if !again[i] => {
                again[i] = true;
                back.push(at.duration_since(killed).as_secs_f64());
            }
            Ok(Some(Seen::Disconnected(code))) => {
                let key = code.map_or_else(
                    || "none (connect failed or cut)".to_owned(),
                    |c| c.to_string(),
                );
                *closes.entry(key).or_default() += 1;
            }
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    back.sort_by(f64::total_cmp);
    let at = |q: f64| {
        back.get(((n as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
    };
    let show = |v: Option<f64>| v.map_or_else(|| "not reached".to_owned(), |s| format!("{s:.2} s"));
    println!(
        "{kind:?}, {n} hubs: 95% back in {}, 100% in {} ({} of {n} within 60 s); disconnects seen: {closes:?}",
        show(at(0.95)),
        if back.len() == n { show(at(1.0)) } else { "not reached".into() },
        back.len(),
    );
}

#[tokio::main]
async fn main() {
    let only = std::env::var("RESTART_RELAYS").unwrap_or_default();
    if only != "workerd" {
        storm(RelayKind::Native, 1000).await;
    }
    if only != "native" {
        storm(RelayKind::Workerd, 500).await;
    }
}
