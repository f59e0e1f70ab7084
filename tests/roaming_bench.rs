//! Roaming, in one run (root; `scripts/bench-roaming`): two release hubs in network namespaces,
//! by the relay only (`--no-lan`), `hub relay` in a third namespace (tests/support/netns.rs).
//!
//! 1. **A dead path found.** The relay's answers to hub `a` are dropped (a blackhole route in the
//!    relay's namespace: nothing changes on `a`'s side, as when a cellular link dies), first with
//!    a call of `a` waiting on `b`, then with nothing waiting (the baseline: the idle probe); the
//!    time from the cut to `a`'s relay connection given up (the time its log says so; asking its
//!    status would make it send).
//! 2. **The network back.** `b`'s address changes while a call from `a` waits on it (removed, a
//!    new one with its route a second later); the time from the new address to the call's
//!    answer, with `b` watching its network (rtnetlink), then with `b` started again with
//!    `--bench-no-network-watch` (the baseline: probes alone).
// A benchmark measures wall-clock time and panics on setup failure.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use e2e::netns::{NsHub, TwoHubs};
use e2e::wait_until;

const ROUNDS: usize = 5;

fn connected(h: &NsHub) -> bool {
    h.api("/api/status")["relay"]["connected"] == true
}

/// Unix ms of a log line's RFC 3339 UTC timestamp (`2026-12-07T07:28:33.675573Z ...`).
fn log_time_ms(line: &str) -> Option<u64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<u64>().ok()?,
        t.next()?.parse::<u64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    Some(days * 86_400_000 + (h * 3600 + min * 60) * 1000 + (sec * 1000.0) as u64)
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// When `hub`'s log first says, after `after_ms`, that its relay session ended.
fn session_ended_after(hub: &NsHub, after_ms: u64) -> Option<u64> {
    let log = std::fs::read_to_string(hub.dir.with_extension("log")).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("relay session ended"))
        .filter_map(log_time_ms)
        .find(|t| *t >= after_ms)
}

/// Waits until `b` is reachable from `a` by the relay.
fn b_by_the_relay(hubs: &TwoHubs) {
    hubs.a.ok_when(
        &["peers"],
        Duration::from_secs(30),
        "b by the relay",
        |_| hubs.a.path_to(&hubs.b_id) == "relay",
    );
}

/// How long `a` takes to give up its relay connection once the relay's answers to it are
/// dropped, with a call waiting or not.
fn dead_path(hubs: &TwoHubs, call_waiting: bool) -> Duration {
    let ns_r = hubs.net.ns("r");
    let call = call_waiting.then(|| {
        let before = hubs.net.relay_bytes();
        let call = hubs.a.call_sleep_in_thread(6_000);
        wait_until("call through the relay", Duration::from_secs(20), || {
            hubs.net.relay_bytes() > before + 1_000
        });
        call
    });
    let cut = unix_ms();
    hubs.net
        .ip(&["-n", &ns_r, "route", "add", "blackhole", "10.201.1.2/32"]);
    let mut ended = None;
    wait_until("dead path found", Duration::from_secs(60), || {
        ended = session_ended_after(&hubs.a, cut);
        ended.is_some()
    });
    let found = Duration::from_millis(ended.unwrap_or(cut) - cut);
    hubs.net
        .ip(&["-n", &ns_r, "route", "del", "blackhole", "10.201.1.2/32"]);
    wait_until("a back", Duration::from_secs(60), || connected(&hubs.a));
    if let Some(call) = call {
        call.join().unwrap();
    }
    b_by_the_relay(hubs);
    found
}

/// `b`'s two addresses, by turns: (its address, the relay side's).
const ADDRESSES: [(&str, &str); 2] = [
    ("10.201.2.2/30", "10.201.2.1"),
    ("10.201.2.6/30", "10.201.2.5"),
];

/// Moves `b` from address `from` to the other while a call waits on it; the time from the new
/// address to the call's answer.
fn network_back(hubs: &TwoHubs, from: usize) -> Duration {
    let ns_b = hubs.net.ns("b");
    let (old, _) = ADDRESSES[from];
    let (new, via) = ADDRESSES[1 - from];
    let before = hubs.net.relay_bytes();
    let call = hubs.a.call_sleep_in_thread(200);
    wait_until("call through the relay", Duration::from_secs(20), || {
        hubs.net.relay_bytes() > before + 1_000
    });
    hubs.net
        .ip(&["-n", &ns_b, "addr", "del", old, "dev", "wan0"]);
    std::thread::sleep(Duration::from_secs(1));
    // The network is back from the moment its new address is being added.
    let back = Instant::now();
    hubs.net
        .ip(&["-n", &ns_b, "addr", "add", new, "dev", "wan0"]);
    hubs.net
        .ip(&["-n", &ns_b, "route", "add", "10.201.0.1/32", "via", via]);
    let out = call.join().unwrap();
    let took = back.elapsed();
    assert!(out.contains("slept"), "{out}");
    b_by_the_relay(hubs);
    took
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn summary(label: &str, mut times: Vec<Duration>) -> f64 {
    times.sort();
    let p50 = ms(times[times.len() / 2]);
    let max = ms(*times.last().unwrap());
    println!("  {label:<28} p50 {p50:>8.0} ms   max {max:>8.0} ms   ({ROUNDS} rounds)");
    p50
}

fn main() {
    let test_app = env!("CARGO_BIN_EXE_test-app");
    let mut hubs = TwoHubs::start_with(test_app, &["--no-lan"]).expect("network namespaces");
    b_by_the_relay(&hubs);
    let ns_r = hubs.net.ns("r");
    hubs.net
        .ip(&["-n", &ns_r, "addr", "add", "10.201.2.5/30", "dev", "wb"]);

    println!(
        "a dead path found: the relay's answers to a dropped, until a gives its connection up"
    );
    let mut waiting = Vec::new();
    let mut idle = Vec::new();
    for _ in 0..ROUNDS {
        waiting.push(dead_path(&hubs, true));
        idle.push(dead_path(&hubs, false));
    }
    let w = summary("a call waiting", waiting);
    let i = summary("nothing waiting (baseline)", idle);
    println!("  ratio waiting / idle: {:.2}x", w / i);

    println!(
        "the network back: b's address changes while a call waits on it, new address to answer"
    );
    let mut at = 0;
    let mut watching = Vec::new();
    for _ in 0..ROUNDS {
        watching.push(network_back(&hubs, at));
        at = 1 - at;
    }
    hubs.net.stop("b");
    let b_dir = hubs.b.dir.clone();
    hubs.net
        .run_hub("b", &b_dir, &["--no-lan", "--bench-no-network-watch"]);
    b_by_the_relay(&hubs);
    let mut probes = Vec::new();
    for _ in 0..ROUNDS {
        probes.push(network_back(&hubs, at));
        at = 1 - at;
    }
    let w = summary("watching (rtnetlink)", watching);
    let p = summary("probes alone (baseline)", probes);
    println!("  ratio watching / probes alone: {:.2}x", w / p);
}
