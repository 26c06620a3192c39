//! Local answers: `[local] records` and the special-use names telesink
//! answers itself, authoritatively (AA) and without an upstream.
//!
//! Local records are matched by exact name. An A or AAAA record gets its
//! PTR synthesised; a CNAME is followed, through the local records or, for
//! a target that is not local, through the rest of the chain (so blocking
//! still applies to it).
//!
//! Special-use names (`[local] special_names`): `localhost` and its
//! subdomains are loopback (RFC 6761 §6.3); `invalid` and `onion` do not
//! exist (RFC 6761 §6.4, RFC 7686); `use-application-dns.net` is NXDOMAIN,
//! the canary that keeps Firefox on the network's resolver; `resolver.arpa`
//! designates no encrypted resolver (RFC 9462 DDR: NODATA); and the reverse
//! zones of private, loopback, link-local and documentation ranges plus
//! `home.arpa` (RFC 6303, RFC 8375) are answered NXDOMAIN, so lookups of
//! LAN addresses never leak to a public resolver, unless a `[[forward]]`
//! rule (the router) or a local record covers the name.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, PTR};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use super::{Answer, Outcome, Peek, Query, Resolve};
use crate::config::{LocalConfig, parse_domain};

/// How many CNAMEs are followed before giving up (a loop, or a silly chain).
const MAX_CNAME_HOPS: usize = 8;

/// The records of `[local] records`, by owner name.
#[derive(Debug, Default)]
pub struct LocalRecords {
    names: HashMap<LowerName, Vec<Record>>,
}

