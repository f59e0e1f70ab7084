//! Relay frames, protocol version 1: the one frame-type registry and its codec.
//!
//! Every binary WebSocket message between a hub and the relay carries one or more frames, back to
//! back (batching: a Durable Object bills and throttles per message, not per frame). A frame is
//!
//! ```text
//! type: u8 | length: u32 big-endian | body: [u8; length]
//! ```
//!
//! and each body has a fixed layout per type, described on [`Frame`] and in `docs/PROTOCOL.md`.
//! Decoding is strict: an unknown type, a body shorter or longer than its layout, a length past
//! the limits, or bytes left over after the last frame are errors ([`FrameError`]), never guesses.
//!
//! Decoding borrows: a [`Frame`] points into the message it came from, so routing a payload
//! copies it once, into the outgoing message.

use crate::codec::{CodecError, Reader};
pub use crate::id::{HubId, ParseHubIdError, HUB_ID_LEN};
use crate::relay::close::CloseCode;

/// The relay protocol version this crate speaks (also the `/v1/` of the connect URL).
pub const PROTOCOL_VERSION: u8 = 1;

/// Largest application payload of one `Send` / `Recv` frame, in bytes.
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// Largest WebSocket message (a batch of frames), in bytes. Cloudflare's own limit is 1 MiB.
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// Most hubs one room admits at once; bounds the size of a `Welcome` frame.
pub const MAX_ROOM_MEMBERS: usize = 1024;

/// Bytes of a frame header: the type and the body length.
pub const FRAME_HEADER_LEN: usize = 5;

/// Largest body of any frame type but `RevocationList` (a `Welcome` with [`MAX_ROOM_MEMBERS`]
/// ids is smaller).
pub const MAX_FRAME_BODY: usize = HUB_ID_LEN + MAX_PAYLOAD;

/// Largest body of a `RevocationList` frame (a signed document).
pub const MAX_DOCUMENT_BODY: usize = 512 * 1024;

/// Largest body of one `Hello` extension.
pub const MAX_EXTENSION_LEN: usize = 16 * 1024;

/// The text message a hub may send as a keepalive. The relay answers [`KEEPALIVE_RESPONSE`]
/// without waking a hibernated room. Every other message of the protocol is binary.
pub const KEEPALIVE_REQUEST: &str = "ping";

/// The relay's answer to [`KEEPALIVE_REQUEST`].
pub const KEEPALIVE_RESPONSE: &str = "pong";

/// The frame-type registry of protocol v1. Values not listed here are rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum FrameType {
    /// hub -> relay: the first frame of every connection.
    Hello = 0x01,
    /// relay -> hub: admission, with the hubs already online.
    Welcome = 0x02,
    /// hub -> relay: deliver a payload to one hub of the room.
    Send = 0x03,
    /// relay -> hub: a payload from another hub of the room.
    Recv = 0x04,
    /// relay -> hub: a hub came online (or reconnected).
    PeerJoined = 0x05,
    /// relay -> hub: a hub went offline.
    PeerLeft = 0x06,
    /// relay -> hub: a `Send` named a hub that is not in the room.
    Undeliverable = 0x07,
    /// hub -> relay: ask for the room's status.
    StatusRequest = 0x08,
    /// relay -> hub: the room's status.
    Status = 0x09,
    /// relay -> hub: the relay is going away; reconnect after the given delay.
    Restarting = 0x0a,
    /// both ways: the cluster's signed revocation list (a hub publishes, the relay delivers).
    RevocationList = 0x0b,
    /// relay -> hub: frames of this hub were dropped for going past a rate limit.
    RateLimited = 0x0c,
    /// both ways: the old CA's successor document (a CA key rotation: the founder publishes it
    /// in the old room, the relay delivers it there until the grace period ends).
    Successor = 0x0d,
}

impl FrameType {
    /// Every registered type, in registry order.
    pub const ALL: [FrameType; 13] = [
        Self::Hello,
        Self::Welcome,
        Self::Send,
        Self::Recv,
        Self::PeerJoined,
        Self::PeerLeft,
        Self::Undeliverable,
        Self::StatusRequest,
        Self::Status,
        Self::Restarting,
        Self::RevocationList,
        Self::RateLimited,
        Self::Successor,
    ];

    /// Looks a wire value up in the registry.
    pub fn from_u8(value: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|t| *t as u8 == value)
    }

    /// Whether hubs may send this type to the relay (the others flow relay -> hub only).
    pub fn is_hub_to_relay(self) -> bool {
        matches!(
            self,
            Self::Hello | Self::Send | Self::StatusRequest | Self::RevocationList | Self::Successor
        )
    }
}

/// One `Hello` extension: a typed, length-prefixed field the relay may understand or skip.
///
/// Extensions keep `Hello` open for admission data (certificates, proofs) without a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    /// The extension's registered type.
    pub kind: u16,
    /// Its body.
    pub data: &'a [u8],
}

