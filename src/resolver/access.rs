//! Access control: only clients on configured networks may query.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use ipnet::IpNet;

use super::{Answer, Outcome, Peek, Query, Resolve};

/// Answers REFUSED to clients outside the allowed networks.
#[derive(Debug)]
pub struct Access<N> {
    allowed: Vec<IpNet>,
    next: N,
}

impl<N: Resolve> Access<N> {
    /// Allows `allowed` networks, then asks `next`.
    pub fn new(allowed: Vec<IpNet>, next: N) -> Self {
        Self { allowed, next }
    }

    /// Whether `client` may query. IPv4 clients on an IPv6 socket
    /// (`::ffff:a.b.c.d`) are judged by their IPv4 address.
    pub fn allows(&self, client: IpAddr) -> bool {
        is_allowed(&self.allowed, client)
    }
}

/// The access decision on its own, for callers without a chain.
pub fn is_allowed(allowed: &[IpNet], client: IpAddr) -> bool {
    let client = match client {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(client, IpAddr::V4),
        v4 => v4,
    };
    allowed.iter().any(|net| net.contains(&client))
}

impl<N: Resolve> Resolve for Access<N> {
    async fn resolve(&self, query: &Query<'_>) -> Answer {
        if !self.allows(query.client) {
            return Answer::empty(Outcome::Refused, ResponseCode::Refused);
        }
        self.next.resolve(query).await
    }

    fn peek(&self, query: &Query<'_>) -> Peek {
        if !self.allows(query.client) {
            // Refusals are rare; the full path answers and counts them.
            return Peek::Slow;
        }
        self.next.peek(query)
    }

    fn declined(&self, query: &Query<'_>) {
        self.next.declined(query);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::default_allow_clients;

    #[test]
    fn default_networks_allow_lan_and_refuse_internet() {
        let nets = default_allow_clients();
        for ok in [
            "127.0.0.1",
            "192.168.1.20",
            "10.1.2.3",
            "172.20.0.5",
            "100.64.1.1",
            "169.254.3.3",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:192.168.1.20",
        ] {
            assert!(is_allowed(&nets, ok.parse().unwrap()), "{ok}");
        }
        for no in [
            "8.8.8.8",
            "172.32.0.1",
            "2001:db8::1",
            "::ffff:8.8.8.8",
            "100.128.0.1",
        ] {
            assert!(!is_allowed(&nets, no.parse().unwrap()), "{no}");
        }
    }
}
