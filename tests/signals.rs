//! The real binary reloads on SIGHUP (what `systemctl reload` sends) and
//! stops cleanly on SIGTERM.

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::Binary;

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn reloads(addr: &str) -> f64 {
    common::metric(
        &http_get(addr, "/metrics"),
        "telesink_config_reloads_total{result=\"success\"}",
    )
}

#[test]
fn sighup_reloads_and_sigterm_stops() {
    signals(true);
}

/// With nobody reading its log (stderr a closed pipe, as after journald
/// or a `| tee` went away), telesink loses the log lines and nothing else.
/// A failed write used to panic the task that logged, and SIGHUP and
/// SIGTERM then went unanswered.
#[test]
fn a_closed_stderr_stops_neither_reload_nor_shutdown() {
    signals(false);
}

fn signals(read_log: bool) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("block.txt"), "tracker.test\n").unwrap();
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:9\"]\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[[blocking.lists]]\nname = \"t\"\npath = \"block.txt\"\n",
    )
    .unwrap();
    let Binary {
        child,
        log: lines,
        http,
        ..
    } = Binary::start(&config);
    let mut child = common::KillOnDrop(child);
    let lines = read_log.then_some(lines);
    let pid = child.0.id().to_string();
    // The `kill` command, as systemd's ExecReload=/bin/kill -HUP $MAINPID.
    let signal = |name: &str| {
        let ok = Command::new("kill")
            .args([name, pid.as_str()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let http = http.expect("HTTP address logged").to_string();
    assert_eq!(reloads(&http), 0.0);
    signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloads(&http) < 1.0 {
        assert!(Instant::now() < deadline, "no reload after SIGHUP");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGHUP must not stop it"
    );
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop it");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let Some(lines) = lines else {
        return;
    };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("SIGHUP received")),
        "{rest:?}"
    );
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}

/// SIGHUP is taken over before the first list build, which takes seconds
/// with a big list: until then its default action would end the process
/// (`docker kill -s HUP`, or a reload right after a start). One sent then
/// reloads once telesink is up.
#[test]
fn sighup_during_the_first_list_build_reloads() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let list: String = (0..300_000)
        .map(|i| format!("d{i}.example.test\n"))
        .collect();
    std::fs::write(dir.path().join("big.txt"), list).unwrap();
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:9\"]\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[[blocking.lists]]\nname = \"big\"\npath = \"big.txt\"\n",
    )
    .unwrap();
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_telesink"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("TELESINK_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut child = common::KillOnDrop(child);
    let pid = child.0.id();
    // The log, read aside: when it says ready, and the HTTP address.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if tx.send((Instant::now(), line)).is_err() {
                return;
            }
        }
    });
    // SIGHUP caught: bit 1 of the SigCgt mask in /proc.
    let caught = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .is_some_and(|mask| mask & 1 != 0)
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !caught() {
        assert!(Instant::now() < deadline, "SIGHUP never caught");
        assert!(child.0.try_wait().unwrap().is_none(), "telesink exited");
        std::thread::sleep(Duration::from_millis(1));
    }
    let caught_at = Instant::now();
    let ok = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let (mut ready_at, mut http) = (None, None);
    while ready_at.is_none() {
        let (at, line) = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("telesink became ready");
        if let Some(addr) = line.split("over HTTP addr=").nth(1) {
            http = Some(addr.trim().to_string());
        }
        if line.contains("ready:") {
            ready_at = Some(at);
        }
    }
    let ready_at = ready_at.unwrap();
    assert!(
        caught_at + Duration::from_millis(300) < ready_at,
        "SIGHUP caught {:?} after start, ready {:?} after start: not before the build",
        caught_at - started,
        ready_at - started
    );
    assert!(
        child.0.try_wait().unwrap().is_none(),
        "SIGHUP ended telesink"
    );
    let http = http.expect("HTTP address logged");
    while reloads(&http) < 1.0 {
        assert!(Instant::now() < deadline, "the SIGHUP did not reload");
        std::thread::sleep(Duration::from_millis(20));
    }
}
