//! Hostile input through the whole request path without sockets
//! (`telesink::server::answer_bytes`, the production handler and chain):
//! the fuzzer's regression inputs and seeds, and property tests on
//! arbitrary and mutated packets in front of a stub upstream on 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use common::*;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use proptest::prelude::*;
use telesink::clients::Clients;
use telesink::config::Config;
use telesink::lists::ListStore;
use telesink::metrics::Metrics;
use telesink::server::{Handler, Protocol, answer_bytes};

/// Every input the fuzzer ever crashed on, and its seeds, pass the fuzz
/// oracle now (`telesink::fuzzing::request_path` panics otherwise).
#[test]
fn fuzz_regressions_and_seeds_replay_cleanly() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in ["tests/corpus/regressions", "fuzz/seeds/request_path"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            telesink::fuzzing::request_path(&std::fs::read(&path).unwrap());
            n += 1;
        }
    }
    assert!(n >= 20, "only {n} inputs");
}

/// The production handler with the real chain, forwarding to `stub`.
struct Path1 {
    /// `answer_bytes` on the handler (whose chain type is unnameable).
    ask: AskFn,
    _stub: Stub,
    _dir: tempfile::TempDir,
}

type AskFn = Box<dyn Fn(&[u8], Protocol) -> Option<Vec<u8>>>;

fn fixture() -> Path1 {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let stub = runtime.block_on(Stub::start());
    let dir = dir_with(&[("block.txt", "tracker.test\n")]);
    let text = format!(
        "[upstream]\nservers = [\"{}\"]\ntimeout = \"500ms\"\n\
         [[blocking.lists]]\nname = \"vendor\"\npath = \"block.txt\"\n\
         [security]\nrebind_protection = true\n",
        stub.addr
    );
    let config = Config::from_toml(&text, "test.toml", dir.path()).unwrap();
    let metrics = Arc::new(Metrics::new());
    let lists = Arc::new(ListStore::new(telesink::lists::build(&config, None)));
    let chain = telesink::resolver::chain(
        &config,
        lists,
        metrics.clone(),
        Arc::new(telesink::controls::Controls::default()),
    );
    let handler = Handler::new(
        chain,
        metrics,
        Arc::new(Clients::new(&config.clients, &config.metrics)),
        config.server.edns_udp_size,
    );
    let src: SocketAddr = CLIENT.parse().unwrap();
    Path1 {
        ask: Box::new(move |bytes, protocol| {
            runtime.block_on(answer_bytes(&handler, bytes, src, protocol))
        }),
        _stub: stub,
        _dir: dir,
    }
}

const CLIENT: &str = "127.0.0.1:40000";

impl Path1 {
    /// The properties every packet must satisfy; returns the parsed reply.
    fn check(&self, bytes: &[u8], protocol: Protocol) -> Option<Message> {
        let reply = (self.ask)(bytes, protocol);
        let query = Message::from_vec(bytes).ok();
        if query
            .as_ref()
            .is_some_and(|q| q.metadata.message_type == MessageType::Query)
        {
            assert!(reply.is_some(), "no reply to a parseable query {query:?}");
        }
        let reply = reply?;
        let parsed = Message::from_vec(&reply)
            .unwrap_or_else(|e| panic!("reply {reply:02x?} does not parse: {e}"));
        assert_eq!(parsed.metadata.message_type, MessageType::Response);
        assert_eq!(reply[..2], bytes[..2], "the reply echoes the ID");
        if protocol == Protocol::Udp {
            let limit = query
                .and_then(|q| q.edns)
                .map_or(512, |e| e.max_payload().clamp(512, 1232));
            assert!(reply.len() <= usize::from(limit));
        }
        Some(parsed)
    }
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Udp), Just(Protocol::Tcp)]
}

