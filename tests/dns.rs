//! End-to-end DNS behaviour: forwarding, caching, blocking, protocol
//! details. telesink runs in-process on 127.0.0.1 port 0 in front of a stub
//! upstream started by the test.

mod common;

use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, OpCode, ResponseCode};
use hickory_proto::rr::{RData, RecordType};

const BASE: &str = r#"
[upstream]
servers = [{upstreams}]
timeout = "300ms"
[http]
listen = "127.0.0.1:0"
"#;

async fn plain() -> (Stub, Telesink, tempfile::TempDir) {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(BASE, &[&stub], dir.path()).await;
    (stub, ts, dir)
}

#[tokio::test]
async fn forwards_common_types_faithfully() {
    let (stub, ts, _dir) = plain().await;

    let r = ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    assert!(r.metadata.recursion_available, "RA is set");
    assert!(r.metadata.recursion_desired, "RD is copied");
    assert!(r.edns.is_some(), "EDNS query gets an EDNS answer");
    assert_eq!(r.queries.len(), 1, "question is echoed");
    assert_eq!(r.queries[0].name(), &name("a.test."));

    let r = ask(ts.udp, "a.test.", RecordType::AAAA).await;
    assert_eq!(addresses(&r), ["2001:db8::1"]);

    let r = ask(ts.udp, "www.test.", RecordType::A).await;
    let kinds: Vec<_> = r.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(
        kinds,
        [RecordType::CNAME, RecordType::CNAME, RecordType::A],
        "CNAME chain kept"
    );
    assert_eq!(addresses(&r), ["192.0.2.1"]);

    let r = ask(ts.udp, "mx.test.", RecordType::MX).await;
    match &r.answers[0].data {
        RData::MX(mx) => {
            assert_eq!(mx.preference, 10);
            assert_eq!(mx.exchange, name("mail.test."));
        }
        other => panic!("expected MX, got {other:?}"),
    }

    let r = ask(ts.udp, "txt.test.", RecordType::TXT).await;
    match &r.answers[0].data {
        RData::TXT(txt) => {
            let strings: Vec<&[u8]> = txt.txt_data.iter().map(|s| &s[..]).collect();
            assert_eq!(strings, [&b"v=spf1 -all"[..], b"hello world"]);
        }
        other => panic!("expected TXT, got {other:?}"),
    }

    // The upstream's AD bit goes to a client that set AD or DO (RFC 6840
    // §5.8), from a miss and from the cache alike, and to no other.
    for _ in 0..2 {
        let mut q = request("ad.test.", RecordType::A, true);
        q.metadata.authentic_data = true;
        assert!(
            udp(ts.udp, &q).await.metadata.authentic_data,
            "AD set: kept"
        );
        let mut q = request("ad.test.", RecordType::A, true);
        q.edns.as_mut().unwrap().set_dnssec_ok(true);
        assert!(
            tcp(ts.tcp, &q).await.metadata.authentic_data,
            "DO set: kept"
        );
        let r = ask(ts.udp, "ad.test.", RecordType::A).await;
        assert!(!r.metadata.authentic_data, "neither: cleared");
    }
    assert_eq!(stub.count("a.test.", RecordType::A), 1);
    ts.stop().await;
}

