//! The federation audit log's entries and their chain: the canonical bytes of an entry, and its
//! MAC, HMAC-SHA256 under the hub's audit key over the previous entry's MAC and those bytes. Pure:
//! the hub stores entries and keeps the key; anyone with the key can check a log with [`verify`].
//!
//! ```text
//! "hub-relay audit v3\0" | prev_mac: [32] | seq: u64 | at_ms: u64 | kind: str8 | peer: [16] |
//! principal: str8 | app: str8 | tool: str8 | decision: str8 | reason: str16 |
//! duration_ms: u64 | arguments_sha256: [32] | bytes: u64 | count: u64
//! ```
//!
//! `count` is how many events of the same kind, peer and decision the entry stands for (a
//! refusal repeated within an interval is written once, with its count). Entries written before
//! `count` existed (format 2) have none: their bytes start with `"hub-relay audit v2\0"` and end
//! after `bytes`; those written before `bytes` (format 1) start with `"hub-relay audit v1\0"` and
//! end after `arguments_sha256`. The format is part of what is MACed, so an entry cannot be moved
//! from one to another without the key.
//!
//! Integers big-endian; `str8`/`str16` a `u8`/`u16` length and UTF-8 (longer text is cut at a
//! character boundary before it is stored, so the stored text is what is MACed). The first entry's
//! `prev_mac` is 32 zero bytes; `seq` starts at 1 and has no gaps. `peer` is zeros when no peer is
//! involved, `arguments_sha256` zeros when there are no arguments.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::codec::Reader;
use crate::HubId;

pub mod repeats;
pub use repeats::Repeats;

const DOMAIN_V1: &[u8] = b"hub-relay audit v1\0";
const DOMAIN_V2: &[u8] = b"hub-relay audit v2\0";
const DOMAIN: &[u8] = b"hub-relay audit v3\0";

/// Longest `reason`, in bytes; the other strings are at most 255.
pub const MAX_REASON: usize = 1024;

/// One audit entry (without its MAC).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    /// Position in the chain, from 1.
    pub seq: u64,
    /// When (Unix ms).
    pub at_ms: u64,
    /// What happened: `call.out`, `call.in`, `pairing`, `revoke`, `suspend`, `resume`,
    /// `app.share`, `app.add`, `app.remove`, `token.create`, ...
    pub kind: String,
    /// The other hub, if any.
    pub peer: Option<HubId>,
    /// On whose behalf (an operator principal), if any.
    pub principal: String,
    /// The app, if any.
    pub app: String,
    /// The tool, if any.
    pub tool: String,
    /// `allowed`, `refused`, `ok`, `failed`, or empty.
    pub decision: String,
    /// Why, or the outcome, for people.
    pub reason: String,
    /// How long it took, if it is a call.
    pub duration_ms: u64,
    /// SHA-256 of a call's arguments (never the arguments themselves).
    pub arguments_sha256: Option<[u8; 32]>,
    /// Bytes a call carried (its arguments and its result); `None` only in entries of format 1,
    /// written before this field existed.
    pub bytes: Option<u64>,
    /// How many events the entry stands for (more than 1 for a refusal repeated within an
    /// interval); `None` in entries of formats 1 and 2, which stand for one.
    pub count: Option<u64>,
}

fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Entry {
    /// Cuts the strings to what the encoding holds (what is stored must be what is MACed).
    pub fn bounded(mut self) -> Self {
        for s in [
            &mut self.kind,
            &mut self.principal,
            &mut self.app,
            &mut self.tool,
            &mut self.decision,
        ] {
            *s = cut(s, 255).to_owned();
        }
        self.reason = cut(&self.reason, MAX_REASON).to_owned();
        self
    }

    /// The canonical bytes the MAC covers, after `prev_mac`.
    pub fn canonical(&self, prev_mac: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(match (self.bytes, self.count) {
            (None, None) => DOMAIN_V1,
            (Some(_), None) => DOMAIN_V2,
            (_, Some(_)) => DOMAIN,
        });
        out.extend_from_slice(prev_mac);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        let str8 = |out: &mut Vec<u8>, s: &str| {
            let s = cut(s, 255);
            out.push(s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        };
        str8(&mut out, &self.kind);
        out.extend_from_slice(&self.peer.map_or([0; 16], |p| p.0));
        str8(&mut out, &self.principal);
        str8(&mut out, &self.app);
        str8(&mut out, &self.tool);
        str8(&mut out, &self.decision);
        let reason = cut(&self.reason, MAX_REASON);
        out.extend_from_slice(&(reason.len() as u16).to_be_bytes());
        out.extend_from_slice(reason.as_bytes());
        out.extend_from_slice(&self.duration_ms.to_be_bytes());
        out.extend_from_slice(&self.arguments_sha256.unwrap_or([0; 32]));
        match (self.bytes, self.count) {
            (None, None) => {}
            (Some(bytes), None) => out.extend_from_slice(&bytes.to_be_bytes()),
            (bytes, Some(count)) => {
                out.extend_from_slice(&bytes.unwrap_or(0).to_be_bytes());
                out.extend_from_slice(&count.to_be_bytes());
            }
        }
        out
    }

    /// How many events the entry stands for.
    pub fn times(&self) -> u64 {
        self.count.unwrap_or(1)
    }

    /// The entry's MAC, chained to `prev_mac`.
    pub fn mac(&self, key: &[u8; 32], prev_mac: &[u8; 32]) -> [u8; 32] {
        // HMAC takes keys of any length: this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
            return [0; 32];
        };
        mac.update(&self.canonical(prev_mac));
        mac.finalize().into_bytes().into()
    }
}

/// Why a log does not verify: the first entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// An entry's sequence number is not the one after the previous (deleted, reordered or
    /// inserted entries).
    #[error(
        "entry {found}: expected sequence number {expected} (an entry was removed, moved or added)"
    )]
    Sequence {
        /// The number expected.
        expected: u64,
        /// The number found.
        found: u64,
    },
    /// An entry's MAC does not match its contents and the previous MAC (changed, or chained to
    /// something else).
    #[error("entry {seq}: its MAC does not match (the entry or one before it was changed)")]
    Mac {
        /// The entry.
        seq: u64,
    },
}

impl ChainError {
    /// The sequence number of the entry at fault, as the log holds it: from there on, the log
    /// cannot be vouched for.
    pub fn seq(&self) -> u64 {
        match self {
            ChainError::Sequence { found, .. } => *found,
            ChainError::Mac { seq } => *seq,
        }
    }
}

/// Checks a log from its first entry: sequence numbers 1, 2, ... and each MAC. Returns the last
/// entry's sequence number and MAC (the head), or the first fault.
pub fn verify<'a>(
    key: &[u8; 32],
    entries: impl IntoIterator<Item = (&'a Entry, &'a [u8; 32])>,
) -> Result<(u64, [u8; 32]), ChainError> {
    verify_from(key, (0, [0; 32]), entries)
}

/// Checks the rest of a log whose entries up to `start` (sequence number and MAC: a checkpoint
/// kept where older entries were archived) are not at hand: the first entry must be `start.0 +
/// 1` and chain to `start.1`. Returns the head, `start` itself if there is no entry.
pub fn verify_from<'a>(
    key: &[u8; 32],
    start: (u64, [u8; 32]),
    entries: impl IntoIterator<Item = (&'a Entry, &'a [u8; 32])>,
) -> Result<(u64, [u8; 32]), ChainError> {
    let mut head = start;
    for (entry, mac) in entries {
        let expected = head.0 + 1;
        if entry.seq != expected {
            return Err(ChainError::Sequence {
                expected,
                found: entry.seq,
            });
        }
        let want = entry.mac(key, &head.1);
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&want[..], &mac[..])) {
            return Err(ChainError::Mac { seq: entry.seq });
        }
        head = (entry.seq, *mac);
    }
    Ok(head)
}

const HEAD_MAGIC: &[u8; 4] = b"HRAH";
const HEAD_DOMAIN: &[u8] = b"hub-relay audit head v1\0";

/// A hub's audit head as it signs it for its peers: the last entry's sequence number and MAC.
///
/// ```text
/// "HRAH" | version: u8 = 1 | hub: [16] | seq: u64 | mac: [32] | at_ms: u64 | signature: [64]
/// ```
///
/// The signature is Ed25519 by the hub's identity key over `"hub-relay audit head v1\0"`
/// followed by every byte before it. Peers keep the newest head of each hub: a head whose `seq`
/// is lower than one seen before (the log was cut or rolled back), or another MAC for a `seq`
/// seen before (the log was rewritten), is an inconsistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// The hub whose log it is.
    pub hub: HubId,
    /// Entries in its log (the last one's sequence number).
    pub seq: u64,
    /// The last entry's MAC (zeros for an empty log).
    pub mac: [u8; 32],
    /// When it was signed (Unix ms).
    pub at_ms: u64,
}

