//! Messages inside a session: the one registry and codec of what hubs say to each other once a
//! Noise session carries it (docs/PROTOCOL.md, "Peer messages").
//!
//! ```text
//! kind: u8 | body
//! ```
//!
//! Every kind has a fixed body layout, below and on [`Msg`]; decoding is strict (an unknown kind,
//! a short body or trailing bytes are errors). Requests carry an 8-byte token that their answer
//! echoes, so a hub can match answers to requests.

use crate::codec::{put_short_str, CodecError, Reader};

/// The kind registry. Values not listed here are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum MsgKind {
    /// Application data.
    Data = 0,
    /// A round-trip probe.
    Ping = 1,
    /// The answer to a ping.
    Pong = 2,
    /// Asks what the peer reports about itself.
    InfoRequest = 3,
    /// The answer to an info request.
    Info = 4,
    /// The answer to any request from a peer this hub refuses (suspended).
    Refused = 5,
    /// The signed cluster manifest the sender holds.
    Manifest = 6,
    /// Asks which apps the peer shares with the sender.
    AppsRequest = 7,
    /// The answer to an apps request.
    Apps = 8,
    /// Calls a tool of an app on the peer, under a delegation envelope.
    Call = 9,
    /// A call's tool result.
    CallResult = 10,
    /// A call refused or failed, with a stable code.
    CallError = 11,
    /// The caller no longer waits for a call.
    Cancel = 12,
    /// The sender's signed audit head.
    AuditHead = 13,
    /// What the sender sees of the other hubs (for the quorum part of trust scores).
    Views = 14,
    /// The session version the sender speaks (session version 2).
    Version = 15,
    /// Asks which apps the peer shares with the sender, for a principal the sender signs
    /// (session version 2).
    SignedAppsRequest = 16,
    /// Asks an admin hub for a new certificate for the sender's keys (renewal, session version
    /// 4).
    RenewRequest = 17,
    /// The answer to a renewal request: the new certificate.
    Renewed = 18,
}

/// The session version this crate speaks (docs/PROTOCOL.md section 10): 2 adds the
/// [`MsgKind::Version`] and [`MsgKind::SignedAppsRequest`] messages and explicit envelope
/// scopes; 3, requests sent again unchanged across an outage (a repetition of a running request
/// is ignored, a call's kept answer is sent again); 4, certificate renewal
/// ([`MsgKind::RenewRequest`], [`MsgKind::Renewed`]). A peer that never says its version speaks 1.
pub const SESSION_VERSION: u16 = 4;

/// The first session version whose hubs answer a renewal request ([`MsgKind::RenewRequest`]).
pub const SESSION_VERSION_RENEWAL: u16 = 4;

/// The first session version whose hubs tell a request sent again from a new one.
pub const SESSION_VERSION_REPEATS: u16 = 3;

impl MsgKind {
    /// Every registered kind, in registry order.
    pub const ALL: [MsgKind; 19] = [
        Self::Data,
        Self::Ping,
        Self::Pong,
        Self::InfoRequest,
        Self::Info,
        Self::Refused,
        Self::Manifest,
        Self::AppsRequest,
        Self::Apps,
        Self::Call,
        Self::CallResult,
        Self::CallError,
        Self::Cancel,
        Self::AuditHead,
        Self::Views,
        Self::Version,
        Self::SignedAppsRequest,
        Self::RenewRequest,
        Self::Renewed,
    ];

    /// The kind with this byte, if registered.
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| *k as u8 == value)
    }
}