/// A well-formed query: names near the stub's zone and the block list,
/// common, odd and unknown types and classes, EDNS or not.
fn query() -> impl Strategy<Value = Message> {
    let label = prop_oneof![
        Just("a".to_string()),
        Just("tracker".to_string()),
        Just("www".to_string()),
        Just("cloaked".to_string()),
        Just("private".to_string()),
        "[a-zA-Z0-9_-]{1,63}",
    ];
    let name = proptest::collection::vec(label, 0..4).prop_map(|mut labels| {
        labels.push("test".into());
        let mut name = Name::from_labels(labels.iter().map(String::as_bytes)).unwrap();
        name.set_fqdn(true);
        name
    });
    let qtype = prop_oneof![
        Just(RecordType::A),
        Just(RecordType::AAAA),
        Just(RecordType::ANY),
        Just(RecordType::MX),
        Just(RecordType::TXT),
        Just(RecordType::OPT),
        Just(RecordType::AXFR),
        any::<u16>().prop_map(RecordType::from),
    ];
    let qclass = prop_oneof![
        4 => Just(DNSClass::IN),
        1 => any::<u16>().prop_map(DNSClass::from),
    ];
    let edns = proptest::option::of((any::<u16>(), 0u8..3, any::<bool>()));
    (any::<u16>(), name, qtype, qclass, edns, any::<bool>()).prop_map(
        |(id, name, qtype, qclass, edns, cd)| {
            let mut m = Message::new(id, MessageType::Query, OpCode::Query);
            m.metadata.recursion_desired = true;
            m.metadata.checking_disabled = cd;
            let mut q = Query::query(name, qtype);
            q.set_query_class(qclass);
            m.add_query(q);
            if let Some((size, version, dnssec_ok)) = edns {
                let mut e = Edns::new();
                e.set_max_payload(size);
                e.set_version(version);
                e.flags_mut().dnssec_ok = dnssec_ok;
                m.set_edns(e);
            }
            m
        },
    )
}

/// A byte-level mutation of an encoded packet.
#[derive(Debug, Clone)]
enum Mutation {
    Set(usize, u8),
    Truncate(usize),
    Insert(usize, Vec<u8>),
    Remove(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<usize>(), 1usize..8).prop_map(|(i, n)| Mutation::Remove(i, n)),
    ]
}

fn mutate(mut bytes: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = bytes.len().max(1);
        match m {
            Mutation::Set(i, b) if !bytes.is_empty() => bytes[i % len] = *b,
            Mutation::Truncate(i) => bytes.truncate(i % (len + 1)),
            Mutation::Insert(i, b) => {
                let at = i % (bytes.len() + 1);
                bytes.splice(at..at, b.iter().copied());
            }
            Mutation::Remove(i, n) if !bytes.is_empty() => {
                let at = i % len;
                let end = (at + n).min(bytes.len());
                bytes.drain(at..end);
            }
            _ => {}
        }
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Arbitrary bytes: never a panic, and any reply is a parseable
    /// response with the same ID.
    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..700), p in protocol()) {
        FIXTURE.with(|f| { f.check(&bytes, p); });
    }

    /// Well-formed queries: always answered, with the same ID and the
    /// question echoed exactly (letter case included).
    #[test]
    fn wellformed_queries(q in query(), p in protocol()) {
        FIXTURE.with(|f| {
            let bytes = q.to_vec().unwrap();
            let reply = f.check(&bytes, p).expect("answered");
            prop_assert_eq!(reply.metadata.id, q.metadata.id);
            let code = reply.metadata.response_code;
            if code != ResponseCode::FormErr {
                prop_assert_eq!(&reply.queries, &q.queries);
            }
            if q.queries[0].query_type() == RecordType::ANY
                && q.queries[0].query_class() == DNSClass::IN
                && q.edns.as_ref().is_none_or(|e| e.version() == 0)
                && !q.queries[0].name().to_ascii().to_lowercase().ends_with("tracker.test.")
            {
                prop_assert_eq!(reply.answers.len(), 1, "RFC 8482 answer");
            }
            Ok(())
        })?;
    }

    /// Structure-aware mutations of well-formed queries (bytes set,
    /// inserted, removed, truncated): the same properties as arbitrary
    /// bytes, from inputs that get much deeper into the parser.
    #[test]
    fn mutated_queries(
        q in query(),
        ms in proptest::collection::vec(mutation(), 1..4),
        p in protocol(),
    ) {
        FIXTURE.with(|f| { f.check(&mutate(q.to_vec().unwrap(), &ms), p); });
    }
}

thread_local! {
    static FIXTURE: Path1 = fixture();
}
