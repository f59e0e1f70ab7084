//! The federation audit log: what this hub did and was asked, appended to its store and chained
//! with HMAC-SHA256 under the key in `audit.key` (`shared_proto::audit` has the encoding).
//!
//! Recorded: every call across hubs on both sides (the decision, why, the outcome, the duration,
//! the SHA-256 of the arguments, never the arguments), every refusal of one, pairings,
//! revocations, suspensions and resumptions, apps added, shared and removed, and API tokens
//! created. A failure to record is logged as an error and does not undo what was recorded.

use shared_proto::audit::{verify_from, ChainError, Head};
use shared_proto::HubId;

use crate::node::home::{Home, HomeError};
pub use crate::node::store::audit::{code_of, AuditKind, Decision, FaultKind};
use crate::node::store::{AuditEntry, Checkpoint, Store};
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

/// Founder: sets peer `id`'s trust level and roles (its roles unchanged if `roles` is `None`),
/// re-signing the manifest (`Home::set_terms`), and records it (`peer.set_trust`); the roles
/// set and the new manifest, to be passed on. The CLI (`hub peers set-trust`) and the API
/// (`POST /api/federation/peers/{id}/trust`) both use it.
pub fn set_trust(
    home: &Home,
    store: &Store,
    id: HubId,
    trust: shared_proto::trust::TrustLevel,
    roles: Option<Vec<String>>,
) -> Result<(Vec<String>, crate::node::store::Document), HomeError> {
    let was = store
        .peer(id)?
        .filter(|p| p.revoked_at.is_none())
        .ok_or(HomeError::UnknownPeer(id))?;
    let roles = roles.unwrap_or_else(|| was.roles.clone());
    let manifest = home.set_terms(store, id, trust, roles.clone())?;
    let why = format!(
        "{trust}, roles {} (was {}, roles {})",
        roles.join(","),
        was.trust,
        was.roles.join(",")
    );
    record(
        home,
        store,
        entry(AuditKind::SetTrust, Some(id), Decision::Ok, &why),
    );
    Ok((roles, manifest))
}

/// Why a hub's log does not verify: the first entry at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogFault {
    /// The chain itself: an entry changed, removed, moved or added.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The checkpoint the log starts from (where older entries were archived) is not the
    /// hub's signature of that entry.
    #[error("the checkpoint at entry {seq} is not this hub's signature (the store was changed)")]
    Checkpoint {
        /// The checkpoint's entry.
        seq: u64,
    },
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
            LogFault::Code { seq } | LogFault::Checkpoint { seq } => *seq,
        }
    }
}

/// The whole log checked with the home's key: the head (entries, last MAC) or the first fault.
/// A log whose older entries were archived is checked from its checkpoint, whose signature is
/// checked first. The refusal codes the store keeps beside the entries are checked against
/// their reasons too.
pub fn verify_log(
    home: &Home,
    store: &Store,
) -> Result<Result<(u64, [u8; 32]), LogFault>, HomeError> {
    Ok(checked_log(home, store)?.map(|log| log.head))
}

/// The log in the store, verified.
struct CheckedLog {
    /// Where it starts: its checkpoint, or 0 and zeros.
    start: (u64, [u8; 32]),
    /// Its entries, in chain order.
    entries: Vec<(AuditEntry, [u8; 32])>,
    /// Its last entry's sequence number and MAC.
    head: (u64, [u8; 32]),
}

/// Reads the whole log and checks it ([`verify_log`]).
fn checked_log(home: &Home, store: &Store) -> Result<Result<CheckedLog, LogFault>, HomeError> {
    let key = home.audit_key()?;
    let start = match store.audit_checkpoint()? {
        None => (0, [0; 32]),
        Some(c) => {
            let me = home.credentials()?;
            match Head::verify(&c.signed, me.hub_id, &me.identity.verifying_key()) {
                Ok(head) if head.seq == c.seq && head.mac == c.mac => (c.seq, c.mac),
                _ => return Ok(Err(LogFault::Checkpoint { seq: c.seq })),
            }
        }
    };
    let entries = store.audit_entries(None, 0, None)?;
    let head = match verify_from(&key, start, entries.iter().map(|(e, m)| (e, m))) {
        Ok(head) => head,
        Err(e) => return Ok(Err(e.into())),
    };
    Ok(match store.first_code_mismatch()? {
        Some(seq) => Err(LogFault::Code { seq }),
        None => Ok(CheckedLog {
            start,
            entries,
            head,
        }),
    })
}

