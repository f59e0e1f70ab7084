//! The quorum part of the trust score: what the other hubs report seeing of a peer (its
//! certificate, its manifest epoch, its audit head), held against what this hub sees of it. A hub
//! that shows one face to some peers and another to the rest (two certificates, two manifests,
//! two audit chains) is caught by the peers comparing notes.
//!
//! Reports arrive in session message kind 14 (`shared_proto::audit::Views`) from hubs this hub
//! has a session with; each replaces its sender's previous one and counts for
//! [`REPORT_TTL_MS`]. Held: one report per cluster member, each of at most
//! `audit::MAX_VIEWS` views, and one claimed epoch per member.

use std::collections::HashMap;

use shared_proto::audit::{View, Views};
use shared_proto::HubId;

/// How long a report counts after it arrived (hubs send theirs every `--audit-head-interval`,
/// 30 s by default).
pub const REPORT_TTL_MS: u64 = 10 * 60_000;

/// How long another hub may report another manifest epoch of a peer than this hub holds before
/// it counts: after a pairing or a revocation, the new epoch reaches the hubs one report interval
/// (30 s) apart, and a report sent just before it is held for another interval.
pub const EPOCH_GRACE_MS: u64 = 2 * 30_000;

/// How long another hub may report another certificate of a peer than this hub sees before it
/// counts: a renewed certificate reaches each peer by a rekey at once, and the reports that named
/// the old one are replaced within a report interval (30 s); a report sent just before is held
/// for another.
pub const CERT_GRACE_MS: u64 = 2 * 30_000;

/// Where a reporter sees a peer otherwise than this hub: by (reporter, peer), the two values
/// (this hub's, the reporter's) and since when that difference is seen (Unix ms).
type Splits<T> = HashMap<(HubId, HubId), (T, T, u64)>;

/// Notes what the reporter of `key` sees against this hub at `now_ms` (`seen`: this hub's value
/// and the reporter's, if both are known): since when the same difference is seen, or `None`
/// if there is none (and any held is forgotten).
fn note_split<T: PartialEq + Copy>(
    splits: &mut Splits<T>,
    key: (HubId, HubId),
    seen: Option<(T, T)>,
    now_ms: u64,
) -> Option<u64> {
    match seen {
        Some((mine, theirs)) if mine != theirs => {
            let since = match splits.get(&key) {
                Some(&(m, t, since)) if (m, t) == (mine, theirs) => since,
                _ => now_ms,
            };
            splits.insert(key, (mine, theirs, since));
            Some(since)
        }
        _ => {
            splits.remove(&key);
            None
        }
    }
}

/// The reports held.
#[derive(Debug, Default)]
pub struct Quorum {
    /// The manifest epoch each peer last claimed for itself.
    epochs: HashMap<HubId, u64>,
    /// The newest report of each peer: when it arrived, and its views (ascending by hub).
    reports: HashMap<HubId, (u64, Vec<View>)>,
    /// Where a reporter's view of a peer's epoch differs from this hub's: by (reporter, peer),
    /// the two epochs (this hub's, the reporter's) and since when that difference is reported.
    epoch_splits: Splits<u64>,
    /// Where a reporter's view of a peer's certificate differs from this hub's: by (reporter,
    /// peer), the two fingerprints (this hub's, the reporter's) and since when this hub sees it.
    cert_splits: Splits<[u8; 32]>,
}

/// How the other hubs' reports on one peer compare with this hub's view of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuorumCheck {
    /// Hubs whose fresh report covers the peer.
    pub reporters: u32,
    /// Those that see it otherwise, with what differs, for people.
    pub disagreements: Vec<(HubId, String)>,
}

impl Quorum {
    /// Keeps `from`'s report, replacing its previous one.
    pub fn keep(&mut self, from: HubId, report: Views, now_ms: u64) {
        if let Some(epoch) = report.epoch {
            self.epochs.insert(from, epoch);
        }
        for view in &report.views {
            let seen = self.epochs.get(&view.hub).copied().zip(view.manifest_epoch);
            note_split(&mut self.epoch_splits, (from, view.hub), seen, now_ms);
        }
        self.reports.insert(from, (now_ms, report.views));
    }

    /// Forgets what `hub` reported, and what was reported of it (it was revoked).
    pub fn forget(&mut self, hub: HubId) {
        self.epochs.remove(&hub);
        self.reports.remove(&hub);
        self.epoch_splits
            .retain(|(from, peer), _| *from != hub && *peer != hub);
        self.cert_splits
            .retain(|(from, peer), _| *from != hub && *peer != hub);
    }

