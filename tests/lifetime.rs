#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A cluster that lives for years, through the `hub` binary: the audit log archived and checked
//! from its checkpoint; the founder's machine lost, and the cluster's admin restored from a
//! backup.

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

/// `hub` joins with a token `issuer` makes (`invite` with `invite_args`); what `join` printed.
fn join(issuer: &HubHome, hub: &HubHome, name: &str, invite_args: &[&str]) -> String {
    let mut args = vec!["invite"];
    args.extend_from_slice(invite_args);
    let token = issuer.ok(&args);
    hub.ok(&["join", token.trim(), "--name", name])
}

/// Whether `from` pings `to` once and hears the reply.
fn replies(from: &HubHome, to: &str) -> bool {
    let out = from.output(&["ping", to, "--count", "1"]);
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("reply from")
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
    println!("the store: {before} bytes before the archive, {after} after");
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
    assert!(rest.contains("checkpoint at entry 10"), "{rest}");
}

/// Copies a home directory (what a thief of the machine holds).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn a_lost_founder_is_replaced_from_its_backup_and_cut_off() {
    let relay = RelayProcess::start(RelayKind::Workerd);
    let dir = tempfile::tempdir().unwrap();
    let home = |name: &str| HubHome::new(dir.path().join(name));
    let desk = home("desk");
    desk.create_cluster("desk", &relay.url());
    let desk_id = desk.id();
    let desk_run = desk.run();
    let laptop = home("laptop");
    join(&desk, &laptop, "laptop", &[]);
    let _laptop_run = laptop.run();

    let pass = dir.path().join("pass");
    std::fs::write(&pass, "correct horse battery staple\n").unwrap();
    let weak = dir.path().join("weak");
    std::fs::write(&weak, "hunter2\n").unwrap();
    let backup = dir.path().join("cluster.age");
    let backup_arg = backup.to_str().unwrap();
    let stderr = |o: std::process::Output| {
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let backup_with = |pass: &Path| {
        desk.output(&[
            "cluster",
            "backup",
            "--out",
            backup_arg,
            "--passphrase-file",
            pass.to_str().unwrap(),
        ])
    };
    let refused = stderr(backup_with(&weak));
    assert!(refused.contains("at least 12 characters"), "{refused}");
    assert!(!backup.exists());
    let out = String::from_utf8_lossy(&backup_with(&pass).stdout).into_owned();
    assert!(out.contains("wrote the backup of cluster"), "{out}");
    let bytes = std::fs::read(&backup).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n-> scrypt "));
    // The CA key is not in it in the clear.
    let ca_key: String = std::fs::read(desk.dir.join("ca.key"))
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!String::from_utf8_lossy(&bytes).contains(&ca_key));
    let again = stderr(backup_with(&pass));
    assert!(again.contains("never written over"), "{again}");
    // After the backup, the founder revokes a hub: the relay holds a list newer than the backup's.
    let tablet = home("tablet");
    join(&desk, &tablet, "tablet", &[]);
    let out = desk.ok(&["peers", "revoke", &tablet.id()]);
    assert!(out.contains("revocation list version 1"), "{out}");

    // The founder's machine is lost: a copy of it is in other hands.
    let stolen = home("stolen");
    drop(desk_run);
    copy_dir(&desk.dir, &stolen.dir);
    std::fs::remove_dir_all(&desk.dir).unwrap();

    let desk2 = home("desk2");
    let restore = |pass: &Path, file: &Path| {
        desk2.output(&[
            "cluster",
            "restore",
            file.to_str().unwrap(),
            "--name",
            "desk2",
            "--passphrase-file",
            pass.to_str().unwrap(),
        ])
    };
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "correct horse battery stapler\n").unwrap();
    let refused = stderr(restore(&wrong, &backup));
    assert!(refused.contains("wrong passphrase"), "{refused}");
    let mut flipped = bytes.clone();
    let at = flipped.len() - 20;
    flipped[at] ^= 1;
    let damaged = dir.path().join("damaged.age");
    std::fs::write(&damaged, &flipped).unwrap();
    let refused = stderr(restore(&pass, &damaged));
    assert!(refused.contains("the backup is damaged"), "{refused}");
    assert!(
        !desk2.dir.join("hub.der").exists(),
        "a refused restore leaves no hub"
    );

    let out = restore(&pass, &backup);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("made by {desk_id}")), "{text}");
    let desk2_run = desk2.run();
    // The restored admin pairs a new hub, which the laptop reaches.
    let phone = home("phone");
    let joined = join(&desk2, &phone, "phone", &[]);
    assert!(joined.contains("desk2"), "{joined}");
    let _phone_run = phone.run();
    let phone_id = phone.id();
    wait_until(
        "the phone answering the laptop",
        Duration::from_secs(15),
        || replies(&laptop, &phone_id),
    );
    // It revokes the lost machine, numbering after the relay's newer list: the copy is refused.
    let out = desk2.ok(&["peers", "revoke", &desk_id, "--reason", "lost"]);
    assert!(out.contains("revocation list version 2"), "{out}");
    let refused = stolen.fails(&["ping", &laptop.id(), "--count", "1"]);
    assert!(refused.contains("4015"), "{refused}");
    drop(desk2_run);
}

