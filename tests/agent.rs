#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The agent surface end to end: `hub` processes with their apps (a real third-party MCP server,
//! `@modelcontextprotocol/server-everything` from package-lock.json, and the in-repo `test-app`),
//! an MCP client started as a desktop agent client starts `hub mcp`, calls across hubs through
//! the relay in workerd and `hub relay`, sharing, trust levels and every refusal of a call's
//! delegation envelope.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use e2e::cli::{HubHome, RunningHub};
use e2e::mcp::{call, everything, mcp_client, text};
use e2e::{blocking, hub_bin, runtime, RelayKind, RelayProcess};
use hub_client::node::home::Home;
use hub_client::transport::peers::{OutgoingCall, PeerClient, PeerError};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};
use shared_proto::agent::{arguments_hash, CallErrorCode, Delegation};
use shared_proto::HubId;

/// The in-repo test app (built with this test).
fn test_app() -> String {
    env!("CARGO_BIN_EXE_test-app").to_owned()
}

/// The child processes of `pid` (its apps).
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let list = std::fs::read_to_string(task.unwrap().path().join("children"));
        out.extend(
            list.unwrap_or_default()
                .split_whitespace()
                .map(|p| p.parse::<u32>().unwrap()),
        );
    }
    out
}

/// A relay, a founder hub `desk` (running) and a directory for more hubs.
struct Cluster {
    _relay: RelayProcess,
    dir: tempfile::TempDir,
    desk: HubHome,
    desk_run: Option<RunningHub>,
}

impl Cluster {
    fn start(kind: RelayKind) -> Self {
        let relay = RelayProcess::start(kind);
        let dir = tempfile::tempdir().unwrap();
        let desk = HubHome::new(dir.path().join("desk"));
        desk.create_cluster("desk", &relay.url());
        let desk_run = Some(desk.run());
        Cluster {
            _relay: relay,
            dir,
            desk,
            desk_run,
        }
    }

    /// A hub joined with `trust` (and `roles`), not running.
    fn join(&self, name: &str, trust: &str, roles: &str) -> HubHome {
        let mut args = vec!["invite", "--trust-level", trust];
        if !roles.is_empty() {
            args.extend(["--roles", roles]);
        }
        let token = self.desk.ok(&args).trim().to_owned();
        let home = HubHome::new(self.dir.path().join(name));
        home.ok(&["join", &token, "--name", name]);
        home
    }

    fn desk_run(&self) -> &RunningHub {
        self.desk_run.as_ref().unwrap()
    }
}

/// A laptop joined at `agent_dispatch` that talks to the desk with its own peer layer (no `hub
/// run`): a test sends it what a hostile or faulty member would. Online at the desk.
fn raw_laptop(c: &Cluster) -> (HubHome, PeerClient) {
    let laptop = blocking(|| c.join("laptop", "agent_dispatch", ""));
    let home = Home::new(PathBuf::from(&laptop.dir));
    let peers = PeerClient::spawn(
        home.relay_config(None).unwrap(),
        home.noise_identity().unwrap(),
    )
    .unwrap();
    blocking(|| wait_online(&c.desk, 1));
    (laptop, peers)
}

/// The apps of a listing (a JSON array of apps with their tools), each with its tools' names.
fn app_tools(apps: &Value) -> Vec<(String, Vec<String>)> {
    apps.as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let tools = a["tools"].as_array().unwrap().iter();
            (
                a["name"].as_str().unwrap().to_owned(),
                tools
                    .map(|t| t["name"].as_str().unwrap().to_owned())
                    .collect(),
            )
        })
        .collect()
}

/// `GET /api/federation/peers/{id}` on `hub`, with its CLI's admin token.
fn peer_detail(hub: &RunningHub, id: &str) -> Value {
    hub.request(
        "GET",
        &format!("/api/federation/peers/{id}"),
        Some(&hub.cli_token()),
        None,
    )
    .json
}

