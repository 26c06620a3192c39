//! Resolving the host names of encrypted upstreams through the plain DNS
//! resolvers of `[upstream] bootstrap`, never through telesink itself
//! (which would need the upstream to resolve the upstream).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// Addresses are kept at least this long, whatever the TTL, so a busy
/// upstream costs no more than one bootstrap lookup a minute.
const MIN_TTL: Duration = Duration::from_secs(60);

/// Addresses are looked up again after at most this, whatever the TTL: a
/// provider that moves its servers is followed within a day.
const MAX_TTL: Duration = Duration::from_secs(86_400);

/// When a lookup fails, the addresses from the last one that worked are
/// used for this long before the next try: an upstream's servers rarely
/// move, and a bootstrap resolver that is down for a while (the router
/// rebooting) must not take every encrypted upstream down with it.
const STALE_RETRY: Duration = Duration::from_secs(30);

/// A lookup's entry in [`Bootstrap::running`], removed when the lookup
/// ends, or when its task is dropped without ending (its runtime shut
/// down, a panic): the waiters then see the channel closed instead of
/// waiting for good, and the next attempt starts a new lookup.
struct Running {
    bootstrap: Arc<Bootstrap>,
    /// `None` once removed.
    host: Option<String>,
}

impl Running {
    /// Removes the entry; its sender, to tell the waiters.
    fn finish(&mut self) -> Option<broadcast::Sender<Lookup>> {
        let host = self.host.take()?;
        self.bootstrap
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&host)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What a lookup came to, for every attempt waiting on it.
type Lookup = Result<Vec<IpAddr>, String>;

/// The bootstrap resolvers and the addresses they gave, with expiry.
#[derive(Debug)]
pub struct Bootstrap {
    servers: Vec<SocketAddr>,
    timeout: Duration,
    /// Only touched when a connection is opened, never per query.
    known: Mutex<HashMap<String, (Vec<IpAddr>, Instant)>>,
    /// The lookups running, one per host, however many connection
    /// attempts wait for it.
    running: Mutex<HashMap<String, broadcast::Sender<Lookup>>>,
}

impl Bootstrap {
    /// Resolves through `servers`, waiting `timeout` for each.
    pub fn new(servers: impl IntoIterator<Item = SocketAddr>, timeout: Duration) -> Self {
        Self {
            servers: servers.into_iter().collect(),
            timeout,
            known: Mutex::new(HashMap::new()),
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The addresses of `host` (IPv4 first, then IPv6).
    ///
    /// One lookup per host runs at a time, as a task of its own: a
    /// connection attempt that gives up (its timeout is the resolvers')
    /// does not stop it, so the next attempt finds the addresses it
    /// stored, and attempts meanwhile wait for the same lookup.
    pub async fn lookup(self: &Arc<Self>, host: &str) -> std::io::Result<Vec<IpAddr>> {
        if let Some((ips, until)) = self.known.lock().expect("not poisoned").get(host)
            && *until > Instant::now()
        {
            return Ok(ips.clone());
        }
        let mut done = {
            let mut running = self.running.lock().expect("not poisoned");
            match running.get(host) {
                Some(tx) => tx.subscribe(),
                None => {
                    let (tx, rx) = broadcast::channel(1);
                    running.insert(host.to_string(), tx);
                    let mut entry = Running {
                        bootstrap: self.clone(),
                        host: Some(host.to_string()),
                    };
                    tokio::spawn(async move {
                        let host = entry.host.clone().unwrap_or_default();
                        let result = entry.bootstrap.clone().resolve(&host).await;
                        if let Some(tx) = entry.finish() {
                            let _ = tx.send(result.map_err(|e| e.to_string()));
                        }
                    });
                    rx
                }
            }
        };
        done.recv()
            .await
            .map_err(std::io::Error::other)?
            .map_err(std::io::Error::other)
    }

    /// Asks every resolver at once for the addresses of `host`, and stores
    /// the first that has some: a dead or slow resolver delays nothing.
    async fn resolve(self: Arc<Self>, host: &str) -> std::io::Result<Vec<IpAddr>> {
        let name = Name::from_ascii(format!("{host}."))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let mut asks = tokio::task::JoinSet::new();
        for &server in &self.servers {
            let (me, name) = (self.clone(), name.clone());
            asks.spawn(async move { me.addresses(server, &name).await });
        }
        let mut last = std::io::Error::other(format!("no bootstrap resolver for {host}"));
        while let Some(done) = asks.join_next().await {
            match done {
                Ok(Ok((ips, ttl))) => {
                    let keep = Duration::from_secs(u64::from(ttl)).clamp(MIN_TTL, MAX_TTL);
                    self.known
                        .lock()
                        .expect("not poisoned")
                        .insert(host.to_string(), (ips.clone(), Instant::now() + keep));
                    return Ok(ips);
                }
                Ok(Err(e)) => last = e,
                Err(e) => last = std::io::Error::other(e),
            }
        }
        if let Some((ips, until)) = self.known.lock().expect("not poisoned").get_mut(host) {
            tracing::warn!(host, error = %last, retry = ?STALE_RETRY, "cannot look up the upstream's addresses through [upstream] bootstrap; using the ones from the last lookup");
            *until = Instant::now() + STALE_RETRY;
            return Ok(ips.clone());
        }
        Err(std::io::Error::new(
            last.kind(),
            format!("cannot resolve {host} through [upstream] bootstrap: {last}"),
        ))
    }

    /// The addresses `server` gives for `name`, and their lowest TTL; an
    /// error unless it gives some. A and AAAA are asked at once, and either
    /// is enough: some home routers never answer AAAA queries.
    async fn addresses(
        &self,
        server: SocketAddr,
        name: &Name,
    ) -> std::io::Result<(Vec<IpAddr>, u32)> {
        let (a, aaaa) = tokio::join!(
            self.ask(server, name, RecordType::A),
            self.ask(server, name, RecordType::AAAA)
        );
        let mut ips = Vec::new();
        let mut ttl = u32::MAX;
        let mut last = None;
        for result in [a, aaaa] {
            match result {
                Ok((found, t)) => {
                    if !found.is_empty() {
                        ttl = ttl.min(t);
                    }
                    ips.extend(found);
                }
                Err(e) => last = Some(e),
            }
        }
        if ips.is_empty() {
            return Err(last.unwrap_or_else(|| {
                std::io::Error::other(format!("{server} has no address for {name}"))
            }));
        }
        Ok((ips, ttl))
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
        let reply = tokio::time::timeout(
            self.timeout,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use hickory_proto::rr::Record;
    use hickory_proto::rr::rdata::A;

    use super::*;

    /// A resolver that answers A queries with 192.0.2.1 after `delay`
    /// (AAAA with nothing), or never if `None`; and how many A queries it
    /// was sent.
    async fn resolver(delay: Option<Duration>) -> (SocketAddr, Arc<AtomicUsize>) {
        let socket = Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = socket.local_addr().unwrap();
        let asked = Arc::new(AtomicUsize::new(0));
        let count = asked.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let mut reply = Message::from_vec(&buf[..n]).unwrap();
                let q = reply.queries[0].clone();
                if q.query_type() == RecordType::A {
                    count.fetch_add(1, Ordering::SeqCst);
                    reply.add_answer(Record::from_rdata(
                        q.name().clone(),
                        300,
                        RData::A(A::new(192, 0, 2, 1)),
                    ));
                }
                reply.metadata.message_type = MessageType::Response;
                let Some(delay) = delay else { continue };
                let socket = socket.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
                });
            }
        });
        (addr, asked)
    }