/// The first frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello<'a> {
    /// The protocol version the hub speaks.
    pub version: u8,
    /// The hub's id.
    pub hub: HubId,
    /// Extensions, in wire order, each type at most once.
    pub extensions: Vec<Extension<'a>>,
}

impl Hello<'_> {
    /// A hello with no extensions at the current [`PROTOCOL_VERSION`].
    pub fn new(hub: HubId) -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            hub,
            extensions: Vec::new(),
        }
    }
}

/// What the relay tells a hub about its room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomStatus {
    /// Hubs online in the room, the asker included.
    pub online: u32,
    /// When the room's current instance started (Unix ms); it changes after a hibernation or a
    /// relay restart, so a hub can tell that the room was woken up.
    pub instance_started_ms: u64,
}

/// One decoded frame. Payloads borrow from the message they were decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Frame<'a> {
    /// `version: u8 | hub: [u8; 16] | extensions: (kind: u16 | len: u16 | data)*`
    Hello(Hello<'a>),
    /// `version: u8 | count: u16 | hub: [u8; 16] * count`
    Welcome {
        /// The relay's protocol version.
        version: u8,
        /// The other hubs online, in ascending order.
        online: Vec<HubId>,
    },
    /// `dst: [u8; 16] | payload`
    Send {
        /// Destination hub.
        dst: HubId,
        /// Opaque payload, up to [`MAX_PAYLOAD`] bytes.
        payload: &'a [u8],
    },
    /// `src: [u8; 16] | payload`
    Recv {
        /// Sending hub.
        src: HubId,
        /// Opaque payload, up to [`MAX_PAYLOAD`] bytes.
        payload: &'a [u8],
    },
    /// `hub: [u8; 16] * n` (n >= 1): hubs that came online (or reconnected), in the order they
    /// did; the relay gathers the joins of a moment into one frame.
    PeerJoined(Vec<HubId>),
    /// `hub: [u8; 16] * n` (n >= 1): hubs that went offline. In a message that holds both, a
    /// hub that left and came back is in the `PeerLeft` frame first.
    PeerLeft(Vec<HubId>),
    /// `dst: [u8; 16]`: the hub a `Send` named is not online; its payload was dropped.
    Undeliverable(HubId),
    /// empty body
    StatusRequest,
    /// `online: u32 | instance_started_ms: u64`
    Status(RoomStatus),
    /// `reconnect_after_ms: u32`
    Restarting {
        /// How long the hub should wait before reconnecting.
        reconnect_after_ms: u32,
    },
    /// the signed revocation list, as `cluster::RevocationList::sign` makes it
    RevocationList(&'a [u8]),
    /// the signed successor document, as `trust::rotation::Successor::sign` makes it
    Successor(&'a [u8]),
    /// `limited: [u8; 16] | retry_after_ms: u32 | dropped: u32`: frames of this hub were dropped
    /// because a rate limit was hit: its own (`limited` is its id) or that of the hub it sent
    /// to (`limited` is that hub). `dropped` counts the frames dropped since the last such
    /// frame; send nothing more for `retry_after_ms`, then slower.
    RateLimited {
        /// Whose limit was hit.
        limited: HubId,
        /// How long until the limit lets a frame like the last one dropped through.
        retry_after_ms: u32,
        /// Frames dropped since the previous `RateLimited` frame.
        dropped: u32,
    },
}

/// Why bytes are not a valid frame or message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A message with no frame at all.
    #[error("empty message")]
    Empty,
    /// The input ends inside a frame header or body.
    #[error("truncated frame")]
    Truncated,
    /// The type byte is not in the registry.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A length past a limit of the protocol.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A body with bytes after its last field.
    #[error("trailing bytes in a {0:?} frame")]
    Trailing(FrameType),
    /// A field's value is not allowed.
    #[error("invalid {0}")]
    Invalid(&'static str),
    /// The same `Hello` extension twice.
    #[error("duplicate hello extension {0}")]
    DuplicateExtension(u16),
    /// A `Hello` or `Welcome` with a version this side does not speak.
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
}

/// A reader's error in a frame: a short body, or a string that is not UTF-8. (Bytes left over
/// are mapped where the frame type is known: [`FrameError::Trailing`].)
impl From<CodecError> for FrameError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Utf8 => FrameError::Invalid("utf-8 string"),
            CodecError::Trailing => FrameError::Invalid("trailing bytes"),
            _ => FrameError::Truncated,
        }
    }
}

/// One hub id or more, as many as the body holds whole (bytes left over are for
/// [`Reader::finish`] to refuse), at most [`MAX_ROOM_MEMBERS`].
fn hub_list(r: &mut Reader<'_>) -> Result<Vec<HubId>, FrameError> {
    let count = r.remaining() / HUB_ID_LEN;
    if count > MAX_ROOM_MEMBERS {
        return Err(FrameError::TooLarge {
            what: "presence list",
            len: count,
            max: MAX_ROOM_MEMBERS,
        });
    }
    let hubs = (0..count.max(1))
        .map(|_| r.hub())
        .collect::<Result<_, _>>()?;
    Ok(hubs)
}