/// A hub's certificate as `hub cert show` prints it: fingerprint and end (the printed line).
fn cert_of(hub: &HubHome) -> (String, String) {
    let show = hub.ok(&["cert", "show"]);
    let field = |name: &str| {
        show.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in {show}"))
            .trim()
            .to_owned()
    };
    (field("fingerprint:"), field("not after:"))
}

/// Certificates valid for one minute: every hub renews its own, on its own, again and again
/// (the founder signing its own, the others asking the founder over their sessions), while
/// pings go on through the relay without one refused; a hub restarted after its first
/// certificate ended logs in with its renewed one.
fn certificates_of_a_minute_renew_on_their_own(kind: RelayKind) {
    let relay = RelayProcess::start(kind);
    let dir = tempfile::tempdir().unwrap();
    let home = |name: &str| HubHome::new(dir.path().join(name));
    let desk = home("desk");
    desk.ok(&[
        "cluster",
        "create",
        "--name",
        "desk",
        "--relay",
        &relay.url(),
        "--validity-minutes",
        "1",
    ]);
    let desk_run = desk.run_with(&["--cert-validity-minutes", "1"]);
    let (laptop, phone) = (home("laptop"), home("phone"));
    join(&desk, &laptop, "laptop", &[]);
    join(&desk, &phone, "phone", &[]);
    // An app on the laptop that the others call through it all.
    laptop.ok(&[
        "apps",
        "add",
        "tools",
        "--command",
        env!("CARGO_BIN_EXE_test-app"),
    ]);
    laptop.ok(&["apps", "share", "tools", "--cluster"]);
    let mut laptop_run = laptop.run();
    let phone_run = phone.run();
    let first = [cert_of(&desk), cert_of(&laptop), cert_of(&phone)];
    let started = std::time::Instant::now();

    // On their own: pings both ways through the relay, and calls of the laptop's app (the desk
    // writes a note, the phone reads it back), until the first certificates have ended (60 s)
    // and each hub renewed on its own twice (about every 40 s); every one is answered.
    let (laptop_id, phone_id, desk_id) = (laptop.id(), phone.id(), desk.id());
    let renewals = || {
        let log = desk.ok(&["audit", "list", "--limit", "500"]);
        let count = |pred: &dyn Fn(&str) -> bool| {
            log.lines()
                .filter(|l| l.contains("cert.renew") && pred(l))
                .count()
        };
        let issued = |id: &str| count(&|l| l.contains(&id[..8]) && l.contains("issued a renewed"));
        [
            count(&|l| l.contains("this hub's certificate renewed")),
            // The laptop's on-demand renewal is one of these.
            issued(&laptop_id).saturating_sub(1),
            issued(&phone_id),
        ]
    };
    let mut pings = 0;
    let mut on_demand = false;
    loop {
        for (from, to) in [
            (&laptop, &phone_id),
            (&phone, &desk_id),
            (&desk, &laptop_id),
        ] {
            let out = from.output(&["ping", to, "--count", "1"]);
            assert!(
                out.status.success(),
                "ping {to}: {}\n--- desk\n{}\n--- laptop\n{}\n--- phone\n{}",
                String::from_utf8_lossy(&out.stderr),
                desk_run.log(),
                laptop_run.log(),
                phone_run.log()
            );
            pings += 1;
        }
        let note = format!("round {pings}");
        let args = serde_json::json!({ "text": note }).to_string();
        let laptop_ref = laptop_id.as_str();
        desk.ok(&[
            "apps",
            "call",
            laptop_ref,
            "tools",
            "note_write",
            "--args",
            &args,
        ]);
        let read = phone.ok(&["apps", "call", laptop_ref, "tools", "note_read"]);
        assert!(read.contains(&note), "{read}");
        if !on_demand && started.elapsed() > Duration::from_secs(5) {
            // On demand, through the running hub: the laptop asks the desk now.
            let out = laptop.ok(&["cert", "renew"]);
            assert!(out.contains("renewed: certificate"), "{out}");
            assert_ne!(cert_of(&laptop).0, first[1].0);
            on_demand = true;
        }
        let past_first = started.elapsed() > Duration::from_secs(65);
        if past_first && renewals().iter().all(|n| *n >= 2) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "renewals by the founder, for the laptop, for the phone: {:?}\n{}",
            renewals(),
            desk.ok(&["audit", "list", "--limit", "500"])
        );
        // Paces the pings (a load over the minutes the renewals take), not a wait for them.
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(pings > 30, "{pings} pings");
    let now = [cert_of(&desk), cert_of(&laptop), cert_of(&phone)];
    for (before, after) in first.iter().zip(&now) {
        assert_ne!(before.0, after.0, "renewed");
        assert_ne!(before.1, after.1, "later");
    }
    // Restarted after its first certificate ended: the relay admits it with the renewed one.
    laptop_run.signal("TERM");
    assert!(laptop_run.wait_exit());
    let _laptop_run = laptop.run();
    let out = laptop.ok(&["ping", &desk_id, "--count", "1"]);
    assert!(out.contains("reply from"), "{out}");
    let status = laptop.ok(&["status"]);
    assert!(status.contains("certificate:  valid until"), "{status}");
    assert!(!status.contains("WARNING"), "{status}");
}

