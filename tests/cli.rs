#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End to end through the `hub` binary: several hub processes, each with its own home and
//! SQLite store, against the relay in real workerd (and `hub relay` where noted). Covers the
//! product flows (create, invite, join, peers, status, suspend/resume, revoke), pairing tokens,
//! the admin API, and a hub killed in the middle of pairing.

use std::time::Duration;

use e2e::cli::{signal, unread_bytes, wait_for_unread_bytes, HubHome, RunningHub};
use e2e::{RelayKind, RelayProcess};
use sha2::{Digest, Sha256};
use shared_proto::session::pairing::PairingToken;

/// A relay and a founder hub (created, running).
struct Cluster {
    relay: RelayProcess,
    dir: tempfile::TempDir,
    founder: HubHome,
    founder_run: RunningHub,
}

impl Cluster {
    fn start(kind: RelayKind) -> Self {
        let relay = RelayProcess::start(kind);
        let dir = tempfile::tempdir().unwrap();
        let founder = HubHome::new(dir.path().join("desk"));
        founder.create_cluster("desk", &relay.url());
        let founder_run = founder.run();
        Cluster {
            relay,
            dir,
            founder,
            founder_run,
        }
    }

    fn home(&self, name: &str) -> HubHome {
        HubHome::new(self.dir.path().join(name))
    }

    fn invite(&self, args: &[&str]) -> String {
        let mut all = vec!["invite"];
        all.extend_from_slice(args);
        self.founder.ok(&all).trim().to_owned()
    }

    /// A new hub joined with a fresh token.
    fn join(&self, name: &str) -> HubHome {
        let home = self.home(name);
        let token = self.invite(&[]);
        let out = home.ok(&["join", &token, "--name", name]);
        assert!(out.contains("joined cluster"), "{out}");
        home
    }
}

fn row<'a>(table: &'a str, id: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(id))
        .unwrap_or_else(|| panic!("no row for {id} in:\n{table}"))
}

#[test]
fn create_invite_join_list_ping_suspend_resume_and_revoke_through_workerd() {
    let c = Cluster::start(RelayKind::Workerd);
    let founder_id = c.founder.id();

    let token = c.invite(&["--trust-level", "full", "--roles", "laptop"]);
    assert!(token.starts_with("hubpair1_"));
    let laptop = c.home("laptop");
    let out = laptop.ok(&["join", &token, "--name", "laptop"]);
    assert!(
        out.contains("joined cluster") && out.contains("trust level full"),
        "{out}"
    );
    assert!(
        out.contains(&format!("paired with {founder_id} (desk)")),
        "{out}"
    );
    assert!(out.contains("the relay admits this hub"), "{out}");
    let laptop_id = laptop.id();
    let laptop_run = laptop.run();

    // Both list each other, online.
    let peers = c.founder.ok_when(&["peers"], "laptop online", |p| {
        row(p, &laptop_id).contains("yes")
    });
    let r = row(&peers, &laptop_id);
    assert!(r.contains("laptop") && r.contains("full"), "{peers}");
    let peers = laptop.ok(&["peers"]);
    assert!(row(&peers, &founder_id).contains("desk"), "{peers}");

    // Status: relay connected with a round trip, one peer online, the manifest lists two.
    let status = c.founder.ok(&["status"]);
    assert!(status.contains("connected, round trip"), "{status}");
    assert!(status.contains("peers online: 1"), "{status}");
    assert!(status.contains("epoch 2"), "{status}");
    // These hubs run with `HUB_NO_LAN=1` (tests/support/cli.rs): no LAN path, and it says so;
    // on a LAN path every online peer's path would be `lan` here (one host).
    assert!(status.contains("lan:          off"), "{status}");
    let peers = c.founder.ok(&["peers"]);
    assert!(row(&peers, &laptop_id).contains("relay"), "{peers}");
    let status = laptop.ok(&["status"]);
    assert!(status.contains("epoch 2"), "{status}");

    // A ping crosses the encrypted session, both ways.
    let out = c.founder.ok(&["ping", &laptop_id, "--count", "2"]);
    assert_eq!(out.matches("reply from").count(), 2, "{out}");
    laptop.ok(&["ping", &founder_id, "--count", "1"]);

    // The laptop suspends the founder: the founder's calls are refused; resume restores them.
    laptop.ok(&["peers", "suspend", &founder_id]);
    assert!(row(&laptop.ok(&["peers"]), &founder_id).contains("suspended"));
    let err = c.founder.fails(&["ping", &laptop_id, "--count", "1"]);
    assert!(err.contains("suspended"), "{err}");
    laptop.ok(&["peers", "resume", &founder_id]);
    c.founder.ok(&["ping", &laptop_id, "--count", "1"]);

    // Revocation: the running laptop is cut off at once and exits; it cannot come back.
    let mut laptop_run = laptop_run;
    let out = c
        .founder
        .ok(&["peers", "revoke", &laptop_id, "--reason", "lost"]);
    assert!(out.contains("revocation list version 1"), "{out}");
    assert!(!laptop_run.wait_exit(), "a revoked hub stops with an error");
    assert!(laptop_run.log().contains("4015"), "{}", laptop_run.log());
    let err = laptop.fails(&["ping", &founder_id, "--count", "1"]);
    assert!(err.contains("4015"), "{err}");
    // The founder no longer lists it, but keeps the record for audit.
    assert!(!c.founder.ok(&["peers"]).contains(&laptop_id));
    let kept = c.founder_run.request(
        "GET",
        &format!("/api/federation/peers/{laptop_id}"),
        Some(&c.founder_run.cli_token()),
        None,
    );
    assert_eq!(kept.status, 200);
    assert!(kept.json["revoked_at"].is_u64(), "{}", kept.json);
    drop(c.relay);
}

