//! The per-peer trust score: 0 to 100, from what this hub observed of the peer, with its parts.
//!
//! ```text
//! score = max(0, 100 - signature - audit - refusals - expiry - quorum)
//! signature = min(40, 10 x faults of the peer, all time): its calls refused as bad_envelope,
//!             wrong_signer, expired, replayed or arguments_mismatch, and its refused handshakes
//!             (certificate refused or not its key), audit heads (bad signature), manifests and
//!             views messages (`peer.fault` audit entries: a kind repeated within a minute is
//!             one entry with its count, and counts as one fault)
//! audit     = min(50, 25 x inconsistencies of its signed audit heads)
//! refusals  = min(20, 2 x its calls refused by policy in the last 24 h)
//!             (not_shared, trust_too_low, scope_denied, unknown_tool)
//! expiry    = 10 if its certificate expires within 7 days, 100 if it has expired
//! quorum    = min(30, 15 x other hubs whose fresh report on it differs from this hub's view:
//!             another certificate, another manifest epoch, or another MAC at the same audit
//!             sequence number; `hub::quorum`)
//! ```

use shared_proto::agent::CallErrorCode;

use crate::hub::quorum::QuorumCheck;
use crate::node::audit::{AuditKind, Decision};
use crate::node::store::{AuditCount, PeerAuditHead};

/// Refusal codes that mean the peer sent a faulty or forged envelope.
const SIGNATURE_CODES: [CallErrorCode; 5] = [
    CallErrorCode::BadEnvelope,
    CallErrorCode::WrongSigner,
    CallErrorCode::Expired,
    CallErrorCode::Replayed,
    CallErrorCode::ArgumentsMismatch,
];
/// Refusal codes that mean the peer asked for what policy does not allow it.
const POLICY_CODES: [CallErrorCode; 4] = [
    CallErrorCode::NotShared,
    CallErrorCode::TrustTooLow,
    CallErrorCode::ScopeDenied,
    CallErrorCode::UnknownTool,
];

/// One part of a score.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScorePart {
    /// `signature`, `audit`, `refusals`, `expiry` or `quorum`.
    pub name: String,
    /// What was counted.
    pub observed: String,
    /// Points taken off.
    pub penalty: u32,
}

/// A peer's trust score and its parts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TrustScore {
    /// 0 to 100.
    pub score: u32,
    /// How it was made.
    pub parts: Vec<ScorePart>,
}

/// What the score is made from.
#[derive(Debug, Clone, Default)]
pub struct ScoreInputs {
    /// The counts of the audit entries about the peer (calls in, faults), all time.
    pub calls_all_time: Vec<AuditCount>,
    /// The same, last 24 h.
    pub calls_last_day: Vec<AuditCount>,
    /// Its audit head as held.
    pub audit_head: Option<PeerAuditHead>,
    /// When its certificate expires (Unix ms), if known.
    pub cert_not_after_ms: Option<u64>,
    /// The other hubs' reports on it, if this hub has a session with it to compare.
    pub quorum: Option<QuorumCheck>,
    /// Now (Unix ms).
    pub now_ms: u64,
}

fn refused(counts: &[AuditCount], codes: &[CallErrorCode]) -> u64 {
    counts
        .iter()
        .filter(|c| {
            c.kind == AuditKind::CallIn
                && c.decision == Decision::Refused
                && c.code
                    .as_deref()
                    .and_then(CallErrorCode::from_name)
                    .is_some_and(|code| codes.contains(&code))
        })
        .map(|c| c.count)
        .sum()
}

/// `each` points per event, at most `max`.
fn cap(n: u64, each: u64, max: u64) -> u32 {
    n.saturating_mul(each).min(max) as u32
}

fn faults(counts: &[AuditCount]) -> u64 {
    counts
        .iter()
        .filter(|c| c.kind == AuditKind::PeerFault)
        .map(|c| c.entries)
        .sum()
}

/// The score from its inputs.
pub fn trust_score(inputs: &ScoreInputs) -> TrustScore {
    let envelopes = refused(&inputs.calls_all_time, &SIGNATURE_CODES);
    let other_faults = faults(&inputs.calls_all_time);
    let faulty = envelopes + other_faults;
    let inconsistencies = inputs.audit_head.as_ref().map_or(0, |h| h.inconsistencies);
    let policy = refused(&inputs.calls_last_day, &POLICY_CODES);
    const WEEK_MS: u64 = 7 * 86_400_000;
    let (expiry, expiry_note) = match inputs.cert_not_after_ms {
        Some(at) if at <= inputs.now_ms => (100, "its certificate has expired".to_owned()),
        Some(at) if at - inputs.now_ms <= WEEK_MS => (
            10,
            format!(
                "its certificate expires in {} h",
                (at - inputs.now_ms) / 3_600_000
            ),
        ),
        Some(at) => (
            0,
            format!(
                "its certificate expires in {} days",
                (at - inputs.now_ms) / 86_400_000
            ),
        ),
        None => (
            0,
            "its certificate was not seen in a session yet".to_owned(),
        ),
    };
    let parts = vec![
        ScorePart {
            name: "signature".into(),
            observed: format!(
                "{envelopes} faulty or forged envelope(s), {other_faults} refused handshake(s) \
                 or document(s)"
            ),
            penalty: cap(faulty, 10, 40),
        },
        ScorePart {
            name: "audit".into(),
            observed: match &inputs.audit_head {
                Some(h) => format!(
                    "{inconsistencies} inconsistent audit head(s); head at {}",
                    h.seq
                ),
                None => "no audit head received yet".into(),
            },
            penalty: cap(inconsistencies, 25, 50),
        },
        ScorePart {
            name: "refusals".into(),
            observed: format!("{policy} call(s) refused by policy in 24 h"),
            penalty: cap(policy, 2, 20),
        },
        ScorePart {
            name: "expiry".into(),
            observed: expiry_note,
            penalty: expiry,
        },
        quorum_part(inputs.quorum.as_ref()),
    ];
    let taken: u32 = parts.iter().map(|p| p.penalty).sum();
    TrustScore {
        score: 100u32.saturating_sub(taken),
        parts,
    }
}

