//! Certificate renewal (docs/PROTOCOL.md section 9, "Renewal"): when a hub asks for a new
//! certificate, what an admin issues, and what the hub accepts. Pure: the hub asks over its
//! session (`msg::Msg::RenewRequest`), the admin issues with [`renewed`], the hub checks the answer
//! with [`accept`]; [`Renewal`] says when to ask and when to ask again.
//!
//! A certificate's *term* is `not_after - not_before`. A new certificate is valid for some time
//! from its issuing, and starts a little in the past ([`slack`]: clocks that are behind); a
//! renewed one is valid as long as the one it renews ([`validity_of`]), so a certificate made for
//! a year is renewed for a year, one made for a minute (tests) for a minute.

use crate::trust::{CertificateRequest, PeerCertificate, TrustError, TrustLevel, VerifiedPeer};

/// What a hub that is not an admin answers a renewal request with (`refused`).
pub const NOT_ADMIN: &str =
    "not_admin: this hub is neither the founder nor an admin (it holds no CA key or admin certificate)";

/// The roles of the hubs a renewal is asked of.
pub const ADMIN_ROLES: [&str; 2] = ["founder", "admin"];

/// How long an admin has to answer a renewal request (a session may have to be set up first).
pub const ASK_TIMEOUT_MS: u64 = 10_000;

/// The most a certificate starts before its issuing.
const MAX_SLACK_MS: u64 = 5 * 60_000;

/// Whether a hub with `roles` is asked for renewals.
pub fn is_admin(roles: &[String]) -> bool {
    roles.iter().any(|r| ADMIN_ROLES.contains(&r.as_str()))
}

/// The audit reason of this hub's own renewal, until `not_after_ms`.
pub fn renewed_reason(not_after_ms: u64) -> String {
    format!("this hub's certificate renewed until {not_after_ms} (Unix ms)")
}

/// How far before its issuing a certificate valid for `validity_ms` starts: a tenth of that, at
/// most 5 minutes.
pub fn slack(validity_ms: u64) -> u64 {
    (validity_ms / 10).min(MAX_SLACK_MS)
}

/// The validity of a new certificate valid for `validity_ms` from `now_ms`:
/// `(not_before, not_after)`.
pub fn validity(now_ms: u64, validity_ms: u64) -> (u64, u64) {
    let slack = slack(validity_ms);
    (now_ms.saturating_sub(slack), now_ms + validity_ms)
}

/// When a certificate is due for renewal: two thirds into its term.
pub fn due_at(cert: &VerifiedPeer) -> u64 {
    let term = cert.not_after_ms().saturating_sub(cert.not_before_ms());
    cert.not_before_ms() + term / 3 * 2
}

/// How soon before its end a certificate is warned about (30 days, or a third of its term if
/// shorter).
pub fn warn_at(cert: &VerifiedPeer) -> u64 {
    const WARN_MS: u64 = 30 * 86_400_000;
    let term = cert.not_after_ms().saturating_sub(cert.not_before_ms());
    cert.not_after_ms().saturating_sub(WARN_MS.min(term / 3))
}

/// The validity a certificate was issued for, from its term (the inverse of [`validity`]:
/// `term = validity + slack(validity)`).
pub fn validity_of(cert: &VerifiedPeer) -> u64 {
    let term = cert.not_after_ms().saturating_sub(cert.not_before_ms());
    if term <= 11 * MAX_SLACK_MS {
        term * 10 / 11
    } else {
        term - MAX_SLACK_MS
    }
}

/// What an admin issues to renew `current` at `now_ms`: the same hub, name and keys, valid as
/// long from now as `current` was from its issuing, with `terms` (the trust level and roles the
/// admin holds for the hub now, or the certificate's own).
pub fn renewed(
    current: &VerifiedPeer,
    terms: Option<(TrustLevel, Vec<String>)>,
    now_ms: u64,
) -> CertificateRequest {
    let (not_before_ms, not_after_ms) = validity(now_ms, validity_of(current));
    let (trust, roles) = terms.unwrap_or_else(|| (current.trust(), current.roles().to_vec()));
    CertificateRequest {
        hub_id: current.hub_id(),
        name: current.name().to_owned(),
        trust,
        roles,
        identity_key: *current.identity_key(),
        noise_key: *current.noise_key(),
        not_before_ms,
        not_after_ms,
    }
}

