//! The one owner of what the running hub knows about its peers, behind one lock: the certificate
//! each peer's session was set up with, whom this hub suspended and revoked, the revocation list
//! it holds, the other hubs' quorum reports, the repeated refusals and faults being counted, and who is
//! online and by which path (the relay's presence, the LAN links).
//!
//! The hub's event loop tells the book what happened (`on_*`); the service asks it
//! ([`PeerBook::admit`], [`PeerBook::admit_call`], [`PeerBook::online`], ...). Everything here is
//! memory: what must survive a restart is in the store, and the book is filled from it when the
//! hub starts ([`PeerBook::load`]). The transport knows none of it.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use shared_proto::agent::CallErrorCode;
use shared_proto::audit::{Head, HeadError, Repeats, View, Views, ViewsError};
use shared_proto::trust::{VerifiedPeer, VerifiedRevocations};
use shared_proto::HubId;

use crate::hub::quorum::{Quorum, QuorumCheck};
use crate::node::store::AuditEntry;
use crate::transport::lan::LanView;

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

/// The path messages to a peer take now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Path {
    /// A verified direct link on the LAN.
    Lan,
    /// The end-to-end session through the relay.
    Relay,
}

impl Path {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Path::Lan => "lan",
            Path::Relay => "relay",
        }
    }
}

/// Why a peer's audit head was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AuditHeadRefusal {
    /// No session with the peer: nothing to check its signature with (ignored, not a fault).
    #[error("no session with the peer")]
    NoSession,
    /// It does not verify: a fault of the peer.
    #[error(transparent)]
    Bad(#[from] HeadError),
}

#[derive(Debug, Default)]
struct Book {
    /// The store's `data_version` when the book last read it (`None`: never).
    loaded: Option<u64>,
    certs: HashMap<HubId, VerifiedPeer>,
    /// The session version each peer said it speaks (1 until it says).
    versions: HashMap<HubId, u16>,
    /// Peers that sent a signed audit head: they keep a quorum, and get this hub's reports on
    /// the clock (a peer that keeps none, a phone, gets them only as its session comes up).
    reporting: HashSet<HubId>,
    suspended: HashSet<HubId>,
    revoked: HashSet<HubId>,
    revocations: Option<VerifiedRevocations>,
    quorum: Quorum,
    repeats: Repeats,
    relay: RelayState,
    lan: Option<LanView>,
}

/// What the hub knows about its peers. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct PeerBook {
    book: Mutex<Book>,
}

