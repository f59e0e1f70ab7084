//! What the hub's service answers: the types every surface shows, serialized as JSON by the
//! admin API (docs/API.md) and read back by the CLI.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use shared_proto::HubId;

use crate::node::store::PeerRecord;
use crate::transport::peers::PeerInfo;
use crate::unix_ms;

/// `GET /api/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    /// Whether this hub is a member of a cluster; the other fields are present only if so.
    pub joined: bool,
    /// This hub's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_id: Option<String>,
    /// Its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The cluster id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Its trust level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_level: Option<String>,
    /// Whether it holds the cluster CA key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub founder: Option<bool>,
    /// The relay connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayView>,
    /// Peers online at the relay now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peers_online: Option<usize>,
    /// The manifest's epoch, if one is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_epoch: Option<u64>,
    /// The revocation list's version, if one is held.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_version: Option<u64>,
    /// This hub's certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<CertificateView>,
    /// The LAN path: where it listens and the hubs of this cluster it found and linked to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lan: Option<LanStatusView>,
}

/// The LAN path in [`StatusView`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanStatusView {
    /// Whether it runs (off with `hub run --no-lan`).
    pub enabled: bool,
    /// Where it accepts links.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// The hubs of this cluster found on the LAN (by mDNS) or linked.
    #[serde(default)]
    pub peers: Vec<LanPeerView>,
}

/// A hub found on the LAN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LanPeerView {
    /// Its hub id.
    pub hub_id: String,
    /// Where it is reached (the link's address when linked).
    pub addrs: Vec<String>,
    /// Whether a verified direct link is up (messages to it go by the LAN).
    pub linked: bool,
}

/// A certificate in [`StatusView`]: its SHA-256 and validity (Unix ms).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificateView {
    /// SHA-256 of its DER, hex.
    pub sha256: String,
    /// Valid from.
    pub not_before_ms: u64,
    /// Valid until.
    pub not_after_ms: u64,
    /// When the running hub renews it (two thirds into its term; sooner after a failed
    /// attempt is retried).
    #[serde(default)]
    pub renew_at_ms: u64,
    /// Said when it ends within 30 days (or a third of its term), or has ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

impl CertificateView {
    /// The view of `cert` at `now_ms`, to be renewed at `renew_at_ms`.
    pub fn of(cert: &shared_proto::trust::VerifiedPeer, renew_at_ms: u64, now_ms: u64) -> Self {
        CertificateView {
            sha256: hex::encode(cert.fingerprint()),
            not_before_ms: cert.not_before_ms(),
            not_after_ms: cert.not_after_ms(),
            renew_at_ms,
            warning: expiry_warning(cert, now_ms),
        }
    }
}

/// What to say of a certificate that ends soon (30 days, or a third of its term) or has ended.
pub fn expiry_warning(cert: &shared_proto::trust::VerifiedPeer, now_ms: u64) -> Option<String> {
    let end = cert.not_after_ms();
    if now_ms >= end {
        return Some(
            "this hub's certificate has EXPIRED: the relay refuses it (4014); renew it with \
             `hub cert renew` on a running hub that can reach an admin, or pair it again"
                .into(),
        );
    }
    if now_ms < shared_proto::trust::renewal::warn_at(cert) {
        return None;
    }
    let left = end - now_ms;
    let when = if left >= 2 * 86_400_000 {
        format!("{} days", left / 86_400_000)
    } else {
        format!("{} minutes", left.div_ceil(60_000))
    };
    Some(format!(
        "this hub's certificate ends in {when} and has not been renewed: is an admin hub \
         reachable? (`hub cert renew` tries now)"
    ))
}

impl StatusView {
    /// The status of a hub that has not joined a cluster yet.
    pub fn not_joined() -> Self {
        StatusView {
            joined: false,
            hub_id: None,
            name: None,
            cluster_id: None,
            trust_level: None,
            founder: None,
            relay: None,
            peers_online: None,
            manifest_epoch: None,
            revocation_version: None,
            certificate: None,
            lan: None,
        }
    }
}

/// The relay connection in [`StatusView`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RelayView {
    /// The relay's URL.
    pub url: String,
    /// Whether the relay admitted this hub and the connection is up.
    pub connected: bool,
    /// The round trip to the relay just measured, if connected.
    pub rtt_ms: Option<f64>,
    /// Why the last connection ended, if it did.
    pub last_error: Option<String>,
    /// Whether the relay has rate-limited this hub since it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited: Option<RateLimitedView>,
}

/// How often the relay rate-limited this hub (it then sends slower for a while).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimitedView {
    /// Notices received from the relay.
    pub times: u64,
    /// Frames the relay dropped, as its notices counted them.
    pub dropped: u64,
    /// How long ago the last notice came (ms).
    pub last_ms_ago: u64,
}

