//! The hub's SQLite store (`hub.db` in the data directory): versioned migrations, and the
//! records that must survive a crash consistently.
//!
//! - Migrations are numbered; `PRAGMA user_version` records the last one applied, and each is
//!   applied in its own transaction, so a hub killed mid-upgrade reopens at a whole version.
//! - Pairing tokens are stored only as the SHA-256 of their secret. Redeeming one is a single
//!   conditional `UPDATE` (unused, unexpired, same hash), so of two concurrent redemptions exactly
//!   one succeeds; the secret itself never reaches the database file.
//! - Peers are soft-deleted: `revoked_at` is kept for audit.
//!
//! Times are Unix milliseconds, passed in by the caller.

use std::collections::HashMap;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};
use shared_proto::agent::Sharing;
pub use shared_proto::audit::Entry as AuditEntry;
use shared_proto::trust::{TrustLevel, VerifiedManifest, VerifiedRevocations};
use shared_proto::HubId;

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database was written by a newer hub.
    #[error("the database is at schema version {found}, newer than this hub's {known}")]
    TooNew {
        /// Its version.
        found: u32,
        /// The newest this build knows.
        known: u32,
    },
    /// A stored value that does not parse.
    #[error("corrupt {0} in the database")]
    Corrupt(&'static str),
    /// A document this hub signed was not kept: the store holds one at least as new (the
    /// signer read a stale one). It must not be published.
    #[error("the new {kind} ({serial}) was not kept: the store holds one at least as new")]
    NotKept {
        /// Which document.
        kind: &'static str,
        /// Its version or epoch.
        serial: u64,
    },
}

/// The migrations, in order; migration `i` brings the schema to version `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: identity, peers, pairing tokens, documents, API tokens.
    r#"
    CREATE TABLE instance (
        id          TEXT PRIMARY KEY,
        name        TEXT NOT NULL,
        identity_public_key TEXT NOT NULL,
        noise_public_key    TEXT NOT NULL,
        created_at  INTEGER NOT NULL
    );
    CREATE TABLE federation_peers (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        endpoint     TEXT NOT NULL,
        public_key   TEXT NOT NULL,
        trust_level  TEXT NOT NULL,
        roles        TEXT NOT NULL,
        paired_at    INTEGER NOT NULL,
        revoked_at   INTEGER,
        suspended_at INTEGER,
        last_seen_at INTEGER
    );
    CREATE TABLE pairing_tokens (
        secret_sha256 BLOB PRIMARY KEY,
        trust_level   TEXT NOT NULL,
        roles         TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        used_at       INTEGER,
        used_by       TEXT
    );
    CREATE TABLE documents (
        kind    TEXT PRIMARY KEY,
        serial  INTEGER NOT NULL,
        body    BLOB NOT NULL
    );
    CREATE TABLE api_tokens (
        secret_sha256 BLOB PRIMARY KEY,
        name          TEXT NOT NULL,
        admin         INTEGER NOT NULL,
        created_at    INTEGER NOT NULL,
        expires_at    INTEGER,
        last_used_at  INTEGER
    );
    "#,
    // 2: apps (local MCP servers) and the delegation nonces seen (replay protection).
    r#"
    CREATE TABLE apps (
        name          TEXT PRIMARY KEY,
        source        TEXT NOT NULL,
        sharing       TEXT NOT NULL,
        require_trust TEXT,
        created_at    INTEGER NOT NULL
    );
    CREATE TABLE delegation_nonces (
        nonce      BLOB PRIMARY KEY,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX delegation_nonces_expiry ON delegation_nonces (expires_at);
    "#,
    // 3: API tokens for agents: scopes (which apps and tools) and a use count.
    r#"
    ALTER TABLE api_tokens ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
    ALTER TABLE api_tokens ADD COLUMN max_uses INTEGER;
    ALTER TABLE api_tokens ADD COLUMN uses INTEGER NOT NULL DEFAULT 0;
    "#,
    // 4: the federation audit log (append-only, HMAC-chained: shared_proto::audit).
    r#"
    CREATE TABLE audit_log (
        seq              INTEGER PRIMARY KEY,
        at_ms            INTEGER NOT NULL,
        kind             TEXT NOT NULL,
        peer             BLOB,
        principal        TEXT NOT NULL,
        app              TEXT NOT NULL,
        tool             TEXT NOT NULL,
        decision         TEXT NOT NULL,
        reason           TEXT NOT NULL,
        duration_ms      INTEGER NOT NULL,
        arguments_sha256 BLOB,
        mac              BLOB NOT NULL
    );
    CREATE INDEX audit_log_peer ON audit_log (peer, seq);
    "#,
    // 5: the newest audit head each peer signed, and what did not add up.
    r#"
    CREATE TABLE peer_audit_heads (
        peer            BLOB PRIMARY KEY,
        seq             INTEGER NOT NULL,
        mac             BLOB NOT NULL,
        at_ms           INTEGER NOT NULL,
        inconsistencies INTEGER NOT NULL DEFAULT 0,
        last_problem    TEXT
    );
    "#,
    // 6: bytes a call carried (audit entry format 2; NULL in format 1 entries), and the kind of
    // a peer's audit-head inconsistency still going on (so it is counted once, not per head).
    r#"
    ALTER TABLE audit_log ADD COLUMN bytes INTEGER;
    ALTER TABLE peer_audit_heads ADD COLUMN open_problem TEXT;
    "#,
];