/// Why a renewed certificate was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RenewalError {
    /// It does not verify against the cluster CA (signature, dates, revocation).
    #[error("the renewed certificate does not verify: {0}")]
    Certificate(#[from] TrustError),
    /// It names another hub, another name or other keys.
    #[error("the renewed certificate is not for this hub's keys")]
    NotMine,
    /// It ends no later than the one held.
    #[error("the renewed certificate ends no later than the one held")]
    NotLater,
    /// The grace period of a CA rotation ended before the hub moved (it pairs again).
    #[error("the cluster moved to a new CA key and the grace period to follow it ended")]
    GraceOver,
}

/// Checks a certificate an admin sent to renew `current`: it verifies against the CA at
/// `now_ms`, is for the same hub, name and keys, and ends later.
pub fn accept(
    current: &VerifiedPeer,
    der: &[u8],
    ca_key: &ed25519_dalek::VerifyingKey,
    now_ms: u64,
) -> Result<VerifiedPeer, RenewalError> {
    let new = same_hub(current, der, ca_key, now_ms)?;
    if new.not_after_ms() <= current.not_after_ms() {
        return Err(RenewalError::NotLater);
    }
    Ok(new)
}

/// A certificate that verifies against `ca_key` at `now_ms` for the hub, name and keys of
/// `current` (what a renewal and a move to a new CA key both require).
pub(super) fn same_hub(
    current: &VerifiedPeer,
    der: &[u8],
    ca_key: &ed25519_dalek::VerifyingKey,
    now_ms: u64,
) -> Result<VerifiedPeer, RenewalError> {
    let new = PeerCertificate::from_der(der)?.verify(ca_key, now_ms, None)?;
    if new.hub_id() != current.hub_id()
        || new.name() != current.name()
        || new.identity_key() != current.identity_key()
        || new.noise_key() != current.noise_key()
    {
        return Err(RenewalError::NotMine);
    }
    Ok(new)
}

/// When to ask for a renewal, and when to ask again after a failure.
#[derive(Debug, Clone)]
pub struct Renewal {
    /// Failures in a row since the certificate became due.
    failures: u32,
    next_ms: u64,
}

/// The first retry after a failed renewal; each next one waits twice as long, up to
/// [`RETRY_MAX_MS`], and no longer than a tenth of the time left (but at least
/// [`RETRY_MIN_MS`]).
pub const RETRY_FIRST_MS: u64 = 5_000;
/// The longest wait between two attempts.
pub const RETRY_MAX_MS: u64 = 3_600_000;
/// The shortest wait between two attempts.
pub const RETRY_MIN_MS: u64 = 1_000;

impl Renewal {
    /// For the certificate held.
    pub fn new(cert: &VerifiedPeer) -> Self {
        Renewal {
            failures: 0,
            next_ms: due_at(cert),
        }
    }

    /// When to ask next (Unix ms).
    pub fn poll_timeout(&self) -> u64 {
        self.next_ms
    }

    /// Whether to ask now.
    pub fn is_due(&self, now_ms: u64) -> bool {
        now_ms >= self.next_ms
    }

    /// An attempt failed at `now_ms`, for a certificate that ends at `not_after_ms`: the next
    /// one backs off, but comes well before the end.
    pub fn handle_failure(&mut self, now_ms: u64, not_after_ms: u64) {
        let backoff = RETRY_FIRST_MS
            .saturating_mul(1 << self.failures.min(20))
            .min(RETRY_MAX_MS);
        let left = not_after_ms.saturating_sub(now_ms);
        self.failures += 1;
        self.next_ms = now_ms + backoff.min(left / 10).max(RETRY_MIN_MS);
    }

