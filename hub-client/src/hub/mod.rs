//! The running hub's state and its service: what every surface (the CLI through the admin API,
//! the admin API itself, and next the MCP server and the console) calls, so that each rule lives
//! in one place. `daemon` runs it; `api` exposes it over HTTP.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use shared_proto::session::pairing::PairingToken;
use shared_proto::trust::TrustLevel;
use shared_proto::HubId;
use tokio::sync::Notify;

use crate::node::home::{Home, HomeError};
use crate::node::store::{PeerRecord, Store, StoreError, TokenTerms, MANIFEST, REVOCATIONS};
use crate::transport::join::JoinError;
use crate::transport::peers::{LocalPolicy, PeerError, PeerHandle};
use crate::unix_ms;

pub mod agent;
pub mod quorum;
pub mod score;
pub mod view;

use view::{
    CertificateView, IssuerView, JoinedView, LanPeerView, LanStatusView, PairingTokenView,
    PeerDetail, PeerView, PingView, RateLimitedView, RelayView, RevokedView, StatusView,
    SuspendedView,
};

/// Longest pairing-token lifetime the hub grants.
pub const MAX_PAIRING_TTL_S: u64 = 24 * 3600;

/// Why the service refused or failed a request. Each surface maps it to its own form (the admin
/// API to an HTTP status and a stable code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The request is malformed or out of range.
    #[error("{0}")]
    BadRequest(String),
    /// No such peer (or not in the state the request needs).
    #[error("{0}")]
    NotFound(String),
    /// This hub is not a member of a cluster yet.
    #[error("this hub is not a member of a cluster yet")]
    NotJoined,
    /// This hub is a member of a cluster already.
    #[error("this hub is already a member of a cluster")]
    AlreadyJoined,
    /// Only the founder (the hub holding the CA key) can do this.
    #[error("only the hub holding the cluster CA key (the founder) can do this")]
    NotFounder,
    /// The peer refused (it suspended this hub).
    #[error("{0}")]
    Refused(String),
    /// The token's issuer refused the pairing (invalid, used or expired token).
    #[error("{0}")]
    PairingRefused(String),
    /// The issuer of a pairing token is not online.
    #[error("{0}")]
    IssuerOffline(String),
    /// No answer in time.
    #[error("{0}")]
    Timeout(String),
    /// The peer could not be reached.
    #[error("{0}")]
    Unreachable(String),
    /// The relay could not be reached.
    #[error("{0}")]
    Relay(String),
    /// The data directory or store failed: an internal error.
    #[error(transparent)]
    Home(HomeError),
    /// The store failed: an internal error.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A blocking task failed (a bug).
    #[error("a hub task failed: {0}")]
    Task(String),
    /// A call of an app was refused or failed, with its stable code.
    #[error("{message}")]
    Call {
        /// The code.
        code: shared_proto::agent::CallErrorCode,
        /// Details.
        message: String,
    },
}

impl From<HomeError> for ServiceError {
    fn from(e: HomeError) -> Self {
        match e {
            HomeError::NotFounder => ServiceError::NotFounder,
            HomeError::NotInitialized(_) => ServiceError::NotJoined,
            HomeError::Store(e) => ServiceError::Store(e),
            e => ServiceError::Home(e),
        }
    }
}

/// The relay connection as the hub sees it.
#[derive(Debug, Clone, Default)]
pub(crate) struct RelayState {
    pub(crate) connected: bool,
    pub(crate) online: BTreeSet<HubId>,
    pub(crate) last_error: Option<String>,
    /// Times the relay said this hub was rate-limited, frames it dropped, and the last time.
    pub(crate) rate_limited: u64,
    pub(crate) dropped: u64,
    pub(crate) last_rate_limited_ms: Option<u64>,
}

