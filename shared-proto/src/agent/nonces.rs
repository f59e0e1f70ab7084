//! The delegation nonces a target hub has seen, each until its envelope expires: what makes an
//! envelope good for one call (docs/PROTOCOL.md section 13). Sans-IO and in memory; the hub
//! makes each nonce durable (and loads those still valid when it starts) before the call runs.
//!
//! Bounds: one calling hub holds at most [`MAX_NONCES_PER_PEER`], all of them together at most
//! [`MAX_NONCES`]; past either, a call is refused `busy` and its nonce not kept, so a member
//! that sends calls as fast as it may fills its own share and nobody else's. A nonce is spent
//! only by a call that passed every other check (a refused call leaves nothing behind).

use std::collections::{BTreeSet, HashMap};

use crate::HubId;

/// Nonces one calling hub may hold at once (envelopes live at most 60 s: 1,000 calls a second
/// for 50 s).
pub const MAX_NONCES_PER_PEER: usize = 50_000;

/// Nonces held at once, of every calling hub.
pub const MAX_NONCES: usize = 200_000;

/// Why a nonce was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NonceRefusal {
    /// Seen before, and its envelope has not expired: a replay.
    #[error("the delegation envelope was used before (replay)")]
    Replayed,
    /// The calling hub holds [`MAX_NONCES_PER_PEER`] nonces already.
    #[error("this hub's calls of the last minute hold {MAX_NONCES_PER_PEER} nonces")]
    PeerFull,
    /// [`MAX_NONCES`] nonces are held already.
    #[error("{MAX_NONCES} delegation nonces are held")]
    Full,
}

/// The nonces seen, until their envelopes expire. See the module docs.
#[derive(Debug, Default)]
pub struct Nonces {
    held: HashMap<[u8; 16], (HubId, u64)>,
    per_peer: HashMap<HubId, usize>,
    /// Every nonce by when it may be forgotten, earliest first.
    expiries: BTreeSet<(u64, [u8; 16])>,
}

impl Nonces {
    /// None held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `nonce` of a call from `peer` whose envelope expires at `expires_at_ms`: it is
    /// held from now on (or refused, and not held). Expired ones are forgotten first.
    pub fn take(
        &mut self,
        peer: HubId,
        nonce: [u8; 16],
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<(), NonceRefusal> {
        self.handle_timeout(now_ms);
        if self.held.contains_key(&nonce) {
            return Err(NonceRefusal::Replayed);
        }
        if self.per_peer.get(&peer).copied().unwrap_or(0) >= MAX_NONCES_PER_PEER {
            return Err(NonceRefusal::PeerFull);
        }
        if self.held.len() >= MAX_NONCES {
            return Err(NonceRefusal::Full);
        }
        self.insert(peer, nonce, expires_at_ms);
        Ok(())
    }

    /// Holds a nonce read back from the store (the hub starts), whatever the bounds.
    pub fn restore(&mut self, peer: HubId, nonce: [u8; 16], expires_at_ms: u64, now_ms: u64) {
        if expires_at_ms > now_ms && !self.held.contains_key(&nonce) {
            self.insert(peer, nonce, expires_at_ms);
        }
    }

    fn insert(&mut self, peer: HubId, nonce: [u8; 16], expires_at_ms: u64) {
        self.held.insert(nonce, (peer, expires_at_ms));
        *self.per_peer.entry(peer).or_default() += 1;
        self.expiries.insert((expires_at_ms, nonce));
    }

    /// Gives back a nonce taken by a call that did not run after all (it could not be made
    /// durable).
    pub fn give_back(&mut self, nonce: &[u8; 16]) {
        if let Some((peer, expires)) = self.held.remove(nonce) {
            self.expiries.remove(&(expires, *nonce));
            self.forget_one(peer);
        }
    }

    fn forget_one(&mut self, peer: HubId) {
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }

    /// When the earliest nonce may be forgotten.
    pub fn poll_timeout(&self) -> Option<u64> {
        self.expiries.first().map(|(at, _)| *at)
    }

    /// Forgets the nonces whose envelopes expired at `now_ms` (an envelope is refused as
    /// expired from its `expires_at_ms` on, so its nonce can no longer be replayed).
    pub fn handle_timeout(&mut self, now_ms: u64) {
        while let Some(&(at, nonce)) = self.expiries.first() {
            if at > now_ms {
                break;
            }
            self.expiries.pop_first();
            if let Some((peer, _)) = self.held.remove(&nonce) {
                self.forget_one(peer);
            }
        }
    }

    /// How many are held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;
    const A: HubId = HubId([1; 16]);
    const B: HubId = HubId([2; 16]);

    fn nonce(i: u64) -> [u8; 16] {
        let mut n = [0u8; 16];
        n[..8].copy_from_slice(&i.to_be_bytes());
        n
    }

    /// A nonce is good once until its envelope expires, then forgotten; one given back (its call
    /// never ran) is good again.
    #[test]
    fn a_nonce_is_good_once_until_it_expires() {
        let mut n = Nonces::new();
        assert_eq!(n.take(A, nonce(1), NOW + 60_000, NOW), Ok(()));
        assert_eq!(
            n.take(B, nonce(1), NOW + 60_000, NOW + 1),
            Err(NonceRefusal::Replayed)
        );
        assert_eq!(n.poll_timeout(), Some(NOW + 60_000));
        n.handle_timeout(NOW + 60_000);
        assert!(n.is_empty());
        assert_eq!(n.take(A, nonce(2), NOW + 60_000, NOW), Ok(()));
        n.give_back(&nonce(2));
        assert_eq!(n.take(A, nonce(2), NOW + 60_000, NOW), Ok(()));
        // Restored ones count as seen; expired ones are not restored.
        n.restore(B, nonce(3), NOW + 10, NOW);
        n.restore(B, nonce(4), NOW, NOW);
        assert_eq!(
            n.take(A, nonce(3), NOW + 60_000, NOW),
            Err(NonceRefusal::Replayed)
        );
        assert_eq!(n.take(A, nonce(4), NOW + 60_000, NOW), Ok(()));
    }

    /// One hub that fills its share is refused; another is not held back by it, and the whole
    /// is bounded too.
    #[test]
    fn one_peer_cannot_take_the_others_share() {
        let mut n = Nonces::new();
        for i in 0..MAX_NONCES_PER_PEER as u64 {
            assert_eq!(n.take(A, nonce(i), NOW + 60_000, NOW), Ok(()));
        }
        assert_eq!(
            n.take(A, nonce(u64::MAX), NOW + 60_000, NOW),
            Err(NonceRefusal::PeerFull)
        );
        assert_eq!(n.take(B, nonce(u64::MAX), NOW + 60_000, NOW), Ok(()));
        // Every peer's nonces together stop at the bound.
        let mut i = 1u64 << 40;
        for peer in 3..=u8::MAX {
            for _ in 0..MAX_NONCES_PER_PEER {
                if n.len() >= MAX_NONCES {
                    break;
                }
                n.take(HubId([peer; 16]), nonce(i), NOW + 60_000, NOW)
                    .unwrap();
                i += 1;
            }
        }
        assert_eq!(n.len(), MAX_NONCES);
        assert_eq!(
            n.take(B, nonce(i), NOW + 60_000, NOW),
            Err(NonceRefusal::Full)
        );
        // Once A's expire, its share is free again.
        n.handle_timeout(NOW + 60_000);
        assert!(n.is_empty());
        assert!(n.per_peer.is_empty());
    }
}
