#!/usr/bin/env python3
"""Writes the seed inputs of the request_path fuzz target to seeds/request_path/.

Each seed is [flags][query length u16 BE][query][upstream reply], as
fuzz_targets/request_path.rs reads it. Run from anywhere; no dependencies.
"""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds", "request_path")


def name(n):
    out = b""
    for label in n.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\x00"


def question(n, qtype, qclass=1):
    return name(n) + struct.pack(">HH", qtype, qclass)


def rr(owner, rtype, rdata, ttl=300, rclass=1):
    return owner + struct.pack(">HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def opt(payload=1232, version=0, rcode_high=0, do=False):
    ttl = (rcode_high << 24) | (version << 16) | (0x8000 if do else 0)
    return rr(b"\x00", 41, b"", ttl=ttl, rclass=payload)


def message(id_, flags, qs, an=(), ns=(), ar=()):
    head = struct.pack(">HHHHHH", id_, flags, len(qs), len(an), len(ns), len(ar))
    return head + b"".join(qs) + b"".join(an) + b"".join(ns) + b"".join(ar)


def a(ip):
    return bytes(int(x) for x in ip.split("."))


QUERY, RESPONSE = 0x0100, 0x8180
PTR = b"\xc0\x0c"  # the question's name
SOA = name("ns.test") + name("hostmaster.test") + struct.pack(">IIIII", 1, 3600, 600, 86400, 120)


def seed(flags, query, reply=b""):
    return bytes([flags]) + struct.pack(">H", len(query)) + query + reply


def q(n, t, edns=False, cls=1, flags=QUERY):
    return message(0x1234, flags, [question(n, t, cls)], ar=[opt()] if edns else [])


def r(n, t, answers=(), authorities=(), rcode=0):
    return message(0x1234, RESPONSE | rcode, [question(n, t)], answers, authorities, [opt()])


SEEDS = {
    "a": seed(0, q("a.test", 1), r("a.test", 1, [rr(PTR, 1, a("192.0.2.1"))])),
    "a_edns_tcp": seed(0x10, q("a.test", 1, True), r("a.test", 1, [rr(PTR, 1, a("192.0.2.1"))])),
    "rebind": seed(0x04, q("evil.example", 1, True), r("evil.example", 1, [rr(PTR, 1, a("192.168.1.1"))])),
    "rebind_allowed": seed(0x04, q("nas.lan", 1), r("nas.lan", 1, [rr(PTR, 1, a("10.0.0.2"))])),
    "rebind_v6": seed(0x05, q("evil.example", 28), r("evil.example", 28, [rr(PTR, 28, bytes.fromhex("fd000000000000000000000000000001"))])),
    "cloaked": seed(0, q("cloaked.test", 1), r("cloaked.test", 1, [
        rr(PTR, 5, name("collect.tracker.test")), rr(name("collect.tracker.test"), 1, a("192.0.2.66"))])),
    "blocked_aaaa": seed(1, q("x.tracker.test", 28, True)),
    "blocked_mx_nodata": seed(2, q("ads1.example", 15)),
    "blocked_refused": seed(3, q("a.wild.test", 1)),
    "allowed": seed(0, q("ok.tracker.test", 1), r("ok.tracker.test", 1, [rr(PTR, 1, a("192.0.2.5"))])),
    "any": seed(0, q("any.test", 255, True)),
    "big_udp": seed(0, q("big.test", 1), r("big.test", 1, [rr(PTR, 1, bytes([198, 51, 100, i])) for i in range(1, 41)])),
    "nxdomain": seed(0, q("missing.test", 1), r("missing.test", 1, [], [rr(name("test"), 6, SOA)], rcode=3)),
    "servfail": seed(0, q("s.test", 1), r("s.test", 1, rcode=2)),
    "txt": seed(0, q("txt.test", 16), r("txt.test", 16, [rr(PTR, 16, b"\x0bv=spf1 -all\x0bhello world")])),
    "refused_client": seed(0x20, q("a.test", 1)),
    "badvers": seed(0, message(1, QUERY, [question("a.test", 1)], ar=[opt(version=1)])),
    "status_opcode": seed(0, message(2, 0x1000, [question("a.test", 1)])),
    "two_questions": seed(0, message(3, QUERY, [question("a.test", 1), question("b.test", 1)])),
    "no_question": seed(0, message(4, QUERY, [])),
    "chaos": seed(0, q("version.bind", 16, cls=3)),
    "qtype_opt": seed(0, q("a.test", 41)),
    "axfr": seed(0x10, q("test", 252)),
    "two_opt": seed(0, message(5, QUERY, [question("a.test", 1)], ar=[opt(), opt()])),
    "pointer_loop": seed(0, struct.pack(">HHHHHH", 6, QUERY, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01"),
    "response_as_query": seed(0, message(7, RESPONSE, [question("a.test", 1)])),
}

if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    for key, data in SEEDS.items():
        with open(os.path.join(OUT, key), "wb") as f:
            f.write(data)
    print(f"{len(SEEDS)} seeds in {OUT}")