impl LocalRecords {
    /// Parses `[local] records`; the error names the offending entry in
    /// double quotes (the config points at its line).
    pub fn parse(config: &LocalConfig) -> Result<Self, String> {
        let ttl = u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX);
        let mut names: HashMap<LowerName, Vec<Record>> = HashMap::new();
        let mut ptrs: Vec<(LowerName, Name)> = Vec::new();
        for (key, values) in &config.records {
            if key.contains('*') {
                return Err(format!(
                    "\"{key}\": wildcards are not supported; give each name"
                ));
            }
            let owner = parse_domain(key).ok_or_else(|| format!("\"{key}\" is not a name"))?;
            let owner_name = Name::from(owner.clone());
            let reverse = owner_name.to_ascii().ends_with(".in-addr.arpa.")
                || owner_name.to_ascii().ends_with(".ip6.arpa.");
            if values.is_empty() {
                return Err(format!("\"{key}\" has no value"));
            }
            let mut records = Vec::with_capacity(values.len());
            for value in values {
                let data = if let Ok(ip) = value.parse::<IpAddr>() {
                    ptrs.push((reverse_name(ip), owner_name.clone()));
                    match ip {
                        IpAddr::V4(v4) => RData::A(A(v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                    }
                } else {
                    // "192.168.1.256" or "192.168.1.1O" is a mistyped
                    // address, not a name to alias: no top-level domain
                    // starts with a digit, and no name holds a ':'. (A
                    // single label, "3dprinter", is a local name.)
                    let (rest, tld) = value
                        .trim_end_matches('.')
                        .rsplit_once('.')
                        .unwrap_or(("", value));
                    let numeric_tld =
                        !rest.is_empty() && tld.starts_with(|c: char| c.is_ascii_digit());
                    let all_digits = value.bytes().all(|b| b.is_ascii_digit() || b == b'.');
                    if value.contains(':') || numeric_tld || all_digits {
                        return Err(format!("\"{key}\": {value:?} is not a valid IP address"));
                    }
                    let target = parse_domain(value)
                        .filter(|_| !value.contains('*'))
                        .ok_or_else(|| {
                            format!("\"{key}\": {value:?} is neither an IP address nor a name")
                        })?;
                    let target = Name::from(target);
                    if reverse {
                        RData::PTR(PTR(target))
                    } else {
                        if values.len() > 1 {
                            return Err(format!(
                                "\"{key}\": a name (CNAME) must be the only value"
                            ));
                        }
                        RData::CNAME(CNAME(target))
                    }
                };
                records.push(Record::from_rdata(owner_name.clone(), ttl, data));
            }
            names.insert(owner, records);
        }
        // Synthesised PTRs come after explicit ones, never duplicating them.
        for (reverse, target) in ptrs {
            let records = names.entry(reverse.clone()).or_default();
            let exists = records.iter().any(|r| match &r.data {
                RData::PTR(p) => p.0 == target,
                _ => false,
            });
            if !exists {
                records.push(Record::from_rdata(
                    Name::from(reverse),
                    ttl,
                    RData::PTR(PTR(target)),
                ));
            }
        }
        Ok(Self { names })
    }

    /// The records owned by `name`, if it is local.
    fn get(&self, name: &LowerName) -> Option<&[Record]> {
        self.names.get(name).map(Vec::as_slice)
    }

    /// Whether a local record is owned by a name below `name`, which then
    /// exists without records of its own (RFC 8020: not NXDOMAIN).
    fn has_below(&self, name: &LowerName) -> bool {
        self.names
            .keys()
            .any(|owner| owner != name && name.zone_of(owner))
    }

    /// Whether no records are configured.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The reverse-lookup name of `ip` (`10.1.168.192.in-addr.arpa.`).
fn reverse_name(ip: IpAddr) -> LowerName {
    let mut name = Name::from(ip);
    name.set_fqdn(true);
    LowerName::from(name)
}

/// What a special-use zone answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Special {
    /// Loopback addresses for A and AAAA, NODATA otherwise.
    Loopback,
    /// NXDOMAIN for every name, the apex included.
    NxDomain,
    /// NODATA for every name (DDR: no designated resolver).
    NoData,
    /// Names a `[[forward]]` rule or a local record may take over (RFC
    /// 6303 zones and `home.arpa`); otherwise an empty zone: NXDOMAIN
    /// below the apex, NODATA at it (its SOA for SOA queries).
    Private,
}

/// The special-use zones, by apex.
fn special_zones() -> Vec<(LowerName, Special)> {
    let mut zones: Vec<(String, Special)> = vec![
        ("localhost".into(), Special::Loopback),
        ("invalid".into(), Special::NxDomain),
        ("onion".into(), Special::NxDomain),
        ("use-application-dns.net".into(), Special::NxDomain),
        ("resolver.arpa".into(), Special::NoData),
        ("home.arpa".into(), Special::Private),
    ];
    // RFC 6303 §4.1 and RFC 6598 (CGNAT): private, loopback, link-local,
    // "this network", documentation and broadcast reverse zones.
    for zone in [
        "0.in-addr.arpa",
        "10.in-addr.arpa",
        "127.in-addr.arpa",
        "254.169.in-addr.arpa",
        "168.192.in-addr.arpa",
        "2.0.192.in-addr.arpa",
        "100.51.198.in-addr.arpa",
        "113.0.203.in-addr.arpa",
        "255.255.255.255.in-addr.arpa",
        // RFC 6303 §4.2-4.5: ::, ::1, ULA fd00::/8, link-local fe80::/10,
        // documentation 2001:db8::/32.
        "0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa",
        "d.f.ip6.arpa",
        "8.e.f.ip6.arpa",
        "9.e.f.ip6.arpa",
        "a.e.f.ip6.arpa",
        "b.e.f.ip6.arpa",
        "8.b.d.0.1.0.0.2.ip6.arpa",
    ] {
        zones.push((zone.into(), Special::Private));
    }
    for octet in 16..=31 {
        zones.push((format!("{octet}.172.in-addr.arpa"), Special::Private));
    }
    for octet in 64..=127 {
        zones.push((format!("{octet}.100.in-addr.arpa"), Special::Private));
    }
    zones
        .into_iter()
        .map(|(z, kind)| (parse_domain(&z).expect("valid builtin zone"), kind))
        .collect()
}

/// Answers local records and special-use names; passes the rest on.
pub struct Local<N> {
    records: LocalRecords,
    special: bool,
    zones: Vec<(LowerName, Special)>,
    /// Domains of `[[forward]]` rules: they take private zones over.
    forwarded: Vec<LowerName>,
    ttl: u32,
    next: N,
}

impl<N> std::fmt::Debug for Local<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Local")
            .field("records", &self.records.names.len())
            .field("special", &self.special)
            .finish_non_exhaustive()
    }
}