impl PeerBook {
    fn lock(&self) -> MutexGuard<'_, Book> {
        // Nothing here is left half-changed by a panic that matters more than going on.
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fills the book with what the store keeps (suspended and revoked peers, the held
    /// revocation list) as of the store's `data_version`.
    pub(crate) fn load(
        &self,
        data_version: u64,
        suspended: impl IntoIterator<Item = HubId>,
        revoked: impl IntoIterator<Item = HubId>,
        revocations: Option<VerifiedRevocations>,
    ) {
        let mut b = self.lock();
        b.loaded = Some(data_version);
        b.suspended = suspended.into_iter().collect();
        b.revoked = revoked.into_iter().collect();
        if let Some(list) = revocations {
            let newer = b
                .revocations
                .as_ref()
                .is_none_or(|held| held.version() < list.version());
            if newer {
                b.revocations = Some(list);
            }
        }
    }

    /// Forgets everything learned of the cluster (certificates, versions, reports, the relay's
    /// view, calls to send again): the hub moved to a new CA key's cluster, whose sessions all
    /// start anew. What the store keeps is read again.
    pub(crate) fn forget_cluster(&self) {
        *self.lock() = Book::default();
    }

    /// Whether the book must read the store again: another process changed it since (`hub
    /// revoke-cert --offline`, `hub peers suspend` run beside the hub).
    pub(crate) fn is_stale(&self, data_version: u64) -> bool {
        self.lock().loaded != Some(data_version)
    }

    /// A session with the peer came up with `cert` (its session version is what it says on
    /// this session: 1 until then).
    pub(crate) fn on_established(&self, cert: VerifiedPeer) {
        let mut b = self.lock();
        b.versions.remove(&cert.hub_id());
        b.certs.insert(cert.hub_id(), cert);
    }

    /// A revocation list arrived (verified): kept if newer than the one held; the certificates
    /// and reports of the hubs it revokes count no more. Whether it was newer.
    pub(crate) fn on_revocations(&self, list: &VerifiedRevocations) -> bool {
        let mut b = self.lock();
        if b.revocations
            .as_ref()
            .is_some_and(|held| held.version() >= list.version())
        {
            return false;
        }
        let revoked: Vec<HubId> = b
            .certs
            .iter()
            .filter(|(_, c)| list.revokes(c))
            .map(|(h, _)| *h)
            .collect();
        for hub in revoked {
            b.certs.remove(&hub);
            b.versions.remove(&hub);
            b.reporting.remove(&hub);
            b.quorum.forget(hub);
        }
        b.revocations = Some(list.clone());
        true
    }

    /// This hub revoked `peer` (its record is marked revoked).
    pub(crate) fn on_revoked(&self, peer: HubId) {
        self.lock().revoked.insert(peer);
    }

    /// Suspends `peer` (its requests are refused) or resumes it.
    pub(crate) fn set_suspended(&self, peer: HubId, suspended: bool) {
        let mut b = self.lock();
        if suspended {
            b.suspended.insert(peer);
        } else {
            b.suspended.remove(&peer);
        }
    }

    /// Whether this hub answers `peer`'s requests (ping, info, apps): not if it suspended it.
    pub(crate) fn admit(&self, peer: HubId) -> Result<(), CallErrorCode> {
        if self.lock().suspended.contains(&peer) {
            Err(CallErrorCode::Suspended)
        } else {
            Ok(())
        }
    }

    /// Whether `peer` may call this hub's apps, in the order docs/PROTOCOL.md section 13 gives:
    /// not suspended, a session certificate to check its envelope with, not revoked (by the
    /// held list or its record, even with its session still up). The certificate, if so.
    pub(crate) fn admit_call(&self, peer: HubId) -> Result<VerifiedPeer, CallErrorCode> {
        let b = self.lock();
        if b.suspended.contains(&peer) {
            return Err(CallErrorCode::Suspended);
        }
        let cert = b.certs.get(&peer).ok_or(CallErrorCode::WrongSigner)?;
        let listed = b.revocations.as_ref().is_some_and(|l| l.revokes(cert));
        if listed || b.revoked.contains(&peer) {
            return Err(CallErrorCode::Revoked);
        }
        Ok(cert.clone())
    }

    /// A peer with a session said which session version it speaks.
    pub(crate) fn on_version(&self, peer: HubId, version: u16) {
        let mut b = self.lock();
        if b.certs.contains_key(&peer) {
            b.versions.insert(peer, version);
        }
    }

    /// The session version `peer` speaks: what it said, or 1 (a hub that never says).
    pub(crate) fn session_version(&self, peer: HubId) -> u16 {
        self.lock().versions.get(&peer).copied().unwrap_or(1)
    }

    /// The certificate `peer`'s session was set up with, if any.
    pub(crate) fn certificate(&self, peer: HubId) -> Option<VerifiedPeer> {
        self.lock().certs.get(&peer).cloned()
    }

    /// The peers this hub has had a session with (and not seen revoked since).
    pub(crate) fn with_sessions(&self) -> Vec<HubId> {
        self.lock().certs.keys().copied().collect()
    }

    /// The peers with sessions that report their audit heads (see `reporting`).
    pub(crate) fn reporting_peers(&self) -> Vec<HubId> {
        let b = self.lock();
        b.certs
            .keys()
            .filter(|h| b.reporting.contains(h))
            .copied()
            .collect()
    }

    /// A signed audit head from `from`, checked against its session certificate's key.
    pub(crate) fn on_audit_head(&self, from: HubId, head: &[u8]) -> Result<Head, AuditHeadRefusal> {
        let key = self
            .lock()
            .certs
            .get(&from)
            .map(|c| *c.identity_key())
            .ok_or(AuditHeadRefusal::NoSession)?;
        let head = Head::verify(head, from, &key)?;
        self.lock().reporting.insert(from);
        Ok(head)
    }

    /// A views report from `from`: kept for quorum checks if it decodes and `from` has a session
    /// (`Ok(false)`: ignored, no session).
    pub(crate) fn on_views(
        &self,
        from: HubId,
        views: &[u8],
        now_ms: u64,
    ) -> Result<bool, ViewsError> {
        let mut b = self.lock();
        if !b.certs.contains_key(&from) {
            return Ok(false);
        }
        let report = Views::decode(views)?;
        b.quorum.keep(from, report, now_ms);
        Ok(true)
    }

    /// What this hub sees of `hub` now, for quorum reports and checks: `None` without a session.
    /// `heads` are the audit heads held, by peer.
    pub(crate) fn view_of(
        &self,
        hub: HubId,
        heads: &HashMap<HubId, (u64, [u8; 32])>,
    ) -> Option<View> {
        let b = self.lock();
        let cert_sha256 = b.certs.get(&hub)?.fingerprint();
        Some(View {
            hub,
            cert_sha256,
            manifest_epoch: b.quorum.epoch(hub),
            head: heads.get(&hub).copied(),
        })
    }

    /// The other hubs' fresh reports on `mine.hub`, against this hub's view of it.
    pub(crate) fn quorum_check(&self, mine: &View, now_ms: u64) -> QuorumCheck {
        self.lock().quorum.check(mine, now_ms)
    }

    /// An entry that may repeat (a refusal, a fault): `Some` if it is to be written now, `None`
    /// if it is counted into the entry written when its interval ends
    /// (`shared_proto::audit::repeats`), so that a peer that keeps at it cannot grow the log fast.
    pub(crate) fn admit_repeat(&self, entry: AuditEntry, now_ms: u64) -> Option<AuditEntry> {
        self.lock().repeats.admit(entry, now_ms)
    }

    /// When the next interval of repeats ends.
    pub(crate) fn repeats_timeout(&self) -> Option<u64> {
        self.lock().repeats.poll_timeout()
    }

    /// The entries that stand for the repeats of the intervals ended at `now_ms` (all of them if
    /// `all`: the hub stops).
    pub(crate) fn repeats_due(&self, now_ms: u64, all: bool) -> Vec<AuditEntry> {
        let mut b = self.lock();
        if all {
            b.repeats.drain(now_ms);
        } else {
            b.repeats.handle_timeout(now_ms);
        }
        std::iter::from_fn(|| b.repeats.poll_entry()).collect()
    }

    /// The relay connection now.
    pub(crate) fn relay(&self) -> RelayState {
        self.lock().relay.clone()
    }

    /// Changes what is known of the relay connection.
    pub(crate) fn update_relay(&self, f: impl FnOnce(&mut RelayState)) {
        f(&mut self.lock().relay);
    }

    /// The LAN path started (`Some`) or stopped.
    pub(crate) fn set_lan(&self, lan: Option<LanView>) {
        self.lock().lan = lan;
    }

    /// The LAN path, while it runs.
    pub(crate) fn lan(&self) -> Option<LanView> {
        self.lock().lan.clone()
    }

    /// Whether the relay lists `hub` as a member online (its socket logged in with its
    /// certificate).
    pub(crate) fn at_relay(&self, hub: &HubId) -> bool {
        self.lock().relay.online.contains(hub)
    }

    /// The peers reachable now: online at the relay or linked on the LAN.
    pub(crate) fn online(&self) -> BTreeSet<HubId> {
        let (mut online, lan) = {
            let b = self.lock();
            (b.relay.online.clone(), b.lan.clone())
        };
        if let Some(lan) = lan {
            online.extend(
                lan.peers()
                    .into_iter()
                    .filter(|p| p.linked)
                    .map(|p| p.hub_id),
            );
        }
        online
    }

    /// The path messages to `hub` take now.
    pub(crate) fn path_to(&self, hub: &HubId) -> Path {
        match self.lock().lan.as_ref() {
            Some(lan) if lan.is_linked(hub) => Path::Lan,
            _ => Path::Relay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::audit::FaultKind;
    use shared_proto::trust::{
        CertificateRequest, ClusterCa, PeerCertificate, Revocation, RevocationList, TrustLevel,
    };

    const NOW: u64 = 1_800_000_000_000;

    fn ca() -> ClusterCa {
        ClusterCa::from_secret(&[9; 32])
    }

    fn cert(id: u8) -> VerifiedPeer {
        let key = ed25519_dalek::SigningKey::from_bytes(&[id; 32]);
        let req = CertificateRequest {
            hub_id: HubId([id; 16]),
            name: format!("hub{id}"),
            identity_key: key.verifying_key(),
            noise_key: [id; 32],
            trust: TrustLevel::AgentDispatch,
            roles: vec![],
            not_before_ms: NOW - 1_000,
            not_after_ms: NOW + 86_400_000,
        };
        let der = ca().issue(&req, &mut rand::rngs::OsRng).expect("issued");
        PeerCertificate::from_der(&der)
            .and_then(|c| c.verify(&ca().public_key(), NOW, None))
            .expect("verifies")
    }

    fn list(version: u64, revoked: &VerifiedPeer) -> VerifiedRevocations {
        let list = RevocationList {
            version,
            issued_at_ms: NOW,
            entries: vec![Revocation {
                fingerprint: revoked.fingerprint(),
                key_hash: [0; 32],
                revoked_at_ms: NOW,
                reason: "lost".into(),
            }],
        };
        RevocationList::verify(&list.sign(&ca()).expect("signed"), &ca().cluster_id())
            .expect("verifies")
    }

    /// Reports go on the clock only to peers that send their own: a peer that keeps no quorum
    /// (a phone) is not woken every interval.
    #[test]
    fn only_peers_that_report_get_reports_on_the_clock() {
        let book = PeerBook::default();
        let (desk, phone) = (cert(1), cert(2));
        book.on_established(desk.clone());
        book.on_established(phone.clone());
        assert!(book.reporting_peers().is_empty());
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let head = Head {
            hub: desk.hub_id(),
            seq: 1,
            mac: [0; 32],
            at_ms: NOW,
        };
        // A head signed by another key does not count.
        let forged = head.sign(&ed25519_dalek::SigningKey::from_bytes(&[2; 32]));
        assert!(book.on_audit_head(desk.hub_id(), &forged).is_err());
        assert!(book.reporting_peers().is_empty());
        book.on_audit_head(desk.hub_id(), &head.sign(&key)).unwrap();
        assert_eq!(book.reporting_peers(), vec![desk.hub_id()]);
    }

    /// A call is admitted only from a peer with a session certificate, not suspended, not
    /// revoked by the list or by its record, and the refusals come in the documented order.
    #[test]
    fn calls_are_admitted_in_the_documented_order() {
        let book = PeerBook::default();
        let (a, b) = (cert(1), cert(2));
        assert_eq!(book.admit_call(a.hub_id()), Err(CallErrorCode::WrongSigner));
        book.on_established(a.clone());
        book.on_established(b.clone());
        assert_eq!(
            book.admit_call(a.hub_id()).map(|c| c.hub_id()),
            Ok(a.hub_id())
        );
        book.set_suspended(a.hub_id(), true);
        assert_eq!(book.admit_call(a.hub_id()), Err(CallErrorCode::Suspended));
        assert_eq!(book.admit(a.hub_id()), Err(CallErrorCode::Suspended));
        assert_eq!(book.admit(b.hub_id()), Ok(()));
        book.set_suspended(a.hub_id(), false);
        assert!(book.admit_call(a.hub_id()).is_ok());
        // Revoked by its record: refused though its session is up.
        book.on_revoked(b.hub_id());
        assert_eq!(book.admit_call(b.hub_id()), Err(CallErrorCode::Revoked));
        // Revoked by a list: its certificate and reports are dropped; an older list is ignored.
        assert!(book.on_revocations(&list(2, &a)));
        assert_eq!(book.admit_call(a.hub_id()), Err(CallErrorCode::WrongSigner));
        assert!(!book.on_revocations(&list(1, &b)));
        // A session that comes up again with the revoked certificate is still refused.
        book.on_established(a.clone());
        assert_eq!(book.admit_call(a.hub_id()), Err(CallErrorCode::Revoked));
    }

    /// A fault of one kind about one peer is written once per interval, the rest counted into
    /// one entry at its end; other kinds and peers are not held back by it.
    #[test]
    fn faults_are_written_once_per_interval_per_peer_and_kind() {
        use shared_proto::audit::repeats::REPEAT_INTERVAL_MS;
        let book = PeerBook::default();
        let (a, b) = (HubId([1; 16]), HubId([2; 16]));
        let fault = |peer, kind| crate::node::audit::fault(peer, kind, "garbage");
        assert!(book
            .admit_repeat(fault(a, FaultKind::Handshake), NOW)
            .is_some());
        for i in 1..5 {
            assert!(book
                .admit_repeat(fault(a, FaultKind::Handshake), NOW + i)
                .is_none());
        }
        assert!(book.admit_repeat(fault(a, FaultKind::Views), NOW).is_some());
        assert!(book
            .admit_repeat(fault(b, FaultKind::Handshake), NOW)
            .is_some());
        assert_eq!(book.repeats_timeout(), Some(NOW + REPEAT_INTERVAL_MS));
        assert!(book
            .repeats_due(NOW + REPEAT_INTERVAL_MS - 1, false)
            .is_empty());
        let due = book.repeats_due(NOW + REPEAT_INTERVAL_MS, false);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].peer, due[0].count), (Some(a), Some(4)));
        assert!(book
            .admit_repeat(fault(a, FaultKind::Handshake), NOW + REPEAT_INTERVAL_MS)
            .is_some());
    }

