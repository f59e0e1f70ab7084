//! `hub run`: the long-running hub with its admin API.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use hub_client::node::home::Home;
use tokio::net::TcpListener;

use crate::shutdown_signal;

pub(crate) async fn run_hub(
    home: Home,
    api_listen: SocketAddr,
    options: hub_client::daemon::Options,
) -> Result<()> {
    if !api_listen.ip().is_loopback() {
        tracing::warn!("the admin API listens on {api_listen}, not loopback: anyone who can reach it and holds a token can manage this hub");
    }
    let listener = TcpListener::bind(api_listen)
        .await
        .with_context(|| format!("cannot listen on {api_listen}"))?;
    // Tests and scripts read this line to learn the port when listening on port 0.
    println!("admin API on http://{}", listener.local_addr()?);
    hub_client::daemon::run_with(home, listener, shutdown_signal(), options).await?;
    Ok(())
}