#[test]
fn a_third_hub_and_offline_commands() {
    let mut c = Cluster::start(RelayKind::Native);
    let phone = c.join("phone");
    let tablet = c.join("tablet");
    // Not running: the CLI works on the store and says so.
    let out = phone.output(&["peers"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));
    let status = tablet.ok(&["status"]);
    assert!(status.contains("running:      no"), "{status}");
    assert!(status.contains("epoch 3"), "{status}");
    // The founder lists both; a session brings the other hub into each one's list.
    let peers = c.founder.ok(&["peers"]);
    assert!(
        peers.contains("phone") && peers.contains("tablet"),
        "{peers}"
    );
    let mut phone_run = phone.run();
    let mut tablet_run = tablet.run();
    let status = phone.ok(&["status"]);
    assert!(status.contains("epoch 2"), "{status}");
    phone.ok(&["ping", &tablet.id(), "--count", "1"]);
    assert!(phone.ok(&["peers"]).contains("tablet"));
    // The session passed the tablet's newer manifest (epoch 3, both listed) to the phone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !phone.ok(&["status"]).contains("epoch 3") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            phone.ok(&["status"])
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(tablet.ok(&["peers"]).contains("phone"));
    // A one-shot relay connection for a running hub is refused (it would replace the hub's own).
    let err = phone.fails(&["debug", "send", "--to", &tablet.id(), "hi"]);
    assert!(err.contains("this hub is running"), "{err}");
    // SIGTERM: a clean exit that withdraws the CLI's access files and token.
    phone_run.signal("TERM");
    assert!(phone_run.wait_exit(), "{}", phone_run.log());
    assert!(!phone.dir.join("api.url").exists() && !phone.dir.join("cli.token").exists());
    assert!(!phone.ok(&["tokens", "list"]).contains("cli (hub run)"));
    // A revocation by a founder that is not running: signed and stored offline, published
    // through a short relay connection; the running tablet is cut off.
    c.founder_run.signal("TERM");
    assert!(c.founder_run.wait_exit());
    let out = c.founder.ok(&["peers", "revoke", &tablet.id()]);
    assert!(out.contains("published"), "{out}");
    assert!(!tablet_run.wait_exit(), "{}", tablet_run.log());
    assert!(!c.founder.ok(&["peers"]).contains("tablet"));
    // Only the founder (or an admin) invites.
    let err = phone.fails(&["invite"]);
    assert!(err.contains("not an admin"), "{err}");
    // Joining into a home that holds a hub is refused.
    let err = phone.fails(&["join", &c.invite(&[]), "--name", "again"]);
    assert!(err.contains("already holds a hub"), "{err}");
}

