//! The real binary, started as root with `[server] user`, drops to that
//! user once its sockets are bound and keeps serving. Skipped (with a
//! message) when the tests do not run as root; CI runs them as root.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Binary;

/// The user `nobody`, or `None` (with a message) when the tests do not
/// run as root.
fn nobody(test: &str) -> Option<nix::unistd::User> {
    if !nix::unistd::Uid::effective().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs the tests as root"
        );
        println!("SKIPPED {test}: needs root");
        return None;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        panic!("no user 'nobody' on this machine");
    };
    Some(nobody)
}

/// Sends `query` to `server` and returns the reply.
fn exchange(server: SocketAddr, query: &[u8]) -> Vec<u8> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    socket.send_to(query, server).unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = socket.recv_from(&mut buf).unwrap();
    buf[..n].to_vec()
}

/// `x.tracker.test` A, ID 0x1234.
const QUERY: &[u8] =
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01x\x07tracker\x04test\x00\x00\x01\x00\x01";

#[test]
fn drops_root_after_binding() {
    let Some(nobody) = nobody("drops_root_after_binding") else {
        return;
    };
    // The list must stay readable after the switch, as in a real install.
    let dir = root_dir();
    let list = dir.path().join("block.txt");
    std::fs::write(&list, "tracker.test\n").unwrap();
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        "[server]\nlisten = [\"127.0.0.1:0\"]\nuser = \"nobody\"\n[upstream]\nservers = [\"127.0.0.1:9\"]\n\
         [http]\nlisten = \"\"\n[[blocking.lists]]\nname = \"t\"\npath = \"block.txt\"\n",
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
    let reply = exchange(udp, QUERY);
    assert_eq!(&reply[..2], b"\x12\x34");
    assert!(reply.ends_with(&[0, 0, 0, 0]), "sinkholed to 0.0.0.0");
    bin.child.kill().unwrap();
    bin.child.wait().unwrap();
}

/// A list server on loopback that answers every request with `body` as
/// it is then, its length as the ETag; returns the list's URL.
fn list_server(body: Arc<Mutex<String>>) -> String {
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/list.txt", server.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in server.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf);
            let body = body.lock().unwrap().clone();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nETag: \"v{}\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len(),
                body.len()
            );
        }
    });
    url
}

/// A directory only root can write to, readable by everyone.
fn root_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    dir
}

/// Writes a config into `dir` that switches to `nobody` and downloads one
/// list from `url` into `cache_dir`; returns its path.
fn download_config(dir: &Path, cache_dir: &str, url: &str) -> PathBuf {
    let config = dir.join("t.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = [\"127.0.0.1:0\"]\nuser = \"nobody\"\n[upstream]\nservers = [\"127.0.0.1:9\"]\n\
             [http]\nlisten = \"\"\n[blocking]\ncache_dir = \"{cache_dir}\"\n\
             [[blocking.lists]]\nname = \"remote\"\nurl = \"{url}\"\n"
        ),
    )
    .unwrap();
    config
}

/// Whether `query` is sinkholed by `server` within 10 s.
fn blocked(server: SocketAddr, query: &[u8]) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !exchange(server, query).ends_with(&[0, 0, 0, 0]) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn downloads_are_kept_where_the_switched_user_can_write() {
    let Some(nobody) = nobody("downloads_are_kept_where_the_switched_user_can_write") else {
        return;
    };
    let url = list_server(Arc::new(Mutex::new("tracker.test\n".into())));
    // The directory for downloads does not exist yet, in a directory
    // only root can write to.
    let dir = root_dir();
    let config = download_config(dir.path(), "downloads", &url);
    let mut bin = Binary::start(&config);
    let udp = bin.udp.expect("bound UDP address logged");
    assert!(blocked(udp, QUERY), "the downloaded list never blocked");
    let downloads = dir.path().join("downloads");
    assert_eq!(
        std::fs::metadata(&downloads).unwrap().uid(),
        nobody.uid.as_raw()
    );
    assert!(
        std::fs::read_dir(&downloads).unwrap().count() > 0,
        "the copy is kept"
    );
    bin.child.kill().unwrap();
    bin.child.wait().unwrap();
}

#[test]
fn a_download_directory_the_user_cannot_write_is_reported() {
    let Some(_nobody) = nobody("a_download_directory_the_user_cannot_write_is_reported") else {
        return;
    };
    let dir = root_dir();
    // Set by the owner, made by root: left as it is, and reported.
    std::fs::create_dir(dir.path().join("roots")).unwrap();
    // A link to nowhere does not stop the start.
    std::os::unix::fs::symlink("/nonexistent/telesink", dir.path().join("dangling")).unwrap();
    for cache_dir in ["roots", "dangling"] {
        let config = download_config(dir.path(), cache_dir, "http://127.0.0.1:9/list.txt");
        let mut bin = Binary::start(&config);
        assert!(bin.udp.is_some(), "{cache_dir}: started: {:?}", bin.startup);
        assert!(
            bin.startup
                .iter()
                .any(|l| l.contains("cannot write the directory for downloaded lists")),
            "{cache_dir}: {:#?}",
            bin.startup
        );
        bin.child.kill().unwrap();
        bin.child.wait().unwrap();
    }
}

#[test]
fn copies_left_by_root_do_not_stop_downloads() {
    let Some(nobody) = nobody("copies_left_by_root_do_not_stop_downloads") else {
        return;
    };
    let body = Arc::new(Mutex::new(String::from("tracker.test\n")));
    let url = list_server(body.clone());
    let dir = root_dir();
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    std::os::unix::fs::chown(
        &downloads,
        Some(nobody.uid.as_raw()),
        Some(nobody.gid.as_raw()),
    )
    .unwrap();
    let config = download_config(dir.path(), "downloads", &url);
    let mut bin = Binary::start(&config);
    assert!(blocked(bin.udp.unwrap(), QUERY), "the first download");
    bin.child.kill().unwrap();
    bin.child.wait().unwrap();
    // The copy and its validators now belong to root, as after a run as
    // root; the list has changed.
    for entry in std::fs::read_dir(&downloads).unwrap() {
        std::os::unix::fs::chown(entry.unwrap().path(), Some(0), Some(0)).unwrap();
    }
    *body.lock().unwrap() = "other.test\n".into();
    let mut bin = Binary::start(&config);
    // A copy this fresh is not downloaded again at start; SIGHUP does.
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &bin.child.id().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let other = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01x\x05other\x04test\x00\x00\x01\x00\x01";
    assert!(blocked(bin.udp.unwrap(), other), "the new download is used");
    // Its validators replaced the old ones, so the next check is a
    // conditional request again.
    let meta = || {
        std::fs::read_dir(&downloads)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "meta"))
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !meta().contains("etag: \"v11\"") {
        assert!(
            Instant::now() < deadline,
            "validators not replaced: {:?}",
            meta()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    bin.child.kill().unwrap();
    bin.child.wait().unwrap();
}
