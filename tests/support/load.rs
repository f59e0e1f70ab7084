//! Throughput load for the benchmarks: pairs of bare WebSockets, one frame per message
//! (unbatched), each A sending to its B with a bounded number of frames unanswered, and the
//! relay process's CPU time over the run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use shared_proto::relay::frame::{frames, Frame};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::{cpu_seconds, hub, lean_client, LeanSocket, TestCluster};

/// A pair of sockets and the message A sends to B.
pub type Pair = (LeanSocket, LeanSocket, Vec<u8>);

/// What one throughput run measured.
#[derive(Debug, Default, Clone, Copy)]
pub struct Throughput {
    /// Frames delivered.
    pub frames: u64,
    /// From the first frame sent to the last received.
    pub seconds: f64,
    /// CPU time the relay process used meanwhile (s).
    pub cpu: f64,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.frames as f64 / self.seconds
    }

    pub fn cpu_us_per_frame(&self) -> f64 {
        self.cpu * 1e6 / self.frames as f64
    }

    /// Sums of two runs' frames, time and CPU.
    pub fn add(&mut self, other: &Throughput) {
        self.frames += other.frames;
        self.seconds += other.seconds;
        self.cpu += other.cpu;
    }
}

/// A `Send` of `payload` bytes to hub 2 as one message.
fn send_to_b(payload: usize) -> Vec<u8> {
    Frame::Send {
        dst: hub(2),
        payload: &vec![7u8; payload],
    }
    .to_message()
    .expect("a Send within the limits")
}

/// Hubs 1 and 2 of a fresh cluster logged in to the relay at `relay_url`, and A's message: one
/// `Send` frame of `payload` bytes to B.
pub async fn room_pair(relay_url: &str, payload: usize) -> Pair {
    let cluster = TestCluster::new();
    let a = lean_client(relay_url, &cluster, 1).await;
    let b = lean_client(relay_url, &cluster, 2).await;
    (a, b, send_to_b(payload))
}

/// Two sockets on `ws_url` of a forwarder that passes every message on unchanged to the other
/// sockets of its path (a fresh path each call), and the same message as [`room_pair`]'s.
pub async fn forwarder_pair(base_url: &str, payload: usize) -> Pair {
    let url = format!(
        "{}/room/{}",
        base_url.replacen("http", "ws", 1),
        TestCluster::new().id()
    );
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url.as_str(), None, true)
            .await
            .expect("connect to the forwarder");
        sockets.push(ws);
    }
    let b = sockets.pop().expect("two sockets");
    let a = sockets.pop().expect("two sockets");
    (a, b, send_to_b(payload))
}

/// Whether `m` is a relayed frame of a `payload`-byte message (not presence or another small
/// frame of a room's).
pub fn is_payload(m: &Message, payload: usize) -> bool {
    matches!(m, Message::Binary(b) if b.len() >= payload)
}

/// Every A sends `per_pair` copies of its message to its B, with at most `window` sent and not
/// yet received; measures until the last arrives, and the CPU time of process `pid`. Closes all
/// the sockets afterwards, so that the next run does not pay for this one's goodbyes.
pub async fn run_pairs(pairs: Vec<Pair>, per_pair: u64, window: u64, pid: u32) -> Throughput {
    let count = pairs.len() as u64;
    let cpu_before = cpu_seconds(pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (mut a, mut b, message) in pairs {
        let payload = message.len();
        let received = Arc::new(AtomicU64::new(0));
        let progress = Arc::new(Notify::new());
        let (r, p) = (received.clone(), progress.clone());
        let reader = tokio::spawn(async move {
            while let Some(m) = b.next().await {
                if is_payload(&m.expect("read"), payload) {
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
                while sent - received.load(Ordering::Relaxed) >= window {
                    progress.notified().await;
                }
                a.send(Message::Binary(message.clone().into()))
                    .await
                    .expect("send");
            }
            let b = tokio::time::timeout(Duration::from_secs(120), reader)
                .await
                .expect("every frame arrives within 120 s")
                .expect("receiver");
            (a, b)
        }));
    }
    let mut sockets = Vec::new();
    for task in tasks {
        sockets.push(task.await.expect("sender"));
    }
    let run = Throughput {
        frames: per_pair * count,
        seconds: started.elapsed().as_secs_f64(),
        cpu: cpu_seconds(pid) - cpu_before,
    };
    for (a, b) in sockets {
        close(a).await;
        close(b).await;
    }
    run
}

/// `rounds` round trips of A's message after `warmup` more: B sends back each one as soon as it
/// reads it (a `Recv` from a relay as a `Send` to its source, a `Send` a forwarder passed on
/// unchanged as it came), and A waits for it. Closes both sockets; the round trips, in order.
pub async fn round_trips(pair: Pair, rounds: usize, warmup: usize) -> Vec<Duration> {
    let (mut a, mut b, message) = pair;
    let echo = tokio::spawn(async move {
        let mut echoed = 0;
        while echoed < rounds + warmup {
            let Some(Ok(Message::Binary(m))) = b.next().await else {
                continue;
            };
            let mut back = Vec::new();
            for f in frames(&m).flatten() {
                match f {
                    Frame::Recv { src, payload } => Frame::Send { dst: src, payload },
                    sent @ Frame::Send { .. } => sent,
                    _ => continue,
                }
                .encode(&mut back)
                .expect("a frame that was decoded encodes");
            }
            if !back.is_empty() {
                b.send(Message::Binary(back.into())).await.expect("echo");
                echoed += 1;
            }
        }
        b
    });
    let mut rtts = Vec::with_capacity(rounds);
    for i in 0..rounds + warmup {
        let start = Instant::now();
        a.send(Message::Binary(message.clone().into()))
            .await
            .expect("send");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(10), a.next())
                .await
                .expect("the frame comes back within 10 s")
                .expect("socket open")
                .expect("read");
            let Message::Binary(m) = m else { continue };
            if frames(&m).any(|f| matches!(f, Ok(Frame::Recv { .. } | Frame::Send { .. }))) {
                break;
            }
        }
        if i >= warmup {
            rtts.push(start.elapsed());
        }
    }
    close(a).await;
    close(echo.await.expect("echo task")).await;
    rtts
}

/// Closes a socket and waits (up to 10 s) for the other side's answer.
pub async fn close(mut ws: LeanSocket) {
    let _ = ws.close(None).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}