/// The first line of an archive (`hub audit archive`); the entries follow, one JSON object a
/// line as [`to_json`] writes them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ArchiveHeader {
    /// Always [`ARCHIVE_FORMAT`].
    pub format: String,
    /// The hub whose log it is (32 hex digits).
    pub hub: String,
    /// The entry before the first one archived (0 for the log's start) ...
    pub after_seq: u64,
    /// ... and its MAC (hex; zeros for the log's start): the previous archive's last.
    pub after_mac: String,
    /// The last entry archived ...
    pub through_seq: u64,
    /// ... and its MAC (hex): where the log in the store goes on.
    pub head_mac: String,
    /// The hub's signed audit head for `through_seq` and `head_mac` (hex), also kept in the store
    /// as its checkpoint.
    pub checkpoint: String,
}

/// [`ArchiveHeader::format`].
pub const ARCHIVE_FORMAT: &str = "hub-relay audit archive v1";

/// What was archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archived {
    /// The archive's header.
    pub header: ArchiveHeader,
    /// Entries written out and removed from the store.
    pub entries: u64,
}

/// Why an archive was not made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The data directory.
    #[error(transparent)]
    Home(#[from] HomeError),
    /// The store.
    #[error(transparent)]
    Store(#[from] crate::node::store::StoreError),
    /// The log does not verify: nothing is archived (the entries would be kept nowhere
    /// verifiable).
    #[error("the audit chain does not verify, nothing archived: {0}")]
    Log(LogFault),
    /// The file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What happened.
        source: std::io::Error,
    },
}

/// Writes the entries of the log's oldest stretch before `before_ms` to a new file `out` (never
/// replacing one), then removes them from the store, keeps a checkpoint signed by the hub where
/// the log now starts, and compacts the store. `None` if no entry is that old. The log is
/// verified first: only a log that verifies is archived. A crash before the entries are removed
/// leaves them in the store (a later archive writes them again).
pub fn archive(
    home: &Home,
    store: &Store,
    before_ms: u64,
    out: &std::path::Path,
) -> Result<Option<Archived>, ArchiveError> {
    let Some(through) = store.audit_archivable(before_ms)? else {
        return Ok(None);
    };
    // The whole log verifies (checkpoint, chain, codes) before any of it leaves the store; the
    // entries read to check it are those written out.
    let CheckedLog {
        start, mut entries, ..
    } = checked_log(home, store)?.map_err(ArchiveError::Log)?;
    entries.truncate(entries.partition_point(|(e, _)| e.seq <= through));
    let Some((last, head_mac)) = entries.last().map(|(e, m)| (e.seq, *m)) else {
        return Ok(None);
    };
    let me = home.credentials()?;
    let signed = Head {
        hub: me.hub_id,
        seq: last,
        mac: head_mac,
        at_ms: unix_ms(),
    }
    .sign(&me.identity);
    let header = ArchiveHeader {
        format: ARCHIVE_FORMAT.to_owned(),
        hub: me.hub_id.to_string(),
        after_seq: start.0,
        after_mac: hex::encode(start.1),
        through_seq: last,
        head_mac: hex::encode(head_mac),
        checkpoint: hex::encode(&signed),
    };
    let mut text = serde_json::to_string(&header).map_err(|e| ArchiveError::Io {
        path: out.to_owned(),
        source: e.into(),
    })?;
    text.push('\n');
    for (entry, mac) in &entries {
        text.push_str(&to_json(entry, mac).to_string());
        text.push('\n');
    }
    write_new(out, text.as_bytes())?;
    let removed = store.forget_audit_through(&Checkpoint {
        seq: last,
        mac: head_mac,
        signed,
    })?;
    store.compact()?;
    Ok(Some(Archived {
        header,
        entries: removed,
    }))
}

