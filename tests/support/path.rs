//! A TCP path to the relay that a test cuts and restores, as a phone's network goes and comes.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP path to the relay that can be cut: while cut, what is sent either way is lost (the
/// sockets stay open, as when a phone's network goes away) and new connections fail at once
/// (no route); once restored, new connections go through and the cut ones stay dead.
#[derive(Debug)]
pub struct CuttablePath {
    port: u16,
    cut: Arc<AtomicBool>,
    epoch: Arc<AtomicU64>,
    /// Connections passed to the relay.
    pub connections: Arc<AtomicU64>,
    /// Bytes passed from the relay to the hub.
    pub down_bytes: Arc<AtomicU64>,
    /// Reads from the hub passed to the relay (one per message a hub writes when it writes
    /// seldom: an idle hub's keepalives).
    pub up_reads: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CuttablePath {
    /// A path to the relay listening on `relay_port` of 127.0.0.1.
    pub async fn start(relay_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let epoch = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let down_bytes = Arc::new(AtomicU64::new(0));
        let up_reads = Arc::new(AtomicU64::new(0));
        let (c, e, n, d, u) = (
            cut.clone(),
            epoch.clone(),
            connections.clone(),
            down_bytes.clone(),
            up_reads.clone(),
        );
        let task = tokio::spawn(async move {
            while let Ok((down, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(down);
                    continue;
                }
                let Ok(up) = TcpStream::connect(("127.0.0.1", relay_port)).await else {
                    continue;
                };
                n.fetch_add(1, Ordering::SeqCst);
                let born = e.load(Ordering::SeqCst);
                let alive = {
                    let (c, e) = (c.clone(), e.clone());
                    move || !c.load(Ordering::SeqCst) && e.load(Ordering::SeqCst) == born
                };
                let (down_r, down_w) = down.into_split();
                let (up_r, up_w) = up.into_split();
                tokio::spawn(pump(down_r, up_w, alive.clone(), Arc::default(), u.clone()));
                tokio::spawn(pump(up_r, down_w, alive, d.clone(), Arc::default()));
            }
        });
        CuttablePath {
            port,
            cut,
            epoch,
            connections,
            down_bytes,
            up_reads,
            task,
        }
    }

    /// `ws://127.0.0.1:PORT` of the path.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// `token` (from `hub invite`) naming this path as its relay, and the path's HTTP base URL:
    /// a hub that joins with it reaches the relay (and the phone page) only through the path.
    pub fn token_through(&self, token: &str) -> (String, String) {
        let mut token = shared_proto::session::pairing::PairingToken::parse(token.trim())
            .expect("a pairing token");
        let base = self.url().replace("ws://", "http://");
        token.relay_url = base.clone();
        (token.encode().expect("an encodable token"), base)
    }

    /// Cuts the path: what is sent is lost, new connections fail.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Restores the path for new connections (cut ones stay dead).
    pub fn restore(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for CuttablePath {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` while `alive()`, counting the bytes and reads it passes; after, reads
/// and drops (the bytes are lost).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    alive: impl Fn() -> bool,
    passed: Arc<AtomicU64>,
    reads: Arc<AtomicU64>,
) {
    let mut buf = vec![0; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if alive() {
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
            passed.fetch_add(n as u64, Ordering::SeqCst);
            reads.fetch_add(1, Ordering::SeqCst);
        }
    }
}
