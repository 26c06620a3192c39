//! The configuration file: strict serde structs, one per TOML table.
//!
//! Every struct denies unknown keys (a typo is an error, not a silently
//! ignored setting), every field has a documented default, and every error
//! names the file, line and column. `config/telesink.toml` is the embedded
//! default and the commented reference for every key.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

/// The embedded default configuration, used when no `--config` is given.
pub const DEFAULT_CONFIG: &str = include_str!("../config/telesink.toml");

/// Name shown in messages for the embedded default configuration.
pub const DEFAULT_CONFIG_NAME: &str = "<embedded config/telesink.toml>";

/// A configuration problem, located in its file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file that failed.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key, or a value of the wrong kind.
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        /// The file that failed.
        path: String,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, without the location.
        message: String,
    },
    /// A value that parses but makes no sense (a duplicate list name, ...).
    #[error("{path}: {message}")]
    Invalid {
        /// The file that failed.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners and who may query.
    pub server: ServerConfig,
    /// Where non-blocked queries are forwarded.
    pub upstream: UpstreamConfig,
    /// The answer cache in front of the upstreams.
    pub cache: CacheConfig,
    /// Block lists, allow lists and how blocked names are answered.
    pub blocking: BlockingConfig,
    /// The HTTP listener for `/metrics` and `/healthz`.
    pub http: HttpConfig,
    /// How clients appear in metrics.
    pub metrics: MetricsConfig,
    /// Named devices (`[[clients]]`), the `client` label of metrics.
    pub clients: Vec<ClientConfig>,
    /// Protection against abusive clients and hostile answers.
    pub security: SecurityConfig,
    /// Names telesink answers itself: local records and special-use names.
    pub local: LocalConfig,
    /// Conditional forwarding (`[[forward]]`): names under some domains go
    /// to their own servers (the router, for `.lan` and reverse lookups).
    pub forward: Vec<ForwardConfig>,
    /// Directory that relative paths in this file resolve against (the
    /// file's own directory; the current directory for the embedded default).
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Where this configuration came from, for messages.
    #[serde(skip)]
    pub origin: String,
    /// The file it was read from; `None` for the embedded default. The
    /// reloader watches it.
    #[serde(skip)]
    pub path: Option<PathBuf>,
}

/// `[server]`: the DNS listeners.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Addresses to serve DNS on, over both UDP and TCP (`"IP:port"`,
    /// `"[::1]:53"` for IPv6).
    pub listen: Vec<SocketAddr>,
    /// Client networks allowed to query; everyone else gets REFUSED (over
    /// TCP, its connection is closed before it takes a slot), so telesink
    /// is never an open resolver. Defaults to loopback, RFC 1918,
    /// CGNAT (100.64.0.0/10), link-local and ULA (fc00::/7).
    pub allow_clients: Vec<IpNet>,
    /// How long a TCP client may stay idle between queries, or take to
    /// read an answer, before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub tcp_timeout: Duration,
    /// How long a new TCP connection may take to send its first query, so
    /// a client that connects and sends nothing cannot hold a socket.
    #[serde(with = "humantime_serde")]
    pub tcp_first_byte_timeout: Duration,
    /// Open TCP connections in all; more are closed at once.
    pub max_tcp_connections: usize,
    /// Open TCP connections per client address.
    pub max_tcp_connections_per_client: usize,
    /// Queries of one TCP connection answered at once (RFC 7766
    /// pipelining; answers go out as they are ready, in any order).
    pub tcp_max_pipelined: usize,
    /// The EDNS UDP payload size telesink advertises and honours, 512 to
    /// 4096 (1232 avoids IP fragmentation, per DNS Flag Day 2020).
    pub edns_udp_size: u16,
    /// Threads serving each UDP listen address. Each answers blocked and
    /// cached names itself and runs the other queries on a runtime of its
    /// own. One thread answers well over 100,000 queries a second on one
    /// core of a small server, far more than a home network asks, and beats
    /// several on a machine with few cores (docs/performance.md); raise it
    /// only on a many-core machine serving a large network.
    pub udp_threads: usize,
    /// Queries each UDP thread keeps waiting on the full path (on the
    /// upstreams, mostly) before it drops new ones that would wait too, as
    /// unbound's `num-queries-per-thread` and dnsmasq's `dns-forward-max`
    /// do. A flood of names nobody asked before otherwise queues without
    /// bound (2 GB in 45 s in `scripts/watchdog-flood`); a home network's
    /// misses wait by the dozen. Whatever is answered without waiting
    /// (blocked, cached and local names, refusals) still is.
    pub udp_max_waiting: usize,
    /// When started as root: the user to switch to once the sockets are
    /// bound (port 53 needs root or CAP_NET_BIND_SERVICE only to bind).
    pub user: Option<String>,
    /// When started as root: the group to switch to; default: the user's
    /// primary group.
    pub group: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: vec![
                SocketAddr::from((Ipv4Addr::LOCALHOST, 5353)),
                SocketAddr::from((Ipv6Addr::LOCALHOST, 5353)),
            ],
            allow_clients: default_allow_clients(),
            tcp_timeout: Duration::from_secs(10),
            tcp_first_byte_timeout: Duration::from_secs(2),
            max_tcp_connections: 256,
            max_tcp_connections_per_client: 32,
            tcp_max_pipelined: 16,
            edns_udp_size: 1232,
            udp_threads: 1,
            udp_max_waiting: 4096,
            user: None,
            group: None,
        }
    }
}

/// Loopback, private, CGNAT, link-local and ULA networks: every address a
/// home LAN client can have, and nothing routable on the internet.
pub fn default_allow_clients() -> Vec<IpNet> {
    [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "100.64.0.0/10",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ]
    .iter()
    .map(|n| n.parse().expect("valid builtin network"))
    .collect()
}

/// `[upstream]`: the resolvers telesink forwards to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// Resolvers, tried in order (the next one is asked when one times out,
    /// fails, or answers SERVFAIL, REFUSED, FORMERR, NOTIMP or a truncated
    /// reply it cannot complete): `"IP"`, `"IP:port"` or `udp://` (plain
    /// DNS, TCP when truncated), `tcp://IP[:port]`, `tls://HOST[:port]`
    /// (DNS-over-TLS, port 853), `https://HOST[:port]/path` (DNS-over-HTTPS).
    /// A `#name` fragment gives the TLS server name when HOST is an address:
    /// `"tls://9.9.9.9#dns.quad9.net"`.
    pub servers: Vec<UpstreamAddr>,
    /// How long to wait for one upstream before trying the next.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long all upstream attempts for one query may take together;
    /// then the client gets SERVFAIL (or a stale answer), well inside the
    /// usual 5 s client timeout however many upstreams are configured.
    #[serde(with = "humantime_serde")]
    pub total_timeout: Duration,
    /// Upstream requests allowed at once (after identical queries are
    /// merged); beyond it a query waits up to `[cache] stale_timeout` (at
    /// least 1 s) for a free slot, then gets SERVFAIL instead of piling up.
    pub max_in_flight: usize,
    /// Plain DNS resolvers (`"IP"` or `"IP:port"`) that resolve the host
    /// names of `tls://` and `https://` upstreams; never telesink itself.
    /// All are asked at once, the first to give addresses winning. Needed
    /// only when an upstream is given by name.
    pub bootstrap: Vec<UpstreamAddr>,
    /// A PEM file of extra CA certificates trusted for `tls://` and
    /// `https://` upstreams, besides the system's CA store.
    pub ca_file: Option<PathBuf>,
    /// TCP, TLS and HTTPS connections to upstreams are reused for many
    /// queries, and closed after this long without one.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How upstreams are chosen: `failover` (in order), `fastest` (the two
    /// with the lowest recent latency at once, first good answer wins) or
    /// `round_robin`. Every strategy skips an upstream that keeps failing
    /// for a backoff (5 s, doubling to 60 s), then probes it with one query.
    /// Queries that were waiting on it together and fail together count as
    /// one failure.
    pub strategy: Strategy,
}