/// How many audit entries of one kind, decision and reason code (and their total duration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCount {
    /// The peer they are about, if any.
    pub peer: Option<HubId>,
    /// Their kind.
    pub kind: String,
    /// Their decision.
    pub decision: String,
    /// For refusals, the code (the reason up to its first `:`); else empty.
    pub code: String,
    /// How many.
    pub count: u64,
    /// Their durations added up (ms).
    pub duration_ms: u64,
    /// The bytes their calls carried, added up.
    pub bytes: u64,
}

/// What a peer's new audit head says against the one held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeadCheck {
    /// The first one, or further along the same chain (kept).
    Forward,
    /// The one held again.
    Same,
    /// Fewer entries than the one held: the peer's log was cut or rolled back (not kept).
    Backwards {
        /// The sequence number held.
        held: u64,
    },
    /// Another MAC for the sequence number held: the peer's log was rewritten (not kept).
    Forked,
    /// The same kind of inconsistency as the peer's last head had, still going on (a cut-back
    /// log keeps sending older heads until it passes the one held): not counted again.
    Again,
}

impl HeadCheck {
    /// The kind of inconsistency, if it is one that counts: `backwards` or `forked`.
    pub fn kind(&self) -> Option<&'static str> {
        match self {
            HeadCheck::Backwards { .. } => Some("backwards"),
            HeadCheck::Forked => Some("forked"),
            HeadCheck::Forward | HeadCheck::Same | HeadCheck::Again => None,
        }
    }

    /// What is wrong with a head of `seq` entries that got this check, for people; `None` if
    /// nothing is.
    pub fn problem(&self, seq: u64) -> Option<String> {
        match self {
            HeadCheck::Forward | HeadCheck::Same | HeadCheck::Again => None,
            HeadCheck::Backwards { held } => Some(format!(
                "its audit head went back from {held} to {seq} entries"
            )),
            HeadCheck::Forked => Some(format!("two different MACs for its entry {seq}")),
        }
    }
}

/// A peer's audit head as held, with the inconsistencies seen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerAuditHead {
    /// Entries in its log, as it last signed.
    pub seq: u64,
    /// When it signed that (Unix ms).
    pub at_ms: u64,
    /// Heads that went back or forked.
    pub inconsistencies: u64,
    /// The last of them, for people.
    pub last_problem: Option<String>,
}

/// Most delegation nonces remembered at once (each until its envelope expires, at most 60 s); a
/// call that would need more is refused as busy.
pub const MAX_DELEGATION_NONCES: u64 = 100_000;

/// An app as the store keeps it: how to reach it, and who may use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRecord {
    /// Its name, unique on this hub.
    pub name: String,
    /// How to reach it.
    pub source: AppSource,
    /// Who else may see and call it.
    pub sharing: Sharing,
    /// The least trust level a calling hub needs for any of its tools.
    pub require_trust: Option<TrustLevel>,
    /// When it was added (Unix ms).
    pub created_at: u64,
}

/// How a hub reaches an app: a command it starts (MCP over stdio) or a streamable-HTTP URL.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AppSource {
    /// A child process.
    Command {
        /// The program.
        program: String,
        /// Its arguments.
        args: Vec<String>,
        /// Extra environment variables.
        env: Vec<(String, String)>,
        /// Its working directory.
        cwd: Option<String>,
    },
    /// An MCP server on this machine.
    Url(String),
}

/// Whether a delegation nonce was new and is now remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceUse {
    /// First seen: remembered until its expiry.
    Fresh,
    /// Seen before.
    Replayed,
    /// [`MAX_DELEGATION_NONCES`] are remembered already.
    Full,
}

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

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

/// A peer as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerRecord {
    /// Its hub id.
    pub id: HubId,
    /// Its name.
    pub name: String,
    /// Where it is reached (relay URL).
    pub endpoint: String,
    /// Its identity public key (hex).
    pub public_key: String,
    /// Its trust level.
    pub trust: TrustLevel,
    /// Its roles.
    pub roles: Vec<String>,
    /// When it was paired.
    pub paired_at: u64,
    /// When it was revoked (kept for audit).
    pub revoked_at: Option<u64>,
    /// When it was suspended, if it is.
    pub suspended_at: Option<u64>,
    /// When it was last seen online.
    pub last_seen_at: Option<u64>,
}

/// Kind of the stored manifest document.
pub const MANIFEST: &str = "manifest";
/// Kind of the stored revocation list document.
pub const REVOCATIONS: &str = "revocations";

/// A signed document as stored: its serial (manifest epoch, list version) and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    /// Epoch or version.
    pub serial: u64,
    /// The signed bytes.
    pub body: Vec<u8>,
}

/// What pairing records on the issuer, in the redeeming transaction.
#[derive(Debug, Clone)]
pub struct Admission {
    /// The new peer.
    pub peer: PeerRecord,
    /// The manifest that lists it.
    pub manifest: Document,
}

