//! The federation audit log (append-only, HMAC-chained: `shared_proto::audit`), what it counts
//! for statistics and trust scores, and the audit heads peers signed.

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
pub use shared_proto::audit::Entry as AuditEntry;
use shared_proto::HubId;

use super::{hub_column, Store, StoreError};

/// What an audit entry records: its `kind`, as the chain holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditKind {
    /// A call this hub forwarded to a peer.
    CallOut,
    /// A call a peer made to this hub's apps.
    CallIn,
    /// A pairing this hub answered.
    Pairing,
    /// A peer revoked.
    Revoke,
    /// A peer suspended.
    Suspend,
    /// A peer resumed.
    Resume,
    /// An app added.
    AppAdd,
    /// An app's sharing set.
    AppShare,
    /// An app removed.
    AppRemove,
    /// An API token created.
    TokenCreate,
    /// A pairing token issued (`hub invite`).
    Invite,
    /// A peer sent something faulty ([`FaultKind`]).
    PeerFault,
    /// A peer's signed audit heads do not add up.
    AuditInconsistent,
    /// A certificate renewed: this hub's (by an admin, or by itself as the founder), or one this
    /// hub issued to a peer as its admin.
    CertRenew,
    /// A peer's trust level and roles set by an admin (`hub peers set-trust`).
    SetTrust,
    /// The hub moved to a new CA key's cluster (a rotation: `hub cluster rotate` on the
    /// founder, the successor document on the others).
    ClusterMove,
}

impl AuditKind {
    /// Every kind.
    pub const ALL: [AuditKind; 16] = [
        Self::CallOut,
        Self::CallIn,
        Self::Pairing,
        Self::Revoke,
        Self::Suspend,
        Self::Resume,
        Self::AppAdd,
        Self::AppShare,
        Self::AppRemove,
        Self::TokenCreate,
        Self::Invite,
        Self::PeerFault,
        Self::AuditInconsistent,
        Self::CertRenew,
        Self::SetTrust,
        Self::ClusterMove,
    ];

    /// Its text in the log (`call.out`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallOut => "call.out",
            Self::CallIn => "call.in",
            Self::Pairing => "pairing",
            Self::Revoke => "revoke",
            Self::Suspend => "suspend",
            Self::Resume => "resume",
            Self::AppAdd => "app.add",
            Self::AppShare => "app.share",
            Self::AppRemove => "app.remove",
            Self::TokenCreate => "token.create",
            Self::Invite => "invite",
            Self::PeerFault => "peer.fault",
            Self::AuditInconsistent => "audit.inconsistent",
            Self::CertRenew => "cert.renew",
            Self::SetTrust => "peer.set_trust",
            Self::ClusterMove => "cluster.move",
        }
    }

    /// The kind with this text.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == text)
    }

    /// Whether entries of this kind carry a refusal code when refused (calls and faults).
    fn has_codes(self) -> bool {
        matches!(self, Self::CallOut | Self::CallIn | Self::PeerFault)
    }
}

/// What was decided, as the chain holds it (`decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Let through (a call in that passed its checks, whatever the app made of it).
    Allowed,
    /// Refused; the reason starts with the code.
    Refused,
    /// Done (an administrative act, a call out that got its result).
    Ok,
    /// Failed (a call out that got no result, for another reason than a refusal).
    Failed,
    /// Not decided yet, or not a decision.
    None,
}

impl Decision {
    /// Its text in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Refused => "refused",
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::None => "",
        }
    }

    /// The decision with this text.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Allowed,
            Self::Refused,
            Self::Ok,
            Self::Failed,
            Self::None,
        ]
        .into_iter()
        .find(|d| d.as_str() == text)
    }
}

/// What a peer sent that was faulty (the code of a [`AuditKind::PeerFault`] entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FaultKind {
    /// A handshake refused: its certificate, or a static key its certificate does not name.
    Handshake,
    /// A signed audit head that does not verify.
    AuditHead,
    /// A manifest that does not verify.
    Manifest,
    /// A views report that does not decode.
    Views,
}

