//! Pairing tokens (stored only as the SHA-256 of their secret) and API tokens.
//!
//! Redeeming a pairing token is a single conditional `UPDATE` (unused, unexpired, same hash), so
//! of two concurrent redemptions exactly one succeeds; the secret itself never reaches the
//! database file.

use std::collections::BTreeMap;

use rusqlite::{params, OptionalExtension};
use shared_proto::trust::TrustLevel;
use shared_proto::HubId;

use super::{join_roles, sha256, split_roles, Admission, Document, Store, StoreError, MANIFEST};

/// A pairing token's terms, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenTerms {
    /// The trust level the new hub gets.
    pub trust: TrustLevel,
    /// Its roles.
    pub roles: Vec<String>,
}

/// Why a redemption failed. Deliberately coarse: a caller learns nothing about other tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedeemError {
    /// No such token, a wrong secret, already used, or expired.
    #[error("invalid, used or expired pairing token")]
    Invalid,
}

/// An API token, without its secret.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiToken {
    /// Its name.
    pub name: String,
    /// Whether it may use admin routes.
    pub admin: bool,
    /// Created (Unix ms).
    pub created_at: u64,
    /// Expires (Unix ms), if ever.
    pub expires_at: Option<u64>,
    /// Last used (Unix ms).
    pub last_used_at: Option<u64>,
    /// Which apps and tools its holder may call (`app:NAME`, `app:NAME/TOOL`); empty: all.
    pub scopes: Vec<String>,
    /// How many requests it may make, if limited.
    pub max_uses: Option<u64>,
    /// How many it made.
    pub uses: u64,
}

/// What limits an API token beyond its expiry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenLimits {
    /// Which apps and tools its holder may call (`app:NAME`, `app:NAME/TOOL`); empty: all.
    pub scopes: Vec<String>,
    /// How many requests it may make; none: no limit.
    pub max_uses: Option<u64>,
}

const MINUTE_MS: u64 = 60_000;

/// How long token uses are counted by minute (older ones count in the all-time total only).
pub const TOKEN_USES_KEPT_MS: u64 = 2 * 86_400_000;

/// Adds `n` uses of a token to its minute.
fn count_uses(
    conn: &rusqlite::Connection,
    hash: &[u8; 32],
    minute: u64,
    n: u64,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO token_uses (token_sha256, minute, uses) VALUES (?1, ?2, ?3)
         ON CONFLICT (token_sha256, minute) DO UPDATE SET uses = uses + excluded.uses",
        params![hash.as_slice(), minute as i64, n as i64],
    )?;
    Ok(())
}

const API_TOKEN_COLUMNS: &str =
    "name, admin, created_at, expires_at, last_used_at, scopes, max_uses, uses";

fn row_to_api_token(r: &rusqlite::Row<'_>) -> rusqlite::Result<ApiToken> {
    Ok(ApiToken {
        name: r.get(0)?,
        admin: r.get(1)?,
        created_at: r.get::<_, i64>(2)? as u64,
        expires_at: r.get::<_, Option<i64>>(3)?.map(|t| t as u64),
        last_used_at: r.get::<_, Option<i64>>(4)?.map(|t| t as u64),
        scopes: split_roles(&r.get::<_, String>(5)?),
        max_uses: r.get::<_, Option<i64>>(6)?.map(|t| t as u64),
        uses: r.get::<_, i64>(7)? as u64,
    })
}