/// This hub's identity, as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// Hub id.
    pub id: HubId,
    /// Name.
    pub name: String,
    /// Ed25519 identity key (hex).
    pub identity_public_key: String,
    /// X25519 Noise key (hex).
    pub noise_public_key: String,
    /// When it joined or founded the cluster (Unix ms).
    pub created_at: u64,
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

/// The store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

/// The last audit entry's sequence number and MAC (0 and zeros if the log is empty).
fn audit_head(conn: &Connection) -> Result<(u64, [u8; 32]), StoreError> {
    let head = conn
        .query_row(
            "SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)),
        )
        .optional()?;
    match head {
        None => Ok((0, [0; 32])),
        Some((seq, mac)) => Ok((
            seq,
            mac.try_into()
                .map_err(|_| StoreError::Corrupt("audit MAC"))?,
        )),
    }
}

/// A nullable 16-byte hub id column (a value of another length reads as none).
fn hub_column(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<HubId>> {
    Ok(r.get::<_, Option<Vec<u8>>>(i)?
        .and_then(|b| <[u8; 16]>::try_from(b).ok())
        .map(HubId))
}

fn sha256(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn join_roles(roles: &[String]) -> String {
    roles.join(",")
}

fn split_roles(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Store {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        let mut store = Store { conn };
        store.migrate()?;
        Ok(store)
    }

    /// The schema version of the open database.
    pub fn version(&self) -> Result<u32, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let found = self.version()?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                found,
                known: SCHEMA_VERSION,
            });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", (i + 1) as u32)?;
            tx.commit()?;
        }
        Ok(())
    }

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
    /// token with one use left cannot both pass).
    pub fn use_api_token(
        &self,
        secret: &[u8],
        now_ms: u64,
    ) -> Result<Option<ApiToken>, StoreError> {
        Ok(self
            .conn
            .query_row(
                &format!(
                    "UPDATE api_tokens SET last_used_at = ?1, uses = uses + 1
                     WHERE secret_sha256 = ?2 AND (expires_at IS NULL OR expires_at > ?1)
                       AND (max_uses IS NULL OR uses < max_uses)
                     RETURNING {API_TOKEN_COLUMNS}"
                ),
                params![now_ms as i64, sha256(secret).as_slice()],
                row_to_api_token,
            )
            .optional()?)
    }

    /// Every API token (without secrets), newest first.
    pub fn api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {API_TOKEN_COLUMNS} FROM api_tokens ORDER BY created_at DESC"
        ))?;
        let rows = stmt.query_map([], row_to_api_token)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Adds an app, or replaces the one of that name (keeping its sharing unless `sharing` is
    /// given). A new app is shared with nobody.
    pub fn put_app(&self, name: &str, source: &AppSource, now_ms: u64) -> Result<(), StoreError> {
        let source = serde_json::to_string(source).map_err(|_| StoreError::Corrupt("app"))?;
        self.conn.execute(
            "INSERT INTO apps (name, source, sharing, created_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET source = excluded.source",
            params![name, source, Sharing::LocalOnly.to_string(), now_ms as i64],
        )?;
        Ok(())
    }

    /// Sets who may use an app; false if there is no such app.
    pub fn set_app_sharing(
        &self,
        name: &str,
        sharing: &Sharing,
        require_trust: Option<TrustLevel>,
    ) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE apps SET sharing = ?2, require_trust = ?3 WHERE name = ?1",
            params![
                name,
                sharing.to_string(),
                require_trust.map(TrustLevel::as_str)
            ],
        )? == 1)
    }

    /// Removes an app; false if there was none.
    pub fn remove_app(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM apps WHERE name = ?1", params![name])?
            == 1)
    }

    /// Every app, by name.
    pub fn apps(&self) -> Result<Vec<AppRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT name, source, sharing, require_trust, created_at FROM apps ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        rows.map(|row| {
            let (name, source, sharing, require_trust, created_at) = row?;
            Ok(AppRecord {
                name,
                source: serde_json::from_str(&source).map_err(|_| StoreError::Corrupt("app"))?,
                sharing: sharing
                    .parse()
                    .map_err(|_| StoreError::Corrupt("app sharing"))?,
                require_trust: require_trust
                    .map(|t| {
                        t.parse()
                            .map_err(|_| StoreError::Corrupt("app trust level"))
                    })
                    .transpose()?,
                created_at: created_at as u64,
            })
        })
        .collect()
    }

    /// One app.
    pub fn app(&self, name: &str) -> Result<Option<AppRecord>, StoreError> {
        Ok(self.apps()?.into_iter().find(|a| a.name == name))
    }

    /// Remembers a delegation nonce until `expires_at_ms` (forgetting those expired at
    /// `now_ms`), in one transaction: of two calls with the same nonce, one is fresh.
    pub fn use_delegation_nonce(
        &self,
        nonce: &[u8; 16],
        expires_at_ms: u64,
        now_ms: u64,
    ) -> Result<NonceUse, StoreError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        tx.execute(
            "DELETE FROM delegation_nonces WHERE expires_at <= ?1",
            params![now_ms as i64],
        )?;
        let held: i64 = tx.query_row("SELECT count(*) FROM delegation_nonces", [], |r| r.get(0))?;
        let seen: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM delegation_nonces WHERE nonce = ?1)",
            params![nonce.as_slice()],
            |r| r.get(0),
        )?;
        let use_ = if seen {
            NonceUse::Replayed
        } else if held as u64 >= MAX_DELEGATION_NONCES {
            NonceUse::Full
        } else {
            tx.execute(
                "INSERT INTO delegation_nonces (nonce, expires_at) VALUES (?1, ?2)",
                params![nonce.as_slice(), expires_at_ms as i64],
            )?;
            NonceUse::Fresh
        };
        tx.commit()?;
        Ok(use_)
    }

    /// Appends `entry` to the audit chain (its `seq` is set here), in one IMMEDIATE transaction:
    /// concurrent appends from several processes each chain to the one before. Returns the new
    /// head (sequence number and MAC).
    pub fn append_audit(
        &self,
        key: &[u8; 32],
        entry: AuditEntry,
    ) -> Result<(u64, [u8; 32]), StoreError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let (seq, prev) = audit_head(&tx)?;
        let entry = AuditEntry {
            seq: seq + 1,
            ..entry.bounded()
        };
        let mac = entry.mac(key, &prev);
        tx.execute(
            "INSERT INTO audit_log (seq, at_ms, kind, peer, principal, app, tool, decision,
             reason, duration_ms, arguments_sha256, mac, bytes)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                entry.seq as i64,
                entry.at_ms as i64,
                entry.kind,
                entry.peer.map(|p| p.0.to_vec()),
                entry.principal,
                entry.app,
                entry.tool,
                entry.decision,
                entry.reason,
                entry.duration_ms as i64,
                entry.arguments_sha256.map(|h| h.to_vec()),
                mac.to_vec(),
                entry.bytes.map(|b| b as i64),
            ],
        )?;
        tx.commit()?;
        Ok((entry.seq, mac))
    }

    /// Audit entries with their MACs, in chain order: all of them, or those about `peer`, from
    /// `since_ms`, at most `limit` (the newest ones, still in order).
    pub fn audit_entries(
        &self,
        peer: Option<HubId>,
        since_ms: u64,
        limit: Option<u64>,
    ) -> Result<Vec<(AuditEntry, [u8; 32])>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT * FROM (
               SELECT seq, at_ms, kind, peer, principal, app, tool, decision, reason,
                      duration_ms, arguments_sha256, mac, bytes
               FROM audit_log
               WHERE (?1 IS NULL OR peer = ?1) AND at_ms >= ?2
               ORDER BY seq DESC LIMIT ?3
             ) ORDER BY seq",
        )?;
        let rows = stmt.query_map(
            params![
                peer.map(|p| p.0.to_vec()),
                since_ms as i64,
                limit.map_or(-1, |l| l as i64)
            ],
            |r| {
                Ok((
                    AuditEntry {
                        seq: r.get::<_, i64>(0)? as u64,
                        at_ms: r.get::<_, i64>(1)? as u64,
                        kind: r.get(2)?,
                        peer: hub_column(r, 3)?,
                        principal: r.get(4)?,
                        app: r.get(5)?,
                        tool: r.get(6)?,
                        decision: r.get(7)?,
                        reason: r.get(8)?,
                        duration_ms: r.get::<_, i64>(9)? as u64,
                        arguments_sha256: r
                            .get::<_, Option<Vec<u8>>>(10)?
                            .and_then(|b| <[u8; 32]>::try_from(b).ok()),
                        bytes: r.get::<_, Option<i64>>(12)?.map(|b| b as u64),
                    },
                    r.get::<_, Vec<u8>>(11)?,
                ))
            },
        )?;
        rows.map(|row| {
            let (entry, mac) = row?;
            let mac = mac
                .try_into()
                .map_err(|_| StoreError::Corrupt("audit MAC"))?;
            Ok((entry, mac))
        })
        .collect()
    }

    /// Counts of audit entries since `since_ms` (about `peer` only, if given: that reads the
    /// peer's index, not the whole log), by peer (none for entries about no peer), kind, decision
    /// and reason code (the reason up to its first `:`), for statistics and trust scores.
    pub fn audit_counts(
        &self,
        peer: Option<HubId>,
        since_ms: u64,
    ) -> Result<Vec<AuditCount>, StoreError> {
        // Two forms, so that SQLite searches the peer index when there is a peer (an `OR` in
        // one form makes it scan the whole log).
        let filter = if peer.is_some() {
            "peer = ?2 AND at_ms >= ?1"
        } else {
            "?2 IS NULL AND at_ms >= ?1"
        };
        let mut stmt = self.conn.prepare(&format!(
            "SELECT peer, kind, decision,
                    CASE WHEN decision = 'refused' THEN
                      CASE WHEN instr(reason, ':') > 0 THEN substr(reason, 1, instr(reason, ':') - 1)
                           ELSE reason END
                    ELSE '' END AS code,
                    count(*), sum(duration_ms), sum(bytes)
             FROM audit_log WHERE {filter}
             GROUP BY peer, kind, decision, code"
        ))?;
        let rows = stmt.query_map(params![since_ms as i64, peer.map(|p| p.0.to_vec())], |r| {
            Ok(AuditCount {
                peer: hub_column(r, 0)?,
                kind: r.get(1)?,
                decision: r.get(2)?,
                code: r.get(3)?,
                count: r.get::<_, i64>(4)? as u64,
                duration_ms: r.get::<_, Option<i64>>(5)?.unwrap_or(0) as u64,
                bytes: r.get::<_, Option<i64>>(6)?.unwrap_or(0) as u64,
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Calls over time: from `since_ms`, per `bucket_ms`, the number of `call.out` and `call.in`
    /// entries and how many of them were refused. Only buckets with a call are returned, oldest
    /// first, each as (its start, calls, refused).
    pub fn call_series(
        &self,
        since_ms: u64,
        bucket_ms: u64,
    ) -> Result<Vec<(u64, u64, u64)>, StoreError> {
        let bucket = bucket_ms.max(1) as i64;
        let mut stmt = self.conn.prepare(
            "SELECT (at_ms / ?2) * ?2 AS start, count(*), sum(decision = 'refused')
             FROM audit_log WHERE at_ms >= ?1 AND kind IN ('call.out', 'call.in')
             GROUP BY start ORDER BY start",
        )?;
        let rows = stmt.query_map(params![since_ms as i64, bucket], |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, Option<i64>>(2)?.unwrap_or(0) as u64,
            ))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// This hub's audit head: the last entry's sequence number and MAC (0 and zeros if empty).
    pub fn audit_head(&self) -> Result<(u64, [u8; 32]), StoreError> {
        audit_head(&self.conn)
    }

    /// Checks a peer's verified audit head against the one held and keeps it if it moves
    /// forward; an inconsistency is counted once while it lasts (heads inconsistent the same way
    /// are [`HeadCheck::Again`] until one is consistent). Only a later head of the same chain can be told
    /// apart from a fork when the MACs of the entries in between are unknown: a head with a
    /// higher `seq` is taken as forward.
    pub fn keep_peer_audit_head(
        &self,
        head: &shared_proto::audit::Head,
    ) -> Result<HeadCheck, StoreError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let peer = head.hub.0.to_vec();
        let held = tx
            .query_row(
                "SELECT seq, mac, open_problem FROM peer_audit_heads WHERE peer = ?1",
                params![peer],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                },
            )
            .optional()?;
        let (check, open) = match held {
            None => (HeadCheck::Forward, None),
            Some((seq, _, open)) if head.seq > seq => (HeadCheck::Forward, open),
            Some((seq, mac, open)) if head.seq == seq && mac == head.mac => (HeadCheck::Same, open),
            Some((seq, _, open)) if head.seq == seq => (HeadCheck::Forked, open),
            Some((seq, _, open)) => (HeadCheck::Backwards { held: seq }, open),
        };
        let kind = check.kind();
        let check = if kind.is_some() && kind == open.as_deref() {
            HeadCheck::Again
        } else {
            check
        };
        match &check {
            HeadCheck::Forward => {
                tx.execute(
                    "INSERT INTO peer_audit_heads (peer, seq, mac, at_ms) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (peer) DO UPDATE SET seq = excluded.seq, mac = excluded.mac,
                     at_ms = excluded.at_ms, open_problem = NULL",
                    params![peer, head.seq as i64, head.mac.to_vec(), head.at_ms as i64],
                )?;
            }
            HeadCheck::Same => {
                tx.execute(
                    "UPDATE peer_audit_heads SET open_problem = NULL
                     WHERE peer = ?1 AND open_problem IS NOT NULL",
                    params![peer],
                )?;
            }
            HeadCheck::Again => {}
            problem => {
                let what = problem.problem(head.seq);
                tx.execute(
                    "UPDATE peer_audit_heads SET inconsistencies = inconsistencies + 1,
                     last_problem = ?2, open_problem = ?3 WHERE peer = ?1",
                    params![peer, what, kind],
                )?;
            }
        }
        tx.commit()?;
        Ok(check)
    }

    /// The audit heads held (sequence number and MAC, by peer): of `peer`, or of every peer.
    pub fn peer_audit_macs(
        &self,
        peer: Option<HubId>,
    ) -> Result<HashMap<HubId, (u64, [u8; 32])>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT peer, seq, mac FROM peer_audit_heads WHERE ?1 IS NULL OR peer = ?1")?;
        let rows = stmt.query_map(params![peer.map(|p| p.0.to_vec())], |r| {
            Ok((
                hub_column(r, 0)?,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })?;
        let mut heads = HashMap::new();
        for row in rows {
            let (peer, seq, mac) = row?;
            let mac = mac
                .try_into()
                .map_err(|_| StoreError::Corrupt("peer audit MAC"))?;
            if let Some(peer) = peer {
                heads.insert(peer, (seq, mac));
            }
        }
        Ok(heads)
    }

    /// A peer's audit head as held.
    pub fn peer_audit_head(&self, peer: HubId) -> Result<Option<PeerAuditHead>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT seq, at_ms, inconsistencies, last_problem FROM peer_audit_heads
                 WHERE peer = ?1",
                params![peer.0.to_vec()],
                |r| {
                    Ok(PeerAuditHead {
                        seq: r.get::<_, i64>(0)? as u64,
                        at_ms: r.get::<_, i64>(1)? as u64,
                        inconsistencies: r.get::<_, i64>(2)? as u64,
                        last_problem: r.get(3)?,
                    })
                },
            )
            .optional()?)
    }

    /// Deletes the API tokens named `name`; returns how many.
    pub fn delete_api_tokens(&self, name: &str) -> Result<usize, StoreError> {
        Ok(self
            .conn
            .execute("DELETE FROM api_tokens WHERE name = ?1", params![name])?)
    }

    /// A stored signed document (`manifest`, `revocations`).
    pub fn document(&self, kind: &str) -> Result<Option<Document>, StoreError> {
        Ok(self
            .conn
            .query_row(
                "SELECT serial, body FROM documents WHERE kind = ?1",
                params![kind],
                |r| {
                    Ok(Document {
                        serial: r.get::<_, i64>(0)? as u64,
                        body: r.get(1)?,
                    })
                },
            )
            .optional()?)
    }

    /// Stores `doc` as `kind` unless one with a serial at least as high is held; returns whether
    /// it was stored. The caller has verified it.
    pub fn put_document(&self, kind: &str, doc: &Document) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "INSERT INTO documents (kind, serial, body) VALUES (?1, ?2, ?3)
             ON CONFLICT(kind) DO UPDATE SET serial = excluded.serial, body = excluded.body
             WHERE excluded.serial > documents.serial",
            params![kind, doc.serial as i64, doc.body],
        )? == 1)
    }

    /// Stores a document this hub has just signed, which must be newer than the one held
    /// ([`StoreError::NotKept`] otherwise: a signed document is never dropped silently).
    pub fn put_signed(&self, kind: &'static str, doc: &Document) -> Result<(), StoreError> {
        if self.put_document(kind, doc)? {
            Ok(())
        } else {
            Err(StoreError::NotKept {
                kind,
                serial: doc.serial,
            })
        }
    }

    /// Runs `f` in one immediate transaction: it holds the write lock from its first statement,
    /// so what `f` reads is still true when its writes land (two hubs' commands or two API calls
    /// run one after the other), and all of its writes land, or none.
    pub fn in_transaction<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, E>,
    ) -> Result<T, E> {
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(StoreError::from)?;
        let out = f(self)?;
        tx.commit().map_err(StoreError::from)?;
        Ok(out)
    }

    /// Keeps a verified revocation list unless one at least as new is held; returns whether it
    /// was kept.
    pub fn keep_revocations(&self, list: &VerifiedRevocations) -> Result<bool, StoreError> {
        let doc = Document {
            serial: list.version(),
            body: list.bytes().to_vec(),
        };
        self.put_document(REVOCATIONS, &doc)
    }

    /// Keeps a verified manifest unless one of at least its epoch is held; returns whether it
    /// was kept.
    pub fn keep_manifest(&self, manifest: &VerifiedManifest) -> Result<bool, StoreError> {
        let doc = Document {
            serial: manifest.manifest().epoch,
            body: manifest.bytes().to_vec(),
        };
        self.put_document(MANIFEST, &doc)
    }

    /// Records this hub's identity (replacing an earlier one).
    pub fn set_instance(&self, instance: &Instance) -> Result<(), StoreError> {
        self.conn.execute("DELETE FROM instance", [])?;
        self.conn.execute(
            "INSERT INTO instance (id, name, identity_public_key, noise_public_key, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                instance.id.to_string(),
                instance.name,
                instance.identity_public_key,
                instance.noise_public_key,
                instance.created_at as i64
            ],
        )?;
        Ok(())
    }

    /// Suspends (`Some(now)`) or resumes (`None`) a peer that is not revoked; returns whether it
    /// exists.
    pub fn set_suspended(&self, id: HubId, at_ms: Option<u64>) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE federation_peers SET suspended_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            params![at_ms.map(|t| t as i64), id.to_string()],
        )? == 1)
    }

    /// Records that a peer was online at `now_ms`.
    pub fn touch_peer(&self, id: HubId, now_ms: u64) -> Result<(), StoreError> {
        self.conn.execute(
            "UPDATE federation_peers SET last_seen_at = ?1 WHERE id = ?2",
            params![now_ms as i64, id.to_string()],
        )?;
        Ok(())
    }

    /// Adds or replaces a peer (pairing records both sides).
    pub fn upsert_peer(&self, peer: &PeerRecord) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT INTO federation_peers
               (id, name, endpoint, public_key, trust_level, roles, paired_at, revoked_at, suspended_at, last_seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT(id) DO UPDATE SET name = excluded.name, endpoint = excluded.endpoint,
               public_key = excluded.public_key, trust_level = excluded.trust_level,
               roles = excluded.roles, paired_at = excluded.paired_at,
               revoked_at = excluded.revoked_at, suspended_at = excluded.suspended_at,
               last_seen_at = excluded.last_seen_at",
            params![
                peer.id.to_string(),
                peer.name,
                peer.endpoint,
                peer.public_key,
                peer.trust.as_str(),
                join_roles(&peer.roles),
                peer.paired_at as i64,
                peer.revoked_at.map(|t| t as i64),
                peer.suspended_at.map(|t| t as i64),
                peer.last_seen_at.map(|t| t as i64),
            ],
        )?;
        Ok(())
    }

    /// Soft-deletes a peer: `revoked_at` is set and kept for audit. Returns whether it existed
    /// and was not revoked already.
    pub fn revoke_peer(&self, id: HubId, now_ms: u64) -> Result<bool, StoreError> {
        Ok(self.conn.execute(
            "UPDATE federation_peers SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            params![now_ms as i64, id.to_string()],
        )? == 1)
    }

    /// One peer, revoked or not.
    pub fn peer(&self, id: HubId) -> Result<Option<PeerRecord>, StoreError> {
        self.conn
            .query_row(
                "SELECT id, name, endpoint, public_key, trust_level, roles, paired_at, revoked_at,
                        suspended_at, last_seen_at
                 FROM federation_peers WHERE id = ?1",
                params![id.to_string()],
                row_to_peer,
            )
            .optional()?
            .transpose()
    }

    /// Peers not revoked, most recently seen (then paired) first.
    pub fn active_peers(&self) -> Result<Vec<PeerRecord>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT id, name, endpoint, public_key, trust_level, roles, paired_at, revoked_at,
                    suspended_at, last_seen_at
             FROM federation_peers WHERE revoked_at IS NULL
             ORDER BY COALESCE(last_seen_at, 0) DESC, paired_at DESC",
        )?;
        let rows = stmt.query_map([], row_to_peer)?;
        rows.map(|r| r.map_err(StoreError::from).and_then(|p| p))
            .collect()
    }
}

