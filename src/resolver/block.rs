//! Blocking: sinkhole names on the block lists, and answers whose CNAME
//! chain (or HTTPS/SVCB target) leads to one.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, HTTPS};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use super::{Answer, Outcome, Peek, Query, REBIND_LIST, Rebind, Resolve};
use crate::config::{BlockMode, BlockingConfig};
use crate::controls::Controls;
use crate::lists::{ListStore, Snapshot};

/// How blocked names are answered, from `[blocking]`. It is part of the
/// list snapshot, so a reload changes lists and policy together.
#[derive(Debug, Clone)]
pub struct BlockPolicy {
    /// Whether blocking is on at all.
    pub enabled: bool,
    /// Whether CNAME targets in answers are checked too.
    pub cname_check: bool,
    /// The kind of answer.
    pub mode: BlockMode,
    /// TTL of blocked answers, in seconds.
    pub ttl: u32,
    /// A record data in `null` mode.
    pub ipv4: Ipv4Addr,
    /// AAAA record data in `null` mode.
    pub ipv6: Ipv6Addr,
}

impl BlockPolicy {
    /// The policy `[blocking]` describes.
    pub fn from_config(c: &BlockingConfig) -> Self {
        Self {
            enabled: c.enabled,
            cname_check: c.cname_check,
            mode: c.mode,
            ttl: u32::try_from(c.ttl.as_secs()).unwrap_or(u32::MAX),
            ipv4: c.sinkhole_ipv4,
            ipv6: c.sinkhole_ipv6,
        }
    }
}

impl Default for BlockPolicy {
    fn default() -> Self {
        Self::from_config(&BlockingConfig::default())
    }
}

/// The sinkhole answer for `query` under `policy`, blocked by `list` (and
/// by the CNAME target `cname`, when that is what matched). The UDP fast
/// path builds its blocked answers here too, so both paths answer alike.
pub fn blocked_answer(
    policy: &BlockPolicy,
    query: &Query<'_>,
    list: Arc<str>,
    cname: Option<Box<str>>,
) -> Answer {
    let outcome = Outcome::Blocked { list, cname };
    let name = Name::from(query.name.clone());
    let ttl = policy.ttl;
    let data = match (policy.mode, query.qtype) {
        (BlockMode::Refused, _) => return Answer::empty(outcome, ResponseCode::Refused),
        (BlockMode::Null, RecordType::A) => Some(RData::A(A(policy.ipv4))),
        (BlockMode::Null, RecordType::AAAA) => Some(RData::AAAA(AAAA(policy.ipv6))),
        _ => None,
    };
    if let Some(data) = data {
        let mut answer = Answer::empty(outcome, ResponseCode::NoError);
        answer.answers.push(Record::from_rdata(name, ttl, data));
        return answer;
    }
    // NXDOMAIN, or NODATA for the types `null` has no address for; an
    // SOA lets clients cache the denial for `ttl` (RFC 2308).
    let rcode = if policy.mode == BlockMode::Nxdomain {
        ResponseCode::NXDomain
    } else {
        ResponseCode::NoError
    };
    let mut answer = Answer::empty(outcome, rcode);
    answer.authorities.push(super::synthetic_soa(name, ttl));
    answer
}

/// Answers blocked names itself and passes the rest on.
pub struct Block<N> {
    lists: Arc<ListStore>,
    /// Blocking paused from the admin API.
    controls: Arc<Controls>,
    /// `[security] rebind_protection`, checked on answers coming back.
    rebind: Rebind,
    /// The `list` of answers blocked as rebinding, shared by all of them.
    rebind_list: Arc<str>,
    next: N,
}

impl<N> std::fmt::Debug for Block<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block").finish_non_exhaustive()
    }
}

impl<N: Resolve> Block<N> {
    /// Blocks by `lists` as their snapshot's policy says, then asks `next`.
    pub fn new(lists: Arc<ListStore>, controls: Arc<Controls>, next: N) -> Self {
        Self {
            lists,
            controls,
            rebind: Rebind::default(),
            rebind_list: Arc::from(REBIND_LIST),
            next,
        }
    }

    /// Also blocks answers that `rebind` finds to be DNS rebinding.
    pub fn with_rebind(mut self, rebind: Rebind) -> Self {
        self.rebind = rebind;
        self
    }

