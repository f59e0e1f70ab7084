//! A verified link at work: registered, then driven until it drops, each half on its own task
//! over the sans-IO `shared_proto::link` (frames, acknowledgements, deadlines).

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use shared_proto::link::{LinkReceiver, LinkSender, Received};
use shared_proto::trust::VerifiedPeer;
use shared_proto::HubId;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::{LanEvent, Shared, DEAD_AFTER, LINK_QUEUE, MAX_LINKS};
use crate::unix_ms;

/// A link up, as the router and the status page see it.
#[derive(Debug)]
pub(super) struct LinkHandle {
    id: u64,
    /// The peer's address.
    pub(super) addr: SocketAddr,
    dialed_by: HubId,
    /// Payloads for the link's writer.
    pub(super) tx: mpsc::Sender<Vec<u8>>,
    /// Closes the link, with why.
    pub(super) close: watch::Sender<Option<String>>,
    /// The peer's certificate (a revocation list may name it or the admin's that issued it).
    pub(super) certificate: VerifiedPeer,
}

static NEXT_LINK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Registers a verified link and runs it until it drops.
pub(super) async fn run_link(
    shared: Arc<Shared>,
    tls: tokio_rustls::TlsStream<TcpStream>,
    addr: SocketAddr,
    peer: VerifiedPeer,
    dialed: bool,
) {
    let hub = peer.hub_id();
    let dialed_by = if dialed { shared.me } else { hub };
    let id = NEXT_LINK.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(LINK_QUEUE);
    let (close, close_rx) = watch::channel(None);
    {
        let mut links = shared.links.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = links.get(&hub) {
            // Two links at once (both dialed): both sides keep the one the lower hub dialed.
            if old.dialed_by <= dialed_by {
                tracing::debug!(peer = %hub, "LAN: a second link closed");
                return;
            }
            old.close.send_replace(Some("replaced".into()));
        } else if links.len() >= MAX_LINKS {
            tracing::warn!(peer = %hub, "LAN: {MAX_LINKS} links up already; refused");
            return;
        }
        links.insert(
            hub,
            LinkHandle {
                id,
                addr,
                dialed_by,
                tx,
                close,
                certificate: peer,
            },
        );
    }
    tracing::info!(peer = %hub, %addr, "LAN: link up (TLS 1.3, certificate verified)");
    let _ = shared.events.send(LanEvent::Up { peer: hub, addr }).await;
    let (reason, unsent) = drive(tls, rx, close_rx, hub, &shared.events).await;
    {
        let mut links = shared.links.lock().unwrap_or_else(PoisonError::into_inner);
        if links.get(&hub).is_some_and(|l| l.id == id) {
            links.remove(&hub);
        }
    }
    tracing::info!(peer = %hub, "LAN: link down: {reason}");
    let _ = shared
        .events
        .send(LanEvent::Down {
            peer: hub,
            reason,
            unsent,
        })
        .await;
    shared.dial.notify_one();
}

/// Most bytes written at once when payloads wait (one write, one flush).
const BATCH_BYTES: usize = 64 * 1024;

/// The tokio instant of a Unix-ms deadline of the sans-IO link.
fn at(deadline_ms: u64) -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_millis(deadline_ms.saturating_sub(unix_ms()))
}

