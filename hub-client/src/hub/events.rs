//! What the hub's event loop (`daemon`) tells the hub: the relay's presence and revocation
//! lists, sessions coming up, the documents and reports peers pass on (manifests, signed audit
//! heads, views), handshakes refused, and pairing requests. Each `on_*` changes the book and
//! the store; none blocks the loop on the peer layer (what goes out goes from another task).

use std::sync::Arc;

use rand::rngs::OsRng;
use shared_proto::audit::{Head, Views};
use shared_proto::session::pairing::{refused_unreadable, PairingRequest};
use shared_proto::trust::rotation::VerifiedSuccessor;
use shared_proto::trust::{VerifiedPeer, VerifiedRevocations};
use shared_proto::HubId;

use super::book::AuditHeadRefusal;
use super::{HubState, Member, ServiceError};
use crate::node::audit::{self, AuditKind, Decision, FaultKind};
use crate::node::store::MANIFEST;
use crate::unix_ms;

impl HubState {
    /// The relay admitted this hub; `online` are the other hubs there.
    pub(crate) async fn on_connected(
        self: &Arc<Self>,
        online: Vec<HubId>,
    ) -> Result<(), ServiceError> {
        tracing::info!(
            "connected to the relay; {} other hub(s) online",
            online.len()
        );
        let seen = online.clone();
        self.blocking(move |state| {
            let store = state.store();
            let now = unix_ms();
            for hub in seen {
                store.touch_peer(hub, now)?;
            }
            Ok(())
        })
        .await?;
        self.book.update_relay(|r| {
            r.connected = true;
            r.online = online.into_iter().collect();
            r.last_error = None;
        });
        Ok(())
    }

    /// The relay connection ended (`reason`); the peer layer reconnects unless refused for good.
    pub(crate) fn on_disconnected(&self, reason: &str) {
        self.book.update_relay(|r| {
            r.connected = false;
            r.online.clear();
            r.last_error = Some(reason.to_owned());
        });
    }

    /// A hub joined (`true`) or left the relay.
    pub(crate) async fn on_presence(
        self: &Arc<Self>,
        hub: HubId,
        joined: bool,
    ) -> Result<(), ServiceError> {
        if joined {
            tracing::info!(%hub, "peer online");
        } else {
            tracing::info!(%hub, "peer offline");
        }
        self.touch_peer(hub).await?;
        self.book.update_relay(|r| {
            if joined {
                r.online.insert(hub);
            } else {
                r.online.remove(&hub);
            }
        });
        Ok(())
    }

    /// The relay rate-limited this hub (it logged that; `hub status` shows it).
    pub(crate) fn on_rate_limited(&self, dropped: u32) {
        self.book.update_relay(|r| {
            r.rate_limited += 1;
            r.dropped += u64::from(dropped);
            r.last_rate_limited_ms = Some(unix_ms());
        });
    }

    /// A verified revocation list from the relay: the book drops the revoked hubs' sessions and
    /// reports, and the store keeps the list if it is newer.
    pub(crate) async fn on_revocations(
        self: &Arc<Self>,
        list: VerifiedRevocations,
    ) -> Result<(), ServiceError> {
        let version = list.version();
        self.book.on_revocations(&list);
        let kept = self
            .blocking(move |state| Ok(state.store().keep_revocations(&list)?))
            .await?;
        if kept {
            tracing::info!(version, "new revocation list");
        }
        Ok(())
    }

    /// The cluster moved to a new CA key (the old CA's successor document, from the relay): this
    /// hub follows it if the document carries a certificate for it within its grace period.
    /// Whether it moved (its relay connection and sessions must start again, in the new room).
    pub(crate) async fn on_successor(
        self: &Arc<Self>,
        successor: VerifiedSuccessor,
    ) -> Result<bool, ServiceError> {
        let new = successor.new_cluster();
        let moved = self
            .blocking(move |state| Ok(state.home.follow(&successor)))
            .await?;
        match moved {
            Ok(cert) => {
                tracing::warn!(
                    cluster = %new,
                    certificate = %hex::encode(cert.fingerprint()),
                    "the cluster moved to a new CA key: this hub follows it"
                );
                Ok(true)
            }
            Err(e) => {
                tracing::error!(
                    cluster = %new,
                    "the cluster moved to a new CA key, and this hub cannot follow ({e}): pair it again with a token from a hub of the new cluster"
                );
                Ok(false)
            }
        }
    }

