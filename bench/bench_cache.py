"""The cache on the request path, and the two-level cache under a Zipf workload.

Part 1 -- what the cache costs a ``Client.request`` call, in microseconds per
call, against ``bench/echo_peer.py`` (another process, 64-byte bodies):

    raw        Client.request without middlewares
    hit        CacheMiddleware, the key already cached (L1 hit)
    miss-l1    CacheMiddleware over an L1-only cache, a new key every call
    miss-l2    CacheMiddleware over L1 + a disk L2 (temporary directory), a
               new key every call: the L2 read of the miss and the L2 write

Per call = wall time / calls, with ``--concurrency`` greenlets (default
1 and 50: latency, then throughput). In each child process the scenarios
take turns (``--inner`` turns of ``--seconds`` each, after a short warm-up),
so a change of load on a shared machine hits them alike; the figures are
medians over turns and over ``--rounds`` processes, and "l2/l1 miss" is the
median of the ratios of adjacent turns.
With ``--code PATH`` the same child runs a second time with PATH first on
PYTHONPATH (e.g. a ``git worktree`` of an older commit), alternating rounds,
and both columns are printed side by side. For miss-l2 the child also reports
what L2 did with the writes (stored, dropped, errors) and how long the final
``close()`` (the flush of queued writes) took.

Part 2 -- the Zipf workload (``--zipf``, on by default): s = 1.1 over 10,000
keys, the default sizes (L1 100 items LRU, L2 10,000 items LFU on disk), the
cache driven directly with a loader that returns ~1 KB at once, and a turn for
the hub between requests (``gevent.sleep(1e-6)``, untimed: what a request
arriving over a socket gives it; L2's writer greenlet writes in such turns);
hit rates per level and the latency of L1 hits, L2 hits and misses.

Run: ``.venv/bin/python bench/bench_cache.py [--code /tmp/before-cache] [--rounds 3] [--inner 5] [--seconds 0.3]``.
Writes bench/results/cache.json (part 1 under ``request_path``).
"""

from __future__ import annotations

import argparse
import bisect
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SCENARIOS = ("raw", "hit", "miss-l1", "miss-l2")
BODY = b"x" * 56


# ---------------------------------------------------------------- part 1: the child


def child(port: int, concurrency: int, seconds: float, inner: int) -> dict[str, Any]:
    import gevent

    import nexus_green
    from nexus_green import Client
    from nexus_green.middleware.cache import CacheMiddleware, TwoLevelCache

    url = f"tcp://127.0.0.1:{port}"
    out: dict[str, Any] = {"code": str(Path(nexus_green.__file__).resolve().parent.parent)}
    counter = itertools.count()

    def run(client: Any, body_of: Any) -> float:
        def worker(stop: float, done: list[int]) -> None:
            n = 0
            request = client.request
            pc = time.perf_counter
            while pc() < stop:
                for _ in range(50):
                    request(body_of(), fid=1, timeout=5)
                n += 50
            done.append(n)

        def burst(length: float) -> tuple[int, float]:
            done: list[int] = []
            t0 = time.perf_counter()
            gevent.joinall([gevent.spawn(worker, t0 + length, done) for _ in range(concurrency)])
            return sum(done), time.perf_counter() - t0

        burst(min(0.2, seconds))  # warm-up: connection, caches, code paths
        calls, elapsed = burst(seconds)
        return elapsed / calls * 1e6

    def fixed() -> bytes:
        return BODY + b"hit00000"

    def fresh() -> bytes:
        return BODY + b"%08d" % next(counter)

    # The scenarios take turns, ``inner`` times each, so a change of load on this shared machine hits
    # them alike; each scenario's figure is the median of its turns.
    turns: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    for _ in range(inner):
        with Client(url, heartbeat_interval=None) as client:
            turns["raw"].append(run(client, fixed))
        for scenario, l2, body_of in (
            ("hit", "temporary", fixed),
            ("miss-l1", None, fresh),
            ("miss-l2", "temporary", fresh),
        ):
            cache = TwoLevelCache(l2=l2)
            with Client(url, heartbeat_interval=None, middlewares=[CacheMiddleware(cache, when={1})]) as client:
                turns[scenario].append(run(client, body_of))
            if scenario == "miss-l2":
                before_close = cache.stats()
                t0 = time.perf_counter()
                cache.close()  # flushes what is still queued (write-behind); before: nothing queued
                out["close_ms"] = (time.perf_counter() - t0) * 1e3
                s2 = before_close.l2
                out["l2"] = {
                    "loads": before_close.loads,
                    "errors": s2.errors if s2 else None,
                    "bypassed": s2.bypassed if s2 else None,
                    "written": getattr(s2, "written", None),
                    "dropped": getattr(s2, "dropped", None),
                    "queued_at_close": getattr(s2, "queued", None),
                }
            else:
                cache.close()
    for scenario, values in turns.items():
        out[scenario] = statistics.median(values)
    out["miss_ratio"] = statistics.median(b / a for a, b in zip(turns["miss-l1"], turns["miss-l2"], strict=True))
    return out


# ---------------------------------------------------------------- part 1: the parent