/// State shared by the hub loop and the API handlers.
#[derive(Debug)]
pub(crate) struct HubState {
    pub(crate) home: Home,
    pub(crate) store: Mutex<Store>,
    pub(crate) policy: Arc<LocalPolicy>,
    pub(crate) member: RwLock<Option<PeerHandle>>,
    pub(crate) relay: RwLock<RelayState>,
    /// Woken when an unjoined hub joins through the API.
    pub(crate) joined: Notify,
    /// Serializes joins through the API.
    pub(crate) joining: tokio::sync::Mutex<()>,
    /// This hub's apps.
    pub(crate) apps: crate::apps::AppHost,
    /// The certificate each peer's current session was set up with (what calls are checked
    /// against: its identity key, trust level and roles).
    pub(crate) peer_certs:
        RwLock<std::collections::HashMap<HubId, shared_proto::trust::VerifiedPeer>>,
    /// Apps requests from peers being answered now (at most `agent::MAX_LISTINGS`).
    pub(crate) listings: Arc<tokio::sync::Semaphore>,
    /// Calls from peers running now, by peer and token (to cancel them, and audit that).
    pub(crate) calls: Mutex<std::collections::HashMap<(HubId, u64), agent::RunningCall>>,
    /// Whether this hub appends to its audit log (always, but in a benchmark).
    pub(crate) audited: bool,
    /// What other hubs report seeing of each peer.
    pub(crate) quorum: Mutex<quorum::Quorum>,
    /// When an entry of each kind was last recorded about each peer's faults (`due`).
    pub(crate) faults: Mutex<std::collections::HashMap<(HubId, &'static str), u64>>,
    /// Places for the console's event streams (`api::console::MAX_WATCHERS`).
    pub(crate) watchers: Arc<tokio::sync::Semaphore>,
    /// The LAN path, while it runs.
    pub(crate) lan: RwLock<Option<crate::transport::lan::LanView>>,
}

impl HubState {
    pub(crate) fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        // A poisoned lock means a handler panicked mid-call; SQLite transactions keep the data
        // consistent, so carry on with it.
        self.store
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The peer layer, once the hub runs as a member.
    pub(crate) fn member(&self) -> Option<PeerHandle> {
        self.member.read().ok().and_then(|m| m.clone())
    }

    pub(crate) fn relay_state(&self) -> RelayState {
        self.relay.read().map(|r| r.clone()).unwrap_or_default()
    }

    /// The peers reachable now: online at the relay or linked on the LAN.
    pub(crate) fn online(&self) -> BTreeSet<HubId> {
        let mut online = self.relay_state().online;
        if let Some(lan) = self.lan_view() {
            online.extend(
                lan.peers()
                    .into_iter()
                    .filter(|p| p.linked)
                    .map(|p| p.hub_id),
            );
        }
        online
    }

    pub(crate) fn lan_view(&self) -> Option<crate::transport::lan::LanView> {
        self.lan.read().ok().and_then(|l| l.clone())
    }

    /// The path messages to `hub` take now: `lan` (a verified direct link) or `relay`.
    pub(crate) fn path_to(&self, hub: &HubId) -> &'static str {
        match self.lan_view() {
            Some(lan) if lan.is_linked(hub) => "lan",
            _ => "relay",
        }
    }

    pub(crate) fn update_relay(&self, f: impl FnOnce(&mut RelayState)) {
        if let Ok(mut r) = self.relay.write() {
            f(&mut r);
        }
    }

    /// Refuses (suspended) or accepts a peer's requests from now on.
    pub(crate) fn set_refused(&self, peer: HubId, refused: bool) {
        if let Ok(mut set) = self.policy.refused.write() {
            if refused {
                set.insert(peer);
            } else {
                set.remove(&peer);
            }
        }
    }
}

/// The service: what the surfaces ask of the running hub. Store and file work runs on the
/// blocking pool, off the async worker threads.
impl HubState {
    /// Runs `f` on the blocking pool with this state (SQLite and file work stays off the async
    /// worker threads).
    pub(crate) async fn blocking<T, F>(self: &Arc<Self>, f: F) -> Result<T, ServiceError>
    where
        T: Send + 'static,
        F: FnOnce(&HubState) -> Result<T, ServiceError> + Send + 'static,
    {
        let state = self.clone();
        tokio::task::spawn_blocking(move || f(&state))
            .await
            .map_err(|e| ServiceError::Task(e.to_string()))?
    }

    /// A peer's trust score (`score`), from what this hub observed, and its audit head as held
    /// (an input of the score, which `/peers/{id}` also shows). Call it on the blocking pool.
    fn score_of(
        &self,
        store: &Store,
        id: HubId,
        now_ms: u64,
    ) -> Result<(score::TrustScore, Option<crate::node::store::PeerAuditHead>), StoreError> {
        let cert_not_after_ms = self
            .peer_certs
            .read()
            .ok()
            .and_then(|c| c.get(&id).map(|cert| cert.not_after_ms()));
        let quorum = self
            .view_of(id, &store.peer_audit_macs(Some(id))?)
            .map(|view| {
                self.quorum
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .check(&view, now_ms)
            });
        let inputs = score::ScoreInputs {
            calls_all_time: store.audit_counts(Some(id), 0)?,
            calls_last_day: store.audit_counts(Some(id), now_ms.saturating_sub(86_400_000))?,
            audit_head: store.peer_audit_head(id)?,
            cert_not_after_ms,
            quorum,
            now_ms,
        };
        Ok((score::trust_score(&inputs), inputs.audit_head))
    }

