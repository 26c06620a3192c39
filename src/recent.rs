//! The last blocked queries, kept in memory for `GET /api/blocked`.
//!
//! "What did telesink just block for my TV?" is the first question after
//! an app stops working, and the metrics cannot answer it: their labels
//! never hold a queried name. This ring holds the last few hundred blocked
//! queries (time, client, device, name, type, list) and nothing else; it
//! is never written to disk, and only the admin API reads it.
//!
//! Recording is on the query path, so it neither allocates nor waits:
//! each slot has its own lock, taken only to copy one entry in, and the
//! name is kept as its wire-format labels in a fixed buffer.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use hickory_proto::rr::{LowerName, RecordType};

/// The longest name in wire format (RFC 1035 §2.3.4).
const MAX_NAME: usize = 255;

/// A fixed-size ring of the most recent blocked queries.
pub struct RecentBlocked {
    slots: Box<[Mutex<Slot>]>,
    /// Queries recorded since start; the next one is number `next + 1`,
    /// kept in slot `next % slots.len()`.
    next: AtomicU64,
}

/// One recorded query; `seq` 0 is a slot never written.
struct Slot {
    seq: u64,
    at: SystemTime,
    client: IpAddr,
    device: Arc<str>,
    qtype: RecordType,
    list: Arc<str>,
    /// The CNAME target that was listed, for a cloaked name.
    cname: Option<Box<str>>,
    /// The name's labels, each with its length byte, without the root.
    name: [u8; MAX_NAME],
    name_len: u8,
}

/// A blocked query's name, as the path that answered it has it.
#[derive(Debug, Clone, Copy)]
pub enum QueryName<'a> {
    /// Uncompressed wire format, as the client sent it (any letter case;
    /// the root label may be left out): the UDP fast path's, copied in one
    /// go.
    Wire(&'a [u8]),
    /// A parsed name.
    Parsed(&'a LowerName),
}

/// One blocked query, as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BlockedQuery {
    /// When it was answered, RFC 3339 in UTC.
    pub time: String,
    /// The client's address.
    pub client: IpAddr,
    /// The client's `client` label: its `[[clients]]` name, `unknown`, or
    /// `other`.
    pub device: String,
    /// The name asked, without the trailing dot; odd bytes as `\DDD`.
    pub name: String,
    /// The query type.
    pub qtype: String,
    /// The configured name of the list that blocked it.
    pub list: String,
    /// For a name blocked through its answer's CNAME chain, the listed
    /// target.
    pub cname: Option<String>,
}

impl RecentBlocked {
    /// A ring of `capacity` entries; `None` for 0 (nothing is recorded).
    pub fn new(capacity: usize) -> Option<Arc<Self>> {
        if capacity == 0 {
            return None;
        }
        let empty: Arc<str> = Arc::from("");
        let slots = (0..capacity)
            .map(|_| {
                Mutex::new(Slot {
                    seq: 0,
                    at: SystemTime::UNIX_EPOCH,
                    client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    device: empty.clone(),
                    qtype: RecordType::A,
                    list: empty.clone(),
                    cname: None,
                    name: [0; MAX_NAME],
                    name_len: 0,
                })
            })
            .collect();
        Some(Arc::new(Self {
            slots,
            next: AtomicU64::new(0),
        }))
    }

