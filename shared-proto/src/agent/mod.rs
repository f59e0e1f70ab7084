//! The agent surface across hubs: the delegation envelope a forwarding hub signs for every call
//! ([`envelope`]), the sharing policy and trust levels the target hub checks ([`policy`]), and
//! the stable error codes of a refused or failed call ([`CallErrorCode`]). The messages that carry
//! them are in [`crate::msg`]. With feature `json`, [`arguments`]: a call's arguments in the
//! canonical form the envelope binds.

#[cfg(feature = "json")]
pub mod arguments;
pub mod envelope;
pub mod nonces;
pub mod policy;

pub use envelope::{
    arguments_hash, Delegation, SignedDelegation, ALL_SCOPES, ENVELOPE_V1, ENVELOPE_V2, LISTING,
};
pub use policy::{
    check_call, trust_needed, Caller, Sharing, ToolHints, ToolKind, UnqualifiedPrincipal, ANY_HUB,
};

/// Why a call across hubs did not give a tool result. The numbers are on the wire (the
/// `CallError` message) and stable; docs/PROTOCOL.md lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
#[repr(u16)]
pub enum CallErrorCode {
    /// The envelope does not parse.
    #[error("malformed delegation envelope")]
    BadEnvelope = 1,
    /// The envelope is not signed by the session's peer, or names another origin.
    #[error("the delegation envelope is not signed by the calling hub")]
    WrongSigner = 2,
    /// The signer's certificate is revoked.
    #[error("the calling hub is revoked")]
    Revoked = 3,
    /// The signer is suspended by the target hub.
    #[error("the calling hub is suspended by this hub")]
    Suspended = 4,
    /// The envelope is for another hub.
    #[error("the delegation envelope is for another hub")]
    WrongTarget = 5,
    /// The envelope is expired, not valid yet, or lives longer than 60 s.
    #[error("the delegation envelope is expired or not yet valid")]
    Expired = 6,
    /// The envelope's nonce was seen before.
    #[error("the delegation envelope was used before (replay)")]
    Replayed = 7,
    /// The envelope binds another app, tool or arguments than the call's.
    #[error("the call does not match its delegation envelope")]
    ArgumentsMismatch = 8,
    /// The app's sharing policy does not admit this hub or principal (or the app is unknown to
    /// it: an unshared app is not told apart from a missing one).
    #[error("no such app shared with this caller")]
    NotShared = 9,
    /// The calling hub's trust level is below what the tool needs.
    #[error("the calling hub's trust level is too low for this tool")]
    TrustTooLow = 10,
    /// The envelope's scopes do not grant this tool.
    #[error("the caller's scopes do not grant this tool")]
    ScopeDenied = 11,
    /// The app has no such tool.
    #[error("no such tool")]
    UnknownTool = 12,
    /// The app could not be started or reached.
    #[error("the app is unavailable")]
    AppUnavailable = 13,
    /// The app failed the call (an MCP protocol error, or it exited during the call).
    #[error("the app failed the call")]
    AppFailed = 14,
    /// No result before the call's deadline.
    #[error("no result before the deadline")]
    Timeout = 15,
    /// The caller cancelled the call.
    #[error("cancelled")]
    Cancelled = 16,
    /// Too many calls from this hub are running.
    #[error("too many calls are running")]
    Busy = 17,
    /// The request or result is over the size limit.
    #[error("too large")]
    TooLarge = 18,
    /// The call's token is the token of a request from the same hub that is still running:
    /// refused, and the running one goes on.
    #[error("a request with this token from this hub is still running")]
    DuplicateToken = 19,
}

impl CallErrorCode {
    /// Every code, in number order.
    pub const ALL: [CallErrorCode; 19] = [
        Self::BadEnvelope,
        Self::WrongSigner,
        Self::Revoked,
        Self::Suspended,
        Self::WrongTarget,
        Self::Expired,
        Self::Replayed,
        Self::ArgumentsMismatch,
        Self::NotShared,
        Self::TrustTooLow,
        Self::ScopeDenied,
        Self::UnknownTool,
        Self::AppUnavailable,
        Self::AppFailed,
        Self::Timeout,
        Self::Cancelled,
        Self::Busy,
        Self::TooLarge,
        Self::DuplicateToken,
    ];

    /// Its wire value.
    pub fn to_u16(self) -> u16 {
        self as u16
    }

    /// From its wire value.
    pub fn from_u16(v: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.to_u16() == v)
    }

    /// The code with this name ([`CallErrorCode::name`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Its name in snake case, as the API and `hub` print it (`not_shared`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::BadEnvelope => "bad_envelope",
            Self::WrongSigner => "wrong_signer",
            Self::Revoked => "revoked",
            Self::Suspended => "suspended",
            Self::WrongTarget => "wrong_target",
            Self::Expired => "expired",
            Self::Replayed => "replayed",
            Self::ArgumentsMismatch => "arguments_mismatch",
            Self::NotShared => "not_shared",
            Self::TrustTooLow => "trust_too_low",
            Self::ScopeDenied => "scope_denied",
            Self::UnknownTool => "unknown_tool",
            Self::AppUnavailable => "app_unavailable",
            Self::AppFailed => "app_failed",
            Self::Timeout => "timeout",
            Self::Cancelled => "cancelled",
            Self::Busy => "busy",
            Self::TooLarge => "too_large",
            Self::DuplicateToken => "duplicate_token",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_numbered_in_order_and_read_back() {
        for (i, code) in CallErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(usize::from(code.to_u16()), i + 1);
            assert_eq!(CallErrorCode::from_u16(code.to_u16()), Some(code));
            assert_eq!(CallErrorCode::from_name(code.name()), Some(code));
        }
        assert_eq!(CallErrorCode::from_u16(0), None);
        assert_eq!(CallErrorCode::from_u16(20), None);
    }
}
