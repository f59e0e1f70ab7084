//! The schema, as numbered migrations; migration `i` brings it to version `i + 1`.

/// The migrations, in order; migration `i` brings the schema to version `i + 1`.
pub(super) const MIGRATIONS: &[&str] = &[
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
    // 7: the refusal code of refused calls and of faults, kept beside the reason it starts
    // (`store::audit::code_of`), so that counts group by it instead of parsing text; older
    // entries get theirs from their reason.
    r#"
    ALTER TABLE audit_log ADD COLUMN code TEXT;
    UPDATE audit_log
       SET code = CASE WHEN instr(reason, ':') > 0 THEN substr(reason, 1, instr(reason, ':') - 1)
                       ELSE reason END
     WHERE decision = 'refused' AND kind IN ('call.in', 'call.out', 'peer.fault');
    "#,
    // 8: how many events an entry stands for (a refusal repeated within an interval is written
    // once with its count); older entries have none and stand for one.
    r#"
    ALTER TABLE audit_log ADD COLUMN count INTEGER;
    "#,
    // 9: the hub whose call spent a delegation nonce (each hub's nonces are bounded on their
    // own); older nonces have none.
    r#"
    ALTER TABLE delegation_nonces ADD COLUMN peer BLOB;
    "#,
    // 10: tool kinds an operator pinned (`hub apps share --tool-kind`), a JSON object of tool
    // name to `read_only`, `write` or `destructive`.
    r#"
    ALTER TABLE apps ADD COLUMN tool_kinds TEXT NOT NULL DEFAULT '{}';
    "#,
    // 11: API token uses per minute (kept two days), for statistics by window.
    r#"
    CREATE TABLE token_uses (
        token_sha256 BLOB NOT NULL,
        minute       INTEGER NOT NULL,
        uses         INTEGER NOT NULL,
        PRIMARY KEY (token_sha256, minute)
    ) WITHOUT ROWID;
    "#,
    // 12: where the audit log starts after older entries were archived (`hub audit archive`):
    // the last archived entry's sequence number and MAC, and the hub's signed head for them
    // (`audit::Head`, which also says when).
    r#"
    CREATE TABLE audit_checkpoint (
        id     INTEGER PRIMARY KEY CHECK (id = 1),
        seq    INTEGER NOT NULL,
        mac    BLOB NOT NULL,
        signed BLOB NOT NULL
    );
    "#,
    // 13: each peer's newest certificate (DER), as this hub issued it or a session verified it:
    // what a founder rotating the CA key renews every member from.
    r#"
    CREATE TABLE peer_certificates (
        id  TEXT PRIMARY KEY,
        der BLOB NOT NULL
    );
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::store::{Store, StoreError};

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
}
