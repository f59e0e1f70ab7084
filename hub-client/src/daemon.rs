//! `hub run`: the long-running hub. It serves the admin API (`api`) on loopback, and once the
//! home holds a hub it keeps the relay connection, the LAN links and the peer sessions
//! (`transport::peers`), and hands what happens to the hub (`hub`): an event loop that only
//! dispatches.
//!
//! A home that holds no hub yet can run too: the API then serves `POST /api/federation/pair`,
//! and once that joins a cluster the hub connects as a member. The CLI finds the running hub
//! through the files `node::access` names.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::hub::{HubState, Member, ServiceError};
use crate::node::home::{Home, HomeError};
use crate::node::store::StoreError;
use crate::transport::lan::{Lan, LanConfig, LanEvent};
use crate::transport::peers::{Inbound, PeerClient, PeerError, PeerEvent, Serving};
use crate::transport::relay::RelayEvent;

/// Why the hub stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The data directory or store.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The hub's service.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The peer layer.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The API socket.
    #[error("admin API: {0}")]
    Io(#[from] std::io::Error),
    /// The CLI's access files.
    #[error("publishing the CLI's access: {0}")]
    Access(#[from] crate::node::access::AccessError),
    /// The hub's task ended abnormally (a bug: it panicked).
    #[error("the hub task failed: {0}")]
    Task(String),
    /// The relay refused this hub for good (revoked, expired certificate, ...).
    #[error("the relay refused this hub: {reason} (close code {code})")]
    Refused {
        /// The close code.
        code: String,
        /// The reason.
        reason: String,
    },
}

/// How the hub runs, beyond its home.
#[derive(Debug, Clone)]
pub struct Options {
    /// How often this hub sends its signed audit head to the peers it has sessions with (also
    /// when each session comes up).
    pub audit_head_interval: Duration,
    /// Whether the running hub appends to the audit log. Only a benchmark turns it off, to
    /// measure what auditing costs a call (`hub run --bench-unaudited`, hidden, warned about).
    pub audited: bool,
    /// Where the LAN path accepts direct links (`0.0.0.0:0` by default); `None`: no LAN path
    /// (`hub run --no-lan`).
    pub lan: Option<std::net::SocketAddr>,
    /// Whether the LAN path advertises and browses by mDNS.
    pub mdns: bool,
    /// Whether the relay connection reacts to changes of this host's network at once (Linux).
    /// Only a benchmark turns it off, to measure what it saves a roaming hub
    /// (`hub run --bench-no-network-watch`, hidden).
    pub watch_network: bool,
    /// Archive audit entries older than this (checked at start and every hour) into
    /// `HOME/audit-archive/`, as `hub audit archive` does; `None` keeps them in the store.
    pub audit_retention: Option<Duration>,
    /// How long the certificates this hub signs at pairing are valid (a year; minutes only in
    /// tests: `hub run --cert-validity-minutes`, hidden).
    pub cert_validity: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            audit_head_interval: Duration::from_secs(30),
            audited: true,
            lan: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            mdns: true,
            watch_network: true,
            audit_retention: None,
            cert_validity: Duration::from_millis(crate::node::home::CERT_VALIDITY_MS),
        }
    }
}

/// Runs the hub until `shutdown` resolves (or the relay refuses it for good), serving the admin
/// API on `listener`.
pub async fn run(
    home: Home,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    run_with(home, listener, shutdown, Options::default()).await
}

