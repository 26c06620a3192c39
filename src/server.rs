//! The DNS side: binding sockets, and the request handler that turns a
//! request (parsed by hickory) into a [`Query`], runs it through the chain
//! and sends the answer.
//!
//! The UDP ([`crate::udp`]) and TCP ([`crate::tcp`]) loops do what
//! hickory's `Server` does before its handler: they drop packets shorter
//! than a header and responses (QR=1) sent as queries, and answer FORMERR
//! to anything that does not parse ([`answer_bytes`]). The handler adds the
//! rest of RFC 1035 conformance: NOTIMP for other opcodes, FORMERR unless
//! there is exactly one question, BADVERS for EDNS versions above 0, RA
//! set, RD and CD copied, and an OPT record in the reply when the query had
//! one.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncodable, BinEncoder};
use hickory_server::net::NetError;
/// The transport a request came over, as [`answer_bytes`] takes it.
pub use hickory_server::net::xfer::Protocol;
use hickory_server::server::{Request, ResponseInfo};
use hickory_server::zone_handler::{MessageResponse, MessageResponseBuilder, Queries};
use socket2::{Domain, Protocol as SocketProtocol, Socket, Type};

use crate::clients::{Clients, Device};
use crate::metrics::Metrics;
use crate::recent::{QueryName, RecentBlocked};
use crate::resolver::{DNS_HEADER_LEN, Outcome, Query, Resolve};

/// The largest query telesink reads, over UDP or TCP. A question is at
/// most 259 bytes and the options a client sends (a cookie, padding,
/// a client subnet) a few dozen more; a bigger query is not a lookup,
/// and kept while it waits on the upstreams, 4,096 of them of 64 KiB
/// each would hold a quarter of a gigabyte per thread. Over UDP it gets
/// FORMERR at once; over TCP the connection is closed.
pub const MAX_QUERY: usize = 4096;

/// The request handler in front of the resolver chain: it takes requests
/// as hickory parses them and answers with hickory's encoder, or with the
/// bytes the cache just encoded (see `handle_request`). Cloning
/// shares the chain, so UDP ([`crate::udp`]) and TCP ([`crate::tcp`]) use
/// the same one.
#[derive(Clone)]
pub struct Handler<R> {
    chain: R,
    metrics: Arc<Metrics>,
    /// Names the device behind a client address, for per-device metrics.
    clients: Arc<Clients>,
    /// The largest UDP payload telesink advertises and sends.
    edns_udp_size: u16,
    /// Where blocked queries are kept for `GET /api/blocked`, if anywhere.
    recent: Option<Arc<RecentBlocked>>,
}

impl<R: Resolve> Handler<R> {
    /// A handler answering through `chain`.
    pub fn new(chain: R, metrics: Arc<Metrics>, clients: Arc<Clients>, edns_udp_size: u16) -> Self {
        Self {
            chain,
            metrics,
            clients,
            edns_udp_size: edns_udp_size.max(512),
            recent: None,
        }
    }

    /// Keeps blocked queries in `recent` from now on.
    pub fn with_recent_blocked(mut self, recent: Option<Arc<RecentBlocked>>) -> Self {
        self.recent = recent;
        self
    }
}

impl<R> Handler<R> {
    /// The resolver chain.
    pub(crate) fn chain(&self) -> &R {
        &self.chain
    }

    /// The metrics every answer is counted in.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Counts an answered query for its device, and keeps it if blocked;
    /// `wire` is the name as the client sent it, when the caller has it.
    pub(crate) fn observe_client(
        &self,
        query: &Query<'_>,
        wire: Option<&[u8]>,
        device: &Device,
        outcome: &Outcome,
    ) {
        self.metrics.observe_client(device, outcome);
        if let (Some(recent), Outcome::Blocked { list, cname }) = (&self.recent, outcome) {
            recent.record(
                wire.map_or(QueryName::Parsed(query.name), QueryName::Wire),
                query.qtype,
                query.client,
                &device.name,
                list,
                cname.as_deref(),
            );
        }
    }

    /// The device names of client addresses.
    pub(crate) fn clients(&self) -> &Clients {
        &self.clients
    }

    /// The largest UDP payload telesink advertises and sends.
    pub(crate) fn edns_udp_size(&self) -> u16 {
        self.edns_udp_size
    }

    /// The OPT of a reply to a query whose OPT said `DO`: telesink's own
    /// payload size, which is what a responder's OPT tells (RFC 6891
    /// §6.2.3), and DO copied (RFC 3225 §3).
    fn reply_edns(&self, dnssec_ok: bool) -> Edns {
        let mut edns = Edns::new();
        edns.set_max_payload(self.edns_udp_size);
        edns.set_dnssec_ok(dnssec_ok);
        edns
    }

