//! Named devices: which configured client a query came from.
//!
//! `[[clients]]` entries name devices by address, network or MAC address.
//! MAC addresses are mapped to the device's current IP from the kernel's
//! neighbour tables (`/proc/net/arp` for IPv4, `ip -6 neigh` for IPv6),
//! refreshed periodically, because phones change addresses and use private
//! (randomised) MACs per network. The table is an immutable snapshot behind
//! an `ArcSwap`, rebuilt by one refresh task.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use ipnet::IpNet;

use crate::config::{ClientConfig, ClientLabel, MetricsConfig};
use crate::metrics::ClientHandles;

/// Label for clients that match no `[[clients]]` entry.
pub const UNKNOWN: &str = "unknown";
/// Label for clients beyond `max_clients` in `client_label = "ip"` mode.
pub const OTHER: &str = "other";

/// A device as the metrics know it: its bounded `client` label, and the
/// metric handles for that label, resolved on a query's first use so the
/// queries after it cost atomic increments instead of a label hash and a
/// lock per metric.
#[derive(Debug)]
pub struct Device {
    /// The `client` label: a configured name, `unknown`, `other`, or (with
    /// `client_label = "ip"`) the address.
    pub name: Arc<str>,
    pub(crate) handles: ClientHandles,
}

impl Device {
    fn new(name: impl Into<Arc<str>>) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            handles: ClientHandles::default(),
        })
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Which device names the addresses belong to, at one moment.
#[derive(Debug, Default)]
struct Table {
    /// Exact addresses: configured single IPs and MAC-resolved neighbours.
    exact: HashMap<IpAddr, Arc<Device>>,
    /// Configured networks, most specific first.
    networks: Vec<(IpNet, Arc<Device>)>,
}

/// Resolves client addresses to bounded metric labels.
pub struct Clients {
    configured: Vec<ClientConfig>,
    table: ArcSwap<Table>,
    label: ClientLabel,
    max_clients: usize,
    /// `client_label = "ip"` only: addresses given their own label so far,
    /// with it.
    seen_ips: Mutex<HashMap<IpAddr, Arc<Device>>>,
    unknown: Arc<Device>,
    other: Arc<Device>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients")
            .field("configured", &self.configured.len())
            .finish()
    }
}

fn normalize_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A MAC address in lowercase `aa:bb:cc:dd:ee:ff` form, or `None`.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.split([':', '-']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || u8::from_str_radix(p, 16).is_err())
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

impl Clients {
    /// The device table for `clients` and `[metrics]`; MAC addresses are
    /// resolved from `neighbours` (MAC → addresses).
    pub fn new(clients: &[ClientConfig], metrics: &MetricsConfig) -> Self {
        let me = Self {
            configured: clients.to_vec(),
            table: ArcSwap::from_pointee(Table::default()),
            label: metrics.client_label,
            max_clients: metrics.max_clients,
            seen_ips: Mutex::new(HashMap::new()),
            unknown: Device::new(UNKNOWN),
            other: Device::new(OTHER),
        };
        me.refresh_from(&read_neighbours());
        me
    }

    /// Whether any entry names devices by MAC (so the neighbour tables must
    /// be re-read periodically).
    pub fn uses_macs(&self) -> bool {
        self.configured.iter().any(|c| !c.macs.is_empty())
    }

    /// Rebuilds the table from neighbour entries (MAC → addresses).
    pub fn refresh_from(&self, neighbours: &HashMap<String, Vec<IpAddr>>) {
        let mut table = Table::default();
        for client in &self.configured {
            let name = Device::new(client.name.as_str());
            for net in &client.ips {
                if net.prefix_len() == net.max_prefix_len() {
                    table.exact.insert(normalize_ip(net.addr()), name.clone());
                } else {
                    table.networks.push((*net, name.clone()));
                }
            }
            for mac in &client.macs {
                let Some(mac) = normalize_mac(mac) else {
                    continue;
                };
                for ip in neighbours.get(&mac).into_iter().flatten() {
                    table
                        .exact
                        .entry(normalize_ip(*ip))
                        .or_insert_with(|| name.clone());
                }
            }
        }
        table
            .networks
            .sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        self.table.store(Arc::new(table));
    }

    /// The label for a query from `ip`: a configured name, or `unknown`
    /// (or, with `client_label = "ip"`, the address itself for the first
    /// `max_clients` addresses and `other` after that).
    pub fn label(&self, ip: IpAddr) -> Arc<Device> {
        self.label_as(ip, true)
    }

    /// The label of a client refused by `allow_clients`: as [`Self::label`]
    /// gives, except that it never takes one of the `max_clients` address
    /// labels, which are for the LAN's own devices.
    pub fn outsider_label(&self, ip: IpAddr) -> Arc<Device> {
        self.label_as(ip, false)
    }

    fn label_as(&self, ip: IpAddr, may_take_address: bool) -> Arc<Device> {
        let ip = normalize_ip(ip);
        let table = self.table.load();
        if let Some(name) = table.exact.get(&ip) {
            return name.clone();
        }
        if let Some((_, name)) = table.networks.iter().find(|(net, _)| net.contains(&ip)) {
            return name.clone();
        }
        match self.label {
            ClientLabel::Name => self.unknown.clone(),
            ClientLabel::Ip => {
                let mut seen = self.seen_ips.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(label) = seen.get(&ip) {
                    label.clone()
                } else if may_take_address && seen.len() < self.max_clients {
                    // Formatted once per address, not once per query.
                    let label = Device::new(ip.to_string());
                    seen.insert(ip, label.clone());
                    label
                } else {
                    self.other.clone()
                }
            }
        }
    }