/// The part `name` of a peer detail's trust score (null if absent).
fn score_part(detail: &Value, name: &str) -> Value {
    detail["trust_score"]["parts"]
        .as_array()
        .and_then(|parts| parts.iter().find(|p| p["name"] == name))
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits until `hub` (running) has `n` peers online.
fn wait_online(home: &HubHome, n: usize) {
    home.ok_when(&["status"], &format!("{n} peer(s) online"), |out| {
        out.lines()
            .any(|l| l.contains("peers online") && l.contains(&n.to_string()))
    });
}

macro_rules! both {
    ($name:ident) => {
        mod $name {
            #[test]
            fn workerd() {
                super::$name(super::RelayKind::Workerd)
            }
            #[test]
            fn native() {
                super::$name(super::RelayKind::Native)
            }
        }
    };
}

both!(an_agent_on_the_desk_lists_and_calls_an_app_on_the_laptop);
/// The laptop shares server-everything with the cluster and keeps another app to itself; an MCP
/// client connected to the desk (`hub mcp`) lists the apps of both hubs and calls a tool on the
/// laptop through the relay, by `app.call` and directly; the unshared app is invisible and
/// uncallable.
fn an_agent_on_the_desk_lists_and_calls_an_app_on_the_laptop(kind: RelayKind) {
    let c = Cluster::start(kind);
    let laptop = c.join("laptop", "agent_dispatch", "");
    laptop.ok(&["apps", "add", "everything", "--command", &everything()]);
    laptop.ok(&["apps", "add", "private", "--command", &everything()]);
    laptop.ok(&["apps", "share", "everything", "--cluster"]);
    let _laptop_run = laptop.run();
    wait_online(&c.desk, 1);
    let laptop_id = laptop.id();
    runtime().block_on(agent_on_the_desk(&c, &laptop_id));
}

async fn agent_on_the_desk(c: &Cluster, laptop_id: &str) {
    let short = &laptop_id[..8];
    let client = mcp_client(&c.desk).await;
    let tools = client.list_all_tools().await.unwrap();
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert!(
        names.contains(&"apps.list") && names.contains(&"app.call"),
        "{names:?}"
    );
    let echo = format!("everything_echo_{short}");
    assert!(names.contains(&echo.as_str()), "{echo} not in {names:?}");
    assert!(
        !names.iter().any(|n| n.starts_with("private_")),
        "{names:?}"
    );

    let listing = call(&client, "apps.list", json!({})).await;
    let hubs = listing.structured_content.as_ref().unwrap()["hubs"].clone();
    let laptop_view = hubs
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hub_id"] == laptop_id)
        .unwrap_or_else(|| panic!("laptop not listed: {hubs}"));
    assert_eq!(laptop_view["hub_name"], "laptop");
    assert_eq!(laptop_view["path"], "relay");
    let apps: Vec<&str> = laptop_view["apps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(apps, ["everything"], "{laptop_view}");
    let echo_schema = &laptop_view["apps"][0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "echo")
        .unwrap()["inputSchema"];
    assert_eq!(echo_schema["required"], json!(["message"]));

    let result = call(
        &client,
        "app.call",
        json!({ "hub": "laptop", "app": "everything", "tool": "echo",
                "arguments": { "message": "hello from the desk" } }),
    )
    .await;
    assert_ne!(result.is_error, Some(true), "{result:?}");
    assert!(text(&result).contains("hello from the desk"), "{result:?}");

    let direct = call(&client, &echo, json!({ "message": "called directly" })).await;
    assert!(text(&direct).contains("called directly"), "{direct:?}");

    for app in ["private", "nonexistent"] {
        let refused = call(
            &client,
            "app.call",
            json!({ "hub": laptop_id, "app": app, "tool": "echo",
                    "arguments": { "message": "x" } }),
        )
        .await;
        assert_eq!(refused.is_error, Some(true), "{refused:?}");
        assert!(text(&refused).contains("no such app shared"), "{refused:?}");
    }
    client.cancel().await.unwrap();
}

/// Calls from the desk's API to `test-app` on the laptop: a 5 MiB result crosses intact; an app
/// that crashes mid-call gives an error and is started again; a call to a hub that went offline
/// fails within its deadline.
#[test]
fn large_results_crashes_and_offline_hubs() {
    let c = Cluster::start(RelayKind::Native);
    let laptop = c.join("laptop", "agent_dispatch", "");
    let linger = ["--env", "TEST_APP_LINGER=1"];
    laptop.ok(&[
        &["apps", "add", "tools", "--command", &test_app()][..],
        &linger,
    ]
    .concat());
    laptop.ok(&["apps", "share", "tools", "--cluster"]);
    let mut laptop_run = Some(laptop.run());
    wait_online(&c.desk, 1);
    let desk = c.desk_run();
    let token = desk.cli_token();
    let call = |tool: &str, args: Value| {
        let body = json!({ "hub": "laptop", "app": "tools", "tool": tool, "arguments": args,
                           "timeout_ms": 10_000 });
        desk.request(
            "POST",
            "/api/apps/call",
            Some(&token),
            Some(&body.to_string()),
        )
    };

    let big = 5 * 1024 * 1024;
    let answer = call("blob", json!({ "bytes": big }));
    assert_eq!(answer.status, 200, "{:?}", answer.json);
    let blob = answer.json["content"][0]["text"].as_str().unwrap();
    assert_eq!(blob.len(), big);
    assert!(blob.bytes().all(|b| b == b'x'));

    let crashed = call("crash", json!({}));
    assert_eq!(crashed.status, 502, "{:?}", crashed.json);
    assert_eq!(crashed.json["error"]["code"], "app_failed");
    // Started again once its backoff (1 s) has passed.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let again = call("note_read", json!({}));
        if again.status == 200 {
            break;
        }
        assert_eq!(
            again.json["error"]["code"], "app_unavailable",
            "{:?}",
            again.json
        );
        assert!(Instant::now() < deadline, "not restarted: {:?}", again.json);
        std::thread::sleep(Duration::from_millis(200));
    }

    // A clean stop (SIGTERM) stops the app it started (one that would not exit by itself).
    let mut run = laptop_run.take().unwrap();
    let apps = children(run.pid());
    assert_eq!(apps.len(), 1, "the laptop runs one app: {apps:?}");
    run.signal("TERM");
    assert!(
        run.wait_exit(),
        "hub run did not stop cleanly:\n{}",
        run.log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{}", apps[0])).exists() {
        assert!(Instant::now() < deadline, "the app outlived its hub");
        std::thread::sleep(Duration::from_millis(50));
    }
    let laptop_id = laptop.id();
    c.desk.ok_when(&["status"], "the laptop offline", |out| {
        out.lines()
            .any(|l| l.contains("peers online") && l.contains('0'))
    });
    let offline = desk.request(
        "POST",
        "/api/apps/call",
        Some(&token),
        Some(
            &json!({ "hub": laptop_id, "app": "tools", "tool": "note_read",
                      "timeout_ms": 5_000 })
            .to_string(),
        ),
    );
    // Refused at once as unreachable, not left to run into its 5 s deadline (504 `timeout`).
    assert_eq!(
        (offline.status, offline.json["error"]["code"].as_str()),
        (502, Some("unreachable")),
        "{:?}",
        offline.json
    );
    // By name too: a hub this one knows is named, and said to be offline. (Once, right after a
    // peer went or came back, the answer was "no hub named laptop".)
    let by_name = desk.request(
        "POST",
        "/api/apps/call",
        Some(&token),
        Some(&json!({ "hub": "laptop", "app": "tools", "tool": "note_read" }).to_string()),
    );
    assert_eq!(by_name.status, 502, "{:?}", by_name.json);
    let message = by_name.json["error"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains("is not online (offline, or reconnecting to the relay)"),
        "{message}"
    );
}

/// Each trust level calls exactly the tools it should of an app the desk shares with the
/// cluster: read-only tools for read_only, acting ones too for agent_dispatch, destructive ones
/// too for full; and an app shared by role is seen by that role only.
#[test]
fn each_trust_level_calls_exactly_what_it_may() {
    let mut c = Cluster::start(RelayKind::Native);
    c.desk
        .ok(&["apps", "add", "tools", "--command", &test_app()]);
    c.desk.ok(&["apps", "share", "tools", "--cluster"]);
    c.desk
        .ok(&["apps", "add", "phones", "--command", &test_app()]);
    c.desk.ok(&["apps", "share", "phones", "--roles", "phone"]);
    // The desk reads its apps from its store at each call: no restart needed. Restart anyway to
    // check the sharing survives one.
    drop(c.desk_run.take());
    c.desk_run = Some(c.desk.run());
    let hubs = [
        ("reader", "read_only", "phone"),
        ("agent", "agent_dispatch", ""),
        ("admin", "full", ""),
    ];
    let homes: Vec<HubHome> = hubs.iter().map(|(n, t, r)| c.join(n, t, r)).collect();
    let runs: Vec<RunningHub> = homes.iter().map(HubHome::run).collect();
    wait_online(&c.desk, 3);
    let table = [
        // (hub, tool, allowed)
        (0, "note_read", true),
        (0, "note_write", false),
        (0, "wipe", false),
        (1, "note_read", true),
        (1, "note_write", true),
        (1, "wipe", false),
        (2, "note_read", true),
        (2, "note_write", true),
        (2, "wipe", true),
    ];
    for (i, tool, allowed) in table {
        let run = &runs[i];
        let body = json!({ "hub": "desk", "app": "tools", "tool": tool,
                           "arguments": { "text": "hi" } });
        let answer = run.request(
            "POST",
            "/api/apps/call",
            Some(&run.cli_token()),
            Some(&body.to_string()),
        );
        if allowed {
            assert_eq!(
                answer.status, 200,
                "{} {tool}: {:?}",
                hubs[i].0, answer.json
            );
        } else {
            assert_eq!(
                answer.status, 403,
                "{} {tool}: {:?}",
                hubs[i].0, answer.json
            );
            assert_eq!(
                answer.json["error"]["code"], "trust_too_low",
                "{} {tool}",
                hubs[i].0
            );
        }
    }
    // What each sees: tools it may call only, and the phone app for the phone role only.
    for (i, run) in runs.iter().enumerate() {
        let answer = run.request("GET", "/api/apps", Some(&run.cli_token()), None);
        let desk = answer
            .json
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["hub_name"] == "desk")
            .unwrap()
            .clone();
        let apps: Vec<&str> = desk["apps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap())
            .collect();
        let want: &[&str] = if i == 0 {
            &["phones", "tools"]
        } else {
            &["tools"]
        };
        assert_eq!(apps, want, "{}", hubs[i].0);
        let tools: Vec<&str> = desk["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "tools")
            .unwrap()["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            tools.contains(&"note_write"),
            i >= 1,
            "{}: {tools:?}",
            hubs[i].0
        );
        assert_eq!(tools.contains(&"wipe"), i == 2, "{}: {tools:?}", hubs[i].0);
    }
}

/// What a tool is, for the trust it needs, follows the app when it changes its tools (the app
/// says so) and the operator when it pins a kind (`--tool-kind`). Once the kinds were read from
/// the app's annotations once, at its start, and could not be pinned.
#[test]
fn tool_kinds_follow_the_app_and_the_operators_pins() {
    let c = Cluster::start(RelayKind::Native);
    c.desk
        .ok(&["apps", "add", "tools", "--command", &test_app()]);
    c.desk.ok(&["apps", "share", "tools", "--cluster"]);
    let reader = c.join("reader", "read_only", "");
    let run = reader.run();
    wait_online(&c.desk, 1);
    let call = |tool: &str| {
        let body = json!({ "hub": "desk", "app": "tools", "tool": tool,
                           "arguments": { "text": "hi" } });
        let answer = run.request(
            "POST",
            "/api/apps/call",
            Some(&run.cli_token()),
            Some(&body.to_string()),
        );
        match answer.status {
            200 => "ok".to_owned(),
            _ => answer.json["error"]["code"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
        }
    };
    assert_eq!(call("note_read"), "ok");
    assert_eq!(call("note_write"), "trust_too_low");
    // The operator's pins: what the app says no longer counts for those tools.
    let out = c.desk.ok(&[
        "apps",
        "share",
        "tools",
        "--cluster",
        "--tool-kind",
        "note_write=read_only",
        "--tool-kind",
        "note_read=destructive",
    ]);
    assert!(out.contains("tool note_write is pinned read_only"), "{out}");
    assert_eq!(call("note_write"), "ok");
    assert_eq!(call("note_read"), "trust_too_low");
    let shown = c.desk.ok(&["apps", "show", "tools"]);
    assert!(
        shown.contains("note_read (destructive, pinned; the app says read_only)"),
        "{shown}"
    );
    let log = c.desk.ok(&["audit", "list"]);
    assert!(
        log.contains("tool kinds note_read=destructive,note_write=read_only"),
        "{log}"
    );
    c.desk.ok(&[
        "apps",
        "share",
        "tools",
        "--cluster",
        "--tool-kind",
        "note_read=app",
    ]);
    assert_eq!(call("note_read"), "ok");
    // The app changes what note_read says of itself (and says its tool list changed): the
    // desk's checks read it before the next call.
    let desk_id = c.desk.id();
    c.desk
        .ok(&["apps", "call", &desk_id, "tools", "harden", "--args", "{}"]);
    // The app's notification and its answer travel apart: wait for the notification.
    let deadline = Instant::now() + Duration::from_secs(10);
    while call("note_read") != "trust_too_low" {
        assert!(Instant::now() < deadline, "note_read still callable");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(call("note_write"), "ok", "still pinned");
}

/// A refusal case: what, the envelope, its signing key, the arguments sent, raw envelope bytes
/// instead of the signed envelope, and the code expected.
type Case<'a> = (
    &'a str,
    Delegation,
    &'a ed25519_dalek::SigningKey,
    &'a [u8],
    Option<Vec<u8>>,
    CallErrorCode,
);

/// A member that keeps sending refused calls does not grow the target's log by a row each:
/// the first refusal of a kind is written at once, the rest of the minute are counted into one
/// entry (written when the minute ends, or when the hub stops), and the chain still verifies.
/// Once, 300 refused calls were 300 rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_refusals_are_written_once_a_minute_with_their_count() {
    let mut c = blocking(|| Cluster::start(RelayKind::Native));
    c.desk
        .ok(&["apps", "add", "tools", "--command", &test_app()]);
    c.desk.ok(&["apps", "share", "tools", "--cluster"]);
    let (laptop, peers) = raw_laptop(&c);
    let desk_id: HubId = c.desk.id().parse().unwrap();
    let handle = peers.handle();
    let calls = (0..300).map(|_| {
        let handle = handle.clone();
        let call = OutgoingCall {
            timeout_ms: 10_000,
            app: "tools".into(),
            tool: "note_write".into(),
            envelope: b"HRDE\x01".to_vec(),
            arguments: br#"{"text":"hi"}"#.to_vec(),
        };
        async move { handle.call(desk_id, call).await }
    });
    for r in futures_util::future::join_all(calls).await {
        match r {
            Err(PeerError::Call { code, .. }) => assert_eq!(code, Some(CallErrorCode::BadEnvelope)),
            other => panic!("{other:?}"),
        }
    }
    peers.shutdown().await;
    // The desk stops: what it counted is written.
    let mut run = c.desk_run.take().unwrap();
    run.signal("TERM");
    assert!(blocking(move || run.wait_exit()), "the desk did not stop");
    let log = blocking(|| c.desk.ok(&["audit", "list", "--peer", &laptop.id()]));
    let refusals: Vec<&str> = log.lines().filter(|l| l.contains("bad_envelope")).collect();
    assert_eq!(refusals.len(), 2, "{log}");
    assert!(refusals[1].ends_with("(299 times)"), "{log}");
    let export = blocking(|| c.desk.ok(&["audit", "export"]));
    let counts: u64 = export
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| {
            e["reason"]
                .as_str()
                .unwrap_or("")
                .starts_with("bad_envelope")
        })
        .map(|e| e["count"].as_u64().unwrap())
        .sum();
    assert_eq!(counts, 300);
    let verified = blocking(|| c.desk.ok(&["audit", "verify"]));
    assert!(verified.contains("the audit chain verifies"), "{verified}");
    blocking(|| drop(c));
}

/// The test plays the laptop itself (its keys, through the relay, `hub run` not started) and
/// sends the desk calls with envelopes it crafts: each refusal comes with its own code, and a
/// call that replays an envelope is refused, also after the desk restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_refusal_has_its_own_code() {
    let mut c = blocking(|| Cluster::start(RelayKind::Native));
    c.desk
        .ok(&["apps", "add", "tools", "--command", &test_app()]);
    c.desk.ok(&["apps", "share", "tools", "--cluster"]);
    c.desk
        .ok(&["apps", "add", "secret", "--command", &test_app()]);
    let (laptop, peers) = raw_laptop(&c);
    let desk_id: HubId = c.desk.id().parse().unwrap();
    let laptop_id: HubId = laptop.id().parse().unwrap();
    let creds = Home::new(PathBuf::from(&laptop.dir)).credentials().unwrap();
    let handle = peers.handle();

    let now = hub_client::unix_ms();
    let envelope = |f: &dyn Fn(&mut Delegation), args: &[u8]| {
        let mut d = Delegation {
            version: shared_proto::agent::ENVELOPE_V1,
            origin: laptop_id,
            target: desk_id,
            issued_at_ms: now,
            expires_at_ms: now + 50_000,
            nonce: rand::random(),
            arguments_sha256: arguments_hash(args),
            principal: "ann".into(),
            app: "tools".into(),
            tool: "note_write".into(),
            scopes: vec![],
        };
        f(&mut d);
        d
    };
    let send =
        |d: Delegation, key: &ed25519_dalek::SigningKey, args: &[u8], raw: Option<Vec<u8>>| {
            let handle = handle.clone();
            let call = OutgoingCall {
                timeout_ms: 10_000,
                app: d.app.clone(),
                tool: d.tool.clone(),
                envelope: raw.unwrap_or_else(|| d.sign(key).unwrap()),
                arguments: args.to_vec(),
            };
            async move { handle.call(desk_id, call).await }
        };
    let code = |r: Result<Vec<u8>, PeerError>| match r {
        Err(PeerError::Call { code, .. }) => code,
        other => panic!("expected a call error, got {other:?}"),
    };
    let args = br#"{"text":"hi"}"#;
    let key = &creds.identity;

    // Accepted, then the same envelope again.
    let good = envelope(&|_| {}, args);
    let result = send(good.clone(), key, args, None).await.unwrap();
    assert!(String::from_utf8_lossy(&result).contains("written"));
    assert_eq!(
        code(send(good.clone(), key, args, None).await),
        Some(CallErrorCode::Replayed)
    );

    let stranger = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let cases: Vec<Case<'_>> = vec![
        (
            "garbage",
            envelope(&|_| {}, args),
            key,
            args,
            Some(b"HRDE\x01".to_vec()),
            CallErrorCode::BadEnvelope,
        ),
        (
            "signed by another key",
            envelope(&|_| {}, args),
            &stranger,
            args,
            None,
            CallErrorCode::WrongSigner,
        ),
        (
            "another origin",
            envelope(&|d| d.origin = desk_id, args),
            key,
            args,
            None,
            CallErrorCode::WrongSigner,
        ),
        (
            "for another hub",
            envelope(&|d| d.target = HubId([9; 16]), args),
            key,
            args,
            None,
            CallErrorCode::WrongTarget,
        ),
        (
            "expired",
            envelope(
                &|d| {
                    d.issued_at_ms = now - 120_000;
                    d.expires_at_ms = now - 60_000;
                },
                args,
            ),
            key,
            args,
            None,
            CallErrorCode::Expired,
        ),
        (
            "other arguments",
            envelope(&|_| {}, br#"{"text":"other"}"#),
            key,
            args,
            None,
            CallErrorCode::ArgumentsMismatch,
        ),
        (
            "an unshared app",
            envelope(&|d| d.app = "secret".into(), args),
            key,
            args,
            None,
            CallErrorCode::NotShared,
        ),
        (
            "outside its scopes",
            envelope(&|d| d.scopes = vec!["app:other".into()], args),
            key,
            args,
            None,
            CallErrorCode::ScopeDenied,
        ),
        (
            "a destructive tool",
            envelope(&|d| d.tool = "wipe".into(), b"{}"),
            key,
            b"{}",
            None,
            CallErrorCode::TrustTooLow,
        ),
        (
            "an unknown tool",
            envelope(&|d| d.tool = "nope".into(), b"{}"),
            key,
            b"{}",
            None,
            CallErrorCode::UnknownTool,
        ),
        // The envelope binds these bytes, but the app would see one "text" of the two: the
        // arguments must be canonical JSON. (Once the call ran with the second one.)
        (
            "a key twice",
            envelope(&|_| {}, br#"{"text":"a","text":"b"}"#),
            key,
            br#"{"text":"a","text":"b"}"#,
            None,
            CallErrorCode::ArgumentsMismatch,
        ),
        (
            "keys out of order",
            envelope(&|_| {}, br#"{"z":1,"text":"a"}"#),
            key,
            br#"{"z":1,"text":"a"}"#,
            None,
            CallErrorCode::ArgumentsMismatch,
        ),
    ];
    for (what, d, k, a, raw, want) in cases {
        assert_eq!(code(send(d, k, a, raw).await), Some(want), "{what}");
    }

    // A call refused by policy leaves its nonce unspent: an envelope with the same nonce for
    // what is shared is then accepted. (Once the refused call spent it, and the next was
    // refused as replayed.)
    let nonce: [u8; 16] = rand::random();
    let unshared = envelope(
        &|d| {
            d.app = "secret".into();
            d.nonce = nonce;
        },
        args,
    );
    assert_eq!(
        code(send(unshared, key, args, None).await),
        Some(CallErrorCode::NotShared)
    );
    let shared = envelope(&|d| d.nonce = nonce, args);
    send(shared.clone(), key, args, None).await.unwrap();
    assert_eq!(
        code(send(shared, key, args, None).await),
        Some(CallErrorCode::Replayed)
    );

    // Replay after the desk restarts: the nonce was kept in its store.
    blocking(|| {
        drop(c.desk_run.take());
        c.desk_run = Some(c.desk.run());
    });
    wait_online(&c.desk, 1);
    let deadline = Instant::now() + Duration::from_secs(15);
    let replayed = loop {
        match send(good.clone(), key, args, None).await {
            Err(PeerError::Call { code, .. }) => break code,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no answer after the restart: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(replayed, Some(CallErrorCode::Replayed));

    // Suspended, then resumed.
    let laptop_text = laptop_id.to_string();
    c.desk.ok(&["peers", "suspend", &laptop_text]);
    assert_eq!(
        code(send(envelope(&|_| {}, args), key, args, None).await),
        Some(CallErrorCode::Suspended)
    );
    c.desk.ok(&["peers", "resume", &laptop_text]);
    send(envelope(&|_| {}, args), key, args, None)
        .await
        .unwrap();

    // Seventeen calls at once (an agent's fan-out): the laptop keeps sixteen in flight to the
    // desk and queues the seventeenth until one ends, so all seventeen run. A caller that does
    // not keep to the bound (a call sent as a raw session message while sixteen run) is refused
    // busy by the desk. (`join!` and `join_all` poll in order: the calls leave in order, one
    // session carries them in order, and the desk counts them as they arrive.)
    let sleep_args: &[u8] = br#"{"ms":3000}"#;
    let calls = (0..17).map(|_| {
        let d = envelope(&|d| d.tool = "sleep".into(), sleep_args);
        send(d, key, sleep_args, None)
    });
    let raw_call = shared_proto::msg::Msg::Call {
        token: 7,
        timeout_ms: 10_000,
        app: "tools",
        tool: "sleep",
        envelope: b"unchecked",
        arguments: sleep_args,
    }
    .encode()
    .unwrap();
    let (results, raw) = tokio::join!(
        futures_util::future::join_all(calls),
        handle.send_session_message(desk_id, raw_call)
    );
    raw.unwrap();
    for r in results {
        assert!(String::from_utf8_lossy(&r.unwrap()).contains("slept"));
    }

    // A caller that stops waiting cancels its calls at the desk: sixteen calls of 30 s given up
    // after 1 s free their places, and the next call runs (without `cancel` it would be busy).
    let long_args: &[u8] = br#"{"ms":30000}"#;
    let given_up = (0..16).map(|_| {
        let d = envelope(&|d| d.tool = "sleep".into(), long_args);
        let call = OutgoingCall {
            timeout_ms: 30_000,
            app: d.app.clone(),
            tool: d.tool.clone(),
            envelope: d.sign(key).unwrap(),
            arguments: long_args.to_vec(),
        };
        let handle = handle.clone();
        // The caller stops waiting after 1 s: dropping the call cancels it at the desk.
        async move { tokio::time::timeout(Duration::from_secs(1), handle.call(desk_id, call)).await }
    });
    for r in futures_util::future::join_all(given_up).await {
        assert!(r.is_err(), "{r:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match send(envelope(&|_| {}, args), key, args, None).await {
            Ok(_) => break,
            Err(PeerError::Call {
                code: Some(CallErrorCode::Busy),
                ..
            }) => {
                assert!(Instant::now() < deadline, "the given-up calls still run");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    // The desk audited the busy refusal and each cancelled call.
    let laptop_hex = laptop_id.to_string();
    let log = blocking(|| {
        c.desk.ok_when(
            &["audit", "list", "--peer", &laptop_hex],
            "16 cancelled calls",
            |out| out.matches("cancelled: the caller stopped waiting").count() >= 16,
        )
    });
    assert!(
        log.contains("busy: too many requests from this hub are running"),
        "{log}"
    );

    // The desk's trust score for the laptop fell with the forged envelopes and the refusals,
    // part by part. The desk answers a refusal while it writes its entry: wait for the entries.
    let deadline = Instant::now() + Duration::from_secs(10);
    let detail = loop {
        let detail = blocking(|| peer_detail(c.desk_run(), &laptop_id.to_string()));
        if score_part(&detail, "refusals")["penalty"] == 8 || Instant::now() > deadline {
            break detail;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let score = &detail["trust_score"];
    let part = |name: &str| score_part(&detail, name)["penalty"].clone();
    assert_eq!(part("signature"), 40, "{score}");
    assert_eq!(part("refusals"), 8, "{score}");
    assert_eq!(score["score"], 52, "{score}");

    // Revoked in the desk's list but not published: the session stays up, the call is refused.
    let cert = laptop.ok(&["cert", "show"]);
    let fingerprint = cert
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint:"))
        .unwrap()
        .trim()
        .to_owned();
    c.desk.ok(&["revoke-cert", &fingerprint, "--offline"]);
    assert_eq!(
        code(send(envelope(&|_| {}, args), key, args, None).await),
        Some(CallErrorCode::Revoked)
    );
    peers.shutdown().await;
    blocking(|| drop(c));
}

/// An agent's token on the desk limits what it may call and how often: its scopes filter the
/// listing and refuse other tools (`scope_denied`, also checked by the laptop, from the
/// envelope), its uses run out; and an app shared with principals is seen by calls made for them
/// only.
#[test]
fn scoped_tokens_and_apps_shared_with_principals() {
    let c = Cluster::start(RelayKind::Native);
    let laptop = c.join("laptop", "agent_dispatch", "");
    laptop.ok(&["apps", "add", "tools", "--command", &test_app()]);
    laptop.ok(&["apps", "share", "tools", "--cluster"]);
    laptop.ok(&["apps", "add", "anns", "--command", &test_app()]);
    // A principal names the hub whose token it is.
    let unqualified = laptop.fails(&["apps", "share", "anns", "--principals", "ann"]);
    assert!(unqualified.contains("ann@HUB"), "{unqualified}");
    laptop.ok(&["apps", "share", "anns", "--principals", "ann@desk"]);
    let _laptop_run = laptop.run();
    // Another hub whose operator also names a token "ann".
    let phone = c.join("phone", "agent_dispatch", "");
    let phone_run = phone.run();
    wait_online(&c.desk, 2);
    let desk = c.desk_run();
    let ann = c
        .desk
        .ok(&[
            "tokens",
            "create",
            "--name",
            "ann",
            "--scopes",
            "app:tools/note_read,app:anns",
            "--max-uses",
            "5",
            "--expires",
            "5m",
        ])
        .trim()
        .to_owned();
    let laptop_apps = |token: &str| -> Vec<(String, Vec<String>)> {
        let answer = desk.request("GET", "/api/apps", Some(token), None);
        assert_eq!(answer.status, 200, "{:?}", answer.json);
        let hubs = answer.json.as_array().unwrap().clone();
        let laptop = hubs
            .iter()
            .find(|h| h["hub_name"] == "laptop")
            .unwrap()
            .clone();
        app_tools(&laptop["apps"])
    };
    let laptop_id = laptop.id();
    let agents_of = |token: &str| {
        let agents = desk.request(
            "GET",
            &format!("/api/federation/peers/{laptop_id}/agents"),
            Some(token),
            None,
        );
        assert_eq!(agents.status, 200, "{:?}", agents.json);
        app_tools(&agents.json)
    };
    // The local user (the CLI's token) sees every tool of `tools`, and not ann's app.
    let local = laptop_apps(&desk.cli_token());
    assert_eq!(
        local.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(),
        ["tools"]
    );
    assert!(local[0].1.len() >= 4, "{local:?}");
    // What the laptop shares with the desk, asked directly (the seed's `/agents` route).
    let names: Vec<String> = agents_of(&desk.cli_token())
        .into_iter()
        .map(|a| a.0)
        .collect();
    assert_eq!(names, ["tools"]);
    // Ann sees her app and, of `tools`, the one tool her token grants.
    let anns = laptop_apps(&ann);
    assert_eq!(
        anns.iter().map(|a| a.0.as_str()).collect::<Vec<_>>(),
        ["anns", "tools"]
    );
    assert_eq!(anns[1].1, ["note_read"]);
    // So does the `/agents` route: her token's scopes limit what it lists.
    let tools = agents_of(&ann);
    assert_eq!(
        tools,
        [
            ("anns".to_owned(), anns[0].1.clone()),
            ("tools".to_owned(), vec!["note_read".to_owned()])
        ]
    );
    let call = |token: &str, app: &str, tool: &str| {
        let body = json!({ "hub": "laptop", "app": app, "tool": tool, "arguments": {} });
        desk.request(
            "POST",
            "/api/apps/call",
            Some(token),
            Some(&body.to_string()),
        )
    };
    assert_eq!(call(&ann, "tools", "note_read").status, 200);
    let denied = call(&ann, "tools", "note_write");
    assert_eq!(
        (denied.status, denied.json["error"]["code"].as_str()),
        (403, Some("scope_denied"))
    );
    // Her app, shared with her as a principal: the fifth use of her token.
    assert_eq!(call(&ann, "anns", "note_read").status, 200);
    // Five uses (two listings and three calls): the sixth request is refused.
    let spent = call(&ann, "anns", "note_read");
    assert_eq!(spent.status, 401, "{:?}", spent.json);
    // The local user cannot call ann's app.
    let not_ann = call(&desk.cli_token(), "anns", "note_read");
    assert_eq!(not_ann.json["error"]["code"], "not_shared");

    // The phone's own "ann" is not the desk's: she neither sees nor calls ann@desk's app.
    let phone_ann = phone
        .ok(&["tokens", "create", "--name", "ann"])
        .trim()
        .to_owned();
    let body = json!({ "hub": "laptop", "app": "anns", "tool": "note_read", "arguments": {} });
    let other_ann = phone_run.request(
        "POST",
        "/api/apps/call",
        Some(&phone_ann),
        Some(&body.to_string()),
    );
    assert_eq!(
        (other_ann.status, other_ann.json["error"]["code"].as_str()),
        (404, Some("not_shared")),
        "{:?}",
        other_ann.json
    );
    let listed = phone_run.request(
        "GET",
        &format!("/api/federation/peers/{laptop_id}/agents"),
        Some(&phone_ann),
        None,
    );
    assert_eq!(listed.status, 200, "{:?}", listed.json);
    let names: Vec<&str> = listed
        .json
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["tools"],
        "the phone's ann sees only what the cluster sees"
    );
}

/// Counts `notifications/tools/list_changed`.
#[derive(Clone, Default)]
struct ListWatcher(std::sync::Arc<tokio::sync::Notify>);

impl rmcp::ClientHandler for ListWatcher {
    async fn on_tool_list_changed(&self, _: rmcp::service::NotificationContext<RoleClient>) {
        self.0.notify_one();
    }
}

/// An agent connected to `hub mcp` is told when the tools change: the laptop shares another app,
/// and the client gets `list_changed` and then sees its tools; the laptop leaves, and they go.
#[test]
fn the_tool_list_follows_apps_and_hubs_coming_and_going() {
    let c = Cluster::start(RelayKind::Native);
    let laptop = c.join("laptop", "agent_dispatch", "");
    laptop.ok(&["apps", "add", "tools", "--command", &test_app()]);
    laptop.ok(&["apps", "add", "later", "--command", &test_app()]);
    laptop.ok(&["apps", "share", "tools", "--cluster"]);
    let mut laptop_run = Some(laptop.run());
    wait_online(&c.desk, 1);
    let short = laptop.id()[..8].to_owned();
    let rt = runtime();
    let watcher = ListWatcher::default();
    let changed = watcher.0.clone();
    let mut cmd = tokio::process::Command::new(hub_bin());
    cmd.arg("--home").arg(&c.desk.dir).arg("mcp");
    let client = rt.block_on(async {
        let (transport, _) = TokioChildProcess::builder(cmd)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        watcher.serve(transport).await.unwrap()
    });
    let names = |client: &RunningService<RoleClient, ListWatcher>| -> Vec<String> {
        rt.block_on(client.list_all_tools())
            .unwrap()
            .into_iter()
            .map(|t| t.name.to_string())
            .collect()
    };
    let later = format!("later_note_read_{short}");
    assert!(names(&client).contains(&format!("tools_note_read_{short}")));
    assert!(!names(&client).contains(&later));

    laptop.ok(&["apps", "share", "later", "--cluster"]);
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(20), changed.notified())
            .await
            .expect("list_changed within 20 s of the share");
    });
    assert!(names(&client).contains(&later));

    drop(laptop_run.take());
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(30), changed.notified())
            .await
            .expect("list_changed within 30 s of the laptop leaving");
    });
    assert!(
        !names(&client).iter().any(|n| n.ends_with(&short)),
        "{:?}",
        names(&client)
    );
    rt.block_on(client.cancel()).unwrap();
}

/// The running hub serves the same surface at `/mcp` (streamable HTTP): an MCP client with an
/// API token lists and calls across hubs; no token gets 401; a foreign `Origin` or `Host` (DNS
/// rebinding) gets 403.
#[test]
fn the_running_hub_serves_mcp_over_http_to_token_holders_only() {
    let c = Cluster::start(RelayKind::Native);
    let laptop = c.join("laptop", "agent_dispatch", "");
    laptop.ok(&["apps", "add", "everything", "--command", &everything()]);
    laptop.ok(&["apps", "share", "everything", "--cluster"]);
    let _laptop_run = laptop.run();
    wait_online(&c.desk, 1);
    let short = laptop.id()[..8].to_owned();
    let token = c
        .desk
        .ok(&["tokens", "create", "--name", "bob"])
        .trim()
        .to_owned();
    let url = format!("{}/mcp", c.desk_run().base);

    runtime().block_on(async {
        use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
        use rmcp::transport::StreamableHttpClientTransport;
        let config =
            StreamableHttpClientTransportConfig::with_uri(url.clone()).auth_header(token.clone());
        let client = ().serve(StreamableHttpClientTransport::from_config(config)).await.unwrap();
        let tools = client.list_all_tools().await.unwrap();
        let echo = format!("everything_echo_{short}");
        assert!(tools.iter().any(|t| t.name == echo.as_str()), "{tools:?}");
        let result = call(
            &client,
            "app.call",
            json!({ "hub": "laptop", "app": "everything", "tool": "echo",
                    "arguments": { "message": "over http" } }),
        )
        .await;
        assert!(text(&result).contains("over http"), "{result:?}");
        client.cancel().await.unwrap();
    });

    let initialize = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": { "name": "probe", "version": "1" } } })
    .to_string();
    let post = |token: Option<&str>, extra: &[(&str, &str)]| {
        let client = reqwest::blocking::Client::new();
        let mut req = client
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(initialize.clone());
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        req.send().unwrap().status().as_u16()
    };
    assert_eq!(post(Some(&token), &[]), 200);
    assert_eq!(post(None, &[]), 401);
    assert_eq!(post(Some("hubapi_not-a-token"), &[]), 401);
    assert_eq!(
        post(Some(&token), &[("origin", "http://evil.example")]),
        403
    );
    // Refused before MCP sees it: the API answers no foreign Host (421, `host_refused`).
    assert_eq!(post(Some(&token), &[("host", "evil.example")]), 421);
    // `/mcp` takes a loopback Host only, and no Origin at all: a LAN address as Host, and a
    // page's own origin, are refused 403 as API.md says. (Once both passed the shared guard.)
    let port = url.rsplit(':').next().unwrap().trim_end_matches("/mcp");
    let lan_host = format!("192.168.1.20:{port}");
    assert_eq!(post(Some(&token), &[("host", lan_host.as_str())]), 403);
    let same_origin = format!("http://127.0.0.1:{port}");
    assert_eq!(post(Some(&token), &[("origin", same_origin.as_str())]), 403);
    let v6 = format!("[::1]:{port}");
    assert_eq!(post(Some(&token), &[("host", v6.as_str())]), 200);
    let named = format!("localhost:{port}");
    assert_eq!(post(Some(&token), &[("host", named.as_str())]), 200);
}

/// A hub on its own, with no cluster: its apps are added, served and called through `hub mcp`
/// (as hub `local`), and creating a cluster later, while it runs, turns federation on with
/// nothing to redo. (Once every call answered "this hub is not a member of a cluster yet".)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hub_on_its_own_serves_its_apps() {
    let dir = tempfile::tempdir().unwrap();
    let solo = HubHome::new(dir.path().join("solo"));
    blocking(|| solo.ok(&["apps", "add", "tools", "--command", &test_app()]));
    let run = blocking(|| solo.run());
    let client = mcp_client(&solo).await;
    let listed = text(&call(&client, "apps.list", json!({})).await);
    assert!(listed.contains("\"hub_id\": \"local\""), "{listed}");
    assert!(listed.contains("note_write"), "{listed}");
    let written = call(
        &client,
        "app.call",
        json!({ "hub": "local", "app": "tools", "tool": "note_write",
                "arguments": { "text": "on my own" } }),
    )
    .await;
    assert_ne!(written.is_error, Some(true), "{written:?}");
    let tools = client.list_all_tools().await.unwrap();
    assert!(
        tools.iter().any(|t| t.name == "tools_note_read_local"),
        "{:?}",
        tools.iter().map(|t| t.name.clone()).collect::<Vec<_>>()
    );
    let read = call(&client, "tools_note_read_local", json!({})).await;
    assert_eq!(text(&read), "on my own");
    // Another hub's name is not one it knows.
    let other = call(
        &client,
        "app.call",
        json!({ "hub": "laptop", "app": "tools", "tool": "note_read" }),
    )
    .await;
    assert_eq!(other.is_error, Some(true));
    assert!(
        text(&other).contains("not a member of a cluster yet"),
        "{other:?}"
    );
    // The console's apps page reads the same list.
    let apps = blocking(|| run.request("GET", "/api/apps", Some(&run.cli_token()), None));
    assert_eq!(apps.json[0]["hub_id"], "local", "{}", apps.json);

    // Federation on, while it runs: its apps stay, under its new id and name too.
    let relay = blocking(|| RelayProcess::start(RelayKind::Native));
    blocking(|| solo.create_cluster("solo", &relay.url()));
    blocking(|| {
        solo.ok_when(&["status"], "running as a member", |out| {
            out.contains(" connected")
        })
    });
    let read = call(
        &client,
        "app.call",
        json!({ "hub": "solo", "app": "tools", "tool": "note_read" }),
    )
    .await;
    assert_eq!(text(&read), "on my own");
    let read = call(
        &client,
        "app.call",
        json!({ "hub": "local", "app": "tools", "tool": "note_read" }),
    )
    .await;
    assert_eq!(text(&read), "on my own");
    client.cancel().await.unwrap();
    blocking(move || drop((run, relay)));
}

/// An agent client's request over `hub mcp`'s 16 MiB bound on stdio is answered with a JSON-RPC
/// error naming the bound, and the session goes on. (Once the line was dropped and the client
/// waited until its own timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_mcp_answers_a_request_over_its_bound() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let c = blocking(|| Cluster::start(RelayKind::Native));
    let mut child = tokio::process::Command::new(hub_bin())
        .arg("--home")
        .arg(&c.desk.dir)
        .arg("mcp")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let init = json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": { "name": "probe", "version": "1" } } });
    let big = json!({ "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
        "name": "app.call", "arguments": { "text": "x".repeat(17 << 20) } } });
    let ping = json!({ "jsonrpc": "2.0", "id": 3, "method": "ping" });
    let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
    for message in [init, initialized, big, ping] {
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .unwrap();
    }
    stdin.flush().await.unwrap();
    let mut answers = std::collections::BTreeMap::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        while answers.len() < 3 {
            let line = lines.next_line().await.unwrap().expect("hub mcp ended");
            let answer: Value = serde_json::from_str(&line).unwrap();
            if let Some(id) = answer["id"].as_u64() {
                answers.insert(id, answer);
            }
        }
    })
    .await;
    assert!(read.is_ok(), "answers so far: {answers:?}");
    assert_eq!(answers[&2]["error"]["code"], -32600, "{:?}", answers[&2]);
    let message = answers[&2]["error"]["message"].as_str().unwrap();
    assert!(message.contains("16 MiB"), "{message}");
    assert!(answers[&3].get("result").is_some(), "{:?}", answers[&3]);
    drop(stdin);
    let _ = child.wait().await;
    blocking(|| drop(c));
}

