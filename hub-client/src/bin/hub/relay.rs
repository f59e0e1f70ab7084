//! `hub relay`: the relay, run natively.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use hub_client::relay_server::{serve, Relay};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::shutdown_signal;

pub(crate) async fn run_relay(listen: SocketAddr, relay: Relay) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!("relay listening on ws://{addr}/v1/clusters/{{cluster_id}}/connect");
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("listening on {addr}");
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    serve(listener, Arc::new(relay), stop_rx).await?;
    tracing::info!("relay stopped");
    Ok(())
}