fn quorum_part(check: Option<&QuorumCheck>) -> ScorePart {
    let (observed, penalty) = match check {
        None => ("no session with it to compare".to_owned(), 0),
        Some(c) if c.reporters == 0 => ("no other hub has reported on it yet".to_owned(), 0),
        Some(c) => {
            let differ = c.disagreements.len() as u64;
            let mut observed = format!(
                "{} of {} other hub(s) see it as this hub does",
                u64::from(c.reporters) - differ,
                c.reporters
            );
            for (hub, what) in &c.disagreements {
                observed.push_str(&format!("; {hub}: {what}"));
            }
            (observed, cap(differ, 15, 30))
        }
    };
    ScorePart {
        name: "quorum".into(),
        observed,
        penalty,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared_proto::HubId;

    const NOW: u64 = 1_800_000_000_000;

    fn refusals(code: &str, count: u64) -> AuditCount {
        AuditCount {
            peer: None,
            kind: AuditKind::CallIn,
            decision: Decision::Refused,
            code: Some(code.into()),
            count,
            entries: count,
            duration_ms: 0,
            bytes: 0,
        }
    }

    fn healthy() -> ScoreInputs {
        ScoreInputs {
            calls_all_time: vec![AuditCount {
                decision: Decision::Allowed,
                code: None,
                ..refusals("", 50)
            }],
            calls_last_day: vec![],
            audit_head: Some(PeerAuditHead {
                seq: 10,
                at_ms: NOW,
                inconsistencies: 0,
                last_problem: None,
            }),
            cert_not_after_ms: Some(NOW + 300 * 86_400_000),
            quorum: Some(QuorumCheck {
                reporters: 2,
                disagreements: vec![],
            }),
            now_ms: NOW,
        }
    }

    fn penalty(score: &TrustScore, part: &str) -> u32 {
        score.parts.iter().find(|p| p.name == part).unwrap().penalty
    }

    /// Each part goes down with the event that should lower it, and only that part.
    #[test]
    fn each_part_is_driven_down_by_its_own_events() {
        assert_eq!(trust_score(&healthy()).score, 100);

        let mut forged = healthy();
        forged.calls_all_time.push(refusals("wrong_signer", 2));
        forged.calls_all_time.push(refusals("replayed", 1));
        let s = trust_score(&forged);
        assert_eq!((s.score, penalty(&s, "signature")), (70, 30));
        forged.calls_all_time.push(refusals("expired", 10));
        assert_eq!(penalty(&trust_score(&forged), "signature"), 40, "capped");
        let mut bad_handshakes = healthy();
        bad_handshakes.calls_all_time.push(AuditCount {
            kind: AuditKind::PeerFault,
            ..refusals("handshake", 2)
        });
        let s = trust_score(&bad_handshakes);
        assert_eq!((s.score, penalty(&s, "signature")), (80, 20));
        // Faults repeated within a minute are one entry, and count as one.
        let mut repeated = healthy();
        repeated.calls_all_time.push(AuditCount {
            kind: AuditKind::PeerFault,
            entries: 1,
            ..refusals("handshake", 500)
        });
        assert_eq!(penalty(&trust_score(&repeated), "signature"), 10);

        let mut rolled_back = healthy();
        if let Some(h) = rolled_back.audit_head.as_mut() {
            h.inconsistencies = 1;
        }
        let s = trust_score(&rolled_back);
        assert_eq!((s.score, penalty(&s, "audit")), (75, 25));

        let mut pushy = healthy();
        pushy.calls_last_day.push(refusals("not_shared", 3));
        pushy.calls_last_day.push(refusals("trust_too_low", 1));
        // An app failing is not the peer's fault.
        pushy.calls_last_day.push(refusals("app_failed", 5));
        let s = trust_score(&pushy);
        assert_eq!((s.score, penalty(&s, "refusals")), (92, 8));

        let mut expiring = healthy();
        expiring.cert_not_after_ms = Some(NOW + 2 * 86_400_000);
        assert_eq!(trust_score(&expiring).score, 90);
        expiring.cert_not_after_ms = Some(NOW - 1);
        assert_eq!(trust_score(&expiring).score, 0);

        let mut two_faced = healthy();
        two_faced.quorum = Some(QuorumCheck {
            reporters: 3,
            disagreements: vec![(HubId([2; 16]), "it sees another certificate".into())],
        });
        let s = trust_score(&two_faced);
        assert_eq!((s.score, penalty(&s, "quorum")), (85, 15));
        let part = s.parts.iter().find(|p| p.name == "quorum").unwrap();
        assert!(part.observed.starts_with("2 of 3 other hub(s)"), "{part:?}");
        two_faced.quorum = Some(QuorumCheck {
            reporters: 3,
            disagreements: vec![(HubId([2; 16]), String::new()); 3],
        });
        assert_eq!(penalty(&trust_score(&two_faced), "quorum"), 30, "capped");
    }
}