    /// A session with a peer came up: its certificate is what its calls are checked against; it
    /// is recorded as a peer, and gets this hub's manifest and reports.
    pub(crate) async fn on_established(
        self: &Arc<Self>,
        member: &Member,
        certificate: VerifiedPeer,
    ) -> Result<(), ServiceError> {
        let to = certificate.hub_id();
        self.book.on_established(certificate.clone());
        let manifest = self
            .blocking(move |state| {
                let store = state.store();
                state.home.record_peer(&store, &certificate)?;
                Ok(store.document(MANIFEST)?)
            })
            .await?;
        // Say which session version this hub speaks, and pass the manifest on (the peer keeps it
        // if it is newer than its own).
        let peers = member.peers.clone();
        tokio::spawn(async move {
            if let Err(e) = peers.send_version(to).await {
                tracing::debug!(peer = %to, "version not sent: {e}");
            }
            if let Some(doc) = manifest {
                if let Err(e) = peers.send_manifest(to, &doc.body).await {
                    tracing::debug!(peer = %to, "manifest not sent: {e}");
                }
            }
        });
        self.send_reports(member, to);
        Ok(())
    }

    /// A peer's signed audit head: verified with its session's key, then held against the one
    /// held before; an inconsistency is recorded (at most once a minute per kind).
    pub(crate) async fn on_audit_head(
        self: &Arc<Self>,
        from: HubId,
        head: Vec<u8>,
    ) -> Result<(), ServiceError> {
        let head = match self.book.on_audit_head(from, &head) {
            Ok(head) => head,
            Err(AuditHeadRefusal::NoSession) => return Ok(()),
            Err(AuditHeadRefusal::Bad(e)) => {
                tracing::warn!(peer = %from, "audit head refused: {e}");
                self.record_fault(from, FaultKind::AuditHead, &e.to_string())
                    .await;
                return Ok(());
            }
        };
        let seq = head.seq;
        let check = self
            .blocking(move |state| Ok(state.store().keep_peer_audit_head(&head)?))
            .await?;
        if let (Some(why), Some(kind)) = (check.problem(seq), check.kind()) {
            tracing::warn!(peer = %from, "audit log inconsistent: {why}");
            let entry = audit::entry(
                AuditKind::AuditInconsistent,
                Some(from),
                Decision::None,
                &format!("{kind}: {why}"),
            );
            self.record_repeat(entry).await;
        }
        Ok(())
    }

    /// A manifest a peer passed on: kept if it verifies and is newer; a fault if it does not.
    pub(crate) async fn on_manifest(
        self: &Arc<Self>,
        from: HubId,
        manifest: Vec<u8>,
    ) -> Result<(), ServiceError> {
        let kept = self
            .blocking(move |state| Ok(state.home.keep_manifest(&state.store(), &manifest)))
            .await?;
        match kept {
            Ok(true) => {
                tracing::info!(%from, "newer cluster manifest");
                self.renew_if_terms_changed().await;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(%from, "manifest refused: {e}");
                self.record_fault(from, FaultKind::Manifest, &e.to_string())
                    .await;
            }
        }
        Ok(())
    }

    /// What a peer reports seeing of the other hubs, for quorum checks.
    pub(crate) async fn on_views(self: &Arc<Self>, from: HubId, views: Vec<u8>) {
        if let Err(e) = self.book.on_views(from, &views, unix_ms()) {
            tracing::warn!(%from, "views refused: {e}");
            self.record_fault(from, FaultKind::Views, &e.to_string())
                .await;
        }
    }

    /// A peer's handshake was refused for a reason of its own making: a fault of the peer only
    /// if the bytes provably came from it (over its LAN link, or from the relay while the relay
    /// lists it as a member online; the relay tells this hub who left before it passes on
    /// anything from a pairing guest, which may have taken the id of a member that is not
    /// online).
    pub(crate) async fn on_handshake_refused(
        self: &Arc<Self>,
        peer: HubId,
        reason: &str,
        over_lan: bool,
    ) {
        if over_lan || self.book.at_relay(&peer) {
            self.record_fault(peer, FaultKind::Handshake, reason).await;
        } else {
            tracing::debug!(%peer, "handshake refused from a hub not online at the relay: {reason}");
        }
    }

