//! `hub run`: the long-running hub. It keeps the relay connection and the peer sessions, answers
//! pairing requests (founder), records peers as they show up, and serves the admin API
//! (`api`) on loopback.
//!
//! A home that holds no hub yet can run too: the API then serves `POST /api/federation/pair`,
//! and once that joins a cluster the hub connects as a member.
//!
//! The CLI finds a running hub through two files in the home: `api.url` (where the API listens)
//! and `cli.token` (mode 0600: an admin API token minted at start for the local CLI). Both are
//! removed on a clean shutdown; a stale pair left by a crash is detected by a failed request.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::rngs::OsRng;
use rand::RngCore;
use shared_proto::session::pairing::{refused_unreadable, PairingRequest};
use shared_proto::HubId;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::hub::{HubState, RelayState};
use crate::node::home::{Home, HomeError};
use crate::node::store::{StoreError, MANIFEST};
use crate::transport::lan::{Lan, LanConfig, LanEvent};
use crate::transport::peers::{LocalPolicy, PeerClient, PeerError, PeerEvent};
use crate::transport::relay::RelayEvent;
use crate::unix_ms;

/// Name of the API tokens `hub run` mints for the local CLI.
pub const CLI_TOKEN_NAME: &str = "cli (hub run)";

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
    Service(#[from] crate::hub::ServiceError),
    /// The peer layer.
    #[error(transparent)]
    Peer(#[from] PeerError),
    /// The API socket.
    #[error("admin API: {0}")]
    Io(#[from] std::io::Error),
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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            audit_head_interval: Duration::from_secs(30),
            audited: true,
            lan: Some(std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
            mdns: true,
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
    let refused: HashSet<HubId> = store
        .active_peers()?
        .into_iter()
        .filter(|p| p.suspended_at.is_some())
        .map(|p| p.id)
        .collect();
    let name = home.config().map(|c| c.name).unwrap_or_default();
    let policy = Arc::new(LocalPolicy::new(name));
    if let Ok(mut set) = policy.refused.write() {
        *set = refused;
    }
    let state = Arc::new(HubState {
        home: home.clone(),
        store: Mutex::new(store),
        policy,
        member: RwLock::new(None),
        relay: RwLock::new(RelayState::default()),
        joined: Notify::new(),
        joining: tokio::sync::Mutex::new(()),
        apps: crate::apps::AppHost::new(),
        peer_certs: RwLock::new(Default::default()),
        listings: Arc::new(tokio::sync::Semaphore::new(crate::hub::agent::MAX_LISTINGS)),
        calls: Mutex::new(Default::default()),
        audited: options.audited,
        quorum: Mutex::new(Default::default()),
        faults: Mutex::new(Default::default()),
        watchers: Arc::new(tokio::sync::Semaphore::new(
            crate::api::console::MAX_WATCHERS,
        )),
        lan: RwLock::new(None),
    });
    let addr = listener.local_addr()?;
    publish_cli_access(&state, addr)?;
    tracing::info!("admin API on http://{addr}/api/");

    let (stop_tx, stop_rx) = watch::channel(false);
    let app = crate::api::router(state.clone());
    let mut server_stop = stop_rx.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = server_stop.wait_for(|s| *s).await;
            })
            .await
    });
    let mut hub = tokio::spawn(hub_loop(state.clone(), stop_rx.clone(), options));
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
    state.apps.shutdown().await;
    withdraw_cli_access(&state);
    result.map_err(|e| DaemonError::Task(e.to_string()))?
}

/// Writes `api.url` and a fresh `cli.token` (older CLI tokens are deleted).
fn publish_cli_access(state: &HubState, addr: SocketAddr) -> Result<(), DaemonError> {
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    let token = crate::api::format_api_token(&secret);
    {
        let store = state.store();
        store.delete_api_tokens(CLI_TOKEN_NAME)?;
        store.add_api_token(
            token.as_bytes(),
            CLI_TOKEN_NAME,
            true,
            unix_ms(),
            None,
            &Default::default(),
        )?;
    }
    state.home.write_secret("cli.token", token.as_bytes())?;
    state
        .home
        .write_public("api.url", format!("http://{addr}").as_bytes())?;
    Ok(())
}