/// Runs a link until it drops: the writer here, the reader on its own task (so that a side
/// blocked writing still reads); returns why it dropped and what it may not have delivered.
async fn drive<S>(
    stream: S,
    mut rx: mpsc::Receiver<Vec<u8>>,
    mut close: watch::Receiver<Option<String>>,
    peer: HubId,
    events: &mpsc::Sender<LanEvent>,
) -> (String, Vec<Vec<u8>>)
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, mut writer) = tokio::io::split(stream);
    let (received_tx, mut received_rx) = watch::channel(0u64);
    let (acked_tx, mut acked_rx) = watch::channel(0u64);
    let mut read_task = tokio::spawn(read_half(
        reader,
        peer,
        events.clone(),
        received_tx,
        acked_tx,
    ));
    let mut link = LinkSender::new(unix_ms());
    let mut frames = Vec::new();
    let reason = loop {
        frames.clear();
        tokio::select! {
            r = &mut read_task => {
                break r.unwrap_or_else(|e| format!("reader failed: {e}"));
            }
            _ = close.changed() => {
                break close.borrow().clone().unwrap_or_else(|| "closed".into());
            }
            payload = rx.recv(), if link.has_room() => {
                let Some(mut payload) = payload else { break "hub stopping".into() };
                // More waiting: one write for all (up to `BATCH_BYTES`), one flush.
                let now = unix_ms();
                loop {
                    if link.push_data(payload, now, &mut frames).is_err() {
                        tracing::warn!(%peer, "LAN: a payload over 64 KiB was not sent");
                    }
                    if frames.len() >= BATCH_BYTES || !link.has_room() {
                        break;
                    }
                    let Ok(next) = rx.try_recv() else { break };
                    payload = next;
                }
            }
            _ = acked_rx.changed() => {
                let acked = *acked_rx.borrow_and_update();
                if let Err(e) = link.handle_ack(acked) {
                    break e.to_string();
                }
            }
            _ = received_rx.changed() => {
                let received = *received_rx.borrow_and_update();
                link.push_ack(received, unix_ms(), &mut frames);
            }
            () = tokio::time::sleep_until(at(link.keepalive_at())) => {
                link.push_keepalive(unix_ms(), &mut frames);
            }
        }
        if !frames.is_empty() {
            if let Err(e) = write(&mut writer, &frames).await {
                break e;
            }
        }
    };
    read_task.abort();
    let _ = tokio::time::timeout(Duration::from_millis(200), writer.shutdown()).await;
    let mut unsent = link.into_unsent();
    rx.close();
    while let Ok(p) = rx.try_recv() {
        unsent.push(p);
    }
    (reason, unsent)
}

/// Writes and flushes `bytes`, within [`DEAD_AFTER`].
async fn write<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> Result<(), String> {
    let io = async {
        w.write_all(bytes).await?;
        w.flush().await
    };
    match tokio::time::timeout(DEAD_AFTER, io).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write failed: {e}")),
        Err(_) => Err(format!("nothing could be written for {DEAD_AFTER:?}")),
    }
}

/// Reads the link until it fails: payloads go to the peer layer, acks and the count of data
/// frames read to the writer. Returns why it stopped.
async fn read_half<R: AsyncRead + Unpin>(
    mut reader: R,
    peer: HubId,
    events: mpsc::Sender<LanEvent>,
    received: watch::Sender<u64>,
    acked: watch::Sender<u64>,
) -> String {
    let mut link = LinkReceiver::new(unix_ms());
    let mut buf = vec![0u8; 16 * 1024];
    let mut got = Vec::new();
    loop {
        let read = tokio::time::timeout_at(at(link.dead_at()), reader.read(&mut buf)).await;
        let n = match read {
            Err(_) => return format!("nothing arrived for {DEAD_AFTER:?}"),
            Ok(Ok(0)) => return "closed by the peer".into(),
            Ok(Err(e)) => return format!("read failed: {e}"),
            Ok(Ok(n)) => n,
        };
        if let Err(e) = link.handle_bytes(&buf[..n], unix_ms(), &mut got) {
            return e.to_string();
        }
        for r in got.drain(..) {
            match r {
                Received::Payload(payload) => {
                    let event = LanEvent::Message {
                        from: peer,
                        payload,
                    };
                    if events.send(event).await.is_err() {
                        return "hub stopping".into();
                    }
                }
                Received::Acked(n) => {
                    acked.send_replace(n);
                }
            }
        }
        received.send_if_modified(|r| {
            let changed = *r != link.received();
            *r = link.received();
            changed
        });
    }
}