/// See [`UpstreamConfig::strategy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// In the configured order; the next one on failure.
    #[default]
    Failover,
    /// The two fastest at once (by recent latency), then the rest in order.
    Fastest,
    /// Each query starts at the next upstream, spreading the load.
    RoundRobin,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            servers: vec![
                UpstreamAddr::plain(SocketAddr::from(([9, 9, 9, 9], 53))),
                UpstreamAddr::plain(SocketAddr::from(([1, 1, 1, 1], 53))),
            ],
            timeout: Duration::from_secs(2),
            max_in_flight: 1024,
            total_timeout: Duration::from_secs(4),
            bootstrap: Vec::new(),
            ca_file: None,
            idle_timeout: Duration::from_secs(30),
            strategy: Strategy::Failover,
        }
    }
}

/// How telesink talks to an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// Plain DNS over UDP, retried over TCP when truncated (and over UDP
    /// advertising 4,096 bytes if the upstream refuses TCP).
    Udp,
    /// Plain DNS over TCP only.
    Tcp,
    /// DNS-over-TLS (RFC 7858).
    Tls,
    /// DNS-over-HTTPS (RFC 8484).
    Https,
}

/// Where an upstream is: an address, or a name resolved through
/// `[upstream] bootstrap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamHost {
    /// An IP address.
    Ip(IpAddr),
    /// A host name (lowercase, no trailing dot).
    Name(String),
}

impl std::fmt::Display for UpstreamHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Self::Ip(ip) => ip.fmt(f),
            Self::Name(n) => f.write_str(n),
        }
    }
}

/// One upstream resolver, as written in `servers`. Plain ones default to
/// port 53, `tls://` to 853, `https://` to 443.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamAddr {
    /// The transport.
    pub protocol: UpstreamProtocol,
    /// The address or host name.
    pub host: UpstreamHost,
    /// The port.
    pub port: u16,
    /// The HTTP path of a DoH upstream (`/dns-query`); empty otherwise.
    pub path: String,
    /// The TLS server name (`#name`), when it is not the host.
    pub tls_name: Option<String>,
}

impl UpstreamAddr {
    /// Plain DNS to `addr`.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            protocol: UpstreamProtocol::Udp,
            host: UpstreamHost::Ip(addr.ip()),
            port: addr.port(),
            path: String::new(),
            tls_name: None,
        }
    }

    /// The socket address, when the host is an IP address.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            UpstreamHost::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            UpstreamHost::Name(_) => None,
        }
    }

    /// The name the server's certificate must be valid for.
    pub fn server_name(&self) -> String {
        match (&self.tls_name, &self.host) {
            (Some(name), _) => name.clone(),
            (None, UpstreamHost::Ip(ip)) => ip.to_string(),
            (None, UpstreamHost::Name(name)) => name.clone(),
        }
    }
}

/// A host name as accepted for upstreams: letters, digits, '-' and '.'.
fn host_name(s: &str) -> Option<String> {
    let s = s.trim_end_matches('.').to_ascii_lowercase();
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        });
    ok.then_some(s)
}

impl std::str::FromStr for UpstreamAddr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!(
                "invalid upstream {text:?}: {why}; expected \"IP[:port]\", \"tcp://IP[:port]\", \"tls://HOST[:port][#name]\" or \"https://HOST[:port]/path[#name]\""
            )
        };
        let (protocol, rest) = match text.split_once("://") {
            None => (UpstreamProtocol::Udp, text),
            Some(("udp", rest)) => (UpstreamProtocol::Udp, rest),
            Some(("tcp", rest)) => (UpstreamProtocol::Tcp, rest),
            Some(("tls", rest)) => (UpstreamProtocol::Tls, rest),
            Some(("https", rest)) => (UpstreamProtocol::Https, rest),
            Some((scheme, _)) => return Err(bad(&format!("unknown scheme {scheme:?}"))),
        };
        let (rest, tls_name) = match rest.split_once('#') {
            Some((rest, name)) => {
                let name = host_name(name).ok_or_else(|| bad("bad #name"))?;
                (rest, Some(name))
            }
            None => (rest, None),
        };
        let encrypted = matches!(protocol, UpstreamProtocol::Tls | UpstreamProtocol::Https);
        if tls_name.is_some() && !encrypted {
            return Err(bad("#name applies to tls:// and https:// only"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) if protocol == UpstreamProtocol::Https => (&rest[..i], &rest[i..]),
            Some(_) => return Err(bad("only https:// takes a path")),
            None if protocol == UpstreamProtocol::Https => (rest, "/dns-query"),
            None => (rest, ""),
        };
        let default_port = match protocol {
            UpstreamProtocol::Udp | UpstreamProtocol::Tcp => 53,
            UpstreamProtocol::Tls => 853,
            UpstreamProtocol::Https => 443,
        };
        let (host, port) = if let Ok(addr) = authority.parse::<SocketAddr>() {
            (UpstreamHost::Ip(addr.ip()), addr.port())
        } else if let Ok(ip) = authority
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        {
            (UpstreamHost::Ip(ip), default_port)
        } else {
            let (name, port) = match authority.rsplit_once(':') {
                Some((name, port)) => (name, port.parse().map_err(|_| bad("bad port"))?),
                None => (authority, default_port),
            };
            let name = host_name(name).ok_or_else(|| bad("bad host"))?;
            if !encrypted {
                return Err(bad("plain DNS upstreams are IP addresses"));
            }
            (UpstreamHost::Name(name), port)
        };
        Ok(Self {
            protocol,
            host,
            port,
            path: path.to_string(),
            tls_name,
        })
    }
}

impl<'de> Deserialize<'de> for UpstreamAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl std::fmt::Display for UpstreamAddr {
    /// The `upstream` metrics label: plain upstreams as `IP:port`, the
    /// others as a URL with their port and server name spelled out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = match self.protocol {
            UpstreamProtocol::Udp => "",
            UpstreamProtocol::Tcp => "tcp://",
            UpstreamProtocol::Tls => "tls://",
            UpstreamProtocol::Https => "https://",
        };
        write!(f, "{scheme}{}:{}{}", self.host, self.port, self.path)?;
        if let Some(name) = &self.tls_name {
            write!(f, "#{name}")?;
        }
        Ok(())
    }
}