    /// Re-reads the neighbour tables every `every` until `shutdown`.
    pub async fn refresh_task(
        self: Arc<Self>,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        if !self.uses_macs() {
            return;
        }
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.cancelled() => return,
            }
            let neighbours = tokio::task::spawn_blocking(read_neighbours)
                .await
                .unwrap_or_default();
            self.refresh_from(&neighbours);
        }
    }
}

/// MAC → addresses from the kernel's neighbour tables. Missing tables (not
/// Linux, no `ip` command) yield what could be read.
pub fn read_neighbours() -> HashMap<String, Vec<IpAddr>> {
    let mut out = HashMap::new();
    if let Ok(text) = std::fs::read_to_string("/proc/net/arp") {
        parse_proc_arp(&text, &mut out);
    }
    if let Ok(output) = std::process::Command::new("ip")
        .args(["-6", "neigh", "show"])
        .output()
    {
        parse_ip_neigh(&String::from_utf8_lossy(&output.stdout), &mut out);
    }
    out
}

/// `/proc/net/arp`: `IP  HWtype  Flags  HWaddress  Mask  Device`.
pub fn parse_proc_arp(text: &str, out: &mut HashMap<String, Vec<IpAddr>>) {
    for line in text.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(ip), Some(flags), Some(mac)) = (fields.first(), fields.get(2), fields.get(3))
        else {
            continue;
        };
        // Flags 0x0 is an incomplete entry (no answer to ARP yet).
        if *flags == "0x0" {
            continue;
        }
        if let (Ok(ip), Some(mac)) = (ip.parse(), normalize_mac(mac)) {
            out.entry(mac).or_default().push(ip);
        }
    }
}

/// `ip -6 neigh show`: `ADDR dev IF lladdr MAC STATE`.
pub fn parse_ip_neigh(text: &str, out: &mut HashMap<String, Vec<IpAddr>>) {
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(ip) = fields.first().and_then(|f| f.parse::<IpAddr>().ok()) else {
            continue;
        };
        if fields
            .last()
            .is_some_and(|s| *s == "FAILED" || *s == "INCOMPLETE")
        {
            continue;
        }
        if let Some(mac) = fields
            .iter()
            .position(|f| *f == "lladdr")
            .and_then(|i| fields.get(i + 1))
            .and_then(|m| normalize_mac(m))
        {
            out.entry(mac).or_default().push(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str, ips: &[&str], macs: &[&str]) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            ips: ips.iter().map(|s| s.parse().unwrap()).collect(),
            macs: macs.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn names_by_address_network_and_mac() {
        let clients = Clients::new(
            &[
                client("phone", &["192.168.1.23/32"], &[]),
                client("iot", &["192.168.50.0/24"], &[]),
                client("tv", &[], &["AA-BB-CC-DD-EE-FF"]),
            ],
            &MetricsConfig::default(),
        );
        let mut n = HashMap::new();
        parse_proc_arp(
            "IP address       HW type     Flags       HW address            Mask     Device\n\
             192.168.1.40     0x1         0x2         aa:bb:cc:dd:ee:ff     *        eth0\n\
             192.168.1.41     0x1         0x0         00:00:00:00:00:00     *        eth0\n",
            &mut n,
        );
        parse_ip_neigh(
            "fd00::40 dev eth0 lladdr aa:bb:cc:dd:ee:ff REACHABLE\nfd00::41 dev eth0 FAILED\n",
            &mut n,
        );
        clients.refresh_from(&n);
        let label = |ip: &str| clients.label(ip.parse().unwrap()).to_string();
        assert_eq!(label("192.168.1.23"), "phone");
        assert_eq!(label("::ffff:192.168.1.23"), "phone");
        assert_eq!(label("192.168.50.7"), "iot");
        assert_eq!(label("192.168.1.40"), "tv");
        assert_eq!(label("fd00::40"), "tv");
        assert_eq!(label("192.168.1.41"), "unknown");
    }

    #[test]
    fn ip_labels_are_capped() {
        let metrics = MetricsConfig {
            client_label: ClientLabel::Ip,
            max_clients: 2,
            ..MetricsConfig::default()
        };
        let clients = Clients::new(&[], &metrics);
        let label = |ip: &str| clients.label(ip.parse().unwrap()).to_string();
        assert_eq!(label("10.0.0.1"), "10.0.0.1");
        assert_eq!(label("10.0.0.2"), "10.0.0.2");
        assert_eq!(label("10.0.0.3"), "other");
        assert_eq!(label("10.0.0.1"), "10.0.0.1");
        // Formatted once: later queries share the first label.
        let ip = "10.0.0.2".parse().unwrap();
        assert!(Arc::ptr_eq(&clients.label(ip), &clients.label(ip)));
    }

    #[test]
    fn mac_forms() {
        assert_eq!(
            normalize_mac("AA-bb-CC-dd-EE-ff").unwrap(),
            "aa:bb:cc:dd:ee:ff"
        );
        assert!(normalize_mac("aa:bb:cc").is_none());
        assert!(normalize_mac("zz:bb:cc:dd:ee:ff").is_none());
    }
}
