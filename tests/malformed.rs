//! The malformed-packet corpus (`tests/corpus/malformed/`, written by its
//! `make.py`) against the running server over real UDP and TCP sockets on
//! 127.0.0.1: each packet gets the RFC answer or is dropped, and the server
//! keeps answering; plus the TCP framing cases (zero-length frames, a
//! length prefix larger than the data).

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

const CONFIG: &str = r#"
[upstream]
servers = [{upstreams}]
timeout = "300ms"
[server]
tcp_timeout = "1s"
[http]
listen = "127.0.0.1:0"
"#;

/// One corpus entry: file, expectation, and why.
struct Case {
    file: String,
    bytes: Vec<u8>,
    expect: String,
}

fn corpus() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/malformed");
    let manifest = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
    let cases: Vec<Case> = manifest
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let mut cells = l.split('\t');
            let file = cells.next().unwrap().to_string();
            let expect = cells.next().unwrap().to_string();
            let bytes = std::fs::read(dir.join(&file)).unwrap();
            Case {
                file,
                bytes,
                expect,
            }
        })
        .collect();
    // Every .bin in the directory has an expectation.
    let bins = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "bin")
        })
        .count();
    assert_eq!(bins, cases.len(), "a .bin without a line in expected.txt");
    assert!(cases.len() >= 30);
    cases
}

/// A probe the server must answer at once (RFC 8482, no upstream).
fn probe(id: u16) -> Vec<u8> {
    let mut q = request("probe.test.", RecordType::ANY, false);
    q.metadata.id = id;
    q.to_vec().unwrap()
}

/// Checks `reply` to `case` against its expectation.
fn check(case: &Case, transport: &str, reply: Option<&[u8]>) {
    let what = format!("{} over {transport} ({})", case.file, case.expect);
    let mut words = case.expect.split_whitespace();
    let rcode = words.next().unwrap();
    if rcode == "drop" {
        assert!(
            reply.is_none(),
            "{what}: expected no reply, got {reply:02x?}"
        );
        return;
    }
    let reply = reply.unwrap_or_else(|| panic!("{what}: no reply"));
    let m =
        Message::from_vec(reply).unwrap_or_else(|e| panic!("{what}: reply does not parse: {e}"));
    assert_eq!(reply[..2], case.bytes[..2], "{what}: ID echoed");
    assert_eq!(reply[2] & 0x80, 0x80, "{what}: QR set");
    let want: u16 = match rcode {
        "NOERROR" => 0,
        "FORMERR" => 1,
        "NXDOMAIN" => 3,
        "NOTIMP" => 4,
        "BADVERS" => 16,
        other => panic!("unknown expectation {other}"),
    };
    assert_eq!(u16::from(m.metadata.response_code), want, "{what}: {m:?}");
    match words.next() {
        Some("+opt") => {
            let edns = m.edns.as_ref().unwrap_or_else(|| panic!("{what}: no OPT"));
            assert_eq!(edns.version(), 0, "{what}: we speak EDNS 0");
        }
        Some("-opt") => assert!(m.edns.is_none(), "{what}: unexpected OPT"),
        _ => {}
    }
    if rcode == "BADVERS" {
        assert_eq!(reply[3] & 0x0f, 0, "{what}: low rcode bits 0");
        assert_eq!(
            m.edns.as_ref().unwrap().rcode_high(),
            1,
            "{what}: OPT high bits 1"
        );
    }
    if case.file == "type-any.bin" {
        match &m.answers[..] {
            [r] => match &r.data {
                RData::HINFO(h) => {
                    assert_eq!(&*h.cpu, b"RFC8482");
                    assert!(h.os.is_empty());
                }
                other => panic!("{what}: {other:?}"),
            },
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// Sends `case` over UDP, then a probe from the same socket; returns the
/// reply to the case. For a case that must be dropped, a reply would come
/// back with or before the replies to two probes sent one after the other
/// (the server handles datagrams as they come, and the drop decision is
/// made on parsing); for the others, waits for the reply by its ID.
async fn over_udp(server: SocketAddr, case: &Case, probe_id: u16) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&case.bytes, server).await.unwrap();
    let case_id = case.bytes.get(..2).map(|b| [b[0], b[1]]);
    let dropped = case.expect.starts_with("drop");
    let mut reply = None;
    let mut buf = vec![0u8; 65535];
    for probe_id in [probe_id, probe_id ^ 1] {
        socket.send_to(&probe(probe_id), server).await.unwrap();
        let mut probe_seen = false;
        while !probe_seen || (reply.is_none() && !dropped) {
            let (n, _) = tokio::time::timeout(DEADLINE, socket.recv_from(&mut buf))
                .await
                .expect("replies in time")
                .unwrap();
            if Some([buf[0], buf[1]]) == case_id {
                reply = Some(buf[..n].to_vec());
            } else {
                assert_eq!(buf[..2], probe_id.to_be_bytes(), "{}", case.file);
                probe_seen = true;
            }
        }
        if !dropped {
            break;
        }
    }
    reply
}

async fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let len = tokio::time::timeout(DEADLINE, stream.read_u16())
        .await
        .expect("frame in time")
        .ok()?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.ok()?;
    Some(buf)
}