    /// The most a UDP reply to a query whose OPT said `payload` may take:
    /// no more than the client can take, and no more than telesink
    /// advertises (answers that do not fit are truncated, TC, so the
    /// client retries over TCP); 512 bytes without OPT.
    pub(crate) fn udp_limit(&self, payload: Option<u16>) -> u16 {
        payload.map_or(512, |p| p.clamp(512, self.edns_udp_size))
    }
}

fn failed(request: &Request, rcode: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = rcode;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

impl<R: Resolve> Handler<R> {
    /// Answers one parsed request through `reply`, as a hickory
    /// `RequestHandler` would, with one more way out: a fresh upstream
    /// answer goes out as the bytes the cache just encoded, not encoded
    /// again record by record.
    async fn handle_request(&self, request: &Request, reply: impl Deliver) -> ResponseInfo {
        let started = Instant::now();
        let mut edns_out = request
            .edns
            .as_ref()
            .map(|edns| self.reply_edns(edns.flags().dnssec_ok));
        let info = match reject(request) {
            Err(rcode) => {
                let reencoded = reencoded_question(request);
                let question = reencoded.as_ref().unwrap_or(&request.queries);
                let mut builder = MessageResponseBuilder::new(question, None);
                if let Some(edns) = &mut edns_out {
                    if rcode == ResponseCode::BADVERS {
                        edns.set_rcode_high(rcode.high());
                    }
                    builder.edns(edns);
                }
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.response_code = rcode;
                metadata.recursion_available = true;
                self.metrics
                    .responses
                    .with_label_values(&[crate::metrics::rcode_label(rcode)])
                    .inc();
                let sent = send(builder.build_no_records(metadata), &reply, None).await;
                return sent.unwrap_or_else(|error| {
                    tracing::debug!(%error, "could not send an error response");
                    failed(request, rcode)
                });
            }
            Ok(info) => info,
        };

        let query = Query {
            name: info.query.name(),
            qtype: info.query.query_type(),
            qclass: info.query.query_class(),
            client: request.src().ip(),
            checking_disabled: request.metadata.checking_disabled,
        };
        let mut answer = self.chain.resolve(&query).await;
        if answer.outcome == Outcome::Dropped && reply.protocol() != Protocol::Udp {
            // Dropping defends against replies sent to a forged source;
            // over TCP there is none, and silence would only keep the
            // client waiting on its connection: REFUSED, as with
            // `action = "refuse"`.
            answer.outcome = Outcome::RateLimited;
        }
        if answer.outcome == Outcome::Dropped {
            // Rate limited with `action = "drop"`: no reply at all, so it
            // counts as a query but not as a response.
            self.metrics
                .queries
                .with_label_values(&[
                    crate::metrics::qtype_label(query.qtype),
                    answer.outcome.label(),
                ])
                .inc();
            // The flooding device is the one the owner wants to find.
            let client = self.clients.label(query.client);
            self.metrics.observe_client(&client, &answer.outcome);
            return failed(request, ResponseCode::Refused);
        }

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.response_code = answer.rcode;
        metadata.recursion_available = true;
        // RFC 6840 §5.8: AD only for a client that set AD or DO, the ones
        // that can tell what it means.
        metadata.authentic_data = answer.authentic_data
            && (request.metadata.authentic_data
                || request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok));
        metadata.authoritative = answer.authoritative;
        let reencoded = reencoded_question(request);
        let question = reencoded.as_ref().unwrap_or(&request.queries);
        // Counted before the reply leaves, as the UDP fast path does, so a
        // client that has its answer finds it in the metrics.
        self.metrics.observe_query(
            query.qtype,
            &answer.outcome,
            answer.rcode,
            started.elapsed(),
        );
        let client = match answer.outcome {
            Outcome::Refused => self.clients.outsider_label(query.client),
            _ => self.clients.label(query.client),
        };
        self.observe_client(&query, None, &client, &answer.outcome);
        let max_size = match reply.protocol() {
            Protocol::Udp => self.udp_limit(request.edns.as_ref().map(Edns::max_payload)),
            _ => u16::MAX,
        };
        let from_cache = answer
            .wire
            .as_ref()
            .filter(|wire| encodes(&wire.sections, &answer))
            .and_then(|wire| {
                debug_assert!(
                    wire.sections.holds(query.name, wire.age, &answer),
                    "the cache's bytes for {} hold other records than the answer",
                    query.name
                );
                let edns = edns_out.as_ref();
                wire_reply(question, metadata, &wire.sections, wire.age, edns, max_size)
            });
        let sent = match from_cache {
            Some((header, bytes)) => reply
                .deliver(bytes)
                .await
                .map(|()| ResponseInfo::from(header)),
            None => {
                let mut builder = MessageResponseBuilder::new(question, None);
                if let Some(edns) = &edns_out {
                    builder.edns(edns);
                }
                let response = builder.build(
                    metadata,
                    answer.answers.iter(),
                    answer.authorities.iter(),
                    [],
                    answer.additionals.iter(),
                );
                send(response, &reply, Some(max_size)).await
            }
        };
        match sent {
            Ok(info) => info,
            Err(error) => {
                tracing::debug!(%error, client = %request.src(), "could not send a response");
                failed(request, ResponseCode::ServFail)
            }
        }
    }
}