/// `[local]`: names answered by telesink itself, authoritatively and
/// without asking an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// Local records: name → value, or a list of values. An IP address is an
    /// A or AAAA record (and its PTR is synthesised); a name is a CNAME
    /// (alone); under `in-addr.arpa`/`ip6.arpa` a name is a PTR record.
    /// `{ "nas.lan" = "192.168.1.10", "tv.lan" = "nas.lan" }`.
    #[serde(deserialize_with = "one_or_many_map")]
    pub records: BTreeMap<String, Vec<String>>,
    /// TTL of local answers, and of the negative answers for special-use
    /// names.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Answer special-use names locally and never forward them: `localhost`
    /// (loopback addresses), `invalid` and `onion` (NXDOMAIN), the Firefox
    /// canary `use-application-dns.net` (NXDOMAIN, so Firefox keeps using
    /// this resolver), `resolver.arpa` (no DDR designation), and the
    /// private, loopback and link-local reverse zones plus `home.arpa`
    /// (RFC 6303, RFC 8375: NXDOMAIN unless a `[[forward]]` rule or a local
    /// record covers the name), so private lookups never leak upstream.
    pub special_names: bool,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            records: BTreeMap::new(),
            ttl: Duration::from_secs(300),
            special_names: true,
        }
    }
}

/// A table whose values are a string or a list of strings.
fn one_or_many_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let map = BTreeMap::<String, OneOrMany>::deserialize(d).map_err(|_| {
        serde::de::Error::custom(
            "each local record is a name = \"value\" or name = [\"value\", ...] (IP addresses or one name)",
        )
    })?;
    Ok(map
        .into_iter()
        .map(|(k, v)| {
            let values = match v {
                OneOrMany::One(s) => vec![s],
                OneOrMany::Many(v) => v,
            };
            (k, values)
        })
        .collect())
}

/// One `[[forward]]` rule: conditional forwarding.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardConfig {
    /// Domains (with all their subdomains) sent to `servers` instead of
    /// `[upstream] servers`: `["lan", "168.192.in-addr.arpa"]`. When
    /// several rules match a name, the most specific domain wins.
    pub domains: Vec<String>,
    /// Resolvers for these domains, in the same forms as `[upstream]
    /// servers`, tried with the same strategy and timeout.
    pub servers: Vec<UpstreamAddr>,
}

/// `[cache]`: answers kept between upstream lookups.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Maximum number of cached answers (name, type, class); 0 turns the
    /// cache off. An answer that takes more than 1 KiB of memory counts
    /// once per KiB, so the cache never holds much more than `capacity`
    /// KiB. About 10,000 covers a busy household.
    pub capacity: usize,
    /// Cached TTLs are raised to at least this (not those of negative
    /// answers: a name that appears must not stay missing longer than its
    /// zone says).
    #[serde(with = "humantime_serde")]
    pub min_ttl: Duration,
    /// Cached TTLs, negative answers' included, are lowered to at most
    /// this (and to at most 2^31 - 1 seconds, RFC 2181 §8).
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Upper bound for negative answers (NXDOMAIN, NODATA), whose TTL comes
    /// from the SOA minimum (RFC 2308).
    #[serde(with = "humantime_serde")]
    pub negative_max_ttl: Duration,
    /// How long past its expiry an answer may still be served when no
    /// upstream answers (RFC 8767 serve-stale); "0s" turns it off.
    #[serde(with = "humantime_serde")]
    pub serve_stale: Duration,
    /// How long a query whose answer has expired waits for the upstreams
    /// before the stale answer goes out (RFC 8767 suggests 1.8 s at most).
    /// The request goes on in the background, and its answer, when it
    /// comes, replaces the stale one.
    #[serde(with = "humantime_serde")]
    pub stale_timeout: Duration,
    /// Refresh popular answers in the background in the last tenth of
    /// their TTL, so they never expire while in use; only while one of
    /// `[upstream] max_in_flight`'s slots is free, within its
    /// `total_timeout`.
    pub prefetch: bool,
    /// Cache hits an answer needs, since it was stored, before a hit in
    /// the last tenth of its TTL refreshes it in the background.
    pub prefetch_min_hits: u32,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: 10_000,
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(86_400),
            negative_max_ttl: Duration::from_secs(3_600),
            serve_stale: Duration::from_secs(86_400),
            stale_timeout: Duration::from_secs(1),
            prefetch: true,
            prefetch_min_hits: 3,
        }
    }
}

/// How a blocked name is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BlockMode {
    /// A → `sinkhole_ipv4` (0.0.0.0), AAAA → `sinkhole_ipv6` (::), other
    /// types NODATA. Apps fail fast instead of waiting on a timeout.
    #[default]
    Null,
    /// NXDOMAIN with an SOA so clients cache the denial.
    Nxdomain,
    /// NOERROR with no answer and an SOA.
    Nodata,
    /// REFUSED.
    Refused,
}

impl BlockMode {
    /// The name used in config and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Null => "null",
            Self::Nxdomain => "nxdomain",
            Self::Nodata => "nodata",
            Self::Refused => "refused",
        }
    }
}

/// `[blocking]`: the sinkhole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BlockingConfig {
    /// Turns blocking on or off as a whole; lists stay loaded.
    pub enabled: bool,
    /// How blocked names are answered: `null`, `nxdomain`, `nodata` or `refused`.
    pub mode: BlockMode,
    /// TTL of blocked answers: short enough that unblocking takes effect
    /// soon, long enough that a chatty app does not hammer the server.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Address returned for blocked A queries in `null` mode.
    pub sinkhole_ipv4: Ipv4Addr,
    /// Address returned for blocked AAAA queries in `null` mode.
    pub sinkhole_ipv6: Ipv6Addr,
    /// Block lists: a listed domain blocks itself and every subdomain.
    pub lists: Vec<ListConfig>,
    /// Allow lists: a listed domain and its subdomains are never blocked,
    /// even when a parent domain is on a block list.
    pub allow: Vec<ListConfig>,
    /// Check the CNAME targets (and HTTPS/SVCB target names) in upstream
    /// answers against the lists too, so a tracker hidden behind a
    /// first-party alias is still blocked.
    pub cname_check: bool,
    /// Regular expressions kept per list, block and `@@` ones together
    /// (the `@@` exceptions first); more are skipped with a warning (each
    /// costs matching time on every query).
    pub max_regex_per_list: usize,
    /// Where downloaded (`url`) lists are kept, so a reboot without
    /// internet still blocks. Default: `$STATE_DIRECTORY` (set by systemd);
    /// else, started as root with `[server] user`, `/var/cache/telesink`
    /// (made for that user before the switch); else
    /// `$XDG_CACHE_HOME/telesink`, else `~/.cache/telesink`.
    pub cache_dir: Option<PathBuf>,
    /// How long one list download may take.
    #[serde(with = "humantime_serde")]
    pub download_timeout: Duration,
    /// Largest list download accepted, in bytes; a larger one fails and
    /// the previous copy stays in use.
    pub download_max_bytes: u64,
}

