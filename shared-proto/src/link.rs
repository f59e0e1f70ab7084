//! A LAN link between two hubs, sans-IO: the frames inside its TLS stream, acknowledgements,
//! what is kept until acknowledged, and the link's deadlines (docs/PROTOCOL.md section 15).
//!
//! ```text
//! type: u8 | len: u32 big-endian | body
//! 0x01 data       one peer payload (the same bytes as a relay `Send` carries), at most 64 KiB
//! 0x02 ack        received: u64, the data frames read so far on this link
//! 0x03 keepalive  empty
//! ```
//!
//! A link has two halves, each driven by its own task in the hub (so that a side blocked writing
//! still reads): [`LinkReceiver`] takes the bytes read, in pieces of any size, and gives back
//! what they carry; [`LinkSender`] frames what is sent, keeps each payload until the peer
//! acknowledges it, and says when a keepalive is due. A sender keeps at most
//! [`MAX_UNACKED_BYTES`] and [`MAX_UNACKED_FRAMES`] unacknowledged ([`LinkSender::has_room`]:
//! past them, payloads go by the relay). A link on which nothing arrived for [`DEAD_AFTER_MS`]
//! is dead ([`LinkReceiver::dead_at`]); what its sender had not seen acknowledged
//! ([`LinkSender::into_unsent`]) is then sent by the relay, and the session's replay window drops
//! whatever of it did arrive.

use std::collections::VecDeque;

use crate::codec::Reader;
use crate::relay::frame::MAX_PAYLOAD;

/// A link sends a keepalive when it has sent nothing for this long (ms)...
pub const KEEPALIVE_MS: u64 = 500;

/// ... and is dead when nothing arrived on it for this long (ms).
pub const DEAD_AFTER_MS: u64 = 2_000;

/// Bytes sent on a link and not acknowledged yet, past which sends go by the relay.
pub const MAX_UNACKED_BYTES: usize = 4 * 1024 * 1024;

/// Payloads sent on a link and not acknowledged yet, past which sends go by the relay: well
/// inside the session's replay window (8,192 counters), so that what a dropped link hands back to
/// the relay is never too old for the peer to accept.
pub const MAX_UNACKED_FRAMES: usize = 2048;

/// Bytes of a frame header: its type and its body's length.
pub const HEADER_LEN: usize = 5;

/// The frame types.
const DATA: u8 = 0x01;
const ACK: u8 = 0x02;
const KEEPALIVE: u8 = 0x03;

/// Why a link's bytes are refused (the link is then closed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// A frame type not in the registry.
    #[error("unknown frame type {0:#04x}")]
    UnknownType(u8),
    /// A frame longer than its type allows.
    #[error("frame of {len} bytes over {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The most its type allows.
        max: usize,
    },
    /// An ack whose body is not 8 bytes.
    #[error("malformed ack")]
    MalformedAck,
    /// An ack of more data frames than were sent.
    #[error("an ack of {acked} data frames, {sent} were sent")]
    AckBeyondSent {
        /// What it acknowledged.
        acked: u64,
        /// What was sent.
        sent: u64,
    },
}

/// What one frame read from the peer carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// A peer payload, for the session layer.
    Payload(Vec<u8>),
    /// The peer has read this many of the data frames sent to it.
    Acked(u64),
}

/// The reading half of a link. See the module docs.
#[derive(Debug)]
pub struct LinkReceiver {
    /// Bytes read and not yet a whole frame.
    pending: Vec<u8>,
    /// Data frames read so far (what an ack says).
    received: u64,
    /// When something last arrived (Unix ms).
    heard_ms: u64,
}

impl LinkReceiver {
    /// A link that came up at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        LinkReceiver {
            pending: Vec::new(),
            received: 0,
            heard_ms: now_ms,
        }
    }

    /// Bytes read from the link at `now_ms` (any piece of the stream): each whole frame they
    /// complete is appended to `out`. An error ends the link.
    pub fn handle_bytes(
        &mut self,
        bytes: &[u8],
        now_ms: u64,
        out: &mut Vec<Received>,
    ) -> Result<(), LinkError> {
        if !bytes.is_empty() {
            self.heard_ms = self.heard_ms.max(now_ms);
        }
        self.pending.extend_from_slice(bytes);
        let mut used = 0;
        loop {
            let mut r = Reader::new(&self.pending[used..]);
            let (Ok(kind), Ok(len)) = (r.u8(), r.u32()) else {
                break;
            };
            let len = len as usize;
            let max = match kind {
                DATA => MAX_PAYLOAD,
                ACK => 8,
                KEEPALIVE => 0,
                other => return Err(LinkError::UnknownType(other)),
            };
            if len > max {
                return Err(LinkError::TooLarge { len, max });
            }
            let Ok(body) = r.take(len) else {
                break;
            };
            match kind {
                DATA => {
                    self.received += 1;
                    out.push(Received::Payload(body.to_vec()));
                }
                ACK => {
                    let n = Reader::new(body)
                        .u64()
                        .map_err(|_| LinkError::MalformedAck)?;
                    out.push(Received::Acked(n));
                }
                _ => {}
            }
            used += HEADER_LEN + len;
        }
        self.pending.drain(..used);
        Ok(())
    }

    /// Data frames read so far: what the next ack says.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// When the link is dead if nothing more arrives (Unix ms).
    pub fn dead_at(&self) -> u64 {
        self.heard_ms + DEAD_AFTER_MS
    }
}