/// Why bytes are not a valid signed head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    /// Not the layout.
    #[error("malformed audit head")]
    Malformed,
    /// Another hub's, or not signed by the hub's key.
    #[error("the audit head is not signed by the hub it names")]
    BadSignature,
}

impl Head {
    const LEN: usize = 4 + 1 + 16 + 8 + 32 + 8;

    fn body(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN + 64);
        out.extend_from_slice(HEAD_MAGIC);
        out.push(1);
        out.extend_from_slice(&self.hub.0);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.mac);
        out.extend_from_slice(&self.at_ms.to_be_bytes());
        out
    }

    /// The signed bytes.
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        let mut out = self.body();
        let mut message = HEAD_DOMAIN.to_vec();
        message.extend_from_slice(&out);
        out.extend_from_slice(&key.sign(&message).to_bytes());
        out
    }

    /// A head signed by `hub` with `key` (the identity key of that hub's certificate).
    pub fn verify(bytes: &[u8], hub: HubId, key: &VerifyingKey) -> Result<Self, HeadError> {
        if bytes.len() != Self::LEN + 64 {
            return Err(HeadError::Malformed);
        }
        let mut r = Reader::new(bytes);
        let bad = |_| HeadError::Malformed;
        if r.take(4).map_err(bad)? != HEAD_MAGIC || r.u8().map_err(bad)? != 1 {
            return Err(HeadError::Malformed);
        }
        let head = Head {
            hub: r.hub().map_err(bad)?,
            seq: r.u64().map_err(bad)?,
            mac: r.array().map_err(bad)?,
            at_ms: r.u64().map_err(bad)?,
        };
        let signature = Signature::from_slice(r.rest()).map_err(|_| HeadError::Malformed)?;
        let mut message = HEAD_DOMAIN.to_vec();
        message.extend_from_slice(&bytes[..Self::LEN]);
        if head.hub != hub || key.verify(&message, &signature).is_err() {
            return Err(HeadError::BadSignature);
        }
        Ok(head)
    }
}

const VIEWS_MAGIC: &[u8; 3] = b"HRV";

/// Most hubs one [`Views`] message reports on; a hub with more peers reports on the first
/// `MAX_VIEWS` by hub id.
pub const MAX_VIEWS: usize = 256;

/// What one hub sees of another: the certificate its session was set up with, the manifest epoch
/// it claims, and the newest audit head it signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// The hub seen.
    pub hub: HubId,
    /// SHA-256 of the DER certificate of its current session.
    pub cert_sha256: [u8; 32],
    /// The manifest epoch it last claimed, if it claimed one.
    pub manifest_epoch: Option<u64>,
    /// Its newest audit head held (`seq`, `mac`), if it sent one.
    pub head: Option<(u64, [u8; 32])>,
}

/// The quorum message (session message kind 14): the sender's own manifest epoch and what it sees
/// of the other hubs it has sessions with. Not signed: the session authenticates the sender, and
/// it speaks only for itself.
///
/// ```text
/// "HRV" | version: u8 = 1 | has_epoch: u8 (0 or 1) | epoch: u64 | count: u16 (<= 256) |
/// count x ( hub: [16] | cert_sha256: [32] | flags: u8 | manifest_epoch: u64 | head_seq: u64 |
///           head_mac: [32] )
/// ```
///
/// `flags` bit 0: `manifest_epoch` is known; bit 1: the head is known; other bits must be 0. Unknown
/// values must be zeros. Hubs are distinct and in ascending order. Anything else is refused, so
/// each message has one encoding.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Views {
    /// The sender's own manifest epoch, if it holds a manifest.
    pub epoch: Option<u64>,
    /// What it sees of others.
    pub views: Vec<View>,
}