impl BlockingConfig {
    /// The directory for downloaded lists, resolved as documented on
    /// [`BlockingConfig::cache_dir`], relative to `base_dir`.
    pub fn cache_dir(&self, base_dir: &Path) -> PathBuf {
        if let Some(dir) = &self.cache_dir {
            return base_dir.join(dir);
        }
        let env = |k: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        if let Some(state) = env("STATE_DIRECTORY") {
            // systemd may pass several, separated by ':'; the first is ours.
            let first = state
                .to_string_lossy()
                .split(':')
                .next()
                .unwrap_or_default()
                .to_string();
            return PathBuf::from(first);
        }
        // HOME and XDG_CACHE_HOME are still root's, which the user cannot
        // write to.
        if SWITCHED_USER.load(std::sync::atomic::Ordering::Relaxed) {
            return PathBuf::from(SYSTEM_CACHE_DIR);
        }
        if let Some(cache) = env("XDG_CACHE_HOME") {
            return cache.join("telesink");
        }
        if let Some(home) = env("HOME") {
            return home.join(".cache").join("telesink");
        }
        PathBuf::from(SYSTEM_CACHE_DIR)
    }
}

/// The cache directory of a system service.
pub(crate) const SYSTEM_CACHE_DIR: &str = "/var/cache/telesink";

/// Set once this process, started as root, is about to switch to
/// `[server] user` (see [`BlockingConfig::cache_dir`]).
static SWITCHED_USER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Records that this process switches to `[server] user`; from now on
/// [`BlockingConfig::cache_dir`] gives the directory for that user.
pub(crate) fn note_switched_user() {
    SWITCHED_USER.store(true, std::sync::atomic::Ordering::Relaxed);
}

impl Default for BlockingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: BlockMode::Null,
            ttl: Duration::from_secs(60),
            sinkhole_ipv4: Ipv4Addr::UNSPECIFIED,
            sinkhole_ipv6: Ipv6Addr::UNSPECIFIED,
            lists: Vec::new(),
            allow: Vec::new(),
            cname_check: true,
            max_regex_per_list: 1000,
            cache_dir: None,
            download_timeout: Duration::from_secs(60),
            download_max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// One `[[blocking.lists]]` or `[[blocking.allow]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListConfig {
    /// The list's name: the `list` label in metrics, so keep it short and
    /// stable (a vendor name is ideal).
    pub name: String,
    /// A local file, relative to the config file's directory.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// A list compiled into telesink: `builtin:NAME` (see `blocklists/`).
    #[serde(default)]
    pub source: Option<String>,
    /// A list downloaded over HTTP(S), kept in `cache_dir` between runs.
    #[serde(default)]
    pub url: Option<String>,
    /// How often a `url` list is downloaded again (conditional GET, so an
    /// unchanged list costs one small request).
    #[serde(default, with = "humantime_serde")]
    pub refresh: Option<Duration>,
}

/// How often `url` lists are refreshed unless `refresh` says otherwise.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(24 * 3600);

/// Where a list's text comes from, once the config has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListSource {
    /// A file on disk, already resolved against the config's directory.
    File(PathBuf),
    /// A list compiled into the binary, by name.
    Builtin(String),
    /// A list downloaded from this URL.
    Url(String),
}

impl std::fmt::Display for ListSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::File(p) => write!(f, "{}", p.display()),
            Self::Builtin(n) => write!(f, "builtin:{n}"),
            Self::Url(u) => f.write_str(u),
        }
    }
}

impl ListConfig {
    /// The single source of this list; `validate` guarantees there is one.
    pub fn resolved_source(&self, base_dir: &Path) -> ListSource {
        match (&self.path, &self.source, &self.url) {
            (Some(p), _, _) => ListSource::File(base_dir.join(p)),
            (None, Some(s), _) => {
                ListSource::Builtin(s.strip_prefix("builtin:").unwrap_or(s.as_str()).to_string())
            }
            (None, None, Some(u)) => ListSource::Url(u.clone()),
            (None, None, None) => unreachable!("validated: every list has a source"),
        }
    }
}

/// The most `[http] recent_blocked` may be (about 40 MB).
pub const MAX_RECENT_BLOCKED: usize = 100_000;

/// `[http]`: metrics, health and the admin API.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the HTTP listener for `/metrics` and `/healthz`; an empty
    /// string turns it off. Keep it on loopback or a trusted network.
    #[serde(deserialize_with = "optional_addr")]
    pub listen: Option<SocketAddr>,
    /// Serve the admin API (`/api/reload`, `/api/explain`, `/api/blocking`,
    /// `/api/blocked`, `/api/cache/flush`) besides `/metrics` and
    /// `/healthz`.
    pub api: bool,
    /// Blocked queries kept in memory for `GET /api/blocked` (time,
    /// client address and device, name, type, list), the newest replacing
    /// the oldest: what to look at when an app stops working. 0 keeps
    /// none, and so does a config without the admin API. They are never
    /// written to disk; each costs about 400 bytes, allocated at start;
    /// at most 100,000.
    pub recent_blocked: usize,
    /// Bearer token for the admin API: requests must send
    /// `Authorization: Bearer TOKEN`. Required when the API is on and
    /// `listen` is not a loopback address; telesink refuses to start
    /// otherwise.
    pub token: Option<String>,
    /// Bearer token for `/metrics`. Unset, `/metrics` answers scrapers
    /// (Prometheus) without one, but refuses requests a web page makes
    /// (`Origin`, `Sec-Fetch-Site`) and a `Host` that is neither an
    /// address, `localhost`, a single label nor a LAN name: device and list
    /// names are private. Set it to scrape by a public name.
    pub metrics_token: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 9153))),
            api: true,
            recent_blocked: 500,
            token: None,
            metrics_token: None,
        }
    }
}

/// `[security]`: protection against abusive clients and hostile answers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Per-client query rate limit.
    pub rate_limit: RateLimitConfig,
    /// DNS-rebinding protection: an upstream answer for a name outside
    /// `rebind_allow` whose A/AAAA records point into private, loopback,
    /// link-local, ULA or CGNAT ranges (or 0.0.0.0/8) is answered as blocked
    /// (list `rebind`), so a web page cannot make the browser talk to the
    /// router or a NAS through a public name. Off by default, as in dnsmasq
    /// (`stop-dns-rebind`): it breaks services that deliberately publish
    /// private addresses under public names (`*.plex.direct`, some
    /// router and NAS apps, split-horizon VPN names) until they are added
    /// to `rebind_allow`.
    pub rebind_protection: bool,
    /// Domains (and their subdomains) whose answers may point into private
    /// ranges: the names the LAN itself uses.
    pub rebind_allow: Vec<String>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            rate_limit: RateLimitConfig::default(),
            rebind_protection: false,
            rebind_allow: default_rebind_allow(),
        }
    }
}

