//! `app.call` round trips: an MCP client calls a tool of an app on another hub through the desk's
//! `/mcp` (desk -> relay -> laptop -> the app, and back), against the same client calling the same
//! app directly over stdio, in one process; and the desk's own copy of the app through `/mcp`,
//! which separates what the HTTP surface costs from what crossing the cluster costs; and the same
//! call in a second cluster whose hubs record nothing (`hub run --bench-unaudited`), measured in
//! alternating blocks with the first, for what auditing costs. Through `hub relay` and workerd. Run with
//! `scripts/bench-apps` (it builds the Worker and the release `hub` first). With
//! `APPS_BEFORE_BIN` (a `hub` binary of another build; `APPS_BEFORE=REV scripts/bench-apps` builds
//! one from a git revision), a third cluster runs that binary and its calls across hubs are
//! measured in alternating blocks with this build's: before against after, in one run.
// A benchmark measures wall-clock time and panics on setup failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use e2e::cli::HubHome;
use e2e::{env_number, RelayKind, RelayProcess};
use rmcp::model::CallToolRequestParams;
use rmcp::service::RunningService;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceExt};

const WARMUP: usize = 50;

fn calls() -> usize {
    env_number("APPS_CALLS", 1000)
}

/// `n` sequential calls of `tool`; their round trips, sorted.
async fn measure(client: &RunningService<RoleClient, ()>, tool: &str, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..WARMUP + n {
        let started = Instant::now();
        let result = client
            .call_tool(CallToolRequestParams::new(tool.to_owned()))
            .await
            .unwrap();
        assert_ne!(result.is_error, Some(true), "{result:?}");
        if i >= WARMUP {
            out.push(started.elapsed());
        }
    }
    out.sort();
    out
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// One line: `sorted`'s p50 and p99, and their ratios to `base`'s.
fn report(label: &str, sorted: &[Duration], base: &[Duration]) {
    let (p50, p99) = (pct(sorted, 0.5), pct(sorted, 0.99));
    let (b50, b99) = (pct(base, 0.5), pct(base, 0.99));
    println!(
        "{label}  p50 {:>7.3} ms  p99 {:>7.3} ms  ratio to direct: p50 {:.1}x  p99 {:.1}x",
        ms(p50),
        ms(p99),
        p50.as_secs_f64() / b50.as_secs_f64(),
        p99.as_secs_f64() / b99.as_secs_f64()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() {
    let n = calls();
    let app = env!("CARGO_BIN_EXE_test-app");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    println!("{n} sequential calls of a read-only tool (test-app note_read), after {WARMUP} warm-up calls");
    let direct = rt.block_on(async {
        let cmd = tokio::process::Command::new(app);
        let client = ().serve(TokioChildProcess::new(cmd).unwrap()).await.unwrap();
        let rtts = measure(&client, "note_read", n).await;
        client.cancel().await.unwrap();
        rtts
    });
    let (d50, d99) = (pct(&direct, 0.5), pct(&direct, 0.99));
    println!(
        "direct (stdio)          p50 {:>7.3} ms  p99 {:>7.3} ms",
        ms(d50),
        ms(d99)
    );
    for kind in [RelayKind::Native, RelayKind::Workerd] {
        let relay = RelayProcess::start(kind);
        let dir = tempfile::tempdir().unwrap();
        let name = match kind {
            RelayKind::Native => "hub relay",
            RelayKind::Workerd => "workerd",
        };
        // Two clusters on the same relay, one with auditing off, measured in alternating blocks
        // so that both see the same machine.
        let audited = Pair::start(&relay, &dir.path().join("audited"), app, true, None);
        let unaudited = Pair::start(&relay, &dir.path().join("unaudited"), app, false, None);
        let (local, through, through_unaudited) = rt.block_on(async {
            let a = audited.client().await;
            let u = unaudited.client().await;
            let local = measure(&a, &audited.local_tool, n).await;
            let (mut through, mut bare) = (Vec::new(), Vec::new());
            for _ in 0..BLOCKS {
                through.extend(measure(&a, &audited.tool, n / BLOCKS).await);
                bare.extend(measure(&u, &unaudited.tool, n / BLOCKS).await);
            }
            through.sort();
            bare.sort();
            a.cancel().await.unwrap();
            u.cancel().await.unwrap();
            (local, through, bare)
        });
        report("desk's own app via /mcp ", &local, &direct);
        report(&format!("across hubs ({name:<9})"), &through, &direct);
        report("  the same, unaudited   ", &through_unaudited, &direct);
        println!(
            "auditing's cost per call across hubs ({name}): p50 {:+.3} ms ({:.2}x), p99 {:+.3} ms",
            ms(pct(&through, 0.5)) - ms(pct(&through_unaudited, 0.5)),
            pct(&through, 0.5).as_secs_f64() / pct(&through_unaudited, 0.5).as_secs_f64(),
            ms(pct(&through, 0.99)) - ms(pct(&through_unaudited, 0.99)),
        );
        assert!(
            !unaudited.desk.ok(&["audit", "list"]).contains("call.out"),
            "the unaudited run recorded calls"
        );
        assert!(audited.desk.ok(&["audit", "list"]).contains("call.out"));
        if let Some(before_bin) = std::env::var_os("APPS_BEFORE_BIN") {
            let before = Pair::start(
                &relay,
                &dir.path().join("before"),
                app,
                true,
                Some(before_bin.as_ref()),
            );
            let (old, new) = rt.block_on(async {
                let b = before.client().await;
                let a = audited.client().await;
                let (mut old, mut new) = (Vec::new(), Vec::new());
                for _ in 0..BLOCKS {
                    old.extend(measure(&b, &before.tool, n / BLOCKS).await);
                    new.extend(measure(&a, &audited.tool, n / BLOCKS).await);
                }
                old.sort();
                new.sort();
                b.cancel().await.unwrap();
                a.cancel().await.unwrap();
                (old, new)
            });
            report(&format!("before ({name:<9})      "), &old, &direct);
            report(&format!("after  ({name:<9})      "), &new, &direct);
            println!(
                "after against before, across hubs ({name}): p50 {:+.3} ms ({:.2}x), p99 {:+.3} ms ({:.2}x)",
                ms(pct(&new, 0.5)) - ms(pct(&old, 0.5)),
                pct(&new, 0.5).as_secs_f64() / pct(&old, 0.5).as_secs_f64(),
                ms(pct(&new, 0.99)) - ms(pct(&old, 0.99)),
                pct(&new, 0.99).as_secs_f64() / pct(&old, 0.99).as_secs_f64(),
            );
        }
    }
}

/// Blocks the calls across hubs are measured in, alternating audited and unaudited.
const BLOCKS: usize = 10;

/// A desk and a laptop in their own cluster on `relay`, each with the test app (the laptop's
/// shared), running; with auditing off if not `audited`.
struct Pair {
    desk: HubHome,
    desk_run: e2e::cli::RunningHub,
    _laptop_run: e2e::cli::RunningHub,
    api_token: String,
    tool: String,
    local_tool: String,
}

impl Pair {
    /// A pair whose hubs run `bin` (this build's `hub` if none).
    fn start(
        relay: &RelayProcess,
        dir: &std::path::Path,
        app: &str,
        audited: bool,
        bin: Option<&std::path::Path>,
    ) -> Self {
        let run: &[&str] = if audited { &[] } else { &["--bench-unaudited"] };
        let home = |name: &str| match bin {
            Some(bin) => HubHome::with_bin(dir.join(name), bin),
            None => HubHome::new(dir.join(name)),
        };
        let desk = home("desk");
        desk.create_cluster("desk", &relay.url());
        desk.ok(&["apps", "add", "tools", "--command", app]);
        let desk_run = desk.run_with(run);
        let token = desk.ok(&["invite"]).trim().to_owned();
        let laptop = home("laptop");
        laptop.ok(&["join", &token, "--name", "laptop"]);
        laptop.ok(&["apps", "add", "tools", "--command", app]);
        laptop.ok(&["apps", "share", "tools", "--cluster"]);
        let _laptop_run = laptop.run_with(run);
        desk.ok_when(&["status"], "the laptop online", |s| {
            s.contains("peers online: 1")
        });
        let tool = format!("tools_note_read_{}", &laptop.id()[..8]);
        let local_tool = format!("tools_note_read_{}", &desk.id()[..8]);
        let api_token = desk
            .ok(&["tokens", "create", "--name", "bench"])
            .trim()
            .to_owned();
        Pair {
            desk,
            desk_run,
            _laptop_run,
            api_token,
            tool,
            local_tool,
        }
    }

    async fn client(&self) -> RunningService<RoleClient, ()> {
        let url = format!("{}/mcp", self.desk_run.base);
        let config =
            StreamableHttpClientTransportConfig::with_uri(url).auth_header(self.api_token.clone());
        let client = ().serve(StreamableHttpClientTransport::from_config(config)).await.unwrap();
        client.list_all_tools().await.unwrap();
        client
    }
}