#[test]
fn certificates_of_a_minute_renew_on_their_own_through_workerd() {
    certificates_of_a_minute_renew_on_their_own(RelayKind::Workerd);
}

#[test]
fn certificates_of_a_minute_renew_on_their_own_through_hub_relay() {
    certificates_of_a_minute_renew_on_their_own(RelayKind::Native);
}

#[test]
fn a_trust_level_set_by_the_founder_reaches_the_peers_certificate() {
    let relay = RelayProcess::start(RelayKind::Native);
    let dir = tempfile::tempdir().unwrap();
    let desk = HubHome::new(dir.path().join("desk"));
    desk.create_cluster("desk", &relay.url());
    let _desk_run = desk.run();
    let laptop = HubHome::new(dir.path().join("laptop"));
    join(&desk, &laptop, "laptop", &["--roles", "laptop"]);
    let _laptop_run = laptop.run();
    let (laptop_id, desk_id) = (laptop.id(), desk.id());
    wait_until("a session between them", Duration::from_secs(15), || {
        desk.output(&["ping", &laptop_id, "--count", "1"])
            .status
            .success()
    });
    let first = cert_of(&laptop);

    // Refused: an unknown peer; a hub without the CA key.
    let unknown = desk.fails(&["peers", "set-trust", &"ab".repeat(16), "read_only"]);
    assert!(unknown.contains("no active peer"), "{unknown}");
    let not_admin = laptop.fails(&["peers", "set-trust", &desk_id, "read_only"]);
    assert!(not_admin.contains("founder"), "{not_admin}");

    let out = desk.ok(&[
        "peers",
        "set-trust",
        &laptop_id,
        "read_only",
        "--roles",
        "phone,spare",
    ]);
    assert!(out.contains("is read_only with roles phone,spare"), "{out}");
    // The laptop hears of it from the manifest, and renews under the new terms.
    let show = laptop.ok_when(&["cert", "show"], "a read_only certificate", |s| {
        s.contains("trust level:  read_only")
    });
    assert!(show.contains("roles:        phone, spare"), "{show}");
    assert_ne!(cert_of(&laptop).0, first.0);
    let log = desk.ok(&["audit", "list"]);
    assert!(
        log.contains("peer.set_trust")
            && log.contains("read_only, roles phone,spare (was agent_dispatch, roles laptop)"),
        "{log}"
    );
    assert!(
        log.contains("issued a renewed certificate (read_only, phone,spare)"),
        "{log}"
    );
    // Their session went on across the renewal.
    let out = laptop.ok(&["ping", &desk_id, "--count", "1"]);
    assert!(out.contains("reply from"), "{out}");
}