    /// Records one blocked query, over the oldest one kept.
    pub fn record(
        &self,
        name: QueryName<'_>,
        qtype: RecordType,
        client: IpAddr,
        device: &Arc<str>,
        list: &Arc<str>,
        cname: Option<&str>,
    ) {
        let seq = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let index = (seq % self.slots.len() as u64) as usize;
        let mut slot = self.slots[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Another writer a whole lap ahead got here first: its entry is
        // the newer one.
        if slot.seq > seq {
            return;
        }
        let mut len = 0;
        match name {
            QueryName::Wire(wire) => {
                let wire = wire.strip_suffix(&[0]).unwrap_or(wire);
                len = wire.len().min(MAX_NAME);
                slot.name[..len].copy_from_slice(&wire[..len]);
            }
            QueryName::Parsed(name) => {
                for label in name.iter() {
                    // A name that came off the wire fits; anything else is
                    // cut at a label boundary rather than kept wrong.
                    let Some(room) = slot.name.get_mut(len..len + 1 + label.len()) else {
                        break;
                    };
                    room[0] = label.len() as u8;
                    room[1..].copy_from_slice(label);
                    len += 1 + label.len();
                }
            }
        }
        slot.seq = seq;
        slot.at = SystemTime::now();
        slot.client = client;
        if !Arc::ptr_eq(&slot.device, device) {
            slot.device = device.clone();
        }
        slot.qtype = qtype;
        if !Arc::ptr_eq(&slot.list, list) {
            slot.list = list.clone();
        }
        slot.cname = cname.map(Box::from);
        slot.name_len = len as u8;
    }

    /// The kept queries, newest first, at most `limit`, those for which
    /// `keep` holds.
    pub fn list(&self, limit: usize, keep: impl Fn(&BlockedQuery) -> bool) -> Vec<BlockedQuery> {
        // Newest first by sequence number, each slot locked only to read
        // it; entries are formatted one by one until `limit` are kept, so
        // a request for a few costs a few, whatever the ring's size.
        let mut order: Vec<(u64, usize)> = self
            .slots
            .iter()
            .enumerate()
            .map(|(i, slot)| (slot.lock().unwrap_or_else(PoisonError::into_inner).seq, i))
            .filter(|&(seq, _)| seq != 0)
            .collect();
        order.sort_unstable_by_key(|&(seq, _)| std::cmp::Reverse(seq));
        let mut kept = Vec::new();
        for (seq, i) in order {
            if kept.len() >= limit {
                break;
            }
            let query = {
                let slot = self.slots[i].lock().unwrap_or_else(PoisonError::into_inner);
                // Written over since: a newer query, left for next time.
                if slot.seq != seq {
                    continue;
                }
                slot.show()
            };
            if keep(&query) {
                kept.push(query);
            }
        }
        kept
    }
}

impl Slot {
    fn show(&self) -> BlockedQuery {
        // Lowercase as the lists match names. Length bytes are at most 63,
        // below any letter, so they are left as they are.
        let lower = self.name[..usize::from(self.name_len)].to_ascii_lowercase();
        let mut rest = &lower[..];
        let labels = std::iter::from_fn(|| {
            let (&len, tail) = rest.split_first()?;
            let (label, tail) = tail.split_at(usize::from(len).min(tail.len()));
            rest = tail;
            Some(label)
        });
        let mut name = String::new();
        crate::lists::write_escaped(&mut name, labels);
        BlockedQuery {
            time: humantime::format_rfc3339_seconds(self.at).to_string(),
            client: self.client,
            device: self.device.to_string(),
            name,
            qtype: self.qtype.to_string(),
            list: self.list.to_string(),
            cname: self
                .cname
                .as_deref()
                .map(|c| c.strip_suffix('.').unwrap_or(c).to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::Name;
    use std::str::FromStr;

    fn name(s: &str) -> LowerName {
        LowerName::from(Name::from_str(s).unwrap())
    }

    #[test]
    fn keeps_the_newest_entries_newest_first() {
        let ring = RecentBlocked::new(3).unwrap();
        let (tv, phone): (Arc<str>, Arc<str>) = (Arc::from("tv"), Arc::from("phone"));
        let list: Arc<str> = Arc::from("xiaomi");
        let client = IpAddr::from([192, 168, 1, 20]);
        for i in 0..5 {
            let device = if i % 2 == 0 { &tv } else { &phone };
            let cname = (i == 4).then_some("edge.tracker.test.");
            let q = name(&format!("n{i}.Tracker.Test."));
            if i == 3 {
                // As a client sends it, letter case and all.
                let wire = b"\x02n3\x07Tracker\x04Test\x00";
                ring.record(
                    QueryName::Wire(wire),
                    RecordType::AAAA,
                    client,
                    device,
                    &list,
                    cname,
                );
            } else {
                ring.record(
                    QueryName::Parsed(&q),
                    RecordType::AAAA,
                    client,
                    device,
                    &list,
                    cname,
                );
            }
        }
        let all = ring.list(10, |_| true);
        let names: Vec<_> = all.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            names,
            ["n4.tracker.test", "n3.tracker.test", "n2.tracker.test"]
        );
        assert_eq!(all[0].device, "tv");
        assert_eq!(all[0].qtype, "AAAA");
        assert_eq!(all[0].list, "xiaomi");
        assert_eq!(all[0].client, client);
        assert_eq!(all[0].cname.as_deref(), Some("edge.tracker.test"));
        assert_eq!(all[1].cname, None);
        assert_eq!(ring.list(1, |_| true).len(), 1);
        let phones = ring.list(10, |q| q.device == "phone");
        assert_eq!(phones.len(), 1);
        assert_eq!(phones[0].name, "n3.tracker.test");
    }

    #[test]
    fn odd_labels_are_escaped() {
        let ring = RecentBlocked::new(1).unwrap();
        let odd = LowerName::from(
            Name::from_labels(vec![&b"a.b"[..], &b"\xff"[..], &b"test"[..]]).unwrap(),
        );
        let s: Arc<str> = Arc::from("x");
        let client = IpAddr::from([127, 0, 0, 1]);
        ring.record(QueryName::Parsed(&odd), RecordType::A, client, &s, &s, None);
        assert_eq!(ring.list(1, |_| true)[0].name, "a\\046b.\\255.test");
    }

    #[test]
    fn zero_keeps_nothing() {
        assert!(RecentBlocked::new(0).is_none());
    }
}