impl FrameError {
    /// The close code a relay uses for a hub that sent this.
    pub fn close_code(&self) -> CloseCode {
        match self {
            FrameError::TooLarge { .. } => CloseCode::TooLarge,
            FrameError::UnsupportedVersion(_) => CloseCode::UnsupportedVersion,
            _ => CloseCode::ProtocolError,
        }
    }
}

impl<'a> Frame<'a> {
    /// The frame's registered type.
    pub fn frame_type(&self) -> FrameType {
        match self {
            Frame::Hello(_) => FrameType::Hello,
            Frame::Welcome { .. } => FrameType::Welcome,
            Frame::Send { .. } => FrameType::Send,
            Frame::Recv { .. } => FrameType::Recv,
            Frame::PeerJoined(_) => FrameType::PeerJoined,
            Frame::PeerLeft(_) => FrameType::PeerLeft,
            Frame::Undeliverable(_) => FrameType::Undeliverable,
            Frame::StatusRequest => FrameType::StatusRequest,
            Frame::Status(_) => FrameType::Status,
            Frame::Restarting { .. } => FrameType::Restarting,
            Frame::RevocationList(_) => FrameType::RevocationList,
            Frame::RateLimited { .. } => FrameType::RateLimited,
            Frame::Successor(_) => FrameType::Successor,
        }
    }

    /// Whether the frame is within the limits that [`Frame::decode`] enforces: what encodes,
    /// decodes. A frame past a limit is an error, never a frame cut short to fit its length
    /// field.
    pub fn check(&self) -> Result<(), FrameError> {
        let limit = |what, len, max| {
            if len > max {
                Err(FrameError::TooLarge { what, len, max })
            } else {
                Ok(())
            }
        };
        match self {
            Frame::Hello(hello) => {
                for (i, ext) in hello.extensions.iter().enumerate() {
                    limit("hello extension", ext.data.len(), MAX_EXTENSION_LEN)?;
                    if hello.extensions[..i].iter().any(|e| e.kind == ext.kind) {
                        return Err(FrameError::DuplicateExtension(ext.kind));
                    }
                }
                let body = 1
                    + HUB_ID_LEN
                    + hello
                        .extensions
                        .iter()
                        .map(|e| 4 + e.data.len())
                        .sum::<usize>();
                limit("frame body", body, MAX_FRAME_BODY)
            }
            Frame::Welcome { online, .. } => {
                limit("welcome member list", online.len(), MAX_ROOM_MEMBERS)
            }
            Frame::Send { payload, .. } | Frame::Recv { payload, .. } => {
                limit("payload", payload.len(), MAX_PAYLOAD)
            }
            Frame::RevocationList([]) => Err(FrameError::Invalid("empty revocation list")),
            Frame::RevocationList(doc) => limit("frame body", doc.len(), MAX_DOCUMENT_BODY),
            Frame::Successor([]) => Err(FrameError::Invalid("empty successor document")),
            Frame::Successor(doc) => limit("frame body", doc.len(), MAX_DOCUMENT_BODY),
            Frame::PeerJoined(hubs) | Frame::PeerLeft(hubs) => {
                if hubs.is_empty() {
                    return Err(FrameError::Invalid("empty presence list"));
                }
                limit("presence list", hubs.len(), MAX_ROOM_MEMBERS)
            }
            Frame::RateLimited { .. }
            | Frame::Undeliverable(_)
            | Frame::StatusRequest
            | Frame::Status(_)
            | Frame::Restarting { .. } => Ok(()),
        }
    }