/// A second admin (issue 30, item 2): the founder makes the laptop an admin by its roles; with
/// the founder away, the admin pairs a new hub (whose certificate chains through it), renews a
/// hub's certificate and revokes a hub; back, the founder revokes the admin, which cuts off the
/// admin and the hub it certified, and the admin's later list is refused.
fn a_second_admin_pairs_renews_and_revokes_while_the_founder_is_away(kind: RelayKind) {
    let relay = RelayProcess::start(kind);
    let dir = tempfile::tempdir().unwrap();
    let home = |name: &str| HubHome::new(dir.path().join(name));
    let desk = home("desk");
    desk.create_cluster("desk", &relay.url());
    let desk_run = desk.run();
    let (laptop, kiosk) = (home("laptop"), home("kiosk"));
    join(&desk, &laptop, "laptop", &[]);
    join(&desk, &kiosk, "kiosk", &["--trust-level", "read_only"]);
    let laptop_run = laptop.run();
    let kiosk_run = kiosk.run();
    let (desk_id, laptop_id, kiosk_id) = (desk.id(), laptop.id(), kiosk.id());

    wait_until("sessions with the founder", Duration::from_secs(15), || {
        [&laptop_id, &kiosk_id]
            .iter()
            .all(|id| desk.output(&["ping", id, "--count", "1"]).status.success())
    });

    // Not an admin yet: the laptop issues no tokens.
    let refused = laptop.fails(&["invite"]);
    assert!(refused.contains("not an admin"), "{refused}");
    // The founder gives it the admin role: its renewed certificate is an admin certificate.
    desk.ok(&["peers", "set-trust", &laptop_id, "full", "--roles", "admin"]);
    let show = laptop.ok_when(&["cert", "show"], "an admin certificate", |s| {
        s.contains("admin:        yes")
    });
    assert!(show.contains("issued by:    the cluster CA"), "{show}");
    // The kiosk holds the laptop's new certificate (its session was rekeyed with it).
    wait_until(
        "the kiosk knowing the laptop as an admin",
        Duration::from_secs(15),
        || {
            kiosk
                .output(&["ping", &laptop_id, "--count", "1"])
                .status
                .success()
                && kiosk
                    .ok(&["peers", "show", &laptop_id])
                    .contains("\"admin\"")
        },
    );

    // The founder goes away.
    drop(desk_run);

    // The admin pairs a new hub: its certificate chains to the CA through the admin's.
    let phone = home("phone");
    let joined = join(&laptop, &phone, "phone", &[]);
    assert!(joined.contains("laptop"), "{joined}");
    let phone_run = phone.run();
    let phone_id = phone.id();
    let show = phone.ok(&["cert", "show"]);
    assert!(
        show.contains(&format!("issued by:    admin hub {laptop_id}")),
        "{show}"
    );
    // The relay admitted it, and a hub the founder paired takes its chain in a handshake.
    wait_until(
        "the kiosk reaching the phone",
        Duration::from_secs(15),
        || replies(&kiosk, &phone_id),
    );
    // An admin makes no admins, and revokes neither the founder nor an admin.
    let refused = laptop.fails(&["invite", "--roles", "admin"]);
    assert!(
        refused.contains("only the founder makes founders and admins"),
        "{refused}"
    );
    let refused = laptop.fails(&["peers", "revoke", &desk_id]);
    assert!(
        refused.contains("only the founder revokes the founder or an admin"),
        "{refused}"
    );

    // The admin renews the kiosk's certificate (the founder, asked first, is away).
    let before = cert_of(&kiosk);
    kiosk.ok(&["cert", "renew"]);
    assert_ne!(cert_of(&kiosk).0, before.0);
    let show = kiosk.ok(&["cert", "show"]);
    assert!(
        show.contains(&format!("issued by:    admin hub {laptop_id}")),
        "{show}"
    );
    assert!(show.contains("trust level:  read_only"), "{show}");

    // The admin revokes the kiosk: the relay cuts it off.
    let out = laptop.ok(&["peers", "revoke", &kiosk_id]);
    assert!(out.contains("revocation list version 1"), "{out}");
    drop(kiosk_run);
    let refused = kiosk.fails(&["ping", &phone_id, "--count", "1"]);
    assert!(refused.contains("4015"), "{refused}");

    // The founder comes back, takes the admin's list from the relay, and reaches the phone.
    let desk_run = desk.run();
    wait_until(
        "the founder reaching the phone",
        Duration::from_secs(20),
        || replies(&desk, &phone_id),
    );
    // It revokes the admin, numbering after the admin's list.
    let out = desk.ok(&["peers", "revoke", &laptop_id, "--reason", "admin retired"]);
    assert!(out.contains("revocation list version 2"), "{out}");
    // The admin is cut off, and so is the hub whose certificate it issued.
    drop(laptop_run);
    drop(phone_run);
    let refused = phone.fails(&["ping", &desk_id, "--count", "1"]);
    assert!(refused.contains("4015"), "{refused}");
    // The admin's later revocation list is refused: it signs one, and the relay will not take
    // it (nor its login).
    let refused = laptop.fails(&["peers", "revoke", &phone_id]);
    assert!(refused.contains("4015"), "{refused}");
    drop(desk_run);
}