    /// Audit heads and views count only from peers with a session; a forged head is refused.
    #[test]
    fn reports_count_only_from_peers_with_a_session() {
        let book = PeerBook::default();
        let a = cert(1);
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let head = Head {
            hub: a.hub_id(),
            seq: 3,
            mac: [7; 32],
            at_ms: NOW,
        };
        let signed = head.sign(&key);
        assert!(matches!(
            book.on_audit_head(a.hub_id(), &signed),
            Err(AuditHeadRefusal::NoSession)
        ));
        let views = Views {
            epoch: Some(4),
            views: vec![],
        }
        .encode();
        assert_eq!(book.on_views(a.hub_id(), &views, NOW), Ok(false));
        book.on_established(a.clone());
        assert_eq!(
            book.on_audit_head(a.hub_id(), &signed).map(|h| h.seq).ok(),
            Some(3)
        );
        let forged = head.sign(&ed25519_dalek::SigningKey::from_bytes(&[2; 32]));
        assert!(matches!(
            book.on_audit_head(a.hub_id(), &forged),
            Err(AuditHeadRefusal::Bad(_))
        ));
        assert_eq!(book.on_views(a.hub_id(), &views, NOW), Ok(true));
        assert!(book.on_views(a.hub_id(), b"junk", NOW).is_err());
        let heads = HashMap::new();
        let view = book.view_of(a.hub_id(), &heads).expect("a session");
        assert_eq!(view.manifest_epoch, Some(4));
    }
}