    /// The manifest epoch `hub` last claimed.
    pub fn epoch(&self, hub: HubId) -> Option<u64> {
        self.epochs.get(&hub).copied()
    }

    /// The fresh reports on `mine.hub` from hubs other than itself, against `mine`. Another
    /// certificate counts once this hub has seen it reported for longer than
    /// [`CERT_GRACE_MS`] (a renewal in flight).
    pub fn check(&mut self, mine: &View, now_ms: u64) -> QuorumCheck {
        let mut check = QuorumCheck::default();
        let mut reporters: Vec<_> = self
            .reports
            .iter()
            .filter(|(from, (at, _))| {
                **from != mine.hub && now_ms.saturating_sub(*at) <= REPORT_TTL_MS
            })
            .collect();
        reporters.sort_by_key(|(from, _)| **from);
        for (from, (_, views)) in reporters {
            let Ok(at) = views.binary_search_by_key(&mine.hub, |v| v.hub) else {
                continue;
            };
            check.reporters += 1;
            let split_since =
                self.epoch_splits
                    .get(&(*from, mine.hub))
                    .and_then(|&(m, t, since)| {
                        (Some(m) == mine.manifest_epoch && Some(t) == views[at].manifest_epoch)
                            .then_some(since)
                    });
            // Another epoch counts once it has been reported for longer than the grace.
            let epoch_settled = split_since.is_some_and(|s| now_ms >= s + EPOCH_GRACE_MS);
            let seen = Some((mine.cert_sha256, views[at].cert_sha256));
            let cert_settled = note_split(&mut self.cert_splits, (*from, mine.hub), seen, now_ms)
                .is_none_or(|since| now_ms >= since + CERT_GRACE_MS);
            if let Some(what) = difference(mine, &views[at], epoch_settled, cert_settled) {
                check.disagreements.push((*from, what));
            }
        }
        check
    }
}

