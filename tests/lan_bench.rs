//! The LAN path against the relay path, in one run: two hubs in network namespaces on a virtual
//! bridge, the relay (`hub relay`) in its own namespace. Round trips are session pings measured
//! inside the hub (`hub ping`); throughput is an app call returning a large result (`hub apps
//! call`, the whole call timed). First with the LAN link up, then with the bridge cut (the same
//! hubs, now by the relay). Root only; run with `scripts/bench-lan`.
// A benchmark measures wall-clock time and panics on setup failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use e2e::netns::{linked, NsHub, TwoHubs};

const PINGS: usize = 500;
const CALLS: usize = 8;
const RESULT: usize = 8 << 20;

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

struct Figures {
    p50: f64,
    p99: f64,
    mib_s: f64,
}

fn measure(a: &NsHub, b_id: &str) -> Figures {
    let out = a.ok(&["ping", b_id, "--count", &(PINGS + 50).to_string()]);
    let mut rtts: Vec<f64> = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1)?.split(' ').next()?.parse().ok())
        .skip(50)
        .collect();
    assert_eq!(rtts.len(), PINGS, "{out}");
    rtts.sort_by(f64::total_cmp);
    let args = format!("{{\"bytes\":{RESULT}}}");
    let mut rates = Vec::new();
    for _ in 0..CALLS {
        let started = Instant::now();
        let out = a.ok(&["apps", "call", "b", "tools", "blob", "--args", &args]);
        let took = started.elapsed().as_secs_f64();
        assert!(out.len() >= RESULT, "short result");
        rates.push(RESULT as f64 / (1 << 20) as f64 / took);
    }
    rates.sort_by(f64::total_cmp);
    Figures {
        p50: quantile(&rtts, 0.5),
        p99: quantile(&rtts, 0.99),
        mib_s: quantile(&rates, 0.5),
    }
}

fn main() {
    let c = TwoHubs::start(env!("CARGO_BIN_EXE_test-app")).expect("network namespaces (root)");
    let wait = Duration::from_secs(30);
    c.a.ok_when(&["status"], wait, "LAN link", linked(1));
    c.a.ok_when(&["peers"], wait, "path lan", |_| {
        c.a.path_to(&c.b_id) == "lan"
    });
    let lan = measure(&c.a, &c.b_id);
    c.net.set_bridge(false);
    c.a.ok_when(&["status"], wait, "the link down", linked(0));
    assert_eq!(c.a.path_to(&c.b_id), "relay");
    let relay = measure(&c.a, &c.b_id);
    println!(
        "LAN path vs relay path, same hubs, same run ({PINGS} pings, {CALLS} calls of {} MiB)",
        RESULT >> 20
    );
    println!(
        "{:<8} {:>10} {:>10} {:>12}",
        "path", "rtt p50", "rtt p99", "call MiB/s"
    );
    for (name, f) in [("lan", &lan), ("relay", &relay)] {
        println!(
            "{name:<8} {:>7.3} ms {:>7.3} ms {:>12.1}",
            f.p50, f.p99, f.mib_s
        );
    }
    println!(
        "lan/relay: rtt p50 {:.2}x, p99 {:.2}x, throughput {:.2}x",
        lan.p50 / relay.p50,
        lan.p99 / relay.p99,
        lan.mib_s / relay.mib_s
    );
}