    /// Appends the frame's wire form to `out`; a frame past a limit ([`Frame::check`]) is an
    /// error and leaves `out` as it was.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), FrameError> {
        self.check()?;
        self.write(out);
        Ok(())
    }

    /// Appends the wire form without checking the limits: for [`Frame::encode`], and for tests
    /// that need frames past a limit (to see the decoder refuse them).
    pub(crate) fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(self.frame_type() as u8);
        out.extend_from_slice(&[0; 4]);
        match self {
            Frame::Hello(hello) => {
                out.push(hello.version);
                out.extend_from_slice(&hello.hub.0);
                for ext in &hello.extensions {
                    out.extend_from_slice(&ext.kind.to_be_bytes());
                    out.extend_from_slice(&(ext.data.len() as u16).to_be_bytes());
                    out.extend_from_slice(ext.data);
                }
            }
            Frame::Welcome { version, online } => {
                out.push(*version);
                out.extend_from_slice(&(online.len() as u16).to_be_bytes());
                for hub in online {
                    out.extend_from_slice(&hub.0);
                }
            }
            Frame::Send { dst: hub, payload } | Frame::Recv { src: hub, payload } => {
                out.extend_from_slice(&hub.0);
                out.extend_from_slice(payload);
            }
            Frame::PeerJoined(hubs) | Frame::PeerLeft(hubs) => {
                for hub in hubs {
                    out.extend_from_slice(&hub.0);
                }
            }
            Frame::Undeliverable(hub) => out.extend_from_slice(&hub.0),
            Frame::RateLimited {
                limited,
                retry_after_ms,
                dropped,
            } => {
                out.extend_from_slice(&limited.0);
                out.extend_from_slice(&retry_after_ms.to_be_bytes());
                out.extend_from_slice(&dropped.to_be_bytes());
            }
            Frame::StatusRequest => {}
            Frame::Status(status) => {
                out.extend_from_slice(&status.online.to_be_bytes());
                out.extend_from_slice(&status.instance_started_ms.to_be_bytes());
            }
            Frame::Restarting { reconnect_after_ms } => {
                out.extend_from_slice(&reconnect_after_ms.to_be_bytes());
            }
            Frame::RevocationList(doc) | Frame::Successor(doc) => out.extend_from_slice(doc),
        }
        // Within u32: `check` bounds every body far below it.
        let body_len = (out.len() - start - FRAME_HEADER_LEN) as u32;
        out[start + 1..start + FRAME_HEADER_LEN].copy_from_slice(&body_len.to_be_bytes());
    }

    /// The frame as a one-frame message.
    pub fn to_message(&self) -> Result<Vec<u8>, FrameError> {
        let mut out = Vec::new();
        self.encode(&mut out)?;
        Ok(out)
    }

    /// Decodes one frame from the front of `buf`, returning it and the rest of `buf`.
    pub fn decode(buf: &'a [u8]) -> Result<(Frame<'a>, &'a [u8]), FrameError> {
        let mut r = Reader::new(buf);
        let raw_type = r.u8()?;
        let ty = FrameType::from_u8(raw_type).ok_or(FrameError::UnknownType(raw_type))?;
        let len = r.u32()? as usize;
        let max = match ty {
            FrameType::RevocationList | FrameType::Successor => MAX_DOCUMENT_BODY,
            _ => MAX_FRAME_BODY,
        };
        if len > max {
            return Err(FrameError::TooLarge {
                what: "frame body",
                len,
                max,
            });
        }
        let mut body = Reader::new(r.take(len)?);
        let frame = Self::decode_body(ty, &mut body)?;
        body.finish().map_err(|_| FrameError::Trailing(ty))?;
        Ok((frame, r.rest()))
    }

    fn decode_body(ty: FrameType, r: &mut Reader<'a>) -> Result<Frame<'a>, FrameError> {
        Ok(match ty {
            FrameType::Hello => {
                let version = r.u8()?;
                let hub = r.hub()?;
                let mut extensions: Vec<Extension<'a>> = Vec::new();
                while !r.is_empty() {
                    let kind = r.u16()?;
                    let len = usize::from(r.u16()?);
                    if len > MAX_EXTENSION_LEN {
                        return Err(FrameError::TooLarge {
                            what: "hello extension",
                            len,
                            max: MAX_EXTENSION_LEN,
                        });
                    }
                    if extensions.iter().any(|e| e.kind == kind) {
                        return Err(FrameError::DuplicateExtension(kind));
                    }
                    extensions.push(Extension {
                        kind,
                        data: r.take(len)?,
                    });
                }
                Frame::Hello(Hello {
                    version,
                    hub,
                    extensions,
                })
            }
            FrameType::Welcome => {
                let version = r.u8()?;
                let count = usize::from(r.u16()?);
                if count > MAX_ROOM_MEMBERS {
                    return Err(FrameError::TooLarge {
                        what: "welcome member list",
                        len: count,
                        max: MAX_ROOM_MEMBERS,
                    });
                }
                let online = (0..count).map(|_| r.hub()).collect::<Result<_, _>>()?;
                Frame::Welcome { version, online }
            }
            FrameType::Send | FrameType::Recv => {
                let hub = r.hub()?;
                let payload = r.rest();
                if payload.len() > MAX_PAYLOAD {
                    return Err(FrameError::TooLarge {
                        what: "payload",
                        len: payload.len(),
                        max: MAX_PAYLOAD,
                    });
                }
                if ty == FrameType::Send {
                    Frame::Send { dst: hub, payload }
                } else {
                    Frame::Recv { src: hub, payload }
                }
            }
            FrameType::PeerJoined => Frame::PeerJoined(hub_list(r)?),
            FrameType::PeerLeft => Frame::PeerLeft(hub_list(r)?),
            FrameType::Undeliverable => Frame::Undeliverable(r.hub()?),
            FrameType::StatusRequest => Frame::StatusRequest,
            FrameType::Status => Frame::Status(RoomStatus {
                online: r.u32()?,
                instance_started_ms: r.u64()?,
            }),
            FrameType::Restarting => Frame::Restarting {
                reconnect_after_ms: r.u32()?,
            },
            FrameType::RevocationList => {
                let doc = r.rest();
                if doc.is_empty() {
                    return Err(FrameError::Invalid("empty revocation list"));
                }
                Frame::RevocationList(doc)
            }
            FrameType::RateLimited => Frame::RateLimited {
                limited: r.hub()?,
                retry_after_ms: r.u32()?,
                dropped: r.u32()?,
            },
            FrameType::Successor => {
                let doc = r.rest();
                if doc.is_empty() {
                    return Err(FrameError::Invalid("empty successor document"));
                }
                Frame::Successor(doc)
            }
        })
    }
}