impl FaultKind {
    /// Its text (the code in the log).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Handshake => "handshake",
            Self::AuditHead => "audit_head",
            Self::Manifest => "manifest",
            Self::Views => "views",
        }
    }
}

/// The refusal code of an entry: for a refused call or a fault, its reason up to the first `:`
/// (the reason is what the MAC covers; the store keeps the code beside it to count by, and
/// `hub audit verify` checks that the two agree). `None` for every other entry.
pub fn code_of(entry: &AuditEntry) -> Option<&str> {
    let kind = AuditKind::parse(&entry.kind)?;
    if !kind.has_codes() || entry.decision != Decision::Refused.as_str() {
        return None;
    }
    Some(
        entry
            .reason
            .split_once(':')
            .map_or(entry.reason.as_str(), |(code, _)| code),
    )
}

/// How many audit entries of one kind, decision and refusal code (and their total duration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCount {
    /// The peer they are about, if any.
    pub peer: Option<HubId>,
    /// Their kind.
    pub kind: AuditKind,
    /// Their decision.
    pub decision: Decision,
    /// For refused calls and faults, the code ([`code_of`]).
    pub code: Option<String>,
    /// How many events (an entry of repeats stands for its `count`).
    pub count: u64,
    /// How many entries.
    pub entries: u64,
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
    /// Fewer entries than the one held, but signed before it: an older head that arrived late
    /// (the relay may reorder within the session's window, and a switch between the LAN and the
    /// relay can too). Consistent with the one held: ignored.
    Stale,
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
            HeadCheck::Forward | HeadCheck::Same | HeadCheck::Again | HeadCheck::Stale => None,
        }
    }

    /// What is wrong with a head of `seq` entries that got this check, for people; `None` if
    /// nothing is.
    pub fn problem(&self, seq: u64) -> Option<String> {
        match self {
            HeadCheck::Forward | HeadCheck::Same | HeadCheck::Again | HeadCheck::Stale => None,
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

/// Appends `entry` to the chain within `tx` (its `seq` is set here): the new head.
fn append(
    tx: &rusqlite::Transaction<'_>,
    key: &[u8; 32],
    entry: AuditEntry,
) -> Result<(u64, [u8; 32]), StoreError> {
    let (seq, prev) = audit_head(tx)?;
    let entry = AuditEntry {
        seq: seq + 1,
        ..entry.bounded()
    };
    let mac = entry.mac(key, &prev);
    tx.prepare_cached(
        "INSERT INTO audit_log (seq, at_ms, kind, peer, principal, app, tool, decision,
         reason, duration_ms, arguments_sha256, mac, bytes, code, count)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
    )?
    .execute(params![
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
        code_of(&entry),
        entry.count.map(|c| c as i64),
    ])?;
    Ok((entry.seq, mac))
}

/// The last audit entry's sequence number and MAC: the checkpoint's if every entry was archived,
/// 0 and zeros if the log never had one.
fn audit_head(conn: &Connection) -> Result<(u64, [u8; 32]), StoreError> {
    let head = conn
        .query_row(
            "SELECT seq, mac FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?)),
        )
        .optional()?;
    match head {
        None => Ok(checkpoint(conn)?.map_or((0, [0; 32]), |c| (c.seq, c.mac))),
        Some((seq, mac)) => Ok((
            seq,
            mac.try_into()
                .map_err(|_| StoreError::Corrupt("audit MAC"))?,
        )),
    }
}

/// Where the log starts after older entries were archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last archived entry's sequence number: the log goes on at `seq + 1`.
    pub seq: u64,
    /// Its MAC, which the next entry chains to.
    pub mac: [u8; 32],
    /// The hub's signed [`shared_proto::audit::Head`] for `seq` and `mac`.
    pub signed: Vec<u8>,
}