/// A peer as the API (and the CLI, offline) shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerView {
    /// Its hub id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Where it was reached (its relay).
    pub endpoint: String,
    /// Its identity key (hex).
    pub public_key: String,
    /// Its trust level.
    pub trust_level: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// When it paired (Unix ms).
    pub paired_at: u64,
    /// When it was revoked.
    pub revoked_at: Option<u64>,
    /// When it was suspended (its calls are refused).
    pub suspended_at: Option<u64>,
    /// When it was last seen online.
    pub last_seen_at: Option<u64>,
    /// Whether it is online now; absent when unknown (the hub is not running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
    /// Its trust score, 0 to 100 (`/peers/{id}` has its parts); absent when not computed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust_score: Option<u32>,
    /// The path messages to it take now, while it is online: `lan` (a verified direct link)
    /// or `relay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

impl PeerView {
    /// `p` as stored; `online` is the relay's presence, if this hub is connected to know it.
    pub fn new(p: PeerRecord, online: Option<&BTreeSet<HubId>>) -> Self {
        let online = online.map(|set| p.revoked_at.is_none() && set.contains(&p.id));
        // A peer online now was last seen now.
        let last_seen_at = if online == Some(true) {
            Some(unix_ms())
        } else {
            p.last_seen_at
        };
        PeerView {
            id: p.id.to_string(),
            name: p.name,
            endpoint: p.endpoint,
            public_key: p.public_key,
            trust_level: p.trust.as_str().to_owned(),
            roles: p.roles,
            paired_at: p.paired_at,
            revoked_at: p.revoked_at,
            suspended_at: p.suspended_at,
            last_seen_at,
            online,
            trust_score: None,
            path: None,
        }
    }
}

/// `GET /api/federation/peers/{id}`: the peer, with what it reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerDetail {
    /// The peer.
    #[serde(flatten)]
    pub peer: PeerView,
    /// What it reported about itself over the session just now.
    pub reported: Option<PeerInfo>,
    /// Why it could not be asked.
    pub report_error: Option<String>,
    /// The newest audit head it signed for this hub, and the inconsistencies seen.
    #[serde(default)]
    pub audit_head: Option<crate::node::store::PeerAuditHead>,
    /// Its trust score, with its parts (`hub::score`).
    #[serde(default)]
    pub trust_score: Option<crate::hub::score::TrustScore>,
}

/// A pairing token just made (`POST /api/federation/generate-pairing-token`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairingTokenView {
    /// The token: shown once.
    pub token: String,
    /// The issuing hub.
    pub issuer: String,
    /// The cluster.
    pub cluster_id: String,
    /// The new hub's trust level.
    pub trust_level: String,
    /// The new hub's roles.
    pub roles: Vec<String>,
    /// When it expires (Unix ms).
    pub expires_at: u64,
    /// Its lifetime.
    pub expires_in_seconds: u64,
}

/// This hub after joining (`POST /api/federation/pair`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedView {
    /// This hub's new id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The cluster.
    pub cluster_id: String,
    /// Its trust level.
    pub trust_level: String,
    /// Its roles.
    pub roles: Vec<String>,
    /// The hub that issued the token.
    pub issuer: IssuerView,
}

/// The issuer in [`JoinedView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuerView {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
}

/// A peer revoked (`DELETE /api/federation/peers/{id}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedView {
    /// Always true.
    pub ok: bool,
    /// The peer.
    pub id: String,
    /// The version of the revocation list published.
    pub revocation_version: u64,
}

/// A peer's trust level and roles set (`POST /api/federation/peers/{id}/trust`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermsView {
    /// Always true.
    pub ok: bool,
    /// The peer.
    pub id: String,
    /// Its trust level now.
    pub trust_level: String,
    /// Its roles now.
    pub roles: Vec<String>,
    /// The manifest that says so.
    pub manifest_epoch: u64,
}

/// A peer suspended or resumed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuspendedView {
    /// Always true.
    pub ok: bool,
    /// The peer.
    pub id: String,
    /// When it was suspended; `None` once resumed.
    pub suspended_at: Option<u64>,
}

/// A round trip to a peer (`POST /api/federation/peers/{id}/ping`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PingView {
    /// The peer.
    pub id: String,
    /// The round trip through the end-to-end session, in milliseconds.
    pub rtt_ms: f64,
}

/// Federation statistics over one window (`GET /api/federation/stats`), from the audit log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsWindow {
    /// `hour`, `day` or `all`.
    pub window: String,
    /// Everything together.
    pub total: StatsCounts,
    /// Per peer (hub id).
    pub peers: std::collections::BTreeMap<String, StatsCounts>,
    /// Requests made with each API token, by the token's name.
    pub token_uses: std::collections::BTreeMap<String, u64>,
}

