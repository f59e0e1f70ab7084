//! `hub relay`: the relay, run natively.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use hub_client::relay_server::{serve, Relay};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::shutdown_signal;

/// Descriptors `hub relay` needs besides one per connection: the listener, the state directory's
/// files, the runtime's own.
const SPARE_FILES: u64 = 64;

/// Raises the open-file soft limit to what `max_connections` needs, up to the hard limit, and says
/// what it got: below that, connections past the limit are refused by the system.
pub(crate) fn raise_open_files(max_connections: usize) {
    let want = max_connections as u64 + SPARE_FILES;
    match rlimit::increase_nofile_limit(want) {
        Ok(got) if got >= want => tracing::info!("open-file limit {got}"),
        Ok(got) => tracing::warn!(
            "open-file limit {got} (the hard limit) is below the {want} that --max-connections \
             {max_connections} needs: connections past it will be refused; raise the hard limit \
             (ulimit -Hn, or LimitNOFILE= in a systemd unit) or lower --max-connections"
        ),
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
}

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