fn withdraw_cli_access(state: &HubState) {
    let _ = std::fs::remove_file(state.home.dir().join("api.url"));
    let _ = std::fs::remove_file(state.home.dir().join("cli.token"));
    let _ = state.store().delete_api_tokens(CLI_TOKEN_NAME);
}

/// The relay connection and sessions, once the home holds a hub.
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
    let home = &state.home;
    let config = home.relay_config(None)?;
    let me = config.credentials.hub_id;
    let identity = home.noise_identity()?;
    let lan = match options.lan {
        Some(listen) => start_lan(&state, &config, listen, options.mdns).await,
        None => {
            tracing::info!("LAN path off (--no-lan): every message goes by the relay");
            None
        }
    };
    if let Ok(mut view) = state.lan.write() {
        *view = lan.as_ref().map(|(lan, _)| lan.view());
    }
    let mut peers = PeerClient::spawn_with(config, identity, state.policy.clone(), lan)?;
    if let Ok(mut m) = state.member.write() {
        *m = Some(peers.handle());
    }
    tracing::info!(hub = %me, cluster = %home.cluster_id()?, "hub running");
    let founder = home.is_founder();
    let mut heads = tokio::time::interval(options.audit_head_interval);
    heads.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        let event = tokio::select! {
            _ = stop.wait_for(|s| *s) => break Ok(()),
            event = peers.next_event() => event,
            _ = heads.tick() => {
                let with_sessions: Vec<HubId> = state
                    .peer_certs
                    .read()
                    .map(|c| c.keys().copied().collect())
                    .unwrap_or_default();
                let online = state.online();
                for peer in with_sessions.into_iter().filter(|p| online.contains(p)) {
                    send_reports(&state, &peers, peer);
                }
                continue;
            }
        };
        let Some(event) = event else {
            break Ok(());
        };
        if let Err(e) = handle_event(&state, &peers, me, founder, event).await {
            break Err(e);
        }
    };
    peers.shutdown().await;
    if let Ok(mut view) = state.lan.write() {
        *view = None;
    }
    result
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