/// One message inside a session. Bodies borrow from the bytes they were decoded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg<'a> {
    /// `data: [u8]` (the rest): for the application.
    Data(&'a [u8]),
    /// `token: u64`
    Ping {
        /// Echoed by the pong.
        token: u64,
    },
    /// `token: u64`
    Pong {
        /// The ping's token.
        token: u64,
    },
    /// `token: u64`
    InfoRequest {
        /// Echoed by the answer.
        token: u64,
    },
    /// `token: u64 | info: [u8]` (the rest: JSON `{"name", "version", "uptime_s"}`)
    Info {
        /// The request's token.
        token: u64,
        /// The JSON document.
        info: &'a [u8],
    },
    /// `token: u64 | reason: [u8]` (the rest: UTF-8)
    Refused {
        /// The request's token.
        token: u64,
        /// Why, for people.
        reason: &'a str,
    },
    /// `manifest: [u8]` (the rest: the signed manifest, as `trust::Manifest::sign` makes it)
    Manifest(&'a [u8]),
    /// `token: u64 | principal: str8`
    AppsRequest {
        /// Echoed by the answer.
        token: u64,
        /// The operator the listing is for (apps shared with principals are listed for them).
        principal: &'a str,
    },
    /// `token: u64 | apps: [u8]` (the rest: JSON, an array of apps and their tools)
    Apps {
        /// The request's token.
        token: u64,
        /// The JSON document.
        apps: &'a [u8],
    },
    /// `token: u64 | timeout_ms: u32 | app: str8 | tool: str8 | envelope: u16 length, bytes |
    /// arguments: [u8]` (the rest: a JSON object, the bytes the envelope's hash binds)
    Call {
        /// Echoed by the result or error.
        token: u64,
        /// How long the caller waits, from when it sent the call.
        timeout_ms: u32,
        /// The app.
        app: &'a str,
        /// The tool.
        tool: &'a str,
        /// The signed delegation envelope (`agent::envelope`).
        envelope: &'a [u8],
        /// The tool's arguments.
        arguments: &'a [u8],
    },
    /// `token: u64 | result: [u8]` (the rest: JSON, the MCP `CallToolResult`)
    CallResult {
        /// The call's token.
        token: u64,
        /// The JSON document.
        result: &'a [u8],
    },
    /// `token: u64 | code: u16 | message: [u8]` (the rest: UTF-8)
    CallError {
        /// The call's token.
        token: u64,
        /// An `agent::CallErrorCode` value (an unknown value is kept as it is).
        code: u16,
        /// Details, for people.
        message: &'a str,
    },
    /// `token: u64`: the call with this token is no longer awaited.
    Cancel {
        /// The call's token.
        token: u64,
    },
    /// `head: [u8]` (the rest: the sender's signed audit head, `audit::Head::sign`)
    AuditHead(&'a [u8]),
    /// `views: [u8]` (the rest: `audit::Views::encode`)
    Views(&'a [u8]),
    /// `version: u16`: the session version the sender speaks.
    Version(u16),
    /// `token: u64 | envelope: [u8]` (the rest: a listing envelope, `agent::envelope`, that
    /// signs the principal and scopes the listing is for)
    SignedAppsRequest {
        /// Echoed by the answer.
        token: u64,
        /// The signed listing envelope.
        envelope: &'a [u8],
    },
    /// `token: u64`: a new certificate for the sender's keys, please (the asked hub reads who
    /// asks from the session).
    RenewRequest {
        /// Echoed by the answer.
        token: u64,
    },
    /// `token: u64 | certificate: [u8]` (the rest: DER, signed by the cluster CA)
    Renewed {
        /// The request's token.
        token: u64,
        /// The new certificate.
        certificate: &'a [u8],
    },
}

/// Why bytes are not a session message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MsgError {
    /// No bytes at all.
    #[error("empty session message")]
    Empty,
    /// The kind byte is not in the registry.
    #[error("unknown session message kind {0}")]
    UnknownKind(u8),
    /// The body is shorter than its layout.
    #[error("truncated session message")]
    Truncated,
    /// The body has bytes after its layout.
    #[error("trailing bytes in a {0:?} message")]
    Trailing(MsgKind),
    /// A field's value is not allowed.
    #[error("invalid {0}")]
    Invalid(&'static str),
}

impl<'a> Msg<'a> {
    /// The message's registered kind.
    pub fn kind(&self) -> MsgKind {
        match self {
            Msg::Data(_) => MsgKind::Data,
            Msg::Ping { .. } => MsgKind::Ping,
            Msg::Pong { .. } => MsgKind::Pong,
            Msg::InfoRequest { .. } => MsgKind::InfoRequest,
            Msg::Info { .. } => MsgKind::Info,
            Msg::Refused { .. } => MsgKind::Refused,
            Msg::Manifest(_) => MsgKind::Manifest,
            Msg::AppsRequest { .. } => MsgKind::AppsRequest,
            Msg::Apps { .. } => MsgKind::Apps,
            Msg::Call { .. } => MsgKind::Call,
            Msg::CallResult { .. } => MsgKind::CallResult,
            Msg::CallError { .. } => MsgKind::CallError,
            Msg::Cancel { .. } => MsgKind::Cancel,
            Msg::AuditHead(_) => MsgKind::AuditHead,
            Msg::Views(_) => MsgKind::Views,
            Msg::Version(_) => MsgKind::Version,
            Msg::SignedAppsRequest { .. } => MsgKind::SignedAppsRequest,
            Msg::RenewRequest { .. } => MsgKind::RenewRequest,
            Msg::Renewed { .. } => MsgKind::Renewed,
        }
    }

    /// The request token the message carries, if it is a request or an answer.
    pub fn token(&self) -> Option<u64> {
        match *self {
            Msg::Ping { token }
            | Msg::Pong { token }
            | Msg::InfoRequest { token }
            | Msg::Info { token, .. }
            | Msg::Refused { token, .. }
            | Msg::AppsRequest { token, .. }
            | Msg::Apps { token, .. }
            | Msg::Call { token, .. }
            | Msg::CallResult { token, .. }
            | Msg::CallError { token, .. }
            | Msg::Cancel { token }
            | Msg::SignedAppsRequest { token, .. }
            | Msg::RenewRequest { token }
            | Msg::Renewed { token, .. } => Some(token),
            Msg::Data(_)
            | Msg::Manifest(_)
            | Msg::AuditHead(_)
            | Msg::Views(_)
            | Msg::Version(_) => None,
        }
    }

    /// The wire form. Fails only if a string or the envelope is longer than its length prefix
    /// can say (app and tool names over 255 bytes, an envelope over 65,535).
    pub fn encode(&self) -> Result<Vec<u8>, MsgError> {
        let mut out = vec![self.kind() as u8];
        if let Some(token) = self.token() {
            out.extend_from_slice(&token.to_be_bytes());
        }
        let long = |_| MsgError::Invalid("string over 255 bytes");
        match self {
            Msg::AppsRequest { principal, .. } => {
                put_short_str(&mut out, principal).map_err(long)?
            }
            Msg::Call {
                timeout_ms,
                app,
                tool,
                envelope,
                arguments,
                ..
            } => {
                out.extend_from_slice(&timeout_ms.to_be_bytes());
                put_short_str(&mut out, app).map_err(long)?;
                put_short_str(&mut out, tool).map_err(long)?;
                let len = u16::try_from(envelope.len())
                    .map_err(|_| MsgError::Invalid("envelope over 65,535 bytes"))?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(envelope);
                out.extend_from_slice(arguments);
            }
            Msg::CallError { code, message, .. } => {
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(message.as_bytes());
            }
            _ => return Ok(self.to_vec()),
        }
        Ok(out)
    }

    /// The wire form of a message with no length-prefixed field (every kind but apps request,
    /// call and call error, for which it is [`Msg::encode`]'s result or, if that fails, empty).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![self.kind() as u8];
        if let Some(token) = self.token() {
            out.extend_from_slice(&token.to_be_bytes());
        }
        match self {
            Msg::Data(body)
            | Msg::Manifest(body)
            | Msg::AuditHead(body)
            | Msg::Views(body)
            | Msg::Info { info: body, .. }
            | Msg::Apps { apps: body, .. }
            | Msg::CallResult { result: body, .. }
            | Msg::SignedAppsRequest { envelope: body, .. }
            | Msg::Renewed {
                certificate: body, ..
            } => out.extend_from_slice(body),
            Msg::Version(version) => out.extend_from_slice(&version.to_be_bytes()),
            Msg::Refused { reason, .. } => out.extend_from_slice(reason.as_bytes()),
            Msg::Ping { .. }
            | Msg::Pong { .. }
            | Msg::InfoRequest { .. }
            | Msg::Cancel { .. }
            | Msg::RenewRequest { .. } => {}
            Msg::AppsRequest { .. } | Msg::Call { .. } | Msg::CallError { .. } => {
                return self.encode().unwrap_or_default()
            }
        }
        out
    }

    /// Decodes one message (the whole of `bytes`).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, MsgError> {
        let (&kind, body) = bytes.split_first().ok_or(MsgError::Empty)?;
        let kind = MsgKind::from_u8(kind).ok_or(MsgError::UnknownKind(kind))?;
        let mut r = Reader::new(body);
        let token = |r: &mut Reader<'a>| r.u64().map_err(|_| MsgError::Truncated);
        let short_str = |r: &mut Reader<'a>| {
            r.short_str().map_err(|e| match e {
                CodecError::Utf8 => MsgError::Invalid("UTF-8 string"),
                _ => MsgError::Truncated,
            })
        };
        let msg = match kind {
            MsgKind::Data => Msg::Data(r.rest()),
            MsgKind::Manifest => Msg::Manifest(r.rest()),
            MsgKind::AuditHead => Msg::AuditHead(r.rest()),
            MsgKind::Views => Msg::Views(r.rest()),
            MsgKind::Ping => Msg::Ping {
                token: token(&mut r)?,
            },
            MsgKind::Pong => Msg::Pong {
                token: token(&mut r)?,
            },
            MsgKind::InfoRequest => Msg::InfoRequest {
                token: token(&mut r)?,
            },
            MsgKind::Info => Msg::Info {
                token: token(&mut r)?,
                info: r.rest(),
            },
            MsgKind::Refused => Msg::Refused {
                token: token(&mut r)?,
                reason: std::str::from_utf8(r.rest())
                    .map_err(|_| MsgError::Invalid("UTF-8 reason"))?,
            },
            MsgKind::AppsRequest => Msg::AppsRequest {
                token: token(&mut r)?,
                principal: short_str(&mut r)?,
            },
            MsgKind::Apps => Msg::Apps {
                token: token(&mut r)?,
                apps: r.rest(),
            },
            MsgKind::Call => {
                let token = token(&mut r)?;
                let timeout_ms = r.u32().map_err(|_| MsgError::Truncated)?;
                let app = short_str(&mut r)?;
                let tool = short_str(&mut r)?;
                let len = r.u16().map_err(|_| MsgError::Truncated)?;
                let envelope = r.take(usize::from(len)).map_err(|_| MsgError::Truncated)?;
                Msg::Call {
                    token,
                    timeout_ms,
                    app,
                    tool,
                    envelope,
                    arguments: r.rest(),
                }
            }
            MsgKind::CallResult => Msg::CallResult {
                token: token(&mut r)?,
                result: r.rest(),
            },
            MsgKind::CallError => Msg::CallError {
                token: token(&mut r)?,
                code: r.u16().map_err(|_| MsgError::Truncated)?,
                message: std::str::from_utf8(r.rest())
                    .map_err(|_| MsgError::Invalid("UTF-8 message"))?,
            },
            MsgKind::Cancel => Msg::Cancel {
                token: token(&mut r)?,
            },
            MsgKind::Version => Msg::Version(r.u16().map_err(|_| MsgError::Truncated)?),
            MsgKind::SignedAppsRequest => Msg::SignedAppsRequest {
                token: token(&mut r)?,
                envelope: r.rest(),
            },
            MsgKind::RenewRequest => Msg::RenewRequest {
                token: token(&mut r)?,
            },
            MsgKind::Renewed => Msg::Renewed {
                token: token(&mut r)?,
                certificate: r.rest(),
            },
        };
        if r.is_empty() {
            Ok(msg)
        } else {
            Err(MsgError::Trailing(kind))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(kind: MsgKind) -> Msg<'static> {
        match kind {
            MsgKind::Data => Msg::Data(b"hi"),
            MsgKind::Ping => Msg::Ping {
                token: 0x0102_0304_0506_0708,
            },
            MsgKind::Pong => Msg::Pong {
                token: 0x0102_0304_0506_0708,
            },
            MsgKind::InfoRequest => Msg::InfoRequest { token: 9 },
            MsgKind::Info => Msg::Info {
                token: 9,
                info: b"{}",
            },
            MsgKind::Refused => Msg::Refused {
                token: 9,
                reason: "no",
            },
            MsgKind::Manifest => Msg::Manifest(b"HRMF"),
            MsgKind::AppsRequest => Msg::AppsRequest {
                token: 9,
                principal: "ann",
            },
            MsgKind::Apps => Msg::Apps {
                token: 9,
                apps: b"[]",
            },
            MsgKind::Call => Msg::Call {
                token: 9,
                timeout_ms: 30_000,
                app: "fs",
                tool: "ls",
                envelope: b"HRDE",
                arguments: b"{}",
            },
            MsgKind::CallResult => Msg::CallResult {
                token: 9,
                result: b"{}",
            },
            MsgKind::CallError => Msg::CallError {
                token: 9,
                code: 9,
                message: "no",
            },
            MsgKind::Cancel => Msg::Cancel { token: 9 },
            MsgKind::AuditHead => Msg::AuditHead(b"HRAH"),
            MsgKind::Views => Msg::Views(b"HRV"),
            MsgKind::Version => Msg::Version(2),
            MsgKind::SignedAppsRequest => Msg::SignedAppsRequest {
                token: 9,
                envelope: b"HRDE",
            },
            MsgKind::RenewRequest => Msg::RenewRequest { token: 9 },
            MsgKind::Renewed => Msg::Renewed {
                token: 9,
                certificate: b"\x30\x00",
            },
        }
    }

    /// Hex snapshots of every kind: a change here is a wire change.
    #[test]
    fn hex_snapshots() {
        let expected = [
            (MsgKind::Data, "00 6869"),
            (MsgKind::Ping, "01 0102030405060708"),
            (MsgKind::Pong, "02 0102030405060708"),
            (MsgKind::InfoRequest, "03 0000000000000009"),
            (MsgKind::Info, "04 0000000000000009 7b7d"),
            (MsgKind::Refused, "05 0000000000000009 6e6f"),
            (MsgKind::Manifest, "06 48524d46"),
            (MsgKind::AppsRequest, "07 0000000000000009 03616e6e"),
            (MsgKind::Apps, "08 0000000000000009 5b5d"),
            (
                MsgKind::Call,
                "09 0000000000000009 00007530 026673 026c73 0004 48524445 7b7d",
            ),
            (MsgKind::CallResult, "0a 0000000000000009 7b7d"),
            (MsgKind::CallError, "0b 0000000000000009 0009 6e6f"),
            (MsgKind::Cancel, "0c 0000000000000009"),
            (MsgKind::AuditHead, "0d 48524148"),
            (MsgKind::Views, "0e 485256"),
            (MsgKind::Version, "0f 0002"),
            (MsgKind::SignedAppsRequest, "10 0000000000000009 48524445"),
            (MsgKind::RenewRequest, "11 0000000000000009"),
            (MsgKind::Renewed, "12 0000000000000009 3000"),
        ];
        assert_eq!(expected.len(), MsgKind::ALL.len(), "a snapshot per kind");
        for (kind, want) in expected {
            let bytes = sample(kind).to_vec();
            assert_eq!(hex::encode(&bytes), want.replace(' ', ""), "{kind:?}");
            assert_eq!(Msg::decode(&bytes), Ok(sample(kind)));
        }
    }

    #[test]
    fn malformed_messages_are_refused() {
        assert_eq!(Msg::decode(&[]), Err(MsgError::Empty));
        assert_eq!(Msg::decode(&[19]), Err(MsgError::UnknownKind(19)));
        assert_eq!(Msg::decode(&[15, 0]), Err(MsgError::Truncated));
        assert_eq!(
            Msg::decode(&[15, 0, 2, 0]),
            Err(MsgError::Trailing(MsgKind::Version))
        );
        // A call whose envelope length runs past the end.
        let call = sample(MsgKind::Call).to_vec();
        assert_eq!(Msg::decode(&call[..20]), Err(MsgError::Truncated));
        assert_eq!(
            Msg::Call {
                token: 1,
                timeout_ms: 1,
                app: &"a".repeat(256),
                tool: "t",
                envelope: b"",
                arguments: b"",
            }
            .encode(),
            Err(MsgError::Invalid("string over 255 bytes"))
        );
        for kind in [
            MsgKind::Ping,
            MsgKind::Pong,
            MsgKind::InfoRequest,
            MsgKind::Info,
            MsgKind::RenewRequest,
            MsgKind::Renewed,
        ] {
            let bytes = sample(kind).to_vec();
            assert_eq!(
                Msg::decode(&bytes[..5]),
                Err(MsgError::Truncated),
                "{kind:?}"
            );
        }
        let mut ping = sample(MsgKind::Ping).to_vec();
        ping.push(0);
        assert_eq!(Msg::decode(&ping), Err(MsgError::Trailing(MsgKind::Ping)));
        let mut refused = Msg::Refused {
            token: 1,
            reason: "",
        }
        .to_vec();
        refused.push(0xff);
        assert_eq!(
            Msg::decode(&refused),
            Err(MsgError::Invalid("UTF-8 reason"))
        );
    }

    proptest! {
        #[test]
        fn round_trip(kind in 0u8..19, token in any::<u64>(), body in "[a-z{}\":, ]{0,40}") {
            let kind = MsgKind::from_u8(kind).unwrap();
            let msg = match kind {
                MsgKind::Data => Msg::Data(body.as_bytes()),
                MsgKind::Ping => Msg::Ping { token },
                MsgKind::Pong => Msg::Pong { token },
                MsgKind::InfoRequest => Msg::InfoRequest { token },
                MsgKind::Info => Msg::Info { token, info: body.as_bytes() },
                MsgKind::Refused => Msg::Refused { token, reason: &body },
                MsgKind::Manifest => Msg::Manifest(body.as_bytes()),
                MsgKind::AppsRequest => Msg::AppsRequest { token, principal: &body },
                MsgKind::Apps => Msg::Apps { token, apps: body.as_bytes() },
                MsgKind::Call => Msg::Call {
                    token,
                    timeout_ms: token as u32,
                    app: &body,
                    tool: &body,
                    envelope: body.as_bytes(),
                    arguments: body.as_bytes(),
                },
                MsgKind::CallResult => Msg::CallResult { token, result: body.as_bytes() },
                MsgKind::CallError => Msg::CallError { token, code: token as u16, message: &body },
                MsgKind::Cancel => Msg::Cancel { token },
                MsgKind::AuditHead => Msg::AuditHead(body.as_bytes()),
                MsgKind::Views => Msg::Views(body.as_bytes()),
                MsgKind::Version => Msg::Version(token as u16),
                MsgKind::SignedAppsRequest => Msg::SignedAppsRequest { token, envelope: body.as_bytes() },
                MsgKind::RenewRequest => Msg::RenewRequest { token },
                MsgKind::Renewed => Msg::Renewed { token, certificate: body.as_bytes() },
            };
            let bytes = msg.to_vec();
            prop_assert_eq!(Msg::decode(&bytes), Ok(msg));
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Msg::decode(&bytes);
        }
    }
}
