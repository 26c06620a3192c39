//! The real binary reloads on SIGHUP (what `systemctl reload` sends) and
//! stops cleanly on SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    http_get(addr, "/metrics")
        .lines()
        .find_map(|l| l.strip_prefix("telesink_config_reloads_total{result=\"success\"} "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[test]
fn sighup_reloads_and_sigterm_stops() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("block.txt"), "tracker.test\n").unwrap();
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:0\"]\n[upstream]\nservers = [\"127.0.0.1:9\"]\n\
         [http]\nlisten = \"127.0.0.1:0\"\n[[blocking.lists]]\nname = \"t\"\npath = \"block.txt\"\n",
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_telesink"))
        .args(["run", "--config", config.to_str().unwrap()])
        .env("TELESINK_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    // The `kill` command, as systemd's ExecReload=/bin/kill -HUP $MAINPID.
    let signal = |name: &str| {
        let ok = Command::new("kill")
            .args([name, pid.as_str()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut http = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(addr) = line.split("over HTTP addr=").nth(1) {
            http = Some(addr.trim().to_string());
        }
        if line.contains("ready:") {
            break;
        }
    }
    let http = http.expect("HTTP address logged");
    assert_eq!(reloads(&http), 0.0);
    signal("-HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while reloads(&http) < 1.0 {
        assert!(Instant::now() < deadline, "no reload after SIGHUP");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP must not stop it"
    );
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "SIGTERM did not stop it");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("SIGHUP received")),
        "{rest:?}"
    );
    assert!(rest.iter().any(|l| l.contains("stopped")), "{rest:?}");
}