async fn handle_event(
    state: &Arc<HubState>,
    peers: &PeerClient,
    me: HubId,
    founder: bool,
    event: PeerEvent,
) -> Result<(), DaemonError> {
    match event {
        PeerEvent::Relay(RelayEvent::Connected { online }) => {
            tracing::info!(
                "connected to the relay; {} other hub(s) online",
                online.len()
            );
            let hubs: Vec<HubId> = online.to_vec();
            state
                .blocking(move |state| {
                    let store = state.store();
                    let now = unix_ms();
                    for hub in hubs {
                        store.touch_peer(hub, now)?;
                    }
                    Ok(())
                })
                .await?;
            state.update_relay(|r| {
                r.connected = true;
                r.online = online.into_iter().collect();
                r.last_error = None;
            });
        }
        PeerEvent::Relay(RelayEvent::Disconnected {
            reason,
            retry_in,
            code,
        }) => {
            state.update_relay(|r| {
                r.connected = false;
                r.online.clear();
                r.last_error = Some(reason.clone());
            });
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
        PeerEvent::Relay(RelayEvent::PeerJoined(hub)) => {
            tracing::info!(%hub, "peer online");
            touch_peer(state, hub).await?;
            state.update_relay(|r| {
                r.online.insert(hub);
            });
        }
        PeerEvent::Relay(RelayEvent::PeerLeft(hub)) => {
            tracing::info!(%hub, "peer offline");
            touch_peer(state, hub).await?;
            state.update_relay(|r| {
                r.online.remove(&hub);
            });
        }
        PeerEvent::Relay(RelayEvent::RateLimited { dropped, .. }) => {
            // The relay client logged it; `hub status` shows it.
            state.update_relay(|r| {
                r.rate_limited += 1;
                r.dropped += u64::from(dropped);
                r.last_rate_limited_ms = Some(unix_ms());
            });
        }
        PeerEvent::Relay(RelayEvent::Revocations(list)) => {
            let version = list.version();
            // Revoked hubs' certificates and reports count no more.
            if let Ok(mut certs) = state.peer_certs.write() {
                let mut quorum = state
                    .quorum
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                certs.retain(|hub, cert| {
                    let revoked = list.is_revoked(&cert.fingerprint(), &cert.key_hash());
                    if revoked {
                        quorum.forget(*hub);
                    }
                    !revoked
                });
            }
            let kept = state
                .blocking(move |state| Ok(state.store().keep_revocations(&list)?))
                .await?;
            if kept {
                tracing::info!(version, "new revocation list");
            }
        }
        PeerEvent::Established { certificate } => {
            let to = certificate.hub_id();
            if let Ok(mut certs) = state.peer_certs.write() {
                certs.insert(to, (*certificate).clone());
            }
            let manifest = state
                .blocking(move |state| {
                    let store = state.store();
                    state.home.record_peer(&store, &certificate)?;
                    Ok(store.document(MANIFEST)?)
                })
                .await?;
            // Pass the manifest on; the peer keeps it if it is newer than its own. From another
            // task: this loop is the only reader of the events, and must not wait on the sender.
            if let Some(doc) = manifest {
                let handle = peers.handle();
                tokio::spawn(async move {
                    if let Err(e) = handle.send_manifest(to, &doc.body).await {
                        tracing::debug!(peer = %to, "manifest not sent: {e}");
                    }
                });
            }
            send_reports(state, peers, to);
        }
        PeerEvent::AuditHead { from, head } => {
            let key = state
                .peer_certs
                .read()
                .ok()
                .and_then(|c| c.get(&from).map(|cert| *cert.identity_key()));
            let Some(key) = key else {
                return Ok(());
            };
            let head = match shared_proto::audit::Head::verify(&head, from, &key) {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(peer = %from, "audit head refused: {e}");
                    state.record_fault(from, "audit_head", &e.to_string()).await;
                    return Ok(());
                }
            };
            let check = state
                .blocking(move |state| Ok(state.store().keep_peer_audit_head(&head)?))
                .await?;
            if let (Some(why), Some(kind)) = (check.problem(head.seq), check.kind()) {
                // Recorded at most once a minute for each kind of problem.
                if state.due(from, kind) {
                    tracing::warn!(peer = %from, "audit log inconsistent: {why}");
                    let entry =
                        crate::node::audit::entry("audit.inconsistent", Some(from), "", &why);
                    state.record(entry).await;
                }
            }
        }
        PeerEvent::Manifest { from, manifest } => {
            let kept = state
                .blocking(move |state| Ok(state.home.keep_manifest(&state.store(), &manifest)))
                .await?;
            match kept {
                Ok(true) => tracing::info!(%from, "newer cluster manifest"),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(%from, "manifest refused: {e}");
                    state.record_fault(from, "manifest", &e.to_string()).await;
                }
            }
        }
        PeerEvent::Views { from, views } => {
            if !state.peer_certs.read().is_ok_and(|c| c.contains_key(&from)) {
                return Ok(());
            }
            match shared_proto::audit::Views::decode(&views) {
                Ok(report) => state
                    .quorum
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .keep(from, report, unix_ms()),
                Err(e) => {
                    tracing::warn!(%from, "views refused: {e}");
                    state.record_fault(from, "views", &e.to_string()).await;
                }
            }
        }
        PeerEvent::HandshakeRefused { peer, reason } => {
            state.record_fault(peer, "handshake", &reason).await;
        }
        PeerEvent::Pairing { from, message } => {
            let answer = if founder {
                state
                    .blocking(move |state| Ok(answer_pairing(state, me, &message)))
                    .await?
            } else {
                refused_unreadable("this hub does not issue pairing tokens")
            };
            let handle = peers.handle();
            tokio::spawn(async move {
                if let Err(e) = handle.send_raw(from, answer).await {
                    tracing::warn!(guest = %from, "pairing answer not sent: {e}");
                }
            });
        }
        PeerEvent::Message { from, message } => {
            tracing::debug!(%from, bytes = message.len(), "message");
        }
        PeerEvent::AppRequest { from, message } => {
            // Bounds checked here, in order; listings and calls run on their own tasks.
            state.serve_peer(peers.handle(), from, message);
        }
        PeerEvent::SessionFailed { peer, reason } => {
            tracing::debug!(%peer, "session failed: {reason}");
        }
        // The LAN path logs its links; a peer linked is a peer seen.
        PeerEvent::LinkUp { peer, .. } => touch_peer(state, peer).await?,
        _ => {}
    }
    Ok(())
}