#[tokio::test]
async fn negative_answers_pass_through_with_soa_and_are_cached() {
    let (stub, ts, _dir) = plain().await;
    for _ in 0..2 {
        let r = ask(ts.udp, "missing.test.", RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        assert!(r.answers.is_empty());
        assert!(
            matches!(r.authorities.first().map(|a| &a.data), Some(RData::SOA(_))),
            "SOA in authority: {:?}",
            r.authorities
        );
        // RFC 2308: negative TTL is min(SOA TTL 300, SOA minimum 120).
        assert!(r.authorities[0].ttl <= 120, "ttl {}", r.authorities[0].ttl);
    }
    assert_eq!(
        stub.count("missing.test.", RecordType::A),
        1,
        "NXDOMAIN was cached"
    );

    let r = ask(ts.udp, "nodata.test.", RecordType::AAAA).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert!(matches!(r.authorities[0].data, RData::SOA(_)));
    ts.stop().await;
}

#[tokio::test]
async fn answers_asked_with_cd_never_reach_clients_without_it() {
    // The stub answers `bogus.test` as a validating resolver does: SERVFAIL,
    // or with CD set the data that failed validation.
    let (stub, ts, _dir) = plain().await;
    let mut cd = request("bogus.test.", RecordType::A, true);
    cd.metadata.checking_disabled = true;
    let r = udp(ts.udp, &cd).await;
    assert_eq!(addresses(&r), ["203.0.113.66"]);
    assert!(r.metadata.checking_disabled, "CD echoed");
    for _ in 0..2 {
        let r = ask(ts.udp, "bogus.test.", RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    }
    assert_eq!(stub.count("bogus.test.", RecordType::A), 3);
    // Cached apart: CD queries are answered from the cache (over UDP, the
    // fast path; over TCP, the full path).
    for r in [udp(ts.udp, &cd).await, tcp(ts.tcp, &cd).await] {
        assert_eq!(addresses(&r), ["203.0.113.66"]);
    }
    assert_eq!(stub.count("bogus.test.", RecordType::A), 3);
    ts.stop().await;
}

#[tokio::test]
async fn a_truncated_reply_to_an_edns_query_keeps_its_opt() {
    let (_stub, ts, _dir) = plain().await;
    // 40 A records do not fit any of these sizes; without care the OPT
    // would be dropped for some of them (RFC 6891 §7 wants it kept).
    for payload in 512..=600u16 {
        let mut q = request("big.test.", RecordType::A, true);
        q.edns.as_mut().unwrap().set_max_payload(payload);
        let raw = udp_raw_from("127.0.0.1:0", ts.udp, &q.to_vec().unwrap())
            .await
            .unwrap();
        let r = Message::from_vec(&raw).unwrap();
        assert!(r.metadata.truncation, "{payload}: TC");
        assert!(r.edns.is_some(), "{payload}: no OPT");
        assert!(
            raw.len() <= usize::from(payload),
            "{payload}: {} bytes",
            raw.len()
        );
        assert_eq!(r.queries.len(), 1, "{payload}: question kept");
        assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    }
    // Over TCP the whole answer comes.
    let r = tcp(ts.tcp, &request("big.test.", RecordType::A, true)).await;
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 40);
    ts.stop().await;
}

#[tokio::test]
async fn an_upstream_reply_larger_than_asked_for_is_fetched_over_tcp() {
    let (_stub, ts, _dir) = plain().await;
    // The upstream sends 100 records over UDP, past the 1,232 bytes
    // telesink advertised, so the datagram arrives cut short.
    let r = tcp(ts.tcp, &request("huge.test.", RecordType::A, true)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 100);
    ts.stop().await;
}

/// A reply's OPT tells telesink's own payload size (RFC 6891 §6.2.3),
/// whatever the client's, on the full path (a miss, TCP, an error) and the
/// fast path (a hit) alike; the client's size only limits the reply.
#[tokio::test]
async fn the_reply_advertises_telesinks_own_payload_size() {
    let (_stub, ts, _dir) = plain().await;
    for (name, payload) in [("a.test.", 512u16), ("b.test.", 1000), ("c.test.", 4096)] {
        let mut q = request(name, RecordType::A, true);
        q.edns.as_mut().unwrap().set_max_payload(payload);
        let mut unknown_class = q.clone();
        unknown_class.queries[0].set_query_class(hickory_proto::rr::DNSClass::CH);
        for (what, r) in [
            ("miss", udp(ts.udp, &q).await),
            ("hit", udp(ts.udp, &q).await),
            ("tcp", tcp(ts.tcp, &q).await),
            ("notimp", udp(ts.udp, &unknown_class).await),
        ] {
            let edns = r.edns.as_ref().unwrap_or_else(|| panic!("{what}: OPT"));
            assert_eq!(edns.max_payload(), 1232, "{what}, client {payload}");
        }
    }
    ts.stop().await;
}

#[tokio::test]
async fn the_do_bit_is_copied_into_the_reply() {
    let (_stub, ts, _dir) = plain().await;
    for dnssec_ok in [true, false, true] {
        let mut q = request("a.test.", RecordType::A, true);
        q.edns.as_mut().unwrap().set_dnssec_ok(dnssec_ok);
        // A miss, then hits (the UDP fast path), and over TCP.
        for r in [
            udp(ts.udp, &q).await,
            udp(ts.udp, &q).await,
            tcp(ts.tcp, &q).await,
        ] {
            assert_eq!(addresses(&r), ["192.0.2.1"]);
            let edns = r.edns.as_ref().expect("OPT");
            assert_eq!(edns.flags().dnssec_ok, dnssec_ok, "RFC 3225 §3");
        }
    }
    ts.stop().await;
}

#[tokio::test]
async fn second_query_is_a_cache_hit_with_a_lower_ttl() {
    let (stub, ts, _dir) = plain().await;
    let first = ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(first.answers[0].ttl, 300);
    // Poll (each poll is a cache hit) until the TTL has counted down.
    let udp = ts.udp;
    eventually("cached TTL counts down", || async move {
        let r = ask(udp, "a.test.", RecordType::A).await;
        assert_eq!(addresses(&r), ["192.0.2.1"]);
        r.answers[0].ttl < 300
    })
    .await;
    assert_eq!(
        stub.count("a.test.", RecordType::A),
        1,
        "upstream asked once"
    );
    // Names differing only in case share the cache entry.
    let r = ask(ts.udp, "A.TeSt.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    assert_eq!(stub.count("a.test.", RecordType::A), 1);
    let m = ts.metrics().await;
    assert!(metric(&m, "telesink_cache_hits_total") >= 2.0, "{m}");
    assert_eq!(metric(&m, "telesink_cache_misses_total"), 1.0);
    assert_eq!(metric(&m, "telesink_cache_entries"), 1.0);
    ts.stop().await;
}

#[tokio::test]
async fn expired_entries_are_fetched_again() {
    let (stub, ts, _dir) = plain().await;
    ask(ts.udp, "short.test.", RecordType::A).await;
    let udp = ts.udp;
    let stub_ref = &stub;
    eventually("entry with a 2 s TTL expires", || async move {
        ask(udp, "short.test.", RecordType::A).await;
        stub_ref.count("short.test.", RecordType::A) == 2
    })
    .await;
    ts.stop().await;
}

#[tokio::test]
async fn tcp_queries_are_answered() {
    let (_stub, ts, _dir) = plain().await;
    let r = tcp(ts.tcp, &request("a.test.", RecordType::A, false)).await;
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    ts.stop().await;
}

#[tokio::test]
async fn large_answer_is_truncated_for_plain_udp_and_complete_over_tcp() {
    let (_stub, ts, _dir) = plain().await;
    let q = request("big.test.", RecordType::A, false);
    let raw = udp_raw_from("127.0.0.1:0", ts.udp, &q.to_vec().unwrap())
        .await
        .unwrap();
    assert!(
        raw.len() <= 512,
        "non-EDNS UDP reply is {} bytes",
        raw.len()
    );
    let r = Message::from_vec(&raw).unwrap();
    assert!(r.metadata.truncation, "TC set");
    let r = tcp(ts.tcp, &q).await;
    assert!(!r.metadata.truncation);
    assert_eq!(addresses(&r).len(), 40);
    // With EDNS the same answer fits in one UDP reply.
    let r = ask(ts.udp, "big.test.", RecordType::A).await;
    assert!(!r.metadata.truncation);
    assert_eq!(addresses(&r).len(), 40);
    ts.stop().await;
}

#[tokio::test]
async fn truncated_upstream_reply_is_retried_over_tcp() {
    let (stub, ts, _dir) = plain().await;
    let r = ask(ts.udp, "tc.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.10"]);
    assert_eq!(
        stub.count("tc.test.", RecordType::A),
        2,
        "once over UDP, once over TCP"
    );
    ts.stop().await;
}

/// An upstream that serves UDP only, as the DNS proxy of some routers
/// does: its TCP port is bound but not listening, so connections are
/// refused. It answers `huge.test` A with 100 records (about 1,650 bytes),
/// truncated to none when the query advertises less room. Returns its
/// address and the EDNS sizes of the queries it received.
async fn udp_only_upstream() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
) {
    use hickory_proto::op::{Edns, MessageType};
    use hickory_proto::rr::{Record, rdata::A};
    let (udp, tcp) = loop {
        let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tcp = tokio::net::TcpSocket::new_v4().unwrap();
        if tcp.bind(udp.local_addr().unwrap()).is_ok() {
            break (udp, tcp);
        }
    };
    let addr = udp.local_addr().unwrap();
    let sizes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = sizes.clone();
    tokio::spawn(async move {
        let _bound = tcp;
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf).await {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let size = query.edns.as_ref().map_or(512, |e| e.max_payload());
            seen.lock().unwrap().push(size);
            let mut reply = Message::new(query.metadata.id, MessageType::Response, OpCode::Query);
            reply.metadata.recursion_available = true;
            reply.add_queries(query.queries.clone());
            reply.add_answers((1..=100u8).map(|i| {
                Record::from_rdata(name("huge.test."), 300, RData::A(A::new(198, 51, 100, i)))
            }));
            reply.set_edns(Edns::new());
            let mut bytes = reply.to_vec().unwrap();
            if bytes.len() > usize::from(size) {
                reply.answers.clear();
                reply.metadata.truncation = true;
                bytes = reply.to_vec().unwrap();
            }
            let _ = udp.send_to(&bytes, from).await;
        }
    });
    (addr, sizes)
}

