#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The operator console in a real headless Chromium (Debian's `chromium` and `chromium-driver`,
//! installed by scripts/setup), driven through WebDriver: a desk hub with `hub relay`, a laptop
//! that comes online, is revoked and goes, an app whose sharing changes, a pairing token with its
//! QR code, and an audit log tampered with behind the hub's back. With `CONSOLE_SCREENSHOTS=DIR`
//! each page is saved as a PNG there (scripts/console-screenshots writes them into docs/).

use std::path::PathBuf;
use std::time::Duration;

use e2e::browser::{attr, click, fill, text_when, until, Driver};
use e2e::cli::{HubHome, RunningHub};
use e2e::{blocking, RelayKind, RelayProcess};
use fantoccini::{Client, Locator};
use serde_json::{json, Value};

async fn visit(b: &Client, base: &str, page: &str) {
    b.goto(&format!("{base}/#{page}")).await.unwrap();
    until(&format!("page {page} shown"), || async {
        let shown = b
            .find(Locator::Css(&format!("#page-{page}")))
            .await
            .ok()?
            .is_displayed()
            .await
            .ok()?;
        shown.then_some(())
    })
    .await;
}

/// Saves the window as `DIR/console-{name}.png` when `CONSOLE_SCREENSHOTS=DIR` is set.
async fn screenshot(b: &Client, name: &str) {
    let Ok(dir) = std::env::var("CONSOLE_SCREENSHOTS") else {
        return;
    };
    // Let a chart or a late refresh settle before the picture.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let png = b.screenshot().await.unwrap();
    let path = PathBuf::from(dir).join(format!("console-{name}.png"));
    std::fs::write(&path, png).unwrap();
}

fn admin_token(home: &HubHome) -> String {
    home.ok(&["tokens", "create", "--name", "console", "--admin"])
        .trim()
        .to_owned()
}