fn framed(bytes: &[u8]) -> Vec<u8> {
    let mut out = (bytes.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(bytes);
    out
}

/// Sends `case` and then a probe on one TCP connection; the connection
/// must stay usable, and the first reply is either the case's or the
/// probe's (queries on one connection are answered in order).
async fn over_tcp(server: SocketAddr, case: &Case, probe_id: u16) -> Option<Vec<u8>> {
    let mut stream = TcpStream::connect(server).await.unwrap();
    let mut out = framed(&case.bytes);
    out.extend(framed(&probe(probe_id)));
    stream.write_all(&out).await.unwrap();
    let first = read_frame(&mut stream)
        .await
        .expect("a reply on the connection");
    if first[..2] == probe_id.to_be_bytes() && case.bytes.get(..2) != Some(&first[..2]) {
        return None;
    }
    let second = read_frame(&mut stream)
        .await
        .expect("the probe is answered after it");
    assert_eq!(second[..2], probe_id.to_be_bytes());
    Some(first)
}

#[tokio::test]
async fn every_malformed_packet_gets_its_rfc_answer_over_udp_and_tcp() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(CONFIG, &[&stub], dir.path()).await;
    for (i, case) in corpus().iter().enumerate() {
        let id = 0x7000 + 2 * i as u16;
        let udp = over_udp(ts.udp, case, id).await;
        let tcp = over_tcp(ts.tcp, case, id).await;
        if case.bytes.get(2).is_some_and(|b| b & 0x80 != 0) {
            // Every packet with QR=1 is dropped before it is parsed, over
            // both transports: a malformed "response" gets no FORMERR.
            assert!(
                udp.is_none(),
                "{} over UDP: a response is dropped",
                case.file
            );
            assert!(
                tcp.is_none(),
                "{} over TCP: a response is dropped",
                case.file
            );
            continue;
        }
        check(case, "UDP", udp.as_deref());
        check(case, "TCP", tcp.as_deref());
    }
    // And ordinary queries are still answered.
    let r = ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    let r = tcp(ts.tcp, &request("a.test.", RecordType::A, false)).await;
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    let m = ts.metrics().await;
    assert!(
        metric(
            &m,
            "telesink_queries_total{outcome=\"local\",qtype=\"ANY\"}"
        ) >= 60.0,
        "probes count as local ANY answers: {m}"
    );
    ts.stop().await;
}

#[tokio::test]
async fn many_questions_get_a_formerr_that_does_not_echo_them() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(CONFIG, &[&stub], dir.path()).await;
    // 800 root questions fill most of the largest query read (4 KiB);
    // echoed back with the FORMERR, each query would cost as much again in
    // the reply.
    let n: u16 = 800;
    let mut query = vec![0x12, 0x34, 0x01, 0x00];
    query.extend_from_slice(&n.to_be_bytes());
    query.extend_from_slice(&[0; 6]);
    for _ in 0..n {
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
    }
    // A standard query, and one with another opcode (STATUS).
    for (opcode, rcode) in [(0x01, ResponseCode::FormErr), (0x11, ResponseCode::NotImp)] {
        query[2] = opcode;
        let mut stream = TcpStream::connect(ts.tcp).await.unwrap();
        stream.write_all(&framed(&query)).await.unwrap();
        let reply = read_frame(&mut stream).await.expect("a reply");
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.response_code, rcode);
        assert!(m.metadata.recursion_desired, "RD copied");
        assert_eq!(reply.len(), 12, "{} questions echoed", m.queries.len());
    }
    // With an OPT after the questions (DO set), the reply carries one too
    // (RFC 6891 §7), and still no question.
    query[2] = 0x01;
    query[11] = 1;
    query.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0x80, 0, 0, 0]);
    let mut stream = TcpStream::connect(ts.tcp).await.unwrap();
    stream.write_all(&framed(&query)).await.unwrap();
    let reply = read_frame(&mut stream).await.expect("a reply");
    let m = Message::from_vec(&reply).unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    assert!(m.queries.is_empty());
    let edns = m.edns.expect("an OPT");
    assert!(edns.flags().dnssec_ok, "DO copied");
    assert_eq!(reply.len(), 12 + 11);
    ts.stop().await;
}

