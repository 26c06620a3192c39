//! An upstream reply's records as the bytes it sent them in, accepted only
//! where those bytes mean the same after telesink's header and question.
//!
//! The cache keeps a fresh answer encoded ([`super::cache::WireAnswer`]).
//! It can keep the upstream's own bytes (over any transport) instead of encoding the records with hickory and decoding them back to
//! check the encoding. hickory has decoded those bytes into exactly the
//! records the answer holds, so they say the same in telesink's reply as
//! long as every name in them reads the same there. What differs in that
//! reply: the header; the question's letter case (it is the client's); the
//! TTLs (clamped, then counted down as the entry ages); and the OPT record
//! (telesink's own, so the upstream's is left out). [`sections`] therefore
//! accepts the bytes only if:
//!
//! - the question is the name asked, uncompressed, the same but for case;
//! - every compression pointer points at the start of a label of a name
//!   read before it in place (the question's or a record's), as a
//!   compressor writes them: a name then never reads the header, a TTL,
//!   the question's type and class, label contents (whose case may
//!   change) or anything after itself (so never the OPT record);
//! - OPT, if there is one, is the last record;
//! - every record is of a type whose data it knows the layout of, so the
//!   names inside data are checked too.
//!
//! Anything else is encoded by hickory. Keeping the bytes also keeps
//! the upstream's compression: hickory's encoder compresses long messages
//! less (16 bytes per A record for 100 records, 26.5 for 1,000), so 3,900
//! records the upstream sent in 62,400 bytes over TCP came out over 64 KiB
//! and were cut, with TC set even over TCP.

use hickory_proto::rr::{LowerName, RecordType};

use super::DNS_HEADER_LEN;

/// Where the records of an upstream reply sit in it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Sections {
    /// Where the answer section starts.
    pub start: usize,
    /// Where the records end: the end of the reply, or where its OPT
    /// record starts.
    pub end: usize,
    /// Records in the answer, authority and additional sections (the last
    /// without OPT).
    pub counts: [u16; 3],
    /// Each record's TTL, as an offset from `start`.
    pub ttls: Vec<u16>,
}

/// The records of `reply`, an upstream's answer to a question for `name`,
/// if their bytes can stand in telesink's reply as they are (see the
/// module documentation); `None` if not, and then they are encoded anew.
pub(crate) fn sections(reply: &[u8], name: &LowerName) -> Option<Sections> {
    let count = |i: usize| u16::from_be_bytes([reply[4 + 2 * i], reply[5 + 2 * i]]);
    if reply.len() < DNS_HEADER_LEN || count(0) != 1 {
        return None;
    }
    let mut names = Names::default();
    let name_end = names.question(reply, name)?;
    let start = name_end + 4;
    let sizes = [count(1), count(2), count(3)];
    let total = sizes.iter().map(|&n| usize::from(n)).sum::<usize>();
    // Sized by what the reply can hold (a record takes at least 11
    // bytes), not by the counts it claims.
    let mut ttls = Vec::with_capacity(total.min(reply.len() / 11));
    let mut at = start;
    let mut end = None;
    for i in 0..total {
        let record = at;
        at = names.read(reply, at)?;
        let fixed = reply.get(at..at + 10)?;
        let rtype = RecordType::from(u16::from_be_bytes([fixed[0], fixed[1]]));
        let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let data = at + 10;
        let data_end = data + rdlen;
        if data_end > reply.len() {
            return None;
        }
        if rtype == RecordType::OPT {
            // Only as the very last record, where hickory takes it out of
            // the additionals (nothing kept comes after it).
            if i + 1 != total || sizes[2] == 0 {
                return None;
            }
            end = Some(record);
        } else {
            ttls.push(u16::try_from(at + 4 - start).ok()?);
            names.data(reply, rtype, data, data_end)?;
        }
        at = data_end;
    }
    if at != reply.len() {
        return None;
    }
    let opt = u16::from(end.is_some());
    Some(Sections {
        start,
        end: end.unwrap_or(at),
        counts: [sizes[0], sizes[1], sizes[2] - opt],
        ttls,
    })
}

