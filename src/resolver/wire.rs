//! An upstream reply's records as the bytes it sent them in, accepted only
//! where those bytes mean the same after telesink's header and question.
//!
//! The cache keeps a fresh answer encoded ([`super::cache::WireAnswer`]).
//! For an answer that came over UDP it can keep the upstream's own bytes
//! instead of encoding the records with hickory and decoding them back to
//! check the encoding. hickory has decoded those bytes into exactly the
//! records the answer holds, so they say the same in telesink's reply as
//! long as every name in them reads the same there. What differs in that
//! reply is the header, the case of the question's name (it is the
//! client's) and the OPT record (telesink's own, so the upstream's is left
//! out). [`sections`] therefore accepts the bytes only if:
//!
//! - the question is the name asked, uncompressed, the same but for case;
//! - every name, followed through its compression pointers, reads only
//!   the question's name and earlier records: never the header, the
//!   question's type and class, or anything at or after the pointer it
//!   came through (so never the OPT record, which must come last);
//! - every record is of a type whose data it knows the layout of, so the
//!   names inside data are checked too.
//!
//! Anything else is encoded by hickory, as every answer that came over
//! TCP, TLS or HTTPS is.

use hickory_proto::rr::LowerName;

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
    let name_end = question_name(reply, name)?;
    let start = name_end + 4;
    let regions = Regions { name_end, start };
    let sizes = [count(1), count(2), count(3)];
    let total = sizes.iter().map(|&n| usize::from(n)).sum::<usize>();
    let mut ttls = Vec::with_capacity(total);
    let mut at = start;
    let mut end = None;
    for i in 0..total {
        let record = at;
        at = regions.name(reply, at)?;
        let fixed = reply.get(at..at + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let data = at + 10;
        let data_end = data + rdlen;
        if data_end > reply.len() {
            return None;
        }
        if rtype == OPT {
            // Only as the very last record (so nothing kept can point
            // into it), where hickory takes it out of the additionals.
            if i + 1 != total || sizes[2] == 0 {
                return None;
            }
            end = Some(record);
        } else {
            ttls.push(u16::try_from(at + 4 - start).ok()?);
            regions.data(reply, rtype, data, data_end)?;
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

/// The OPT pseudo-record's type (RFC 6891).
const OPT: u16 = 41;

/// Where the question's name ends if `reply` asks for `name`: its labels,
/// uncompressed, equal to `name`'s but for ASCII case.
fn question_name(reply: &[u8], name: &LowerName) -> Option<usize> {
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
    (*reply.get(at)? == 0).then_some(at + 1)
}

/// The parts of a reply a name in the records may be read from.
struct Regions {
    /// End of the question's name (which starts right after the header).
    name_end: usize,
    /// Start of the answer section.
    start: usize,
}

impl Regions {
    /// Whether the bytes `from..to` lie in the question's name or in the
    /// records: never in the header or the question's type and class.
    fn readable(&self, from: usize, to: usize) -> bool {
        (from >= DNS_HEADER_LEN && to <= self.name_end) || from >= self.start
    }

    /// Checks the name at `at`, following its compression pointers, and
    /// returns where it ends in place.
    ///
    /// Each pointer must point before itself, and once one is followed
    /// every byte read must lie before it: the name is then made only of
    /// bytes that came before it, and the reading ends.
    fn name(&self, reply: &[u8], mut at: usize) -> Option<usize> {
        let mut end = None;
        // Bytes may be read up to here: the end of the reply in place,
        // the last pointer followed after a jump.
        let mut limit = reply.len();
        // A name is at most 255 bytes long (RFC 1035 §3.1).
        let mut length = 0;
        loop {
            let byte = *reply.get(at)?;
            match byte {
                0 => {
                    if at >= limit || !self.readable(at, at + 1) || length >= 255 {
                        return None;
                    }
                    return Some(end.unwrap_or(at + 1));
                }
                1..=63 => {
                    let next = at + 1 + usize::from(byte);
                    length += 1 + usize::from(byte);
                    if next > limit || !self.readable(at, next) || length >= 255 {
                        return None;
                    }
                    at = next;
                }
                0xC0..=0xFF => {
                    if at + 2 > limit || !self.readable(at, at + 2) {
                        return None;
                    }
                    let target = usize::from(u16::from_be_bytes([byte & 0x3F, reply[at + 1]]));
                    if target >= at {
                        return None;
                    }
                    end.get_or_insert(at + 2);
                    limit = at;
                    at = target;
                }
                // 0x40 and 0x80: extended and reserved label types.
                _ => return None,
            }
        }
    }

    /// Checks the data `data..end` of a record of type `rtype`: the names
    /// in it, and that it is laid out as the type says. `None` for a type
    /// whose layout is not known here.
    fn data(&self, reply: &[u8], rtype: u16, data: usize, end: usize) -> Option<()> {
        // A name starting `skip` bytes into the data, then `after` bytes.
        let name_at = |skip: usize, after: usize| {
            let name = self.name(reply, data + skip)?;
            (name + after == end).then_some(())
        };
        match rtype {
            // A, AAAA: an address.
            1 => (end - data == 4).then_some(()),
            28 => (end - data == 16).then_some(()),
            // TXT, CAA: no names.
            16 | 257 => Some(()),
            // NS, CNAME, PTR, DNAME: a name.
            2 | 5 | 12 | 39 => name_at(0, 0),
            // MX: preference, exchange.
            15 => name_at(2, 0),
            // SRV: priority, weight, port, target.
            33 => name_at(6, 0),
            // SOA: two names, then five 32-bit numbers.
            6 => {
                let mname_end = self.name(reply, data)?;
                let rname_end = self.name(reply, mname_end)?;
                (rname_end + 20 == end).then_some(())
            }
            // SVCB, HTTPS: priority, target, then parameters, none of
            // them names (RFC 9460 §2.2).
            64 | 65 => {
                let target_end = self.name(reply, data + 2)?;
                (target_end <= end).then_some(())
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
    fn a_name_is_followed_through_every_pointer() {
        // TXT data that reads as a name; a later CNAME points into it.
        let txt_at = AT_FIRST + 12;
        let build = |tail: &[u8]| {
            let txt = [b"\x06\x03abc".as_slice(), tail].concat();
            reply(
                QNAME,
                &[
                    (&[0xc0, AT_QNAME], 16, &txt),
                    (&[0xc0, AT_QNAME], 5, &[0xc0, txt_at + 1]),
                ],
                0,
            )
        };
        // Ends in the question's name: fine.
        assert!(accepts(&build(&[0xc0, AT_EXAMPLE])));
        // Ends in the header: rejected, though the first pointer is fine.
        assert!(!accepts(&build(&[0xc0, 4])));
    }

    #[test]
    fn a_followed_name_reads_only_bytes_before_the_pointer() {
        // A CNAME whose target points at its own length byte (2), which
        // reads as a label of the pointer's two bytes and goes on into
        // what follows: here the OPT record, which telesink replaces.
        let target = [0xc0, AT_FIRST + 11];
        let opt: (&[u8], u16, &[u8]) = (&[0], 41, &[]);
        let m = reply(QNAME, &[(&[0xc0, AT_QNAME], 5, &target), opt], 1);
        assert!(!accepts(&m));
    }

    #[test]
    fn names_longer_than_255_bytes_are_rejected() {
        let pointer = |at: usize| (0xc000 | u16::try_from(at).unwrap()).to_be_bytes();
        // TXT records whose data read as a 63-byte label and a pointer to
        // the one before (the first to the question's name), and a CNAME
        // to the last: 64 bytes for each TXT and 18 for the question.
        let label = [&[63][..], &[b'x'; 63]].concat();
        let chain = |n: usize| {
            let mut data = Vec::new();
            let mut previous = usize::from(AT_QNAME);
            for i in 0..n {
                data.push([&label[..], &pointer(previous)].concat());
                // Each record: owner (2), fixed fields (10), data (66).
                previous = usize::from(AT_FIRST) + 78 * i + 12;
            }
            let target = pointer(previous);
            let mut records: Vec<(&[u8], u16, &[u8])> = data
                .iter()
                .map(|d| (&[0xc0, AT_QNAME][..], 16, d.as_slice()))
                .collect();
            records.push((&[0xc0, AT_QNAME], 5, &target));
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