#[tokio::test]
async fn tcp_framing_abuse_does_not_hold_the_server() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(CONFIG, &[&stub], dir.path()).await;

    // A zero-length frame: hickory reads it as the end of the stream and
    // closes the connection (nothing a DNS message can be is 0 bytes).
    let mut zero = TcpStream::connect(ts.tcp).await.unwrap();
    let mut out = vec![0, 0];
    out.extend(framed(&probe(1)));
    zero.write_all(&out).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, zero.read_to_end(&mut rest))
        .await
        .expect("closed promptly")
        .ok();
    assert!(
        rest.is_empty(),
        "nothing answered after a zero-length frame"
    );

    // A length prefix larger than the data: the server waits for the rest,
    // without holding up anyone else, and gives up after tcp_timeout (1s).
    let mut stalled = TcpStream::connect(ts.tcp).await.unwrap();
    let q = probe(2);
    let mut out = ((q.len() + 100) as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&q);
    stalled.write_all(&out).await.unwrap();
    let started = tokio::time::Instant::now();
    // Meanwhile, UDP and other TCP clients are answered at once.
    let r = tcp(ts.tcp, &request("a.test.", RecordType::A, false)).await;
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    let r = ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, stalled.read_to_end(&mut rest))
        .await
        .expect("the stalled connection is closed after tcp_timeout")
        .ok();
    assert!(rest.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // Many stalled connections from one client do not stop other clients:
    // that client gets at most max_tcp_connections_per_client of them.
    let mut hung = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(ts.tcp).await.unwrap();
        let _ = s.write_all(&[0x01, 0x00, 0xab]).await;
        hung.push(s);
    }
    let other = tokio::net::TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = other.connect(ts.tcp).await.unwrap();
    other
        .write_all(&framed(
            &request("a.test.", RecordType::A, false).to_vec().unwrap(),
        ))
        .await
        .unwrap();
    let reply = read_frame(&mut other)
        .await
        .expect("another client is answered");
    assert_eq!(
        addresses(&Message::from_vec(&reply).unwrap()),
        ["192.0.2.1"]
    );
    ts.stop().await;
}

#[tokio::test]
async fn any_gets_the_rfc8482_answer_without_the_upstream() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "tracker.test\n")]);
    let config = format!("{CONFIG}\n[[blocking.lists]]\nname = \"vendor\"\npath = \"block.txt\"\n");
    let ts = Telesink::start(&config, &[&stub], dir.path()).await;
    for r in [
        ask(ts.udp, "a.test.", RecordType::ANY).await,
        tcp(ts.tcp, &request("a.test.", RecordType::ANY, false)).await,
    ] {
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
        assert_eq!(r.answers.len(), 1);
        assert!(matches!(&r.answers[0].data, RData::HINFO(h) if &*h.cpu == b"RFC8482"));
    }
    // A blocked name's ANY is blocked (NODATA with an SOA in null mode).
    let r = ask(ts.udp, "x.tracker.test.", RecordType::ANY).await;
    assert!(r.answers.is_empty());
    assert!(matches!(r.authorities[0].data, RData::SOA(_)));
    assert_eq!(stub.total(), 0, "ANY never reaches the upstream");
    let m = ts.metrics().await;
    assert_eq!(
        metric(
            &m,
            "telesink_queries_total{outcome=\"local\",qtype=\"ANY\"}"
        ),
        2.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "telesink_queries_total{outcome=\"blocked\",qtype=\"ANY\"}"
        ),
        1.0
    );
    ts.stop().await;
}

