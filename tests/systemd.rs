//! Under systemd (`Type=notify`, `WatchdogSec=`): the real binary says when
//! it is ready, keeps the watchdog fed while it serves, updates its status
//! line on reload and says when it stops. The test plays systemd's part
//! with a Unix datagram socket named in `NOTIFY_SOCKET`.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::Binary;

/// The next notification, or `None` after `deadline`.
fn next(socket: &UnixDatagram, deadline: Instant) -> Option<String> {
    let left = deadline.checked_duration_since(Instant::now())?;
    socket
        .set_read_timeout(Some(left.max(Duration::from_millis(1))))
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = socket.recv(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Reads notifications until one contains `wanted`, or panics at `within`.
fn wait_for(socket: &UnixDatagram, wanted: &str, within: Duration) -> String {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(message) = next(socket, deadline) {
        if message.contains(wanted) {
            return message;
        }
        seen.push(message);
    }
    panic!("no {wanted:?} within {within:?}; got {seen:?}");
}

#[test]
fn ready_watchdog_status_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("block.txt"), "tracker.test\n").unwrap();
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nudp_threads = 2\n[upstream]\nservers = [\"127.0.0.1:9\"]\n[http]\nlisten = \"127.0.0.1:0\"\n\
         [[blocking.lists]]\nname = \"t\"\npath = \"block.txt\"\n",
    )
    .unwrap();
    let path = dir.path().join("notify");
    let systemd = UnixDatagram::bind(&path).unwrap();
    // A one-second watchdog: pings every half second.
    let Binary {
        child, udp, log, ..
    } = Binary::start_with_env(
        &config,
        &[
            ("NOTIFY_SOCKET", path.to_str().unwrap()),
            ("WATCHDOG_USEC", "1000000"),
        ],
    );
    let mut child = common::KillOnDrop(child);
    let udp = udp.expect("UDP address logged");
    // The log is not needed (tests/signals.rs covers a closed stderr).
    drop(log);

    let ready = wait_for(&systemd, "READY=1", Duration::from_secs(10));
    assert!(
        ready.contains("STATUS=serving 1 lists, 1 blocked domains"),
        "{ready:?}"
    );
    // Ready means answering.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let answer = rt.block_on(common::ask(
        udp,
        "tracker.test.",
        hickory_proto::rr::RecordType::A,
    ));
    assert_eq!(common::addresses(&answer), ["0.0.0.0"]);

    // The pings go on past the age a heartbeat may reach (a second): the
    // UDP threads' heartbeats are beating.
    let first = Instant::now();
    let mut pings = 0;
    while first.elapsed() < Duration::from_millis(2500) {
        wait_for(&systemd, "WATCHDOG=1", Duration::from_secs(5));
        pings += 1;
    }
    assert!(pings >= 4, "{pings} pings in 2.5 s");

    let pid = child.0.id().to_string();
    let signal = |name: &str| {
        assert!(
            Command::new("kill")
                .args([name, &pid])
                .status()
                .unwrap()
                .success()
        );
    };
    std::fs::write(dir.path().join("block.txt"), "tracker.test\nads.test\n").unwrap();
    signal("-HUP");
    let status = wait_for(
        &systemd,
        "STATUS=serving 1 lists, 2 blocked domains",
        Duration::from_secs(10),
    );
    assert!(!status.contains("READY=1"), "{status:?}");
    // A broken config keeps the running one, whose lists are still
    // rebuilt: the status says what is served.
    std::fs::write(&config, "[[[broken\n").unwrap();
    std::fs::write(
        dir.path().join("block.txt"),
        "tracker.test\nads.test\nmore.test\n",
    )
    .unwrap();
    signal("-HUP");
    wait_for(
        &systemd,
        "STATUS=serving 1 lists, 3 blocked domains",
        Duration::from_secs(10),
    );

    signal("-TERM");
    wait_for(&systemd, "STOPPING=1", Duration::from_secs(10));
    let exit = child.0.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}
