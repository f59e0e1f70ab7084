//! Commands that open their own relay connection when no `hub run` serves this hub: `hub ping`
//! (offline), `hub debug listen` / `send`, and the check that the hub is not running.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use hub_client::node::home::Home;
use hub_client::transport::peers::{PeerClient, PeerError, PeerEvent};
use hub_client::{RelayClient, RelayEvent};
use shared_proto::HubId;

use crate::api_client::Api;
use crate::args::ConnArgs;
use crate::shutdown_signal;

/// Refuses to open a second relay connection for a hub that `hub run` serves: the relay keeps
/// one connection per hub id, so the newer one would replace the running hub's (4004). Commands
/// that try the API first (`ping`, `peers revoke`) have checked already; the others call this.
pub(crate) async fn ensure_not_running(home: &Home) -> Result<()> {
    if Api::find(home).await?.is_some() {
        bail!(
            "this hub is running (`hub run`): a second connection would replace it at the relay; \
             use `hub peers`, `hub ping` or `hub status`, which go through it, or stop it first"
        );
    }
    Ok(())
}

/// Connects with the home's credentials; keeps any newer revocation list it hears of.
pub(crate) async fn connect(home: &Home, conn: &ConnArgs) -> Result<(RelayClient, Vec<HubId>)> {
    let config = home.relay_config(conn.relay.as_deref())?;
    let relay = config.relay_url.clone();
    let mut client = RelayClient::spawn(config)?;
    let online = tokio::time::timeout(Duration::from_secs(conn.timeout), async {
        loop {
            match client.next_event().await {
                Some(RelayEvent::Connected { online }) => return Ok(online),
                Some(RelayEvent::Disconnected {
                    retry_in: None,
                    reason,
                    code,
                }) => bail!(
                    "the relay refused this hub: {reason} (close code {})",
                    code.map_or_else(|| "none".to_owned(), |c| c.to_string())
                ),
                Some(RelayEvent::Disconnected { reason, .. }) => {
                    tracing::warn!("relay: {reason}; retrying");
                }
                Some(RelayEvent::Revocations(list)) => {
                    home.keep_revocations(&list)?;
                }
                Some(_) => {}
                None => bail!("the relay client stopped"),
            }
        }
    })
    .await
    .with_context(|| format!("no admission from {relay} within {} s", conn.timeout))??;
    Ok((client, online))
}

/// Starts the peer layer with the home's identity and waits until the relay admits the hub.
pub(crate) async fn connect_peers(home: &Home, conn: &ConnArgs) -> Result<PeerClient> {
    let config = home.relay_config(conn.relay.as_deref())?;
    let relay = config.relay_url.clone();
    let mut peers = PeerClient::spawn(config, home.noise_identity()?)?;
    tokio::time::timeout(Duration::from_secs(conn.timeout), async {
        loop {
            match peers.next_event().await {
                Some(PeerEvent::Relay(RelayEvent::Connected { .. })) => return Ok(()),
                Some(PeerEvent::Relay(RelayEvent::Disconnected {
                    retry_in: None,
                    reason,
                    code,
                })) => bail!(
                    "the relay refused this hub: {reason} (close code {})",
                    code.map_or_else(|| "none".to_owned(), |c| c.to_string())
                ),
                Some(PeerEvent::Relay(RelayEvent::Revocations(list))) => {
                    home.keep_revocations(&list)?;
                }
                Some(_) => {}
                None => bail!("the peer client stopped"),
            }
        }
    })
    .await
    .with_context(|| format!("no admission from {relay} within {} s", conn.timeout))??;
    Ok(peers)
}

pub(crate) async fn ping(home: &Home, peer: HubId, count: u32, conn: ConnArgs) -> Result<()> {
    let peers = connect_peers(home, &conn).await?;
    let limit = Duration::from_secs(conn.timeout);
    let mut rtts = Vec::new();
    for i in 0..count.max(1) {
        let rtt = peers
            .ping(peer, limit)
            .await
            .with_context(|| format!("ping {peer}"))?;
        let note = if i == 0 {
            " (includes the handshake)"
        } else {
            ""
        };
        println!(
            "reply from {peer}: {:.2} ms{note}",
            rtt.as_secs_f64() * 1000.0
        );
        rtts.push(rtt);
    }
    if rtts.len() > 1 {
        let mut steady: Vec<Duration> = rtts[1..].to_vec();
        steady.sort();
        println!(
            "{} pings; after the handshake: min {:.2} ms, median {:.2} ms, max {:.2} ms",
            rtts.len(),
            steady[0].as_secs_f64() * 1000.0,
            steady[steady.len() / 2].as_secs_f64() * 1000.0,
            steady[steady.len() - 1].as_secs_f64() * 1000.0
        );
    }
    Ok(())
}

pub(crate) async fn debug_listen(home: &Home, conn: ConnArgs, count: Option<usize>) -> Result<()> {
    ensure_not_running(home).await?;
    let mut peers = connect_peers(home, &conn).await?;
    println!("joined as {}", home.certificate()?.hub_id());
    let mut received = 0;
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            event = peers.next_event() => match event {
                Some(PeerEvent::Message { from, message }) => {
                    println!("message from {from}: {}", String::from_utf8_lossy(&message));
                    received += 1;
                    if count.is_some_and(|n| received >= n) {
                        break;
                    }
                }
                Some(PeerEvent::Relay(RelayEvent::PeerJoined(hub))) => println!("joined {hub}"),
                Some(PeerEvent::Relay(RelayEvent::PeerLeft(hub))) => println!("left {hub}"),
                Some(PeerEvent::Relay(RelayEvent::Revocations(list))) => {
                    home.keep_revocations(&list)?;
                    println!("revocation list version {}", list.version());
                }
                Some(PeerEvent::Relay(RelayEvent::Connected { online })) => {
                    println!("connected; {} other hub(s) online", online.len());
                }
                Some(PeerEvent::Relay(RelayEvent::Disconnected { reason, retry_in: None, code })) => {
                    println!("disconnected for good: {reason}");
                    bail!("disconnected for good: {reason} (close code {code:?})")
                }
                Some(PeerEvent::Relay(RelayEvent::Disconnected { reason, retry_in, .. })) => {
                    println!("disconnected ({reason}); retrying in {retry_in:?}");
                }
                Some(_) => {}
                None => break,
            }
        }
    }
    Ok(())
}

pub(crate) async fn debug_send(
    home: &Home,
    conn: ConnArgs,
    to: HubId,
    message: String,
) -> Result<()> {
    ensure_not_running(home).await?;
    let peers = connect_peers(home, &conn).await?;
    peers.send(to, message.into_bytes()).await?;
    // The session is ordered: the answer to a ping sent after the message proves its delivery.
    let rtt = peers
        .ping(to, Duration::from_secs(conn.timeout))
        .await
        .map_err(|e| match e {
            PeerError::Session { reason, .. } if reason == "not online" => {
                anyhow::anyhow!("{to} is not online in this cluster")
            }
            e => anyhow::anyhow!(e),
        })?;
    println!(
        "delivered to {to} over an end-to-end session (round trip {:.2} ms)",
        rtt.as_secs_f64() * 1000.0
    );
    Ok(())
}