/// `[security] rate_limit`: a token bucket per client address.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained queries per second allowed per client address; 0 turns
    /// the limit off. The default is far above what any home device sends
    /// (a phone averages well under 1 query per second).
    pub rate: u32,
    /// Queries a client may send at once before the rate applies (an app
    /// start or a page load sends dozens together).
    pub burst: u32,
    /// Networks never limited: put your router here if it forwards DNS for
    /// the whole LAN, or every device would share one bucket. The default
    /// exempts loopback (this machine's own programs, and benchmarks).
    pub exempt: Vec<IpNet>,
    /// What a client over its limit gets: `"refuse"` (REFUSED) or `"drop"`
    /// (no answer; cheaper under a spoofed flood, but clients retry).
    pub action: RateLimitAction,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            rate: 200,
            burst: 1000,
            exempt: vec![
                "127.0.0.0/8".parse().expect("valid network"),
                "::1/128".parse().expect("valid network"),
            ],
            action: RateLimitAction::Refuse,
        }
    }
}

/// See [`RateLimitConfig::action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RateLimitAction {
    /// Answer REFUSED.
    #[default]
    Refuse,
    /// Send nothing over UDP (a flood from forged sources gets no
    /// replies to aim at them); REFUSED over TCP, where no source is forged.
    Drop,
}

/// Home-network names that legitimately resolve to private addresses:
/// `lan`, `home.arpa` (RFC 8375), `local`, `internal`, and `localhost`
/// (RFC 6761).
pub fn default_rebind_allow() -> Vec<String> {
    ["lan", "home.arpa", "local", "internal", "localhost"]
        .iter()
        .map(|s| (*s).to_string())
        .collect()
}

/// `[metrics]`: how clients are labelled.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// What unnamed clients are called in the `client` label: `"name"`
    /// counts them all as `unknown`; `"ip"` uses their address, for the
    /// first `max_clients` addresses only (then `other`), so the number of
    /// series stays bounded.
    pub client_label: ClientLabel,
    /// Cap on distinct address labels with `client_label = "ip"`.
    pub max_clients: usize,
    /// How often MAC addresses of `[[clients]]` are re-resolved to IP
    /// addresses from the kernel's neighbour tables.
    #[serde(with = "humantime_serde")]
    pub neighbour_refresh: Duration,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            client_label: ClientLabel::Name,
            max_clients: 64,
            neighbour_refresh: Duration::from_secs(30),
        }
    }
}

/// See [`MetricsConfig::client_label`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientLabel {
    /// Unnamed clients are `unknown`.
    #[default]
    Name,
    /// Unnamed clients are labelled by address, capped.
    Ip,
}

/// One `[[clients]]` entry: a named device.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The device's name, used as the `client` label (`"phone-anna"`).
    pub name: String,
    /// Addresses or networks of the device (`"192.168.1.23"`, `"fd00::/64"`).
    #[serde(default, deserialize_with = "nets")]
    pub ips: Vec<IpNet>,
    /// MAC addresses of the device (`"aa:bb:cc:dd:ee:ff"`), resolved to its
    /// current addresses from the neighbour tables. Phones use a private
    /// MAC per network: use the one shown in the phone's Wi-Fi details.
    #[serde(default)]
    pub macs: Vec<String>,
}

/// Accepts bare addresses as single-host networks.
fn nets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let items = Vec::<String>::deserialize(d)?;
    items
        .iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| serde::de::Error::custom(format!("invalid address or network {s:?}")))
        })
        .collect()
}

fn optional_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("invalid address {s:?}: {e}")))
}

impl Config {
    /// Reads and validates a configuration file. Relative paths in it resolve
    /// against the file's directory.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let mut config = Self::from_toml(&text, &path.display().to_string(), &base)?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// The embedded default configuration.
    pub fn embedded_default() -> Self {
        Self::from_toml(DEFAULT_CONFIG, DEFAULT_CONFIG_NAME, Path::new("."))
            .expect("the embedded default config is valid (tested)")
    }