/// [`run`] with `options`.
pub async fn run_with(
    home: Home,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()>,
    options: Options,
) -> Result<(), DaemonError> {
    if !options.audited {
        tracing::warn!("auditing is OFF (--bench-unaudited): nothing is recorded in the audit log");
    }
    let store = home.store()?;
    let state = Arc::new(HubState::new(
        home.clone(),
        store,
        options.audited,
        options.cert_validity.as_millis() as u64,
    )?);
    let addr = listener.local_addr()?;
    crate::node::access::publish(&home, &state.store(), addr)?;
    tracing::info!("admin API on http://{addr}/api/");

    let (stop_tx, stop_rx) = watch::channel(false);
    let app = crate::api::router(state.clone());
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        // Small answers (an MCP result, an event) go out at once, not after the client's
        // delayed ACK.
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY not set: {e}");
            }
        });
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let retention = options.audit_retention;
    let mut hub = tokio::spawn(hub_loop(state.clone(), stop_rx.clone(), options));
    let mut flush_stop = stop_rx.clone();
    let flushing = state.clone();
    let token_uses = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stop = tokio::select! {
                _ = every.tick() => false,
                _ = flush_stop.wait_for(|s| *s) => true,
            };
            if stop {
                break;
            }
            flushing.flush_token_uses().await;
        }
    });
    let retention = retention.map(|keep| {
        let home = home.clone();
        let stop = stop_rx.clone();
        tokio::spawn(archive_old_entries(home, keep, stop))
    });
    let result = tokio::select! {
        () = shutdown => {
            tracing::info!("shutting down");
            let _ = stop_tx.send(true);
            (&mut hub).await
        }
        r = &mut hub => r,
    };
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = token_uses.await;
    if let Some(task) = retention {
        let _ = task.await;
    }
    state.flush_token_uses().await;
    if let Err(e) = state.journal.sync().await {
        tracing::error!("the last audit entries may be lost: {e}");
    }
    state.apps.shutdown().await;
    crate::node::access::withdraw(&home, &state.store());
    result.map_err(|e| DaemonError::Task(e.to_string()))?
}

/// The audit retention: at start and every hour, entries older than `keep` go to a new file in
/// `HOME/audit-archive/` (`node::audit::archive`).
async fn archive_old_entries(home: Home, keep: Duration, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(3600));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !home.is_initialized() {
            continue;
        }
        let home = home.clone();
        let archived = tokio::task::spawn_blocking(move || {
            let now = crate::unix_ms();
            let dir = home.dir().join("audit-archive");
            std::fs::create_dir_all(&dir).map_err(|source| {
                crate::node::audit::ArchiveError::Io {
                    path: dir.clone(),
                    source,
                }
            })?;
            let out = dir.join(format!("audit-{now}.jsonl"));
            let store = home.store()?;
            let before = now.saturating_sub(keep.as_millis() as u64);
            crate::node::audit::archive(&home, &store, before, &out).map(|a| (a, out))
        })
        .await;
        match archived {
            Ok(Ok((Some(a), out))) => tracing::info!(
                entries = a.entries,
                through = a.header.through_seq,
                "audit entries past the retention archived to {}",
                out.display()
            ),
            Ok(Ok((None, _))) => {}
            Ok(Err(e)) => tracing::error!("audit retention: {e}"),
            Err(e) => tracing::error!("audit retention: {e}"),
        }
    }
}

/// How a member's run ended.
enum Ended {
    /// Told to stop (or the relay client stopped).
    Stopped,
    /// The cluster moved to a new CA key and this hub followed: run again, in the new room.
    Moved,
}

