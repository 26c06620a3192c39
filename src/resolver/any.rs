//! ANY queries: the minimal RFC 8482 answer, never forwarded.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::HINFO;
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::{Answer, Outcome, Peek, Query, Resolve};

/// TTL of the RFC 8482 answer: an hour, as RFC 8482 §4.2 suggests, so
/// clients that ask ANY again do not come back soon.
const RFC8482_TTL: u32 = 3600;

/// Answers ANY queries with the minimal RFC 8482 answer and passes every
/// other query on.
///
/// ANY is the amplification query of choice (a small question, the largest
/// answer the upstream has), and no legitimate client on a home network
/// depends on it. RFC 8482 §4.2 allows a single synthesized HINFO record
/// with CPU "RFC8482" and an empty OS instead of the full answer.
#[derive(Debug)]
pub struct AnyQuery<N> {
    next: N,
}

impl<N: Resolve> AnyQuery<N> {
    /// Answers ANY itself, then asks `next`.
    pub fn new(next: N) -> Self {
        Self { next }
    }
}

/// The RFC 8482 §4.2 answer to an ANY query for `name`.
pub fn rfc8482_answer(name: Name) -> Answer {
    let mut answer = Answer::empty(Outcome::Local, ResponseCode::NoError);
    answer.answers.push(Record::from_rdata(
        name,
        RFC8482_TTL,
        RData::HINFO(HINFO::new("RFC8482".into(), String::new())),
    ));
    answer
}

impl<N: Resolve> Resolve for AnyQuery<N> {
    async fn resolve(&self, query: &Query<'_>) -> Answer {
        if query.qtype == RecordType::ANY {
            return rfc8482_answer(Name::from(query.name.clone()));
        }
        self.next.resolve(query).await
    }

    fn peek(&self, query: &Query<'_>) -> Peek {
        if query.qtype == RecordType::ANY {
            return Peek::Slow;
        }
        self.next.peek(query)
    }
}