#[test]
fn pairing_tokens_expire_are_single_use_checked_and_never_stored() {
    let c = Cluster::start(RelayKind::Workerd);

    // The secret is not in the database files; its SHA-256 is.
    let token = c.invite(&[]);
    let parsed = PairingToken::parse(&token).unwrap();
    let db_files: Vec<Vec<u8>> = ["hub.db", "hub.db-wal", "hub.db-shm"]
        .iter()
        .filter_map(|f| std::fs::read(c.founder.dir.join(f)).ok())
        .collect();
    assert!(!db_files.is_empty());
    for bytes in &db_files {
        assert!(
            !bytes.windows(32).any(|w| w == parsed.secret),
            "secret on disk"
        );
    }
    let hash: [u8; 32] = Sha256::digest(parsed.secret).into();
    assert!(db_files.iter().any(|b| b.windows(32).any(|w| w == hash)));

    // Used once; a second use is refused, and the refused hub holds nothing.
    c.home("first").ok(&["join", &token, "--name", "first"]);
    let second = c.home("second");
    let err = second.fails(&["join", &token, "--name", "second"]);
    assert!(err.contains("invalid, used or expired"), "{err}");
    assert!(second.fails(&["id"]).contains("holds no hub"));

    // Expired.
    let short = c.invite(&["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1500));
    let err = c.home("late").fails(&["join", &short, "--name", "late"]);
    assert!(err.contains("invalid, used or expired"), "{err}");

    // A wrong secret (a well-formed token the issuer never made).
    let mut forged = PairingToken::parse(&c.invite(&[])).unwrap();
    forged.secret[0] ^= 1;
    let err = c
        .home("forger")
        .fails(&["join", &forged.encode().unwrap(), "--name", "forger"]);
    assert!(err.contains("invalid, used or expired"), "{err}");

    // A tampered token (one character changed): refused before any connection.
    let good = c.invite(&[]);
    let mut chars: Vec<char> = good.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'x' { 'y' } else { 'x' };
    let tampered: String = chars.into_iter().collect();
    let err = c
        .home("tamper")
        .fails(&["join", &tampered, "--name", "tamper"]);
    assert!(err.contains("damaged or was altered"), "{err}");
    // The untouched token still works: nothing was consumed.
    c.home("honest").ok(&["join", &good, "--name", "honest"]);

    // Two concurrent redemptions of one token: exactly one succeeds.
    let token = c.invite(&[]);
    let racers: Vec<_> = (0..2)
        .map(|i| {
            let home = c.home(&format!("racer{i}"));
            home.command()
                .args(["join", &token, "--name", &format!("racer{i}")])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let wins = racers
        .into_iter()
        .map(|mut child| child.wait().unwrap().success())
        .filter(|ok| *ok)
        .count();
    assert_eq!(wins, 1, "exactly one of two concurrent redemptions wins");
}

/// Pairing tokens issued (by the CLI and the API) are in the audit log, and each API token's
/// uses are counted by window in `hub stats`. Once neither was.
#[test]
fn invites_and_token_uses_are_in_the_audit_log_and_the_statistics() {
    let c = Cluster::start(RelayKind::Native);
    let api = &c.founder_run;
    c.founder
        .ok(&["invite", "--trust-level", "read_only", "--roles", "phone"]);
    let admin = c
        .founder
        .ok(&["tokens", "create", "--name", "ops", "--admin"])
        .trim()
        .to_owned();
    let issued = api.request(
        "POST",
        "/api/federation/generate-pairing-token",
        Some(&admin),
        Some(r#"{"trust_level":"full","ttl_seconds":600}"#),
    );
    assert_eq!(issued.status, 201, "{}", issued.json);
    let log = c.founder.ok(&["audit", "list"]);
    assert!(
        log.contains("invite")
            && log.contains("a pairing token for a read_only hub with roles phone"),
        "{log}"
    );
    assert!(
        log.contains("a pairing token for a full hub, valid 600 s"),
        "{log}"
    );
    let dashboard = c
        .founder
        .ok(&["tokens", "create", "--name", "dashboard"])
        .trim()
        .to_owned();
    for _ in 0..5 {
        assert_eq!(
            api.request("GET", "/api/status", Some(&dashboard), None)
                .status,
            200
        );
    }
    let hour = |json: &str| -> serde_json::Value {
        let windows: serde_json::Value = serde_json::from_str(json).unwrap();
        windows.as_array().unwrap()[0].clone()
    };
    let stats = c
        .founder
        .ok_when(&["stats", "--json"], "5 dashboard uses", |out| {
            hour(out)["token_uses"]["dashboard"] == 5
        });
    let hour = hour(&stats);
    assert_eq!(hour["window"], "hour");
    assert_eq!(hour["total"]["invites"], 2, "{hour}");
    assert_eq!(hour["token_uses"]["ops"], 1, "{hour}");
}

#[test]
fn admin_api_every_endpoint_with_auth_and_errors() {
    let c = Cluster::start(RelayKind::Native);
    let api = &c.founder_run;
    let admin = c
        .founder
        .ok(&["tokens", "create", "--name", "ops", "--admin"])
        .trim()
        .to_owned();
    let reader = c
        .founder
        .ok(&["tokens", "create", "--name", "dashboard"])
        .trim()
        .to_owned();
    let expiring = c
        .founder
        .ok(&["tokens", "create", "--name", "temp", "--expires", "1s"])
        .trim()
        .to_owned();
    let laptop = c.join("laptop");
    let laptop_id = laptop.id();
    let _laptop_run = laptop.run();
    let peer = format!("/api/federation/peers/{laptop_id}");

    assert_eq!(api.request("GET", "/api/health", None, None).status, 200);

    // 401 without a token, with a wrong one, with an expired one; JSON errors.
    let routes: Vec<(&str, String)> = vec![
        ("GET", "/api/status".into()),
        ("POST", "/api/federation/generate-pairing-token".into()),
        ("POST", "/api/federation/pair".into()),
        ("GET", "/api/federation/peers".into()),
        ("GET", peer.clone()),
        ("DELETE", peer.clone()),
        ("POST", format!("{peer}/suspend")),
        ("POST", format!("{peer}/resume")),
        ("POST", format!("{peer}/ping")),
    ];
    std::thread::sleep(Duration::from_millis(1100));
    for (method, path) in &routes {
        for token in [
            None,
            Some("hubapi_not-a-real-token"),
            Some(expiring.as_str()),
        ] {
            let a = api.request(method, path, token, None);
            assert_eq!(a.status, 401, "{method} {path} with {token:?}");
            assert_eq!(a.json["error"]["code"], "unauthorized", "{}", a.json);
        }
    }
    // 403 for a non-admin token on admin routes.
    for (method, path) in &routes {
        let admin_only = *method == "DELETE"
            || path.contains("pair")
            || path.ends_with("suspend")
            || path.ends_with("resume");
        let a = api.request(method, path, Some(&reader), None);
        if admin_only {
            assert_eq!(a.status, 403, "{method} {path}: {}", a.json);
            assert_eq!(a.json["error"]["code"], "forbidden");
        } else {
            assert!(a.status == 200, "{method} {path}: {} {}", a.status, a.json);
        }
    }

    // Status and peers.
    let s = api.request("GET", "/api/status", Some(&reader), None);
    assert_eq!(s.json["relay"]["connected"], true, "{}", s.json);
    assert_eq!(s.json["peers_online"], 1);
    assert_eq!(s.json["manifest_epoch"], 2);
    let list = api.request("GET", "/api/federation/peers", Some(&reader), None);
    assert_eq!(list.json[0]["id"], laptop_id.as_str());
    assert_eq!(list.json[0]["online"], true);
    let one = api.request("GET", &peer, Some(&reader), None);
    assert_eq!(one.json["reported"]["name"], "laptop", "{}", one.json);
    assert_eq!(one.json["reported"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(one.json["reported"]["uptime_s"].is_u64());

    // Generate a pairing token; malformed bodies get 400 JSON.
    let t = api.request(
        "POST",
        "/api/federation/generate-pairing-token",
        Some(&admin),
        Some(r#"{"trust_level":"read_only","roles":["kiosk"],"ttl_seconds":600}"#),
    );
    assert_eq!(t.status, 201, "{}", t.json);
    assert_eq!(t.json["trust_level"], "read_only");
    let kiosk_token = t.json["token"].as_str().unwrap().to_owned();
    for bad in [
        "{",
        r#"{"ttl_seconds":"soon"}"#,
        r#"{"ttl_seconds":0}"#,
        r#"{"trust_level":"god"}"#,
        r#"{"surprise":1}"#,
    ] {
        let a = api.request(
            "POST",
            "/api/federation/generate-pairing-token",
            Some(&admin),
            Some(bad),
        );
        assert_eq!(a.status, 400, "{bad}: {}", a.json);
        assert_eq!(a.json["error"]["code"], "bad_request");
    }

    // Unknown and malformed ids.
    let unknown = format!("/api/federation/peers/{}", "f".repeat(32));
    for (method, path) in [
        ("GET", unknown.clone()),
        ("DELETE", unknown.clone()),
        ("POST", format!("{unknown}/suspend")),
        ("POST", format!("{unknown}/resume")),
    ] {
        let a = api.request(method, &path, Some(&admin), None);
        assert_eq!(a.status, 404, "{method} {path}: {}", a.json);
        assert_eq!(a.json["error"]["code"], "not_found");
    }
    let a = api.request("GET", "/api/federation/peers/nothex", Some(&admin), None);
    assert_eq!(a.status, 400);
    assert_eq!(
        api.request("GET", "/api/nowhere", Some(&admin), None)
            .status,
        404
    );

    // Ping, suspend (a suspended peer is refused: the laptop pinging the founder), resume.
    let p = api.request("POST", &format!("{peer}/ping"), Some(&reader), None);
    assert_eq!(p.status, 200, "{}", p.json);
    assert!(p.json["rtt_ms"].as_f64().unwrap() > 0.0);
    let s = api.request("POST", &format!("{peer}/suspend"), Some(&admin), None);
    assert_eq!(s.status, 200, "{}", s.json);
    assert!(s.json["suspended_at"].is_u64());
    let err = laptop.fails(&["ping", &c.founder.id(), "--count", "1"]);
    assert!(err.contains("suspended"), "{err}");
    let r = api.request("POST", &format!("{peer}/resume"), Some(&admin), None);
    assert_eq!(r.status, 200);
    laptop.ok(&["ping", &c.founder.id(), "--count", "1"]);

    // Pair: a hub running on an empty home joins through its own API.
    let kiosk = c.home("kiosk");
    let kiosk_admin = kiosk
        .ok(&["tokens", "create", "--name", "setup", "--admin"])
        .trim()
        .to_owned();
    let kiosk_run = kiosk.run();
    let s = kiosk_run.request("GET", "/api/status", Some(&kiosk_admin), None);
    assert_eq!(s.json["joined"], false);
    for (body, status) in [
        (r#"{"pairing_token":"nope","name":"kiosk"}"#.to_owned(), 400),
        (format!(r#"{{"pairing_token":"{kiosk_token}"}}"#), 400),
        ("[1,2]".to_owned(), 400),
    ] {
        let a = kiosk_run.request(
            "POST",
            "/api/federation/pair",
            Some(&kiosk_admin),
            Some(&body),
        );
        assert_eq!(a.status, status, "{body}: {}", a.json);
    }
    let body = format!(r#"{{"pairing_token":"{kiosk_token}","name":"kiosk"}}"#);
    let joined = kiosk_run.request(
        "POST",
        "/api/federation/pair",
        Some(&kiosk_admin),
        Some(&body),
    );
    assert_eq!(joined.status, 201, "{}", joined.json);
    assert_eq!(joined.json["trust_level"], "read_only");
    assert_eq!(joined.json["issuer"]["name"], "desk");
    let kiosk_id = joined.json["id"].as_str().unwrap().to_owned();
    let again = kiosk_run.request(
        "POST",
        "/api/federation/pair",
        Some(&kiosk_admin),
        Some(&body),
    );
    assert_eq!(again.status, 409, "{}", again.json);
    // The kiosk connects as a member once paired.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = kiosk_run.request("GET", "/api/status", Some(&kiosk_admin), None);
        if s.json["relay"]["connected"] == true {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{}", kiosk_run.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let list = api.request("GET", "/api/federation/peers", Some(&reader), None);
    assert!(list
        .json
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["id"] == kiosk_id.as_str()));

    // Revoke (admin): the list version is reported; the kiosk is cut off.
    let mut kiosk_run = kiosk_run;
    let d = api.request(
        "DELETE",
        &format!("/api/federation/peers/{kiosk_id}?reason=stolen"),
        Some(&admin),
        None,
    );
    assert_eq!(d.status, 200, "{}", d.json);
    assert_eq!(d.json["revocation_version"], 1);
    assert!(!kiosk_run.wait_exit());
    let again = api.request(
        "DELETE",
        &format!("/api/federation/peers/{kiosk_id}"),
        Some(&admin),
        None,
    );
    assert_eq!(again.status, 404);

    // Tokens record their last use; the CLI lists them without secrets.
    let listed = c.founder.ok(&["tokens", "list"]);
    assert!(
        listed.contains("ops") && listed.contains("dashboard"),
        "{listed}"
    );
    assert!(
        !listed.contains(&admin) && !listed.contains("hubapi_"),
        "{listed}"
    );
}

#[test]
fn a_joiner_killed_mid_pairing_reopens_consistent_and_pairs_again() {
    let c = Cluster::start(RelayKind::Workerd);
    let laptop = c.home("laptop");

    // Freeze the issuer so the request waits at its socket, start the join, and kill the joiner
    // once it is waiting for the answer.
    let token = c.invite(&[]);
    c.founder_run.signal("STOP");
    let waiting = unread_bytes(c.founder_run.pid(), c.relay.port());
    let mut join = laptop
        .command()
        .args(["join", &token, "--name", "laptop", "--timeout", "30"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The request has reached the frozen issuer when its socket holds more unread bytes.
    wait_for_unread_bytes(c.founder_run.pid(), c.relay.port(), waiting);
    signal(join.id(), "KILL");
    let _ = join.wait();
    c.founder_run.signal("CONT");

    // The joiner's home is consistent: no hub, a store that opens, and it can pair again.
    assert!(laptop.fails(&["id"]).contains("holds no hub"));
    let store = rusqlite::Connection::open(laptop.dir.join("hub.db")).unwrap();
    let check: String = store
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(store);
    // The issuer handled the request after it thawed: the token is spent (its answer found no
    // one). A new token pairs.
    let err = laptop.fails(&["join", &token, "--name", "laptop"]);
    assert!(err.contains("invalid, used or expired"), "{err}");
    let out = laptop.ok(&["join", &c.invite(&[]), "--name", "laptop"]);
    assert!(out.contains("the relay admits this hub"), "{out}");
}

#[test]
fn an_issuer_killed_mid_pairing_reopens_consistent_and_the_token_still_works() {
    let mut c = Cluster::start(RelayKind::Workerd);
    let laptop = c.home("laptop");
    let token = c.invite(&[]);

    // The request reaches the frozen issuer's socket; the issuer dies without handling it.
    c.founder_run.signal("STOP");
    let waiting = unread_bytes(c.founder_run.pid(), c.relay.port());
    let join = laptop
        .command()
        .args(["join", &token, "--name", "laptop", "--timeout", "30"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_unread_bytes(c.founder_run.pid(), c.relay.port(), waiting);
    c.founder_run.signal("KILL");
    let out = join.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not online") || err.contains("4020"), "{err}");

    // The issuer reopens: the store is intact, the token unused, and the same token pairs.
    c.founder_run = c.founder.run();
    let db = rusqlite::Connection::open(c.founder.dir.join("hub.db")).unwrap();
    let check: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let used: i64 = db
        .query_row(
            "SELECT COUNT(*) FROM pairing_tokens WHERE used_at IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(used, 0);
    drop(db);
    let out = laptop.ok(&["join", &token, "--name", "laptop"]);
    assert!(out.contains("joined cluster"), "{out}");
    assert!(c.founder.ok(&["peers"]).contains("laptop"));
}

/// A user's mistake is one clear message with its causes and a non-zero exit, even with
/// `RUST_BACKTRACE=1` in the environment (once a 30-line stack backtrace); the backtrace comes
/// only with debug logs. A command that needs a hub, in a home without one, says so and how to
/// make one, and creates nothing.
#[test]
fn user_errors_are_one_clear_message_without_a_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let home = HubHome::new(dir.path().join("nothing"));
    let out = home
        .command()
        .env("RUST_BACKTRACE", "1")
        .args(["join", "garbage", "--name", "x"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains("pairing token"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert!(stderr.lines().count() <= 4, "{stderr}");

    // With debug logs asked for, the backtrace is there for a bug report.
    let out = home
        .command()
        .env("RUST_BACKTRACE", "1")
        .env("RUST_LOG", "debug")
        .args(["join", "garbage", "--name", "x"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("error: "), "{stderr}");
    assert!(stderr.lines().count() > 4, "{stderr}");

    for args in [
        &["peers"][..],
        &["peers", "suspend", "00000000000000000000000000000000"],
    ] {
        let stderr = home.fails(args);
        assert!(stderr.contains("holds no hub"), "{args:?}: {stderr}");
        assert!(stderr.contains("hub cluster create"), "{args:?}: {stderr}");
        assert!(stderr.contains("hub join"), "{args:?}: {stderr}");
        assert!(!home.dir.exists(), "{args:?} created the home");
    }
}

/// Two revocations at once through the API: each is signed over the other (versions 1 and 2),
/// and the relay refuses both hubs. (Each once signed its own version 1; the relay kept one and
/// the other hub stayed admitted while the founder listed it as revoked.)
#[test]
fn two_revocations_at_once_through_the_api_cut_off_both_hubs() {
    let c = Cluster::start(RelayKind::Workerd);
    let (a, b) = (c.join("a"), c.join("b"));
    let mut runs = [a.run(), b.run()];
    let token = c.founder_run.cli_token();
    let ids = [a.id(), b.id()];
    let answers: Vec<_> = std::thread::scope(|s| {
        let calls: Vec<_> = ids
            .iter()
            .map(|id| {
                let (founder, token) = (&c.founder_run, &token);
                s.spawn(move || {
                    founder.request(
                        "DELETE",
                        &format!("/api/federation/peers/{id}"),
                        Some(token),
                        None,
                    )
                })
            })
            .collect();
        calls.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut versions: Vec<u64> = answers
        .iter()
        .map(|a| {
            assert_eq!(a.status, 200, "{}", a.json);
            a.json["revocation_version"].as_u64().unwrap()
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, vec![1, 2]);
    for (home, run) in [&a, &b].into_iter().zip(runs.iter_mut()) {
        assert!(!run.wait_exit(), "{} kept running", home.dir.display());
        assert!(run.log().contains("4015"), "{}", run.log());
        let err = home.fails(&["ping", &c.founder.id(), "--count", "1"]);
        assert!(err.contains("4015"), "{err}");
    }
}

/// A running hub that does not answer (here: something that accepts and says nothing) makes
/// the CLI fail within seconds with the reason, instead of hanging 30 s or opening a second
/// relay connection in the hub's place.
#[test]
fn the_cli_gives_up_on_a_hub_that_does_not_answer() {
    let dir = tempfile::tempdir().unwrap();
    let home = HubHome::new(dir.path().join("desk"));
    home.ok(&[
        "cluster",
        "create",
        "--name",
        "desk",
        "--relay",
        "ws://127.0.0.1:9",
    ]);
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", stuck.local_addr().unwrap());
    std::fs::write(home.dir.join("api.url"), url).unwrap();
    std::fs::write(home.dir.join("cli.token"), "hubapi_x").unwrap();
    let err = home.fails(&["peers"]);
    assert!(err.contains("did not answer within 3 s"), "{err}");
    drop(stuck);
}

/// `hub web export` writes the phone page the Worker serves, every file pinned by the hash the
/// page carries (Subresource Integrity in index.html, the wasm module's SHA-384 in app.js), and
/// never over a directory that holds something.
#[test]
fn the_phone_page_is_exported_with_every_file_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let home = HubHome::new(dir.path().join("hub"));
    let out = dir.path().join("page");
    home.ok(&["web", "export", out.to_str().unwrap()]);
    let read = |f: &str| std::fs::read(out.join(f)).unwrap();
    let b64 = |bytes: &[u8]| data_encoding::BASE64.encode(&sha2::Sha384::digest(bytes));
    let html = String::from_utf8(read("index.html")).unwrap();
    for file in ["app.js", "app.css", "pkg/hub_web.js"] {
        let pin = format!("sha384-{}", b64(&read(file)));
        assert!(
            html.contains(&pin),
            "{file} is not pinned as {pin} in index.html"
        );
    }
    let app = String::from_utf8(read("app.js")).unwrap();
    let wasm = b64(&read("pkg/hub_web_bg.wasm"));
    assert!(
        app.contains(&format!("\"{wasm}\"")),
        "app.js does not pin the wasm module"
    );
    // The same files as the Worker serves.
    let built = e2e::repo_root().join("hub-web/build/phone");
    for file in ["index.html", "app.js", "pkg/hub_web_bg.wasm", "sw.js"] {
        assert_eq!(
            read(file),
            std::fs::read(built.join(file)).unwrap(),
            "{file}"
        );
    }
    let again = home.fails(&["web", "export", out.to_str().unwrap()]);
    assert!(again.contains("is not empty"), "{again}");
}