#[tokio::test]
async fn an_upstream_without_tcp_is_asked_again_over_udp_with_more_room() {
    let (upstream, sizes) = udp_only_upstream().await;
    let dir = dir_with(&[]);
    let config = BASE.replace("{upstreams}", &format!("\"{upstream}\""));
    let ts = Telesink::start(&config, &[], dir.path()).await;
    // Over TCP, the client gets the whole answer.
    let r = tcp(ts.tcp, &request("huge.test.", RecordType::A, true)).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(r.answers.len(), 100);
    assert_eq!(*sizes.lock().unwrap(), [1232, 4096]);
    // The upstream still counts as healthy.
    let metrics = ts.metrics().await;
    let ok = format!("telesink_upstream_requests_total{{result=\"ok\",upstream=\"{upstream}\"}}");
    assert_eq!(metric(&metrics, &ok), 1.0, "{metrics}");
    ts.stop().await;
}

/// A TCP-only upstream that answers every query with `n` A records whose
/// owners point at the question (16 bytes a record), written by hand: the
/// compact form a real server sends; with TC set if `tc`.
async fn compressed_tcp_upstream(n: u16, tc: bool) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                while let Ok(len) = stream.read_u16().await {
                    let mut query = vec![0u8; usize::from(len)];
                    if stream.read_exact(&mut query).await.is_err() {
                        return;
                    }
                    // Header and question as asked, OPT dropped.
                    let question_end = 12 + query[12..].iter().position(|&b| b == 0).unwrap() + 5;
                    let mut reply = query[..question_end].to_vec();
                    reply[2] |= 0x80 | if tc { 0x02 } else { 0 };
                    reply[3] = 0x80;
                    reply[6..8].copy_from_slice(&n.to_be_bytes());
                    reply[8..12].fill(0);
                    for i in 0..n {
                        reply.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 10, 0]);
                        reply.extend_from_slice(&i.to_be_bytes());
                    }
                    let mut framed = (reply.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&reply);
                    if stream.write_all(&framed).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_answer_that_fits_a_tcp_message_upstream_fits_one_to_the_client() {
    // 3,900 records: 62,400 bytes as the upstream compresses them.
    let upstream = compressed_tcp_upstream(3900, false).await;
    let dir = dir_with(&[]);
    let config = BASE.replace("{upstreams}", &format!("\"tcp://{upstream}\""));
    let ts = Telesink::start(&config, &[], dir.path()).await;
    for round in ["miss", "hit"] {
        let r = tcp(ts.tcp, &request("many.test.", RecordType::A, true)).await;
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{round}");
        assert!(!r.metadata.truncation, "{round}: TC over TCP");
        assert_eq!(r.answers.len(), 3900, "{round}");
    }
    ts.stop().await;
}

