//! The real binary, started as root with `[server] user`, drops to that
//! user once its sockets are bound and keeps serving. Skipped (with a
//! message) when the tests do not run as root; CI runs them as root.

mod common;

use std::time::{Duration, Instant};

use common::Binary;

#[test]
fn drops_root_after_binding() {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the tests as root"
        );
        println!("SKIPPED drops_root_after_binding: needs root");
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        panic!("no user 'nobody' on this machine");
    };
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("block.txt");
    std::fs::write(&list, "tracker.test\n").unwrap();
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nuser = \"nobody\"\n[upstream]\nservers = [\"127.0.0.1:9\"]\n\
         [http]\nlisten = \"\"\n[[blocking.lists]]\nname = \"t\"\npath = \"block.txt\"\n",
    )
    .unwrap();
    // The list must stay readable after the switch, as in a real install.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut bin = Binary::start(&config);
    let pid = bin.child.id();
    let udp = bin.udp.expect("bound UDP address logged");
    // The process now runs as nobody.
    let deadline = Instant::now() + Duration::from_secs(5);
    let uid_line = loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap()
            .to_string();
        if !line.contains("\t0\t") || Instant::now() > deadline {
            break line;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let uids: Vec<u32> = uid_line
        .split_whitespace()
        .skip(1)
        .map(|u| u.parse().unwrap())
        .collect();
    assert!(uids.iter().all(|&u| u == nobody.uid.as_raw()), "{uid_line}");
    // And it still answers on the socket it bound as root.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01x\x07tracker\x04test\x00\x00\x01\x00\x01";
    socket.send_to(query, udp).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..2], b"\x12\x34");
    assert_eq!(&buf[n - 4..n], &[0, 0, 0, 0], "sinkholed to 0.0.0.0");
    bin.child.kill().unwrap();
    bin.child.wait().unwrap();
}
