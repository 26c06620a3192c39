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