#[tokio::test]
async fn a_truncated_reply_over_tcp_is_not_an_answer_nor_a_failure_of_the_upstream() {
    let upstream = compressed_tcp_upstream(10, true).await;
    let dir = dir_with(&[]);
    let config = BASE.replace("{upstreams}", &format!("\"tcp://{upstream}\""));
    let ts = Telesink::start(&config, &[], dir.path()).await;
    for _ in 0..3 {
        let r = tcp(ts.tcp, &request("cut.test.", RecordType::A, true)).await;
        assert_eq!(
            r.metadata.response_code,
            ResponseCode::ServFail,
            "not cached, not passed on"
        );
    }
    let m = ts.metrics().await;
    let label = format!("upstream=\"tcp://{upstream}\"");
    let truncated = format!("telesink_upstream_requests_total{{result=\"truncated\",{label}}}");
    assert_eq!(metric(&m, &truncated), 3.0, "{m}");
    let healthy = format!("telesink_upstream_healthy{{{label}}}");
    assert_eq!(metric(&m, &healthy), 1.0, "still healthy: {m}");
    ts.stop().await;
}

#[tokio::test]
async fn upstream_timeout_fails_over_to_the_next() {
    let dead = Stub::silent().await;
    let live = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(BASE, &[&dead, &live], dir.path()).await;
    let r = ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    assert_eq!(dead.count("a.test.", RecordType::A), 1);
    assert_eq!(live.count("a.test.", RecordType::A), 1);
    let m = ts.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!(
                "telesink_upstream_requests_total{{result=\"timeout\",upstream=\"{}\"}}",
                dead.addr
            )
        ),
        1.0,
        "{m}"
    );
    ts.stop().await;
}

