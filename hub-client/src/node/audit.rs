//! The federation audit log: what this hub did and was asked, appended to its store and chained
//! with HMAC-SHA256 under the key in `audit.key` (`shared_proto::audit` has the encoding).
//!
//! Recorded: every call across hubs on both sides (the decision, why, the outcome, the duration,
//! the SHA-256 of the arguments, never the arguments), every refusal of one, pairings,
//! revocations, suspensions and resumptions, apps added, shared and removed, and API tokens
//! created. A failure to record is logged as an error and does not undo what was recorded.

use shared_proto::audit::{verify, ChainError};
use shared_proto::HubId;

use crate::node::home::{Home, HomeError};
use crate::node::store::{AuditEntry, Store};
use crate::unix_ms;

/// The kind of entry that records a faulty handshake, audit head, manifest or views message from
/// a peer (its `code` says which); these lower the peer's trust score.
pub const PEER_FAULT: &str = "peer.fault";

/// An entry of `kind` now, about `peer`, with `decision` and `reason`; the caller fills in the
/// rest.
pub fn entry(kind: &str, peer: Option<HubId>, decision: &str, reason: &str) -> AuditEntry {
    AuditEntry {
        at_ms: unix_ms(),
        kind: kind.to_owned(),
        peer,
        decision: decision.to_owned(),
        reason: reason.to_owned(),
        bytes: Some(0),
        ..AuditEntry::default()
    }
}

/// Appends `entry` to the home's audit log; failures are logged, not returned.
pub fn record(home: &Home, store: &Store, entry: AuditEntry) {
    let kind = entry.kind.clone();
    let appended = home
        .audit_key()
        .and_then(|key| Ok(store.append_audit(&key, entry)?));
    if let Err(e) = appended {
        tracing::error!(kind, "audit entry not recorded: {e}");
    }
}

/// Sets who may see and call app `name`, and records it (`app.share`); `false` if there is no
/// such app. The CLI (`hub apps share`) and the API (`PUT /api/apps/{name}/sharing`) both use it.
pub fn share_app(
    home: &Home,
    store: &Store,
    name: &str,
    sharing: &shared_proto::agent::Sharing,
    require_trust: Option<shared_proto::trust::TrustLevel>,
) -> Result<bool, crate::node::store::StoreError> {
    if !store.set_app_sharing(name, sharing, require_trust)? {
        return Ok(false);
    }
    let floor = require_trust.map_or(String::new(), |t| format!(", requires {t}"));
    let mut e = entry("app.share", None, "ok", &format!("{sharing}{floor}"));
    e.app = name.to_owned();
    record(home, store, e);
    Ok(true)
}

/// The whole log checked with the home's key: the head (entries, last MAC) or the first fault.
pub fn verify_log(
    home: &Home,
    store: &Store,
) -> Result<Result<(u64, [u8; 32]), ChainError>, HomeError> {
    let key = home.audit_key()?;
    let entries = store.audit_entries(None, 0, None)?;
    Ok(verify(&key, entries.iter().map(|(e, m)| (e, m))))
}

/// An entry as `hub audit export` and the API give it: every field of the canonical encoding
/// (ids and hashes in hex), and the MAC.
pub fn to_json(e: &AuditEntry, mac: &[u8; 32]) -> serde_json::Value {
    serde_json::json!({
        "seq": e.seq,
        "at_ms": e.at_ms,
        "kind": e.kind,
        "peer": e.peer.map(|p| p.to_string()),
        "principal": e.principal,
        "app": e.app,
        "tool": e.tool,
        "decision": e.decision,
        "reason": e.reason,
        "duration_ms": e.duration_ms,
        "arguments_sha256": e.arguments_sha256.map(hex::encode),
        "bytes": e.bytes,
        "mac": hex::encode(mac),
    })
}