/// The reply to a request the cache answered with `wire`, stored `age`
/// seconds ago: the header, the question as the client sent it, the
/// encoded sections and the OPT record `edns` describes, as the UDP fast
/// path sends a cache hit. For sections hickory encoded, these are the
/// bytes its encoder writes for the same records (tests compare the two);
/// sections kept as the upstream sent them decode to the same records
/// (`src/resolver/wire.rs` says why). `None` if they would not fit in
/// `max_size` (hickory's encoder then truncates) or were encoded after a
/// question of another length.
///
/// One band differs for sections hickory encoded: its encoder checks the
/// size limit while it writes a name in full, before replacing it with a
/// pointer, so an answer that fits only once compressed, within a name's
/// length of the limit, comes out of it truncated (TC). From the cache's
/// bytes (here and on the fast path) it goes out whole. Both are valid
/// replies.
fn wire_reply(
    question: &Queries,
    metadata: Metadata,
    wire: &crate::resolver::WireAnswer,
    age: u32,
    edns: Option<&Edns>,
    max_size: u16,
) -> Option<(Header, Vec<u8>)> {
    let question = question.as_bytes();
    if question.len() != wire.question_len {
        return None;
    }
    let opt_len = if edns.is_some() { 11 } else { 0 };
    let len = DNS_HEADER_LEN + question.len() + wire.len() + opt_len;
    if len > usize::from(max_size) {
        return None;
    }
    let header = Header {
        metadata,
        counts: HeaderCounts {
            queries: 1,
            answers: wire.counts[0],
            authorities: wire.counts[1],
            additionals: wire.counts[2].checked_add(u16::from(edns.is_some()))?,
        },
    };
    let mut bytes = Vec::with_capacity(len);
    header.emit(&mut BinEncoder::new(&mut bytes)).ok()?;
    bytes.extend_from_slice(question);
    wire.write(&mut bytes, age);
    if let Some(edns) = edns {
        bytes.extend_from_slice(&opt_record(edns.max_payload(), edns.flags().dnssec_ok));
    }
    Some((header, bytes))
}

/// The OPT record the handler's `Edns` (a payload size and the DO bit,
/// nothing else) encodes to: root owner, type OPT, `payload` as its class,
/// no extended RCODE, version 0, DO as given, no options.
pub(crate) fn opt_record(payload: u16, dnssec_ok: bool) -> [u8; 11] {
    let [high, low] = payload.to_be_bytes();
    [0, 0, 41, high, low, 0, 0, u8::from(dnssec_ok) << 7, 0, 0, 0]
}

/// Whether `wire` can stand for `answer`: a cheap check of what a link
/// that changed the answer after the cache set it would most likely have
/// changed (the cache is the only link that sets it, and the links above
/// it build a new answer rather than change one). Debug builds check the
/// records themselves too (`WireAnswer::holds`), so a link that edits an
/// answer in place fails the tests.
fn encodes(wire: &crate::resolver::WireAnswer, answer: &crate::resolver::Answer) -> bool {
    let count = |records: &[hickory_proto::rr::Record]| u16::try_from(records.len()).ok();
    wire.rcode == answer.rcode
        && wire.authentic_data == answer.authentic_data
        && !answer.authoritative
        && [
            count(&answer.answers),
            count(&answer.authorities),
            count(&answer.additionals),
        ] == wire.counts.map(Some)
}

