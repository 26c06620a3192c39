#!/usr/bin/env python3
"""Writes the malformed-packet corpus: one NAME.bin per case, and
expected.txt with what the server must do with each (tests/malformed.rs
replays them against the running server over UDP and TCP).

Expectations:
  drop            no reply at all
  FORMERR, NOTIMP, BADVERS, NXDOMAIN, NOERROR
                  a reply with that response code (BADVERS = 16: 0 in the
                  header, 1 in the OPT record's extended-rcode bits)
  +opt / -opt     the reply carries / does not carry an OPT record

Run it from anywhere after changing a case; no dependencies.
"""
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "fuzz"))
from seeds import name, opt, question, rr  # noqa: E402

QUERY, RESPONSE = 0x0100, 0x8180


def header(id_, flags=QUERY, qd=1, an=0, ns=0, ar=0):
    return struct.pack(">HHHHHH", id_, flags, qd, an, ns, ar)


A_IN = struct.pack(">HH", 1, 1)
LONG_LABEL = "x" * 63

CASES = [
    # name, bytes, expectation, why
    ("truncated-header", header(0x0101)[:6], "drop",
     "shorter than a header: nothing to answer to"),
    ("question-missing", header(0x0102), "FORMERR -opt",
     "QDCOUNT 1 but no question: does not parse"),
    ("qdcount-0", header(0x0103, qd=0), "FORMERR -opt",
     "no question (RFC 1035 needs exactly one)"),
    ("qdcount-0-edns", header(0x0104, qd=0, ar=1) + opt(), "FORMERR +opt",
     "no question; the EDNS query gets an EDNS error"),
    ("qdcount-2", header(0x0105, qd=2) + question("a.test", 1) + question("b.test", 1),
     "FORMERR -opt", "two questions"),
    ("qdcount-65535", header(0x0106, qd=65535) + question("a.test", 1), "FORMERR -opt",
     "QDCOUNT promises more questions than the packet holds"),
    ("pointer-to-itself", header(0x0107) + b"\xc0\x0c" + A_IN, "FORMERR -opt",
     "compression pointer loop: the name points at itself"),
    ("pointer-loop-via-label", header(0x0108) + b"\x01a\xc0\x0c" + A_IN, "FORMERR -opt",
     "label then a pointer back to the start of the same name"),
    ("pointer-forward", header(0x0109) + b"\xc0\x20" + A_IN + b"\x00" * 20, "FORMERR -opt",
     "pointer to a later offset (RFC 1035 §4.1.4: prior occurrence only)"),
    ("pointer-out-of-bounds", header(0x010a) + b"\xc3\xff" + A_IN, "FORMERR -opt",
     "pointer past the end of the packet"),
    ("pointer-into-header", header(0x010b) + b"\xc0\x03" + A_IN, "NXDOMAIN -opt",
     "pointer to offset 3 (a zero byte: the root name); legal to parse, and "
     "the echoed question must be re-encoded, not copied with the pointer"),
    ("label-64", header(0x010c) + b"\x40" + b"x" * 64 + b"\x04test\x00" + A_IN, "FORMERR -opt",
     "a 64-byte label: length octet 0x40 is a reserved label type"),
    ("label-63", header(0x010d) + question(LONG_LABEL + ".test", 1), "NXDOMAIN -opt",
     "the longest legal label is answered (control)"),
    ("name-over-255", header(0x010e) + question(".".join([LONG_LABEL] * 4) + ".test", 1),
     "FORMERR -opt", "a 262-byte name (RFC 1035 §2.3.4: at most 255)"),
    ("two-opt", header(0x010f, ar=2) + question("a.test", 1) + opt() + opt(), "FORMERR -opt",
     "two OPT records (RFC 6891 §6.1.1: FORMERR)"),
    ("opt-in-answer", header(0x0110, an=1) + question("a.test", 1) + opt(), "FORMERR -opt",
     "OPT outside the additional section"),
    ("opt-in-authority", header(0x0111, ns=1) + question("a.test", 1) + opt(), "FORMERR -opt",
     "OPT outside the additional section"),
    ("opt-not-root", header(0x0112, ar=1) + question("a.test", 1)
     + rr(name("a.test"), 41, b"", ttl=0, rclass=1232), "FORMERR -opt",
     "OPT owner must be the root (RFC 6891 §6.1.2)"),
    ("edns-version-1", header(0x0113, ar=1) + question("a.test", 1) + opt(version=1),
     "BADVERS +opt", "unknown EDNS version (RFC 6891 §6.1.3)"),
    ("edns-version-255-tcp-size", header(0x0114, ar=1) + question("a.test", 1)
     + opt(version=255, payload=65535), "BADVERS +opt", "unknown EDNS version"),
    ("class-chaos", header(0x0115) + question("version.bind", 16, 3), "NOTIMP -opt",
     "CHAOS class: only IN is served"),
    ("class-unknown", header(0x0116) + question("a.test", 1, 1234), "NOTIMP -opt",
     "unassigned class"),
    ("class-any", header(0x0117, ar=1) + question("a.test", 1, 255) + opt(), "NOTIMP +opt",
     "QCLASS ANY"),
    ("type-unknown", header(0x0118) + question("a.test", 65280), "NXDOMAIN -opt",
     "unknown types are forwarded as opaque (RFC 3597); the stub says NXDOMAIN"),
    ("type-opt", header(0x0119) + question("a.test", 41), "FORMERR -opt",
     "OPT is a pseudo-record, never a question"),
    ("type-axfr", header(0x011a) + question("test", 252), "NOTIMP -opt",
     "zone transfer from a forwarder"),
    ("type-any", header(0x011b, ar=1) + question("a.test", 255) + opt(), "NOERROR +opt",
     "ANY gets the RFC 8482 HINFO answer"),
    ("opcode-status", header(0x011c, flags=0x1100) + question("a.test", 1), "NOTIMP -opt",
     "STATUS opcode"),
    ("opcode-notify", header(0x011d, flags=0x2100) + question("a.test", 6), "NOTIMP -opt",
     "NOTIFY opcode"),
    ("response-as-query", header(0x011e, flags=RESPONSE) + question("a.test", 1), "drop",
     "QR=1: never answer a response (reflection loops)"),
    ("response-malformed", header(0x011f, flags=RESPONSE), "drop",
     "QR=1 that does not parse: dropped before parsing, over UDP and TCP, "
     "so a forged response cannot draw a FORMERR"),
    ("trailing-garbage", header(0x0120) + question("a.test", 1) + b"\xde\xad\xbe\xef", "NOERROR -opt",
     "bytes after the last record are ignored, the question answered"),
]

if __name__ == "__main__":
    for f in os.listdir(HERE):
        if f.endswith(".bin"):
            os.remove(os.path.join(HERE, f))
    with open(os.path.join(HERE, "expected.txt"), "w") as manifest:
        manifest.write("# generated by make.py: file, expectation, why\n")
        for case, data, expect, why in CASES:
            with open(os.path.join(HERE, case + ".bin"), "wb") as f:
                f.write(data)
            manifest.write(f"{case}.bin\t{expect}\t{why}\n")
    print(f"{len(CASES)} cases in {HERE}")