/// The relay connection and sessions, once the home holds a hub; again in the new cluster after
/// a CA key rotation.
async fn hub_loop(
    state: Arc<HubState>,
    mut stop: watch::Receiver<bool>,
    options: Options,
) -> Result<(), DaemonError> {
    if !state.home.is_initialized() {
        tracing::info!(
            "this home holds no hub yet: waiting for POST /api/federation/pair (or `hub join`)"
        );
    }
    while !state.home.is_initialized() {
        // Woken by a pairing through the API; a `hub join` run beside it is noticed within 1 s.
        tokio::select! {
            () = state.joined.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    }
    while let Ended::Moved = run_member(&state, &mut stop, &options).await? {
        state.book.forget_cluster();
        tracing::info!("starting again in the new cluster");
    }
    Ok(())
}

/// One run of the hub as a member of its cluster: until told to stop, or until it follows the
/// cluster to a new CA key.
async fn run_member(
    state: &Arc<HubState>,
    stop: &mut watch::Receiver<bool>,
    options: &Options,
) -> Result<Ended, DaemonError> {
    let home = state.home.clone();
    if tokio::task::spawn_blocking(move || home.resume_move())
        .await
        .map_err(|e| DaemonError::Task(e.to_string()))??
    {
        tracing::warn!(
            "finished moving to the cluster of a new CA key (a crash had interrupted it)"
        );
    }
    let mut peers = start_member(state, options).await?;
    let member = state.joined_member()?;
    tracing::info!(hub = %member.hub_id, cluster = %state.home.cluster_id()?, "hub running");
    let mut heads = tokio::time::interval(options.audit_head_interval);
    heads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let own = state.home.certificate_held()?;
    if let Some(warning) = crate::hub::view::expiry_warning(&own, crate::unix_ms()) {
        tracing::warn!("{warning}");
    }
    // This hub's certificate is renewed on its own task (it waits for an admin's answer, which
    // this loop must keep delivering); one at a time.
    let mut renewing: Option<tokio::task::JoinHandle<()>> = None;
    let result = loop {
        let renew_at = renewing.is_none().then(|| state.renewal_due(&own));
        let event = tokio::select! {
            _ = stop.wait_for(|s| *s) => break Ok(Ended::Stopped),
            event = peers.next_event() => Some(event),
            _ = heads.tick() => {
                state.send_all_reports(&member);
                continue;
            }
            () = sleep_until_ms(renew_at) => {
                // Still due (a renewal asked through the API may have moved it meanwhile).
                if state.renewal_is_due(crate::unix_ms()) {
                    let (state, member) = (state.clone(), member.clone());
                    renewing = Some(tokio::spawn(async move {
                        let _ = state.renew(&member).await;
                    }));
                }
                continue;
            }
            // This loop's renewal ended.
            _ = async {
                match renewing.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            } => {
                renewing = None;
                continue;
            }
            // A renewal asked through the API or by a manifest ended: the next due time moved.
            () = state.renewals.done.notified() => continue,
            () = sleep_until_ms(state.book.repeats_timeout()) => None,
        };
        let Some(event) = event else {
            state.record_repeats_due(false).await;
            continue;
        };
        let Some(event) = event else {
            break Ok(Ended::Stopped);
        };
        match dispatch(state, &member, event).await {
            Ok(true) => {}
            Ok(false) => break Ok(Ended::Moved),
            Err(e) => break Err(e),
        }
    };
    if let Some(task) = renewing {
        task.abort();
    }
    peers.shutdown().await;
    state.record_repeats_due(true).await;
    state.book.set_lan(None);
    state.set_member(None);
    result
}

/// Sleeps until `at` (Unix ms), or for ever if `None`.
async fn sleep_until_ms(at: Option<u64>) {
    match at {
        Some(at) => {
            let wait = at.saturating_sub(crate::unix_ms());
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        None => std::future::pending().await,
    }
}

/// Starts the peer layer (and the LAN path) and makes the hub a member.
async fn start_member(state: &Arc<HubState>, options: &Options) -> Result<PeerClient, DaemonError> {
    let home = &state.home;
    let mut config = home.relay_config(None)?;
    // A hub that roams reconnects as soon as its network changes, not at its next probe.
    if options.watch_network {
        config.network = crate::transport::netwatch::watch_network();
    } else {
        tracing::warn!("not watching the network for changes (--bench-no-network-watch)");
    }
    let identity = home.noise_identity()?;
    let certificate = home.certificate()?;
    let lan = match options.lan {
        Some(listen) => start_lan(state, &config, listen, options.mdns).await,
        None => {
            tracing::info!("LAN path off (--no-lan): every message goes by the relay");
            None
        }
    };
    state.book.set_lan(lan.as_ref().map(|(lan, _)| lan.view()));
    let credentials = config.credentials.clone();
    let peers = PeerClient::spawn_with(config, identity, Serving::Application, lan)?;
    state.set_member(Some(Member {
        peers: peers.handle(),
        hub_id: certificate.hub_id(),
        name: certificate.name().to_owned(),
        credentials,
    }));
    Ok(peers)
}

/// Starts the LAN path; a hub that cannot (no multicast, the port taken) goes on by the relay.
async fn start_lan(
    state: &HubState,
    config: &crate::transport::relay::RelayConfig,
    listen: std::net::SocketAddr,
    mdns: bool,
) -> Option<(Lan, tokio::sync::mpsc::Receiver<LanEvent>)> {
    let revocations = state.home.held_revocations(&state.store()).ok().flatten();
    let lan = LanConfig {
        credentials: config.credentials.clone(),
        listen,
        mdns,
        revocations,
    };
    match Lan::start(lan).await {
        Ok(lan) => Some(lan),
        Err(e) => {
            tracing::warn!("LAN path not started ({e}): every message goes by the relay");
            None
        }
    }
}

/// One event of the peer layer, handed to the hub; whether this run goes on (not if the hub
/// moved to a new cluster).
async fn dispatch(
    state: &Arc<HubState>,
    member: &Member,
    event: PeerEvent,
) -> Result<bool, DaemonError> {
    match event {
        PeerEvent::Relay(event) => return relay_event(state, event).await,
        PeerEvent::Inbound(Inbound::Manifest { from, manifest }) => {
            state.on_manifest(from, manifest).await?;
        }
        PeerEvent::Inbound(Inbound::AuditHead { from, head }) => {
            state.on_audit_head(from, head).await?;
        }
        PeerEvent::Inbound(Inbound::Views { from, views }) => state.on_views(from, views).await,
        PeerEvent::Inbound(Inbound::Version { from, version }) => {
            state.book.on_version(from, version);
        }
        PeerEvent::Inbound(request) => state.on_request(member, request),
        PeerEvent::Established { certificate } => {
            state.on_established(member, *certificate).await?;
        }
        PeerEvent::HandshakeRefused {
            peer,
            reason,
            over_lan,
        } => {
            state.on_handshake_refused(peer, &reason, over_lan).await;
        }
        PeerEvent::Pairing { from, message } => state.on_pairing(member, from, message).await?,
        PeerEvent::Message { from, message } => {
            tracing::debug!(%from, bytes = message.len(), "message");
        }
        PeerEvent::SessionFailed { peer, reason } => {
            tracing::debug!(%peer, "session failed: {reason}");
        }
        // The LAN path logs its links; a peer linked is a peer seen.
        PeerEvent::LinkUp { peer, .. } => state.touch_peer(peer).await?,
        _ => {}
    }
    Ok(true)
}

/// A relay event, handed to the hub; a relay that refuses this hub for good ends the loop, and
/// so does a move to a new cluster (`Ok(false)`).
async fn relay_event(state: &Arc<HubState>, event: RelayEvent) -> Result<bool, DaemonError> {
    match event {
        RelayEvent::Connected { online } => state.on_connected(online).await?,
        RelayEvent::Disconnected {
            reason,
            retry_in,
            code,
        } => {
            state.on_disconnected(&reason);
            match retry_in {
                Some(d) => tracing::warn!("relay: {reason}; reconnecting in {d:?}"),
                None => {
                    return Err(DaemonError::Refused {
                        code: code.map_or_else(|| "none".into(), |c| c.to_string()),
                        reason,
                    })
                }
            }
        }
        RelayEvent::PeerJoined(hub) => state.on_presence(hub, true).await?,
        RelayEvent::PeerLeft(hub) => state.on_presence(hub, false).await?,
        RelayEvent::RateLimited { dropped, .. } => state.on_rate_limited(dropped),
        RelayEvent::Revocations(list) => state.on_revocations(list).await?,
        RelayEvent::Successor(successor) => return Ok(!state.on_successor(*successor).await?),
        _ => {}
    }
    Ok(true)
}
