//! WebSocket close codes the relay sends, and what each means for the hub.
//!
//! Codes 4000-4999 are the application range of RFC 6455; the relay never sends the reserved
//! 1005/1006 (they describe a missing close frame and cannot be sent).

use std::fmt;

/// A close code of relay protocol v1. Every way the relay closes a socket is one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// 1000: the hub or relay closed normally.
    Normal,
    /// 1001: the relay is shutting down or restarting; reconnect.
    GoingAway,
    /// 1011: the relay hit an internal error; reconnect with backoff.
    InternalError,
    /// 4000: a malformed frame, a frame type the hub may not send, a text message that is not a
    /// keepalive, or a second `Hello`. Fix the client; reconnecting sends the same bytes again.
    ProtocolError,
    /// 4001: the `Hello` named a protocol version the relay does not speak.
    UnsupportedVersion,
    /// 4002: the first frame was not a `Hello`.
    HelloRequired,
    /// 4003: no `Hello` arrived in time after the WebSocket opened.
    HelloTimeout,
    /// 4004: another connection with the same hub id joined the room and replaced this one.
    /// Reconnecting would replace the other in turn: a hub must not reconnect on this code.
    Replaced,
    /// 4005: a frame, payload or message past the protocol's limits.
    TooLarge,
    /// 4006: the hub did not read its messages fast enough and its queue at the relay filled.
    SlowConsumer,
    /// 4007: the room already holds the most hubs it admits.
    RoomFull,
    /// 4008: nothing arrived from the hub, not even a keepalive, for the relay's idle timeout
    /// (`hub relay`: 150 s); the connection is presumed dead. Reconnect.
    IdleTimeout,
    /// 4009: rate-limited: the hub went on sending past its rate limit for 5 s after the relay
    /// told it so with `RateLimited` frames, or flooded (a burst of its limit dropped at once);
    /// also the refusal of its `Hello` while it is kept out for that (10 s, doubling). Reconnect
    /// after a backoff, and send slower.
    RateLimited,
    /// 1013: the relay is overloaded for this request; try again later.
    TryAgainLater,
    /// 4010: the `Hello` carried no certificate login.
    CertificateRequired,
    /// 4011: the CA key does not name the cluster of the URL.
    ForeignCluster,
    /// 4012: the certificate does not parse, is not signed by the cluster CA, or names another
    /// hub id than the `Hello`.
    BadCertificate,
    /// 4013: the certificate is not valid yet.
    CertificateNotYetValid,
    /// 4014: the certificate has expired.
    CertificateExpired,
    /// 4015: the certificate (or its key) is revoked; also sent to a connected hub the moment a
    /// revocation list that revokes it arrives.
    Revoked,
    /// 4016: the login timestamp is outside the allowed clock skew.
    StaleLogin,
    /// 4017: the proof of possession does not verify.
    BadProof,
    /// 4018: the login's nonce was already used.
    ReplayedLogin,
    /// 4019: this relay does not serve this cluster (`ALLOWED_CLUSTERS`).
    ClusterNotServed,
    /// 4020: pairing: the hub that issued the pairing token is not online in the room (or left).
    IssuerOffline,
    /// 4021: pairing: the guest went past its allowance (a destination other than its issuer,
    /// too many messages, or its time in the room is up).
    GuestLimit,
    /// 4022: the cluster moved to a new CA key and the grace period to follow it ended; the
    /// reason names the new cluster.
    Moved,
}

impl CloseCode {
    /// Every code, in numeric order.
    pub const ALL: [CloseCode; 27] = [
        Self::Normal,
        Self::GoingAway,
        Self::InternalError,
        Self::ProtocolError,
        Self::UnsupportedVersion,
        Self::HelloRequired,
        Self::HelloTimeout,
        Self::Replaced,
        Self::TooLarge,
        Self::SlowConsumer,
        Self::RoomFull,
        Self::IdleTimeout,
        Self::RateLimited,
        Self::TryAgainLater,
        Self::CertificateRequired,
        Self::ForeignCluster,
        Self::BadCertificate,
        Self::CertificateNotYetValid,
        Self::CertificateExpired,
        Self::Revoked,
        Self::StaleLogin,
        Self::BadProof,
        Self::ReplayedLogin,
        Self::ClusterNotServed,
        Self::IssuerOffline,
        Self::GuestLimit,
        Self::Moved,
    ];

    /// The numeric code on the wire.
    pub fn code(self) -> u16 {
        match self {
            Self::Normal => 1000,
            Self::GoingAway => 1001,
            Self::InternalError => 1011,
            Self::ProtocolError => 4000,
            Self::UnsupportedVersion => 4001,
            Self::HelloRequired => 4002,
            Self::HelloTimeout => 4003,
            Self::Replaced => 4004,
            Self::TooLarge => 4005,
            Self::SlowConsumer => 4006,
            Self::RoomFull => 4007,
            Self::IdleTimeout => 4008,
            Self::RateLimited => 4009,
            Self::TryAgainLater => 1013,
            Self::CertificateRequired => 4010,
            Self::ForeignCluster => 4011,
            Self::BadCertificate => 4012,
            Self::CertificateNotYetValid => 4013,
            Self::CertificateExpired => 4014,
            Self::Revoked => 4015,
            Self::StaleLogin => 4016,
            Self::BadProof => 4017,
            Self::ReplayedLogin => 4018,
            Self::ClusterNotServed => 4019,
            Self::IssuerOffline => 4020,
            Self::GuestLimit => 4021,
            Self::Moved => 4022,
        }
    }

    /// Looks a numeric code up.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// Whether a hub should reconnect after this code. Codes that mean "your client is wrong" or
    /// "another connection took your place" are final: reconnecting would do the same again.
    pub fn should_reconnect(self) -> bool {
        // Certificate refusals are final too: the same credentials would be refused again.
        // (Stale and replayed logins are not: a new login has a new timestamp and nonce.)
        !matches!(
            self,
            Self::ProtocolError
                | Self::UnsupportedVersion
                | Self::HelloRequired
                | Self::Replaced
                | Self::CertificateRequired
                | Self::ForeignCluster
                | Self::BadCertificate
                | Self::CertificateExpired
                | Self::Revoked
                | Self::ClusterNotServed
                | Self::IssuerOffline
                | Self::GuestLimit
                | Self::Moved
        )
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?})", self.code(), self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_sendable_and_round_trip() {
        for c in CloseCode::ALL {
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            assert!(c.code() != 1005 && c.code() != 1006, "{c} cannot be sent");
        }
        let mut codes: Vec<u16> = CloseCode::ALL.iter().map(|c| c.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), CloseCode::ALL.len());
        assert_eq!(CloseCode::from_code(4999), None);
    }
}
