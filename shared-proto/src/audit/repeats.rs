//! Repeated entries written once per interval with their count: what keeps a peer that repeats a
//! refused request (or a fault) from growing another hub's log by a row each time.
//!
//! Entries go in with [`Repeats::admit`]; the first of a kind (its peer, kind, decision and
//! reason code) is written at once, and those that follow within [`REPEAT_INTERVAL_MS`] are only
//! counted. When the interval ends ([`Repeats::poll_timeout`], [`Repeats::handle_timeout`]), the
//! last of them is written with `count` set to how many were counted, and the next one of that
//! kind is written at once again. So a kind costs at most two entries an interval, and every
//! event is in the log, as an entry or in a count. [`Repeats::drain`] writes whatever is counted
//! (a hub stopping).
//!
//! Bound: at most [`MAX_REPEAT_KINDS`] kinds are held; one more writes every count held first
//! (early, but none lost) and starts over.

use std::collections::{BTreeSet, HashMap};

use super::Entry;
use crate::HubId;

/// How long repeats of one kind are counted before they are written.
pub const REPEAT_INTERVAL_MS: u64 = 60_000;

/// Kinds of repeated entries held at once.
pub const MAX_REPEAT_KINDS: usize = 4096;

/// What makes two entries repeats of each other: the peer, the kind, the decision and the code
/// (the reason up to its first `:`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    peer: Option<HubId>,
    kind: String,
    decision: String,
    code: String,
}

impl Key {
    fn of(entry: &Entry) -> Self {
        let code = entry.reason.split(':').next().unwrap_or_default();
        Key {
            peer: entry.peer,
            kind: entry.kind.clone(),
            decision: entry.decision.clone(),
            code: code.to_owned(),
        }
    }
}

#[derive(Debug)]
struct Held {
    /// When the interval that started with the entry written at once ends.
    ends_ms: u64,
    /// The last repeat counted since, and how many.
    last: Option<(Entry, u64)>,
}

/// Repeated entries counted per interval. See the module docs.
#[derive(Debug, Default)]
pub struct Repeats {
    held: HashMap<Key, Held>,
    /// Every interval's end, earliest first.
    ends: BTreeSet<(u64, Key)>,
    due: Vec<Entry>,
}

impl Repeats {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// An entry to record at `now_ms`: `Some` if it is to be written now (the first of its kind
    /// in an interval), `None` if it is counted and will be written, with the others, when the
    /// interval ends.
    pub fn admit(&mut self, entry: Entry, now_ms: u64) -> Option<Entry> {
        let key = Key::of(&entry);
        if let Some(held) = self.held.get_mut(&key) {
            let count = held.last.as_ref().map_or(0, |(_, n)| *n);
            held.last = Some((entry, count + 1));
            return None;
        }
        if self.held.len() >= MAX_REPEAT_KINDS {
            self.write_all();
        }
        let ends_ms = now_ms.saturating_add(REPEAT_INTERVAL_MS);
        self.ends.insert((ends_ms, key.clone()));
        self.held.insert(
            key,
            Held {
                ends_ms,
                last: None,
            },
        );
        Some(entry)
    }