    /// Parses and validates configuration text. `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let mut config: Self = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| line_column(text, s.start))
                .unwrap_or((1, 1));
            ConfigError::Parse {
                path: origin.to_string(),
                line,
                column,
                message: e.message().trim().to_string(),
            }
        })?;
        config.base_dir = base_dir.to_path_buf();
        config.origin = origin.to_string();
        config.validate(text)?;
        Ok(config)
    }

    /// Checks what serde cannot: every list has exactly one source, names
    /// are unique, the builtin lists exist, there is something to listen on.
    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        // An error at a line and column when one is known; otherwise it
        // names the file.
        let at_line = |at: Option<(usize, usize)>, message: String| -> ConfigError {
            match at {
                Some((line, column)) => ConfigError::Parse {
                    path: self.origin.clone(),
                    line,
                    column,
                    message,
                },
                None => ConfigError::Invalid {
                    path: self.origin.clone(),
                    message,
                },
            }
        };
        // A problem about a named list points at the line of its name, when
        // the name can be found in the text.
        let located = |at: Option<usize>, message: String| {
            at_line(at.map(|at| line_column(text, at)), message)
        };
        let fail = |near: Option<&str>, message: String| {
            located(near.and_then(|n| text.find(&format!("\"{n}\""))), message)
        };
        // A name used twice is pointed at where it is used again.
        let fail_again = |near: Option<&str>, message: String| {
            let second = near.and_then(|n| {
                let quoted = format!("\"{n}\"");
                let first = text.find(&quoted)?;
                let after = first + quoted.len();
                text[after..].find(&quoted).map(|at| after + at)
            });
            located(second, message)
        };
        // A problem with one setting points at its key.
        let at_key = |table: &str, key: &str, message: String| {
            at_line(key_position(text, table, key), message)
        };
        if !(1..=64).contains(&self.server.udp_threads) {
            return Err(at_key(
                "server",
                "udp_threads",
                "[server] udp_threads must be between 1 and 64".into(),
            ));
        }
        if self.server.udp_max_waiting == 0 {
            return Err(at_key(
                "server",
                "udp_max_waiting",
                "[server] udp_max_waiting must be at least 1".into(),
            ));
        }
        if self.blocking.download_max_bytes == 0 {
            return Err(at_key(
                "blocking",
                "download_max_bytes",
                "[blocking] download_max_bytes must be greater than 0 (every download would fail)"
                    .into(),
            ));
        }
        // Allocated whole at start, about 400 bytes a slot: a typo of a few
        // zeros must not take the memory of a Pi.
        if self.http.recent_blocked > MAX_RECENT_BLOCKED {
            return Err(at_key(
                "http",
                "recent_blocked",
                format!("[http] recent_blocked must be at most {MAX_RECENT_BLOCKED}"),
            ));
        }
        // Below 512 EDNS means nothing (RFC 6891 §6.2.5); above 4096 a
        // reply is fragmented on any path, and past 65,507 it cannot be
        // sent at all.
        if !(512..=4096).contains(&self.server.edns_udp_size) {
            return Err(at_key(
                "server",
                "edns_udp_size",
                "[server] edns_udp_size must be between 512 and 4096 (1232 avoids fragmentation)"
                    .into(),
            ));
        }
        // A zero duration here would fail every query or connection, or
        // stop a periodic task, long after the config was accepted.
        for (table, key, value) in [
            ("server", "tcp_timeout", self.server.tcp_timeout),
            (
                "server",
                "tcp_first_byte_timeout",
                self.server.tcp_first_byte_timeout,
            ),
            ("upstream", "timeout", self.upstream.timeout),
            ("upstream", "total_timeout", self.upstream.total_timeout),
            // 0 would close a connection a millisecond after each query
            // and open a new one (a TLS handshake) for the next.
            ("upstream", "idle_timeout", self.upstream.idle_timeout),
            // 0 would fail every download, for good.
            (
                "blocking",
                "download_timeout",
                self.blocking.download_timeout,
            ),
            (
                "metrics",
                "neighbour_refresh",
                self.metrics.neighbour_refresh,
            ),
        ] {
            if value.is_zero() {
                return Err(at_key(
                    table,
                    key,
                    format!("[{table}] {key} must be greater than 0"),
                ));
            }
        }
        if self.server.group.is_some() && self.server.user.is_none() {
            return Err(at_key(
                "server",
                "group",
                "[server] group applies only with [server] user (the user to switch to)".into(),
            ));
        }
        if self.server.listen.is_empty() {
            return Err(at_key(
                "server",
                "listen",
                "[server] listen: at least one address is needed".into(),
            ));
        }
        if self.upstream.servers.is_empty() {
            return Err(at_key(
                "upstream",
                "servers",
                "[upstream] servers: at least one upstream resolver is needed".into(),
            ));
        }
        // Each upstream with where it is set: `[upstream] servers`, or the
        // header of its `[[forward]]` rule.
        let named = self
            .upstream
            .servers
            .iter()
            .map(|u| (u, key_position(text, "upstream", "servers")))
            .chain(self.forward.iter().enumerate().flat_map(|(i, rule)| {
                let at = table_position(text, "forward", i).map(|at| line_column(text, at));
                rule.servers.iter().map(move |u| (u, at))
            }))
            .find(|(u, _)| matches!(u.host, UpstreamHost::Name(_)));
        if let Some((upstream, at)) = named
            && self.upstream.bootstrap.is_empty()
        {
            let message = format!(
                "upstream {upstream} is given by name: set [upstream] bootstrap to plain DNS resolvers (IP addresses) that resolve it"
            );
            return Err(at_line(at, message));
        }
        if let Some(b) = self
            .upstream
            .bootstrap
            .iter()
            .find(|b| b.protocol != UpstreamProtocol::Udp)
        {
            return Err(at_key(
                "upstream",
                "bootstrap",
                format!(
                    "[upstream] bootstrap: {b} must be a plain DNS resolver, \"IP\" or \"IP:port\""
                ),
            ));
        }
        if let Some(ca_file) = &self.upstream.ca_file {
            let path = self.base_dir.join(ca_file);
            let certs = std::fs::read(&path).map_err(|e| {
                at_key(
                    "upstream",
                    "ca_file",
                    format!("[upstream] ca_file {}: {e}", path.display()),
                )
            })?;
            if !String::from_utf8_lossy(&certs).contains("-----BEGIN CERTIFICATE-----") {
                return Err(at_key(
                    "upstream",
                    "ca_file",
                    format!(
                        "[upstream] ca_file {}: no PEM certificate in it",
                        path.display()
                    ),
                ));
            }
        }
        if let Err(message) = crate::resolver::LocalRecords::parse(&self.local) {
            let name = message.split('"').nth(1).map(str::to_string);
            return Err(fail(name.as_deref(), format!("[local] records: {message}")));
        }
        let mut forwarded = std::collections::HashSet::new();
        for (index, rule) in self.forward.iter().enumerate() {
            if rule.servers.is_empty() || rule.domains.is_empty() {
                return Err(located(
                    table_position(text, "forward", index),
                    "[[forward]]: every rule needs `domains` and `servers`".into(),
                ));
            }
            for domain in &rule.domains {
                let Some(name) = parse_domain(domain) else {
                    return Err(fail(
                        Some(domain),
                        format!("[[forward]] domains: {domain:?} is not a domain name"),
                    ));
                };
                if !forwarded.insert(name) {
                    return Err(fail(
                        Some(domain),
                        format!("[[forward]] domains: {domain:?} is in two rules"),
                    ));
                }
            }
        }
        if self.cache.min_ttl > self.cache.max_ttl {
            return Err(at_key(
                "cache",
                "min_ttl",
                "[cache] min_ttl is greater than max_ttl".into(),
            ));
        }
        let label_ok = |name: &str| {
            !name.is_empty()
                && name.len() <= 64
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let mut devices = std::collections::HashSet::new();
        for client in &self.clients {
            let here = Some(client.name.as_str());
            if !label_ok(&client.name)
                || client.name == crate::clients::UNKNOWN
                || client.name == crate::clients::OTHER
            {
                return Err(fail(
                    here,
                    format!(
                        "[[clients]] name {:?}: use up to 64 letters, digits, '-', '_' or '.'; \"unknown\" and \"other\" are reserved",
                        client.name
                    ),
                ));
            }
            if !devices.insert(client.name.as_str()) {
                return Err(fail_again(
                    here,
                    format!("[[clients]] name {:?} is used twice", client.name),
                ));
            }
            if client.ips.is_empty() && client.macs.is_empty() {
                return Err(fail(
                    here,
                    format!("[[clients]] {:?}: give `ips` or `macs`", client.name),
                ));
            }
            if let Some(bad) = client
                .macs
                .iter()
                .find(|m| crate::clients::normalize_mac(m).is_none())
            {
                return Err(fail(
                    Some(bad.as_str()),
                    format!(
                        "[[clients]] {:?}: invalid MAC address {bad:?} (expected aa:bb:cc:dd:ee:ff)",
                        client.name
                    ),
                ));
            }
        }
        if let Some(bad) = self
            .security
            .rebind_allow
            .iter()
            .find(|d| crate::resolver::rebind_domain(d).is_none())
        {
            return Err(fail(
                Some(bad.as_str()),
                format!("[security] rebind_allow: {bad:?} is not a domain name"),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (table, lists) in [
            ("blocking.lists", &self.blocking.lists),
            ("blocking.allow", &self.blocking.allow),
        ] {
            for list in lists {
                let here = Some(list.name.as_str());
                if list.name == crate::resolver::REBIND_LIST {
                    return Err(fail(
                        here,
                        format!(
                            "[[{table}]] name {:?} is reserved for answers blocked by [security] rebind_protection",
                            list.name
                        ),
                    ));
                }
                if !label_ok(&list.name) {
                    return Err(fail(
                        here,
                        format!(
                            "[[{table}]] name {:?}: use letters, digits, '-', '_' or '.' (it becomes a metrics label)",
                            list.name
                        ),
                    ));
                }
                if !seen.insert(list.name.as_str()) {
                    return Err(fail_again(
                        here,
                        format!(
                            "[[{table}]] name {:?} is used twice; names must be unique",
                            list.name
                        ),
                    ));
                }
                let sources = [
                    list.path.is_some(),
                    list.source.is_some(),
                    list.url.is_some(),
                ];
                if sources.iter().filter(|s| **s).count() != 1 {
                    return Err(fail(
                        here,
                        format!(
                            "[[{table}]] {:?}: give exactly one of `path`, `source` or `url`",
                            list.name
                        ),
                    ));
                }
                if list.refresh.is_some() && list.url.is_none() {
                    return Err(fail(
                        here,
                        format!(
                            "[[{table}]] {:?}: `refresh` applies to `url` lists only (local files are watched)",
                            list.name
                        ),
                    ));
                }
                if list.refresh.is_some_and(|r| r < Duration::from_secs(60)) {
                    return Err(fail(
                        here,
                        format!("[[{table}]] {:?}: `refresh` must be at least 1m", list.name),
                    ));
                }
                if let Some(url) = &list.url
                    && !(url.starts_with("http://") || url.starts_with("https://"))
                {
                    return Err(fail(
                        Some(url.as_str()),
                        format!(
                            "[[{table}]] {:?}: url {url:?} must start with http:// or https://",
                            list.name
                        ),
                    ));
                }
                if let Some(s) = &list.source {
                    let Some(name) = s.strip_prefix("builtin:") else {
                        return Err(fail(
                            here,
                            format!(
                                "[[{table}]] {:?}: source {s:?} is not supported; use \"builtin:NAME\", `path` or `url`",
                                list.name
                            ),
                        ));
                    };
                    if crate::lists::builtin(name).is_none() {
                        return Err(fail(
                            here,
                            format!(
                                "[[{table}]] {:?}: no builtin list {name:?}; builtin lists are: {}",
                                list.name,
                                crate::lists::builtin_names().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(addr) = self.http.listen
            && self.http.api
            && !addr.ip().is_loopback()
            && self.http.token.as_deref().is_none_or(str::is_empty)
        {
            return Err(at_key(
                "http",
                "listen",
                format!(
                    "[http] listen = \"{addr}\" is not a loopback address: set [http] token so the admin API is not open to the network, set [http] api = false, or listen on 127.0.0.1"
                ),
            ));
        }
        let total = self.blocking.lists.len() + self.blocking.allow.len();
        if total > crate::lists::MAX_LISTS {
            // Pointed at the first list past the limit.
            let first_over = self
                .blocking
                .lists
                .iter()
                .chain(&self.blocking.allow)
                .nth(crate::lists::MAX_LISTS)
                .map(|l| l.name.as_str());
            return Err(fail(
                first_over,
                format!(
                    "{total} lists configured; at most {} block and allow lists together are supported (merge some files)",
                    crate::lists::MAX_LISTS
                ),
            ));
        }
        Ok(())
    }
}

/// A configured domain name as a lowercase fully qualified name; `None`
/// for text that is not a name. The root (`"."`) is refused: that is what
/// `[upstream] servers` is for.
pub fn parse_domain(s: &str) -> Option<hickory_proto::rr::LowerName> {
    let s = s.trim().trim_end_matches('.');
    if s.is_empty() || s.contains(char::is_whitespace) {
        return None;
    }
    let mut name = hickory_proto::rr::Name::from_ascii(s).ok()?.to_lowercase();
    name.set_fqdn(true);
    Some(hickory_proto::rr::LowerName::from(name))
}

/// The line and column of `key` in `[table]` of `text`: the key itself,
/// not a comment that names it. `None` if it is not there (a default).
fn key_position(text: &str, table: &str, key: &str) -> Option<(usize, usize)> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let (_, section) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == table)?;
    let DeValue::Table(section) = section.get_ref() else {
        return None;
    };
    let (k, _) = section.iter().find(|(k, _)| k.get_ref() == key)?;
    Some(line_column(text, k.span().start))
}

/// Where the `index`-th `[[name]]` table of `text` starts (its header),
/// as a byte offset.
fn table_position(text: &str, name: &str, index: usize) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let (_, tables) = doc.get_ref().iter().find(|(k, _)| k.get_ref() == name)?;
    let DeValue::Array(tables) = tables.get_ref() else {
        return None;
    };
    tables.get(index).map(|table| table.span().start)
}

/// 1-based line and column of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert!(!c.blocking.lists.is_empty());
        assert_eq!(c.http.listen, Some("127.0.0.1:9153".parse().unwrap()));
    }

    #[test]
    fn unknown_key_reports_line_and_column() {
        let err = Config::from_toml("[server]\n\nlisen = []\n", "x.toml", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x.toml:3:1: unknown field `lisen`"),
            "{err}"
        );
    }

    #[test]
    fn durations_and_addresses() {
        let c = Config::from_toml(
            "[upstream]\nservers = [\"127.0.0.1\", \"[::1]:5300\", \"udp://10.0.0.1:53\"]\ntimeout = \"500ms\"\n[cache]\nmax_ttl = \"1d\"\n",
            "x",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(c.upstream.timeout, Duration::from_millis(500));
        assert_eq!(
            c.upstream.servers[0].socket_addr(),
            Some("127.0.0.1:53".parse().unwrap())
        );
        assert_eq!(
            c.upstream.servers[1].socket_addr(),
            Some("[::1]:5300".parse().unwrap())
        );
        assert_eq!(c.upstream.servers[1].to_string(), "[::1]:5300");
        assert_eq!(c.cache.max_ttl, Duration::from_secs(86_400));
    }

    #[test]
    fn upstream_urls() {
        let u = |s: &str| s.parse::<UpstreamAddr>().map(|u| u.to_string());
        assert_eq!(u("9.9.9.9").unwrap(), "9.9.9.9:53");
        assert_eq!(u("tcp://[2620:fe::fe]").unwrap(), "tcp://[2620:fe::fe]:53");
        assert_eq!(
            u("tls://9.9.9.9#dns.quad9.net").unwrap(),
            "tls://9.9.9.9:853#dns.quad9.net"
        );
        assert_eq!(
            u("tls://dns.quad9.net:8853").unwrap(),
            "tls://dns.quad9.net:8853"
        );
        assert_eq!(
            u("https://1.1.1.1/dns-query#cloudflare-dns.com").unwrap(),
            "https://1.1.1.1:443/dns-query#cloudflare-dns.com"
        );
        assert_eq!(
            u("https://dns.google").unwrap(),
            "https://dns.google:443/dns-query"
        );
        let tls: UpstreamAddr = "tls://[::1]:853".parse().unwrap();
        assert_eq!(tls.server_name(), "::1");
        for bad in [
            "dns.quad9.net",
            "udp://9.9.9.9#name",
            "tls://9.9.9.9/path",
            "quic://9.9.9.9",
            "tls://bad name",
            "https://host:port/x",
        ] {
            assert!(u(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_values_are_located() {
        let err = Config::from_toml(
            "[upstream]\nservers = [\"nonsense\"]\n",
            "x",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("x:2:"), "{err}");
        let err = Config::from_toml("[cache]\nmin_ttl = \"5 parsecs\"\n", "x", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("x:2:11:"), "{err}");
    }

    #[test]
    fn edns_udp_size_is_bounded() {
        for (size, ok) in [
            (511, false),
            (512, true),
            (1232, true),
            (4096, true),
            (4097, false),
        ] {
            let text =
                format!("[server]\n# edns_udp_size: see the README\nedns_udp_size = {size}\n");
            match Config::from_toml(&text, "x", Path::new(".")) {
                Ok(_) => assert!(ok, "{size} accepted"),
                Err(e) => {
                    assert!(!ok, "{size}: {e}");
                    assert!(e.to_string().starts_with("x:3:1: "), "{e}");
                }
            }
        }
    }

    #[test]
    fn download_max_bytes_zero_is_refused() {
        let parse = |n: u64| {
            Config::from_toml(
                &format!("[blocking]\ndownload_max_bytes = {n}\n"),
                "x",
                Path::new("."),
            )
        };
        assert!(parse(1).is_ok());
        let err = parse(0).unwrap_err().to_string();
        assert!(
            err.starts_with("x:2:1: [blocking] download_max_bytes must be greater than 0"),
            "{err}"
        );
    }

    /// A name used twice is reported where it is used again.
    #[test]
    fn a_name_used_twice_points_at_its_second_use() {
        let text = "[[blocking.lists]]\nname = \"a\"\npath = \"a.txt\"\n\
                    [[blocking.lists]]\nname = \"a\"\npath = \"b.txt\"\n";
        let err = Config::from_toml(text, "x", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x:5:8: [[blocking.lists]] name \"a\" is used twice"),
            "{err}"
        );
        // Not its third use, nor a list of the same name further down.
        let text = "[[clients]]\nname = \"tv\"\nips = [\"192.168.1.2\"]\n\
                    [[clients]]\nname = \"tv\"\nips = [\"192.168.1.3\"]\n\
                    [[clients]]\nname = \"tv\"\nips = [\"192.168.1.4\"]\n";
        let err = Config::from_toml(text, "x", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("x:5:8: [[clients]] name \"tv\" is used twice"),
            "{err}"
        );
    }

    #[test]
    fn recent_blocked_is_bounded() {
        let parse = |n: usize| {
            Config::from_toml(
                &format!("[http]\nrecent_blocked = {n}\n"),
                "x",
                Path::new("."),
            )
        };
        assert!(parse(MAX_RECENT_BLOCKED).is_ok());
        assert_eq!(
            parse(MAX_RECENT_BLOCKED + 1).unwrap_err().to_string(),
            "x:2:1: [http] recent_blocked must be at most 100000"
        );
    }

    #[test]
    fn zero_durations_are_refused_at_their_key() {
        for (table, key) in [
            ("server", "tcp_timeout"),
            ("server", "tcp_first_byte_timeout"),
            ("upstream", "timeout"),
            ("upstream", "total_timeout"),
            ("upstream", "idle_timeout"),
            ("blocking", "download_timeout"),
            ("metrics", "neighbour_refresh"),
        ] {
            let text = format!("[{table}]\n# {key} = \"1s\"\n  {key} = \"0s\"\n");
            let err = Config::from_toml(&text, "x", Path::new("."))
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!("x:3:3: [{table}] {key} must be greater than 0")
            );
            let text = text.replace("\"0s\"", "\"1ms\"");
            assert!(
                Config::from_toml(&text, "x", Path::new(".")).is_ok(),
                "{text}"
            );
        }
    }

    #[test]
    fn settings_checked_after_parsing_name_their_line() {
        for (text, at) in [
            ("[server]\nudp_threads = 0\n", "x:2:1: "),
            ("[server]\nudp_max_waiting = 0\n", "x:2:1: "),
            ("[cache]\nmax_ttl = \"1m\"\nmin_ttl = \"2m\"\n", "x:3:1: "),
            ("[http]\napi = true\nlisten = \"0.0.0.0:9153\"\n", "x:3:1: "),
            ("[server]\ngroup = \"telesink\"\n", "x:2:1: "),
        ] {
            let err = Config::from_toml(text, "x", Path::new("."))
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(at), "{text}: {err}");
        }
        let ok = "[server]\nuser = \"telesink\"\ngroup = \"telesink\"\n";
        assert!(Config::from_toml(ok, "x", Path::new(".")).is_ok());
    }

    #[test]
    fn settings_checked_as_a_whole_name_their_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
        let lists: String = (0..=crate::lists::MAX_LISTS)
            .map(|i| format!("[[blocking.lists]]\nname = \"l{i}\"\npath = \"l{i}.txt\"\n"))
            .collect();
        let over = 3 * crate::lists::MAX_LISTS + 2;
        for (text, at) in [
            ("[server]\n\nlisten = []\n".to_string(), "x:3:1: "),
            ("[upstream]\n# servers\nservers = []\n".into(), "x:3:1: "),
            (
                "[upstream]\n# servers = [\"tls://dns.example\"]\nservers = [\"tls://dns.example\"]\n"
                    .into(),
                "x:3:1: ",
            ),
            (
                "[[forward]]\ndomains = [\"lan\"]\nservers = [\"192.0.2.1\"]\n\
                 # dns.example\n[[forward]]\ndomains = [\"corp\"]\nservers = [\"tls://dns.example\"]\n"
                    .into(),
                "x:5:1: ",
            ),
            (
                "[upstream]\nbootstrap = [\"tls://1.1.1.1\"]\n".into(),
                "x:2:1: ",
            ),
            ("[upstream]\nca_file = \"missing.pem\"\n".into(), "x:2:1: "),
            ("[upstream]\nca_file = \"ca.pem\"\n".into(), "x:2:1: "),
            (
                "[[forward]]\ndomains = [\"lan\"]\nservers = [\"192.0.2.1\"]\n\
                 [[forward]]\ndomains = [\"home.arpa\"]\nservers = []\n"
                    .into(),
                "x:4:1: ",
            ),
            (lists, &*format!("x:{over}:8: ")),
        ] {
            let err = Config::from_toml(&text, "x", dir.path())
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(at), "{text}: {err}");
        }
    }

    #[test]
    fn list_needs_one_source() {
        let err = Config::from_toml("[[blocking.lists]]\nname = \"a\"\n", "x", Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exactly one of `path`, `source` or `url`"),
            "{err}"
        );
        let err = Config::from_toml(
            "[[blocking.lists]]\nname = \"a\"\nsource = \"builtin:nope\"\n",
            "x",
            Path::new("."),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("x:2:8: [[blocking.lists]]") && err.contains("no builtin list"),
            "{err}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        let c = Config::from_toml(
            "[[blocking.lists]]\nname = \"mine\"\npath = \"lists/mine.txt\"\n",
            "x",
            Path::new("/etc/telesink"),
        )
        .unwrap();
        assert_eq!(
            c.blocking.lists[0].resolved_source(&c.base_dir),
            ListSource::File(PathBuf::from("/etc/telesink/lists/mine.txt"))
        );
    }

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