/// Whether the last label of `name` is one of the special-use TLDs: a
/// cheap filter so ordinary names never walk the zone list.
fn special_tld(name: &LowerName) -> bool {
    name.iter().next_back().is_some_and(|tld| {
        [&b"arpa"[..], b"localhost", b"invalid", b"onion", b"net"]
            .iter()
            .any(|t| tld.eq_ignore_ascii_case(t))
    })
}

impl<N: Resolve> Local<N> {
    /// Answers `records` (and special-use names if `config.special_names`),
    /// leaving private zones covered by `forwarded` domains to `next`.
    pub fn new(config: &LocalConfig, forwarded: Vec<LowerName>, next: N) -> Self {
        Self {
            records: LocalRecords::parse(config).unwrap_or_else(|error| {
                // `Config::validate` parses the same records first.
                tracing::error!(%error, "invalid [local] records ignored");
                LocalRecords::default()
            }),
            special: config.special_names,
            zones: special_zones(),
            forwarded,
            ttl: u32::try_from(config.ttl.as_secs()).unwrap_or(u32::MAX),
            next,
        }
    }

    fn answer(&self, rcode: ResponseCode) -> Answer {
        let mut answer = Answer::empty(Outcome::Local, rcode);
        answer.authoritative = true;
        answer
    }

    fn soa(&self, owner: &LowerName) -> Record {
        super::synthetic_soa(Name::from(owner.clone()), self.ttl)
    }

    /// NXDOMAIN or NODATA, with the SOA of `apex` so clients cache it.
    fn negative(&self, rcode: ResponseCode, apex: &LowerName) -> Answer {
        let mut answer = self.answer(rcode);
        answer.authorities.push(self.soa(apex));
        answer
    }

    /// The special-use zone `name` is in, if any (and not taken over).
    fn special_zone(&self, name: &LowerName) -> Option<(&LowerName, Special)> {
        if !self.special || !special_tld(name) {
            return None;
        }
        let (apex, kind) = self
            .zones
            .iter()
            .filter(|(apex, _)| apex.zone_of(name))
            .max_by_key(|(apex, _)| apex.num_labels())?;
        if *kind == Special::Private && self.forwarded.iter().any(|d| d.zone_of(name)) {
            return None;
        }
        Some((apex, *kind))
    }

