"""Two-level cache under a Zipf workload: hit rates per level and latency of L1 hits, L2 hits and misses.

Zipf (s = 1.1) over 10,000 keys, the default cache sizes (L1: 100 items LRU,
L2: 10,000 items LFU on disk). The loader stands in for the origin and returns
a ~1 KB value at once, so "miss" latency is the cache's own cost on a miss
(two lookups plus the writes to both levels), not an origin's.

Run: .venv/bin/python bench/bench_cache.py [--requests N] [--seed S]
Writes bench/results/cache.json.
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import random
import statistics
import time
from pathlib import Path

from nexus_green.middleware import TwoLevelCache


def zipf_sampler(n: int, s: float, rng: random.Random):  # type: ignore[no-untyped-def]
    cdf = list(itertools.accumulate(1.0 / (k**s) for k in range(1, n + 1)))
    total = cdf[-1]
    return lambda: bisect.bisect_left(cdf, rng.random() * total)


def pct(values: list, q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--s", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    rng = random.Random(args.seed)
    sample = zipf_sampler(args.keys, args.s, rng)
    value = b'{"payload": "' + b"x" * 1000 + b'"}'
    lat: dict = {"l1": [], "l2": [], "miss": []}
    cache = TwoLevelCache(l2="temporary")  # default sizes, L2 in a private temporary directory (a cold start)
    t_start = time.perf_counter()
    for _ in range(args.requests):
        key = f"key-{sample()}"
        t0 = time.perf_counter()
        _, level = cache.get_or_load(key, lambda: value)
        lat[level or "miss"].append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - t_start
    stats = cache.stats()
    cache.close()

    n = args.requests
    result = {
        "workload": {"requests": n, "keys": args.keys, "zipf_s": args.s, "seed": args.seed},
        "sizes": {"l1_items": 100, "l1_ttl_s": 60, "l1_policy": "lru", "l2_items": 10_000, "l2_ttl_s": 86_400},
        "hit_rate": {
            "l1": len(lat["l1"]) / n,
            "l2": len(lat["l2"]) / n,
            "combined": (len(lat["l1"]) + len(lat["l2"])) / n,
            "l2_of_l1_misses": len(lat["l2"]) / max(1, n - len(lat["l1"])),
        },
        "latency_us": {
            k: {
                "count": len(v),
                "mean": statistics.fmean(v) * 1e6 if v else 0.0,
                "p50": pct(v, 0.5) * 1e6,
                "p99": pct(v, 0.99) * 1e6,
            }
            for k, v in lat.items()
        },
        "l2_errors": stats.l2.errors if stats.l2 else 0,
        "requests_per_s": n / elapsed,
    }
    print(f"Zipf s={args.s} over {args.keys} keys, {n} requests, default sizes (L1 100 LRU, L2 10,000 LFU)")
    hr = result["hit_rate"]
    print(f"hit rate: L1 {hr['l1']:.1%}  L2 {hr['l2']:.1%}  combined {hr['combined']:.1%}  (target >= 80%)")
    print(f"{'outcome':<8} {'count':>8} {'mean us':>10} {'p50 us':>10} {'p99 us':>10}")
    for k, row in result["latency_us"].items():
        print(f"{k:<8} {row['count']:>8} {row['mean']:>10.1f} {row['p50']:>10.1f} {row['p99']:>10.1f}")
    print(f"throughput {result['requests_per_s']:.0f} req/s, L2 errors {result['l2_errors']}")
    out = Path(__file__).resolve().parent / "results" / "cache.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