    /// Federation statistics over the last hour, day and all time, from the audit log.
    pub async fn stats(self: &Arc<Self>) -> Result<Vec<view::StatsWindow>, ServiceError> {
        self.blocking(|state| Ok(view::stats(&state.store(), unix_ms())?))
            .await
    }

    /// Whether an entry of `what` about `peer` may be recorded now: at most one per peer and
    /// kind a minute, so a peer that keeps at it cannot grow the log fast.
    pub(crate) fn due(&self, peer: HubId, what: &'static str) -> bool {
        let now = unix_ms();
        let mut last = self
            .faults
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match last.get(&(peer, what)) {
            Some(at) if now.saturating_sub(*at) < 60_000 => false,
            _ => {
                last.insert((peer, what), now);
                true
            }
        }
    }

    /// Records a fault of `peer` (`what`: `handshake`, `audit_head`, `manifest`, `views`), at
    /// most one per peer and kind a minute.
    pub(crate) async fn record_fault(self: &Arc<Self>, peer: HubId, what: &'static str, why: &str) {
        if self.due(peer, what) {
            let reason = format!("{what}: {why}");
            let entry = crate::node::audit::entry(
                crate::node::audit::PEER_FAULT,
                Some(peer),
                "refused",
                &reason,
            );
            self.record(entry).await;
        }
    }

    /// What this hub sees of `hub` now, for quorum reports and checks; `None` without a session.
    pub(crate) fn view_of(
        &self,
        hub: HubId,
        heads: &std::collections::HashMap<HubId, (u64, [u8; 32])>,
    ) -> Option<shared_proto::audit::View> {
        let cert_sha256 = self
            .peer_certs
            .read()
            .ok()?
            .get(&hub)
            .map(|c| c.fingerprint())?;
        let manifest_epoch = self
            .quorum
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .epoch(hub);
        Some(shared_proto::audit::View {
            hub,
            cert_sha256,
            manifest_epoch,
            head: heads.get(&hub).copied(),
        })
    }

    /// Appends an entry to the audit log (off the async threads; failures are logged).
    pub(crate) async fn record(self: &Arc<Self>, entry: crate::node::store::AuditEntry) {
        if !self.audited {
            return;
        }
        let _ = self
            .blocking(move |state| {
                crate::node::audit::record(&state.home, &state.store(), entry);
                Ok(())
            })
            .await;
    }

    /// This hub, its cluster, its relay connection (with a round trip measured now) and the
    /// documents it holds.
    pub async fn status(self: &Arc<Self>) -> Result<StatusView, ServiceError> {
        if !self.home.is_initialized() {
            return Ok(StatusView::not_joined());
        }
        let rtt = self.relay_rtt().await;
        let relay = self.relay_state();
        let lan = match self.lan_view() {
            Some(lan) => LanStatusView {
                enabled: true,
                listen: Some(lan.local_addr().to_string()),
                peers: lan
                    .peers()
                    .into_iter()
                    .map(|p| LanPeerView {
                        hub_id: p.hub_id.to_string(),
                        addrs: p.addrs.iter().map(ToString::to_string).collect(),
                        linked: p.linked,
                    })
                    .collect(),
            },
            None => LanStatusView::default(),
        };
        self.blocking(move |state| {
            let home = &state.home;
            let cert = home.certificate()?;
            let store = state.store();
            Ok(StatusView {
                joined: true,
                hub_id: Some(cert.hub_id().to_string()),
                name: Some(cert.name().to_owned()),
                cluster_id: Some(home.cluster_id()?.to_string()),
                trust_level: Some(cert.trust().as_str().to_owned()),
                founder: Some(home.is_founder()),
                relay: Some(RelayView {
                    url: home.config()?.relay_url,
                    connected: relay.connected,
                    rtt_ms: rtt.map(|d| d.as_secs_f64() * 1000.0),
                    last_error: relay.last_error,
                    rate_limited: relay.last_rate_limited_ms.map(|at| RateLimitedView {
                        times: relay.rate_limited,
                        dropped: relay.dropped,
                        last_ms_ago: unix_ms().saturating_sub(at),
                    }),
                }),
                peers_online: Some(relay.online.len()),
                lan: Some(lan),
                manifest_epoch: store.document(MANIFEST)?.map(|d| d.serial),
                revocation_version: store.document(REVOCATIONS)?.map(|d| d.serial),
                certificate: Some(CertificateView {
                    sha256: hex::encode(cert.fingerprint()),
                    not_before_ms: cert.not_before_ms(),
                    not_after_ms: cert.not_after_ms(),
                }),
            })
        })
        .await
    }