/// The response code for a request the chain must not see, or its one
/// question. Checked in RFC order: the opcode first (NOTIMP), then the EDNS
/// version (BADVERS, RFC 6891 §6.1.3), then the question count (FORMERR),
/// then what is asked. (A request with more than one question never gets
/// here: `respond` answers it from the header, NOTIMP or FORMERR.)
fn reject(request: &Request) -> Result<hickory_server::server::RequestInfo<'_>, ResponseCode> {
    if request.metadata.op_code != OpCode::Query {
        return Err(ResponseCode::NotImp);
    }
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        return Err(ResponseCode::BADVERS);
    }
    let info = request.request_info().map_err(|_| ResponseCode::FormErr)?;
    match info.query.query_type() {
        // OPT is a pseudo-record (RFC 6891 §6.1.1): never a question.
        RecordType::OPT => return Err(ResponseCode::FormErr),
        // Zone transfers, TSIG and the obsolete mailbox meta-queries
        // (MAILB 253, MAILA 254): a forwarding resolver does not implement
        // them (RFC 1035 §4.1.1, NOTIMP).
        RecordType::AXFR | RecordType::IXFR | RecordType::TSIG => {
            return Err(ResponseCode::NotImp);
        }
        RecordType::Unknown(253 | 254) => return Err(ResponseCode::NotImp),
        _ => {}
    }
    // Only the Internet class is forwarded: CHAOS (`version.bind`), Hesiod,
    // NONE, ANY and unassigned classes are NOTIMP rather than passed to an
    // upstream that would answer them about itself.
    if info.query.query_class() != DNSClass::IN {
        return Err(ResponseCode::NotImp);
    }
    Ok(info)
}

/// The question section of the reply, encoded afresh from the parsed
/// question(s), when the client's question uses compression pointers;
/// `None` (echo it as sent) for the usual uncompressed question, so the
/// common case costs no encoding and no allocation.
///
/// hickory echoes the question bytes exactly as the client sent them,
/// compression pointers included. A pointer into the header (an offset
/// below 12, which hickory's parser accepts) then points at a byte of the
/// reply's header instead, and the reply no longer parses; the fuzzer
/// found this (`tests/corpus/regressions/`). Encoding after a 12-byte
/// stand-in header keeps the offsets of any pointers between questions
/// right, and keeps the client's letter case (0x20 randomisation).
fn reencoded_question(request: &Request) -> Option<Queries> {
    if !question_has_pointers(request.as_slice(), request.queries.len()) {
        return None;
    }
    let questions = request.queries.queries();
    let mut bytes = vec![0; DNS_HEADER_LEN];
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_offset(DNS_HEADER_LEN);
    let encoded = questions
        .iter()
        .try_for_each(|q| q.original().emit(&mut encoder));
    let mut decoder = BinDecoder::new(&bytes);
    let parsed = encoded.ok().and_then(|()| {
        decoder.read_slice(DNS_HEADER_LEN).ok()?;
        Queries::read(&mut decoder, questions.len()).ok()
    });
    // Whatever was parsed can be encoded and read back; if that ever
    // failed, no question is still a valid reply.
    Some(parsed.unwrap_or_else(|| {
        Queries::read(&mut BinDecoder::new(&[]), 0).expect("an empty question section")
    }))
}

/// Whether the `count` questions after the header of `raw` contain a
/// compression pointer (or cannot be walked, which is treated the same).
fn question_has_pointers(raw: &[u8], count: usize) -> bool {
    let mut at = DNS_HEADER_LEN;
    for _ in 0..count {
        loop {
            let Some(&len) = raw.get(at) else {
                return true;
            };
            if len == 0 {
                at += 1;
                break;
            }
            if len & 0xC0 != 0 {
                return true;
            }
            at += 1 + usize::from(len);
        }
        // QTYPE and QCLASS.
        at += 4;
    }
    false
}

/// Where a transport puts an encoded reply: the one thing the UDP, TCP and
/// socket-less paths do differently once the handler has answered. The
/// encoding is shared: hickory's ([`send`]), or the cache's bytes for a
/// fresh upstream answer ([`wire_reply`]).
pub(crate) trait Deliver: Clone + Send + Sync + Unpin + 'static {
    /// The transport, which sets the size the reply is encoded to.
    fn protocol(&self) -> Protocol;
    /// Sends (or keeps) the encoded reply.
    fn deliver(&self, bytes: Vec<u8>) -> impl Future<Output = Result<(), NetError>> + Send;
}

/// Keeps the encoded reply instead of sending it, so [`answer_bytes`] can
/// run the production handler without sockets.
#[derive(Clone)]
pub struct CapturedReply {
    protocol: Protocol,
    reply: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

impl CapturedReply {
    /// A capture that encodes as hickory does for `protocol` (UDP replies
    /// are limited to the EDNS payload size, or 512 bytes without EDNS).
    pub fn new(protocol: Protocol) -> Self {
        Self {
            protocol,
            reply: Arc::default(),
        }
    }

