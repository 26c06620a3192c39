//! DNS-rebinding protection: which answers point a public name into the
//! LAN. [`super::Block`] applies it to answers on their way back.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::rdata::HTTPS;
use hickory_proto::rr::rdata::svcb::{SVCB, SvcParamValue};
use hickory_proto::rr::{LowerName, Name, RData};

use super::Answer;
use crate::config::SecurityConfig;

/// The `list` label of answers blocked as DNS rebinding. Reserved: no
/// configured list may use it, so the label set stays bounded and
/// unambiguous.
pub const REBIND_LIST: &str = "rebind";

/// `[security] rebind_protection` and `rebind_allow`, ready for matching.
#[derive(Debug, Clone, Default)]
pub struct Rebind {
    enabled: bool,
    allow: Vec<LowerName>,
}

impl Rebind {
    /// The protection `[security]` describes (entries that are not domain
    /// names were rejected when the config was validated).
    pub fn from_config(c: &SecurityConfig) -> Self {
        Self {
            enabled: c.rebind_protection,
            allow: c
                .rebind_allow
                .iter()
                .filter_map(|d| rebind_domain(d))
                .collect(),
        }
    }

    /// Whether the protection is on at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `answer` to a question for `name` is a rebinding attempt:
    /// protection is on, `name` is not under `rebind_allow`, and an A or
    /// AAAA record in the answer section, or an address hint of an HTTPS
    /// or SVCB record there (RFC 9460 §7.3, which clients may connect to),
    /// points into a private range.
    pub fn is_rebinding(&self, name: &LowerName, answer: &Answer) -> bool {
        self.enabled
            && answer.answers.iter().any(|r| match &r.data {
                RData::A(a) => is_private(IpAddr::V4(a.0)),
                RData::AAAA(a) => is_private(IpAddr::V6(a.0)),
                RData::HTTPS(HTTPS(svcb)) | RData::SVCB(svcb) => hints_private(svcb),
                _ => false,
            })
            && !self.allow.iter().any(|d| d.zone_of(name))
    }
}

/// Whether an address hint of `svcb` is private.
fn hints_private(svcb: &SVCB) -> bool {
    svcb.svc_params.iter().any(|(_, value)| match value {
        SvcParamValue::Ipv4Hint(hint) => hint.0.iter().any(|a| is_private(IpAddr::V4(a.0))),
        SvcParamValue::Ipv6Hint(hint) => hint.0.iter().any(|a| is_private(IpAddr::V6(a.0))),
        _ => false,
    })
}

/// A `rebind_allow` entry as a name: `lan`, `home.arpa.`, `.local`.
pub fn rebind_domain(s: &str) -> Option<LowerName> {
    let s = s.trim().trim_start_matches('.');
    if s.is_empty() || s.contains(['*', ' ', '/']) {
        return None;
    }
    let mut name = Name::from_ascii(s).ok()?.to_lowercase();
    name.set_fqdn(true);
    Some(LowerName::from(name))
}

/// Addresses a public name has no business resolving to: the ranges
/// dnsmasq's `stop-dns-rebind` rejects (RFC 1918, loopback, link-local,
/// 0.0.0.0/8) plus CGNAT (RFC 6598), and for IPv6 loopback, unspecified,
/// ULA (fc00::/7), link-local (fe80::/10), and private IPv4 addresses
/// mapped (`::ffff:0:0/96`) or translated by NAT64 (`64:ff9b::/96`, RFC
/// 6052: a DNS64 upstream writes a private A record as one).
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => private_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return private_v4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [.., a, b, c, d] = v6.octets();
                return private_v4(Ipv4Addr::new(a, b, c, d));
            }
            let first = v6.segments()[0];
            v6 == Ipv6Addr::LOCALHOST
                || v6 == Ipv6Addr::UNSPECIFIED
                || first & 0xfe00 == 0xfc00
                || first & 0xffc0 == 0xfe80
        }
    }
}

fn private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    a == 0
        || v4.is_private()
        || v4.is_loopback()
        || v4.is_link_local()
        || (a == 100 && (64..128).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolver::Outcome;
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::svcb::{IpHint, SvcParamKey};
    use hickory_proto::rr::rdata::{A, AAAA};

    #[test]
    fn private_ranges() {
        for ip in [
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "::1",
            "::",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "::ffff:192.168.1.1",
            "64:ff9b::192.168.1.1",
            "64:ff9b::10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "192.0.2.1",
            "2001:db8::1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "fec0::1",
            "64:ff9b::8.8.8.8",
            "64:ff9b:1::192.168.1.1",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn allow_list_matches_the_domain_and_its_subdomains() {
        let rebind = Rebind::from_config(&SecurityConfig {
            rebind_protection: true,
            rebind_allow: vec!["lan".into(), ".home.arpa.".into()],
            ..SecurityConfig::default()
        });
        let mut answer = Answer::empty(Outcome::Forwarded, ResponseCode::NoError);
        answer.answers.push(Record::from_rdata(
            Name::from_ascii("x.").unwrap(),
            60,
            RData::A(A::new(192, 168, 1, 1)),
        ));
        let name = |s: &str| LowerName::from(Name::from_ascii(s).unwrap());
        assert!(rebind.is_rebinding(&name("evil.example."), &answer));
        assert!(!rebind.is_rebinding(&name("nas.lan."), &answer));
        assert!(!rebind.is_rebinding(&name("NAS.Home.Arpa."), &answer));
        assert!(!rebind.is_rebinding(&name("lan."), &answer));
        assert!(rebind.is_rebinding(&name("plan."), &answer));
        let mut public = Answer::empty(Outcome::Forwarded, ResponseCode::NoError);
        public.answers.push(Record::from_rdata(
            Name::from_ascii("x.").unwrap(),
            60,
            RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
        ));
        assert!(!rebind.is_rebinding(&name("evil.example."), &public));
        let off = Rebind::from_config(&SecurityConfig::default());
        assert!(!off.is_rebinding(&name("evil.example."), &answer));
        // An HTTPS record's address hints count as its addresses.
        let https = |hint: [u8; 4]| {
            let mut answer = Answer::empty(Outcome::Forwarded, ResponseCode::NoError);
            let params = vec![(
                SvcParamKey::Ipv4Hint,
                SvcParamValue::Ipv4Hint(IpHint(vec![A::from(Ipv4Addr::from(hint))])),
            )];
            answer.answers.push(Record::from_rdata(
                Name::from_ascii("x.").unwrap(),
                60,
                RData::HTTPS(HTTPS(SVCB::new(1, Name::root(), params))),
            ));
            answer
        };
        assert!(rebind.is_rebinding(&name("evil.example."), &https([192, 168, 1, 1])));
        assert!(!rebind.is_rebinding(&name("evil.example."), &https([192, 0, 2, 1])));
        assert!(rebind_domain("*.lan").is_none());
        assert!(rebind_domain("").is_none());
    }
}