    fn special_answer(&self, query: &Query<'_>, apex: &LowerName, kind: Special) -> Answer {
        let at_apex = apex == query.name;
        match kind {
            Special::Loopback => {
                let data = match query.qtype {
                    RecordType::A => RData::A(A(Ipv4Addr::LOCALHOST)),
                    RecordType::AAAA => RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)),
                    _ => return self.negative(ResponseCode::NoError, apex),
                };
                let mut answer = self.answer(ResponseCode::NoError);
                answer.answers.push(Record::from_rdata(
                    Name::from(query.name.clone()),
                    self.ttl,
                    data,
                ));
                answer
            }
            Special::NoData => self.negative(ResponseCode::NoError, apex),
            Special::NxDomain => self.negative(ResponseCode::NXDomain, apex),
            Special::Private if at_apex => {
                if query.qtype == RecordType::SOA {
                    let mut answer = self.answer(ResponseCode::NoError);
                    answer.answers.push(self.soa(apex));
                    answer
                } else {
                    self.negative(ResponseCode::NoError, apex)
                }
            }
            // A name with local records below it exists: the zone of
            // 192.168.1.x when a PTR there is local.
            Special::Private if self.records.has_below(query.name) => {
                self.negative(ResponseCode::NoError, apex)
            }
            Special::Private => self.negative(ResponseCode::NXDomain, apex),
        }
    }

    /// The answer from local records for `query`, following CNAMEs.
    async fn local_answer(&self, query: &Query<'_>, first: &[Record]) -> Answer {
        let mut answer = self.answer(ResponseCode::NoError);
        let mut records = first;
        let mut owner = query.name.clone();
        for _ in 0..MAX_CNAME_HOPS {
            let cname = records.iter().find_map(|r| match &r.data {
                RData::CNAME(c) if query.qtype != RecordType::CNAME => Some(c.0.clone()),
                _ => None,
            });
            let Some(target) = cname else {
                // ANY gets every record of a local name: telesink holds
                // them all (RFC 8482 §4.2 allows the full set).
                answer.answers.extend(
                    records
                        .iter()
                        .filter(|r| {
                            query.qtype == RecordType::ANY || r.record_type() == query.qtype
                        })
                        .cloned(),
                );
                if answer.answers.is_empty() {
                    // NODATA: the name exists, without this type.
                    answer.authorities.push(self.soa(&owner));
                }
                return answer;
            };
            answer.answers.extend(records.iter().cloned());
            owner = LowerName::from(target);
            if let Some(next) = self.records.get(&owner) {
                records = next;
                continue;
            }
            let hop = Query {
                name: &owner,
                ..query.clone()
            };
            // A target in a special-use zone (`printer.home.arpa`) is
            // answered here too: it must not leak upstream.
            if let Some((apex, kind)) = self.special_zone(&owner) {
                let rest = self.special_answer(&hop, apex, kind);
                answer.rcode = rest.rcode;
                answer.answers.extend(rest.answers);
                answer.authorities = rest.authorities;
                return answer;
            }
            // A target outside the local records: resolved by the rest of
            // the chain, so it is blocked, cached and forwarded like any
            // name.
            let rest = self.next.resolve(&hop).await;
            answer.rcode = rest.rcode;
            answer.authentic_data = false;
            answer.outcome = match rest.outcome {
                Outcome::Forwarded | Outcome::Cached | Outcome::Local => Outcome::Local,
                // The local name is not listed, its target is: as for a
                // cloaked answer, the target is named (in GET
                // /api/blocked and the live part of explain).
                Outcome::Blocked { list, cname: None } => Outcome::Blocked {
                    list,
                    cname: Some(Name::from(owner.clone()).to_ascii().into_boxed_str()),
                },
                other => other,
            };
            answer.answers.extend(rest.answers);
            answer.authorities = rest.authorities;
            return answer;
        }
        Answer::empty(Outcome::Error, ResponseCode::ServFail)
    }
}

impl<N: Resolve> Resolve for Local<N> {
    async fn resolve(&self, query: &Query<'_>) -> Answer {
        if let Some(records) = self.records.get(query.name) {
            return self.local_answer(query, records).await;
        }
        if let Some((apex, kind)) = self.special_zone(query.name) {
            return self.special_answer(query, apex, kind);
        }
        self.next.resolve(query).await
    }

    fn peek(&self, query: &Query<'_>) -> Peek {
        if self.records.get(query.name).is_some() || self.special_zone(query.name).is_some() {
            return Peek::Slow;
        }
        self.next.peek(query)
    }
}

/// What the local link does with a name before any list is looked at,
/// for `explain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalVerdict {
    /// Answered from `[local] records`.
    Records,
    /// A special-use name, answered locally (`[local] special_names`).
    Special,
    /// A `[local] records` CNAME chain leading out of the local records,
    /// to this name, which the rest of the chain (the lists) answers.
    Cname(Name),
}

/// How `config`'s local link answers `name`, or `None` if it passes the
/// name on.
pub fn local_verdict(config: &crate::config::Config, name: &LowerName) -> Option<LocalVerdict> {
    let local = Local::new(&config.local, forwarded_domains(config), Nothing);
    let Some(mut records) = local.records.get(name) else {
        return local.special_zone(name).map(|_| LocalVerdict::Special);
    };
    for _ in 0..MAX_CNAME_HOPS {
        let target = records.iter().find_map(|r| match &r.data {
            RData::CNAME(c) => Some(c.0.clone()),
            _ => None,
        });
        let Some(target) = target else {
            return Some(LocalVerdict::Records);
        };
        let lower = LowerName::from(target.clone());
        match local.records.get(&lower) {
            Some(next) => records = next,
            None if local.special_zone(&lower).is_some() => return Some(LocalVerdict::Records),
            None => return Some(LocalVerdict::Cname(target)),
        }
    }
    Some(LocalVerdict::Records)
}

/// The `[[forward]]` domains, which take private reverse zones over from
/// the local link.
pub(crate) fn forwarded_domains(config: &crate::config::Config) -> Vec<LowerName> {
    config
        .forward
        .iter()
        .flat_map(|rule| rule.domains.iter())
        .filter_map(|d| parse_domain(d))
        .collect()
}