/// The writing half of a link. See the module docs.
#[derive(Debug)]
pub struct LinkSender {
    /// Payloads sent and not acknowledged, with their sequence numbers (from 1), oldest first.
    unacked: VecDeque<(u64, Vec<u8>)>,
    unacked_bytes: usize,
    /// Data frames sent so far.
    sent: u64,
    /// The last ack sent (an ack is sent when more was received since).
    acked_to_peer: u64,
    /// When something was last written (Unix ms).
    wrote_ms: u64,
}

impl LinkSender {
    /// A link that came up at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        LinkSender {
            unacked: VecDeque::new(),
            unacked_bytes: 0,
            sent: 0,
            acked_to_peer: 0,
            wrote_ms: now_ms,
        }
    }

    /// Whether the link takes another payload (else it goes by the relay).
    pub fn has_room(&self) -> bool {
        self.unacked_bytes < MAX_UNACKED_BYTES && self.unacked.len() < MAX_UNACKED_FRAMES
    }

    /// Frames `payload` into `out`, to write at `now_ms`; it is kept until acknowledged. A
    /// payload over 64 KiB is not a peer payload: it is handed back.
    pub fn push_data(
        &mut self,
        payload: Vec<u8>,
        now_ms: u64,
        out: &mut Vec<u8>,
    ) -> Result<(), Vec<u8>> {
        if payload.len() > MAX_PAYLOAD {
            return Err(payload);
        }
        put_frame(out, DATA, &payload);
        self.sent += 1;
        self.unacked_bytes += payload.len();
        self.unacked.push_back((self.sent, payload));
        self.wrote_ms = self.wrote_ms.max(now_ms);
        Ok(())
    }

    /// Frames an ack of `received` data frames into `out` (to write at `now_ms`) if it says more
    /// than the last one; whether it did.
    pub fn push_ack(&mut self, received: u64, now_ms: u64, out: &mut Vec<u8>) -> bool {
        if received <= self.acked_to_peer {
            return false;
        }
        put_frame(out, ACK, &received.to_be_bytes());
        self.acked_to_peer = received;
        self.wrote_ms = self.wrote_ms.max(now_ms);
        true
    }

    /// When a keepalive is due if nothing else is written (Unix ms).
    pub fn keepalive_at(&self) -> u64 {
        self.wrote_ms + KEEPALIVE_MS
    }

    /// Frames a keepalive into `out` if one is due at `now_ms`; whether it did.
    pub fn push_keepalive(&mut self, now_ms: u64, out: &mut Vec<u8>) -> bool {
        if now_ms < self.keepalive_at() {
            return false;
        }
        put_frame(out, KEEPALIVE, &[]);
        self.wrote_ms = now_ms;
        true
    }

    /// The peer read `acked` data frames: those are no longer kept.
    pub fn handle_ack(&mut self, acked: u64) -> Result<(), LinkError> {
        if acked > self.sent {
            return Err(LinkError::AckBeyondSent {
                acked,
                sent: self.sent,
            });
        }
        while self.unacked.front().is_some_and(|(seq, _)| *seq <= acked) {
            if let Some((_, p)) = self.unacked.pop_front() {
                self.unacked_bytes -= p.len();
            }
        }
        Ok(())
    }

    /// Payloads kept, not acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// What the link may not have delivered, oldest first (the link is down).
    pub fn into_unsent(self) -> Vec<Vec<u8>> {
        self.unacked.into_iter().map(|(_, p)| p).collect()
    }
}

