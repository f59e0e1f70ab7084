#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The phone page (hub-web, a hub in the browser) in a real headless Chromium with a phone's
//! window, served by the relay Worker in workerd from its static assets (scripts/build-web builds
//! it): it joins the desk's cluster with a token from `hub invite` in its URL's fragment, lists
//! the desk's apps and calls server-everything's `echo` through a form made from its schema; an
//! MCP client on the desk (`hub mcp`) calls the phone's `location` (the position the test gives
//! the browser) and `ask` (answered by a click in the page); then the phone is revoked, and the
//! page says so. And roaming: the phone's network (a TCP path the test cuts) goes away for 10 s
//! while its call waits, and comes back: the call completes, once.

use e2e::browser::{cdp, click, fill, present, text_when, until, Driver};
use e2e::cli::HubHome;
use e2e::path::CuttablePath;
use e2e::{hub_bin, repo_root, RelayKind, RelayProcess};
use fantoccini::{Client, Locator};
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::RunningService;
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::{json, Value};

/// A phone's viewport (CSS pixels).
const PHONE: (u32, u32) = (390, 844);

/// The in-repo test app (built with this test).
fn test_app() -> String {
    env!("CARGO_BIN_EXE_test-app").to_owned()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn assert_page_built() {
    assert!(
        repo_root().join("hub-web/build/phone/index.html").exists(),
        "the phone page is not built: run scripts/build-web (scripts/test does)"
    );
}

/// Joins the page at `page` to the cluster of `token`, under `name`, and waits until it is
/// connected.
async fn join(b: &Client, page: &str, token: &str, name: &str) {
    b.goto(&format!("{page}#token={token}")).await.unwrap();
    present(b, "body[data-state=join]").await;
    fill(b, "#join-name", name).await;
    click(b, "#join-button").await;
    present(b, "body[data-state=member]").await;
    present(b, "body[data-connected=true]").await;
}

fn everything() -> String {
    let bin = repo_root().join("node_modules/.bin/mcp-server-everything");
    assert!(
        bin.exists(),
        "{} is missing: run scripts/setup",
        bin.display()
    );
    bin.display().to_string()
}

async fn mcp_client(home: &HubHome) -> RunningService<RoleClient, ()> {
    let mut cmd = tokio::process::Command::new(hub_bin());
    cmd.arg("--home").arg(&home.dir).arg("mcp");
    let (transport, _) = TokioChildProcess::builder(cmd)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    ().serve(transport).await.unwrap()
}

async fn call(client: &RunningService<RoleClient, ()>, args: Value) -> CallToolResult {
    let mut params = CallToolRequestParams::new("app.call");
    params.arguments = args.as_object().cloned();
    client.call_tool(params).await.unwrap()
}

fn text(result: &CallToolResult) -> String {
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A blocking call (the CLI) inside the async test.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The phone's id, as the page shows it.
async fn phone_id(b: &Client) -> String {
    until("the page to show its hub id", || async {
        let who = b.find(Locator::Css("#who")).await.ok()?;
        who.attr("data-id").await.ok().flatten()
    })
    .await
}

#[test]
fn a_phone_joins_calls_the_desk_and_is_called_by_its_agent() {
    assert_page_built();
    let relay = RelayProcess::start(RelayKind::Workerd);
    let dir = tempfile::tempdir().unwrap();
    let desk = HubHome::new(dir.path().join("desk"));
    desk.create_cluster("desk", &relay.url());
    desk.ok(&["apps", "add", "everything", "--command", &everything()]);
    desk.ok(&["apps", "share", "everything", "--cluster"]);
    let _desk_run = desk.run();
    let token = desk
        .ok(&["invite", "--trust-level", "agent_dispatch"])
        .trim()
        .to_owned();

    runtime().block_on(async {
        let driver = Driver::start();
        let b = driver.browser_sized(PHONE.0, PHONE.1).await;
        let page = format!("{}/phone/", relay.url());
        // The position the browser reports (Geolocation), and leave to use it.
        let origin = relay.url();
        cdp(
            &b,
            "Browser.grantPermissions",
            json!({ "origin": origin, "permissions": ["geolocation"] }),
        )
        .await;
        cdp(
            &b,
            "Emulation.setGeolocationOverride",
            json!({ "latitude": 48.8584, "longitude": 2.2945, "accuracy": 12 }),
        )
        .await;

        // Join: the token arrives in the fragment, as the console's QR code gives it, and
        // leaves the URL at once.
        join(&b, &page, &token, "phone").await;
        let url = b.current_url().await.unwrap();
        assert!(
            !url.as_str().contains("hubpair1_"),
            "the token stayed in the URL: {url}"
        );

        // The desk's apps, and a call of echo through the form made from its schema.
        present(&b, "li[data-name=desk] button[data-tool=echo]").await;
        click(&b, "li[data-name=desk] button[data-tool=echo]").await;
        fill(&b, "#tool-form input[name=message]", "hello from the phone").await;
        click(&b, "#tool-form button[type=submit]").await;
        let shown = text_when(&b, "#tool-result", |t| t.contains("hello from the phone")).await;
        assert!(shown.contains("Echo"), "{shown}");

        // The phone shares its app with the cluster; the desk's agent finds it and calls it.
        b.find(Locator::Css("#sharing"))
            .await
            .unwrap()
            .select_by_value("cluster")
            .await
            .unwrap();
        click(&b, "#sharing-form button[type=submit]").await;
        text_when(&b, "#sharing-said", |t| t == "saved").await;
        let phone = phone_id(&b).await;

        let client = mcp_client(&desk).await;
        let location = call(
            &client,
            json!({ "hub": "phone", "app": "phone", "tool": "location", "arguments": {} }),
        )
        .await;
        assert_ne!(location.is_error, Some(true), "{location:?}");
        let where_ = location
            .structured_content
            .clone()
            .unwrap_or_else(|| serde_json::from_str(&text(&location)).unwrap());
        assert_eq!(where_["latitude"], 48.8584, "{location:?}");
        assert_eq!(where_["longitude"], 2.2945, "{location:?}");

        // `ask`: the question shows on the phone; the test answers it with a click.
        let asking = {
            let client_call = call(
                &client,
                json!({ "hub": "phone", "app": "phone", "tool": "ask",
                        "arguments": { "question": "Deploy now?", "choices": ["yes", "no"] } }),
            );
            let answer = async {
                text_when(&b, ".ask .question", |t| t == "Deploy now?").await;
                click(&b, ".ask button[data-choice=yes]").await;
            };
            let (result, ()) = tokio::join!(client_call, answer);
            result
        };
        assert_ne!(asking.is_error, Some(true), "{asking:?}");
        assert_eq!(text(&asking), "yes", "{asking:?}");
        // Both calls are in the phone's audit chain.
        text_when(&b, "#audit", |t| {
            t.contains("call.in phone/location") && t.contains("call.in phone/ask")
        })
        .await;
        client.cancel().await.unwrap();

        // Revoked: the relay cuts the phone off, and the page says so.
        blocking(|| desk.ok(&["peers", "revoke", &phone]));
        present(&b, "body[data-state=revoked]").await;
        let said = text_when(&b, "#revoked", |t| t.contains("revoked")).await;
        assert!(said.contains("can no longer reach"), "{said}");
        // A reload keeps it revoked (the list is kept with the page's state).
        b.refresh().await.unwrap();
        present(&b, "body[data-state=revoked]").await;
        b.close().await.unwrap();
    });
}

#[test]
fn a_call_waiting_while_the_phones_network_is_away_completes_once() {
    assert_page_built();
    let rt = runtime();
    let relay = RelayProcess::start(RelayKind::Workerd);
    let port = relay.url().rsplit(':').next().unwrap().parse().unwrap();
    let path = rt.block_on(CuttablePath::start(port));
    let dir = tempfile::tempdir().unwrap();
    let desk = HubHome::new(dir.path().join("desk"));
    desk.create_cluster("desk", &relay.url());
    desk.ok(&["apps", "add", "tools", "--command", &test_app()]);
    desk.ok(&["apps", "share", "tools", "--cluster"]);
    let _desk_run = desk.run();
    // The phone reaches the relay (and its page) only through the path the test cuts: its token
    // names the path as the relay.
    let token = desk.ok(&["invite"]).trim().to_owned();
    let mut token = shared_proto::session::pairing::PairingToken::parse(&token).unwrap();
    let through = path.url().replace("ws://", "http://");
    token.relay_url = through.clone();
    let token = token.encode().unwrap();

    rt.block_on(async {
        let driver = Driver::start();
        let b = driver.browser_sized(PHONE.0, PHONE.1).await;
        join(&b, &format!("{through}/phone/"), &token, "phone").await;
        let phone = phone_id(&b).await;
        let connections = path.connections.load(std::sync::atomic::Ordering::SeqCst);

        // A call of 1.5 s on the desk; the network goes away as it is made, for 10 s.
        let sleep = "li[data-name=desk] button[data-tool=sleep]";
        present(&b, sleep).await;
        click(&b, sleep).await;
        fill(&b, "#tool-form input[name=ms]", "1500").await;
        click(&b, "#tool-form button[type=submit]").await;
        path.cut();
        text_when(&b, "#tool-result", |t| t.contains("calling")).await;
        // The page finds its path dead and tries again, in vain, until the network is back.
        present(&b, "body[data-connected=false]").await;
        tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        path.restore();
        let shown = text_when(&b, "#tool-result", |t| t.contains("slept")).await;
        assert!(!shown.contains("error"), "{shown}");
        assert!(
            path.connections.load(std::sync::atomic::Ordering::SeqCst) > connections,
            "the phone reconnected"
        );
        b.close().await.unwrap();

        // Run once: one call.in from the phone on the desk, allowed.
        let log = blocking(|| {
            desk.ok_when(
                &["audit", "list", "--json", "--peer", &phone],
                "a call.in entry",
                |out| out.contains("\"call.in\""),
            )
        });
        let calls: Vec<Value> = log
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["kind"] == "call.in")
            .collect();
        assert_eq!(calls.len(), 1, "{log}");
        assert_eq!(calls[0]["decision"], "allowed", "{log}");
        assert_eq!(calls[0]["tool"], "sleep", "{log}");
    });
}