#[tokio::test]
async fn servfail_fails_over_and_all_failing_gives_servfail() {
    let a = Stub::start().await;
    let b = Stub::start().await;
    let dir = dir_with(&[]);
    let ts = Telesink::start(BASE, &[&a, &b], dir.path()).await;
    let r = ask(ts.udp, "servfail.test.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(a.count("servfail.test.", RecordType::A), 1);
    assert_eq!(b.count("servfail.test.", RecordType::A), 1);
    // FORMERR and NOTIMP from an upstream speak of telesink's query, not
    // the client's: the next upstream is asked, and the client is not
    // told its query was wrong.
    for (name, result) in [("formerr.test.", "formerr"), ("notimp.test.", "notimp")] {
        let r = ask(ts.udp, name, RecordType::A).await;
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail, "{name}");
        assert_eq!(
            (a.count(name, RecordType::A), b.count(name, RecordType::A)),
            (1, 1)
        );
        let m = ts.metrics().await;
        let series = format!(
            "telesink_upstream_requests_total{{result=\"{result}\",upstream=\"{}\"}}",
            b.addr
        );
        assert_eq!(metric(&m, &series), 1.0, "{m}");
    }
    let m = ts.metrics().await;
    assert_eq!(
        metric(&m, "telesink_queries_total{outcome=\"error\",qtype=\"A\"}"),
        3.0,
        "{m}"
    );
    ts.stop().await;
}

