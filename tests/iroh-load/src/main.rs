//! Load for iroh-relay with iroh's own client, the anchor of `scripts/bench-throughput`.
//!
//! `iroh-load URL PAIRS FRAMES PAYLOAD WINDOW`: connects `PAIRS` pairs of clients to the relay at
//! `URL` (its plain-HTTP `--dev` mode), then each A sends `FRAMES / PAIRS` datagrams of `PAYLOAD`
//! bytes to its B, one per relay frame, with at most `WINDOW` not yet received. Prints
//! `ready` once every client is connected, then `frames N seconds S` when all have arrived.
//! Exits non-zero (with why) on any failure, or if the frames are not all in within 120 s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use iroh_base::{RelayUrl, SecretKey};
use iroh_relay::client::{Client, ClientBuilder};
use iroh_relay::protos::relay::{ClientToRelayMsg, Datagrams, RelayToClientMsg};
use tokio::sync::Notify;

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn connect(url: &RelayUrl, seed: u64) -> Result<(Client, SecretKey), Error> {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[31] = 1;
    let key = SecretKey::from_bytes(&bytes);
    let tls = iroh_relay::tls::CaTlsConfig::default()
        .client_config(iroh_relay::tls::default_provider())?;
    let client = ClientBuilder::new(url.clone(), key.clone(), iroh_dns::dns::DnsResolver::new())
        .tls_client_config(tls)
        .connect()
        .await?;
    Ok((client, key))
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> Result<T, Error> {
    args.get(i)
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("argument {i} ({name}) missing or not valid").into())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let url: RelayUrl = arg(&args, 1, "URL")?;
    let pairs: u64 = arg(&args, 2, "PAIRS")?;
    let frames: u64 = arg(&args, 3, "FRAMES")?;
    let payload: usize = arg(&args, 4, "PAYLOAD")?;
    let window: u64 = arg(&args, 5, "WINDOW")?;
    let per_pair = frames / pairs;

    let mut clients = Vec::new();
    for p in 0..pairs {
        let (a, _) = connect(&url, 2 * p + 1).await?;
        let (b, b_key) = connect(&url, 2 * p + 2).await?;
        clients.push((a, b, b_key.public()));
    }
    println!("ready");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut a, mut b, dst) in clients {
        let received = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Notify::new());
        let (r, n) = (received.clone(), progress.clone());
        let reader = tokio::spawn(async move {
            while let Some(msg) = b.next().await {
                if let RelayToClientMsg::Datagrams { .. } = msg? {
                    let got = r.fetch_add(1, Ordering::Relaxed) + 1;
                    n.notify_one();
                    if got == per_pair {
                        return Ok::<_, Error>(());
                    }
                }
            }
            Err("the receiver's connection closed".into())
        });
        let body = vec![7u8; payload];
        tasks.push(tokio::spawn(async move {
            for sent in 0..per_pair {
                while sent - received.load(Ordering::Relaxed) >= window {
                    progress.notified().await;
                }
                a.send(ClientToRelayMsg::Datagrams {
                    dst_endpoint_id: dst,
                    datagrams: Datagrams::from(&body),
                })
                .await?;
            }
            tokio::time::timeout(Duration::from_secs(120), reader)
                .await
                .map_err(|_| "not every frame arrived within 120 s")???;
            Ok::<_, Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!(
        "frames {} seconds {}",
        per_pair * pairs,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
