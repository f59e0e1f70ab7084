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

use e2e::{nth_hub, RelayKind, RelayProcess, TestCluster};
use hub_client::transport::relay::{RelayClient, RelayConfig, RelayEvent};
use tokio::sync::mpsc;

enum Seen {
    Welcomed(usize, Instant),
    Refused(Option<u16>),
}

async fn storm(kind: RelayKind, n: usize) {
    let mut relay = RelayProcess::start(kind);
    let cluster = TestCluster::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut clients = Vec::new();
    for i in 0..n {
        let config = RelayConfig::new(relay.url(), cluster.hub_id(nth_hub(i)));
        let mut client = RelayClient::spawn(config).expect("config");
        let tx = tx.clone();
        clients.push(tokio::spawn(async move {
            while let Some(event) = client.next_event().await {
                let seen = match event {
                    RelayEvent::Connected { .. } => Seen::Welcomed(i, Instant::now()),
                    RelayEvent::Disconnected { code, .. } => Seen::Refused(code.map(|c| c.code())),
                    _ => continue,
                };
                if tx.send(seen).is_err() {
                    break;
                }
            }
        }));
        // Logins spread a little, as hubs that started at different times.
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut welcomed = vec![false; n];
    let mut count = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while count < n {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(Seen::Welcomed(i, _))) if !welcomed[i] => {
                welcomed[i] = true;
                count += 1;
            }
            Ok(Some(_)) => {}
            _ => panic!("only {count} of {n} hubs logged in within 120 s"),
        }
    }
    // Idle for a moment, then the restart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    while rx.try_recv().is_ok() {}
    let killed = Instant::now();
    relay.restart();
    let mut back: Vec<f64> = Vec::with_capacity(n);
    let mut again = vec![false; n];
    let mut closes: BTreeMap<String, usize> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while back.len() < n {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(Seen::Welcomed(i, at))) if !again[i] => {
                again[i] = true;
                back.push(at.duration_since(killed).as_secs_f64());
            }
            Ok(Some(Seen::Refused(code))) => {
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
    for c in clients {
        c.abort();
    }
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