    /// The reply sent so far, if any.
    pub fn take(&self) -> Option<Vec<u8>> {
        self.reply
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

impl Deliver for CapturedReply {
    fn protocol(&self) -> Protocol {
        self.protocol
    }

    async fn deliver(&self, bytes: Vec<u8>) -> Result<(), NetError> {
        *self
            .reply
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(bytes);
        Ok(())
    }
}

/// The most a reply over `protocol` may take when the client's limit is
/// not at hand: no more than the payload size telesink advertises in
/// `edns` (for error replies, which are a header, a question and OPT
/// and fit in any), or 512 bytes over UDP without OPT.
fn max_size(protocol: Protocol, edns: Option<&Edns>) -> u16 {
    match protocol {
        Protocol::Udp => edns.map_or(512, Edns::max_payload),
        _ => u16::MAX,
    }
}

/// What hickory's `ResponseHandle` does with a response
/// (`MessageResponse::encode`, which is crate-private in hickory-server
/// 0.26), then hands the bytes to `reply`: the size limit (`limit`, the
/// client's, or else the one for the protocol and the response's OPT),
/// and a bare SERVFAIL when the response cannot be encoded.
async fn send<'a>(
    response: MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
        impl Iterator<Item = &'a hickory_proto::rr::Record> + Send + 'a,
    >,
    reply: &impl Deliver,
    limit: Option<u16>,
) -> Result<ResponseInfo, NetError> {
    let max_size = limit.unwrap_or_else(|| max_size(reply.protocol(), response.edns()));
    let id = response.metadata().id;
    let edns = response
        .edns()
        .map(|e| (e.max_payload(), e.flags().dnssec_ok));
    let mut bytes = Vec::with_capacity(512);
    let mut encoder = BinEncoder::new(&mut bytes);
    encoder.set_max_size(max_size);
    let info = match response.destructive_emit(&mut encoder) {
        Ok(info) => {
            // When records do not fit, hickory rolls its offset back past
            // them and sets TC, but leaves their bytes in the buffer: the
            // message ends at the offset.
            let end = encoder.offset();
            bytes.truncate(end);
            // hickory then adds OPT only if it still fits, and often it
            // does not.
            match edns.filter(|_| info.truncation) {
                Some(edns) => truncated_with_opt(&mut bytes, &info, edns).unwrap_or(info),
                None => info,
            }
        }
        Err(_) => {
            bytes.clear();
            let mut metadata = Metadata::new(id, MessageType::Response, OpCode::Query);
            metadata.response_code = ResponseCode::ServFail;
            let header = Header {
                metadata,
                counts: HeaderCounts::default(),
            };
            header.emit(&mut BinEncoder::new(&mut bytes))?;
            ResponseInfo::from(header)
        }
    };
    reply.deliver(bytes).await?;
    Ok(info)
}

/// Cuts a truncated reply to an EDNS query down to its header, question
/// and OPT, which RFC 6891 §7 requires even in a truncated reply; the
/// client retries over TCP for the records anyway. `info` is what the
/// encoder reported of `reply`. `None` (and `reply` untouched) if it does
/// not hold one plain question.
fn truncated_with_opt(
    reply: &mut Vec<u8>,
    info: &ResponseInfo,
    (payload, dnssec_ok): (u16, bool),
) -> Option<ResponseInfo> {
    if info.counts().queries != 1 {
        return None;
    }
    let question_end = crate::resolver::plain_name_end(reply, DNS_HEADER_LEN)? + 4;
    if reply.len() < question_end {
        return None;
    }
    reply.truncate(question_end);
    // No answer, authority or additional records; one OPT.
    reply[6..DNS_HEADER_LEN].copy_from_slice(&[0, 0, 0, 0, 0, 1]);
    let mut opt = opt_record(payload, dnssec_ok);
    // The extended RCODE's high bits.
    opt[5] = info.response_code.high();
    reply.extend_from_slice(&opt);
    let counts = HeaderCounts {
        queries: 1,
        answers: 0,
        authorities: 0,
        additionals: 1,
    };
    Some(ResponseInfo::from(Header {
        metadata: **info,
        counts,
    }))
}

/// Runs one request packet through the whole server path without sockets
/// and returns the encoded reply, or `None` when the server would send
/// nothing: `respond` with a [`CapturedReply`].
pub async fn answer_bytes<R: Resolve>(
    handler: &Handler<R>,
    bytes: &[u8],
    src: SocketAddr,
    protocol: Protocol,
) -> Option<Vec<u8>> {
    let capture = CapturedReply::new(protocol);
    respond(handler, bytes.to_vec(), src, capture.clone()).await;
    capture.take()
}

/// Answers one request message through `response`, the one entry of the
/// UDP, TCP and socket-less paths.
///
/// The steps before the handler are those of hickory's `Server` (its
/// `handle_request` is private), with two differences: a message shorter
/// than a header is dropped; a response (QR=1) is dropped before parsing,
/// malformed or not, so a forged source cannot bounce replies between two
/// servers (hickory answers a malformed one FORMERR); and a message that
/// does not parse, or whose section counts it cannot hold
/// ([`counts_fit`]), gets FORMERR with no question. Everything after that
/// is `handler` itself, the same [`Handler`] the server runs.
pub(crate) async fn respond<R: Resolve>(
    handler: &Handler<R>,
    bytes: Vec<u8>,
    src: SocketAddr,
    reply: impl Deliver,
) {
    let protocol = reply.protocol();
    let Ok(header) = Header::read(&mut BinDecoder::new(&bytes)) else {
        return;
    };
    if header.metadata.message_type == MessageType::Response {
        return;
    }
    // More than one question is answered without reading them, with the
    // code `reject` would give (NOTIMP for another opcode, else FORMERR,
    // RFC 9619): a 64 KiB query can hold 13,000, which hickory would parse
    // and echo back. So is a message that cannot hold what it counts.
    let unread = if header.counts.queries > 1 {
        Some(match header.metadata.op_code {
            OpCode::Query => ResponseCode::FormErr,
            _ => ResponseCode::NotImp,
        })
    } else {
        None
    };
    // RFC 6891 §7: the reply to a query with an OPT carries one, so the
    // OPT of a query with many questions is found by skipping them.
    let unread_opt = unread.and_then(|_| find_opt(&bytes, &header));
    let request = (unread.is_none() && counts_fit(&header, bytes.len()))
        .then(|| Request::from_bytes(bytes, src, protocol).ok())
        .flatten();
    match request {
        Some(request) => {
            handler.handle_request(&request, reply).await;
        }
        None => {
            // Header only: no question, and an OPT only for a query with
            // many questions (a message that does not parse gets none).
            let rcode = unread.unwrap_or(ResponseCode::FormErr);
            let Ok(no_questions) = Queries::read(&mut BinDecoder::new(&[]), 0) else {
                return;
            };
            let edns = unread_opt.map(|(_, dnssec_ok)| handler.reply_edns(dnssec_ok));
            let error = MessageResponseBuilder::new(&no_questions, edns.as_ref())
                .error_msg(&header.metadata, rcode);
            if let Err(error) = send(error, &reply, None).await {
                tracing::debug!(%error, client = %src, %rcode, "could not send an error reply");
            }
        }
    }
}

/// The payload size and DO bit of the OPT record in `bytes`, found by
/// skipping the questions and records `header` counts before it, without
/// parsing them (linear in the message's length); `None` if there is none
/// or the message is cut short.
fn find_opt(bytes: &[u8], header: &Header) -> Option<(u16, bool)> {
    let u16_at = |at| crate::udp::u16_at(bytes, at);
    // The end of the name at `at`: a root label, or a pointer.
    let skip_name = |mut at: usize| loop {
        let len = *bytes.get(at)?;
        match len & 0xC0 {
            0xC0 => return Some(at + 2),
            0 if len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(len),
            _ => return None,
        }
    };
    let counts = &header.counts;
    let mut at = DNS_HEADER_LEN;
    for _ in 0..counts.queries {
        at = skip_name(at)? + 4;
    }
    let records = u32::from(counts.answers) + u32::from(counts.authorities);
    for i in 0..records + u32::from(counts.additionals) {
        let name_end = skip_name(at)?;
        let rdlen = usize::from(u16_at(name_end + 8)?);
        if i >= records && name_end == at + 1 && u16_at(name_end)? == u16::from(RecordType::OPT) {
            let dnssec_ok = bytes.get(name_end + 6)? & 0x80 != 0;
            return Some((u16_at(name_end + 2)?, dnssec_ok));
        }
        at = name_end + 10 + rdlen;
    }
    None
}

/// Whether a message of `len` bytes can hold the records its `header`
/// counts (a question takes at least 5 bytes, a record 11). A message that
/// cannot fails to parse anyway; checking first keeps hickory from
/// reserving room for them (65,535 questions claimed in a 12-byte packet
/// made it reserve about 11 MB).
pub(crate) fn counts_fit(header: &Header, len: usize) -> bool {
    let counts = &header.counts;
    let least = 5 * usize::from(counts.queries)
        + 11 * (usize::from(counts.answers)
            + usize::from(counts.authorities)
            + usize::from(counts.additionals));
    len.saturating_sub(DNS_HEADER_LEN) >= least
}

/// Sockets bound before the core starts, so callers (and tests) choose the
/// addresses, port 0 included.
#[derive(Debug, Default)]
pub struct Listeners {
    /// DNS over UDP.
    pub udp: Vec<tokio::net::UdpSocket>,
    /// DNS over TCP.
    pub tcp: Vec<tokio::net::TcpListener>,
    /// `/metrics` and `/healthz`, if enabled.
    pub http: Option<tokio::net::TcpListener>,
}

impl Listeners {
    /// Binds UDP and TCP on every address of `[server] listen` and the HTTP
    /// listener. An IPv6 address on a host without IPv6 is skipped with a
    /// warning, as long as some other address could be bound.
    pub fn bind(dns: &[SocketAddr], http: Option<SocketAddr>) -> std::io::Result<Self> {
        let mut out = Self::default();
        for &addr in dns {
            match bind_udp(addr).and_then(|u| Ok((u, bind_tcp(addr)?))) {
                Ok((udp, tcp)) => {
                    out.udp.push(udp);
                    out.tcp.push(tcp);
                }
                Err(error)
                    if addr.is_ipv6()
                        && matches!(
                            error.kind(),
                            std::io::ErrorKind::AddrNotAvailable | std::io::ErrorKind::Unsupported
                        )
                        || error.raw_os_error() == Some(97) =>
                {
                    tracing::warn!(%addr, %error, "IPv6 is not available here; not listening on this address");
                }
                Err(error) => {
                    return Err(std::io::Error::new(
                        error.kind(),
                        format!(
                            "cannot listen on {addr}: {error}{}",
                            bind_hint(addr, &error)
                        ),
                    ));
                }
            }
        }
        if out.udp.is_empty() {
            return Err(std::io::Error::other("no DNS listener could be bound"));
        }
        if let Some(addr) = http {
            let l = std::net::TcpListener::bind(addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen for HTTP on {addr}: {e}"))
            })?;
            l.set_nonblocking(true)?;
            out.http = Some(tokio::net::TcpListener::from_std(l)?);
        }
        Ok(out)
    }
}

fn new_socket(addr: SocketAddr, ty: Type, proto: SocketProtocol) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        // One socket per family: "[::]:53" must not also claim IPv4 port 53.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// What to do about the usual reasons a DNS port cannot be bound.
fn bind_hint(addr: SocketAddr, error: &std::io::Error) -> &'static str {
    match error.kind() {
        std::io::ErrorKind::PermissionDenied if addr.port() < 1024 => {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE: run it from the shipped systemd unit, or set [server] user and start it as root)"
        }
        std::io::ErrorKind::AddrInUse => {
            " (another DNS server is using it: stop systemd-resolved's stub listener, dnsmasq or Pi-hole, or choose another address in [server] listen)"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            " (no interface has this address: check [server] listen against `ip addr`)"
        }
        _ => "",
    }
}

