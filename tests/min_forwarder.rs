//! A minimal WebSocket forwarder, the floor of `scripts/bench-throughput`: every binary message a
//! socket sends goes, unchanged, to the other sockets connected on the same path. No login, no
//! limits, no routing by hub: the least a relay process can do, on the same crates as `hub relay`
//! (tokio, tokio-tungstenite with a 4 KiB read buffer). Prints `listening on ADDR`; runs until
//! killed. Not part of the product.
// tungstenite's handshake callback returns its error response by value.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Rooms = Arc<Mutex<HashMap<String, Vec<(u64, mpsc::UnboundedSender<Message>)>>>>;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on {}", listener.local_addr()?);
    let rooms = Rooms::default();
    let mut next = 0u64;
    loop {
        let (tcp, _) = listener.accept().await?;
        next += 1;
        tokio::spawn(serve(tcp, next, rooms.clone()));
    }
}

async fn serve(tcp: tokio::net::TcpStream, id: u64, rooms: Rooms) {
    let _ = tcp.set_nodelay(true);
    let mut path = String::new();
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let callback = |req: &Request, resp: Response| {
        path = req.uri().path().to_owned();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await
    else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    lock(&rooms).entry(path.clone()).or_default().push((id, tx));
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        // Left the room (its sender dropped): answer the close.
        let _ = sink.close().await;
    });
    while let Some(Ok(m)) = stream.next().await {
        if !m.is_binary() {
            continue;
        }
        for (other, tx) in lock(&rooms).get(&path).into_iter().flatten() {
            if *other != id {
                let _ = tx.send(m.clone());
            }
        }
    }
    {
        let mut rooms = lock(&rooms);
        if let Some(members) = rooms.get_mut(&path) {
            members.retain(|(other, _)| *other != id);
            if members.is_empty() {
                rooms.remove(&path);
            }
        }
    }
    let _ = writer.await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