fn checkpoint(conn: &Connection) -> Result<Option<Checkpoint>, StoreError> {
    let row = conn
        .query_row(
            "SELECT seq, mac, signed FROM audit_checkpoint WHERE id = 1",
            [],
            |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get::<_, Vec<u8>>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            },
        )
        .optional()?;
    row.map(|(seq, mac, signed)| {
        Ok(Checkpoint {
            seq,
            mac: mac
                .try_into()
                .map_err(|_| StoreError::Corrupt("audit checkpoint MAC"))?,
            signed,
        })
    })
    .transpose()
}

fn entry_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(AuditEntry, Vec<u8>)> {
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
            count: r.get::<_, Option<i64>>(13)?.map(|c| c as u64),
        },
        r.get::<_, Vec<u8>>(11)?,
    ))
}

const ENTRY_COLUMNS: &str = "seq, at_ms, kind, peer, principal, app, tool, decision, reason,
    duration_ms, arguments_sha256, mac, bytes, count";

fn with_macs(
    rows: impl Iterator<Item = rusqlite::Result<(AuditEntry, Vec<u8>)>>,
) -> Result<Vec<(AuditEntry, [u8; 32])>, StoreError> {
    rows.map(|row| {
        let (entry, mac) = row?;
        let mac = mac
            .try_into()
            .map_err(|_| StoreError::Corrupt("audit MAC"))?;
        Ok((entry, mac))
    })
    .collect()
}