/// The longest name, in wire form (RFC 1035 §3.1).
const MAX_NAME: usize = 255;

/// The names read so far: where each of their labels starts (in
/// increasing order) and the length of the name from there on, so a
/// pointer to it is checked without reading it again.
#[derive(Default)]
struct Names {
    labels: Vec<(usize, usize)>,
}

impl Names {
    /// Reads the question's name and returns where it ends, if it is
    /// `name`'s labels, uncompressed, equal but for ASCII case.
    fn question(&mut self, reply: &[u8], name: &LowerName) -> Option<usize> {
        let mut at = DNS_HEADER_LEN;
        for label in name.iter() {
            let len = label.len();
            if usize::from(*reply.get(at)?) != len
                || !reply.get(at + 1..at + 1 + len)?.eq_ignore_ascii_case(label)
            {
                return None;
            }
            at += 1 + len;
        }
        if *reply.get(at)? != 0 {
            return None;
        }
        self.add(reply, DNS_HEADER_LEN, at, 1)?;
        Some(at + 1)
    }

    /// Reads the name at `at`, its labels in place, then the root or a
    /// pointer to a label read before; returns where it ends.
    fn read(&mut self, reply: &[u8], at: usize) -> Option<usize> {
        let mut end = at;
        loop {
            match *reply.get(end)? {
                0 => {
                    self.add(reply, at, end, 1)?;
                    return Some(end + 1);
                }
                len @ 1..=63 => end += 1 + usize::from(len),
                high @ 0xC0..=0xFF => {
                    let low = *reply.get(end + 1)?;
                    let target = usize::from(u16::from_be_bytes([high & 0x3F, low]));
                    let i = self
                        .labels
                        .binary_search_by_key(&target, |&(label, _)| label)
                        .ok()?;
                    self.add(reply, at, end, self.labels[i].1)?;
                    return Some(end + 2);
                }
                // 0x40 and 0x80: extended and reserved label types.
                _ => return None,
            }
        }
    }

    /// Notes the labels of a name read in place from `at` to `end` and
    /// followed by `rest` bytes (the root, or the name a pointer there
    /// points to); `None` if the name is longer than [`MAX_NAME`].
    fn add(&mut self, reply: &[u8], at: usize, end: usize, rest: usize) -> Option<()> {
        let length = end - at + rest;
        if length > MAX_NAME {
            return None;
        }
        let mut label = at;
        while label < end {
            // Every name read comes after the ones before it, so the
            // labels stay in order for the binary search.
            self.labels.push((label, length - (label - at)));
            label += 1 + usize::from(reply[label]);
        }
        Some(())
    }

