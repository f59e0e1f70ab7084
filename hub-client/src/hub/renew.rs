//! Certificate renewal while the hub runs (docs/PROTOCOL.md section 9, "Renewal"). This hub's
//! own certificate is renewed two thirds into its term (`trust::renewal`): asked of an admin hub
//! over its session, or signed by itself if it holds the CA key (the founder). The new
//! certificate replaces `hub.der`, is used at the next relay login and LAN link, and reaches the
//! peers at their next handshake; sessions go on meanwhile. As an admin, this hub answers the
//! renewal requests of its peers under the terms it holds for them.

use std::sync::Arc;
use std::time::Duration;

use shared_proto::session::rpc::{Answer, PeerRequest};
use shared_proto::trust::login::Credentials;
use shared_proto::trust::renewal::{is_admin, renewed_reason, Renewal, ASK_TIMEOUT_MS};
use shared_proto::trust::VerifiedPeer;
use shared_proto::HubId;

use crate::hub::{HubState, Member, ServiceError};
use crate::node::audit::{self, AuditKind, Decision};
use crate::unix_ms;

/// When and whether this hub renews its certificate.
#[derive(Debug, Default)]
pub(crate) struct Renewals {
    /// For the certificate held (`None` until the hub runs as a member).
    schedule: std::sync::Mutex<Option<Renewal>>,
    /// One renewal at a time (the clock's, or one asked through the API).
    running: tokio::sync::Mutex<()>,
    /// Told when an attempt ends (the event loop then reads the next due time).
    pub(crate) done: tokio::sync::Notify,
}

impl HubState {
    /// When this hub's certificate is next to be renewed (Unix ms).
    pub(crate) fn renewal_due(&self, current: &VerifiedPeer) -> u64 {
        let mut schedule = self.lock_schedule();
        schedule
            .get_or_insert_with(|| Renewal::new(current))
            .poll_timeout()
    }

    /// Whether this hub's certificate is due for renewal at `now_ms`.
    pub(crate) fn renewal_is_due(&self, now_ms: u64) -> bool {
        self.lock_schedule()
            .as_ref()
            .is_some_and(|s| s.is_due(now_ms))
    }

    fn lock_schedule(&self) -> std::sync::MutexGuard<'_, Option<Renewal>> {
        self.renewals
            .schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Renews this hub's certificate now: from an admin peer, or signed with the CA key held.
    /// On failure the next attempt backs off (`Renewal::handle_failure`).
    pub(crate) async fn renew(
        self: &Arc<Self>,
        member: &Member,
    ) -> Result<VerifiedPeer, ServiceError> {
        let _one = self.renewals.running.lock().await;
        let current = self
            .blocking(|state| Ok(state.home.certificate_held()?))
            .await;
        let current = match current {
            Ok(current) => current,
            Err(e) => {
                // Nothing to renew from (the home is damaged): said, and tried again later.
                tracing::error!("certificate not renewed: {e}");
                if let Some(schedule) = self.lock_schedule().as_mut() {
                    schedule.handle_failure(unix_ms(), u64::MAX);
                }
                self.renewals.done.notify_one();
                return Err(e);
            }
        };
        let renewed = self.renew_once(member).await;
        let mut schedule = self.lock_schedule();
        let schedule = schedule.get_or_insert_with(|| Renewal::new(&current));
        match &renewed {
            Ok((cert, by)) => {
                schedule.handle_renewed(cert);
                tracing::info!(
                    by = %by.map_or("this hub (it holds the CA key)".to_owned(), |b| b.to_string()),
                    not_after_ms = cert.not_after_ms(),
                    "certificate renewed"
                );
            }
            Err(e) => {
                schedule.handle_failure(unix_ms(), current.not_after_ms());
                tracing::warn!(
                    not_after_ms = current.not_after_ms(),
                    "certificate not renewed ({e}); trying again at {} (Unix ms)",
                    schedule.poll_timeout()
                );
            }
        }
        self.renewals.done.notify_one();
        renewed.map(|(cert, _)| cert)
    }