#[test]
fn a_second_admin_pairs_renews_and_revokes_through_workerd() {
    a_second_admin_pairs_renews_and_revokes_while_the_founder_is_away(RelayKind::Workerd);
}

#[test]
fn a_second_admin_pairs_renews_and_revokes_through_hub_relay() {
    a_second_admin_pairs_renews_and_revokes_while_the_founder_is_away(RelayKind::Native);
}

/// The cluster this home's `ca.pub` names.
fn cluster_of(hub: &HubHome) -> String {
    Home::new(&hub.dir).cluster_id().unwrap().to_string()
}

/// CA key rotation (issue 30, item 4): three hubs online and one offline; the founder, stopped,
/// rotates; the two others online follow within seconds and calls go on in the new room, the
/// offline one follows when it starts; after the grace period the old room refuses a hub with
/// the old CA's certificate (4022), and the new room never took one (4012).
fn a_rotated_ca_key_moves_the_cluster(kind: RelayKind) {
    let relay = RelayProcess::start(kind);
    let dir = tempfile::tempdir().unwrap();
    let home = |name: &str| HubHome::new(dir.path().join(name));
    let desk = home("desk");
    desk.create_cluster("desk", &relay.url());
    let desk_run = desk.run();
    let (laptop, kiosk, tablet) = (home("laptop"), home("kiosk"), home("tablet"));
    join(&desk, &laptop, "laptop", &["--roles", "laptop"]);
    join(&desk, &kiosk, "kiosk", &["--trust-level", "read_only"]);
    join(&desk, &tablet, "tablet", &[]);
    let laptop_run = laptop.run();
    let kiosk_run = kiosk.run();
    let tablet_run = tablet.run();
    let (desk_id, laptop_id, kiosk_id, tablet_id) =
        (desk.id(), laptop.id(), kiosk.id(), tablet.id());
    wait_until("sessions with the founder", Duration::from_secs(15), || {
        [&laptop_id, &kiosk_id, &tablet_id]
            .iter()
            .all(|id| desk.output(&["ping", id, "--count", "1"]).status.success())
    });
    // The tablet goes offline; a copy of it as it was is kept.
    drop(tablet_run);
    let stale = home("stale");
    copy_dir(&tablet.dir, &stale.dir);
    let old = cluster_of(&desk);

    // Rotation needs the founder stopped.
    let refused = desk.fails(&["cluster", "rotate"]);
    assert!(refused.contains("is running"), "{refused}");
    drop(desk_run);
    let not_founder = laptop.fails(&["cluster", "rotate"]);
    assert!(not_founder.contains("CA key"), "{not_founder}");
    let out = desk.ok(&["cluster", "rotate", "--grace", "30s"]);
    let new = cluster_of(&desk);
    assert_ne!(new, old);
    assert!(
        out.contains(&format!("cluster {old} moved to cluster {new}")),
        "{out}"
    );
    assert!(out.contains("members that move on their own: 4"), "{out}");
    assert!(!desk.dir.join("rotation.key").exists());
    let desk_run = desk.run();

    // The hubs online follow on their own, into the new room, and their calls go on there.
    wait_until(
        "the laptop and the kiosk in the new cluster",
        Duration::from_secs(20),
        || cluster_of(&laptop) == new && cluster_of(&kiosk) == new,
    );
    // (The kiosk's calls to the founder went unanswered while the hub kept what it knew of
    // the old cluster's sessions.)
    wait_until("calls in the new cluster", Duration::from_secs(20), || {
        replies(&laptop, &kiosk_id) && replies(&kiosk, &desk_id) && replies(&desk, &laptop_id)
    });
    // Same hubs, same terms, certificates from the new key.
    let show = kiosk.ok(&["cert", "show"]);
    assert!(show.contains(&format!("cluster:      {new}")), "{show}");
    assert!(show.contains("trust level:  read_only"), "{show}");
    assert!(laptop
        .ok(&["cert", "show"])
        .contains("roles:        laptop"));
    let log = laptop.ok(&["audit", "list"]);
    assert!(log.contains("cluster.move"), "{log}");

    // The tablet was offline: it follows when it starts, within the grace period.
    let _tablet_run = tablet.run();
    wait_until(
        "the tablet in the new cluster",
        Duration::from_secs(20),
        || cluster_of(&tablet) == new && replies(&tablet, &desk_id),
    );

    // After the grace period, the old room refuses the old CA's certificate, naming the new
    // cluster; the new room never admits one.
    wait_until(
        "the old room refusing logins",
        Duration::from_secs(60),
        || {
            let out = stale.output(&["ping", &desk_id, "--count", "1", "--timeout", "3"]);
            String::from_utf8_lossy(&out.stderr).contains("4022")
        },
    );
    let refused = stale.fails(&["ping", &desk_id, "--count", "1"]);
    assert!(refused.contains(&new), "{refused}");
    std::fs::copy(desk.dir.join("ca.pub"), stale.dir.join("ca.pub")).unwrap();
    let refused = stale.fails(&["ping", &desk_id, "--count", "1"]);
    assert!(refused.contains("4012"), "{refused}");
    drop((laptop_run, kiosk_run, desk_run));
}

#[test]
fn a_rotated_ca_key_moves_the_cluster_through_workerd() {
    a_rotated_ca_key_moves_the_cluster(RelayKind::Workerd);
}

#[test]
fn a_rotated_ca_key_moves_the_cluster_through_hub_relay() {
    a_rotated_ca_key_moves_the_cluster(RelayKind::Native);
}
