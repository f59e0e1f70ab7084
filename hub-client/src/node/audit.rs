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
pub use crate::node::store::audit::{code_of, AuditKind, Decision, FaultKind};
use crate::node::store::{AuditEntry, Store};
use crate::unix_ms;

/// An entry of `kind` now, about `peer`, with `decision` and `reason`; the caller fills in the
/// rest.
pub fn entry(kind: AuditKind, peer: Option<HubId>, decision: Decision, reason: &str) -> AuditEntry {
    AuditEntry {
        at_ms: unix_ms(),
        kind: kind.as_str().to_owned(),
        peer,
        decision: decision.as_str().to_owned(),
        reason: reason.to_owned(),
        bytes: Some(0),
        count: Some(1),
        ..AuditEntry::default()
    }
}

/// Marks `entry` refused with `code` and why: its reason is `code: why` (the code is what
/// statistics and trust scores count, [`code_of`]).
pub fn refuse(entry: &mut AuditEntry, code: &str, why: &str) {
    entry.decision = Decision::Refused.as_str().to_owned();
    entry.reason = format!("{code}: {why}");
}

/// Sets the decision and reason of `entry`.
pub fn decide(entry: &mut AuditEntry, decision: Decision, reason: impl Into<String>) {
    entry.decision = decision.as_str().to_owned();
    entry.reason = reason.into();
}

/// The entry of a fault of `peer` (`kind`), and why.
pub fn fault(peer: HubId, kind: FaultKind, why: &str) -> AuditEntry {
    let mut e = entry(AuditKind::PeerFault, Some(peer), Decision::None, "");
    refuse(&mut e, kind.as_str(), why);
    e
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

/// Tool kinds an operator pins or unpins (`None`: the app's own annotations count again).
pub type ToolPins = std::collections::BTreeMap<String, Option<shared_proto::agent::ToolKind>>;

/// A pin as the CLI and the API write it: `KIND` is `read_only`, `write`, `destructive`, or `app`
/// (unpinned: the app's own annotations).
pub fn parse_pin_kind(kind: &str) -> Result<Option<shared_proto::agent::ToolKind>, String> {
    match kind {
        "app" => Ok(None),
        kind => kind.parse().map(Some).map_err(|_| {
            format!("tool kind {kind:?}: read_only, write, destructive, or app (its own)")
        }),
    }
}

/// Sets who may see and call app `name`, and pins the kinds of its tools in `pins`, in one
/// transaction, and records it (`app.share`); `false` if there is no such app. The CLI (`hub apps
/// share`) and the API (`PUT /api/apps/{name}/sharing`) both use it.
pub fn share_app(
    home: &Home,
    store: &Store,
    name: &str,
    sharing: &shared_proto::agent::Sharing,
    require_trust: Option<shared_proto::trust::TrustLevel>,
    pins: &ToolPins,
) -> Result<bool, crate::node::store::StoreError> {
    let found = store.in_transaction(|store| {
        Ok::<_, crate::node::store::StoreError>(
            store.set_app_sharing(name, sharing, require_trust)?
                && store.pin_tool_kinds(name, pins)?,
        )
    })?;
    if !found {
        return Ok(false);
    }
    let floor = require_trust.map_or(String::new(), |t| format!(", requires {t}"));
    let pinned: Vec<String> = pins
        .iter()
        .map(|(tool, kind)| format!("{tool}={}", kind.map_or("app", |k| k.as_str())))
        .collect();
    let pinned = if pinned.is_empty() {
        String::new()
    } else {
        format!(", tool kinds {}", pinned.join(","))
    };
    let mut e = entry(
        AuditKind::AppShare,
        None,
        Decision::Ok,
        &format!("{sharing}{floor}{pinned}"),
    );
    e.app = name.to_owned();
    record(home, store, e);
    Ok(true)
}

/// Why a hub's log does not verify: the first entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogFault {
    /// The chain itself: an entry changed, removed, moved or added.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The refusal code stored beside an entry is not the one its (MACed) reason gives.
    #[error("entry {seq}: its stored refusal code is not the one its reason gives (the store was changed)")]
    Code {
        /// The entry.
        seq: u64,
    },
}

impl LogFault {
    /// The sequence number of the entry at fault.
    pub fn seq(&self) -> u64 {
        match self {
            LogFault::Chain(e) => e.seq(),
            LogFault::Code { seq } => *seq,
        }
    }
}

/// The whole log checked with the home's key: the head (entries, last MAC) or the first fault.
/// The refusal codes the store keeps beside the entries are checked against their reasons too.
pub fn verify_log(
    home: &Home,
    store: &Store,
) -> Result<Result<(u64, [u8; 32]), LogFault>, HomeError> {
    let key = home.audit_key()?;
    let entries = store.audit_entries(None, 0, None)?;
    let head = match verify(&key, entries.iter().map(|(e, m)| (e, m))) {
        Ok(head) => head,
        Err(e) => return Ok(Err(e.into())),
    };
    Ok(match store.first_code_mismatch()? {
        Some(seq) => Err(LogFault::Code { seq }),
        None => Ok(head),
    })
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
        "count": e.count,
        "mac": hex::encode(mac),
    })
}
