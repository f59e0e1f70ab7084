//! The service's administrative half: this hub's status, pairing (invite, join), its peers
//! (list, show, suspend, resume, revoke, ping), federation statistics and the audit log. Store
//! and file work runs on the blocking pool, off the async worker threads.

use std::sync::Arc;
use std::time::Duration;

use shared_proto::agent::Sharing;
use shared_proto::session::pairing::{JoinRequest, Joined, PairingToken};
use shared_proto::trust::TrustLevel;
use shared_proto::HubId;

use super::view::{
    self, CertificateView, IssuerView, JoinedView, LanPeerView, LanStatusView, PairingTokenView,
    PeerDetail, PeerView, PingView, RateLimitedView, RelayView, RevokedView, StatusView,
    SuspendedView, TermsView,
};
use super::{score, HubState, ServiceError};
use crate::node::audit::{self, AuditKind, Decision, LogFault};
use crate::node::home::{Home, HomeError};
use crate::node::store::{
    ApiToken, AuditEntry, PeerAuditHead, PeerRecord, Store, StoreError, TokenTerms, MANIFEST,
    REVOCATIONS,
};
use crate::unix_ms;

/// Longest pairing-token lifetime the hub grants.
pub const MAX_PAIRING_TTL_S: u64 = 24 * 3600;

/// How long joining through the API may take.
const JOIN_TIMEOUT: Duration = Duration::from_secs(20);

/// How long asking a peer what it reports about itself may take.
const INFO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a ping through the session may take.
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Most audit entries one query returns.
pub const MAX_AUDIT_QUERY: u64 = 10_000;

/// What the audit log is asked for: entries about `peer` (all if none), from `since_ms`, the
/// newest `limit` of them (in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditQuery {
    /// Only entries about this peer.
    pub peer: Option<HubId>,
    /// From this time (Unix ms).
    pub since_ms: u64,
    /// At most this many (the newest), at most [`MAX_AUDIT_QUERY`].
    pub limit: u64,
}

/// Calls over time, per bucket (`GET /api/federation/stats/series`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallSeries {
    /// How long a bucket is (ms).
    pub bucket_ms: u64,
    /// The first bucket's start (Unix ms).
    pub since_ms: u64,
    /// The buckets with calls, oldest first.
    pub buckets: Vec<CallBucket>,
}

/// One bucket of [`CallSeries`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CallBucket {
    /// Its start (Unix ms).
    pub start_ms: u64,
    /// Calls in and out.
    pub calls: u64,
    /// Of those, refused.
    pub refused: u64,
}

/// Joins the cluster of `token` as `name` from `home` (which must not hold a hub yet): new keys,
/// the pairing exchange through the relay, then the home records everything. What `hub join` and
/// `POST /api/federation/pair` both do.
pub async fn join_cluster(
    home: &Home,
    token: &PairingToken,
    name: &str,
    limit: Duration,
) -> Result<Joined, ServiceError> {
    let (identity, noise_secret) = home.new_identity()?;
    let request = JoinRequest {
        name,
        identity: &identity,
        noise_secret: &noise_secret,
    };
    let joined = crate::transport::join::join(token, &request, limit).await?;
    home.complete_join(&joined, &token.relay_url)?;
    Ok(joined)
}