/// What differs between this hub's view and another's, if anything that cannot be timing: the
/// certificate, the epoch (once `epoch_settled`: reported for longer than [`EPOCH_GRACE_MS`]),
/// or another MAC at the same audit sequence number (a head further on is only newer).
fn difference(
    mine: &View,
    theirs: &View,
    epoch_settled: bool,
    cert_settled: bool,
) -> Option<String> {
    if mine.cert_sha256 != theirs.cert_sha256 && cert_settled {
        return Some("it sees another certificate".into());
    }
    if let (Some(a), Some(b)) = (mine.manifest_epoch, theirs.manifest_epoch) {
        if a != b && epoch_settled {
            return Some(format!("it was told manifest epoch {b}, this hub {a}"));
        }
    }
    if let (Some((seq, a)), Some((their_seq, b))) = (mine.head, theirs.head) {
        if seq == their_seq && a != b {
            return Some(format!("it holds another audit head for entry {seq}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn hub(n: u8) -> HubId {
        HubId([n; 16])
    }

    fn view(n: u8) -> View {
        View {
            hub: hub(n),
            cert_sha256: [n; 32],
            manifest_epoch: Some(3),
            head: Some((10, [n; 32])),
        }
    }

    fn report(views: Vec<View>) -> Views {
        Views {
            epoch: Some(3),
            views,
        }
    }

    /// Agreeing reports count; each kind of two-faced behaviour is named; a head further on, a
    /// stale report and a hub's report on itself do not count against it.
    #[test]
    fn reports_are_held_against_this_hubs_view() {
        let subject = view(1);
        let mut q = Quorum::default();
        assert_eq!(q.check(&subject, NOW), QuorumCheck::default());

        q.keep(hub(2), report(vec![view(1), view(3)]), NOW);
        let mut ahead = view(1);
        ahead.head = Some((12, [9; 32]));
        q.keep(hub(3), report(vec![ahead]), NOW);
        // Its own report on itself says nothing.
        q.keep(hub(1), report(vec![view(1)]), NOW);
        assert_eq!(
            q.check(&subject, NOW),
            QuorumCheck {
                reporters: 2,
                disagreements: vec![]
            }
        );
        assert_eq!(q.epoch(hub(2)), Some(3));

        let mut forked = view(1);
        forked.head = Some((10, [7; 32]));
        q.keep(hub(4), report(vec![forked]), NOW);
        let mut other_cert = view(1);
        other_cert.cert_sha256 = [0; 32];
        q.keep(hub(5), report(vec![other_cert]), NOW);
        // Hub 1 claims epoch 3 itself (its report), hub 6 was told 2.
        q.keep(hub(1), report(vec![view(1)]), NOW);
        let mut other_epoch = view(1);
        other_epoch.manifest_epoch = Some(2);
        q.keep(hub(6), report(vec![other_epoch]), NOW);
        assert_eq!(
            q.check(&subject, NOW).disagreements.len(),
            1,
            "epoch and certificate in grace"
        );
        let later = NOW + EPOCH_GRACE_MS;
        q.keep(hub(6), report(vec![other_epoch]), later);
        let check = q.check(&subject, later);
        assert_eq!(check.reporters, 5);
        let named: Vec<_> = check
            .disagreements
            .iter()
            .map(|(h, w)| (h.0[0], w.as_str()))
            .collect();
        assert_eq!(
            named,
            vec![
                (4, "it holds another audit head for entry 10"),
                (5, "it sees another certificate"),
                (6, "it was told manifest epoch 2, this hub 3"),
            ]
        );

        // Reports expire; a revoked reporter is forgotten.
        assert_eq!(q.check(&subject, later + REPORT_TTL_MS + 1).reporters, 0);
        q.forget(hub(4));
        assert_eq!(q.check(&subject, later).disagreements.len(), 2);
    }

    /// After a renewal, a hub that reports the certificate before costs the peer nothing within
    /// the grace, counts once it goes on past it, and stops counting when it reports the same
    /// certificate as this hub.
    #[test]
    fn a_renewed_certificate_is_not_a_disagreement_within_its_grace() {
        let renewed = view(1);
        let mut q = Quorum::default();
        let mut before = view(1);
        before.cert_sha256 = [0xaa; 32];
        for t in [0, 30_000, CERT_GRACE_MS - 1] {
            q.keep(hub(2), report(vec![before]), NOW + t);
            assert!(
                q.check(&renewed, NOW + t).disagreements.is_empty(),
                "at +{t} ms"
            );
        }
        q.keep(hub(2), report(vec![before]), NOW + CERT_GRACE_MS);
        let named = q.check(&renewed, NOW + CERT_GRACE_MS).disagreements;
        assert_eq!(named, vec![(hub(2), "it sees another certificate".into())]);
        // It holds the renewed one now: agreed, and another change starts a grace of its own.
        q.keep(hub(2), report(vec![view(1)]), NOW + CERT_GRACE_MS + 1);
        assert!(q
            .check(&renewed, NOW + CERT_GRACE_MS + 1)
            .disagreements
            .is_empty());
        let mut next = view(1);
        next.cert_sha256 = [0xbb; 32];
        q.keep(hub(2), report(vec![next]), NOW + CERT_GRACE_MS + 2);
        assert!(q
            .check(&renewed, NOW + CERT_GRACE_MS + 2)
            .disagreements
            .is_empty());
    }

    /// After a manifest change, the hubs hear of the new epoch one report interval apart: a hub
    /// reporting the epoch before (or the one after) costs the peer nothing within the grace,
    /// and counts once it goes on past it. (Once each pairing or revocation cost honest peers
    /// up to 30 points for about 30 s.)
    #[test]
    fn an_epoch_change_is_not_a_disagreement_within_its_grace() {
        let subject = view(1);
        let mut q = Quorum::default();
        q.keep(hub(1), report(vec![]), NOW);
        let mut before = view(1);
        before.manifest_epoch = Some(2);
        // Reported at every interval, for as long as the grace: tolerated.
        for t in [0, 30_000, EPOCH_GRACE_MS - 1] {
            q.keep(hub(2), report(vec![before]), NOW + t);
            assert!(
                q.check(&subject, NOW + t).disagreements.is_empty(),
                "at +{t} ms"
            );
        }
        // It caught up: nothing held.
        q.keep(hub(2), report(vec![view(1)]), NOW + EPOCH_GRACE_MS);
        assert!(q.epoch_splits.is_empty());
        // This hub's view moves on (epoch 4): the reporter still at 3 is in a new grace.
        let mut moved = view(1);
        moved.manifest_epoch = Some(4);
        q.keep(
            hub(1),
            Views {
                epoch: Some(4),
                views: vec![],
            },
            NOW + 100_000,
        );
        q.keep(hub(2), report(vec![view(1)]), NOW + 100_001);
        assert!(q.check(&moved, NOW + 100_001).disagreements.is_empty());
        q.keep(
            hub(2),
            report(vec![view(1)]),
            NOW + 100_001 + EPOCH_GRACE_MS,
        );
        assert_eq!(
            q.check(&moved, NOW + 100_001 + EPOCH_GRACE_MS)
                .disagreements
                .len(),
            1
        );
    }
}
