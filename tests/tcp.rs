//! DNS over TCP: pipelining answered out of order, connection caps, and
//! timeouts that keep idle clients from holding sockets.

mod common;

use std::time::Duration;

use common::*;
use hickory_proto::op::Message;
use hickory_proto::rr::RecordType;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn config(server: &str) -> String {
    format!(
        "[server]\n{server}\n[upstream]\nservers = [{{upstreams}}]\ntimeout = \"2s\"\n[http]\nlisten = \"127.0.0.1:0\"\n"
    )
}

fn frame(m: &Message) -> Vec<u8> {
    let bytes = m.to_vec().unwrap();
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&bytes);
    out
}

async fn read_reply(s: &mut TcpStream) -> Message {
    let len = tokio::time::timeout(DEADLINE, s.read_u16())
        .await
        .unwrap()
        .unwrap();
    let mut buf = vec![0u8; usize::from(len)];
    s.read_exact(&mut buf).await.unwrap();
    Message::from_vec(&buf).unwrap()
}

/// True once the server has closed `s` (EOF or reset).
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(DEADLINE, s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn connect_from(ip: &str, to: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_queries_are_answered_out_of_order() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(&config(""), &[&stub], dir.path()).await;
    let mut s = TcpStream::connect(ts.tcp).await.unwrap();
    let slow = request("slow.test.", RecordType::A, false);
    let fast = request("a.test.", RecordType::A, false);
    let mut both = frame(&slow);
    both.extend(frame(&fast));
    s.write_all(&both).await.unwrap();
    let first = read_reply(&mut s).await;
    let second = read_reply(&mut s).await;
    assert_eq!(
        first.metadata.id, fast.metadata.id,
        "the fast answer does not wait for the slow one"
    );
    assert_eq!(addresses(&first), ["192.0.2.1"]);
    assert_eq!(second.metadata.id, slow.metadata.id);
    assert_eq!(addresses(&second), ["192.0.2.13"]);
    ts.stop().await;
}

#[tokio::test]
async fn connections_are_capped_per_client() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(
        &config("max_tcp_connections_per_client = 2"),
        &[&stub],
        dir.path(),
    )
    .await;
    let mut a = connect_from("127.0.0.20", ts.tcp).await;
    let mut b = connect_from("127.0.0.20", ts.tcp).await;
    // Both are served.
    for s in [&mut a, &mut b] {
        s.write_all(&frame(&request("a.test.", RecordType::A, false)))
            .await
            .unwrap();
        assert_eq!(addresses(&read_reply(s).await), ["192.0.2.1"]);
    }
    let mut c = connect_from("127.0.0.20", ts.tcp).await;
    assert!(
        closed(&mut c).await,
        "a third connection from the same client is closed"
    );
    let mut other = connect_from("127.0.0.21", ts.tcp).await;
    other
        .write_all(&frame(&request("a.test.", RecordType::A, false)))
        .await
        .unwrap();
    assert_eq!(
        addresses(&read_reply(&mut other).await),
        ["192.0.2.1"],
        "other clients are not affected"
    );
    // A closed connection frees its slot.
    drop(a);
    let tcp = ts.tcp;
    eventually("slot freed", || async move {
        let mut d = connect_from("127.0.0.20", tcp).await;
        if d.write_all(&frame(&request("a.test.", RecordType::A, false)))
            .await
            .is_err()
        {
            return false;
        }
        let mut len = [0u8; 2];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), d.read_exact(&mut len)).await,
            Ok(Ok(_))
        )
    })
    .await;
    ts.stop().await;
}

#[tokio::test]
async fn connections_are_capped_in_total() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(&config("max_tcp_connections = 1"), &[&stub], dir.path()).await;
    let mut a = TcpStream::connect(ts.tcp).await.unwrap();
    a.write_all(&frame(&request("a.test.", RecordType::A, false)))
        .await
        .unwrap();
    read_reply(&mut a).await;
    let mut b = connect_from("127.0.0.22", ts.tcp).await;
    assert!(closed(&mut b).await);
    ts.stop().await;
}

#[tokio::test]
async fn silent_and_stalled_clients_are_disconnected() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(
        &config("tcp_first_byte_timeout = \"200ms\"\ntcp_timeout = \"300ms\""),
        &[&stub],
        dir.path(),
    )
    .await;
    // Connects and never sends a byte.
    let mut silent = TcpStream::connect(ts.tcp).await.unwrap();
    assert!(closed(&mut silent).await);
    // Announces 100 bytes and sends 3.
    let mut stalled = TcpStream::connect(ts.tcp).await.unwrap();
    stalled.write_all(b"\x00\x64abc").await.unwrap();
    assert!(closed(&mut stalled).await);
    // Sends a zero-length frame.
    let mut zero = TcpStream::connect(ts.tcp).await.unwrap();
    zero.write_all(b"\x00\x00").await.unwrap();
    assert!(closed(&mut zero).await);
    // Answered, then idle past tcp_timeout.
    let mut idle = TcpStream::connect(ts.tcp).await.unwrap();
    idle.write_all(&frame(&request("a.test.", RecordType::A, false)))
        .await
        .unwrap();
    read_reply(&mut idle).await;
    assert!(closed(&mut idle).await);
    // The server is fine.
    let r = tcp(ts.tcp, &request("a.test.", RecordType::A, false)).await;
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    ts.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_connection() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(
        &config("max_tcp_connections = 1\ntcp_timeout = \"300ms\""),
        &[&stub],
        dir.path(),
    )
    .await;
    // Queries for a large answer, written and never read: the replies fill
    // the client's small window and then the server's send buffer.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind("127.0.0.40:0".parse().unwrap()).unwrap();
    let stream = socket.connect(ts.tcp).await.unwrap();
    let (_unread, mut w) = stream.into_split();
    let query = frame(&request("big.test.", RecordType::A, false));
    let flood = tokio::spawn(async move {
        for _ in 0..20_000 {
            let sent = tokio::time::timeout(Duration::from_secs(1), w.write_all(&query)).await;
            if !matches!(sent, Ok(Ok(()))) {
                break;
            }
        }
        w
    });
    // It held the only connection slot. Once it has been stuck for
    // tcp_timeout, another client gets in and is answered.
    let tcp = ts.tcp;
    eventually("another client answered", || async move {
        let Ok(mut s) = TcpStream::connect(tcp).await else {
            return false;
        };
        let q = frame(&request("a.test.", RecordType::A, false));
        if s.write_all(&q).await.is_err() {
            return false;
        }
        matches!(
            tokio::time::timeout(Duration::from_millis(500), s.read_u16()).await,
            Ok(Ok(_))
        )
    })
    .await;
    let _still_open = flood.await.unwrap();
    // Shutdown does not wait on it either.
    tokio::time::timeout(DEADLINE, ts.stop())
        .await
        .expect("shutdown finished");
}