#[tokio::test]
async fn rebind_protection_blocks_public_names_pointing_into_the_lan() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    // Off by default: the private answer passes.
    let ts = Telesink::start(CONFIG, &[&stub], dir.path()).await;
    let r = ask(ts.udp, "private.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.168.1.10"]);
    ts.stop().await;

    let config = format!("{CONFIG}\n[security]\nrebind_protection = true\n");
    let ts = Telesink::start(&config, &[&stub], dir.path()).await;
    let r = ask(ts.udp, "private.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["0.0.0.0"], "blocked like any blocked name");
    let r = ask(ts.udp, "private.test.", RecordType::AAAA).await;
    assert_eq!(addresses(&r), ["::"]);
    // Cached answers are checked too (the check sits above the cache).
    let r = ask(ts.udp, "private.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["0.0.0.0"]);
    // LAN names and public answers pass.
    let r = ask(ts.udp, "nas.lan.", RecordType::A).await;
    assert_eq!(addresses(&r), ["10.0.0.2"]);
    let r = ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    let m = ts.metrics().await;
    assert_eq!(
        metric(&m, "telesink_blocked_total{list=\"rebind\"}"),
        3.0,
        "{m}"
    );
    ts.stop().await;

    // A list may not take the reserved name.
    let err = telesink::config::Config::from_toml(
        "[[blocking.lists]]\nname = \"rebind\"\npath = \"x.txt\"\n",
        "x.toml",
        dir.path(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("reserved"), "{err}");
}

/// `a.test.` A with EDNS, padded with an unknown option to `total` bytes.
fn query_of_size(id: u16, total: usize) -> Vec<u8> {
    let mut q = request("a.test.", RecordType::A, true);
    q.metadata.id = id;
    let mut bytes = q.to_vec().unwrap();
    // The OPT record is last and empty: its RDLENGTH is the last 2 bytes.
    assert_eq!(bytes[bytes.len() - 2..], [0, 0]);
    let data = total - bytes.len() - 4;
    let rdlen = u16::try_from(4 + data).unwrap();
    let at = bytes.len() - 2;
    bytes[at..].copy_from_slice(&rdlen.to_be_bytes());
    bytes.extend_from_slice(&65001u16.to_be_bytes());
    bytes.extend_from_slice(&u16::try_from(data).unwrap().to_be_bytes());
    bytes.resize(total, 0);
    bytes
}

/// A query over 4 KiB is not a lookup, and would hold its bytes while it
/// waits on the upstreams: over UDP it gets FORMERR at once (the name is
/// not even asked upstream), over TCP its connection is closed. One of
/// exactly 4 KiB is answered.
#[tokio::test]
async fn queries_over_4_kib_are_refused_at_once() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(CONFIG, &[&stub], dir.path()).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut buf = vec![0u8; 65535];
    for (id, size, rcode) in [
        (1u16, 4096, ResponseCode::NoError),
        (2, 4097, ResponseCode::FormErr),
        (3, 65000, ResponseCode::FormErr),
    ] {
        socket
            .send_to(&query_of_size(id, size), ts.udp)
            .await
            .unwrap();
        let (n, _) = tokio::time::timeout(DEADLINE, socket.recv_from(&mut buf))
            .await
            .expect("replies in time")
            .unwrap();
        let m = Message::from_vec(&buf[..n]).unwrap();
        assert_eq!(m.metadata.id, id);
        assert_eq!(m.metadata.response_code, rcode, "{size} bytes: {m:?}");
        if rcode == ResponseCode::FormErr {
            assert_eq!(n, 12, "{size} bytes: a header only");
        }
    }
    assert_eq!(
        stub.count("a.test.", RecordType::A),
        1,
        "only the 4096-byte query went upstream"
    );

    let mut ok = TcpStream::connect(ts.tcp).await.unwrap();
    ok.write_all(&framed(&query_of_size(4, 4096)))
        .await
        .unwrap();
    let reply = read_frame(&mut ok)
        .await
        .expect("a 4096-byte query is answered");
    assert_eq!(
        addresses(&Message::from_vec(&reply).unwrap()),
        ["192.0.2.1"]
    );
    let mut big = TcpStream::connect(ts.tcp).await.unwrap();
    let mut out = framed(&query_of_size(5, 4097));
    out.extend(framed(&probe(6)));
    big.write_all(&out).await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, big.read_to_end(&mut rest))
        .await
        .expect("closed promptly")
        .ok();
    assert!(rest.is_empty(), "nothing answered on the connection");
    let r = ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.1"], "and the server goes on");
    ts.stop().await;
}