/// Sends `to` this hub's signed audit head, and what it sees of the other hubs it has sessions
/// with (for `to`'s quorum checks), from another task.
fn send_reports(state: &Arc<HubState>, peers: &PeerClient, to: HubId) {
    let state = state.clone();
    let handle = peers.handle();
    tokio::spawn(async move {
        let made = state
            .blocking(move |state| {
                let store = state.store();
                let (seq, mac) = store.audit_head()?;
                let credentials = state.home.credentials()?;
                let head = shared_proto::audit::Head {
                    hub: credentials.hub_id,
                    seq,
                    mac,
                    at_ms: unix_ms(),
                };
                let heads = store.peer_audit_macs(None)?;
                let others: Vec<HubId> = state
                    .peer_certs
                    .read()
                    .map(|c| c.keys().copied().filter(|h| *h != to).collect())
                    .unwrap_or_default();
                let views = shared_proto::audit::Views {
                    epoch: store.document(MANIFEST)?.map(|d| d.serial),
                    views: others
                        .into_iter()
                        .filter_map(|h| state.view_of(h, &heads))
                        .collect(),
                };
                Ok((head.sign(&credentials.identity), views.encode()))
            })
            .await;
        match made {
            Ok((head, views)) => {
                if let Err(e) = handle.send_audit_head(to, &head).await {
                    tracing::debug!(peer = %to, "audit head not sent: {e}");
                }
                if let Err(e) = handle.send_views(to, &views).await {
                    tracing::debug!(peer = %to, "views not sent: {e}");
                }
            }
            Err(e) => tracing::warn!("audit head not signed: {e}"),
        }
    });
}

/// Records that `hub` was seen now.
async fn touch_peer(state: &Arc<HubState>, hub: HubId) -> Result<(), DaemonError> {
    state
        .blocking(move |state| Ok(state.store().touch_peer(hub, unix_ms())?))
        .await?;
    Ok(())
}

/// The founder's answer to a pairing request; never fails outward (a refusal is an answer).
fn answer_pairing(state: &HubState, me: HubId, message: &[u8]) -> Vec<u8> {
    let home = &state.home;
    let local = match home.noise_identity() {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("pairing: cannot load this hub's identity: {e}");
            return refused_unreadable("the issuer cannot answer now");
        }
    };
    let request = match PairingRequest::read(&local, me, message, &mut OsRng) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("pairing request refused: {e}");
            return refused_unreadable("cannot read the pairing request");
        }
    };
    let name = request.name.clone();
    let store = state.store();
    match home.answer_pairing(&store, &local, request) {
        Ok((answer, Ok(peer))) => {
            tracing::info!(hub = %peer.id, %name, trust = %peer.trust, "paired a new hub");
            let why = format!("{name} joined as {}", peer.trust);
            let entry = crate::node::audit::entry("pairing", Some(peer.id), "allowed", &why);
            crate::node::audit::record(home, &store, entry);
            answer
        }
        Ok((answer, Err(refusal))) => {
            tracing::warn!(%name, "pairing refused: {refusal}");
            let why = format!("{name}: {refusal}");
            let entry = crate::node::audit::entry("pairing", None, "refused", &why);
            crate::node::audit::record(home, &store, entry);
            answer
        }
        Err(e) => {
            tracing::error!(%name, "pairing failed: {e}");
            refused_unreadable("the issuer failed to record the pairing")
        }
    }
}