impl HubState {
    /// This hub, its cluster, its relay connection (with a round trip measured now) and the
    /// documents it holds.
    pub async fn status(self: &Arc<Self>) -> Result<StatusView, ServiceError> {
        if !self.home.is_initialized() {
            return Ok(StatusView::not_joined());
        }
        let rtt = self.relay_rtt().await;
        let relay = self.book.relay();
        let lan = match self.book.lan() {
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
            let cert = home.certificate_held()?;
            let renew_at = state.renewal_due(&cert);
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
                certificate: Some(CertificateView::of(&cert, renew_at, unix_ms())),
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
        let joined = join_cluster(&self.home, token, name, JOIN_TIMEOUT).await?;
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

    /// A peer's trust score (`score`), from what this hub observed, and its audit head as held
    /// (an input of the score, which `/peers/{id}` also shows). Call it on the blocking pool.
    fn score_of(
        &self,
        store: &Store,
        id: HubId,
        now_ms: u64,
    ) -> Result<(score::TrustScore, Option<PeerAuditHead>), StoreError> {
        let cert_not_after_ms = self.book.certificate(id).map(|c| c.not_after_ms());
        let quorum = self
            .book
            .view_of(id, &store.peer_audit_macs(Some(id))?)
            .map(|view| self.book.quorum_check(&view, now_ms));
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

    /// The active peers, most recently seen first, with their presence and path.
    pub async fn peers(self: &Arc<Self>) -> Result<Vec<PeerView>, ServiceError> {
        let online = self.book.online();
        self.blocking(move |state| {
            let store = state.store();
            let now_ms = unix_ms();
            store
                .active_peers()?
                .into_iter()
                .map(|p| {
                    let id = p.id;
                    let (score, _) = state.score_of(&store, id, now_ms)?;
                    let mut view = PeerView::new(p, Some(&online));
                    view.trust_score = Some(score.score);
                    if view.online == Some(true) {
                        view.path = Some(state.book.path_to(&id).as_str().to_owned());
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
        let mut peer = PeerView::new(record, Some(&self.book.online()));
        let online = peer.online == Some(true);
        if online {
            peer.path = Some(self.book.path_to(&id).as_str().to_owned());
        }
        let (reported, report_error) = match self.member() {
            Some(member) if online => match member.peers.info(id, INFO_TIMEOUT).await {
                Ok(info) => (Some(info), None),
                Err(e) => (None, Some(e.to_string())),
            },
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
                let entry = audit::entry(AuditKind::Revoke, Some(id), Decision::Ok, &reason);
                audit::record(&state.home, &state.store(), entry);
                Ok(list)
            })
            .await?;
        self.book.on_revoked(id);
        self.book.on_revocations(&list);
        if let Some(member) = self.member() {
            if let Err(e) = member
                .peers
                .publish_revocations(list.bytes().to_vec())
                .await
            {
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
            let kind = if suspend {
                AuditKind::Suspend
            } else {
                AuditKind::Resume
            };
            let entry = audit::entry(kind, Some(id), Decision::Ok, "");
            audit::record(&state.home, &state.store(), entry);
            state.book.set_suspended(id, suspend);
            Ok(SuspendedView {
                ok: true,
                id: id.to_string(),
                suspended_at: at,
            })
        })
        .await
    }

    /// Admin: sets a peer's trust level and roles (its roles unchanged if `roles` is `None`),
    /// re-signs the manifest and passes it on to the peers with a session; the peer renews its
    /// certificate under the new terms as soon as the manifest reaches it.
    pub async fn set_trust(
        self: &Arc<Self>,
        id: HubId,
        trust: TrustLevel,
        roles: Option<Vec<String>>,
    ) -> Result<TermsView, ServiceError> {
        let (roles, manifest) = self
            .blocking(move |state| {
                Ok(audit::set_trust(
                    &state.home,
                    &state.store(),
                    id,
                    trust,
                    roles,
                )?)
            })
            .await?;
        if let Some(member) = self.member() {
            for to in self.book.with_sessions() {
                if let Err(e) = member.peers.send_manifest(to, &manifest.body).await {
                    tracing::debug!(peer = %to, "manifest not sent: {e}");
                }
            }
        }
        Ok(TermsView {
            ok: true,
            id: id.to_string(),
            trust_level: trust.as_str().to_owned(),
            roles,
            manifest_epoch: manifest.serial,
        })
    }

    /// A round trip to a peer through the end-to-end session.
    pub async fn ping(self: &Arc<Self>, id: HubId) -> Result<PingView, ServiceError> {
        let member = self.joined_member()?;
        let rtt = member.peers.ping(id, PING_TIMEOUT).await?;
        Ok(PingView {
            id: id.to_string(),
            rtt_ms: rtt.as_secs_f64() * 1000.0,
        })
    }

    /// The round trip to the relay, if connected.
    pub async fn relay_rtt(&self) -> Option<Duration> {
        let member = self.member()?;
        if !self.book.relay().connected {
            return None;
        }
        member.peers.relay_rtt(Duration::from_secs(3)).await.ok()
    }

    /// Federation statistics over the last hour, day and all time, from the audit log.
    pub async fn stats(self: &Arc<Self>) -> Result<Vec<view::StatsWindow>, ServiceError> {
        self.blocking(|state| Ok(view::stats(&state.store(), unix_ms())?))
            .await
    }

    /// Calls in and out per hour over the last `hours` (1 to 720), and how many were refused.
    pub async fn stats_series(self: &Arc<Self>, hours: u64) -> Result<CallSeries, ServiceError> {
        if !(1..=720).contains(&hours) {
            return Err(ServiceError::BadRequest("hours is 1 to 720".into()));
        }
        const HOUR_MS: u64 = 3_600_000;
        let since_ms = (unix_ms() / HOUR_MS).saturating_sub(hours - 1) * HOUR_MS;
        let rows = self
            .blocking(move |state| Ok(state.store().call_series(since_ms, HOUR_MS)?))
            .await?;
        Ok(CallSeries {
            bucket_ms: HOUR_MS,
            since_ms,
            buckets: rows
                .into_iter()
                .map(|(start_ms, calls, refused)| CallBucket {
                    start_ms,
                    calls,
                    refused,
                })
                .collect(),
        })
    }

    /// The audit entries `query` asks for, oldest first, with their MACs.
    pub async fn audit_entries(
        self: &Arc<Self>,
        query: AuditQuery,
    ) -> Result<Vec<(AuditEntry, [u8; 32])>, ServiceError> {
        let limit = query.limit.min(MAX_AUDIT_QUERY);
        self.blocking(move |state| {
            Ok(state
                .store()
                .audit_entries(query.peer, query.since_ms, Some(limit))?)
        })
        .await
    }

    /// The whole audit log checked with the hub's key: its head, or the first entry at fault.
    pub async fn audit_verify(
        self: &Arc<Self>,
    ) -> Result<Result<(u64, [u8; 32]), LogFault>, ServiceError> {
        self.blocking(|state| Ok(audit::verify_log(&state.home, &state.store())?))
            .await
    }

    /// The API token whose text is `token`, if it is valid now (not expired, uses left); its use
    /// is counted. A token without a use limit that was found in the last
    /// [`super::tokens::CHECKED_FOR_MS`] is taken from memory and its use counted there (written
    /// every second); one with a limit is checked and counted in the store every time.
    pub async fn authenticate(
        self: &Arc<Self>,
        token: Vec<u8>,
    ) -> Result<Option<ApiToken>, ServiceError> {
        let hash = crate::node::store::token_hash(&token);
        let now = unix_ms();
        if let Some(found) = self.tokens.use_held(&hash, now) {
            return Ok(Some(found));
        }
        let found = self
            .blocking(move |state| Ok(state.store().use_api_token(&token, now)?))
            .await?;
        if let Some(t) = &found {
            self.tokens.hold(hash, t, now);
        }
        Ok(found)
    }

    /// Writes the token uses counted in memory (every second, and when the hub stops).
    pub(crate) async fn flush_token_uses(self: &Arc<Self>) {
        let uses = self.tokens.take_uses();
        if uses.is_empty() {
            return;
        }
        let written = self
            .blocking(move |state| Ok(state.store().add_token_uses(&uses, unix_ms())?))
            .await;
        if let Err(e) = written {
            tracing::error!("token uses not recorded: {e}");
        }
    }

    /// How many entries the audit log holds (its head's sequence number).
    pub async fn audit_seq(self: &Arc<Self>) -> Result<u64, ServiceError> {
        self.blocking(|state| Ok(state.store().audit_head()?.0))
            .await
    }

    /// Sets who may see and call app `name` (recorded in the audit log).
    pub async fn set_sharing(
        self: &Arc<Self>,
        name: String,
        sharing: Sharing,
        require_trust: Option<TrustLevel>,
        pins: audit::ToolPins,
    ) -> Result<(), ServiceError> {
        let missing = format!("no app {name}");
        let found = self
            .blocking(move |state| {
                Ok(audit::share_app(
                    &state.home,
                    &state.store(),
                    &name,
                    &sharing,
                    require_trust,
                    &pins,
                )?)
            })
            .await?;
        if found {
            Ok(())
        } else {
            Err(ServiceError::NotFound(missing))
        }
    }
}