    /// Founder: a one-time pairing token for a new hub (only its hash is kept).
    pub async fn invite(
        self: &Arc<Self>,
        trust: TrustLevel,
        roles: Vec<String>,
        ttl_s: u64,
    ) -> Result<PairingTokenView, ServiceError> {
        if ttl_s == 0 || ttl_s > MAX_PAIRING_TTL_S {
            return Err(ServiceError::BadRequest(format!(
                "ttl_seconds must be 1 to {MAX_PAIRING_TTL_S}"
            )));
        }
        let terms = TokenTerms { trust, roles };
        self.blocking(move |state| {
            let token = state.home.invite(&terms, ttl_s * 1000)?;
            Ok(PairingTokenView {
                token: token.encode().map_err(HomeError::from)?,
                issuer: token.issuer.to_string(),
                cluster_id: token.cluster.to_string(),
                trust_level: terms.trust.as_str().to_owned(),
                roles: terms.roles,
                expires_at: unix_ms() + ttl_s * 1000,
                expires_in_seconds: ttl_s,
            })
        })
        .await
    }

    /// Joins a cluster with a pairing token (a hub that holds none yet); one join at a time.
    pub async fn join(
        self: &Arc<Self>,
        token: &PairingToken,
        name: &str,
    ) -> Result<JoinedView, ServiceError> {
        if name.is_empty() {
            return Err(ServiceError::BadRequest(
                "name (this hub's name) is required".into(),
            ));
        }
        let _one_at_a_time = self.joining.lock().await;
        if self.home.is_initialized() {
            return Err(ServiceError::AlreadyJoined);
        }
        let joined = crate::transport::join::join(&self.home, token, name, JOIN_TIMEOUT)
            .await
            .map_err(join_error)?;
        self.policy.set_name(joined.certificate.name());
        self.joined.notify_one();
        let cert = &joined.certificate;
        Ok(JoinedView {
            id: cert.hub_id().to_string(),
            name: cert.name().to_owned(),
            cluster_id: token.cluster.to_string(),
            trust_level: cert.trust().as_str().to_owned(),
            roles: cert.roles().to_vec(),
            issuer: IssuerView {
                id: joined.issuer.hub_id().to_string(),
                name: joined.issuer.name().to_owned(),
            },
        })
    }

    /// The active peers, most recently seen first, with their presence at the relay.
    pub async fn peers(self: &Arc<Self>) -> Result<Vec<PeerView>, ServiceError> {
        let online = self.online();
        self.blocking(move |state| {
            let store = state.store();
            let now_ms = unix_ms();
            store
                .active_peers()?
                .into_iter()
                .map(|p| {
                    let p_id = p.id;
                    let (score, _) = state.score_of(&store, p.id, now_ms)?;
                    let mut view = PeerView::new(p, Some(&online));
                    view.trust_score = Some(score.score);
                    if view.online == Some(true) {
                        view.path = Some(state.path_to(&p_id).to_owned());
                    }
                    Ok(view)
                })
                .collect()
        })
        .await
    }

    /// One peer (revoked ones too), with what it reports about itself if it is online.
    pub async fn peer(self: &Arc<Self>, id: HubId) -> Result<PeerDetail, ServiceError> {
        let record = self.known_peer(id).await?;
        let mut peer = PeerView::new(record, Some(&self.online()));
        if peer.online == Some(true) {
            peer.path = Some(self.path_to(&id).to_owned());
        }
        let (reported, report_error) = match self.member() {
            Some(member) if peer.online == Some(true) => {
                match member.info(id, Duration::from_secs(5)).await {
                    Ok(info) => (Some(info), None),
                    Err(e) => (None, Some(e.to_string())),
                }
            }
            _ => (None, Some("not online".to_owned())),
        };
        let (score, audit_head) = self
            .blocking(move |state| Ok(state.score_of(&state.store(), id, unix_ms())?))
            .await?;
        Ok(PeerDetail {
            peer,
            reported,
            report_error,
            audit_head,
            trust_score: Some(score),
        })
    }

