#!/usr/bin/env python3
"""Deterministic data for scripts/bench and scripts/soak.

Writes into DIR (argv[1]):
  block.txt      N synthetic blocked domains (argv[2], default 1000000)
  bench.zone     zone `bench.` for nsd: 1000 names with A records (TTL
                 60 s), and a wildcard under miss.bench. (TTL 5 s) for
                 misses, so that a soak longer than one pass over the query
                 file keeps asking the upstream
  q-hit.txt      the 1000 zone names, repeated (cache hits after warm-up)
  q-blocked.txt  listed names, half exact and half random subdomains
  q-real.txt     70% zone names (Zipf-like), 20% blocked, 10% unique misses
  q-miss-K.txt   K = 0..3: 60,000 unique names the upstream must answer
                 each, in four files so each run asks names no earlier
                 run cached
  last.txt       the last list entry, to time start-to-serving
Same arguments, same bytes.
"""
import random
import sys

out = sys.argv[1]
n = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
rng = random.Random(20261130)
words = "ad ads track metrics stat log cdn pixel beacon sync data api edge push collect event sdk tag rtb media".split()
tlds = ["com", "net", "org", "io", "cn", "ru", "de", "xyz", "info", "top"]

blocked = []
for i in range(n):
    labels = [f"{rng.choice(words)}{i:x}"] + [rng.choice(words) for _ in range(rng.randrange(0, 3))]
    blocked.append(".".join(labels) + "." + rng.choice(tlds))
with open(f"{out}/block.txt", "w") as f:
    f.write("\n".join(blocked) + "\n")
with open(f"{out}/last.txt", "w") as f:
    f.write(blocked[-1] + "\n")

hits = [f"host{i}.bench" for i in range(1000)]
with open(f"{out}/bench.zone", "w") as f:
    f.write("$ORIGIN bench.\n$TTL 3600\n")
    f.write("@ IN SOA ns.bench. hostmaster.bench. 1 3600 600 86400 300\n@ IN NS ns.bench.\nns IN A 127.0.0.1\n")
    for i, h in enumerate(hits):
        f.write(f"{h}. 60 IN A 198.18.{i // 250}.{i % 250 + 1}\n")
    f.write("*.miss 5 IN A 198.18.255.1\n")

with open(f"{out}/q-hit.txt", "w") as f:
    for _ in range(200):
        for h in hits:
            f.write(f"{h} A\n")
with open(f"{out}/q-blocked.txt", "w") as f:
    for i in range(200_000):
        d = blocked[rng.randrange(n)]
        f.write(f"{d} A\n" if i % 2 == 0 else f"x{i}.{d} A\n")
with open(f"{out}/q-real.txt", "w") as f:
    for i in range(200_000):
        r = rng.random()
        if r < 0.7:
            # Zipf-like: low indexes are asked far more often.
            k = min(int(rng.paretovariate(1.2)) - 1, len(hits) - 1)
            f.write(f"{hits[k]} A\n")
        elif r < 0.9:
            f.write(f"{blocked[rng.randrange(n)]} A\n")
        else:
            f.write(f"u{i}.miss.bench A\n")
for k in range(4):
    with open(f"{out}/q-miss-{k}.txt", "w") as f:
        for i in range(k * 60_000, (k + 1) * 60_000):
            f.write(f"m{i}.miss.bench A\n")
