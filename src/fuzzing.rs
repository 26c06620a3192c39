//! The harness of the `request_path` fuzz target (`fuzz/`), in the library
//! so the regression test replays exactly what the fuzzer ran.
//!
//! The whole request path on one packet: hickory's parsing, the production
//! `Handler`, the real chain (access → block → local → cache) in front of an
//! in-process fake upstream, and hickory's encoding, through
//! [`crate::server::answer_bytes`].
//!
//! Input layout:
//!
//! ```text
//! [flags][query length, u16 big-endian][query bytes][upstream reply bytes]
//! ```
//!
//! `flags` picks the transport (bit 4: TCP), the client (bit 5: one outside
//! `allow_clients`), `[blocking] mode` (bits 0-1) and rebind protection
//! (bit 2). The fake upstream answers every question with the upstream
//! reply bytes, parsed as hickory parses an upstream reply (SERVFAIL when
//! they do not parse) and passed on with the parsed reply as a UDP
//! upstream's are, so the fuzzer controls both what the client asks and
//! what the upstream says: CNAME chains into block lists, private
//! addresses, odd TTLs and record types all reach the cache (which may
//! keep the upstream's bytes as they came), the block and rebind checks
//! and the encoder.
//!
//! Oracle: no panic; a reply, when there is one, parses, is a response and
//! echoes the query's ID; over UDP it fits the client's payload size;
//! every query that parses as a query gets a reply; and whatever the UDP
//! fast path ([`crate::udp`]) answers is byte for byte the handler's reply.
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, LazyLock};

use crate::clients::Clients;
use crate::config::{BlockMode, Config};
use crate::lists::{BuildLimits, ListInput, ListKind, ListStore, Snapshot};
use crate::metrics::Metrics;
use crate::resolver::{
    Answer, BlockPolicy, Outcome, Query, Resolve, answer_from_reply, chain_with,
    dname_targets_uncompressed, is_query_response,
};
use crate::server::{Handler, Protocol, answer_bytes};
use hickory_proto::op::{Message, MessageType, ResponseCode};

/// The upstream: whatever the input says it answers, and those bytes.
struct FakeUpstream(Option<(Message, Vec<u8>)>);

impl Resolve for FakeUpstream {
    async fn resolve(&self, _query: &Query<'_>) -> Answer {
        match &self.0 {
            // As Forward: only a response to a standard query is accepted
            // (the ID and question checks need sockets, and are left out),
            // SERVFAIL and REFUSED mean "try the next one", of which there
            // is none, and so does a compressed DNAME target.
            Some((reply, bytes))
                if is_query_response(reply)
                    && !matches!(
                        reply.metadata.response_code,
                        ResponseCode::ServFail | ResponseCode::Refused
                    )
                    && dname_targets_uncompressed(reply) =>
            {
                answer_from_reply(reply.clone(), Some(bytes.clone()))
            }
            _ => Answer::empty(Outcome::Error, ResponseCode::ServFail),
        }
    }
}

struct Shared {
    runtime: tokio::runtime::Runtime,
    metrics: Arc<Metrics>,
    clients: Arc<Clients>,
    /// Without and with rebind protection.
    configs: [Config; 2],
    /// One list store per `[blocking] mode`.
    lists: Vec<Arc<ListStore>>,
}

const BLOCK: &str = "tracker.test\n*.wild.test\n/^ads?[0-9]*\\./\n@@||ok.tracker.test^\n";
const ALLOW: &str = "allowed.blocked.test\n";

static SHARED: LazyLock<Shared> = LazyLock::new(|| {
    let config = |rebind: bool| {
        let text = format!(
            "[upstream]\nservers = [\"127.0.0.1:9\"]\n[cache]\ncapacity = 64\n\
             [security]\nrebind_protection = {rebind}\n"
        );
        Config::from_toml(&text, "fuzz.toml", Path::new(".")).expect("valid fuzz config")
    };
    let configs = [config(false), config(true)];
    let lists = [
        BlockMode::Null,
        BlockMode::Nxdomain,
        BlockMode::Nodata,
        BlockMode::Refused,
    ]
    .into_iter()
    .map(|mode| {
        let policy = BlockPolicy {
            mode,
            ..BlockPolicy::default()
        };
        let snapshot = Snapshot::build(
            vec![
                ListInput::from_text("vendor", ListKind::Block, BLOCK),
                ListInput::from_text("essential", ListKind::Allow, ALLOW),
            ],
            policy,
            BuildLimits {
                max_regex_per_list: 10,
            },
            None,
        );
        Arc::new(ListStore::new(snapshot))
    })
    .collect();
    Shared {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime"),
        metrics: Arc::new(Metrics::new()),
        clients: Arc::new(Clients::new(&[], &configs[0].metrics)),
        configs,
        lists,
    }
});

/// Runs one fuzz input (layout above) and checks the oracle; panics on
/// any violation.
pub fn request_path(data: &[u8]) {
    let [flags, hi, lo, rest @ ..] = data else {
        return;
    };
    let qlen = usize::from(u16::from_be_bytes([*hi, *lo])).min(rest.len());
    let (query, upstream) = rest.split_at(qlen);
    let s = &*SHARED;
    let config = &s.configs[usize::from(flags >> 2 & 1)];
    let chain = chain_with(
        config,
        s.lists[usize::from(flags & 3)].clone(),
        s.metrics.clone(),
        Arc::new(crate::controls::Controls::default()),
        FakeUpstream(
            Message::from_vec(upstream)
                .ok()
                .map(|reply| (reply, upstream.to_vec())),
        ),
    );
    let handler = Handler::new(
        chain,
        s.metrics.clone(),
        s.clients.clone(),
        config.server.edns_udp_size,
    );
    let protocol = if flags & 0x10 != 0 {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    let src: SocketAddr = if flags & 0x20 != 0 {
        "203.0.113.7:5353".parse().unwrap()
    } else {
        "127.0.0.1:5353".parse().unwrap()
    };
    let reply = s
        .runtime
        .block_on(answer_bytes(&handler, query, src, protocol));
    if protocol == Protocol::Udp {
        // The UDP fast path answers blocked names and, now that the answer
        // above may be cached, cache hits; when it answers, it must send
        // exactly what the full path sends.
        let mut fast = Vec::new();
        if handler.answer_now(query, src, &mut fast) {
            let full = s
                .runtime
                .block_on(answer_bytes(&handler, query, src, protocol));
            assert_eq!(Some(fast), full, "the fast path differs from the handler");
        }
    }

    let parsed_query = Message::from_vec(query).ok();
    if parsed_query
        .as_ref()
        .is_some_and(|q| q.metadata.message_type == MessageType::Query)
    {
        assert!(reply.is_some(), "a parseable query got no reply");
    }
    let Some(reply) = reply else { return };
    let parsed = Message::from_vec(&reply).expect("the reply parses");
    assert_eq!(parsed.metadata.message_type, MessageType::Response);
    assert_eq!(&reply[..2], &query[..2], "the reply echoes the ID");
    if protocol == Protocol::Udp {
        let limit = parsed_query
            .and_then(|q| q.edns)
            .map_or(512, |e| e.max_payload().clamp(512, 1232));
        assert!(
            reply.len() <= usize::from(limit),
            "{} > {limit}",
            reply.len()
        );
    }
}