#[tokio::test]
async fn clients_outside_allow_clients_take_no_connection_slot() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(
        &config("allow_clients = [\"127.0.0.2/32\"]\nmax_tcp_connections = 2"),
        &[&stub],
        dir.path(),
    )
    .await;
    // Outsiders open more connections than there are slots...
    let mut outsiders = Vec::new();
    for _ in 0..4 {
        outsiders.push(connect_from("127.0.0.30", ts.tcp).await);
    }
    // ...but took none of them: the LAN's clients get every one.
    let mut a = connect_from("127.0.0.2", ts.tcp).await;
    let mut b = connect_from("127.0.0.2", ts.tcp).await;
    for s in [&mut a, &mut b] {
        s.write_all(&frame(&request("a.test.", RecordType::A, false)))
            .await
            .unwrap();
        assert_eq!(addresses(&read_reply(s).await), ["192.0.2.1"]);
    }
    assert_eq!(stub.count("a.test.", RecordType::A), 1);
    for s in &mut outsiders {
        assert!(closed(s).await, "an outsider's connection is closed");
    }
    ts.stop().await;
}

/// Whether a query sent on `s` gets an answer (not a closed connection).
async fn answered(s: &mut TcpStream, query: &[u8]) -> bool {
    // Writing to a connection the server closed on accept may still
    // succeed locally; the read tells.
    let _ = s.write_all(query).await;
    matches!(
        tokio::time::timeout(DEADLINE, s.read_u16()).await,
        Ok(Ok(_))
    )
}

/// The caps count every listen address: one client cannot open
/// `max_tcp_connections_per_client` connections on each of them.
#[tokio::test]
async fn connection_caps_hold_across_listen_addresses() {
    let stub = Stub::start().await;
    let text = config("max_tcp_connections = 2\nmax_tcp_connections_per_client = 1")
        .replace("{upstreams}", &format!("\"{}\"", stub.addr));
    let dir = dir_with(&[]);
    let config = telesink::config::Config::from_toml(&text, "test.toml", dir.path()).unwrap();
    let listeners = telesink::server::Listeners::bind(
        &[
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.2:0".parse().unwrap(),
        ],
        None,
    )
    .unwrap();
    let (one, two) = (
        listeners.tcp[0].local_addr().unwrap(),
        listeners.tcp[1].local_addr().unwrap(),
    );
    let token = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(telesink::app::serve(config, listeners, token.clone()));
    let q = frame(&request("a.test.", RecordType::A, false));
    // Listening is immediate once bound; the first answer shows serving.
    let mut a = connect_from("127.0.0.50", one).await;
    a.write_all(&q).await.unwrap();
    read_reply(&mut a).await;
    // The same client at the other address: over its cap of one.
    let mut b = connect_from("127.0.0.50", two).await;
    assert!(
        !answered(&mut b, &q).await,
        "second connection of one client"
    );
    // Another client there takes the second of two slots in all, and a
    // third client finds none left.
    let mut c = connect_from("127.0.0.51", two).await;
    c.write_all(&q).await.unwrap();
    read_reply(&mut c).await;
    let mut d = connect_from("127.0.0.52", one).await;
    assert!(!answered(&mut d, &q).await, "third connection in all");
    token.cancel();
    drop((a, c));
    server.await.unwrap().unwrap();
}

/// `tcp_timeout` counts from the last answer, not the last query: a
/// client waiting longer than that for an answer keeps its connection
/// and can ask again right after.
#[tokio::test]
async fn a_slow_answer_does_not_count_as_idle_time() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    // `slow.test` takes 300 ms at the stub.
    let ts = Telesink::start(&config("tcp_timeout = \"150ms\""), &[&stub], dir.path()).await;
    let mut s = TcpStream::connect(ts.tcp).await.unwrap();
    s.write_all(&frame(&request("slow.test.", RecordType::A, false)))
        .await
        .unwrap();
    assert_eq!(addresses(&read_reply(&mut s).await), ["192.0.2.13"]);
    s.write_all(&frame(&request("a.test.", RecordType::A, false)))
        .await
        .unwrap();
    assert_eq!(addresses(&read_reply(&mut s).await), ["192.0.2.1"]);
    // Then idle: closed after tcp_timeout.
    assert!(closed(&mut s).await);
    ts.stop().await;
}