/// Why bytes are not a [`Views`] message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ViewsError {
    /// Not the layout (short, trailing bytes, unknown flags, hubs not ascending).
    #[error("malformed views message")]
    Malformed,
    /// More than [`MAX_VIEWS`] views.
    #[error("a views message reports on at most {MAX_VIEWS} hubs")]
    TooMany,
}

impl Views {
    /// The wire form; views past [`MAX_VIEWS`] (in hub order) are left out.
    pub fn encode(&self) -> Vec<u8> {
        let mut views = self.views.clone();
        views.sort_by_key(|v| v.hub);
        views.dedup_by_key(|v| v.hub);
        views.truncate(MAX_VIEWS);
        let mut out = Vec::with_capacity(16 + views.len() * 97);
        out.extend_from_slice(VIEWS_MAGIC);
        out.push(1);
        out.push(u8::from(self.epoch.is_some()));
        out.extend_from_slice(&self.epoch.unwrap_or(0).to_be_bytes());
        out.extend_from_slice(&(views.len() as u16).to_be_bytes());
        for v in &views {
            out.extend_from_slice(&v.hub.0);
            out.extend_from_slice(&v.cert_sha256);
            let flags = u8::from(v.manifest_epoch.is_some()) | u8::from(v.head.is_some()) << 1;
            out.push(flags);
            out.extend_from_slice(&v.manifest_epoch.unwrap_or(0).to_be_bytes());
            let (seq, mac) = v.head.unwrap_or((0, [0; 32]));
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&mac);
        }
        out
    }

    /// Strict decoding.
    pub fn decode(bytes: &[u8]) -> Result<Self, ViewsError> {
        let bad = |_| ViewsError::Malformed;
        let mut r = Reader::new(bytes);
        if r.take(3).map_err(bad)? != VIEWS_MAGIC || r.u8().map_err(bad)? != 1 {
            return Err(ViewsError::Malformed);
        }
        let epoch = match (r.u8().map_err(bad)?, r.u64().map_err(bad)?) {
            (0, 0) => None,
            (1, e) => Some(e),
            _ => return Err(ViewsError::Malformed),
        };
        let count = usize::from(r.u16().map_err(bad)?);
        if count > MAX_VIEWS {
            return Err(ViewsError::TooMany);
        }
        let mut views = Vec::with_capacity(count);
        for _ in 0..count {
            let hub = r.hub().map_err(bad)?;
            let cert_sha256 = r.array().map_err(bad)?;
            let flags = r.u8().map_err(bad)?;
            let epoch = r.u64().map_err(bad)?;
            let seq = r.u64().map_err(bad)?;
            let mac = r.array().map_err(bad)?;
            let canonical = flags & !0b11 == 0
                && (flags & 1 != 0 || epoch == 0)
                && (flags & 2 != 0 || (seq == 0 && mac == [0; 32]))
                && views.last().is_none_or(|v: &View| v.hub < hub);
            if !canonical {
                return Err(ViewsError::Malformed);
            }
            views.push(View {
                hub,
                cert_sha256,
                manifest_epoch: (flags & 1 != 0).then_some(epoch),
                head: (flags & 2 != 0).then_some((seq, mac)),
            });
        }
        if !r.is_empty() {
            return Err(ViewsError::Malformed);
        }
        Ok(Views { epoch, views })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(key: &[u8; 32], n: u64) -> Vec<(Entry, [u8; 32])> {
        let mut prev = [0; 32];
        (1..=n)
            .map(|seq| {
                let e = Entry {
                    seq,
                    at_ms: 1_000 + seq,
                    kind: "call.in".into(),
                    peer: Some(HubId([seq as u8; 16])),
                    principal: "ann".into(),
                    app: "notes".into(),
                    tool: "read".into(),
                    decision: "allowed".into(),
                    reason: "ok".into(),
                    duration_ms: seq * 3,
                    arguments_sha256: Some([seq as u8; 32]),
                    // Format 1 entries first, as in a log from before `bytes`, then format 2,
                    // then format 3.
                    bytes: (seq > 2).then_some(seq * 100),
                    count: (seq > 4).then_some(seq),
                };
                let mac = e.mac(key, &prev);
                prev = mac;
                (e, mac)
            })
            .collect()
    }

    fn check(key: &[u8; 32], log: &[(Entry, [u8; 32])]) -> Result<(u64, [u8; 32]), ChainError> {
        verify(key, log.iter().map(|(e, m)| (e, m)))
    }

    /// The rest of a log after a checkpoint verifies from it, and only from it.
    #[test]
    fn the_rest_of_a_log_verifies_from_its_checkpoint_only() {
        let key = [7; 32];
        let log = chain(&key, 6);
        let rest = |log: &[(Entry, [u8; 32])]| log[3..].to_vec();
        let from = |start, log: &[(Entry, [u8; 32])]| {
            verify_from(&key, start, log.iter().map(|(e, m)| (e, m)))
        };
        let checkpoint = (3, log[2].1);
        assert_eq!(from(checkpoint, &rest(&log)), Ok((6, log[5].1)));
        assert_eq!(from(checkpoint, &[]), Ok(checkpoint));
        // Another MAC at the checkpoint, or another place: refused at the first entry.
        assert_eq!(
            from((3, log[1].1), &rest(&log)),
            Err(ChainError::Mac { seq: 4 })
        );
        assert_eq!(
            from((2, log[2].1), &rest(&log)),
            Err(ChainError::Sequence {
                expected: 3,
                found: 4
            })
        );
        // Verified from the start, the rest alone is not a log.
        assert_eq!(
            check(&key, &rest(&log)),
            Err(ChainError::Sequence {
                expected: 1,
                found: 4
            })
        );
    }

    /// Every kind of tampering with a stored log is found by `verify`, naming the first entry at
    /// fault; dropping the tail is not (a peer's copy of the signed head finds that).
    #[test]
    fn tampering_is_detected_and_located() {
        let key = [7; 32];
        let log = chain(&key, 6);
        assert_eq!(check(&key, &log), Ok((6, log[5].1)));
        assert_eq!(check(&[8; 32], &log), Err(ChainError::Mac { seq: 1 }));

        // Any field of any entry changed.
        type Tamper = fn(&mut Entry);
        let tampers: [(&str, Tamper); 12] = [
            ("at_ms", |e| e.at_ms += 1),
            ("kind", |e| e.kind.push('x')),
            ("peer", |e| e.peer = None),
            ("principal", |e| e.principal = "bob".into()),
            ("app", |e| e.app.clear()),
            ("tool", |e| e.tool = "write".into()),
            ("decision", |e| e.decision = "refused".into()),
            ("reason", |e| e.reason.push('!')),
            ("duration", |e| e.duration_ms = 0),
            ("arguments", |e| e.arguments_sha256 = None),
            ("bytes", |e| e.bytes = Some(e.bytes.map_or(0, |b| b + 1))),
            ("count", |e| e.count = Some(e.count.map_or(0, |c| c + 1))),
        ];
        for at in 0..log.len() {
            for (what, tamper) in &tampers {
                let mut t = log.clone();
                tamper(&mut t[at].0);
                let seq = t[at].0.seq;
                assert_eq!(
                    check(&key, &t),
                    Err(ChainError::Mac { seq }),
                    "{what} of entry {seq}"
                );
            }
            // The MAC itself changed: that entry's check fails.
            let mut t = log.clone();
            t[at].1[0] ^= 1;
            assert_eq!(check(&key, &t), Err(ChainError::Mac { seq: at as u64 + 1 }));
        }
        // An entry deleted, two swapped, the rest renumbered after a deletion.
        let mut deleted = log.clone();
        deleted.remove(2);
        assert_eq!(
            check(&key, &deleted),
            Err(ChainError::Sequence {
                expected: 3,
                found: 4
            })
        );
        let mut swapped = log.clone();
        swapped.swap(1, 4);
        assert_eq!(
            check(&key, &swapped),
            Err(ChainError::Sequence {
                expected: 2,
                found: 5
            })
        );
        let mut renumbered = deleted.clone();
        for (i, (e, _)) in renumbered.iter_mut().enumerate() {
            e.seq = i as u64 + 1;
        }
        assert_eq!(check(&key, &renumbered), Err(ChainError::Mac { seq: 3 }));
        // The tail dropped: still a valid chain by itself, with an older head.
        assert_eq!(check(&key, &log[..4]), Ok((4, log[3].1)));
    }

    #[test]
    fn heads_are_signed_by_their_hub_only() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let head = Head {
            hub: HubId([1; 16]),
            seq: 42,
            mac: [9; 32],
            at_ms: 7,
        };
        let bytes = head.sign(&key);
        let vk = key.verifying_key();
        assert_eq!(Head::verify(&bytes, head.hub, &vk), Ok(head));
        assert_eq!(
            Head::verify(&bytes, HubId([2; 16]), &vk),
            Err(HeadError::BadSignature)
        );
        let other = SigningKey::from_bytes(&[4; 32]).verifying_key();
        assert_eq!(
            Head::verify(&bytes, head.hub, &other),
            Err(HeadError::BadSignature)
        );
        let mut forged = bytes.clone();
        forged[25] ^= 1; // the sequence number
        assert_eq!(
            Head::verify(&forged, head.hub, &vk),
            Err(HeadError::BadSignature)
        );
        assert_eq!(
            Head::verify(&bytes[1..], head.hub, &vk),
            Err(HeadError::Malformed)
        );
    }

    #[test]
    fn long_text_is_cut_on_a_character_boundary() {
        let raw = Entry {
            reason: "é".repeat(MAX_REASON),
            app: "a".repeat(300),
            ..Entry::default()
        };
        let e = raw.clone().bounded();
        assert!(e.reason.len() <= MAX_REASON && e.reason.chars().all(|c| c == 'é'));
        assert_eq!(e.app.len(), 255);
        // What is stored (bounded) MACs the same as what was given.
        assert_eq!(raw.mac(&[1; 32], &[0; 32]), e.mac(&[1; 32], &[0; 32]));
    }

    #[test]
    fn views_round_trip_and_refuse_what_is_not_the_layout() {
        let view = |n: u8| View {
            hub: HubId([n; 16]),
            cert_sha256: [n; 32],
            manifest_epoch: n.is_multiple_of(2).then_some(u64::from(n)),
            head: n.is_multiple_of(3).then_some((u64::from(n) * 10, [n; 32])),
        };
        let views = Views {
            epoch: Some(4),
            views: (1..=6).map(view).collect(),
        };
        let bytes = views.encode();
        assert_eq!(bytes.len(), 3 + 1 + 1 + 8 + 2 + 6 * 97);
        assert_eq!(Views::decode(&bytes), Ok(views.clone()));
        // Given out of order, sent in order.
        let mut reversed = views.clone();
        reversed.views.reverse();
        assert_eq!(reversed.encode(), bytes);
        assert_eq!(
            Views::decode(&Views::default().encode()),
            Ok(Views::default())
        );

        assert_eq!(
            Views::decode(&bytes[..bytes.len() - 1]),
            Err(ViewsError::Malformed)
        );
        assert_eq!(
            Views::decode(&[&bytes[..], &[0]].concat()),
            Err(ViewsError::Malformed)
        );
        let mut flags = bytes.clone();
        flags[15 + 48] = 4; // first view's flags
        assert_eq!(Views::decode(&flags), Err(ViewsError::Malformed));
        let mut unknown_epoch = bytes.clone();
        unknown_epoch[15 + 48 + 1 + 7] = 1; // first view (epoch unknown): its epoch's last byte
        assert_eq!(Views::decode(&unknown_epoch), Err(ViewsError::Malformed));
        let mut unknown_head = bytes.clone();
        unknown_head[15 + 48 + 1 + 8 + 8] = 1; // first view (head unknown): its MAC
        assert_eq!(Views::decode(&unknown_head), Err(ViewsError::Malformed));
        let mut own_epoch = Views::default().encode();
        own_epoch[12] = 1;
        assert_eq!(Views::decode(&own_epoch), Err(ViewsError::Malformed));
        let mut unordered = bytes.clone();
        unordered[15..15 + 16].copy_from_slice(&[9; 16]); // first hub after the second
        assert_eq!(Views::decode(&unordered), Err(ViewsError::Malformed));
        let mut many = bytes[..13].to_vec();
        many.extend_from_slice(&(MAX_VIEWS as u16 + 1).to_be_bytes());
        assert_eq!(Views::decode(&many), Err(ViewsError::TooMany));
        let big = Views {
            epoch: None,
            views: (0..=255u8).chain(0..=255).map(view).collect(),
        };
        assert_eq!(
            Views::decode(&big.encode()).map(|v| v.views.len()),
            Ok(MAX_VIEWS)
        );
    }
}
