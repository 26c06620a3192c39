//! Resolving the host names of encrypted upstreams through the plain DNS
//! resolvers of `[upstream] bootstrap`, never through telesink itself
//! (which would need the upstream to resolve the upstream).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// Addresses are kept at least this long, whatever the TTL, so a busy
/// upstream costs no more than one bootstrap lookup a minute.
const MIN_TTL: Duration = Duration::from_secs(60);

/// The bootstrap resolvers and the addresses they gave, with expiry.
#[derive(Debug)]
pub struct Bootstrap {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    /// Only touched when a connection is opened, never per query.
    known: Mutex<HashMap<String, (Vec<IpAddr>, Instant)>>,
}

impl Bootstrap {
    /// Resolves through `servers`; `timeout` is the connection attempt's,
    /// of which each resolver gets a quarter.
    pub fn new(servers: impl IntoIterator<Item = SocketAddr>, timeout: Duration) -> Self {
        Self {
            servers: servers.into_iter().collect(),
            timeout,
            known: Mutex::new(HashMap::new()),
        }
    }

    /// The addresses of `host` (IPv4 first, then IPv6).
    ///
    /// The lookup runs as a task of its own: a connection attempt that
    /// gives up (its timeout is the same as the resolvers') does not stop
    /// it, so the next attempt finds the addresses it stored.
    pub async fn lookup(self: &Arc<Self>, host: &str) -> std::io::Result<Vec<IpAddr>> {
        if let Some((ips, until)) = self.known.lock().expect("not poisoned").get(host) {
            if *until > Instant::now() {
                return Ok(ips.clone());
            }
        }
        let (me, host) = (self.clone(), host.to_string());
        tokio::spawn(async move { me.resolve(&host).await })
            .await
            .map_err(std::io::Error::other)?
    }

    /// Asks the resolvers in turn for the addresses of `host`, and stores
    /// them.
    async fn resolve(&self, host: &str) -> std::io::Result<Vec<IpAddr>> {
        let name = Name::from_ascii(format!("{host}."))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut last = std::io::Error::other(format!("no bootstrap resolver for {host}"));
        for &server in &self.servers {
            let mut ips = Vec::new();
            let mut ttl = u32::MAX;
            // Both at once, and either is enough: some home routers never
            // answer AAAA queries.
            let (a, aaaa) = tokio::join!(
                self.ask(server, &name, RecordType::A),
                self.ask(server, &name, RecordType::AAAA)
            );
            for result in [a, aaaa] {
                match result {
                    Ok((found, t)) => {
                        ttl = ttl.min(t);
                        ips.extend(found);
                    }
                    Err(e) => last = e,
                }
            }
            if !ips.is_empty() {
                let keep = Duration::from_secs(u64::from(ttl)).max(MIN_TTL);
                self.known
                    .lock()
                    .expect("not poisoned")
                    .insert(host.to_string(), (ips.clone(), Instant::now() + keep));
                return Ok(ips);
            }
        }
        Err(std::io::Error::new(
            last.kind(),
            format!("cannot resolve {host} through [upstream] bootstrap: {last}"),
        ))
    }

    async fn ask(
        &self,
        server: SocketAddr,
        name: &Name,
        qtype: RecordType,
    ) -> std::io::Result<(Vec<IpAddr>, u32)> {
        let mut request = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        request.metadata.recursion_desired = true;
        request.add_query(Query::query(name.clone(), qtype));
        let bytes = request.to_vec().map_err(std::io::Error::other)?;
        // A quarter of the timeout, so a dead resolver leaves time to ask
        // the next within one connection attempt.
        let reply = tokio::time::timeout(
            self.timeout / 4,
            super::udp::once(server, &bytes, &request, 1232),
        )
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "bootstrap timed out"))?
        .map_err(|e| std::io::Error::other(e.to_string()))?;
        if reply.metadata.response_code != ResponseCode::NoError {
            return Err(std::io::Error::other(format!(
                "bootstrap answered {}",
                reply.metadata.response_code
            )));
        }
        let mut ttl = u32::MAX;
        let ips = reply
            .answers
            .iter()
            .filter_map(|r| {
                let ip = match &r.data {
                    RData::A(a) => IpAddr::V4(a.0),
                    RData::AAAA(a) => IpAddr::V6(a.0),
                    _ => return None,
                };
                ttl = ttl.min(r.ttl);
                Some(ip)
            })
            .collect();
        Ok((ips, ttl))
    }
}

/// reqwest resolves DoH host names through the bootstrap resolvers too,
/// sharing their cache of addresses.
#[derive(Debug, Clone)]
pub(super) struct Shared(pub(super) Arc<Bootstrap>);

impl reqwest::dns::Resolve for Shared {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let me = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let ips = me.lookup(&host).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}