/// Both hubs record a call across them in their audit logs (who, for whom, what, the decision,
/// the arguments' hash, never the arguments), refusals too; `hub audit verify` passes, and fails
/// naming the entry once the database is changed behind the hub's back; a hub killed while
/// appending leaves a chain that verifies.
#[test]
fn calls_are_audited_on_both_sides_and_tampering_is_found() {
    let c = Cluster::start(RelayKind::Native);
    let laptop = c.join("laptop", "agent_dispatch", "");
    laptop.ok(&["apps", "add", "tools", "--command", &test_app()]);
    laptop.ok(&["apps", "share", "tools", "--cluster"]);
    let _laptop_run = laptop.run();
    wait_online(&c.desk, 1);
    let desk = c.desk_run();
    let token = desk.cli_token();
    let secret = "a secret argument";
    for (app, tool, status) in [
        ("tools", "note_write", 200),
        ("unshared", "note_write", 404),
    ] {
        let body = json!({ "hub": "laptop", "app": app, "tool": tool,
                           "arguments": { "text": secret } });
        let answer = desk.request(
            "POST",
            "/api/apps/call",
            Some(&token),
            Some(&body.to_string()),
        );
        assert_eq!(answer.status, status, "{app}: {}", answer.json);
    }
    let laptop_id = laptop.id();
    let desk_id = c.desk.id();
    let desk_log = c
        .desk
        .ok(&["audit", "list", "--json", "--peer", &laptop_id]);
    // The laptop records a call while it answers it: wait for both entries.
    let laptop_log = laptop.ok_when(
        &["audit", "list", "--json", "--peer", &desk_id],
        "two call.in entries",
        |out| out.matches("\"call.in\"").count() >= 2,
    );
    let entries = |log: &str, kind: &str| -> Vec<Value> {
        log.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["kind"] == kind)
            .collect()
    };
    let out = entries(&desk_log, "call.out");
    let inn = entries(&laptop_log, "call.in");
    assert_eq!(out.len(), 2, "{desk_log}");
    assert_eq!(inn.len(), 2, "{laptop_log}");
    assert_eq!(
        (out[0]["tool"].as_str(), out[0]["decision"].as_str()),
        (Some("note_write"), Some("ok"))
    );
    assert_eq!(
        (out[1]["decision"].as_str(), out[1]["reason"].as_str()),
        (Some("refused"), Some("not_shared"))
    );
    assert_eq!(
        (inn[0]["decision"].as_str(), inn[0]["principal"].as_str()),
        (Some("allowed"), Some("local"))
    );
    assert_eq!(inn[1]["decision"], "refused");
    assert!(inn[1]["reason"].as_str().unwrap().starts_with("not_shared"));
    let hash = hex_sha256(br#"{"text":"a secret argument"}"#);
    assert_eq!(inn[0]["arguments_sha256"], hash.as_str());
    assert_eq!(out[0]["arguments_sha256"], hash.as_str());
    // Bytes carried: the arguments, and the result when there is one; both sides count the same.
    let args_len = br#"{"text":"a secret argument"}"#.len() as u64;
    let bytes = |e: &Value| e["bytes"].as_u64().unwrap();
    assert!(bytes(&inn[0]) > args_len, "{}", inn[0]);
    assert_eq!(bytes(&out[0]), bytes(&inn[0]));
    assert_eq!((bytes(&out[1]), bytes(&inn[1])), (args_len, args_len));
    for home in [&c.desk, &laptop] {
        assert!(!home.ok(&["audit", "export"]).contains(secret));
        assert!(home.ok(&["audit", "verify"]).contains("verifies"));
    }
    let peer_entries: Vec<Value> = desk
        .request(
            "GET",
            &format!("/api/federation/audit?peer={laptop_id}"),
            Some(&token),
            None,
        )
        .json
        .as_array()
        .unwrap()
        .clone();
    assert!(
        peer_entries.iter().any(|e| e["kind"] == "pairing"),
        "{peer_entries:?}"
    );

    // Statistics count them, in total and for the peer, from the CLI and the API.
    let all = |json: &str| -> Value {
        let windows: Value = serde_json::from_str(json).unwrap();
        windows
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["window"] == "all")
            .unwrap()
            .clone()
    };
    let desk_stats = all(&c.desk.ok(&["stats", "--json"]));
    assert_eq!(desk_stats["total"]["calls_out"], 2, "{desk_stats}");
    assert_eq!(
        desk_stats["total"]["call_bytes"].as_u64(),
        Some(bytes(&out[0]) + bytes(&out[1])),
        "{desk_stats}"
    );
    assert_eq!(
        desk_stats["peers"][&laptop_id]["refused_out"]["not_shared"], 1,
        "{desk_stats}"
    );
    let laptop_stats = all(&laptop.ok(&["stats", "--json"]));
    assert_eq!(laptop_stats["total"]["calls_in"], 2, "{laptop_stats}");
    assert_eq!(laptop_stats["total"]["accepted_in"], 1, "{laptop_stats}");
    assert_eq!(
        laptop_stats["peers"][&desk_id]["refused_in"]["not_shared"], 1,
        "{laptop_stats}"
    );
    let api_stats = desk.request("GET", "/api/federation/stats", Some(&token), None);
    let api_all = api_stats
        .json
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["window"] == "all")
        .unwrap()
        .clone();
    // Token uses aside (the API request counts one itself), the same counts.
    let uses_aside = |mut w: Value| {
        w.as_object_mut().unwrap().remove("token_uses");
        w
    };
    assert_eq!(uses_aside(api_all), uses_aside(desk_stats));

    // Behind the hub's back: change an entry's reason, then delete one.
    let seq = laptop.rewrite_audit_reason("call.in", "nothing to see");
    let db = laptop.db();
    let err = laptop.fails(&["audit", "verify"]);
    assert!(
        err.contains(&format!("entry {seq}: its MAC does not match")),
        "{err}"
    );
    db.execute("UPDATE audit_log SET reason = 'ok' WHERE seq = ?1", [seq])
        .unwrap();
    assert!(laptop.ok(&["audit", "verify"]).contains("verifies"));
    db.execute("DELETE FROM audit_log WHERE seq = ?1", [seq])
        .unwrap();
    let err = laptop.fails(&["audit", "verify"]);
    assert!(
        err.contains(&format!("expected sequence number {seq}")),
        "{err}"
    );

    // Appends killed mid-way leave a whole chain: the desk records every `apps share`.
    c.desk.ok(&["apps", "add", "x", "--command", &test_app()]);
    for i in 0..40 {
        let mut child = c
            .desk
            .command()
            .args(["apps", "share", "x", "--cluster"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(500 * (i % 8)));
        let _ = child.kill();
        let _ = child.wait();
    }
    assert!(c.desk.ok(&["audit", "verify"]).contains("verifies"));
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Hubs send each other their signed audit heads: the desk notices when the laptop's log is cut
/// back (rolled back to an older state) and when it is then rewritten (another MAC for an entry
/// number it saw), and says so for that peer.
#[test]
fn a_peer_notices_an_audit_log_cut_back_or_rewritten() {
    let c = Cluster::start(RelayKind::Native);
    let laptop = c.join("laptop", "agent_dispatch", "");
    let fast = ["--audit-head-interval", "1"];
    let mut laptop_run = Some(laptop.run_with(&fast));
    wait_online(&c.desk, 1);
    laptop.ok(&["apps", "add", "x", "--command", &test_app()]);
    for _ in 0..5 {
        laptop.ok(&["apps", "share", "x", "--cluster"]);
    }
    let laptop_id = laptop.id();
    let head_seen = |pred: &dyn Fn(&Value) -> bool, what: &str| -> Value {
        let desk = c.desk_run();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let detail = peer_detail(desk, &laptop_id);
            if pred(&detail["audit_head"]) {
                return detail["audit_head"].clone();
            }
            assert!(Instant::now() < deadline, "no {what}: {detail}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let db = laptop.dir.join("hub.db");
    let count = || -> i64 {
        let db = rusqlite::Connection::open(&db).unwrap();
        db.query_row("SELECT max(seq) FROM audit_log", [], |r| r.get(0))
            .unwrap()
    };
    let full = count();
    assert!(full >= 6, "{full}");
    let held = head_seen(&|h| h["seq"] == full, "head of the whole log");
    assert_eq!(held["inconsistencies"], 0);

    // Cut back: the laptop's newest entries are gone, as after restoring an older database.
    drop(laptop_run.take());
    rusqlite::Connection::open(&db)
        .unwrap()
        .execute("DELETE FROM audit_log WHERE seq > 2", [])
        .unwrap();
    assert!(
        laptop.ok(&["audit", "verify"]).contains("verifies"),
        "a cut log verifies by itself"
    );
    laptop_run = Some(laptop.run_with(&fast));
    let cut = head_seen(
        &|h| h["inconsistencies"] == 1,
        "inconsistency after the cut",
    );
    let problem = cut["last_problem"].as_str().unwrap();
    assert!(
        problem.contains(&format!("went back from {full} to 2")),
        "{problem}"
    );

    // Rewritten: new entries bring it to the same number with other contents.
    while count() < full {
        laptop.ok(&["apps", "share", "x", "--local-only"]);
    }
    let forked = head_seen(
        &|h| h["inconsistencies"] == 2,
        "inconsistency after the rewrite",
    );
    let problem = forked["last_problem"].as_str().unwrap();
    assert!(
        problem.contains(&format!("two different MACs for its entry {full}")),
        "{problem}"
    );
    let detail = peer_detail(c.desk_run(), &laptop_id);
    assert_eq!(score_part(&detail, "audit")["penalty"], 50, "{detail}");
    assert!(c
        .desk
        .ok(&["peers"])
        .lines()
        .any(|l| l.starts_with(&laptop_id) && l.ends_with(" 50")));
    // The desk recorded both in its own audit log.
    let desk_log = c.desk.ok(&["audit", "list", "--peer", &laptop_id]);
    assert_eq!(
        desk_log.matches("audit.inconsistent").count(),
        2,
        "{desk_log}"
    );
    drop(laptop_run);
}

/// Hubs compare notes: each reports what it sees of the others (certificate, manifest epoch,
/// audit head). The desk counts the phone's agreeing report in the laptop's quorum part, and
/// when the phone holds another audit head for the laptop at the same entry (the laptop showed it
/// another chain), the laptop's score drops by the quorum part, which names the phone.
#[test]
fn hubs_compare_what_they_see_of_each_other() {
    let c = Cluster::start(RelayKind::Native);
    let laptop = c.join("laptop", "agent_dispatch", "");
    let phone = c.join("phone", "read_only", "");
    // Something in the laptop's log, before it runs (a MAC to compare).
    laptop.ok(&["apps", "add", "x", "--command", &test_app()]);
    let fast = ["--audit-head-interval", "1"];
    let _laptop_run = laptop.run_with(&fast);
    let _phone_run = phone.run_with(&fast);
    wait_online(&c.desk, 2);
    wait_online(&phone, 2);
    let (laptop_id, phone_id) = (laptop.id(), phone.id());
    // Sessions between every pair.
    phone.ok(&["ping", &laptop_id, "--count", "1"]);
    c.desk.ok(&["ping", &laptop_id, "--count", "1"]);
    c.desk.ok(&["ping", &phone_id, "--count", "1"]);

    let desk = c.desk_run();
    let quorum_of_laptop = |pred: &dyn Fn(&Value) -> bool, what: &str| -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let detail = peer_detail(desk, &laptop_id);
            if pred(&score_part(&detail, "quorum")) {
                return detail;
            }
            assert!(Instant::now() < deadline, "no {what}: {detail}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let agreed = quorum_of_laptop(
        &|p| {
            p["observed"]
                .as_str()
                .is_some_and(|o| o.starts_with("1 of 1 "))
        },
        "agreeing report from the phone",
    );
    assert_eq!(agreed["trust_score"]["score"], 100, "{agreed}");

    // The phone now holds another MAC for the laptop's newest entry, as if the laptop had shown
    // it another chain. (The laptop's log does not grow meanwhile: nothing happens on it.)
    let phone_db = rusqlite::Connection::open(phone.dir.join("hub.db")).unwrap();
    let laptop_key: Vec<u8> = (0..laptop_id.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&laptop_id[i..i + 2], 16).unwrap())
        .collect();
    let changed = phone_db
        .execute(
            "UPDATE peer_audit_heads SET mac = zeroblob(32) WHERE peer = ?1",
            [&laptop_key],
        )
        .unwrap();
    assert_eq!(changed, 1, "the phone held the laptop's head");
    let split = quorum_of_laptop(&|p| p["penalty"] == 15, "disagreement");
    let part = score_part(&split, "quorum");
    let observed = part["observed"].as_str().unwrap();
    assert!(observed.starts_with("0 of 1 "), "{observed}");
    assert!(
        observed.contains(&format!(
            "{phone_id}: it holds another audit head for entry"
        )),
        "{observed}"
    );
    assert_eq!(split["trust_score"]["score"], 85, "{split}");
}

/// A pairing guest may name any hub id: one that takes the id of a member that is offline and
/// sends that member's issuer a forged handshake costs the member nothing (the relay does not
/// list it online, so the bytes are not provably the member's). Once, four such guests a minute
/// apart took 40 points off the member for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_in_an_offline_members_name_costs_it_nothing() {
    use futures_util::{SinkExt, StreamExt};
    use shared_proto::relay::frame::{frames, Extension, Frame, Hello};
    use tokio_tungstenite::tungstenite::Message;

    let c = blocking(|| Cluster::start(RelayKind::Native));
    let phone = blocking(|| c.join("phone", "full", ""));
    let phone_id: HubId = phone.id().parse().unwrap();
    let desk_home = Home::new(PathBuf::from(&c.desk.dir));
    let desk_id: HubId = c.desk.id().parse().unwrap();
    let cluster = desk_home.cluster_id().unwrap();
    let url =
        hub_client::transport::relay::connect_url(&c._relay.url(), cluster.as_str(), &phone_id)
            .unwrap();
    let (mut guest, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    let mut hello = Hello::new(phone_id);
    hello.extensions.push(Extension {
        kind: shared_proto::trust::login::PAIRING_EXTENSION,
        data: desk_id.as_bytes(),
    });
    let hello = Frame::Hello(hello).to_message().unwrap();
    guest.send(Message::Binary(hello.into())).await.unwrap();
    let send = |payload: Vec<u8>| {
        let frame = Frame::Send {
            dst: desk_id,
            payload: &payload,
        };
        Message::Binary(frame.to_message().unwrap().into())
    };
    // The desk's certificate in the phone's name (a handshake fault, were it the phone's), then
    // an unreadable pairing request, which the desk answers: by then it has handled the first.
    let mut wrong_cert = vec![0x05];
    wrong_cert.extend_from_slice(desk_home.certificate().unwrap().der());
    guest.send(send(wrong_cert)).await.unwrap();
    guest.send(send(vec![0x10, 1, 2, 3])).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(message)) = guest.next().await {
            let Message::Binary(bytes) = message else {
                continue;
            };
            for frame in frames(&bytes) {
                if let Ok(Frame::Recv { src, payload }) = frame {
                    if src == desk_id && payload.first() == Some(&0x12) {
                        return true;
                    }
                }
            }
        }
        false
    })
    .await;
    assert_eq!(answered, Ok(true), "the desk's pairing refusal");
    let log = blocking(|| c.desk.ok(&["audit", "list", "--peer", &phone.id()]));
    assert!(!log.contains("peer.fault"), "{log}");
    let detail = blocking(|| peer_detail(c.desk_run(), &phone.id()));
    assert_eq!(score_part(&detail, "signature")["penalty"], 0, "{detail}");
    blocking(|| drop(c));
}