    /// A pairing request through the relay: the founder or an admin answers it (a refusal is an
    /// answer too); another hub says it issues no tokens.
    pub(crate) async fn on_pairing(
        self: &Arc<Self>,
        member: &Member,
        from: HubId,
        message: Vec<u8>,
    ) -> Result<(), ServiceError> {
        let me = member.hub_id;
        // Whether this hub is an admin reads its certificate: on the blocking pool too.
        let answer = self
            .blocking(move |state| {
                Ok(if state.home.is_admin() {
                    state.answer_pairing(me, &message)
                } else {
                    refused_unreadable("this hub does not issue pairing tokens")
                })
            })
            .await?;
        let peers = member.peers.clone();
        tokio::spawn(async move {
            if let Err(e) = peers.send_raw(from, answer).await {
                tracing::warn!(guest = %from, "pairing answer not sent: {e}");
            }
        });
        Ok(())
    }

    /// The founder's or an admin's answer to a pairing request; never fails outward (a refusal
    /// is an answer). Call it on the blocking pool.
    fn answer_pairing(&self, me: HubId, message: &[u8]) -> Vec<u8> {
        let home = &self.home;
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
        let store = self.store();
        match home.answer_pairing(&store, &local, request, self.cert_validity_ms) {
            Ok((answer, Ok(peer))) => {
                tracing::info!(hub = %peer.id, %name, trust = %peer.trust, "paired a new hub");
                let why = format!("{name} joined as {}", peer.trust);
                let entry =
                    audit::entry(AuditKind::Pairing, Some(peer.id), Decision::Allowed, &why);
                audit::record(home, &store, entry);
                answer
            }
            Ok((answer, Err(refusal))) => {
                tracing::warn!(%name, "pairing refused: {refusal}");
                let why = format!("{name}: {refusal}");
                let entry = audit::entry(AuditKind::Pairing, None, Decision::Refused, &why);
                audit::record(home, &store, entry);
                answer
            }
            Err(e) => {
                tracing::error!(%name, "pairing failed: {e}");
                refused_unreadable("the issuer failed to record the pairing")
            }
        }
    }

    /// Sends every peer online with a session that reports its own audit head (it keeps a quorum)
    /// this hub's signed audit head and views; a peer that keeps none (a phone) gets them only as
    /// its session comes up, so that an idle one is sent nothing.
    pub(crate) fn send_all_reports(self: &Arc<Self>, member: &Member) {
        let online = self.book.online();
        for peer in self
            .book
            .reporting_peers()
            .into_iter()
            .filter(|p| online.contains(p))
        {
            self.send_reports(member, peer);
        }
    }

    /// Sends `to` this hub's signed audit head, and what it sees of the other hubs it has
    /// sessions with (for `to`'s quorum checks), from another task.
    pub(crate) fn send_reports(self: &Arc<Self>, member: &Member, to: HubId) {
        let state = self.clone();
        let member = member.clone();
        tokio::spawn(async move {
            let identity = member.credentials.get();
            let made = state
                .blocking(move |state| {
                    let store = state.store();
                    let (seq, mac) = store.audit_head()?;
                    let head = Head {
                        hub: identity.hub_id,
                        seq,
                        mac,
                        at_ms: unix_ms(),
                    };
                    let heads = store.peer_audit_macs(None)?;
                    let views = Views {
                        epoch: store.document(MANIFEST)?.map(|d| d.serial),
                        views: state
                            .book
                            .with_sessions()
                            .into_iter()
                            .filter(|h| *h != to)
                            .filter_map(|h| state.book.view_of(h, &heads))
                            .collect(),
                    };
                    Ok((head.sign(&identity.identity), views.encode()))
                })
                .await;
            match made {
                Ok((head, views)) => {
                    if let Err(e) = member.peers.send_audit_head(to, &head).await {
                        tracing::debug!(peer = %to, "audit head not sent: {e}");
                    }
                    if let Err(e) = member.peers.send_views(to, &views).await {
                        tracing::debug!(peer = %to, "views not sent: {e}");
                    }
                }
                Err(e) => tracing::warn!("audit head not signed: {e}"),
            }
        });
    }

    /// Records that `hub` was seen now.
    pub(crate) async fn touch_peer(self: &Arc<Self>, hub: HubId) -> Result<(), ServiceError> {
        self.blocking(move |state| Ok(state.store().touch_peer(hub, unix_ms())?))
            .await
    }
}