fn test_app() -> String {
    env!("CARGO_BIN_EXE_test-app").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_shows_and_drives_the_cluster_live() {
    let relay = RelayProcess::start(RelayKind::Native);
    let dir = tempfile::tempdir().unwrap();
    let desk = HubHome::new(dir.path().join("desk"));
    desk.create_cluster("desk", &relay.url());
    desk.ok(&["apps", "add", "notes", "--command", &test_app()]);
    let desk_run = blocking(|| desk.run());
    let token = admin_token(&desk);
    let base = desk_run.base.clone();
    let driver = Driver::start();
    let b = driver.browser().await;

    // Sign in: a wrong token is refused, the right one opens the cluster page.
    b.goto(&base).await.unwrap();
    fill(&b, "#token", "hubapi_not-a-token").await;
    click(&b, "#signin-button").await;
    text_when(&b, "#signin-error", |t| t.contains("not valid")).await;
    fill(&b, "#token", &token).await;
    click(&b, "#signin-button").await;
    let status = blocking(|| {
        desk_run
            .request("GET", "/api/status", Some(&token), None)
            .json
    });
    let cluster_id = status["cluster_id"].as_str().unwrap().to_owned();
    text_when(&b, "#fact-cluster", |t| t == cluster_id).await;
    text_when(&b, "#fact-relay-state", |t| t.starts_with("connected")).await;
    text_when(&b, "#fact-expiry", |t| t.contains("days")).await;
    screenshot(&b, "cluster").await;

    // A laptop joins and comes online: the peers page shows it without a reload.
    visit(&b, &base, "peers").await;
    let invite = desk.ok(&["invite", "--trust-level", "agent_dispatch"]);
    let laptop = HubHome::new(dir.path().join("laptop"));
    laptop.ok(&["join", invite.trim(), "--name", "laptop"]);
    laptop.ok(&["apps", "add", "files", "--command", &test_app()]);
    laptop.ok(&["apps", "share", "files", "--cluster"]);
    let laptop_id = laptop.id();
    let _laptop_run: RunningHub = blocking(|| laptop.run());
    let row = format!("tr[data-peer='{laptop_id}']");
    until("the laptop online in the peers table", || async {
        let state = attr(&b, &row, "data-state").await?;
        (state == "online").then_some(())
    })
    .await;
    click(&b, &format!("{row} button")).await; // Details
    text_when(&b, "#peer-detail", |t| t.contains("Trust score")).await;
    screenshot(&b, "peers").await;

    // Apps: this hub's app is shared with nobody; share it with the cluster.
    visit(&b, &base, "apps").await;
    let app_row = "tr[data-app='notes']";
    text_when(&b, &format!("{app_row} td.shared"), |t| t == "local").await;
    fill(&b, &format!("{app_row} input.sharing"), "cluster").await;
    click(&b, &format!("{app_row} button")).await;
    text_when(&b, &format!("{app_row} td.shared"), |t| t == "cluster").await;
    let apps = desk.ok(&["apps", "list"]);
    assert!(
        apps.lines()
            .any(|l| l.starts_with("notes") && l.contains("cluster")),
        "{apps}"
    );
    // The laptop's shared app is listed among other hubs' apps.
    text_when(&b, &format!("div[data-hub='{laptop_id}']"), |t| {
        t.contains("files")
    })
    .await;
    screenshot(&b, "apps").await;

    // Statistics: calls made now show without a reload, and the chart is drawn.
    visit(&b, &base, "stats").await;
    text_when(&b, "tr[data-window='all']", |t| t.starts_with("all 0")).await;
    for (app, text) in [("files", "one"), ("files", "two"), ("nope", "refused")] {
        let body = json!({ "hub": "laptop", "app": app, "tool": "note_write",
                           "arguments": { "text": text } });
        blocking(|| {
            desk_run.request(
                "POST",
                "/api/apps/call",
                Some(&token),
                Some(&body.to_string()),
            )
        });
    }
    let all = text_when(&b, "tr[data-window='all']", |t| t.starts_with("all 3")).await;
    assert!(all.starts_with("all 3 1 "), "3 calls out, 1 refused: {all}");
    until("the chart drawn", || async {
        b.find(Locator::Css("#stats-chart canvas")).await.ok()
    })
    .await;
    screenshot(&b, "stats").await;

    // Pairing: a token shown once, with its QR code.
    visit(&b, &base, "pairing").await;
    click(&b, "#pairing-make").await;
    let pairing = until("a pairing token", || async {
        let v = b
            .find(Locator::Id("pairing-token"))
            .await
            .ok()?
            .prop("value")
            .await
            .ok()??;
        (!v.is_empty()).then_some(v)
    })
    .await;
    assert!(
        pairing.starts_with("hubpair"),
        "a pairing token: {pairing:?}"
    );
    let qr_width = until("the QR code drawn", || async {
        let img = "const i = document.getElementById('pairing-qr'); \
                   return i.complete ? i.naturalWidth : 0;";
        let w = b.execute(img, vec![]).await.ok()?.as_u64()?;
        (w > 0).then_some(w)
    })
    .await;
    assert!(qr_width >= 256, "{qr_width}");
    // The QR code is the phone page's link, with the token in its fragment.
    let link = attr(&b, "#pairing-phone", "href").await.unwrap_or_default();
    assert!(
        link.ends_with(&format!("/phone/#token={pairing}")),
        "{link}"
    );
    screenshot(&b, "pairing").await;
    // Leaving the page forgets it.
    visit(&b, &base, "cluster").await;
    visit(&b, &base, "pairing").await;
    let shown = b
        .find(Locator::Id("pairing-token"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(shown.is_empty(), "the token is shown once");

    // Suspend and resume the laptop, each after a confirmation; a cancelled one changes nothing.
    visit(&b, &base, "peers").await;
    click(&b, &format!("{row} button[data-action='suspend']")).await;
    text_when(&b, "#confirm-text", |t| t.starts_with("Suspend laptop")).await;
    click(&b, "#confirm-no").await;
    click(&b, &format!("{row} button[data-action='suspend']")).await;
    click(&b, "#confirm-yes").await;
    text_when(&b, &format!("{row} td.state"), |t| t.contains("suspended")).await;
    let laptop_detail = || {
        blocking(|| {
            desk_run
                .request(
                    "GET",
                    &format!("/api/federation/peers/{laptop_id}"),
                    Some(&token),
                    None,
                )
                .json
        })
    };
    let suspended = laptop_detail();
    assert!(suspended["suspended_at"].is_u64(), "{suspended}");
    click(&b, &format!("{row} button[data-action='resume']")).await;
    click(&b, "#confirm-yes").await;
    text_when(&b, &format!("{row} td.state"), |t| t == "online").await;

    // Revoke the laptop, with a confirmation: it goes.
    click(&b, &format!("{row} button[data-action='revoke']")).await;
    let dialog_text = text_when(&b, "#confirm-text", |t| t.contains("Revoke")).await;
    assert!(dialog_text.contains("laptop"), "{dialog_text}");
    click(&b, "#confirm-yes").await;
    until("the laptop gone from the peers table", || async {
        let rows = b.find_all(Locator::Css(&row)).await.ok()?;
        rows.is_empty().then_some(())
    })
    .await;
    let detail = laptop_detail();
    assert!(detail["revoked_at"].is_u64(), "{detail}");

    // The audit log verifies; tampered with behind the hub's back, the console flags it.
    visit(&b, &base, "audit").await;
    text_when(&b, "#audit-verify", |t| t.contains("verifies")).await;
    let seq = desk.rewrite_audit_reason("app.share", "local");
    visit(&b, &base, "cluster").await;
    visit(&b, &base, "audit").await;
    let banner = text_when(&b, "#audit-verify", |t| t.contains("NOT verify")).await;
    assert!(banner.contains(&format!("entry {seq}")), "{banner}");
    // Read once the row is drawn (a live update may redraw the table between finding the row
    // and reading it: then it is read again).
    let row = format!("tr[data-seq='{seq}']");
    until(&format!("entry {seq} flagged"), || async {
        attr(&b, &row, "class")
            .await
            .filter(|class| class == "flagged")
    })
    .await;
    screenshot(&b, "audit").await;

    b.close().await.unwrap();
}

/// The API refuses a foreign `Host` (DNS rebinding) and a foreign `Origin`, and every answer
/// carries the Content-Security-Policy; the page's assets are served by the hub itself.
#[test]
fn the_api_refuses_foreign_hosts_and_origins() {
    let relay = RelayProcess::start(RelayKind::Native);
    let dir = tempfile::tempdir().unwrap();
    let desk = HubHome::new(dir.path().join("desk"));
    desk.create_cluster("desk", &relay.url());
    let run = desk.run();
    let token = admin_token(&desk);
    let client = reqwest::blocking::Client::new();
    let get = |path: &str, headers: &[(&str, &str)]| {
        let mut req = client
            .get(format!("{}{path}", run.base))
            .bearer_auth(&token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().unwrap()
    };
    let page = get("/", &[]);
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().unwrap();
    assert!(html.contains("/console/console.js") && !html.contains("https://"));
    for asset in [
        "console.js",
        "console.css",
        "uPlot.iife.min.js",
        "uPlot.min.css",
    ] {
        assert_eq!(
            get(&format!("/console/{asset}"), &[]).status(),
            200,
            "{asset}"
        );
    }
    assert_eq!(get("/console/nope.js", &[]).status(), 404);

    let rebound = get("/api/status", &[("host", "evil.example:80")]);
    assert_eq!(rebound.status(), 421);
    let body: Value = rebound.json().unwrap();
    assert_eq!(body["error"]["code"], "host_refused");
    let host = run.base.trim_start_matches("http://").to_owned();
    let cross = get("/api/status", &[("origin", "http://evil.example")]);
    assert_eq!(cross.status(), 403);
    let body: Value = cross.json().unwrap();
    assert_eq!(body["error"]["code"], "origin_refused");
    let same = get("/api/status", &[("origin", &format!("http://{host}"))]);
    assert_eq!(same.status(), 200);
    assert_eq!(get("/api/status", &[("host", "localhost:1")]).status(), 200);
}
