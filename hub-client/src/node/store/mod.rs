//! The hub's SQLite store (`hub.db` in the data directory): versioned migrations, and the
//! records that must survive a crash consistently, one file per kind of record.
//!
//! | module | what |
//! |---|---|
//! | [`migrations`] | the schema, numbered; `PRAGMA user_version` records the last applied, each in its own transaction, so a hub killed mid-upgrade reopens at a whole version |
//! | [`tokens`] | pairing tokens (only the SHA-256 of their secret; redeemed by one conditional `UPDATE`, so of two concurrent redemptions exactly one succeeds) and API tokens |
//! | [`peers`] | this hub's identity and its peers (soft-deleted: `revoked_at` is kept for audit) |
//! | [`apps`] | the hub's apps and their sharing, and the delegation nonces seen |
//! | [`documents`] | the signed manifest and revocation list held |
//! | [`audit`] | the HMAC-chained audit log, its counts, and the audit heads peers signed |
//!
//! Times are Unix milliseconds, passed in by the caller.

use std::path::Path;

use rusqlite::{Connection, TransactionBehavior};
use sha2::{Digest, Sha256};
use shared_proto::HubId;

pub mod apps;
pub mod audit;
pub mod documents;
pub mod migrations;
pub mod peers;
pub mod tokens;

pub use apps::{AppRecord, AppSource};
pub use audit::{AuditCount, AuditEntry, Checkpoint, HeadCheck, PeerAuditHead};
pub use documents::{Document, MANIFEST, REVOCATIONS, SUCCESSOR};
use migrations::MIGRATIONS;
pub use migrations::SCHEMA_VERSION;
pub use peers::{Admission, Instance, PeerRecord};
pub use tokens::{ApiToken, RedeemError, TokenLimits, TokenTerms};

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
    /// Archived entries were not removed: the log no longer ends the archive's way there
    /// (another archive ran at the same time).
    #[error("the audit log changed while it was archived; archive again")]
    ArchiveRaced,
}

/// The store.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
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

/// What the store keeps of a token's secret: its SHA-256.
pub fn token_hash(secret: &[u8]) -> [u8; 32] {
    sha256(secret)
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

    /// A number that changes whenever another connection (another `hub` process) committed a
    /// change to the database since this one last asked: `PRAGMA data_version`. What this
    /// connection writes does not change it.
    pub fn data_version(&self) -> Result<u64, StoreError> {
        Ok(self
            .conn
            .pragma_query_value(None, "data_version", |r| r.get::<_, i64>(0))? as u64)
    }
}

/// What the store's tests share.
#[cfg(test)]
pub(crate) mod testing {
    /// A fixed now (Unix ms).
    pub(crate) const NOW: u64 = 1_795_000_000_000;
    /// An hour (ms).
    pub(crate) const HOUR: u64 = 3_600_000;
}