def run_request_path(args: argparse.Namespace) -> dict[str, Any]:
    codes = {"now": str(ROOT)}
    if args.code:
        codes["before"] = os.path.abspath(args.code)
    peer = subprocess.Popen([sys.executable, str(HERE / "echo_peer.py")], stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout is not None
        port = int(peer.stdout.readline().rsplit(":", 1)[1])
        runs: dict[str, dict[int, list[dict[str, Any]]]] = {label: {c: [] for c in args.concurrency} for label in codes}
        peer_cpu0 = _cpu_seconds(peer.pid)
        t0 = time.perf_counter()
        for rnd in range(args.rounds):
            order = list(codes.items()) if rnd % 2 == 0 else list(reversed(codes.items()))
            for label, code in order:
                for c in args.concurrency:
                    env = dict(os.environ, PYTHONPATH=code)
                    p = subprocess.run(
                        [sys.executable, __file__, "--child", str(port), str(c), str(args.seconds), str(args.inner)],
                        env=env,
                        cwd=code,
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                    if p.returncode != 0:
                        raise SystemExit(f"child ({label}, c={c}) failed:\n{p.stderr}")
                    runs[label][c].append(json.loads(p.stdout.strip().splitlines()[-1]))
        peer_cpu = (_cpu_seconds(peer.pid) - peer_cpu0) / (time.perf_counter() - t0)
    finally:
        peer.kill()
        peer.wait()

    table: dict[str, Any] = {}
    for label, by_c in runs.items():
        for c, rows in by_c.items():
            med = {s: statistics.median(r[s] for r in rows) for s in SCENARIOS}
            table[f"{label} c={c}"] = {
                "code": rows[0]["code"],
                "us_per_call": med,
                "miss_l2_over_miss_l1": statistics.median(r["miss_ratio"] for r in rows) - 1,
                "l2_last_round": rows[-1].get("l2"),
                "close_ms_median": statistics.median(r["close_ms"] for r in rows),
            }
    print(
        f"\nCache on the request path: us per call, median of {args.rounds} processes x {args.inner} turns of "
        f"{args.seconds:g} s per scenario, 64-byte bodies, echo peer CPU {peer_cpu:.0%} of a core"
    )
    header = (
        f"{'code, concurrency':22}" + "".join(f"{s:>10}" for s in SCENARIOS) + f"{'l2/l1 miss':>12}{'close ms':>10}"
    )
    print(header)
    for name, row in table.items():
        us = row["us_per_call"]
        print(
            f"{name:22}"
            + "".join(f"{us[s]:>10.2f}" for s in SCENARIOS)
            + f"{row['miss_l2_over_miss_l1']:>+12.1%}{row['close_ms_median']:>10.1f}"
        )
    for name, row in table.items():
        print(f"  {name}: {row['code']}; miss-l2 last round L2: {row['l2_last_round']}")
    return {"rounds": args.rounds, "seconds": args.seconds, "peer_cpu": peer_cpu, "table": table}


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- part 2: Zipf


def zipf_sampler(n: int, s: float, rng: random.Random):  # type: ignore[no-untyped-def]
    cdf = list(itertools.accumulate(1.0 / (k**s) for k in range(1, n + 1)))
    total = cdf[-1]
    return lambda: bisect.bisect_left(cdf, rng.random() * total)


def pct(values: list, q: float) -> float:
    if not values:
        return 0.0
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def run_zipf(args: argparse.Namespace) -> dict[str, Any]:
    from nexus_green.middleware import TwoLevelCache

    rng = random.Random(args.seed)
    sample = zipf_sampler(args.keys, args.s, rng)
    value = b'{"payload": "' + b"x" * 1000 + b'"}'
    lat: dict = {"l1": [], "l2": [], "miss": []}
    import gevent

    cache = TwoLevelCache(l2="temporary")  # default sizes, L2 in a private temporary directory (a cold start)
    for _ in range(args.requests):
        key = f"key-{sample()}"
        t0 = time.perf_counter()
        _, level = cache.get_or_load(key, lambda: value)
        lat[level or "miss"].append(time.perf_counter() - t0)
        # Between requests the hub gets a turn, as it does when requests come over sockets: L2 is
        # written behind, by a greenlet, so a loop that never yields would never let it write.
        gevent.sleep(1e-6)
    elapsed = sum(sum(v) for v in lat.values())  # time in the cache, not in the turns between requests
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
    print(f"\nZipf s={args.s} over {args.keys} keys, {n} requests, default sizes (L1 100 LRU, L2 10,000 LFU)")
    hr = result["hit_rate"]
    print(f"hit rate: L1 {hr['l1']:.1%}  L2 {hr['l2']:.1%}  combined {hr['combined']:.1%}  (target >= 80%)")
    print(f"{'outcome':<8} {'count':>8} {'mean us':>10} {'p50 us':>10} {'p99 us':>10}")
    for k, row in result["latency_us"].items():
        print(f"{k:<8} {row['count']:>8} {row['mean']:>10.1f} {row['p50']:>10.1f} {row['p99']:>10.1f}")
    print(f"throughput {result['requests_per_s']:.0f} req/s, L2 errors {result['l2_errors']}")
    return result


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        port, concurrency, seconds, inner = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
        print(json.dumps(child(port, concurrency, seconds, inner)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", help="another checkout of nexus_green to measure side by side (e.g. /tmp/before-cache)")
    ap.add_argument("--rounds", type=int, default=3, help="child processes per code and concurrency")
    ap.add_argument("--inner", type=int, default=5, help="turns of every scenario in each child")
    ap.add_argument("--seconds", type=float, default=0.3, help="per turn")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 50])
    ap.add_argument("--zipf", action=argparse.BooleanOptionalAction, default=True, help="also run part 2")
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--s", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()

    result: dict[str, Any] = {"request_path": run_request_path(args)}
    if args.zipf:
        result.update(run_zipf(args))
    out = HERE / "results" / "cache.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