impl Store {
    /// Appends `entry` to the audit chain (its `seq` is set here), in one IMMEDIATE transaction:
    /// concurrent appends from several processes each chain to the one before. Returns the new
    /// head (sequence number and MAC).
    pub fn append_audit(
        &self,
        key: &[u8; 32],
        entry: AuditEntry,
    ) -> Result<(u64, [u8; 32]), StoreError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        let head = append(&tx, key, entry)?;
        tx.commit()?;
        Ok(head)
    }

    /// A group commit (`node::journal`): the delegation nonces of calls about to run and audit
    /// entries, in one IMMEDIATE transaction, so one fsync makes all of them durable; nonces
    /// expired at `prune_before_ms`, if given, are deleted in it too. Each entry's head, in order.
    pub fn commit_batch(
        &self,
        key: Option<&[u8; 32]>,
        nonces: &[(HubId, [u8; 16], u64)],
        entries: Vec<AuditEntry>,
        prune_before_ms: Option<u64>,
    ) -> Result<Vec<(u64, [u8; 32])>, StoreError> {
        let tx = rusqlite::Transaction::new_unchecked(&self.conn, TransactionBehavior::Immediate)?;
        if let Some(before) = prune_before_ms {
            tx.execute(
                "DELETE FROM delegation_nonces WHERE expires_at <= ?1",
                params![before as i64],
            )?;
        }
        {
            let mut insert = tx.prepare_cached(
                "INSERT OR IGNORE INTO delegation_nonces (nonce, expires_at, peer)
                 VALUES (?1, ?2, ?3)",
            )?;
            for (peer, nonce, expires) in nonces {
                insert.execute(params![nonce.as_slice(), *expires as i64, peer.0.to_vec()])?;
            }
        }
        let mut heads = Vec::with_capacity(entries.len());
        if let Some(key) = key {
            for entry in entries {
                heads.push(append(&tx, key, entry)?);
            }
        }
        tx.commit()?;
        Ok(heads)
    }

    /// Audit entries with their MACs, in chain order: all of them, or those about `peer`, from
    /// `since_ms`, at most `limit` (the newest ones, still in order).
    pub fn audit_entries(
        &self,
        peer: Option<HubId>,
        since_ms: u64,
        limit: Option<u64>,
    ) -> Result<Vec<(AuditEntry, [u8; 32])>, StoreError> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT * FROM (
               SELECT {ENTRY_COLUMNS}
               FROM audit_log
               WHERE (?1 IS NULL OR peer = ?1) AND at_ms >= ?2
               ORDER BY seq DESC LIMIT ?3
             ) ORDER BY seq"
        ))?;
        let rows = stmt.query_map(
            params![
                peer.map(|p| p.0.to_vec()),
                since_ms as i64,
                limit.map_or(-1, |l| l as i64)
            ],
            entry_row,
        )?;
        with_macs(rows)
    }

    /// The checkpoint the log starts from, if older entries were archived.
    pub fn audit_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        checkpoint(&self.conn)
    }

    /// The last entry of the log's oldest stretch written before `before_ms`: entries up to it
    /// may be archived (an entry of an earlier time after a later one, from a clock set back,
    /// ends the stretch). `None` if the oldest entry held is not older than that.
    pub fn audit_archivable(&self, before_ms: u64) -> Result<Option<u64>, StoreError> {
        let (first, newest): (Option<i64>, Option<i64>) =
            self.conn
                .query_row("SELECT min(seq), max(seq) FROM audit_log", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
        let (Some(first), Some(newest)) = (first, newest) else {
            return Ok(None);
        };
        let stop: Option<i64> = self.conn.query_row(
            "SELECT min(seq) FROM audit_log WHERE at_ms >= ?1",
            params![before_ms as i64],
            |r| r.get(0),
        )?;
        let last = stop.map_or(newest, |s| s - 1);
        Ok((last >= first).then_some(last as u64))
    }

    /// Removes the entries up to `checkpoint.seq` (archived elsewhere) and keeps `checkpoint` in
    /// one transaction; refused unless the entry at `checkpoint.seq` is still there with that
    /// MAC (another archive ran meanwhile). Returns how many entries were removed.
    pub fn forget_audit_through(&self, checkpoint: &Checkpoint) -> Result<u64, StoreError> {
        self.in_transaction(|store| {
            let tx = &store.conn;
            let mac: Option<Vec<u8>> = tx
                .query_row(
                    "SELECT mac FROM audit_log WHERE seq = ?1",
                    params![checkpoint.seq as i64],
                    |r| r.get(0),
                )
                .optional()?;
            if mac.as_deref() != Some(&checkpoint.mac[..]) {
                return Err(StoreError::ArchiveRaced);
            }
            let removed = tx.execute(
                "DELETE FROM audit_log WHERE seq <= ?1",
                params![checkpoint.seq as i64],
            )?;
            tx.execute(
                "INSERT INTO audit_checkpoint (id, seq, mac, signed)
                 VALUES (1, ?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, mac = excluded.mac,
                 signed = excluded.signed",
                params![
                    checkpoint.seq as i64,
                    checkpoint.mac.to_vec(),
                    checkpoint.signed
                ],
            )?;
            Ok(removed as u64)
        })
    }

    /// Gives the space of removed rows back to the file system (after an archive).
    pub fn compact(&self) -> Result<(), StoreError> {
        self.conn.execute_batch("VACUUM")?;
        // In WAL mode the vacuumed pages are in the log until it is checkpointed.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
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
            "SELECT peer, kind, decision, code, sum(coalesce(count, 1)), sum(duration_ms), sum(bytes),
                    count(*)
             FROM audit_log WHERE {filter}
             GROUP BY peer, kind, decision, code"
        ))?;
        let rows = stmt.query_map(params![since_ms as i64, peer.map(|p| p.0.to_vec())], |r| {
            Ok((
                hub_column(r, 0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)? as u64,
                r.get::<_, Option<i64>>(5)?.unwrap_or(0) as u64,
                r.get::<_, Option<i64>>(6)?.unwrap_or(0) as u64,
                r.get::<_, i64>(7)? as u64,
            ))
        })?;
        let mut counts = Vec::new();
        for row in rows {
            let (peer, kind, decision, code, count, duration_ms, bytes, entries) = row?;
            // Kinds and decisions this build does not write are not counted.
            let (Some(kind), Some(decision)) =
                (AuditKind::parse(&kind), Decision::parse(&decision))
            else {
                continue;
            };
            counts.push(AuditCount {
                peer,
                kind,
                decision,
                code,
                count,
                entries,
                duration_ms,
                bytes,
            });
        }
        Ok(counts)
    }

    /// The first entry whose stored refusal code is not the one its reason gives ([`code_of`]),
    /// by sequence number: the code column is not covered by the MAC, so `hub audit verify`
    /// checks it against the reason, which is.
    pub fn first_code_mismatch(&self) -> Result<Option<u64>, StoreError> {
        let mut stmt = self.conn.prepare(
            "SELECT seq, kind, decision, reason, code FROM audit_log
             WHERE code IS NOT NULL OR decision = 'refused' ORDER BY seq",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let entry = AuditEntry {
                kind: r.get(1)?,
                decision: r.get(2)?,
                reason: r.get(3)?,
                ..AuditEntry::default()
            };
            let stored: Option<String> = r.get(4)?;
            if stored.as_deref() != code_of(&entry) {
                return Ok(Some(r.get::<_, i64>(0)? as u64));
            }
        }
        Ok(None)
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
            "SELECT (at_ms / ?2) * ?2 AS start, sum(coalesce(count, 1)),
                    sum((decision = 'refused') * coalesce(count, 1))
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
                "SELECT seq, mac, open_problem, at_ms FROM peer_audit_heads WHERE peer = ?1",
                params![peer],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)? as u64,
                        r.get::<_, Vec<u8>>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, i64>(3)? as u64,
                    ))
                },
            )
            .optional()?;
        let (check, open) = match held {
            None => (HeadCheck::Forward, None),
            Some((seq, _, open, _)) if head.seq > seq => (HeadCheck::Forward, open),
            Some((seq, mac, open, _)) if head.seq == seq && mac == head.mac => {
                (HeadCheck::Same, open)
            }
            Some((seq, _, open, _)) if head.seq == seq => (HeadCheck::Forked, open),
            Some((_, _, open, at_ms)) if head.at_ms < at_ms => (HeadCheck::Stale, open),
            Some((seq, _, open, _)) => (HeadCheck::Backwards { held: seq }, open),
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
            HeadCheck::Again | HeadCheck::Stale => {}
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::store::migrations::MIGRATIONS;

    fn entry(kind: &str, decision: &str, reason: &str) -> AuditEntry {
        AuditEntry {
            kind: kind.into(),
            peer: Some(HubId([4; 16])),
            decision: decision.into(),
            reason: reason.into(),
            bytes: Some(0),
            ..AuditEntry::default()
        }
    }

    /// A log written before the code column (schema 6) gets its codes from its reasons when the
    /// store is opened by this build, keeps verifying, and counts by code; a code changed in the
    /// store behind the chain's back is found.
    #[test]
    fn older_entries_get_their_codes_keep_verifying_and_a_changed_code_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db");
        let key = [3u8; 32];
        let old = [
            entry(
                "call.in",
                "refused",
                "not_shared: no such app shared with this caller",
            ),
            entry("call.in", "allowed", "app_failed: it crashed"),
            entry("call.out", "refused", "busy"),
            entry("peer.fault", "refused", "views: truncated"),
            entry(
                "pairing",
                "refused",
                "tablet: invalid, used or expired pairing token",
            ),
            entry("call.in", "allowed", "ok"),
        ];
        {
            // A hub of the release before: schema 6, entries chained without a code.
            let conn = Connection::open(&path).unwrap();
            for sql in &MIGRATIONS[..6] {
                conn.execute_batch(sql).unwrap();
            }
            conn.pragma_update(None, "user_version", 6).unwrap();
            let mut prev = [0u8; 32];
            for (i, e) in old.iter().enumerate() {
                let e = AuditEntry {
                    seq: i as u64 + 1,
                    ..e.clone()
                };
                let mac = e.mac(&key, &prev);
                conn.execute(
                    "INSERT INTO audit_log (seq, at_ms, kind, peer, principal, app, tool,
                     decision, reason, duration_ms, arguments_sha256, mac, bytes)
                     VALUES (?1, 0, ?2, ?3, '', '', '', ?4, ?5, 0, NULL, ?6, 0)",
                    params![
                        e.seq as i64,
                        e.kind,
                        e.peer.map(|p| p.0.to_vec()),
                        e.decision,
                        e.reason,
                        mac.to_vec()
                    ],
                )
                .unwrap();
                prev = mac;
            }
        }
        let store = Store::open(&path).unwrap();
        let entries = store.audit_entries(None, 0, None).unwrap();
        assert!(shared_proto::audit::verify(&key, entries.iter().map(|(e, m)| (e, m))).is_ok());
        assert_eq!(store.first_code_mismatch().unwrap(), None);
        let mut codes: Vec<(AuditKind, Decision, Option<String>)> = store
            .audit_counts(None, 0)
            .unwrap()
            .into_iter()
            .map(|c| (c.kind, c.decision, c.code))
            .collect();
        codes.sort_by_key(|(k, d, c)| (k.as_str(), d.as_str(), c.clone()));
        assert_eq!(
            codes,
            vec![
                (AuditKind::CallIn, Decision::Allowed, None),
                (
                    AuditKind::CallIn,
                    Decision::Refused,
                    Some("not_shared".into())
                ),
                (AuditKind::CallOut, Decision::Refused, Some("busy".into())),
                (AuditKind::Pairing, Decision::Refused, None),
                (
                    AuditKind::PeerFault,
                    Decision::Refused,
                    Some("views".into())
                ),
            ]
        );
        // New entries are written with their code.
        store
            .append_audit(&key, entry("call.in", "refused", "replayed: seen before"))
            .unwrap();
        assert_eq!(store.first_code_mismatch().unwrap(), None);
        // The code column is not MACed: changing it is caught by comparing it with the reason.
        store
            .conn
            .execute("UPDATE audit_log SET code = 'not_shared' WHERE seq = 7", [])
            .unwrap();
        assert_eq!(store.first_code_mismatch().unwrap(), Some(7));
        store
            .conn
            .execute("UPDATE audit_log SET code = 'busy' WHERE seq = 6", [])
            .unwrap();
        assert_eq!(store.first_code_mismatch().unwrap(), Some(6));
    }

    /// Each inconsistency of a peer's heads is counted once while it goes on: a cut-back log
    /// sends older heads until it passes the one held; a consistent head ends it.
    #[test]
    fn audit_head_inconsistencies_are_counted_once_while_they_last() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("hub.db")).unwrap();
        let peer = HubId([5; 16]);
        // Each head signed later than the one before, as a peer signs them.
        let clock = std::cell::Cell::new(100);
        let head = |seq, mac: u8| {
            clock.set(clock.get() + 1);
            shared_proto::audit::Head {
                hub: peer,
                seq,
                mac: [mac; 32],
                at_ms: clock.get(),
            }
        };
        let keep = |seq, mac| store.keep_peer_audit_head(&head(seq, mac)).unwrap();
        assert_eq!(keep(6, 1), HeadCheck::Forward);
        assert_eq!(keep(6, 1), HeadCheck::Same);
        // Signed before the one held and arriving late (the relay reordered them): stale, not a
        // rollback. (Once it counted as one, 25 points for good.)
        let late = shared_proto::audit::Head {
            hub: peer,
            seq: 4,
            mac: [9; 32],
            at_ms: 50,
        };
        assert_eq!(store.keep_peer_audit_head(&late).unwrap(), HeadCheck::Stale);
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