    /// A new certificate was taken: the next renewal is two thirds into its term.
    pub fn handle_renewed(&mut self, cert: &VerifiedPeer) {
        *self = Renewal::new(cert);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::cert::tests::{request, NOW};
    use crate::trust::ClusterCa;
    use ed25519_dalek::SigningKey;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn ca() -> ClusterCa {
        ClusterCa::from_secret(&[5; 32])
    }

    /// Hub `id`'s certificate, valid a year from a day before `NOW`.
    fn certificate(id: u8) -> VerifiedPeer {
        let req = request(id, &SigningKey::from_bytes(&[id; 32]));
        let der = ca().issue(&req, &mut StdRng::seed_from_u64(1)).unwrap();
        PeerCertificate::from_der(&der)
            .unwrap()
            .verify(&ca().public_key(), NOW, None)
            .unwrap()
    }

    const YEAR: u64 = 365 * 86_400_000;

    fn issue(req: &CertificateRequest) -> Vec<u8> {
        ca().issue(req, &mut StdRng::seed_from_u64(9)).unwrap()
    }

    #[test]
    fn a_renewed_certificate_keeps_its_hub_keys_and_term() {
        let current = certificate(1);
        let term = current.not_after_ms() - current.not_before_ms();
        let at = due_at(&current);
        assert_eq!(at, current.not_before_ms() + term / 3 * 2);
        let req = renewed(&current, None, at);
        let valid = validity_of(&current);
        assert_eq!(req.not_after_ms - req.not_before_ms, valid + slack(valid));
        assert_eq!(req.not_before_ms, at - slack(valid));
        // A certificate issued by `validity` is renewed for the same validity and term.
        let (from, to) = validity(NOW, 60_000);
        assert_eq!((from, to), (NOW - 6_000, NOW + 60_000));
        assert_eq!(
            (req.trust, &req.roles[..]),
            (current.trust(), current.roles())
        );
        let new = accept(&current, &issue(&req), &ca().public_key(), at).unwrap();
        assert_eq!(new.hub_id(), current.hub_id());
        assert!(new.not_after_ms() > current.not_after_ms());
        assert_ne!(new.fingerprint(), current.fingerprint());
        // New terms, when the admin holds others.
        let req = renewed(&current, Some((TrustLevel::ReadOnly, vec![])), at);
        assert_eq!(req.trust, TrustLevel::ReadOnly);
        // Slack: a tenth of a short term, 5 minutes of a long one.
        assert_eq!(validity(NOW, 60_000), (NOW - 6_000, NOW + 60_000));
        assert_eq!(validity(NOW, YEAR), (NOW - 300_000, NOW + YEAR));
    }

    #[test]
    fn a_certificate_for_other_keys_or_no_later_or_forged_is_refused() {
        let current = certificate(1);
        let other = certificate(2);
        let at = due_at(&current);
        let ca_key = ca().public_key();
        // Another hub's keys.
        let theirs = issue(&renewed(&other, None, at + 60_000));
        assert_eq!(
            accept(&current, &theirs, &ca_key, at),
            Err(RenewalError::NotMine)
        );
        // Another name for the same keys.
        let mut renamed = renewed(&current, None, at);
        renamed.name = "someone else".into();
        assert_eq!(
            accept(&current, &issue(&renamed), &ca_key, at),
            Err(RenewalError::NotMine)
        );
        // Ending no later.
        let mut same_end = renewed(&current, None, at);
        same_end.not_after_ms = current.not_after_ms();
        assert_eq!(
            accept(&current, &issue(&same_end), &ca_key, at),
            Err(RenewalError::NotLater)
        );
        // Signed by another CA.
        let forged = crate::trust::ClusterCa::from_secret(&[6; 32])
            .issue(&renewed(&current, None, at), &mut StdRng::seed_from_u64(1))
            .unwrap();
        assert!(matches!(
            accept(&current, &forged, &ca_key, at),
            Err(RenewalError::Certificate(_))
        ));
        // Expired already.
        let mut past = renewed(&current, None, at);
        past.not_after_ms = current.not_after_ms() + 1;
        assert!(matches!(
            accept(&current, &issue(&past), &ca_key, past.not_after_ms + 1),
            Err(RenewalError::Certificate(TrustError::Expired))
        ));
    }

    #[test]
    fn failed_attempts_back_off_but_come_before_the_end() {
        let cert = certificate(1);
        let mut r = Renewal::new(&cert);
        let due = r.poll_timeout();
        assert!(!r.is_due(due - 1) && r.is_due(due));
        let end = cert.not_after_ms();
        let mut now = due;
        let mut waits = vec![];
        for _ in 0..30 {
            r.handle_failure(now, end);
            waits.push(r.poll_timeout() - now);
            now = r.poll_timeout();
        }
        assert_eq!(&waits[..3], &[5_000, 10_000, 20_000]);
        assert!(waits.iter().all(|w| *w <= RETRY_MAX_MS));
        // Near the end, attempts come at least every tenth of what is left (and at least 1 s).
        let mut r = Renewal::new(&cert);
        r.handle_failure(end - 20_000, end);
        assert_eq!(r.poll_timeout(), end - 20_000 + 2_000);
        r.handle_failure(end - 100, end);
        assert_eq!(r.poll_timeout(), end - 100 + RETRY_MIN_MS);
        // A new certificate: due two thirds into its term.
        let req = renewed(&cert, None, due);
        let new = accept(&cert, &issue(&req), &ca().public_key(), due).unwrap();
        r.handle_renewed(&new);
        assert_eq!(r.poll_timeout(), due_at(&new));
    }
}