/// A peer's refused handshakes, audit heads, manifests and views messages lower the signature
/// part of its score, each recorded as a `peer.fault` in the audit log at most once a minute per
/// kind (a peer that keeps at it does not grow the log).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faulty_handshakes_and_documents_lower_the_signature_part() {
    let c = blocking(|| Cluster::start(RelayKind::Native));
    let (laptop, peers) = raw_laptop(&c);
    let desk_id: HubId = c.desk.id().parse().unwrap();
    let laptop_id = laptop.id();
    let handle = peers.handle();
    handle.ping(desk_id, Duration::from_secs(10)).await.unwrap();

    // Someone else's certificate in the laptop's name: a handshake fault.
    let desk_cert = Home::new(PathBuf::from(&c.desk.dir)).certificate().unwrap();
    let mut wrong_cert = vec![0x05]; // the CERT handshake payload (PROTOCOL.md section 10)
    wrong_cert.extend_from_slice(desk_cert.der());
    for _ in 0..2 {
        handle.send_views(desk_id, b"junk").await.unwrap();
        handle.send_audit_head(desk_id, b"junk").await.unwrap();
        handle.send_manifest(desk_id, b"junk").await.unwrap();
        handle.send_raw(desk_id, wrong_cert.clone()).await.unwrap();
    }
    let faults = |log: &str| log.matches("peer.fault").count();
    let log = blocking(|| {
        c.desk.ok_when(
            &["audit", "list", "--peer", &laptop_id],
            "4 faults",
            |out| faults(out) >= 4,
        )
    });
    for what in ["handshake", "audit_head", "manifest", "views"] {
        assert!(log.contains(&format!("{what}: ")), "{what} in {log}");
    }
    // The desk still answers the laptop, and has recorded each kind once.
    handle.ping(desk_id, Duration::from_secs(10)).await.unwrap();
    let log = blocking(|| c.desk.ok(&["audit", "list", "--peer", &laptop_id]));
    assert_eq!(faults(&log), 4, "{log}");

    let detail = blocking(|| peer_detail(c.desk_run(), &laptop_id));
    let signature = score_part(&detail, "signature");
    assert_eq!(signature["penalty"], 40, "{signature}");
    assert!(
        signature["observed"]
            .as_str()
            .unwrap()
            .contains("4 refused handshake(s) or document(s)"),
        "{signature}"
    );
    peers.shutdown().await;
    blocking(|| drop(c));
}
