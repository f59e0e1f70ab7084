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

use crate::codec::Reader;
use crate::relay::frame::FrameError;

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
}

impl MsgKind {
    /// Every registered kind, in registry order.
    pub const ALL: [MsgKind; 7] = [
        Self::Data,
        Self::Ping,
        Self::Pong,
        Self::InfoRequest,
        Self::Info,
        Self::Refused,
        Self::Manifest,
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
        }
    }

    /// The request token the message carries, if it is a request or an answer.
    pub fn token(&self) -> Option<u64> {
        match *self {
            Msg::Ping { token }
            | Msg::Pong { token }
            | Msg::InfoRequest { token }
            | Msg::Info { token, .. }
            | Msg::Refused { token, .. } => Some(token),
            Msg::Data(_) | Msg::Manifest(_) => None,
        }
    }

    /// The wire form.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![self.kind() as u8];
        if let Some(token) = self.token() {
            out.extend_from_slice(&token.to_be_bytes());
        }
        match self {
            Msg::Data(body) | Msg::Manifest(body) | Msg::Info { info: body, .. } => {
                out.extend_from_slice(body)
            }
            Msg::Refused { reason, .. } => out.extend_from_slice(reason.as_bytes()),
            Msg::Ping { .. } | Msg::Pong { .. } | Msg::InfoRequest { .. } => {}
        }
        out
    }

    /// Decodes one message (the whole of `bytes`).
    pub fn decode(bytes: &'a [u8]) -> Result<Self, MsgError> {
        let (&kind, body) = bytes.split_first().ok_or(MsgError::Empty)?;
        let kind = MsgKind::from_u8(kind).ok_or(MsgError::UnknownKind(kind))?;
        let mut r = Reader::new(body);
        let token = |r: &mut Reader<'a>| r.u64().map_err(|_: FrameError| MsgError::Truncated);
        let msg = match kind {
            MsgKind::Data => Msg::Data(r.rest()),
            MsgKind::Manifest => Msg::Manifest(r.rest()),
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
        assert_eq!(Msg::decode(&[7]), Err(MsgError::UnknownKind(7)));
        for kind in [
            MsgKind::Ping,
            MsgKind::Pong,
            MsgKind::InfoRequest,
            MsgKind::Info,
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
        fn round_trip(kind in 0u8..7, token in any::<u64>(), body in "[a-z{}\":, ]{0,40}") {
            let kind = MsgKind::from_u8(kind).unwrap();
            let msg = match kind {
                MsgKind::Data => Msg::Data(body.as_bytes()),
                MsgKind::Ping => Msg::Ping { token },
                MsgKind::Pong => Msg::Pong { token },
                MsgKind::InfoRequest => Msg::InfoRequest { token },
                MsgKind::Info => Msg::Info { token, info: body.as_bytes() },
                MsgKind::Refused => Msg::Refused { token, reason: &body },
                MsgKind::Manifest => Msg::Manifest(body.as_bytes()),
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
