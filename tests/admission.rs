//! Admission into one room as it grows, on 127.0.0.1: N hubs log in at once (as after a relay
//! restart, at most 128 connecting at a time) while one member watches. Prints, per relay and
//! N, the time until every hub was welcomed and until the watching member had been told of all
//! of them, the joins per second, and the ratio of each rate to the rate at the smallest N
//! (the baseline, measured in the same run). Run with `scripts/bench-admission`.
// A benchmark measures wall-clock time and panics on setup failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::{RelayKind, RelayProcess, TestCluster};
use futures_util::{SinkExt, StreamExt};
use hub_client::transport::relay::connect_url;
use shared_proto::relay::frame::{decode_message, Frame};
use shared_proto::HubId;
use tokio_tungstenite::tungstenite::Message;

const SIZES: [usize; 3] = [100, 500, 1000];
const CONCURRENT: usize = 128;

fn hello(cluster: &TestCluster, id: HubId) -> Vec<u8> {
    let creds = cluster.hub_id(id);
    let ext = creds.login(e2e::now_ms(), &mut rand::rngs::OsRng);
    Frame::Hello(creds.hello(&ext)).to_message().unwrap()
}

fn id(i: usize) -> HubId {
    let mut b = [0x42u8; 16];
    b[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    HubId(b)
}

async fn next_binary(
    ws: &mut (impl futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
              + Unpin),
) -> Vec<u8> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => return b.to_vec(),
            Ok(Some(Ok(Message::Close(f)))) => panic!("closed: {f:?}"),
            Ok(Some(Ok(_))) => {}
            other => panic!("no message within 60 s: {other:?}"),
        }
    }
}

/// (seconds until all welcomed, seconds until the watcher knew of all)
async fn admit(kind: RelayKind, n: usize) -> (f64, f64) {
    let relay = RelayProcess::start(kind);
    let cluster = TestCluster::new();
    let url = |hub: HubId| connect_url(&relay.url(), cluster.id().as_str(), &hub).unwrap();
    let (mut watcher, _) = tokio_tungstenite::connect_async(url(HubId([1; 16])).as_str())
        .await
        .unwrap();
    watcher
        .send(Message::Binary(hello(&cluster, HubId([1; 16])).into()))
        .await
        .unwrap();
    let _welcome = next_binary(&mut watcher).await;
    // Logins signed before the clock starts (a hub signs its own).
    let hellos: Vec<_> = (0..n)
        .map(|i| (url(id(i)), hello(&cluster, id(i))))
        .collect();
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT));
    let started = Instant::now();
    let watching = tokio::spawn(async move {
        let mut seen = BTreeSet::new();
        while seen.len() < n {
            for f in decode_message(&next_binary(&mut watcher).await).unwrap() {
                if let Frame::PeerJoined(hubs) = f {
                    seen.extend(hubs);
                }
            }
        }
        (started.elapsed(), watcher)
    });
    let joiners: Vec<_> = hellos
        .into_iter()
        .map(|(url, hello)| {
            let permits = permits.clone();
            tokio::spawn(async move {
                let permit = permits.acquire_owned().await.unwrap();
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                    .await
                    .unwrap();
                ws.send(Message::Binary(hello.into())).await.unwrap();
                let _welcome = next_binary(&mut ws).await;
                drop(permit);
                // Keep reading (presence) so the relay never waits on this socket.
                tokio::spawn(async move { while ws.next().await.is_some() {} });
            })
        })
        .collect();
    for j in joiners {
        j.await.unwrap();
    }
    let welcomed = started.elapsed();
    let (told, _watcher) = watching.await.unwrap();
    (welcomed.as_secs_f64(), told.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    println!("N hubs log in at once ({CONCURRENT} connecting at a time) while one member watches");
    for kind in [RelayKind::Native, RelayKind::Workerd] {
        let name = match kind {
            RelayKind::Native => "hub relay",
            RelayKind::Workerd => "workerd",
        };
        let mut base = None;
        for n in SIZES {
            let (welcomed, told) = admit(kind, n).await;
            let rate = n as f64 / welcomed;
            let base_rate = *base.get_or_insert(rate);
            println!(
                "{name:<10} N {n:>5}: all welcomed in {welcomed:>6.2} s ({rate:>6.0} joins/s, {:.2} of the N={} rate); the member told of all in {told:>6.2} s",
                rate / base_rate,
                SIZES[0]
            );
        }
    }
}
