//! Round trips on 127.0.0.1, each against a baseline measured in the same process: a direct
//! WebSocket echo (hub -> echo server -> hub), then hub A -> relay -> hub B -> relay -> hub A
//! through the Worker in workerd and through `hub relay`, with B echoing at the relay level and
//! through an end-to-end Noise session (`PeerClient::ping`). Prints p50 and p99 and the ratio to
//! the direct echo, and the hub's `RelayClient` against a lean client through the same relay
//! (two bare WebSockets speaking the relay protocol, no tasks or channels: the floor of a
//! relayed round trip). Run with `scripts/bench-rtt` (it builds the Worker and `hub` first).
// A benchmark measures wall-clock time and panics on setup failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use e2e::load::{room_pair, round_trips};
use e2e::{hub, join, RelayKind, RelayProcess, TestCluster};
use futures_util::{SinkExt, StreamExt};
use hub_client::RelayEvent;
use tokio_tungstenite::tungstenite::Message;

const ROUNDS: usize = 2000;
const PAYLOAD: usize = 32;

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn direct_echo() -> Vec<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        while let Some(Ok(m)) = ws.next().await {
            if m.is_binary() && ws.send(m).await.is_err() {
                break;
            }
        }
    });
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/"))
        .await
        .unwrap();
    let mut out = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS + 100 {
        let start = Instant::now();
        ws.send(Message::Binary(vec![7u8; PAYLOAD].into()))
            .await
            .unwrap();
        while !matches!(ws.next().await, Some(Ok(Message::Binary(_)))) {}
        if i >= 100 {
            out.push(start.elapsed());
        }
    }
    out
}

async fn through_relay(relay: &RelayProcess) -> Vec<Duration> {
    let cluster = TestCluster::new();
    let (mut a, _) = join(relay, cluster.hub(1)).await;
    let (mut b, _) = join(relay, cluster.hub(2)).await;
    tokio::spawn(async move {
        while let Some(e) = b.next_event().await {
            if let RelayEvent::Message { from, payload } = e {
                if b.send(from, payload).await.is_err() {
                    break;
                }
            }
        }
    });
    let mut out = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS + 100 {
        let start = Instant::now();
        a.send(hub(2), vec![7u8; PAYLOAD]).await.unwrap();
        loop {
            if let Some(RelayEvent::Message { .. }) = a.next_event().await {
                break;
            }
        }
        if i >= 100 {
            out.push(start.elapsed());
        }
    }
    out
}

/// The floor: hub A's bare socket sends a `Send` frame, B's bare socket echoes it back as soon
/// as it reads it, and A waits for the `Recv`, all on one task each.
async fn through_lean_clients(relay: &RelayProcess) -> Vec<Duration> {
    round_trips(room_pair(&relay.url(), PAYLOAD).await, ROUNDS, 100).await
}

async fn through_session(relay: &RelayProcess) -> Vec<Duration> {
    let cluster = TestCluster::new();
    let mut clients = Vec::new();
    for b in [1u8, 2] {
        let (creds, local) = e2e::peer_hub(&cluster, b);
        let config = hub_client::RelayConfig::new(relay.url(), creds);
        let mut c = hub_client::transport::peers::PeerClient::spawn(config, local).unwrap();
        while let Some(e) = c.next_event().await {
            if matches!(
                e,
                hub_client::transport::peers::PeerEvent::Relay(RelayEvent::Connected { .. })
            ) {
                break;
            }
        }
        clients.push(c);
    }
    let mut b = clients.pop().unwrap();
    let a = clients.pop().unwrap();
    // B answers pings inside its task; drain its events so it never blocks.
    tokio::spawn(async move { while b.next_event().await.is_some() {} });
    let mut out = Vec::with_capacity(ROUNDS);
    for i in 0..ROUNDS + 100 {
        let rtt = a.ping(hub(2), Duration::from_secs(10)).await.unwrap();
        if i >= 100 {
            out.push(rtt);
        }
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let (d50, d99) = percentiles(direct_echo().await);
    println!(
        "{ROUNDS} round trips of {PAYLOAD} B after 100 warm-up, all on 127.0.0.1\n\
         {:<44} p50 {:>6.3} ms  p99 {:>6.3} ms  (baseline)",
        "direct WebSocket echo",
        ms(d50),
        ms(d99)
    );
    for kind in [RelayKind::Native, RelayKind::Workerd] {
        let relay = RelayProcess::start(kind);
        let name = match kind {
            RelayKind::Native => "hub relay",
            RelayKind::Workerd => "workerd",
        };
        let lean = percentiles(through_lean_clients(&relay).await);
        let client = percentiles(through_relay(&relay).await);
        for (what, (p50, p99)) in [
            ("lean clients (bare sockets)", lean),
            ("relay frames", client),
            (
                "Noise session ping",
                percentiles(through_session(&relay).await),
            ),
        ] {
            println!(
                "{:<44} p50 {:>6.3} ms  p99 {:>6.3} ms  ratio p50 {:.2}  p99 {:.2}",
                format!("hub -> {name} -> hub -> {name} -> hub, {what}"),
                ms(p50),
                ms(p99),
                p50.as_secs_f64() / d50.as_secs_f64(),
                p99.as_secs_f64() / d99.as_secs_f64()
            );
        }
        println!(
            "{:<44} ratio p50 {:.2}  p99 {:.2}",
            format!("{name}: RelayClient / lean clients"),
            client.0.as_secs_f64() / lean.0.as_secs_f64(),
            client.1.as_secs_f64() / lean.1.as_secs_f64()
        );
    }
}