/// The UDP socket for `addr`. One socket, read by `[server] udp_threads`
/// threads ([`crate::udp`]); no SO_REUSEPORT, so a second server started
/// on the same port fails to bind instead of silently sharing it.
fn bind_udp(addr: SocketAddr) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = new_socket(addr, Type::DGRAM, SocketProtocol::UDP)?;
    socket.bind(&addr.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}

fn bind_tcp(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = new_socket(addr, Type::STREAM, SocketProtocol::TCP)?;
    // Restart without waiting for TIME_WAIT connections to expire.
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    tokio::net::TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(bytes: &[u8]) -> Header {
        Header::read(&mut BinDecoder::new(bytes)).unwrap()
    }

    /// An answer too big for a UDP reply is truncated (TC) to the records
    /// that fit, and the reply ends after the last of them.
    #[tokio::test]
    async fn a_truncated_reply_ends_after_its_last_record() {
        use hickory_proto::op::Query as Question;
        use hickory_proto::rr::{Name, RData, Record, rdata::A};

        let name = Name::from_ascii("many.example.").unwrap();
        let question = Question::query(name, RecordType::A).to_bytes().unwrap();
        let queries = Queries::read(&mut BinDecoder::new(&question), 1).unwrap();
        // Owners that do not compress, so each record is about 40 bytes.
        let records: Vec<Record> = (0..40u8)
            .map(|i| {
                let owner =
                    Name::from_ascii(format!("host-{i:02}-abcdefghijklmnop.example{i}.")).unwrap();
                Record::from_rdata(owner, 60, RData::A(A::new(192, 0, 2, i)))
            })
            .collect();
        let mut metadata = Metadata::new(7, MessageType::Response, OpCode::Query);
        metadata.recursion_available = true;
        let response =
            MessageResponseBuilder::new(&queries, None).build(metadata, records.iter(), [], [], []);
        let capture = CapturedReply::new(Protocol::Udp);
        send(response, &capture, None).await.unwrap();
        let bytes = capture.take().unwrap();
        assert!(bytes.len() <= 512, "{}", bytes.len());
        let head = header(&bytes);
        assert!(head.metadata.truncation);
        assert!(head.counts.answers > 0 && head.counts.answers < 40);
        let mut decoder = BinDecoder::new(&bytes);
        Header::read(&mut decoder).unwrap();
        Queries::read(&mut decoder, 1).unwrap();
        for _ in 0..head.counts.answers {
            Record::read(&mut decoder).unwrap();
        }
        assert!(
            decoder.is_empty(),
            "{} bytes after the last record",
            decoder.len()
        );
    }

    /// The cache's own encoding, sent by [`wire_reply`], is byte for byte
    /// what hickory's encoder writes for the same records, their TTLs
    /// counted down by the entry's age.
    #[tokio::test]
    async fn wire_replies_are_what_hickory_encodes() {
        use crate::resolver::{Answer, Outcome, WireAnswer};
        use hickory_proto::op::Query as Question;
        use hickory_proto::rr::rdata::{A, CNAME, MX, SOA};
        use hickory_proto::rr::{LowerName, Name, RData, Record};

        let name = |s: &str| Name::from_ascii(s).unwrap();
        let rec = |owner: &str, ttl: u32, data: RData| Record::from_rdata(name(owner), ttl, data);
        let a = |owner: &str, ttl: u32| rec(owner, ttl, RData::A(A::new(192, 0, 2, 1)));
        let deep = format!("{}example.", "x.".repeat(61));
        let soa = SOA::new(name("ns.example."), name("h.example."), 1, 2, 3, 4, 60);
        let cases = [
            ("www.example.", vec![a("www.example.", 300)], vec![]),
            (
                "Www.Example.",
                vec![
                    rec(
                        "www.example.",
                        300,
                        RData::CNAME(CNAME(name("cdn.example."))),
                    ),
                    rec(
                        "cdn.example.",
                        120,
                        RData::CNAME(CNAME(name("edge.cdn.example."))),
                    ),
                    a("edge.cdn.example.", 60),
                ],
                vec![],
            ),
            (
                "mx.example.",
                vec![rec(
                    "mx.example.",
                    300,
                    RData::MX(MX::new(10, name("mail.mx.example."))),
                )],
                vec![],
            ),
            (
                deep.as_str(),
                vec![a(&deep, 300), a(&format!("y.{deep}"), 300)],
                vec![],
            ),
            (
                "nx.example.",
                vec![],
                vec![rec("example.", 900, RData::SOA(soa))],
            ),
        ];
        for (qname, answers, authorities) in cases {
            let question = Question::query(name(qname), RecordType::A)
                .to_bytes()
                .unwrap();
            let queries = Queries::read(&mut BinDecoder::new(&question), 1).unwrap();
            let answer = Answer {
                outcome: Outcome::Forwarded,
                rcode: ResponseCode::NoError,
                authentic_data: false,
                authoritative: false,
                answers,
                authorities,
                additionals: vec![],
                wire: None,
                upstream_reply: None,
            };
            let key = LowerName::new(&name(qname));
            let wire = WireAnswer::encode(&key, &answer).expect("encodes");
            let mut metadata = Metadata::new(7, MessageType::Response, OpCode::Query);
            metadata.recursion_available = true;
            let mut edns = Edns::new();
            edns.set_max_payload(1232);
            for age in [0, 59, 1000] {
                let (_, sent) =
                    wire_reply(&queries, metadata, &wire, age, Some(&edns), 1232).expect("fits");
                let counted_down = |records: &[Record]| {
                    let mut records = records.to_vec();
                    for r in &mut records {
                        r.ttl = r.ttl.saturating_sub(age);
                    }
                    records
                };
                let (answers, authorities) = (
                    counted_down(&answer.answers),
                    counted_down(&answer.authorities),
                );
                let mut builder = MessageResponseBuilder::new(&queries, None);
                builder.edns(&edns);
                let response = builder.build(metadata, answers.iter(), authorities.iter(), [], []);
                let capture = CapturedReply::new(Protocol::Udp);
                send(response, &capture, None).await.unwrap();
                assert_eq!(Some(sent), capture.take(), "{qname} at age {age}");
            }
        }
    }

    #[test]
    fn counts_a_packet_cannot_hold_are_caught_before_parsing() {
        // ID, flags, QDCOUNT 65535, no records: a 12-byte packet.
        let claim = [0, 1, 1, 0, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0];
        assert!(!counts_fit(&header(&claim), claim.len()));
        // One question of the shortest form (the root, type, class) fits.
        let mut query = claim.to_vec();
        query[4..6].copy_from_slice(&1u16.to_be_bytes());
        query.extend_from_slice(&[0, 0, 1, 0, 1]);
        assert!(counts_fit(&header(&query), query.len()));
        // One byte short of it does not; nor does a record more.
        assert!(!counts_fit(&header(&query), query.len() - 1));
        query[11] = 1;
        assert!(!counts_fit(&header(&query), query.len()));
    }
}