    #[tokio::test]
    async fn attempts_at_once_share_one_lookup() {
        let (server, asked) = resolver(Some(Duration::from_millis(200))).await;
        let bootstrap = Arc::new(Bootstrap::new([server], Duration::from_secs(2)));
        let lookups: Vec<_> = (0..10)
            .map(|_| {
                let b = bootstrap.clone();
                tokio::spawn(async move { b.lookup("dot.example").await.unwrap() })
            })
            .collect();
        for l in lookups {
            assert_eq!(l.await.unwrap(), [IpAddr::from([192, 0, 2, 1])]);
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // Then kept: no more queries.
        bootstrap.lookup("dot.example").await.unwrap();
        assert_eq!(asked.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_lookup_whose_runtime_ends_does_not_hold_up_the_next() {
        // A resolver that never answers: queries wait in its socket.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dead = silent.local_addr().unwrap();
        let bootstrap = Arc::new(Bootstrap::new([dead], Duration::from_millis(300)));
        // A lookup starts on a runtime that shuts down while it waits.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let b = bootstrap.clone();
        rt.block_on(async move {
            drop(tokio::spawn(async move { b.lookup("dot.example").await }));
            tokio::time::sleep(Duration::from_millis(50)).await;
        });
        assert_eq!(bootstrap.running.lock().unwrap().len(), 1, "still waiting");
        drop(rt);
        assert!(
            bootstrap.running.lock().unwrap().is_empty(),
            "entry left behind"
        );
        // The next lookup runs (and fails, the resolver being silent)
        // within its timeout instead of waiting on the ended one.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let started = Instant::now();
        let result = rt.block_on(bootstrap.lookup("dot.example"));
        assert!(result.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        drop(silent);
    }

    /// Once known, an upstream's addresses outlive a bootstrap resolver
    /// that stops answering: a failed lookup gives the last ones, kept a
    /// while before the next try.
    #[tokio::test]
    async fn addresses_outlive_a_failed_lookup() {
        let (server, asked) = resolver(Some(Duration::ZERO)).await;
        let bootstrap = Arc::new(Bootstrap::new([server], Duration::from_millis(200)));
        let ip = [IpAddr::from([192, 0, 2, 1])];
        assert_eq!(bootstrap.lookup("dot.example").await.unwrap(), ip);
        // They expire, and the resolver goes quiet.
        let expire = |b: &Bootstrap| {
            b.known.lock().unwrap().get_mut("dot.example").unwrap().1 = Instant::now();
        };
        expire(&bootstrap);
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let quiet = Arc::new(Bootstrap::new(
            [silent.local_addr().unwrap()],
            Duration::from_millis(200),
        ));
        *quiet.known.lock().unwrap() = bootstrap.known.lock().unwrap().clone();
        assert_eq!(
            quiet.lookup("dot.example").await.unwrap(),
            ip,
            "the last ones"
        );
        // Kept for a while: the next attempt does not wait on the resolver.
        let started = Instant::now();
        assert_eq!(quiet.lookup("dot.example").await.unwrap(), ip);
        assert!(
            started.elapsed() < Duration::from_millis(100),
            "{:?}",
            started.elapsed()
        );
        // A name never looked up still fails.
        assert!(quiet.lookup("other.example").await.is_err());
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        drop(silent);
    }

    #[tokio::test]
    async fn a_dead_resolver_delays_nothing_and_a_slow_one_still_counts() {
        let (dead, _) = resolver(None).await;
        let (slow, _) = resolver(Some(Duration::from_millis(700))).await;
        let bootstrap = Arc::new(Bootstrap::new([dead, slow], Duration::from_secs(2)));
        let started = Instant::now();
        let ips = bootstrap.lookup("dot.example").await.unwrap();
        assert_eq!(ips, [IpAddr::from([192, 0, 2, 1])]);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