#[tokio::test]
async fn clients_outside_allow_clients_are_refused() {
    let stub = Stub::start().await;
    let dir = dir_with(&[]);
    let config = format!(
        "{BASE}\n[server]\nallow_clients = [\"127.0.0.2/32\"]\n\
         [metrics]\nclient_label = \"ip\"\nmax_clients = 1\n"
    );
    let ts = Telesink::start(&config, &[&stub], dir.path()).await;
    let q = request("a.test.", RecordType::A, true);
    let r = udp_from("127.0.0.1:0", ts.udp, &q).await;
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(r.answers.is_empty());
    let r = udp_from("127.0.0.2:0", ts.udp, &q).await;
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    assert_eq!(
        stub.count("a.test.", RecordType::A),
        1,
        "the refused query never left"
    );
    // The outsider took none of the address labels the LAN's devices get.
    let m = ts.metrics().await;
    let series = |client: &str, outcome: &str| {
        format!("telesink_client_queries_total{{client=\"{client}\",outcome=\"{outcome}\"}}")
    };
    assert_eq!(metric(&m, &series("other", "refused")), 1.0, "{m}");
    assert_eq!(metric(&m, &series("127.0.0.2", "forwarded")), 1.0, "{m}");
    ts.stop().await;
}

#[tokio::test]
async fn garbage_does_not_stop_the_server() {
    let (_stub, ts, _dir) = plain().await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for junk in [
        &b""[..],
        b"\x00",
        b"\x12\x34\x01\x00\x00\x01",
        b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff",
        &[0xc0u8; 600],
    ] {
        socket.send_to(junk, ts.udp).await.unwrap();
    }
    // A header that promises a question that is not there: FORMERR.
    let r = udp_raw_from(
        "127.0.0.1:0",
        ts.udp,
        b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07",
    )
    .await
    .unwrap();
    assert_eq!(&r[..2], b"\xab\xcd");
    assert_eq!(r[3] & 0x0f, 1, "FORMERR");
    // TCP garbage too.
    let mut stream = tokio::net::TcpStream::connect(ts.tcp).await.unwrap();
    use tokio::io::AsyncWriteExt;
    stream.write_all(b"\x00\x05hello\x00\x00").await.unwrap();
    drop(stream);
    let r = ask(ts.udp, "a.test.", RecordType::A).await;
    assert_eq!(addresses(&r), ["192.0.2.1"]);
    ts.stop().await;
}

#[tokio::test]
async fn rfc_error_codes_for_odd_queries() {
    let (_stub, ts, _dir) = plain().await;
    let mut q = request("a.test.", RecordType::A, false);
    q.metadata.op_code = OpCode::Status;
    let r = udp(ts.udp, &q).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NotImp);

    let mut q = request("a.test.", RecordType::A, false);
    q.add_query(hickory_proto::op::Query::query(
        name("b.test."),
        RecordType::A,
    ));
    let r = udp(ts.udp, &q).await;
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::FormErr,
        "two questions"
    );

    let mut q = request("a.test.", RecordType::A, true);
    q.edns.as_mut().unwrap().set_version(1);
    let r = udp(ts.udp, &q).await;
    // BADVERS is 16: 0 in the header plus 1 in the OPT record's high bits
    // (hickory's parser names the shared value 16 BADSIG).
    assert_eq!(u16::from(r.metadata.response_code), 16);
    assert!(r.edns.is_some(), "BADVERS comes with an OPT record");

    let mut q = request("a.test.", RecordType::A, true);
    q.metadata.checking_disabled = true;
    let r = udp(ts.udp, &q).await;
    assert!(r.metadata.checking_disabled, "CD copied");
    ts.stop().await;
}

