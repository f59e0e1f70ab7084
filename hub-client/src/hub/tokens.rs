//! The API tokens the running hub found valid lately, so that a request does not cost a store
//! write: a token without a use limit found in the last [`CHECKED_FOR_MS`] is taken from here
//! (its expiry checked each time), and its uses are counted here and written every second
//! (`HubState::flush_token_uses`). A token deleted meanwhile (`hub tokens delete`, another
//! process) is refused from the store within [`CHECKED_FOR_MS`]. A token with a use limit is
//! never held: each use is checked and counted in the store, so its limit is exact.
//!
//! Bounds: only tokens the store found are held (a wrong token costs a store read, never an
//! entry), and counts are per token and minute until the next write.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::node::store::ApiToken;

/// How long a token found valid is taken from memory before the store is read again.
pub const CHECKED_FOR_MS: u64 = 1_000;

const MINUTE_MS: u64 = 60_000;

#[derive(Debug, Default)]
struct Held {
    tokens: HashMap<[u8; 32], (ApiToken, u64)>,
    /// Uses not written yet: by token and minute, how many and the last (Unix ms).
    uses: HashMap<([u8; 32], u64), (u64, u64)>,
}

/// See the module docs.
#[derive(Debug, Default)]
pub(crate) struct Tokens {
    held: Mutex<Held>,
}

impl Tokens {
    fn lock(&self) -> MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The token of `hash` if it is held, checked lately and not expired at `now_ms`; its use is
    /// counted.
    pub(crate) fn use_held(&self, hash: &[u8; 32], now_ms: u64) -> Option<ApiToken> {
        let mut held = self.lock();
        let (token, checked) = held.tokens.get(hash)?;
        if now_ms >= checked + CHECKED_FOR_MS || token.expires_at.is_some_and(|e| e <= now_ms) {
            held.tokens.remove(hash);
            return None;
        }
        let token = token.clone();
        let count = held.uses.entry((*hash, now_ms / MINUTE_MS)).or_default();
        count.0 += 1;
        count.1 = count.1.max(now_ms);
        Some(token)
    }

    /// Holds a token the store found valid at `now_ms` (not one with a use limit).
    pub(crate) fn hold(&self, hash: [u8; 32], token: &ApiToken, now_ms: u64) {
        if token.max_uses.is_none() {
            self.lock().tokens.insert(hash, (token.clone(), now_ms));
        }
    }

    /// The uses counted since the last call: (token hash, minute, uses, last use).
    pub(crate) fn take_uses(&self) -> Vec<([u8; 32], u64, u64, u64)> {
        self.lock()
            .uses
            .drain()
            .map(|((hash, minute), (n, last))| (hash, minute, n, last))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(max_uses: Option<u64>, expires_at: Option<u64>) -> ApiToken {
        ApiToken {
            name: "agent".into(),
            admin: false,
            created_at: 0,
            expires_at,
            last_used_at: None,
            scopes: vec![],
            max_uses,
            uses: 0,
        }
    }

    /// A token is taken from memory for a second, then read from the store again; an expired one
    /// at once; a limited one never; the uses taken from memory are all counted.
    #[test]
    fn tokens_are_held_briefly_and_their_uses_counted() {
        const NOW: u64 = 1_800_000_000_000;
        let tokens = Tokens::default();
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        tokens.hold(a, &token(None, None), NOW);
        tokens.hold(b, &token(Some(5), None), NOW);
        tokens.hold(c, &token(None, Some(NOW + 10)), NOW);
        for i in 0..3 {
            assert!(tokens.use_held(&a, NOW + i).is_some());
        }
        assert!(tokens.use_held(&b, NOW).is_none(), "limited: never held");
        assert!(tokens.use_held(&c, NOW + 10).is_none(), "expired");
        assert!(
            tokens.use_held(&a, NOW + CHECKED_FOR_MS).is_none(),
            "checked again"
        );
        assert!(
            tokens.use_held(&a, NOW + 1).is_none(),
            "forgotten until found again"
        );
        let uses = tokens.take_uses();
        assert_eq!(uses, vec![(a, NOW / MINUTE_MS, 3, NOW + 2)]);
        assert!(tokens.take_uses().is_empty());
    }
}
