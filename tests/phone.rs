#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The phone page (hub-web, a hub in the browser) in a real headless Chromium with a phone's
//! window, served by the relay Worker in workerd from its static assets (scripts/build-web builds
//! it): it joins the desk's cluster with a token from `hub invite` in its URL's fragment, lists
//! the desk's apps and calls server-everything's `echo` through a form made from its schema; an
//! MCP client on the desk (`hub mcp`) calls the phone's `location` (the position the test gives
//! the browser) and `ask` (answered by a click in the page); then the phone is revoked, and the
//! page says so. And roaming: the phone's network (a TCP path the test cuts) goes away for 10 s
//! while its call waits, and comes back: the call completes, once.

use e2e::browser::{cdp, click, fill, join_page, present, text_when, until, Driver};
use e2e::cli::HubHome;
use e2e::mcp::{call, everything, mcp_client, text};
use e2e::path::CuttablePath;
use e2e::{blocking, repo_root, runtime, RelayKind, RelayProcess};
use fantoccini::{Client, Locator};
use serde_json::json;

/// A phone's viewport (CSS pixels).
const PHONE: (u32, u32) = (390, 844);

/// The in-repo test app (built with this test).
fn test_app() -> String {
    env!("CARGO_BIN_EXE_test-app").to_owned()
}

fn assert_page_built() {
    assert!(
        repo_root().join("hub-web/build/phone/index.html").exists(),
        "the phone page is not built: run scripts/build-web (scripts/test does)"
    );
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
    let (desk, _desk_run) =
        HubHome::founder_sharing(dir.path(), &relay.url(), "everything", &everything());
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
        join_page(&b, &page, &token, "phone").await;
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
            "app.call",
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
                "app.call",
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
    let (desk, _desk_run) =
        HubHome::founder_sharing(dir.path(), &relay.url(), "tools", &test_app());
    // The phone reaches the relay (and its page) only through the path the test cuts: its token
    // names the path as the relay.
    let (token, through) = path.token_through(&desk.ok(&["invite"]));

    rt.block_on(async {
        let driver = Driver::start();
        let b = driver.browser_sized(PHONE.0, PHONE.1).await;
        join_page(&b, &format!("{through}/phone/"), &token, "phone").await;
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
        let calls = blocking(|| desk.calls_in(&phone));
        assert_eq!(calls.len(), 1, "{calls:?}");
        assert_eq!(calls[0]["decision"], "allowed", "{calls:?}");
        assert_eq!(calls[0]["tool"], "sleep", "{calls:?}");
    });
}