    /// Whether blocking applies now under `snapshot`: on in the config and
    /// not paused from the admin API.
    fn active(&self, snapshot: &Snapshot) -> bool {
        snapshot.policy.enabled && !self.controls.paused()
    }

    /// Whether answers coming back are checked for listed CNAME targets.
    fn checks_cnames(&self, snapshot: &Snapshot) -> bool {
        self.active(snapshot) && snapshot.policy.cname_check
    }

    /// The list that blocks a name `answer` sends a question for `name` on
    /// to ([`onward_names`]), and that name. An allowed `name` is answered
    /// whatever its CNAME chain leads to.
    fn cname_block(
        snapshot: &Snapshot,
        name: &LowerName,
        answer: &Answer,
    ) -> Option<(usize, Box<str>)> {
        onward_names(answer)
            .find_map(|target| {
                snapshot
                    .blocking_list(&LowerName::new(target))
                    .map(|list| (list, target.to_lowercase().to_ascii().into_boxed_str()))
            })
            .filter(|_| !snapshot.is_allowed(name))
    }
}

/// The names an answer sends its client on to: CNAME targets, and the
/// target names of HTTPS and SVCB records (RFC 9460; the root means the
/// owner itself). A tracker behind a first-party name is reached through
/// either, and clients may connect to an HTTPS record's address hints
/// before they look its target up, so a listed one blocks the answer.
pub(super) fn onward_names(answer: &Answer) -> impl Iterator<Item = &Name> {
    answer.answers.iter().filter_map(|r| match &r.data {
        RData::CNAME(target) => Some(&target.0),
        RData::HTTPS(HTTPS(svcb)) | RData::SVCB(svcb) if !svcb.target_name.is_root() => {
            Some(&svcb.target_name)
        }
        _ => None,
    })
}

impl<N: Resolve> Resolve for Block<N> {
    async fn resolve(&self, query: &Query<'_>) -> Answer {
        // The guard is dropped before awaiting: a reload never waits on a
        // slow upstream to free the old snapshot.
        let hit = {
            let snapshot = self.lists.load();
            self.active(&snapshot)
                .then(|| snapshot.blocking_list(query.name))
                .flatten()
                .map(|i| (snapshot.policy.clone(), snapshot.lists[i].name.clone()))
        };
        if let Some((policy, list)) = hit {
            return blocked_answer(&policy, query, list, None);
        }
        let answer = self.next.resolve(query).await;
        // Rebinding is checked before CNAME cloaking and whether or not
        // blocking is enabled: it is a security check on what the upstream
        // says, not a list. Its answer takes the form `[blocking] mode`
        // gives every blocked answer.
        if self.rebind.is_rebinding(query.name, &answer) {
            let policy = self.lists.load().policy.clone();
            return blocked_answer(&policy, query, self.rebind_list.clone(), None);
        }
        let cloaked = {
            let snapshot = self.lists.load();
            if self.checks_cnames(&snapshot) {
                Self::cname_block(&snapshot, query.name, &answer).map(|(i, target)| {
                    (
                        snapshot.policy.clone(),
                        snapshot.lists[i].name.clone(),
                        target,
                    )
                })
            } else {
                None
            }
        };
        match cloaked {
            Some((policy, list, target)) => blocked_answer(&policy, query, list, Some(target)),
            None => answer,
        }
    }

    fn peek(&self, query: &Query<'_>) -> Peek {
        let snapshot = self.lists.load();
        let blocked = self
            .active(&snapshot)
            .then(|| snapshot.blocking_list(query.name));
        if let Some(i) = blocked.flatten() {
            return Peek::Blocked {
                policy: snapshot.policy.clone(),
                list: snapshot.lists[i].name.clone(),
            };
        }
        match self.next.peek(query) {
            // Rebinding needs the records themselves; it is off by default.
            Peek::Cached(_) if self.rebind.enabled() => Peek::Slow,
            // A cached answer whose CNAME chain leads to a listed name is
            // blocked: the full path builds that answer.
            Peek::Cached(hit)
                if self.checks_cnames(&snapshot)
                    && hit
                        .wire()
                        .onward_names()
                        .iter()
                        .any(|t| snapshot.blocking_list(t).is_some())
                    && !snapshot.is_allowed(query.name) =>
            {
                Peek::Slow
            }
            peeked => peeked,
        }
    }
}
