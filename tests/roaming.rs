#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Roaming: a hub whose path to the relay dies and comes back loses no call.
//!
//! - On 127.0.0.1 (both relays): the laptop reaches the relay through a TCP proxy the test cuts
//!   (nothing refused, everything lost) and restores; a call from the desk is running on the
//!   laptop when its path is cut, the laptop's answer goes into the dead path, and once the path
//!   is back the call ends with that answer, having run once.
//! - In network namespaces (root; tests/support/netns.rs): the hub's address changes while a call
//!   waits (the old one removed, a new one added a second later), as when a phone moves from
//!   Wi-Fi to cellular; the hub sees it (rtnetlink), reconnects from its new address, and the
//!   call completes, once.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e::cli::HubHome;
use e2e::netns::TwoHubs;
use e2e::path::CuttablePath;
use e2e::{wait_until, RelayKind, RelayProcess};
use serde_json::{json, Value};

/// The in-repo test app (built with this test).
fn test_app() -> String {
    env!("CARGO_BIN_EXE_test-app").to_owned()
}

fn relay_port(relay: &RelayProcess) -> u16 {
    let url = relay.url();
    url.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

fn a_call_running_while_the_targets_path_dies_ends_once_with_its_answer(kind: RelayKind) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let relay = RelayProcess::start(kind);
    let path = rt.block_on(CuttablePath::start(relay_port(&relay)));
    let dir = tempfile::tempdir().unwrap();
    let desk = HubHome::new(dir.path().join("desk"));
    desk.create_cluster("desk", &relay.url());
    let desk_run = desk.run();
    let token = desk.ok(&["invite"]).trim().to_owned();
    let laptop = HubHome::new(dir.path().join("laptop"));
    laptop.ok(&["join", &token, "--name", "laptop"]);
    laptop.ok(&["apps", "add", "tools", "--command", &test_app()]);
    laptop.ok(&["apps", "share", "tools", "--cluster"]);
    // The laptop reaches the relay only through the path the test cuts.
    let config = laptop.dir.join("hub.toml");
    let toml = std::fs::read_to_string(&config).unwrap();
    let toml = toml.replace(&relay.url().replace("http://", "ws://"), &path.url());
    let toml = toml.replace(&relay.url(), &path.url());
    assert!(toml.contains(&path.url()), "{toml}");
    std::fs::write(&config, toml).unwrap();
    let laptop_run = laptop.run();
    let api = desk_run.cli_token();
    wait_until("the laptop online", Duration::from_secs(30), || {
        let status = desk_run.request("GET", "/api/federation/peers", Some(&api), None);
        status.json.to_string().contains("\"online\":true")
    });
    let connections_before = path.connections.load(Ordering::SeqCst);
    let down_before = path.down_bytes.load(Ordering::SeqCst);

    // A call that runs 1.5 s on the laptop; its path dies while it runs.
    let call = {
        let url = format!("{}/api/apps/call", desk_run.base);
        let api = api.clone();
        std::thread::spawn(move || {
            let body = json!({ "hub": "laptop", "app": "tools", "tool": "sleep",
                               "arguments": { "ms": 1500 }, "timeout_ms": 45_000 });
            let resp = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap()
                .post(url)
                .bearer_auth(api)
                .json(&body)
                .send()
                .unwrap();
            (resp.status().as_u16(), resp.text().unwrap())
        })
    };
    // The call (its envelope alone is a few hundred bytes) reached the laptop.
    wait_until(
        "the call passed to the laptop",
        Duration::from_secs(20),
        || path.down_bytes.load(Ordering::SeqCst) > down_before + 400,
    );
    path.cut();
    let cut_at = Instant::now();
    // The laptop finds its path dead (its answer went out and nothing came back) and tries to
    // reconnect, which fails while the network is away.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(cut_at.elapsed()));
    path.restore();
    let (status, answer) = call.join().unwrap();
    assert_eq!(status, 200, "{answer}\n{}", laptop_run.log());
    assert!(answer.contains("slept"), "{answer}");
    assert!(
        path.connections.load(Ordering::SeqCst) > connections_before,
        "the laptop reconnected"
    );
    // Run once: one call.in on the laptop, allowed; none refused as replayed.
    let calls = laptop.calls_in(&desk.id());
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0]["decision"], "allowed", "{calls:?}");
}

mod a_call_running_while_the_targets_path_dies_ends_once_with_its_answer {
    #[test]
    fn native() {
        super::a_call_running_while_the_targets_path_dies_ends_once_with_its_answer(
            super::RelayKind::Native,
        )
    }
    #[test]
    fn workerd() {
        super::a_call_running_while_the_targets_path_dies_ends_once_with_its_answer(
            super::RelayKind::Workerd,
        )
    }
}

#[test]
fn a_call_waiting_while_the_hubs_address_changes_completes_once() {
    let hubs = match TwoHubs::start_with(&test_app(), &["--no-lan"]) {
        Ok(hubs) => hubs,
        Err(e) => {
            let message =
                format!("cannot create network namespaces ({e}): the roaming test is SKIPPED");
            assert!(
                std::env::var_os("HUBRELAY_REQUIRE_NETNS").is_none(),
                "{message}, and HUBRELAY_REQUIRE_NETNS is set"
            );
            eprintln!("{message}");
            return;
        }
    };
    let (a, b) = (&hubs.a, &hubs.b);
    a.ok_when(
        &["peers"],
        Duration::from_secs(30),
        "b by the relay",
        |_| a.path_to(&hubs.b_id) == "relay",
    );
    let relay_bytes = hubs.net.relay_bytes();
    let call = a.call_sleep_in_thread(1_500);
    // The call went through the relay to b (its envelope alone is a few hundred bytes each way).
    wait_until(
        "the call through the relay",
        Duration::from_secs(20),
        || hubs.net.relay_bytes() > relay_bytes + 1_000,
    );
    // b moves: its address goes away, and a second later it has another one, with a route.
    let (ns_b, ns_r) = (hubs.net.ns("b"), hubs.net.ns("r"));
    hubs.net
        .ip(&["-n", &ns_b, "addr", "del", "10.201.2.2/30", "dev", "wan0"]);
    std::thread::sleep(Duration::from_secs(1));
    hubs.net
        .ip(&["-n", &ns_r, "addr", "add", "10.201.2.5/30", "dev", "wb"]);
    let moved = Instant::now();
    hubs.net
        .ip(&["-n", &ns_b, "addr", "add", "10.201.2.6/30", "dev", "wan0"]);
    hubs.net.ip(&[
        "-n",
        &ns_b,
        "route",
        "add",
        "10.201.0.1/32",
        "via",
        "10.201.2.5",
    ]);
    let out = call.join().unwrap();
    assert!(out.contains("slept"), "{out}");
    eprintln!(
        "the call ended {} ms after b was given its new address",
        moved.elapsed().as_millis()
    );
    let log = std::fs::read_to_string(b.dir.with_extension("log")).unwrap();
    assert!(
        log.contains("no longer has the address 10.201.2.2"),
        "b saw its address go: {log}"
    );
    // Run once: one call.in on b, allowed.
    let a_id = a.ok(&["id"]).trim().to_owned();
    // The entry is written as the call is answered, and may reach the store just after.
    let audit = b.ok_when(
        &["audit", "list", "--json", "--peer", &a_id],
        Duration::from_secs(10),
        "a call.in entry",
        |out| out.contains("\"call.in\""),
    );
    let calls: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|e| e["kind"] == "call.in")
        .collect();
    assert_eq!(calls.len(), 1, "{audit}");
    assert_eq!(calls[0]["decision"], "allowed", "{audit}");
}