#[tokio::test]
async fn metrics_move_as_queries_are_answered() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "tracker.test\n")]);
    let config = format!("{BASE}\n[[blocking.lists]]\nname = \"vendor\"\npath = \"block.txt\"\n");
    let ts = Telesink::start(&config, &[&stub], dir.path()).await;
    let before = ts.metrics().await;
    assert_eq!(
        metric(&before, "telesink_blocklist_domains{list=\"vendor\"}"),
        1.0,
        "{before}"
    );
    assert_eq!(
        metric(
            &before,
            "telesink_queries_total{outcome=\"forwarded\",qtype=\"A\"}"
        ),
        0.0
    );
    ask(ts.udp, "a.test.", RecordType::A).await;
    ask(ts.udp, "a.test.", RecordType::A).await;
    ask(ts.udp, "x.tracker.test.", RecordType::AAAA).await;
    let m = ts.metrics().await;
    assert_eq!(
        metric(
            &m,
            "telesink_queries_total{outcome=\"forwarded\",qtype=\"A\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(&m, "telesink_queries_total{outcome=\"cached\",qtype=\"A\"}"),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "telesink_queries_total{outcome=\"blocked\",qtype=\"AAAA\"}"
        ),
        1.0
    );
    assert_eq!(metric(&m, "telesink_blocked_total{list=\"vendor\"}"), 1.0);
    assert_eq!(
        metric(
            &m,
            "telesink_query_duration_seconds_count{outcome=\"forwarded\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            &format!(
                "telesink_upstream_requests_total{{result=\"ok\",upstream=\"{}\"}}",
                stub.addr
            )
        ),
        1.0
    );
    assert_eq!(
        metric(&m, "telesink_responses_total{rcode=\"NOERROR\"}"),
        3.0
    );
    assert!(m.contains("telesink_build_info{version="));
    for line in m.lines().filter(|l| l.starts_with("telesink_")) {
        assert!(
            !line.contains("tracker.test") && !line.contains("127.0.0.1:0"),
            "unbounded label: {line}"
        );
    }
    assert_eq!(http_get(ts.http, "/healthz").await.unwrap(), "ok\n");
    ts.stop().await;
}

#[tokio::test]
async fn shuts_down_promptly_with_a_slow_upstream_in_flight() {
    let dead = Stub::silent().await;
    let dir = dir_with(&[]);
    let config = BASE.replace("300ms", "2s");
    let ts = Telesink::start(&config, &[&dead], dir.path()).await;
    let udp = ts.udp;
    let pending = tokio::spawn(async move {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket
            .send_to(
                &request("a.test.", RecordType::A, true).to_vec().unwrap(),
                udp,
            )
            .await
            .unwrap();
    });
    pending.await.unwrap();
    let stub = &dead;
    eventually(
        "query reached the upstream",
        || async move { stub.total() == 1 },
    )
    .await;
    tokio::time::timeout(Duration::from_secs(5), ts.stop())
        .await
        .expect("graceful stop");
}

#[tokio::test]
async fn per_device_metrics_use_configured_names() {
    let stub = Stub::start().await;
    let dir = dir_with(&[("block.txt", "tracker.test\n")]);
    let config = format!(
        "{BASE}\n[[blocking.lists]]\nname = \"xiaomi\"\npath = \"block.txt\"\n\
         [[clients]]\nname = \"phone\"\nips = [\"127.0.0.2\"]\n\
         [[clients]]\nname = \"tv\"\nips = [\"127.0.0.3/32\"]\n"
    );
    let ts = Telesink::start(&config, &[&stub], dir.path()).await;
    udp_from(
        "127.0.0.2:0",
        ts.udp,
        &request("x.tracker.test.", RecordType::A, true),
    )
    .await;
    udp_from(
        "127.0.0.2:0",
        ts.udp,
        &request("a.test.", RecordType::A, true),
    )
    .await;
    udp_from(
        "127.0.0.3:0",
        ts.udp,
        &request("a.test.", RecordType::A, true),
    )
    .await;
    udp_from(
        "127.0.0.1:0",
        ts.udp,
        &request("a.test.", RecordType::A, true),
    )
    .await;
    let m = ts.metrics().await;
    assert_eq!(
        metric(
            &m,
            "telesink_client_queries_total{client=\"phone\",outcome=\"blocked\"}"
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            "telesink_client_queries_total{client=\"phone\",outcome=\"forwarded\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "telesink_client_queries_total{client=\"tv\",outcome=\"cached\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "telesink_client_queries_total{client=\"unknown\",outcome=\"cached\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "telesink_client_blocked_total{client=\"phone\",list=\"xiaomi\"}"
        ),
        1.0
    );
    let last = metric(
        &m,
        "telesink_client_last_query_timestamp_seconds{client=\"tv\"}",
    );
    assert!(
        (last - telesink::metrics::unix_now()).abs() < 60.0,
        "{last}"
    );
    assert!(!m.contains("127.0.0.2"), "no client addresses in labels");
    ts.stop().await;
}
