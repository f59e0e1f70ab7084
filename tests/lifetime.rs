#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A cluster that lives for years, through the `hub` binary: the audit log archived and checked
//! from its checkpoint.

use std::path::Path;
use std::time::Duration;

use e2e::cli::HubHome;
use e2e::{wait_until, RelayKind, RelayProcess};
use hub_client::node::home::Home;
use hub_client::node::store::AuditEntry;

/// Unix ms of a UTC date at midnight.
const JAN_2025: u64 = 1_735_689_600_000;
const JUN_2026: u64 = 1_780_272_000_000;

/// Appends `n` entries written from `from_ms` on, one a second, straight to the hub's store with
/// its key (what years of calls leave).
fn fill_audit_log(home: &Path, n: u64, from_ms: u64) {
    let home = Home::new(home);
    let store = home.store().unwrap();
    let key = home.audit_key().unwrap();
    let entries = (0..n)
        .map(|i| AuditEntry {
            at_ms: from_ms + i * 1000,
            kind: "call.in".into(),
            peer: Some(shared_proto::HubId([7; 16])),
            app: "notes".into(),
            tool: "search".into(),
            decision: "allowed".into(),
            reason: format!("call {i}: the result had 3 items"),
            duration_ms: 12,
            arguments_sha256: Some([i as u8; 32]),
            bytes: Some(400 + i % 100),
            count: Some(1),
            ..AuditEntry::default()
        })
        .collect();
    store.commit_batch(Some(&key), &[], entries, None).unwrap();
}

/// The store's size on disk, its write-ahead log included.
fn store_bytes(home: &Path) -> u64 {
    ["hub.db", "hub.db-wal"]
        .iter()
        .filter_map(|f| std::fs::metadata(home.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

#[test]
fn half_of_a_long_audit_log_is_archived_and_both_halves_verify() {
    let dir = tempfile::tempdir().unwrap();
    let hub = HubHome::new(dir.path().join("desk"));
    hub.create_cluster("desk", "ws://127.0.0.1:9");
    fill_audit_log(&hub.dir, 50_000, JAN_2025);
    fill_audit_log(&hub.dir, 50_000, JUN_2026);
    let full = hub.ok(&["audit", "verify"]);
    assert!(full.contains("verifies: 100000 entries"), "{full}");
    let before = store_bytes(&hub.dir);

    let archive = dir.path().join("2025.jsonl");
    let archive_arg = archive.to_str().unwrap();
    let out = hub.ok(&[
        "audit",
        "archive",
        "--before",
        "2026-01-01",
        "--out",
        archive_arg,
    ]);
    assert!(out.contains("archived 50000 entries (1 to 50000)"), "{out}");
    // The store shrank by about the half it gave up.
    let after = store_bytes(&hub.dir);
    assert!(
        after < before * 2 / 3,
        "{before} bytes before, {after} after"
    );
    let rest = hub.ok(&["audit", "verify"]);
    assert!(
        rest.contains("from its checkpoint at entry 50000") && rest.contains("50001 to 100000"),
        "{rest}"
    );
    let alone = hub.ok(&["audit", "verify", "--archive", archive_arg]);
    assert!(alone.contains("entries 1 to 50000"), "{alone}");
    let text = std::fs::read_to_string(&archive).unwrap();
    assert_eq!(text.lines().count(), 50_001);

    // An archive is never written over.
    let again = hub.fails(&[
        "audit",
        "archive",
        "--before",
        "2026-07-01",
        "--out",
        archive_arg,
    ]);
    assert!(again.contains("exists"), "{again}");

    // A changed archived entry is found, by its place.
    let changed: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == 1234 {
                l.replace("the result had 3 items", "the result had 4 items")
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert_ne!(changed.join("\n") + "\n", text);
    let forged = dir.path().join("forged.jsonl");
    std::fs::write(&forged, changed.join("\n") + "\n").unwrap();
    let refused = hub.fails(&["audit", "verify", "--archive", forged.to_str().unwrap()]);
    assert!(refused.contains("entry 1234"), "{refused}");
    // So is an entry dropped from it.
    let mut dropped: Vec<&str> = text.lines().collect();
    dropped.remove(20_000);
    std::fs::write(&forged, dropped.join("\n") + "\n").unwrap();
    let refused = hub.fails(&["audit", "verify", "--archive", forged.to_str().unwrap()]);
    assert!(
        refused.contains("expected sequence number 20000"),
        "{refused}"
    );

    // The rest archived too: the log is empty, and goes on from its checkpoint.
    let second = dir.path().join("2026.jsonl");
    let out = hub.ok(&[
        "audit",
        "archive",
        "--before",
        "2026-07-01",
        "--out",
        second.to_str().unwrap(),
    ]);
    assert!(out.contains("(50001 to 100000)"), "{out}");
    let alone = hub.ok(&["audit", "verify", "--archive", second.to_str().unwrap()]);
    assert!(alone.contains("entries 50001 to 100000"), "{alone}");
    hub.ok(&["invite"]);
    let list = hub.ok(&["audit", "list", "--json"]);
    let seqs: Vec<u64> = list
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seqs, [100_001]);
    let rest = hub.ok(&["audit", "verify"]);
    assert!(rest.contains("100001 to 100001"), "{rest}");

    // A checkpoint changed behind the hub's back is refused.
    hub.db()
        .execute(
            "UPDATE audit_checkpoint SET signed = zeroblob(length(signed))",
            [],
        )
        .unwrap();
    let refused = hub.fails(&["audit", "verify"]);
    assert!(refused.contains("checkpoint at entry 100000"), "{refused}");
}

#[test]
fn a_running_hub_archives_what_is_past_its_retention() {
    let relay = RelayProcess::start(RelayKind::Native);
    let dir = tempfile::tempdir().unwrap();
    let hub = HubHome::new(dir.path().join("desk"));
    hub.create_cluster("desk", &relay.url());
    fill_audit_log(&hub.dir, 10, JAN_2025);
    let _run = hub.run_with(&["--audit-retention", "400d"]);
    let archives = hub.dir.join("audit-archive");
    wait_until("the old entries archived", Duration::from_secs(20), || {
        std::fs::read_dir(&archives).is_ok_and(|mut d| d.next().is_some())
    });
    let file = std::fs::read_dir(&archives)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let alone = hub.ok(&["audit", "verify", "--archive", file.to_str().unwrap()]);
    assert!(alone.contains("entries 1 to 10"), "{alone}");
    let rest = hub.ok(&["audit", "verify"]);
    assert!(rest.contains("from its checkpoint at entry 10"), "{rest}");
}