/// The frames of one WebSocket message, decoded lazily and in order.
///
/// Yields an error at the first bad frame, then stops. An empty message yields
/// [`FrameError::Empty`]; a message over [`MAX_MESSAGE`] yields [`FrameError::TooLarge`].
#[derive(Debug)]
pub struct Frames<'a> {
    rest: &'a [u8],
    state: FramesState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FramesState {
    First,
    More,
    Done,
}

/// Iterates over the frames of one WebSocket message.
pub fn frames(message: &[u8]) -> Frames<'_> {
    Frames {
        rest: message,
        state: FramesState::First,
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.state {
            FramesState::Done => return None,
            FramesState::First => {
                self.state = FramesState::More;
                if self.rest.is_empty() {
                    self.state = FramesState::Done;
                    return Some(Err(FrameError::Empty));
                }
                if self.rest.len() > MAX_MESSAGE {
                    self.state = FramesState::Done;
                    return Some(Err(FrameError::TooLarge {
                        what: "message",
                        len: self.rest.len(),
                        max: MAX_MESSAGE,
                    }));
                }
            }
            FramesState::More => {
                if self.rest.is_empty() {
                    self.state = FramesState::Done;
                    return None;
                }
            }
        }
        match Frame::decode(self.rest) {
            Ok((frame, rest)) => {
                self.rest = rest;
                Some(Ok(frame))
            }
            Err(e) => {
                self.state = FramesState::Done;
                Some(Err(e))
            }
        }
    }
}

/// Bytes before the payload of a `Send` or `Recv` frame: the frame header and the hub id. The two
/// types have the same layout, so a relay can turn a `Send` into its `Recv` by rewriting these
/// bytes alone.
pub const ROUTING_HEADER_LEN: usize = FRAME_HEADER_LEN + HUB_ID_LEN;

/// The destination of a message of `len` bytes whose first bytes are `head`, if the message is
/// exactly one `Send` frame that [`frames`] would accept: the check needs the routing header
/// only, not the payload (which is opaque).
pub fn single_send(head: &[u8], len: usize) -> Option<HubId> {
    let head: &[u8; ROUTING_HEADER_LEN] = head.get(..ROUTING_HEADER_LEN)?.try_into().ok()?;
    let [ty, l0, l1, l2, l3, hub @ ..] = *head;
    let body = u32::from_be_bytes([l0, l1, l2, l3]) as usize;
    let whole = ty == FrameType::Send as u8
        && len.checked_sub(FRAME_HEADER_LEN) == Some(body)
        && body >= HUB_ID_LEN
        && body - HUB_ID_LEN <= MAX_PAYLOAD;
    whole.then_some(HubId(hub))
}

/// The routing header of a `Recv` frame from `src` whose payload is `payload_len` bytes (at most
/// [`MAX_PAYLOAD`]): what replaces a single `Send`'s header, payload untouched.
pub fn recv_header(src: HubId, payload_len: usize) -> [u8; ROUTING_HEADER_LEN] {
    let mut head = [0u8; ROUTING_HEADER_LEN];
    head[0] = FrameType::Recv as u8;
    let body = (HUB_ID_LEN + payload_len.min(MAX_PAYLOAD)) as u32;
    head[1..FRAME_HEADER_LEN].copy_from_slice(&body.to_be_bytes());
    head[FRAME_HEADER_LEN..].copy_from_slice(&src.0);
    head
}