    /// Reads the names in the data `data..end` of a record of type
    /// `rtype`, checking that it is laid out as the type says; `None` for
    /// a type whose layout is not known here.
    fn data(&mut self, reply: &[u8], rtype: RecordType, data: usize, end: usize) -> Option<()> {
        let fits = |at: usize| (at == end).then_some(());
        match rtype {
            RecordType::A => fits(data + 4),
            RecordType::AAAA => fits(data + 16),
            // No names (hickory reads CAA's from text, not wire).
            RecordType::TXT | RecordType::CAA => Some(()),
            // One name.
            RecordType::NS | RecordType::CNAME | RecordType::PTR | RecordType::DNAME => {
                fits(self.read(reply, data)?)
            }
            // Preference, exchange.
            RecordType::MX => fits(self.read(reply, data + 2)?),
            // Priority, weight, port, target.
            RecordType::SRV => fits(self.read(reply, data + 6)?),
            // Two names, then five 32-bit numbers.
            RecordType::SOA => {
                let mname_end = self.read(reply, data)?;
                fits(self.read(reply, mname_end)? + 20)
            }
            // Priority, target, then parameters, none of them names (RFC
            // 9460 §2.2; hickory decodes them from the data alone).
            RecordType::SVCB | RecordType::HTTPS => {
                (self.read(reply, data + 2)? <= end).then_some(())
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use hickory_proto::rr::Name;

    use super::*;

    /// A reply built byte by byte: ID 0x1234, QR and RD set, one question
    /// (`qname`, type A, class IN), then `records` as (owner, type, data),
    /// the last `additional` of them in the additional section.
    fn reply(qname: &[u8], records: &[(&[u8], u16, &[u8])], additional: u16) -> Vec<u8> {
        let answers = u16::try_from(records.len()).unwrap() - additional;
        let mut m = vec![0x12, 0x34, 0x81, 0x80, 0, 1];
        m.extend_from_slice(&answers.to_be_bytes());
        m.extend_from_slice(&[0, 0]);
        m.extend_from_slice(&additional.to_be_bytes());
        m.extend_from_slice(qname);
        m.extend_from_slice(&[0, 1, 0, 1]);
        for (owner, rtype, data) in records {
            m.extend_from_slice(owner);
            m.extend_from_slice(&rtype.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 1, 44]);
            m.extend_from_slice(&u16::try_from(data.len()).unwrap().to_be_bytes());
            m.extend_from_slice(data);
        }
        m
    }

    const QNAME: &[u8] = b"\x03www\x07example\x04test\x00";
    /// Offset of the question's name, and of its second label.
    const AT_QNAME: u8 = 12;
    const AT_EXAMPLE: u8 = 16;
    /// Offset of the first record.
    const AT_FIRST: u8 = 12 + 18 + 4;
    const OPT_RECORD: &[u8] = &[0, 0, 41, 4, 208, 0, 0, 0, 0, 0, 0];

    fn name() -> LowerName {
        LowerName::new(&Name::from_str("www.example.test.").unwrap())
    }

    fn accepts(reply: &[u8]) -> bool {
        sections(reply, &name()).is_some()
    }

    #[test]
    fn finds_the_records_and_their_ttls() {
        let cname = b"\x04edge\xc0\x10";
        let mut m = reply(
            QNAME,
            &[
                (&[0xc0, AT_QNAME], 5, cname),
                (&[0xc0, AT_FIRST + 12], 1, &[192, 0, 2, 1]),
            ],
            0,
        );
        let s = sections(&m, &name()).expect("accepted");
        assert_eq!(s.start, usize::from(AT_FIRST));
        assert_eq!(s.end, m.len());
        assert_eq!(s.counts, [2, 0, 0]);
        for &at in &s.ttls {
            let at = s.start + usize::from(at);
            assert_eq!(m[at..at + 4], [0, 0, 1, 44]);
        }
        // OPT last is left out of the records.
        m[11] = 1;
        m.extend_from_slice(OPT_RECORD);
        let s = sections(&m, &name()).expect("accepted");
        assert_eq!(s.end, m.len() - OPT_RECORD.len());
        assert_eq!(s.counts, [2, 0, 0]);
    }

    #[test]
    fn the_upstream_may_change_the_case_of_the_question() {
        let m = reply(
            b"\x03WwW\x07EXAMPLE\x04test\x00",
            &[(&[0xc0, AT_QNAME], 1, &[192, 0, 2, 1])],
            0,
        );
        assert!(accepts(&m));
    }

    #[test]
    fn the_question_must_be_the_name_asked() {
        let a: (&[u8], u16, &[u8]) = (&[0xc0, AT_QNAME], 1, &[192, 0, 2, 1]);
        assert!(!accepts(&reply(b"\x03www\x07example\x04tesx\x00", &[a], 0)));
        assert!(!accepts(&reply(b"\x03www\x07example\x00", &[a], 0)));
        // Compressed (into the header, where our reply has other bytes).
        assert!(!accepts(&reply(b"\x03www\xc0\x02", &[a], 0)));
        let mut two = reply(QNAME, &[a], 0);
        two[5] = 2;
        assert!(!accepts(&two));
    }

    #[test]
    fn pointers_may_only_point_back_into_the_question_name_or_records() {
        let with_target = |target: &[u8]| reply(QNAME, &[(&[0xc0, AT_QNAME], 5, target)], 0);
        assert!(accepts(&with_target(&[0xc0, AT_EXAMPLE])));
        assert!(accepts(&with_target(b"\x01x\xc0\x0c")));
        // Into the header, the question's type and class, itself, and
        // past itself.
        assert!(!accepts(&with_target(&[0xc0, 2])));
        assert!(!accepts(&with_target(&[0xc0, AT_QNAME + 18])));
        assert!(!accepts(&with_target(&[0xc0, AT_FIRST + 12])));
        assert!(!accepts(&with_target(&[0xc0, AT_FIRST + 13])));
        // An owner name pointing forward.
        let forward = reply(
            QNAME,
            &[
                (&[0xc0, AT_FIRST + 16], 1, &[192, 0, 2, 1]),
                (&[0xc0, AT_QNAME], 1, &[192, 0, 2, 2]),
            ],
            0,
        );
        assert!(!accepts(&forward));
    }

    #[test]
    fn pointers_may_point_at_labels_of_names_in_records() {
        // An MX whose exchange is "mail" + the question's second label,
        // then an A record whose owner points at that exchange.
        let mx_data = AT_FIRST + 12;
        let m = reply(
            QNAME,
            &[
                (&[0xc0, AT_QNAME], 15, b"\x00\x0a\x04mail\xc0\x10"),
                (&[0xc0, mx_data + 2], 1, &[192, 0, 2, 1]),
            ],
            1,
        );
        assert!(accepts(&m));
        // Into the preference before it instead: not a label.
        let m = reply(
            QNAME,
            &[
                (&[0xc0, AT_QNAME], 15, b"\x00\x0a\x04mail\xc0\x10"),
                (&[0xc0, mx_data + 1], 1, &[192, 0, 2, 1]),
            ],
            1,
        );
        assert!(!accepts(&m));
    }

    #[test]
    fn pointers_never_point_into_data_that_is_not_a_name() {
        // TXT data that reads as a name ending in the question's name.
        let m = reply(
            QNAME,
            &[
                (&[0xc0, AT_QNAME], 16, b"\x06\x03abc\xc0\x10"),
                (&[0xc0, AT_QNAME], 5, &[0xc0, AT_FIRST + 13]),
            ],
            0,
        );
        assert!(!accepts(&m));
    }

    #[test]
    fn pointers_never_point_into_a_ttl() {
        // A CNAME with TTL 0x00000161, whose last two bytes read as the
        // label "a", and a target pointing there: telesink rewrites TTLs.
        let mut m = reply(QNAME, &[(&[0xc0, AT_QNAME], 5, &[0xc0, AT_FIRST + 8])], 0);
        let ttl = usize::from(AT_FIRST) + 6;
        m[ttl..ttl + 4].copy_from_slice(&[0, 0, 1, b'a']);
        assert!(!accepts(&m));
    }

    #[test]
    fn pointers_never_point_into_the_contents_of_a_label() {
        // The client's question may differ in case from the upstream's,
        // so label contents read as structure could read differently.
        let m = reply(QNAME, &[(&[0xc0, AT_QNAME], 5, &[0xc0, AT_QNAME + 1])], 0);
        assert!(!accepts(&m));
        let m = reply(QNAME, &[(&[0xc0, AT_QNAME], 5, &[0xc0, AT_QNAME + 4])], 0);
        assert!(accepts(&m));
    }

    #[test]
    fn a_pointer_never_points_at_its_own_record() {
        // A CNAME target pointing at its own length byte (2), which would
        // read as a label of the pointer's two bytes and go on into what
        // follows: here the OPT record, which telesink replaces.
        let target = [0xc0, AT_FIRST + 11];
        let opt: (&[u8], u16, &[u8]) = (&[0], 41, &[]);
        let m = reply(QNAME, &[(&[0xc0, AT_QNAME], 5, &target), opt], 1);
        assert!(!accepts(&m));
    }

    #[test]
    fn names_longer_than_255_bytes_are_rejected() {
        let pointer = |at: usize| (0xc000 | u16::try_from(at).unwrap()).to_be_bytes();
        // CNAMEs whose targets are a 63-byte label and a pointer to the
        // target before (the first to the question's name): each target
        // is 64 bytes longer than the one before, the first 64 + 18.
        let label = [&[63][..], &[b'x'; 63]].concat();
        let chain = |n: usize| {
            let mut previous = usize::from(AT_QNAME);
            let mut data = Vec::new();
            for i in 0..n {
                data.push([&label[..], &pointer(previous)].concat());
                // Each record: owner (2), fixed fields (10), data (66).
                previous = usize::from(AT_FIRST) + 78 * i + 12;
            }
            let records: Vec<(&[u8], u16, &[u8])> = data
                .iter()
                .map(|d| (&[0xc0, AT_QNAME][..], 5, d.as_slice()))
                .collect();
            reply(QNAME, &records, 0)
        };
        assert!(accepts(&chain(3)), "3 * 64 + 18 bytes");
        assert!(!accepts(&chain(4)), "4 * 64 + 18 bytes");
    }

    #[test]
    fn opt_must_be_the_last_record() {
        let a: (&[u8], u16, &[u8]) = (&[0xc0, AT_QNAME], 1, &[192, 0, 2, 1]);
        let opt: (&[u8], u16, &[u8]) = (&[0], 41, &[]);
        assert!(accepts(&reply(QNAME, &[a, opt], 1)));
        assert!(!accepts(&reply(QNAME, &[a, opt, a], 2)));
        // In the answer section.
        assert!(!accepts(&reply(QNAME, &[opt], 0)));
    }

    #[test]
    fn only_record_types_of_known_layout() {
        let with = |rtype: u16, data: &[u8]| reply(QNAME, &[(&[0xc0, AT_QNAME], rtype, data)], 0);
        assert!(accepts(&with(28, &[0; 16])));
        assert!(accepts(&with(15, &[0, 10, 0xc0, AT_QNAME])));
        assert!(accepts(&with(33, &[0, 1, 0, 1, 0, 53, 0xc0, AT_QNAME])));
        assert!(accepts(&with(65, &[0, 1, 0, 0, 1, 0, 3, 2, b'h', b'2'])));
        let soa = [&[0xc0, AT_EXAMPLE, 0xc0, AT_QNAME][..], &[0; 20]].concat();
        assert!(accepts(&with(6, &soa)));
        // HINFO, NAPTR, RRSIG: not known here.
        assert!(!accepts(&with(13, b"\x01a\x01b")));
        assert!(!accepts(&with(35, &[0; 8])));
        assert!(!accepts(&with(46, &[0; 20])));
        // Data that does not fit its type's layout.
        assert!(!accepts(&with(1, &[192, 0, 2])));
        assert!(!accepts(&with(5, &[0xc0, AT_QNAME, 0])));
        assert!(!accepts(&with(6, &soa[..23])));
    }

    #[test]
    fn trailing_or_missing_bytes_are_rejected() {
        let a: (&[u8], u16, &[u8]) = (&[0xc0, AT_QNAME], 1, &[192, 0, 2, 1]);
        let mut m = reply(QNAME, &[a], 0);
        m.push(0);
        assert!(!accepts(&m));
        m.truncate(m.len() - 2);
        assert!(!accepts(&m));
        assert!(!accepts(&m[..8]));
    }
}