impl Store {
    /// Stores a new pairing token: only the SHA-256 of `secret` is written.
    pub fn add_pairing_token(
        &self,
        secret: &[u8],
        terms: &TokenTerms,
        now_ms: u64,
        expires_at_ms: u64,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO pairing_tokens (secret_sha256, trust_level, roles, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                sha256(secret).as_slice(),
                terms.trust.as_str(),
                join_roles(&terms.roles),
                now_ms as i64,
                expires_at_ms as i64
            ],
        )?;
        Ok(())
    }

    /// Pairing, on the issuer, as one transaction: redeems the token, calls `admit` with its
    /// terms and the manifest held, and stores the peer record and the new manifest it returns.
    ///
    /// The lookup is by the SHA-256 of the presented secret (an index lookup on a hash: no
    /// comparison of secrets happens in application code), and marking it used is one
    /// conditional `UPDATE` (unused, unexpired), so two concurrent redemptions cannot both
    /// succeed. If `admit` fails or the hub
    /// dies before the commit, the token stays unused and nothing is recorded.
    pub fn admit_with_token<T, E: From<StoreError>>(
        &self,
        secret: &[u8],
        hub: HubId,
        now_ms: u64,
        admit: impl FnOnce(&TokenTerms, Option<Document>) -> Result<(T, Option<Admission>), E>,
    ) -> Result<Result<T, RedeemError>, E> {
        let hash = sha256(secret);
        let tx = self
            .conn
            .unchecked_transaction()
            .map_err(StoreError::from)?;
        let redeemed: Option<(String, String)> = tx
            .query_row(
                "UPDATE pairing_tokens SET used_at = ?1, used_by = ?2
                 WHERE secret_sha256 = ?3 AND used_at IS NULL AND expires_at > ?1
                 RETURNING trust_level, roles",
                params![now_ms as i64, hub.to_string(), hash.as_slice()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(StoreError::from)?;
        let Some((trust, roles)) = redeemed else {
            return Ok(Err(RedeemError::Invalid));
        };
        let terms = TokenTerms {
            trust: trust
                .parse()
                .map_err(|_| StoreError::Corrupt("trust level"))?,
            roles: split_roles(&roles),
        };
        let manifest = self.document(MANIFEST)?;
        let (out, admission) = admit(&terms, manifest)?;
        if let Some(a) = admission {
            self.upsert_peer(&a.peer)?;
            self.put_signed(MANIFEST, &a.manifest)?;
        }
        tx.commit().map_err(StoreError::from)?;
        Ok(Ok(out))
    }

    /// Stores a new API token: only the SHA-256 of `secret` is written.
    pub fn add_api_token(
        &self,
        secret: &[u8],
        name: &str,
        admin: bool,
        now_ms: u64,
        expires_at_ms: Option<u64>,
        limits: &TokenLimits,
    ) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO api_tokens
             (secret_sha256, name, admin, created_at, expires_at, scopes, max_uses)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                sha256(secret).as_slice(),
                name,
                admin,
                now_ms as i64,
                expires_at_ms.map(|t| t as i64),
                join_roles(&limits.scopes),
                limits.max_uses.map(|n| n as i64)
            ],
        )?;
        Ok(())
    }

    /// The API token whose secret is `secret`, if it exists, has not expired and has uses left;
    /// records its use (one statement: the update returns the row, so two concurrent uses of a
    /// token with one use left cannot both pass), and counts it in its minute.
    pub fn use_api_token(
        &self,
        secret: &[u8],
        now_ms: u64,
    ) -> Result<Option<ApiToken>, StoreError> {
        self.in_transaction(|store| {
            let hash = sha256(secret);
            let token = store
                .conn
                .query_row(
                    &format!(
                        "UPDATE api_tokens SET last_used_at = ?1, uses = uses + 1
                         WHERE secret_sha256 = ?2 AND (expires_at IS NULL OR expires_at > ?1)
                           AND (max_uses IS NULL OR uses < max_uses)
                         RETURNING {API_TOKEN_COLUMNS}"
                    ),
                    params![now_ms as i64, hash.as_slice()],
                    row_to_api_token,
                )
                .optional()?;
            if token.is_some() {
                count_uses(&store.conn, &hash, now_ms / MINUTE_MS, 1)?;
            }
            Ok(token)
        })
    }

    /// Adds uses counted elsewhere (the running hub counts the uses of unlimited tokens in
    /// memory and adds them every second): each token's hash, minute (Unix ms / 60,000), uses,
    /// and the last of them (Unix ms). Counts older than [`TOKEN_USES_KEPT_MS`] are dropped.
    pub fn add_token_uses(
        &self,
        uses: &[([u8; 32], u64, u64, u64)],
        now_ms: u64,
    ) -> Result<(), StoreError> {
        self.in_transaction(|store| {
            for (hash, minute, n, last) in uses {
                store.conn.execute(
                    "UPDATE api_tokens SET uses = uses + ?2,
                       last_used_at = max(coalesce(last_used_at, 0), ?3)
                     WHERE secret_sha256 = ?1",
                    params![hash.as_slice(), *n as i64, *last as i64],
                )?;
                count_uses(&store.conn, hash, *minute, *n)?;
            }
            store.conn.execute(
                "DELETE FROM token_uses WHERE minute < ?1",
                params![(now_ms.saturating_sub(TOKEN_USES_KEPT_MS) / MINUTE_MS) as i64],
            )?;
            Ok(())
        })
    }

    /// Uses of each API token (by name) from `since_ms` (within [`TOKEN_USES_KEPT_MS`]), or all
    /// time (`None`).
    pub fn token_uses(&self, since_ms: Option<u64>) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut out = BTreeMap::new();
        let mut add = |name: String, n: i64| *out.entry(name).or_insert(0) += n as u64;
        match since_ms {
            None => {
                let mut stmt = self
                    .conn
                    .prepare("SELECT name, sum(uses) FROM api_tokens GROUP BY name")?;
                let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
                for row in rows {
                    let (name, n) = row?;
                    add(name, n);
                }
            }
            Some(since) => {
                let mut stmt = self.conn.prepare(
                    "SELECT t.name, sum(u.uses) FROM token_uses u
                     JOIN api_tokens t ON t.secret_sha256 = u.token_sha256
                     WHERE u.minute >= ?1 GROUP BY t.name",
                )?;
                let rows = stmt.query_map(params![(since / MINUTE_MS) as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
                for row in rows {
                    let (name, n) = row?;
                    add(name, n);
                }
            }
        }
        out.retain(|_, n| *n > 0);
        Ok(out)
    }

    /// Every API token (without secrets), newest first.
    pub fn api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {API_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC"
        ))?;
        let rows = stmt.query_map([], row_to_api_token)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Deletes the API tokens named `name`; returns how many.
    pub fn delete_api_tokens(&self, name: &str) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM api_tokens WHERE name = ?1", params![name])?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::store::testing::{HOUR, NOW};

    impl Store {
        /// Redeems a pairing token with nothing else recorded: the redemption alone.
        fn redeem_pairing_token(
            &self,
            secret: &[u8],
            hub: HubId,
            now_ms: u64,
        ) -> Result<Result<TokenTerms, RedeemError>, StoreError> {
            self.admit_with_token(secret, hub, now_ms, |terms, _| {
                Ok::<_, StoreError>((terms.clone(), None))
            })
        }
    }

    fn terms() -> TokenTerms {
        TokenTerms {
            trust: TrustLevel::AgentDispatch,
            roles: vec!["laptop".into()],
        }
    }

    #[test]
    fn tokens_are_single_use_expire_and_never_stored_in_clear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let store = Store::open(&path).unwrap();
        let secret = b"secret-0123456789abcdef-DO-NOT-STORE";
        store
            .add_pairing_token(secret, &terms(), NOW, NOW + HOUR)
            .unwrap();
        store
            .add_pairing_token(
                b"expired-token-secret-value",
                &terms(),
                NOW - 2 * HOUR,
                NOW - HOUR,
            )
            .unwrap();
        let hub = HubId([7; 16]);
        assert_eq!(
            store.redeem_pairing_token(b"wrong", hub, NOW).unwrap(),
            Err(RedeemError::Invalid)
        );
        assert_eq!(
            store
                .redeem_pairing_token(b"expired-token-secret-value", hub, NOW)
                .unwrap(),
            Err(RedeemError::Invalid)
        );
        assert_eq!(
            store.redeem_pairing_token(secret, hub, NOW + 1).unwrap(),
            Ok(terms())
        );
        assert_eq!(
            store.redeem_pairing_token(secret, hub, NOW + 2).unwrap(),
            Err(RedeemError::Invalid)
        );
        drop(store);
        // The database file (and its WAL) holds the hash, never the secret.
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "secret found on disk"
            );
        }
        let on_disk = std::fs::read(&path).unwrap();
        let hash = sha256(secret);
        let wal = std::fs::read(dir.path().join("hub.db-wal")).unwrap_or_default();
        assert!(on_disk.windows(32).any(|w| w == hash) || wal.windows(32).any(|w| w == hash));
    }

    #[test]
    fn two_concurrent_redemptions_exactly_one_wins() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        Store::open(&path)
            .unwrap()
            .add_pairing_token(b"race", &terms(), NOW, NOW + HOUR)
            .unwrap();
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8u8)
            .map(|i| {
                let path = path.clone();
                let barrier = barrier.clone();
                std::thread::spawn(move || {
                    let store = Store::open(&path).unwrap();
                    barrier.wait();
                    store
                        .redeem_pairing_token(b"race", HubId([i; 16]), NOW)
                        .unwrap()
                        .is_ok()
                })
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|w| *w)
            .count();
        assert_eq!(wins, 1);
    }

    #[test]
    fn api_tokens_expire_record_their_use_and_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db")).unwrap();
        store
            .add_api_token(
                b"hubapi_admin-secret",
                "ops",
                true,
                NOW,
                None,
                &TokenLimits::default(),
            )
            .unwrap();
        store
            .add_api_token(
                b"hubapi_short-secret",
                "temp",
                false,
                NOW,
                Some(NOW + 1000),
                &TokenLimits::default(),
            )
            .unwrap();
        let limits = TokenLimits {
            scopes: vec!["app:notes".into(), "app:fs/read_file".into()],
            max_uses: Some(2),
        };
        store
            .add_api_token(b"hubapi_twice", "agent", false, NOW, None, &limits)
            .unwrap();
        for n in 1..=2 {
            let t = store
                .use_api_token(b"hubapi_twice", NOW + n)
                .unwrap()
                .unwrap();
            assert_eq!((t.uses, &t.scopes), (n, &limits.scopes));
        }
        assert!(
            store
                .use_api_token(b"hubapi_twice", NOW + 3)
                .unwrap()
                .is_none(),
            "used up"
        );
        let t = store
            .use_api_token(b"hubapi_admin-secret", NOW + 5)
            .unwrap()
            .unwrap();
        assert!(t.admin && t.name == "ops" && t.last_used_at == Some(NOW + 5));
        assert!(store.use_api_token(b"hubapi_wrong", NOW).unwrap().is_none());
        assert!(store
            .use_api_token(b"hubapi_short-secret", NOW + 999)
            .unwrap()
            .is_some());
        assert!(store
            .use_api_token(b"hubapi_short-secret", NOW + 1000)
            .unwrap()
            .is_none());
        assert_eq!(store.api_tokens().unwrap().len(), 3);
        assert_eq!(store.delete_api_tokens("temp").unwrap(), 1);
        drop(store);
        for f in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(f.unwrap().path()).unwrap();
            assert!(!bytes.windows(12).any(|w| w == b"admin-secret"));
        }
    }
}