    async fn known_peer(self: &Arc<Self>, id: HubId) -> Result<PeerRecord, ServiceError> {
        self.blocking(move |state| {
            state
                .store()
                .peer(id)?
                .ok_or_else(|| ServiceError::NotFound(format!("no peer {id}")))
        })
        .await
    }

    /// Founder: revokes a peer cluster-wide (see [`Home::revoke_peer`]); then its calls are
    /// refused here and the list is published through the relay, which closes the peer and
    /// delivers the list to every hub (their sessions with it drop).
    pub async fn revoke(
        self: &Arc<Self>,
        id: HubId,
        reason: String,
    ) -> Result<RevokedView, ServiceError> {
        let list = self
            .blocking(move |state| {
                let record = state
                    .store()
                    .peer(id)?
                    .ok_or_else(|| ServiceError::NotFound(format!("no peer {id}")))?;
                if record.revoked_at.is_some() {
                    return Err(ServiceError::NotFound(format!(
                        "peer {id} is already revoked"
                    )));
                }
                let list = state.home.revoke_peer(&record, reason.clone())?;
                let entry = crate::node::audit::entry("revoke", Some(id), "ok", &reason);
                crate::node::audit::record(&state.home, &state.store(), entry);
                Ok(list)
            })
            .await?;
        self.set_refused(id, true);
        if let Some(member) = self.member() {
            if let Err(e) = member.publish_revocations(list.bytes().to_vec()).await {
                tracing::warn!(
                    "revocation list not published now ({e}); the relay gets it on reconnect"
                );
            }
        }
        Ok(RevokedView {
            ok: true,
            id: id.to_string(),
            revocation_version: list.version(),
        })
    }

    /// Suspends (its requests are refused) or resumes an active peer.
    pub async fn suspend(
        self: &Arc<Self>,
        id: HubId,
        suspend: bool,
    ) -> Result<SuspendedView, ServiceError> {
        let at = suspend.then(unix_ms);
        self.blocking(move |state| {
            if !state.store().set_suspended(id, at)? {
                return Err(ServiceError::NotFound(format!("no active peer {id}")));
            }
            let kind = if suspend { "suspend" } else { "resume" };
            let entry = crate::node::audit::entry(kind, Some(id), "ok", "");
            crate::node::audit::record(&state.home, &state.store(), entry);
            state.set_refused(id, suspend);
            Ok(SuspendedView {
                ok: true,
                id: id.to_string(),
                suspended_at: at,
            })
        })
        .await
    }

    /// A round trip to a peer through the end-to-end session.
    pub async fn ping(self: &Arc<Self>, id: HubId) -> Result<PingView, ServiceError> {
        let member = self.member().ok_or(ServiceError::NotJoined)?;
        let rtt = member
            .ping(id, Duration::from_secs(10))
            .await
            .map_err(|e| match e {
                PeerError::Refused { .. } => ServiceError::Refused(e.to_string()),
                e => ServiceError::Unreachable(e.to_string()),
            })?;
        Ok(PingView {
            id: id.to_string(),
            rtt_ms: rtt.as_secs_f64() * 1000.0,
        })
    }

    /// The round trip to the relay, if connected.
    pub async fn relay_rtt(&self) -> Option<Duration> {
        let member = self.member()?;
        if !self.relay_state().connected {
            return None;
        }
        member.relay_rtt(Duration::from_secs(3)).await.ok()
    }
}

/// How long joining through the API may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

fn join_error(e: JoinError) -> ServiceError {
    use shared_proto::session::pairing::PairingError;
    let message = e.to_string();
    match e {
        JoinError::Pairing(PairingError::Refused(_) | PairingError::Unreadable(_)) => {
            ServiceError::PairingRefused(message)
        }
        JoinError::IssuerOffline => ServiceError::IssuerOffline(message),
        JoinError::Timeout(_) => ServiceError::Timeout(message),
        JoinError::Home(e) => e.into(),
        _ => ServiceError::Relay(message),
    }
}