/// The end of a chain that is never reached ([`local_verdict`] only looks
/// at the local link's data).
struct Nothing;

impl Resolve for Nothing {
    async fn resolve(&self, _query: &Query<'_>) -> Answer {
        Answer::empty(Outcome::Error, ResponseCode::ServFail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A next link that must never be asked.
    struct Unreachable;
    impl Resolve for Unreachable {
        async fn resolve(&self, query: &Query<'_>) -> Answer {
            panic!("{} reached the next link", query.name)
        }
    }

    fn local(records: &[(&str, &[&str])], forwarded: &[&str]) -> Local<Unreachable> {
        let config = LocalConfig {
            records: records
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect(),
            ttl: Duration::from_secs(300),
            special_names: true,
        };
        let forwarded = forwarded.iter().map(|d| parse_domain(d).unwrap()).collect();
        Local::new(&config, forwarded, Unreachable)
    }

    async fn ask(l: &Local<Unreachable>, name: &str, qtype: RecordType) -> Answer {
        let name = parse_domain(name).unwrap();
        let query = Query {
            name: &name,
            qtype,
            qclass: hickory_proto::rr::DNSClass::IN,
            client: Ipv4Addr::LOCALHOST.into(),
            checking_disabled: false,
        };
        l.resolve(&query).await
    }

    #[tokio::test]
    async fn records_cnames_and_ptrs() {
        let l = local(
            &[
                ("nas.lan", &["192.168.1.10"]),
                ("printer.lan", &["192.168.1.11", "fd00::11"]),
                ("tv.lan", &["nas.lan"]),
            ],
            &[],
        );
        let a = ask(&l, "tv.lan", RecordType::A).await;
        assert!(a.authoritative);
        assert_eq!(a.outcome, Outcome::Local);
        let kinds: Vec<_> = a.answers.iter().map(Record::record_type).collect();
        assert_eq!(kinds, [RecordType::CNAME, RecordType::A]);
        let a = ask(&l, "printer.lan", RecordType::AAAA).await;
        assert_eq!(a.answers.len(), 1);
        let a = ask(&l, "printer.lan", RecordType::MX).await;
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.answers.is_empty() && a.authorities.len() == 1, "NODATA");
        let a = ask(&l, "10.1.168.192.in-addr.arpa", RecordType::PTR).await;
        match &a.answers[0].data {
            RData::PTR(p) => assert_eq!(p.0.to_ascii(), "nas.lan."),
            other => panic!("{other:?}"),
        }
        // Its neighbour is in a private zone: NXDOMAIN, never forwarded.
        let a = ask(&l, "12.1.168.192.in-addr.arpa", RecordType::PTR).await;
        assert_eq!(a.rcode, ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn special_names() {
        let l = local(&[], &[]);
        let a = ask(&l, "foo.localhost", RecordType::AAAA).await;
        assert_eq!(a.answers[0].data, RData::AAAA(AAAA(Ipv6Addr::LOCALHOST)));
        let a = ask(&l, "use-application-dns.net", RecordType::A).await;
        assert_eq!(a.rcode, ResponseCode::NXDomain);
        let a = ask(&l, "_dns.resolver.arpa", RecordType::SVCB).await;
        assert_eq!(a.rcode, ResponseCode::NoError);
        assert!(a.answers.is_empty());
        for name in [
            "1.0.0.10.in-addr.arpa",
            "1.0.20.172.in-addr.arpa",
            "1.1.0.127.in-addr.arpa",
            "printer.home.arpa",
            "x.invalid",
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.e.f.ip6.arpa",
        ] {
            let a = ask(&l, name, RecordType::PTR).await;
            assert_eq!(a.rcode, ResponseCode::NXDomain, "{name}");
            assert!(matches!(a.authorities[0].data, RData::SOA(_)), "{name}");
        }
        assert!(
            l.special_zone(&parse_domain("1.0.0.11.in-addr.arpa").unwrap())
                .is_none()
        );
        assert!(
            l.special_zone(&parse_domain("1.0.32.172.in-addr.arpa").unwrap())
                .is_none()
        );
        assert!(
            l.special_zone(&parse_domain("example.net").unwrap())
                .is_none()
        );
    }

    #[test]
    fn forward_rules_take_private_zones_over() {
        let l = local(&[], &["168.192.in-addr.arpa", "home.arpa"]);
        for name in ["5.1.168.192.in-addr.arpa", "nas.home.arpa"] {
            assert!(
                l.special_zone(&parse_domain(name).unwrap()).is_none(),
                "{name}"
            );
        }
        assert!(
            l.special_zone(&parse_domain("5.0.0.10.in-addr.arpa").unwrap())
                .is_some()
        );
        // Not the always-local names.
        let l = local(&[], &["localhost"]);
        assert!(
            l.special_zone(&parse_domain("localhost").unwrap())
                .is_some()
        );
    }

    #[test]
    fn bad_records_are_named() {
        let config = |v: &[&str]| LocalConfig {
            records: [(
                "tv.lan".to_string(),
                v.iter().map(|s| s.to_string()).collect(),
            )]
            .into(),
            ..LocalConfig::default()
        };
        let err = LocalRecords::parse(&config(&["nas.lan", "10.0.0.1"])).unwrap_err();
        assert!(
            err.contains("\"tv.lan\"") && err.contains("only value"),
            "{err}"
        );
        let err = LocalRecords::parse(&config(&["not a name!"])).unwrap_err();
        assert!(err.contains("neither"), "{err}");
        // Mistyped addresses are not taken for names to alias.
        for typo in ["192.168.1.256", "192.168.1.1O", "fe80::zz", "10.0.0.1."] {
            let err = LocalRecords::parse(&config(&[typo])).unwrap_err();
            assert!(err.contains("not a valid IP address"), "{typo}: {err}");
        }
        let err = LocalRecords::parse(&config(&["*.nas.lan"])).unwrap_err();
        assert!(err.contains("neither"), "{err}");
        // Names that merely start with a digit are fine, and so is a
        // single label.
        assert!(LocalRecords::parse(&config(&["1password.lan"])).is_ok());
        assert!(LocalRecords::parse(&config(&["3dprinter"])).is_ok());
        let err = LocalRecords::parse(&config(&["1921681256"])).unwrap_err();
        assert!(err.contains("not a valid IP address"), "{err}");
        let wildcard = LocalConfig {
            records: [("*.lan".to_string(), vec!["10.0.0.1".to_string()])].into(),
            ..LocalConfig::default()
        };
        let err = LocalRecords::parse(&wildcard).unwrap_err();
        assert!(err.contains("wildcards are not supported"), "{err}");
    }

    #[tokio::test]
    async fn cnames_into_private_zones_stay_local() {
        // `Unreachable` panics if the target is asked of the next link.
        let l = local(&[("tv.lan", &["printer.home.arpa"])], &[]);
        let a = ask(&l, "tv.lan", RecordType::A).await;
        assert_eq!(a.rcode, ResponseCode::NXDomain);
        assert_eq!(a.answers.len(), 1, "the CNAME");
        assert!(matches!(a.authorities[0].data, RData::SOA(_)));
    }

    #[tokio::test]
    async fn names_above_local_records_exist() {
        let l = local(&[("nas.x.home.arpa", &["192.168.1.10"])], &[]);
        for name in ["x.home.arpa", "1.168.192.in-addr.arpa"] {
            let a = ask(&l, name, RecordType::A).await;
            assert_eq!(a.rcode, ResponseCode::NoError, "{name}: NODATA");
            assert!(a.answers.is_empty(), "{name}");
        }
        let a = ask(&l, "y.home.arpa", RecordType::A).await;
        assert_eq!(a.rcode, ResponseCode::NXDomain);
    }

    #[tokio::test]
    async fn any_gets_every_record_of_a_local_name() {
        let l = local(&[("printer.lan", &["192.168.1.11", "fd00::11"])], &[]);
        let a = ask(&l, "printer.lan", RecordType::ANY).await;
        let kinds: Vec<_> = a.answers.iter().map(Record::record_type).collect();
        assert_eq!(kinds, [RecordType::A, RecordType::AAAA]);
    }
}
