//! The audit log's costs: appending an entry (each its own IMMEDIATE transaction, as a call
//! appends it, `synchronous=FULL`), and `hub audit verify` over 1,000,000 entries (written in
//! one transaction here, to build the log quickly). Run with `scripts/bench-audit`.
// A benchmark measures wall-clock time and panics on setup failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::Instant;

use e2e::env_number;
use hub_client::node::home::Home;
use hub_client::node::store::{AuditEntry, Store};
use shared_proto::HubId;

fn entry(i: u64) -> AuditEntry {
    AuditEntry {
        at_ms: 1_800_000_000_000 + i,
        kind: "call.in".into(),
        peer: Some(HubId([(i % 7) as u8; 16])),
        principal: "ann".into(),
        app: "notes".into(),
        tool: "read_file".into(),
        decision: "allowed".into(),
        reason: "ok".into(),
        duration_ms: 3,
        arguments_sha256: Some([(i % 251) as u8; 32]),
        bytes: Some(200),
        ..AuditEntry::default()
    }
}

fn main() {
    let appends: u64 = env_number("AUDIT_APPENDS", 2_000);
    let total: u64 = env_number("AUDIT_ENTRIES", 1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let home = Home::new(dir.path());
    let key = home.audit_key().unwrap();
    let store = Store::open(&dir.path().join("hub.db")).unwrap();

    let started = Instant::now();
    for i in 0..appends {
        store.append_audit(&key, entry(i)).unwrap();
    }
    let took = started.elapsed();
    println!(
        "append, one transaction each: {appends} entries in {:.2} s = {:.0} entries/s ({:.3} ms each)",
        took.as_secs_f64(),
        appends as f64 / took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / appends as f64
    );

    // The rest written directly, in one transaction, chained the same way.
    let started = Instant::now();
    let (mut seq, mut prev) = store.audit_head().unwrap();
    let mut db = rusqlite::Connection::open(dir.path().join("hub.db")).unwrap();
    let tx = db.transaction().unwrap();
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO audit_log (seq, at_ms, kind, peer, principal, app, tool, decision,
                 reason, duration_ms, arguments_sha256, mac, bytes)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            )
            .unwrap();
        while seq < total {
            seq += 1;
            let e = AuditEntry { seq, ..entry(seq) };
            let mac = e.mac(&key, &prev);
            insert
                .execute(rusqlite::params![
                    seq as i64,
                    e.at_ms as i64,
                    e.kind,
                    e.peer.map(|p| p.0.to_vec()),
                    e.principal,
                    e.app,
                    e.tool,
                    e.decision,
                    e.reason,
                    e.duration_ms as i64,
                    e.arguments_sha256.map(|h| h.to_vec()),
                    mac.to_vec(),
                    e.bytes.map(|b| b as i64),
                ])
                .unwrap();
            prev = mac;
        }
    }
    tx.commit().unwrap();
    println!(
        "(log filled to {total} entries in {:.2} s)",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let head = hub_client::node::audit::verify_log(&home, &store)
        .unwrap()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(head.0, total);
    println!(
        "verify: {total} entries in {:.2} s = {:.0} entries/s",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
}
