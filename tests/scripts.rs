#![allow(clippy::unwrap_used, clippy::expect_used)]
//! README's demo, run as a user runs it: it must pass, and leave nothing running behind it,
//! whether it ends by itself or is interrupted (once, the founder's `hub run` outlived it).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use e2e::cli::signal;
use e2e::repo_root;

/// Processes (not zombies) whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit(')').next().unwrap_or("").trim_start();
        if state.starts_with('Z') || stat.is_empty() {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// A port nothing listens on now (the demo refuses a port that answers, so a race shows as a
/// clear failure, not as a wrong result).
fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn demo(dir: &Path, port: u16) -> Command {
    let mut c = Command::new(repo_root().join("scripts/demo"));
    c.env("DEMO_DIR", dir)
        .env("DEMO_PORT", port.to_string())
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    c
}

/// Waits (up to 20 s) until nothing the demo started is left: no process naming its directory,
/// nothing listening on its relay port.
fn assert_all_stopped(dir: &Path, port: u16) {
    let needle = dir.to_string_lossy().into_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = processes_mentioning(&needle);
        let listening = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        if left.is_empty() && !listening {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the demo left these running: {left:?}, relay port {port} listening: {listening}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_demo_passes_and_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let port = unused_port();
    let out = demo(dir.path(), port).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("== demo ok"), "{stdout}");
    assert_all_stopped(dir.path(), port);
}

#[test]
fn an_interrupted_demo_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let port = unused_port();
    let mut child = demo(dir.path(), port)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Interrupt it once the relay and the founder's hub are running.
    let stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("the desk invites a laptop") {
            break;
        }
    }
    assert!(
        seen.contains("the desk invites"),
        "the demo stopped early:\n{seen}"
    );
    assert!(!processes_mentioning(&dir.path().to_string_lossy()).is_empty());
    signal(child.id(), "INT");
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted demo reported success");
    assert_all_stopped(dir.path(), port);
}