    async fn renew_once(
        self: &Arc<Self>,
        member: &Member,
    ) -> Result<(VerifiedPeer, Option<HubId>), ServiceError> {
        let (cert, by) = if self.home.is_founder() {
            let cert = self
                .blocking(|state| Ok(state.home.renew_own(&state.store())?))
                .await?;
            (cert, None)
        } else {
            // The founder first (its certificates chain to nothing that can be revoked apart);
            // an admin asks only the founder (an admin's key makes no admins).
            let admins = self
                .blocking(move |state| {
                    let admin_here = state.home.is_admin();
                    let mut admins: Vec<_> = state
                        .store()
                        .active_peers()?
                        .into_iter()
                        .filter(|p| is_admin(&p.roles))
                        .map(|p| (!p.roles.iter().any(|r| r == "founder"), p.id))
                        .filter(|(not_founder, _)| !(admin_here && *not_founder))
                        .collect();
                    admins.sort();
                    Ok(admins.into_iter().map(|(_, id)| id).collect::<Vec<_>>())
                })
                .await?;
            let mut last = ServiceError::NotFound(
                "no admin hub is known to this hub (none of its peers has the founder or admin role)"
                    .into(),
            );
            let mut got = None;
            for admin in admins.into_iter().filter(|a| *a != member.hub_id) {
                match member
                    .peers
                    .renew(admin, Duration::from_millis(ASK_TIMEOUT_MS))
                    .await
                {
                    Ok(der) => {
                        got = Some((der, Some(admin)));
                        break;
                    }
                    Err(e) => last = e.into(),
                }
            }
            let (der, by) = got.ok_or(last)?;
            let cert = self
                .blocking(move |state| Ok(state.home.keep_certificate(&der)?))
                .await?;
            (cert, by)
        };
        let credentials = Credentials {
            cert_der: cert.der().to_vec(),
            ..(*member.credentials.get()).clone()
        };
        member.credentials.replace(Arc::new(credentials));
        member.peers.set_certificate(cert.clone()).await?;
        let entry = audit::entry(
            AuditKind::CertRenew,
            by,
            Decision::Ok,
            &renewed_reason(cert.not_after_ms()),
        );
        self.record(entry).await;
        Ok((cert, by))
    }

    /// The manifest says other terms for this hub than its certificate (an admin set its trust
    /// level or roles): a renewal now, on its own task, brings a certificate under them.
    pub(crate) async fn renew_if_terms_changed(self: &Arc<Self>) {
        let changed = self
            .blocking(|state| {
                let mine = state.home.certificate_held()?;
                let Some(manifest) = state.home.manifest()? else {
                    return Ok(false);
                };
                Ok(manifest
                    .manifest()
                    .members
                    .iter()
                    .find(|m| m.hub_id == mine.hub_id())
                    .is_some_and(|m| m.trust != mine.trust() || m.roles != mine.roles()))
            })
            .await;
        let (Ok(true), Some(member)) = (changed, self.member()) else {
            return;
        };
        tracing::info!("the manifest gives this hub other terms: renewing its certificate now");
        let state = self.clone();
        tokio::spawn(async move {
            let _ = state.renew(&member).await;
        });
    }

    /// A peer asks for a new certificate: an admin (the founder, or a hub with an admin
    /// certificate) issues one for the keys of the peer's session certificate, under the terms
    /// it holds for it; any other hub, or a peer suspended or revoked here, is refused.
    pub(crate) fn serve_renewal(self: &Arc<Self>, member: &Member, request: PeerRequest) {
        let state = self.clone();
        let member = member.clone();
        tokio::spawn(async move {
            let from = request.from;
            let issued = match state.book.admit_call(from) {
                Err(code) => Err(format!("{}: {code}", code.name())),
                // Whether this hub is an admin reads its certificate: on the blocking pool.
                Ok(current) => state
                    .blocking(move |state| {
                        if !state.home.is_admin() {
                            return Ok(Err(shared_proto::trust::renewal::NOT_ADMIN.to_owned()));
                        }
                        Ok(state
                            .home
                            .issue_renewal(&state.store(), &current)
                            .map_err(|e| format!("failed: {e}")))
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("failed: {e}"))),
            };
            let (answer, entry) = match issued {
                Ok(cert) => (
                    Answer::Renewed(cert.der().to_vec()),
                    audit::entry(
                        AuditKind::CertRenew,
                        Some(from),
                        Decision::Ok,
                        &format!(
                            "issued a renewed certificate ({}, {}) until {} (Unix ms)",
                            cert.trust(),
                            cert.roles().join(","),
                            cert.not_after_ms()
                        ),
                    ),
                ),
                Err(why) => (
                    Answer::Refused(why.clone()),
                    audit::entry(AuditKind::CertRenew, Some(from), Decision::Refused, &why),
                ),
            };
            state.record(entry).await;
            if let Err(e) = member.peers.answer(from, request.token, answer).await {
                tracing::debug!(peer = %from, "renewal answer not sent: {e}");
            }
        });
    }
}