fn put_frame(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: u64 = 1_800_000_000_000;

    /// Hex snapshots of the three frames: a change here is a wire change.
    #[test]
    fn frames_on_the_wire() {
        let mut s = LinkSender::new(NOW);
        let mut out = Vec::new();
        s.push_data(b"hi".to_vec(), NOW, &mut out).unwrap();
        assert!(s.push_ack(3, NOW, &mut out));
        assert!(s.push_keepalive(NOW + KEEPALIVE_MS, &mut out));
        assert_eq!(
            hex::encode(out),
            "01000000026869".to_owned() + "02000000080000000000000003" + "0300000000"
        );
    }

    /// What one side writes, the other reads back whole, however the stream is cut.
    #[test]
    fn frames_are_read_back_across_any_cut() {
        let mut s = LinkSender::new(NOW);
        let mut wire = Vec::new();
        let payloads: Vec<Vec<u8>> = vec![vec![], vec![1; 10], vec![2; MAX_PAYLOAD]];
        for p in &payloads {
            s.push_data(p.clone(), NOW, &mut wire).unwrap();
        }
        s.push_ack(7, NOW, &mut wire);
        for piece in [1, 2, 5, 6, 4096, wire.len()] {
            let mut r = LinkReceiver::new(NOW);
            let mut got = Vec::new();
            for chunk in wire.chunks(piece) {
                r.handle_bytes(chunk, NOW, &mut got).unwrap();
            }
            let mut want: Vec<Received> = payloads.iter().cloned().map(Received::Payload).collect();
            want.push(Received::Acked(7));
            assert_eq!(got, want, "cut every {piece} bytes");
            assert_eq!(r.received(), 3);
        }
    }

    #[test]
    fn bad_frames_are_refused() {
        let mut r = LinkReceiver::new(NOW);
        let mut got = Vec::new();
        assert_eq!(
            r.handle_bytes(&[0x09, 0, 0, 0, 0], NOW, &mut got),
            Err(LinkError::UnknownType(9))
        );
        let mut r = LinkReceiver::new(NOW);
        let too_long = (MAX_PAYLOAD as u32 + 1).to_be_bytes();
        assert_eq!(
            r.handle_bytes(&[&[DATA][..], &too_long].concat(), NOW, &mut got),
            Err(LinkError::TooLarge {
                len: MAX_PAYLOAD + 1,
                max: MAX_PAYLOAD
            })
        );
        let mut r = LinkReceiver::new(NOW);
        assert_eq!(
            r.handle_bytes(&[KEEPALIVE, 0, 0, 0, 1, 0], NOW, &mut got),
            Err(LinkError::TooLarge { len: 1, max: 0 })
        );
        let mut r = LinkReceiver::new(NOW);
        assert_eq!(
            r.handle_bytes(&[ACK, 0, 0, 0, 1, 0], NOW, &mut got),
            Err(LinkError::MalformedAck)
        );
        assert!(got.is_empty());
        let mut s = LinkSender::new(NOW);
        assert_eq!(
            s.push_data(vec![0; MAX_PAYLOAD + 1], NOW, &mut Vec::new()),
            Err(vec![0; MAX_PAYLOAD + 1])
        );
        assert_eq!(
            s.handle_ack(1),
            Err(LinkError::AckBeyondSent { acked: 1, sent: 0 })
        );
    }

    /// Payloads are kept until acknowledged, within the bounds; what is left when the link goes
    /// down comes back oldest first.
    #[test]
    fn payloads_are_kept_until_acknowledged_within_bounds() {
        let mut s = LinkSender::new(NOW);
        let mut out = Vec::new();
        for i in 0..MAX_UNACKED_FRAMES {
            assert!(s.has_room());
            s.push_data(vec![i as u8], NOW, &mut out).unwrap();
        }
        assert!(!s.has_room(), "past the frame bound");
        s.handle_ack(MAX_UNACKED_FRAMES as u64 - 2).unwrap();
        assert!(s.has_room());
        assert_eq!(s.unacked(), 2);
        let unsent = s.into_unsent();
        assert_eq!(
            unsent,
            vec![
                vec![(MAX_UNACKED_FRAMES - 2) as u8],
                vec![(MAX_UNACKED_FRAMES - 1) as u8]
            ]
        );
        let mut s = LinkSender::new(NOW);
        let big = MAX_UNACKED_BYTES / MAX_PAYLOAD;
        for _ in 0..big {
            s.push_data(vec![0; MAX_PAYLOAD], NOW, &mut out).unwrap();
        }
        assert!(!s.has_room(), "past the byte bound");
        // An ack says no more than once what was said already.
        assert!(s.push_ack(5, NOW, &mut out));
        assert!(!s.push_ack(5, NOW, &mut out));
    }

    /// Keepalives go when nothing was written for a while; a link that hears nothing is dead.
    #[test]
    fn keepalives_and_the_dead_link_follow_the_clock() {
        let mut s = LinkSender::new(NOW);
        let mut out = Vec::new();
        assert!(!s.push_keepalive(NOW + KEEPALIVE_MS - 1, &mut out));
        s.push_data(vec![1], NOW + 100, &mut out).unwrap();
        assert_eq!(s.keepalive_at(), NOW + 100 + KEEPALIVE_MS);
        assert!(s.push_keepalive(NOW + 100 + KEEPALIVE_MS, &mut out));
        let mut r = LinkReceiver::new(NOW);
        assert_eq!(r.dead_at(), NOW + DEAD_AFTER_MS);
        r.handle_bytes(&[KEEPALIVE, 0, 0], NOW + 700, &mut Vec::new())
            .unwrap();
        assert_eq!(r.dead_at(), NOW + 700 + DEAD_AFTER_MS, "a piece counts");
    }

    proptest! {
        #[test]
        fn the_receiver_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut r = LinkReceiver::new(NOW);
            let _ = r.handle_bytes(&bytes, NOW, &mut Vec::new());
        }
    }
}