/// Decodes a whole message into owned-by-borrow frames, or the first error.
pub fn decode_message(message: &[u8]) -> Result<Vec<Frame<'_>>, FrameError> {
    frames(message).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hub(b: u8) -> HubId {
        HubId([b; HUB_ID_LEN])
    }

    fn sample(ty: FrameType) -> Frame<'static> {
        match ty {
            FrameType::Hello => Frame::Hello(Hello {
                version: 1,
                hub: hub(0x11),
                extensions: vec![Extension {
                    kind: 7,
                    data: b"ab",
                }],
            }),
            FrameType::Welcome => Frame::Welcome {
                version: 1,
                online: vec![hub(0x22), hub(0x33)],
            },
            FrameType::Send => Frame::Send {
                dst: hub(0x44),
                payload: b"hi",
            },
            FrameType::Recv => Frame::Recv {
                src: hub(0x55),
                payload: b"yo",
            },
            FrameType::PeerJoined => Frame::PeerJoined(vec![hub(0x66)]),
            FrameType::PeerLeft => Frame::PeerLeft(vec![hub(0x77)]),
            FrameType::Undeliverable => Frame::Undeliverable(hub(0x88)),
            FrameType::StatusRequest => Frame::StatusRequest,
            FrameType::Status => Frame::Status(RoomStatus {
                online: 3,
                instance_started_ms: 0x0102_0304_0506_0708,
            }),
            FrameType::Restarting => Frame::Restarting {
                reconnect_after_ms: 1500,
            },
            FrameType::RevocationList => Frame::RevocationList(b"HRRL"),
            FrameType::RateLimited => Frame::RateLimited {
                limited: hub(0x99),
                retry_after_ms: 250,
                dropped: 7,
            },
            FrameType::Successor => Frame::Successor(b"HRSC"),
        }
    }

    /// Hex snapshots of every frame type: a change here is a wire change (and a version bump).
    #[test]
    fn hex_snapshots() {
        let id = |b: u8| hex::encode([b; 16]);
        let expected: Vec<(FrameType, String)> = vec![
            (
                FrameType::Hello,
                format!("0100000017 01 {} 0007 0002 6162", id(0x11)),
            ),
            (
                FrameType::Welcome,
                format!("0200000023 01 0002 {} {}", id(0x22), id(0x33)),
            ),
            (FrameType::Send, format!("0300000012 {} 6869", id(0x44))),
            (FrameType::Recv, format!("0400000012 {} 796f", id(0x55))),
            (FrameType::PeerJoined, format!("0500000010 {}", id(0x66))),
            (FrameType::PeerLeft, format!("0600000010 {}", id(0x77))),
            (FrameType::Undeliverable, format!("0700000010 {}", id(0x88))),
            (FrameType::StatusRequest, "0800000000".to_owned()),
            (
                FrameType::Status,
                "090000000c 00000003 0102030405060708".to_owned(),
            ),
            (FrameType::Restarting, "0a00000004 000005dc".to_owned()),
            (FrameType::RevocationList, "0b00000004 4852524c".to_owned()),
            (
                FrameType::RateLimited,
                format!("0c00000018 {} 000000fa 00000007", id(0x99)),
            ),
            (FrameType::Successor, "0d00000004 48525343".to_owned()),
        ];
        assert_eq!(expected.len(), FrameType::ALL.len(), "a snapshot per type");
        for (ty, want) in expected {
            let got = hex::encode(sample(ty).to_message().unwrap());
            assert_eq!(got, want.replace(' ', ""), "{ty:?}");
        }
    }

    /// Encoding checks the limits decoding enforces: a 70,000-byte extension once went out
    /// with its length cut to 16 bits (a corrupt frame); now it is refused and nothing is
    /// written.
    #[test]
    fn encoding_past_a_limit_is_an_error_not_a_corrupt_frame() {
        let big = vec![0u8; 70_000];
        let mut out = vec![9u8];
        let hello = Frame::Hello(Hello {
            version: 1,
            hub: hub(1),
            extensions: vec![Extension {
                kind: 1,
                data: &big,
            }],
        });
        assert!(matches!(
            hello.encode(&mut out),
            Err(FrameError::TooLarge {
                what: "hello extension",
                len: 70_000,
                ..
            })
        ));
        assert_eq!(out, [9], "nothing written");
        let twice = Frame::Hello(Hello {
            version: 1,
            hub: hub(1),
            extensions: vec![
                Extension {
                    kind: 1,
                    data: b"a",
                },
                Extension {
                    kind: 1,
                    data: b"b",
                },
            ],
        });
        assert_eq!(twice.to_message(), Err(FrameError::DuplicateExtension(1)));
        let payload = vec![0u8; MAX_PAYLOAD + 1];
        let send = Frame::Send {
            dst: hub(2),
            payload: &payload,
        };
        assert!(matches!(
            send.to_message(),
            Err(FrameError::TooLarge {
                what: "payload",
                ..
            })
        ));
        let online = vec![hub(3); MAX_ROOM_MEMBERS + 1];
        let welcome = Frame::Welcome { version: 1, online };
        assert!(welcome.to_message().is_err());
        assert!(Frame::RevocationList(b"").to_message().is_err());
        let doc = vec![1u8; MAX_DOCUMENT_BODY + 1];
        assert!(Frame::RevocationList(&doc).to_message().is_err());
        // At the limits, what encodes decodes.
        let payload = vec![0u8; MAX_PAYLOAD];
        let send = Frame::Send {
            dst: hub(2),
            payload: &payload,
        };
        assert_eq!(
            decode_message(&send.to_message().unwrap()).unwrap(),
            vec![send]
        );
    }

    #[test]
    fn every_type_round_trips_and_registry_is_closed() {
        for ty in FrameType::ALL {
            let frame = sample(ty);
            let bytes = frame.to_message().unwrap();
            assert_eq!(decode_message(&bytes).unwrap(), vec![frame]);
        }
        let known: Vec<u8> = FrameType::ALL.iter().map(|t| *t as u8).collect();
        for b in 0..=255u8 {
            let msg = [b, 0, 0, 0, 0];
            if !known.contains(&b) {
                assert_eq!(Frame::decode(&msg).unwrap_err(), FrameError::UnknownType(b));
            }
        }
    }

    #[test]
    fn truncated_input_is_rejected_at_every_cut() {
        for ty in FrameType::ALL {
            let bytes = sample(ty).to_message().unwrap();
            for cut in 1..bytes.len() {
                let err = decode_message(&bytes[..cut]).unwrap_err();
                assert_eq!(err, FrameError::Truncated, "{ty:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn trailing_bytes_inside_a_body_are_rejected() {
        for ty in [
            FrameType::PeerJoined,
            FrameType::Status,
            FrameType::StatusRequest,
            FrameType::Restarting,
            FrameType::Welcome,
        ] {
            let mut bytes = sample(ty).to_message().unwrap();
            bytes.push(0);
            let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) + 1;
            bytes[1..5].copy_from_slice(&len.to_be_bytes());
            assert_eq!(
                decode_message(&bytes).unwrap_err(),
                FrameError::Trailing(ty)
            );
        }
    }

    #[test]
    fn trailing_garbage_after_the_last_frame_is_rejected() {
        let mut bytes = sample(FrameType::PeerLeft).to_message().unwrap();
        bytes.extend_from_slice(&[0x05, 0x00]);
        assert_eq!(decode_message(&bytes).unwrap_err(), FrameError::Truncated);
    }

    /// A frame written without the encoder's checks, to feed the decoder.
    fn unchecked(frame: &Frame<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        frame.write(&mut out);
        out
    }

    #[test]
    fn oversized_input_is_rejected() {
        let payload = vec![0u8; MAX_PAYLOAD + 1];
        let bytes = unchecked(&Frame::Send {
            dst: hub(1),
            payload: &payload,
        });
        assert!(matches!(
            decode_message(&bytes).unwrap_err(),
            FrameError::TooLarge {
                what: "frame body",
                ..
            }
        ));
        // A body length past the limit is refused before any body byte arrives.
        let header = [FrameType::Send as u8, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            Frame::decode(&header).unwrap_err(),
            FrameError::TooLarge { .. }
        ));
        let big = vec![0u8; MAX_MESSAGE + 1];
        assert!(matches!(
            decode_message(&big).unwrap_err(),
            FrameError::TooLarge {
                what: "message",
                ..
            }
        ));
        // The largest payload is fine.
        let payload = vec![7u8; MAX_PAYLOAD];
        let bytes = Frame::Send {
            dst: hub(1),
            payload: &payload,
        }
        .to_message()
        .unwrap();
        assert_eq!(decode_message(&bytes).unwrap().len(), 1);
    }

    #[test]
    fn empty_message_and_duplicate_extensions_are_rejected() {
        assert_eq!(decode_message(&[]).unwrap_err(), FrameError::Empty);
        let ext = Extension { kind: 9, data: b"" };
        let bytes = unchecked(&Frame::Hello(Hello {
            version: 1,
            hub: hub(1),
            extensions: vec![ext, ext],
        }));
        assert_eq!(
            decode_message(&bytes).unwrap_err(),
            FrameError::DuplicateExtension(9)
        );
    }

    #[test]
    fn hub_id_text_form() {
        let id: HubId = "000102030405060708090a0b0c0d0e0f".parse().unwrap();
        assert_eq!(id.0[15], 15);
        assert_eq!(id.to_string(), "000102030405060708090a0b0c0d0e0f");
        assert!("xyz".parse::<HubId>().is_err());
        assert!("000102".parse::<HubId>().is_err());
    }

    fn arb_hub() -> impl Strategy<Value = HubId> {
        any::<[u8; HUB_ID_LEN]>().prop_map(HubId)
    }

    #[derive(Debug, Clone)]
    enum Owned {
        Hello(u8, HubId, Vec<(u16, Vec<u8>)>),
        Welcome(u8, Vec<HubId>),
        Send(HubId, Vec<u8>),
        Recv(HubId, Vec<u8>),
        Joined(Vec<HubId>),
        Left(Vec<HubId>),
        Undeliverable(HubId),
        StatusRequest,
        Status(u32, u64),
        Restarting(u32),
        Revocations(Vec<u8>),
        RateLimited(HubId, u32, u32),
        Successor(Vec<u8>),
    }

    impl Owned {
        fn frame(&self) -> Frame<'_> {
            match self {
                Owned::Hello(v, h, exts) => Frame::Hello(Hello {
                    version: *v,
                    hub: *h,
                    extensions: exts
                        .iter()
                        .map(|(kind, data)| Extension { kind: *kind, data })
                        .collect(),
                }),
                Owned::Welcome(v, online) => Frame::Welcome {
                    version: *v,
                    online: online.clone(),
                },
                Owned::Send(h, p) => Frame::Send {
                    dst: *h,
                    payload: p,
                },
                Owned::Recv(h, p) => Frame::Recv {
                    src: *h,
                    payload: p,
                },
                Owned::Joined(h) => Frame::PeerJoined(h.clone()),
                Owned::Left(h) => Frame::PeerLeft(h.clone()),
                Owned::Undeliverable(h) => Frame::Undeliverable(*h),
                Owned::StatusRequest => Frame::StatusRequest,
                Owned::Status(online, started) => Frame::Status(RoomStatus {
                    online: *online,
                    instance_started_ms: *started,
                }),
                Owned::Restarting(ms) => Frame::Restarting {
                    reconnect_after_ms: *ms,
                },
                Owned::Revocations(doc) => Frame::RevocationList(doc),
                Owned::Successor(doc) => Frame::Successor(doc),
                Owned::RateLimited(h, ms, n) => Frame::RateLimited {
                    limited: *h,
                    retry_after_ms: *ms,
                    dropped: *n,
                },
            }
        }
    }

    fn arb_frame() -> impl Strategy<Value = Owned> {
        let payload = proptest::collection::vec(any::<u8>(), 0..2048);
        let exts = proptest::collection::btree_map(
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..64),
            0..4,
        )
        .prop_map(|m| m.into_iter().collect::<Vec<_>>());
        prop_oneof![
            (any::<u8>(), arb_hub(), exts).prop_map(|(v, h, e)| Owned::Hello(v, h, e)),
            (any::<u8>(), proptest::collection::vec(arb_hub(), 0..20))
                .prop_map(|(v, o)| Owned::Welcome(v, o)),
            (arb_hub(), payload.clone()).prop_map(|(h, p)| Owned::Send(h, p)),
            (arb_hub(), payload).prop_map(|(h, p)| Owned::Recv(h, p)),
            proptest::collection::vec(arb_hub(), 1..20).prop_map(Owned::Joined),
            proptest::collection::vec(arb_hub(), 1..20).prop_map(Owned::Left),
            arb_hub().prop_map(Owned::Undeliverable),
            Just(Owned::StatusRequest),
            (any::<u32>(), any::<u64>()).prop_map(|(a, b)| Owned::Status(a, b)),
            any::<u32>().prop_map(Owned::Restarting),
            proptest::collection::vec(any::<u8>(), 1..512).prop_map(Owned::Revocations),
            proptest::collection::vec(any::<u8>(), 1..512).prop_map(Owned::Successor),
            (arb_hub(), any::<u32>(), any::<u32>())
                .prop_map(|(h, a, b)| Owned::RateLimited(h, a, b)),
        ]
    }

    proptest! {
        /// Any batch of frames encodes to a message that decodes to the same frames.
        #[test]
        fn batch_round_trip(batch in proptest::collection::vec(arb_frame(), 1..8)) {
            let frames: Vec<Frame<'_>> = batch.iter().map(Owned::frame).collect();
            let mut msg = Vec::new();
            for f in &frames {
                f.encode(&mut msg).unwrap();
            }
            prop_assert_eq!(decode_message(&msg).unwrap(), frames);
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_message(&bytes);
        }
    }

    proptest! {
        /// `single_send` reads from the routing header alone what decoding the whole message
        /// says, and `recv_header` is the header `Frame::Recv` encodes.
        #[test]
        fn single_send_agrees_with_decoding(
            frames_in in prop::collection::vec((any::<[u8; HUB_ID_LEN]>(), prop::collection::vec(any::<u8>(), 0..64), 3u8..5), 1..3),
            cut in 0usize..3,
        ) {
            let mut message = Vec::new();
            for (hub, payload, ty) in &frames_in {
                let f = if *ty == FrameType::Send as u8 {
                    Frame::Send { dst: HubId(*hub), payload }
                } else {
                    Frame::Recv { src: HubId(*hub), payload }
                };
                f.encode(&mut message).unwrap();
            }
            message.truncate(message.len().saturating_sub(cut));
            let decoded = decode_message(&message);
            let expected = match decoded.as_deref() {
                Ok([Frame::Send { dst, .. }]) => Some(*dst),
                _ => None,
            };
            prop_assert_eq!(single_send(&message, message.len()), expected);
            if let Some(dst) = expected {
                let payload = &message[ROUTING_HEADER_LEN..];
                let mut recv = Frame::Recv { src: dst, payload }.to_message().unwrap();
                recv.truncate(ROUTING_HEADER_LEN);
                prop_assert_eq!(recv_header(dst, payload.len()).to_vec(), recv);
            }
        }
    }
}
