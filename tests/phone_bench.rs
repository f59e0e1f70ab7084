//! The browser hub's figures (scripts/bench-phone; results in docs/BENCHMARKS.md), each against a
//! baseline run in the same process:
//!
//! - the wasm module's size, raw and gzip (what a phone downloads once);
//! - a Noise IK handshake (both sides, first meeting, certificate checks) in Chromium's wasm,
//!   against the same code native in this process (the native hub's build, aws-lc's X25519);
//! - from the network coming back to the first call answered, in Chromium: with the browser's
//!   `online` event (what a phone's browser fires when its network returns) against the page's
//!   reconnect backoff alone; the network is a TCP path cut for 10 s while the call waits;
//! - what a hidden, idle page sends: messages per hour through the path, hidden against shown.
//!
//! Environment: `PHONE_ROUNDS` (network rounds per mode, default 5), `PHONE_IDLE_MINUTES` (per
//! idle mode, default 3).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use e2e::browser::{click, fill, join_page, present, text_when, until, Driver};
use e2e::cli::HubHome;
use e2e::path::CuttablePath;
use e2e::{repo_root, RelayKind, RelayProcess};
use fantoccini::Client;
use serde_json::Value;

const PHONE: (u32, u32) = (390, 844);

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn gzip_len(bytes: &[u8]) -> usize {
    let mut child = Command::new("gzip")
        .arg("-9c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("gzip");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    child.wait_with_output().unwrap().stdout.len()
}

/// Runs `script` (an async function body) in the page and returns its value.
async fn run(b: &Client, script: &str) -> Value {
    let wrapped = format!(
        "const done = arguments[arguments.length - 1]; (async () => {{ {script} }})().then(done, (e) => done({{error: String(e)}}));"
    );
    b.execute_async(&wrapped, vec![]).await.unwrap()
}

fn main() {
    let rounds = env_or("PHONE_ROUNDS", 5) as usize;
    let idle_minutes = env_or("PHONE_IDLE_MINUTES", 3);
    let wasm = std::fs::read(repo_root().join("hub-web/build/phone/pkg/hub_web_bg.wasm"))
        .expect("the phone page is built (scripts/build-web)");
    println!(
        "wasm module: {} bytes, {} gzip -9",
        wasm.len(),
        gzip_len(&wasm)
    );

    // The handshake, native, in this process.
    let n = 200;
    let fixture = hub_web::bench::fixture();
    hub_web::bench::handshakes(20, &fixture);
    let native: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            assert_eq!(hub_web::bench::handshakes(n, &fixture), n);
            t.elapsed().as_secs_f64() * 1e3 / f64::from(n)
        })
        .collect();
    let native = median(native);

    let rt = e2e::runtime();
    let relay = RelayProcess::start(RelayKind::Workerd);
    let port = relay.url().rsplit(':').next().unwrap().parse().unwrap();
    let path = rt.block_on(CuttablePath::start(port));
    let dir = tempfile::tempdir().unwrap();
    let (desk, _desk_run) = HubHome::founder_sharing(
        dir.path(),
        &relay.url(),
        "tools",
        env!("CARGO_BIN_EXE_test-app"),
    );
    let (token, through) = path.token_through(&desk.ok(&["invite"]));

    rt.block_on(async {
        let driver = Driver::start();
        let b = driver.browser_sized(PHONE.0, PHONE.1).await;
        join_page(&b, &format!("{through}/phone/"), &token, "phone").await;

        // The handshake in Chromium: the page's own module, timed by the page's clock.
        let browser = run(
            &b,
            &format!(
                "const m = await import('./pkg/hub_web.js'); await m.default();
                 const f = {fixture:?};
                 m.benchHandshakes(20, f);
                 const out = [];
                 for (let i = 0; i < 7; i++) {{
                   const t = performance.now();
                   if (m.benchHandshakes({n}, f) !== {n}) throw new Error('a handshake failed');
                   out.push((performance.now() - t) / {n});
                 }}
                 return out;"
            ),
        )
        .await;
        let browser: Vec<f64> = browser
            .as_array()
            .unwrap_or_else(|| panic!("{browser}"))
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let browser = median(browser);
        println!(
            "IK handshake (both sides, first meeting): {browser:.3} ms in Chromium (wasm32), {native:.3} ms native (the hub's build)  ->  {:.1}x",
            browser / native
        );

        // The network comes back while a call waits.
        let sleep = "li[data-name=desk] button[data-tool=sleep]";
        present(&b, sleep).await;
        click(&b, sleep).await;
        fill(&b, "#tool-form input[name=ms]", "10").await;
        run(
            &b,
            "const r = document.getElementById('tool-result');
             new MutationObserver(() => {
               if (r.textContent.includes('slept') && !window.answeredAt) window.answeredAt = Date.now();
             }).observe(r, {childList: true, subtree: true, characterData: true});
             return true;",
        )
        .await;
        for (label, online_event) in [("with the online event", true), ("backoff alone", false)] {
            let mut back = Vec::new();
            for _ in 0..rounds {
                run(&b, "window.answeredAt = 0; return true;").await;
                path.cut();
                click(&b, "#tool-form button[type=submit]").await;
                present(&b, "body[data-connected=false]").await;
                let cut_at = Instant::now();
                tokio::time::sleep(Duration::from_secs(10).saturating_sub(cut_at.elapsed()))
                    .await;
                path.restore();
                let script = if online_event {
                    "window.backAt = Date.now(); window.dispatchEvent(new Event('online')); return true;"
                } else {
                    "window.backAt = Date.now(); return true;"
                };
                run(&b, script).await;
                let ms = until("the call answered", || async {
                    let v = run(&b, "return window.answeredAt ? window.answeredAt - window.backAt : 0;").await;
                    v.as_f64().filter(|ms| *ms > 0.0)
                })
                .await;
                text_when(&b, "#tool-result", |t| t.contains("slept")).await;
                present(&b, "body[data-connected=true]").await;
                back.push(ms);
            }
            back.sort_by(f64::total_cmp);
            println!(
                "network back -> call answered ({label}): median {:.0} ms, all {back:?}",
                median(back.clone())
            );
        }

        // Idle: what goes up the path in `idle_minutes`, shown, then hidden.
        let per_hour = |reads: u64| reads as f64 * 60.0 / idle_minutes as f64;
        let mut figures = Vec::new();
        for hidden in [false, true] {
            if hidden {
                run(
                    &b,
                    "Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
                     Object.defineProperty(document, 'visibilityState', {configurable: true, get: () => 'hidden'});
                     document.dispatchEvent(new Event('visibilitychange'));
                     return true;",
                )
                .await;
            }
            // Let what a call left behind settle first.
            tokio::time::sleep(Duration::from_secs(5)).await;
            let before = path.up_reads.load(Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(idle_minutes * 60)).await;
            let reads = path.up_reads.load(Ordering::SeqCst) - before;
            figures.push(per_hour(reads));
            println!(
                "idle page, {}: {reads} messages up in {idle_minutes} min  ->  {:.0} per hour",
                if hidden { "hidden" } else { "shown" },
                per_hour(reads)
            );
        }
        println!(
            "hidden / shown: {:.2}x the messages",
            figures[1] / figures[0].max(1.0)
        );
        b.close().await.unwrap();
    });
}
