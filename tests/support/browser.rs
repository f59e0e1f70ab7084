#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A real headless Chromium (Debian's `chromium` and `chromium-driver`, installed by
//! scripts/setup) driven through WebDriver, and the waits the browser tests share.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long a condition in the page may take.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// ChromeDriver on a free loopback port, stopped on drop.
#[derive(Debug)]
pub struct Driver {
    child: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Driver {
    pub fn start() -> Self {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: run scripts/setup (it installs Debian's chromium and chromium-driver)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < DEADLINE,
                "chromedriver did not listen within {DEADLINE:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url,
            _profile: tempfile::tempdir().unwrap(),
        }
    }

    /// A Chromium session with a desktop window.
    pub async fn browser(&self) -> Client {
        self.browser_sized(1280, 900).await
    }

    /// A Chromium session with a window of `width` x `height` CSS pixels (a phone's: 390 x 844).
    pub async fn browser_sized(&self, width: u32, height: u32) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", self._profile.path().display()),
                ],
            }),
        );
        // Plain HTTP to chromedriver on loopback: no TLS stack needed.
        let http = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(http)
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `f` gives `Some`, polling the page, or fails naming `what`.
pub async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the element `css`, if there is one.
pub async fn text(b: &Client, css: &str) -> Option<String> {
    b.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

/// Waits until the element `css` has a text for which `pred` holds; returns it.
pub async fn text_when(b: &Client, css: &str, pred: impl Fn(&str) -> bool) -> String {
    until(&format!("{css} to read as expected"), || async {
        text(b, css).await.filter(|t| pred(t))
    })
    .await
}

pub async fn attr(b: &Client, css: &str, name: &str) -> Option<String> {
    b.find(Locator::Css(css))
        .await
        .ok()?
        .attr(name)
        .await
        .ok()
        .flatten()
}

/// Clicks the element `css` once it is there. A live update may redraw the element between
/// finding and clicking it (a stale element): then it is found again and clicked.
pub async fn click(b: &Client, css: &str) {
    until(&format!("{css} to click"), || async {
        match b.find(Locator::Css(css)).await.ok()?.click().await {
            Ok(()) => Some(()),
            Err(e) if e.is_stale_element_reference() => None,
            Err(e) => panic!("clicking {css}: {e}"),
        }
    })
    .await;
}

/// Types `value` into the input `css` in place of what it held, again if a live update redrew
/// the input meanwhile, until the input holds it.
pub async fn fill(b: &Client, css: &str, value: &str) {
    until(&format!("{css} to hold {value:?}"), || async {
        let input = b.find(Locator::Css(css)).await.ok()?;
        input.clear().await.ok()?;
        input.send_keys(value).await.ok()?;
        let held = input.prop("value").await.ok()??;
        (held == value).then_some(())
    })
    .await;
}

/// A Chrome DevTools Protocol command through ChromeDriver (`goog/cdp/execute`).
#[derive(Debug)]
struct Cdp {
    cmd: &'static str,
    params: serde_json::Value,
}

impl fantoccini::wd::WebDriverCompatibleCommand for Cdp {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/goog/cdp/execute",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        let body = json!({ "cmd": self.cmd, "params": self.params });
        (http::Method::POST, Some(body.to_string()))
    }
}

/// Runs CDP command `cmd` with `params` in the browser.
pub async fn cdp(b: &Client, cmd: &'static str, params: serde_json::Value) -> serde_json::Value {
    b.issue_cmd(Cdp { cmd, params })
        .await
        .unwrap_or_else(|e| panic!("CDP {cmd}: {e}"))
}

/// Waits until the element `css` is in the page.
pub async fn present(b: &Client, css: &str) {
    until(&format!("{css} in the page"), || async {
        b.find(Locator::Css(css)).await.ok().map(|_| ())
    })
    .await;
}

/// Opens the phone page at `page` (its URL) with `token` in the fragment, joins under `name`,
/// and waits until the page is a member connected to the relay.
pub async fn join_page(b: &Client, page: &str, token: &str, name: &str) {
    b.goto(&format!("{page}#token={token}")).await.unwrap();
    present(b, "body[data-state=join]").await;
    fill(b, "#join-name", name).await;
    click(b, "#join-button").await;
    present(b, "body[data-state=member]").await;
    present(b, "body[data-connected=true]").await;
}