type PeerRow = Result<PeerRecord, StoreError>;

fn row_to_peer(r: &rusqlite::Row<'_>) -> rusqlite::Result<PeerRow> {
    let opt =
        |i| -> rusqlite::Result<Option<u64>> { Ok(r.get::<_, Option<i64>>(i)?.map(|t| t as u64)) };
    let id: String = r.get(0)?;
    let trust: String = r.get(4)?;
    let roles: String = r.get(5)?;
    let record = (|| {
        Ok(PeerRecord {
            id: id.parse().map_err(|_| StoreError::Corrupt("peer id"))?,
            name: r.get(1)?,
            endpoint: r.get(2)?,
            public_key: r.get(3)?,
            trust: trust
                .parse()
                .map_err(|_| StoreError::Corrupt("trust level"))?,
            roles: split_roles(&roles),
            paired_at: r.get::<_, i64>(6)? as u64,
            revoked_at: opt(7)?,
            suspended_at: opt(8)?,
            last_seen_at: opt(9)?,
        })
    })();
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

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

    const NOW: u64 = 1_795_000_000_000;
    const HOUR: u64 = 3_600_000;

    fn terms() -> TokenTerms {
        TokenTerms {
            trust: TrustLevel::AgentDispatch,
            roles: vec!["laptop".into()],
        }
    }

    #[test]
    fn migrations_apply_once_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.version().unwrap(), SCHEMA_VERSION);
        drop(store);
        // Reopening applies nothing again (it would fail on CREATE TABLE).
        let store = Store::open(&path).unwrap();
        store
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        assert!(matches!(Store::open(&path), Err(StoreError::TooNew { .. })));
    }

    /// A delegation nonce is fresh once, replayed after (also from a reopened store), and
    /// forgotten once its envelope expired; the table is bounded.
    #[test]
    fn delegation_nonces_are_used_once_kept_across_a_reopen_and_forgotten_at_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let store = Store::open(&path).unwrap();
        let n = [1u8; 16];
        assert_eq!(
            store.use_delegation_nonce(&n, 2_000, 1_000).unwrap(),
            NonceUse::Fresh
        );
        assert_eq!(
            store.use_delegation_nonce(&n, 2_000, 1_500).unwrap(),
            NonceUse::Replayed
        );
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.use_delegation_nonce(&n, 2_000, 1_900).unwrap(),
            NonceUse::Replayed
        );
        // Expired: forgotten (a replay of it is refused as expired before it gets here).
        assert_eq!(
            store.use_delegation_nonce(&n, 9_000, 2_000).unwrap(),
            NonceUse::Fresh
        );
        store
            .conn
            .execute(
                "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?1)
                 INSERT INTO delegation_nonces SELECT randomblob(16), 99000 FROM k",
                params![MAX_DELEGATION_NONCES as i64],
            )
            .unwrap();
        assert_eq!(
            store.use_delegation_nonce(&[2; 16], 9_000, 3_000).unwrap(),
            NonceUse::Full
        );
    }

    /// Apps keep their source and sharing; a new one is shared with nobody, and replacing its
    /// source keeps its sharing.
    #[test]
    fn apps_are_stored_unshared_and_keep_their_sharing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db")).unwrap();
        let source = AppSource::Command {
            program: "mcp-server".into(),
            args: vec!["--x".into()],
            env: vec![("K".into(), "V".into())],
            cwd: None,
        };
        store.put_app("notes", &source, 5).unwrap();
        let app = store.app("notes").unwrap().unwrap();
        assert_eq!((app.source, app.sharing), (source, Sharing::LocalOnly));
        let roles = Sharing::Roles(vec!["laptop".into()]);
        assert!(store
            .set_app_sharing("notes", &roles, Some(TrustLevel::Full))
            .unwrap());
        let url = AppSource::Url("http://127.0.0.1:9/mcp".into());
        store.put_app("notes", &url, 6).unwrap();
        let app = store.app("notes").unwrap().unwrap();
        assert_eq!(
            (app.source, app.sharing, app.require_trust),
            (url, roles, Some(TrustLevel::Full))
        );
        assert!(store.remove_app("notes").unwrap());
        assert!(!store.remove_app("notes").unwrap());
        assert!(!store
            .set_app_sharing("notes", &Sharing::Cluster, None)
            .unwrap());
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
    fn peers_are_soft_deleted_and_listed_most_recent_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db")).unwrap();
        let peer = |b: u8, seen: Option<u64>| PeerRecord {
            id: HubId([b; 16]),
            name: format!("hub {b}"),
            endpoint: "wss://relay".into(),
            public_key: "ab".repeat(32),
            trust: TrustLevel::ReadOnly,
            roles: vec!["phone".into()],
            paired_at: NOW + u64::from(b),
            revoked_at: None,
            suspended_at: None,
            last_seen_at: seen,
        };
        store.upsert_peer(&peer(1, Some(NOW + 10))).unwrap();
        store.upsert_peer(&peer(2, None)).unwrap();
        store.upsert_peer(&peer(3, Some(NOW + 20))).unwrap();
        let ids: Vec<u8> = store
            .active_peers()
            .unwrap()
            .iter()
            .map(|p| p.id.0[0])
            .collect();
        assert_eq!(ids, vec![3, 1, 2]);
        assert!(store.revoke_peer(HubId([3; 16]), NOW + 30).unwrap());
        assert!(!store.revoke_peer(HubId([3; 16]), NOW + 31).unwrap());
        let ids: Vec<u8> = store
            .active_peers()
            .unwrap()
            .iter()
            .map(|p| p.id.0[0])
            .collect();
        assert_eq!(ids, vec![1, 2]);
        // Kept for audit.
        assert_eq!(
            store.peer(HubId([3; 16])).unwrap().unwrap().revoked_at,
            Some(NOW + 30)
        );
        assert_eq!(
            store.peer(HubId([3; 16])).unwrap().unwrap().roles,
            vec!["phone"]
        );
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

    #[test]
    fn documents_only_move_forward() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db")).unwrap();
        let doc = |serial, body: &[u8]| Document {
            serial,
            body: body.to_vec(),
        };
        assert!(store.put_document(MANIFEST, &doc(2, b"two")).unwrap());
        assert!(!store.put_document(MANIFEST, &doc(1, b"one")).unwrap());
        assert!(!store.put_document(MANIFEST, &doc(2, b"again")).unwrap());
        assert_eq!(store.document(MANIFEST).unwrap(), Some(doc(2, b"two")));
        assert!(store.put_document(MANIFEST, &doc(3, b"three")).unwrap());
        assert_eq!(store.document(REVOCATIONS).unwrap(), None);
    }

    /// Each inconsistency of a peer's heads is counted once while it goes on: a cut-back log
    /// sends older heads until it passes the one held; a consistent head ends it.
    #[test]
    fn audit_head_inconsistencies_are_counted_once_while_they_last() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db")).unwrap();
        let peer = HubId([5; 16]);
        let head = |seq, mac: u8| shared_proto::audit::Head {
            hub: peer,
            seq,
            mac: [mac; 32],
            at_ms: seq,
        };
        let keep = |seq, mac| store.keep_peer_audit_head(&head(seq, mac)).unwrap();
        assert_eq!(keep(6, 1), HeadCheck::Forward);
        assert_eq!(keep(6, 1), HeadCheck::Same);
        assert_eq!(keep(2, 2), HeadCheck::Backwards { held: 6 });
        assert_eq!(keep(3, 2), HeadCheck::Again);
        assert_eq!(keep(6, 2), HeadCheck::Forked);
        assert_eq!(keep(6, 2), HeadCheck::Again);
        assert_eq!(keep(6, 1), HeadCheck::Same);
        assert_eq!(keep(6, 3), HeadCheck::Forked);
        assert_eq!(keep(7, 3), HeadCheck::Forward);
        assert_eq!(keep(1, 3), HeadCheck::Backwards { held: 7 });
        let held = store.peer_audit_head(peer).unwrap().unwrap();
        assert_eq!((held.seq, held.inconsistencies), (7, 4));
        assert_eq!(
            held.last_problem.as_deref(),
            Some("its audit head went back from 7 to 1 entries")
        );
    }
}