    /// When the earliest interval ends, if one is running.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.ends.first().map(|(at, _)| *at)
    }

    /// Ends the intervals due at `now_ms`: what they counted is to be written
    /// ([`Repeats::poll_entry`]).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        while let Some((at, _)) = self.ends.first() {
            if *at > now_ms {
                break;
            }
            let Some((_, key)) = self.ends.pop_first() else {
                break;
            };
            if let Some(held) = self.held.remove(&key) {
                self.due.extend(Self::counted(held, now_ms));
            }
        }
    }

    /// Ends every interval now (the hub stops): everything counted is to be written.
    pub fn drain(&mut self, now_ms: u64) {
        self.ends.clear();
        for (_, held) in self.held.drain() {
            self.due.extend(Self::counted(held, now_ms));
        }
    }

    /// The next entry to write, one that stands for the repeats of an interval.
    pub fn poll_entry(&mut self) -> Option<Entry> {
        self.due.pop()
    }

    fn write_all(&mut self) {
        self.ends.clear();
        let now = self.held.values().map(|h| h.ends_ms).min().unwrap_or(0);
        for (_, held) in self.held.drain() {
            self.due.extend(Self::counted(held, now));
        }
    }

    /// The entry that stands for what `held` counted: its last repeat, with the count, at the end
    /// of the interval (entries stay in time order in the log).
    fn counted(held: Held, now_ms: u64) -> Option<Entry> {
        let (mut entry, count) = held.last?;
        entry.count = Some(count);
        entry.at_ms = entry.at_ms.max(now_ms.min(held.ends_ms));
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn refusal(peer: u8, code: &str) -> Entry {
        Entry {
            at_ms: NOW,
            kind: "call.in".into(),
            peer: Some(HubId([peer; 16])),
            decision: "refused".into(),
            reason: format!("{code}: why"),
            count: Some(1),
            ..Entry::default()
        }
    }

    fn written(r: &mut Repeats) -> Vec<Entry> {
        std::iter::from_fn(|| r.poll_entry()).collect()
    }

    /// 1,000 refusals of one kind from one peer in an interval are two entries: the first at
    /// once, then one with the count of the other 999 when the interval ends.
    #[test]
    fn repeats_are_counted_and_written_once_per_interval() {
        let mut r = Repeats::new();
        assert!(r.admit(refusal(1, "busy"), NOW).is_some());
        for i in 1..1000 {
            assert!(r.admit(refusal(1, "busy"), NOW + i).is_none(), "repeat {i}");
        }
        assert_eq!(r.poll_timeout(), Some(NOW + REPEAT_INTERVAL_MS));
        r.handle_timeout(NOW + REPEAT_INTERVAL_MS - 1);
        assert!(written(&mut r).is_empty());
        r.handle_timeout(NOW + REPEAT_INTERVAL_MS);
        let out = written(&mut r);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].count, Some(999));
        assert_eq!(out[0].at_ms, NOW + REPEAT_INTERVAL_MS);
        assert_eq!(r.poll_timeout(), None);
        // The next one starts a new interval: written at once.
        assert!(r
            .admit(refusal(1, "busy"), NOW + REPEAT_INTERVAL_MS + 1)
            .is_some());
    }

    /// Other peers, codes and kinds are counted apart; an interval with nothing repeated writes
    /// nothing more.
    #[test]
    fn kinds_are_counted_apart() {
        let mut r = Repeats::new();
        assert!(r.admit(refusal(1, "busy"), NOW).is_some());
        assert!(r.admit(refusal(2, "busy"), NOW).is_some());
        assert!(r.admit(refusal(1, "bad_envelope"), NOW).is_some());
        let mut fault = refusal(1, "busy");
        fault.kind = "peer.fault".into();
        assert!(r.admit(fault, NOW).is_some());
        assert!(r.admit(refusal(2, "busy"), NOW + 5).is_none());
        r.handle_timeout(NOW + REPEAT_INTERVAL_MS);
        let out = written(&mut r);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].peer, out[0].count), (Some(HubId([2; 16])), Some(1)));
    }

    /// Past the bound on kinds held, what is counted is written early, none lost; the table
    /// never holds more than the bound.
    #[test]
    fn the_kinds_held_are_bounded_and_no_count_is_lost() {
        let mut r = Repeats::new();
        let code = |i: usize| format!("c{i}");
        for i in 0..MAX_REPEAT_KINDS {
            assert!(r.admit(refusal(1, &code(i)), NOW).is_some());
            assert!(r.admit(refusal(1, &code(i)), NOW).is_none());
        }
        assert!(written(&mut r).is_empty());
        assert!(r.admit(refusal(1, "one-more"), NOW + 1).is_some());
        assert!(r.held.len() <= MAX_REPEAT_KINDS);
        let out = written(&mut r);
        assert_eq!(out.len(), MAX_REPEAT_KINDS);
        assert!(out.iter().all(|e| e.count == Some(1)));
        // Draining writes what is left.
        assert!(r.admit(refusal(1, "one-more"), NOW + 2).is_none());
        r.drain(NOW + 3);
        assert_eq!(written(&mut r).len(), 1);
        assert_eq!(r.poll_timeout(), None);
    }
}