/// Counts of one window, in total or for one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsCounts {
    /// Calls this hub forwarded to peers (envelopes issued).
    pub calls_out: u64,
    /// Of those, refused by the peer, by code.
    pub refused_out: std::collections::BTreeMap<String, u64>,
    /// Calls peers made to this hub's apps.
    pub calls_in: u64,
    /// Of those, accepted (the envelope and the policy passed).
    pub accepted_in: u64,
    /// Refused, by code.
    pub refused_in: std::collections::BTreeMap<String, u64>,
    /// Time spent in calls both ways (ms).
    pub call_ms: u64,
    /// Bytes calls carried both ways (arguments and results).
    pub call_bytes: u64,
    /// API tokens created.
    pub tokens_created: u64,
    /// Pairing tokens issued.
    pub invites: u64,
    /// Pairings answered (allowed and refused).
    pub pairings: u64,
}

impl StatsCounts {
    /// Adds a count of audit entries.
    pub(crate) fn add(&mut self, c: &crate::node::store::AuditCount) {
        use crate::node::audit::{AuditKind, Decision};
        let code = || c.code.clone().unwrap_or_default();
        match c.kind {
            AuditKind::CallOut => {
                self.calls_out += c.count;
                self.call_ms += c.duration_ms;
                self.call_bytes += c.bytes;
                if c.decision == Decision::Refused {
                    *self.refused_out.entry(code()).or_default() += c.count;
                }
            }
            AuditKind::CallIn => {
                self.calls_in += c.count;
                self.call_ms += c.duration_ms;
                self.call_bytes += c.bytes;
                if c.decision == Decision::Refused {
                    *self.refused_in.entry(code()).or_default() += c.count;
                } else {
                    self.accepted_in += c.count;
                }
            }
            AuditKind::TokenCreate => self.tokens_created += c.count,
            AuditKind::Invite => self.invites += c.count,
            AuditKind::Pairing => self.pairings += c.count,
            _ => {}
        }
    }
}

/// Federation statistics over the last hour, day and all time, counted from the audit log.
pub fn stats(
    store: &crate::node::store::Store,
    now_ms: u64,
) -> Result<Vec<StatsWindow>, crate::node::store::StoreError> {
    let windows = [
        ("hour", now_ms.saturating_sub(3_600_000)),
        ("day", now_ms.saturating_sub(86_400_000)),
        ("all", 0),
    ];
    windows
        .into_iter()
        .map(|(window, since)| {
            let mut out = StatsWindow {
                window: window.into(),
                token_uses: store.token_uses((since > 0).then_some(since))?,
                ..Default::default()
            };
            for c in store.audit_counts(None, since)? {
                out.total.add(&c);
                if let Some(peer) = c.peer {
                    out.peers.entry(peer.to_string()).or_default().add(&c);
                }
            }
            Ok(out)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::SigningKey;
    use shared_proto::trust::{CertificateRequest, ClusterCa, PeerCertificate, TrustLevel};
    use shared_proto::HubId;

    use super::expiry_warning;

    const DAY: u64 = 86_400_000;
    const T0: u64 = 1_800_000_000_000;

    fn cert(term_days: u64) -> shared_proto::trust::VerifiedPeer {
        let ca = ClusterCa::from_secret(&[1; 32]);
        let req = CertificateRequest {
            hub_id: HubId([2; 16]),
            name: "laptop".into(),
            trust: TrustLevel::Full,
            roles: vec![],
            identity_key: SigningKey::from_bytes(&[3; 32]).verifying_key(),
            noise_key: [4; 32],
            not_before_ms: T0,
            not_after_ms: T0 + term_days * DAY,
        };
        let der = ca.issue(&req, &mut rand::rngs::OsRng).unwrap();
        PeerCertificate::from_der(&der)
            .unwrap()
            .verify(&ca.public_key(), T0, None)
            .unwrap()
    }

    /// A year's certificate is warned about in its last 30 days, a short one in its last third;
    /// an ended one says it is refused.
    #[test]
    fn expiry_is_warned_about_in_the_last_thirty_days_or_third() {
        let year = cert(365);
        assert_eq!(expiry_warning(&year, T0 + 334 * DAY), None);
        let soon = expiry_warning(&year, T0 + 336 * DAY).unwrap();
        assert!(soon.contains("ends in 29 days"), "{soon}");
        let hours = expiry_warning(&year, T0 + 365 * DAY - 3_600_000).unwrap();
        assert!(hours.contains("ends in 60 minutes"), "{hours}");
        let ended = expiry_warning(&year, T0 + 365 * DAY).unwrap();
        assert!(
            ended.contains("EXPIRED") && ended.contains("4014"),
            "{ended}"
        );
        let short = cert(30);
        assert_eq!(expiry_warning(&short, T0 + 19 * DAY), None);
        assert!(expiry_warning(&short, T0 + 21 * DAY).is_some());
    }
}