/// Writes `bytes` to a new file `path` (refused if it exists), durably: a temporary file beside
/// it, synced, then linked into place.
fn write_new(path: &std::path::Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp);
    let written = (|| {
        // Like the store: who called what, when, is for this machine's owner and auditors.
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        // A hard link never replaces a file already there.
        std::fs::hard_link(&tmp, path)
    })();
    let _ = std::fs::remove_file(&tmp);
    written.map_err(io)?;
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Why an archive does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveFault {
    /// The first line is not an archive header.
    #[error("not an audit archive: {0}")]
    Header(String),
    /// Another hub's archive.
    #[error("the archive is hub {archive}'s log, not this hub's ({this})")]
    OtherHub {
        /// The hub the archive names.
        archive: HubId,
        /// This hub.
        this: HubId,
    },
    /// A line is not an entry.
    #[error("line {line}: {why}")]
    Line {
        /// The line (from 1, the header).
        line: usize,
        /// What is wrong.
        why: String,
    },
    /// The entries do not chain (an entry changed, removed, moved or added).
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The entries do not end where the header says.
    #[error("the entries end at {seq}, not at the header's {expected} with its MAC")]
    End {
        /// Where they end.
        seq: u64,
        /// Where the header says.
        expected: u64,
    },
    /// The checkpoint is not the hub's signature of the last entry.
    #[error("the checkpoint is not this hub's signature of entry {0}")]
    Checkpoint(u64),
}

/// Checks an archive on its own with the audit key of the hub `hub` and its identity key: every
/// entry chains from the header's start to its end, and the checkpoint is the hub's signature
/// of that end. Returns the header.
pub fn verify_archive(
    key: &[u8; 32],
    hub: HubId,
    identity: &ed25519_dalek::VerifyingKey,
    text: &str,
) -> Result<ArchiveHeader, ArchiveFault> {
    let mut lines = text.lines();
    let header: ArchiveHeader = serde_json::from_str(lines.next().unwrap_or(""))
        .map_err(|e| ArchiveFault::Header(e.to_string()))?;
    if header.format != ARCHIVE_FORMAT {
        return Err(ArchiveFault::Header(format!(
            "format {:?}, this hub reads {ARCHIVE_FORMAT:?}",
            header.format
        )));
    }
    let archive: HubId = header
        .hub
        .parse()
        .map_err(|_| ArchiveFault::Header(format!("hub {:?}: not a hub id", header.hub)))?;
    if archive != hub {
        return Err(ArchiveFault::OtherHub { archive, this: hub });
    }
    let start = (
        header.after_seq,
        hex32("after_mac", &header.after_mac).map_err(ArchiveFault::Header)?,
    );
    let end = (
        header.through_seq,
        hex32("head_mac", &header.head_mac).map_err(ArchiveFault::Header)?,
    );
    let entries = lines
        .enumerate()
        .map(|(i, line)| from_json(line).map_err(|why| ArchiveFault::Line { line: i + 2, why }))
        .collect::<Result<Vec<_>, _>>()?;
    let head = verify_from(key, start, entries.iter().map(|(e, m)| (e, m)))?;
    if head != end {
        return Err(ArchiveFault::End {
            seq: head.0,
            expected: end.0,
        });
    }
    let signed = hex::decode(&header.checkpoint).map_err(|_| ArchiveFault::Checkpoint(end.0))?;
    match Head::verify(&signed, hub, identity) {
        Ok(h) if (h.seq, h.mac) == end => Ok(header),
        _ => Err(ArchiveFault::Checkpoint(end.0)),
    }
}

/// 32 bytes from 64 hex digits (`what` names the field in the error).
fn hex32(what: &str, text: &str) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|_| format!("{what}: not 64 hex digits"))?;
    Ok(out)
}

/// An entry and its MAC from what [`to_json`] wrote.
pub fn from_json(line: &str) -> Result<(AuditEntry, [u8; 32]), String> {
    #[derive(serde::Deserialize)]
    struct Line {
        seq: u64,
        at_ms: u64,
        kind: String,
        peer: Option<String>,
        principal: String,
        app: String,
        tool: String,
        decision: String,
        reason: String,
        duration_ms: u64,
        arguments_sha256: Option<String>,
        bytes: Option<u64>,
        count: Option<u64>,
        mac: String,
    }
    let l: Line = serde_json::from_str(line).map_err(|e| e.to_string())?;
    let peer = l
        .peer
        .map(|p| {
            p.parse::<HubId>()
                .map_err(|_| format!("peer {p:?}: not a hub id"))
        })
        .transpose()?;
    let arguments_sha256 = l
        .arguments_sha256
        .map(|a| hex32("arguments_sha256", &a))
        .transpose()?;
    Ok((
        AuditEntry {
            seq: l.seq,
            at_ms: l.at_ms,
            kind: l.kind,
            peer,
            principal: l.principal,
            app: l.app,
            tool: l.tool,
            decision: l.decision,
            reason: l.reason,
            duration_ms: l.duration_ms,
            arguments_sha256,
            bytes: l.bytes,
            count: l.count,
        },
        hex32("mac", &l.mac)?,
    ))
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
