"""Cost per call of the shared circuit breaker and the shared rate limits (Redis) next to the local ones.

Starts a real ``redis-server`` on a free loopback port (``--url`` uses one of
yours instead) and measures, in one process, on the real clock:

* the circuit breaker's ``call()`` around a no-op: local, shared (one sync
  with Redis per ``shared_sync`` = 0.1 s, everything else in memory), and
  shared while Redis is unreachable (the link is down: nothing is sent);
* ``RateLimiter.acquire()`` with a huge limit (every call admitted): local
  TokenBucket, shared GCRA, shared SlidingWindow (one Lua script per call),
  and shared while Redis is unreachable (the local fallback decides);
* for reference, one ``PING`` through the link and on a bare gevent client.

Each case runs ``--calls`` calls (a fifth of them for the cases that pay a
Redis round trip per call), best of ``--rounds`` rounds (the least disturbed
round on a shared machine). Figures are microseconds per call; ``x local``
is the ratio to the local case of the same kind.

Run: ``python bench/bench_shared_breaker_limits.py [--calls 50000] [--rounds 5] [--url redis://...]``.
Writes bench/results/shared_breaker_limits.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
RESULTS = HERE / "results"
BIG = 1e12


def best_of(run: Callable[[int], None], calls: int, rounds: int) -> float:
    """Microseconds per call of ``run(calls)``, best of ``rounds`` rounds."""
    run(max(1, calls // 10))  # warm up: connections, scripts loaded, caches filled
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        run(calls)
        best = min(best, (time.perf_counter() - started) / calls)
    return best * 1e6


def measure(url: str, down_url: str, calls: int, rounds: int) -> list[dict[str, Any]]:
    from nexus_green.middleware.ratelimit import RateLimiter, SlidingWindow, TokenBucket
    from nexus_green.resilience import CircuitBreaker
    from nexus_green.transport.redis import RedisLink, gevent_redis

    links: list[RedisLink] = []

    def link(target: str) -> RedisLink:
        made = RedisLink(target, timeout=0.5)
        links.append(made)
        return made

    def noop() -> None:
        return None

    def breaker_case(cb: CircuitBreaker) -> Callable[[int], None]:
        call = cb.call

        def run(n: int) -> None:
            for _ in range(n):
                call(noop)

        return run

    def limiter_case(limiter: RateLimiter) -> Callable[[int], None]:
        acquire = limiter.acquire

        def run(n: int) -> None:
            for _ in range(n):
                acquire()

        return run

    down_link = link(down_url)
    try:
        down_link.execute("PING")
    except Exception:
        pass  # the link is now down for its backoff: what an outage looks like to callers
    down_link.backoff = (3600.0, 3600.0)
    down_link.mark_down(ConnectionError("benchmark: Redis unreachable"))

    few = max(1, calls // 5)
    rows: list[dict[str, Any]] = []

    def row(kind: str, case: str, us: float, n: int) -> None:
        rows.append({"kind": kind, "case": case, "us_per_call": us, "calls": n})

    row("breaker", "local", best_of(breaker_case(CircuitBreaker(name="bench-local")), calls, rounds), calls)
    shared_cb = CircuitBreaker(name="bench-shared", shared=link(url))
    row("breaker", "shared (sync every 0.1 s)", best_of(breaker_case(shared_cb), calls, rounds), calls)
    down_cb = CircuitBreaker(name="bench-down", shared=down_link)
    row("breaker", "shared, Redis down", best_of(breaker_case(down_cb), calls, rounds), calls)

    row("limiter", "local TokenBucket", best_of(limiter_case(RateLimiter(TokenBucket(BIG, BIG))), calls, rounds), calls)
    gcra = RateLimiter(TokenBucket(BIG, BIG), shared=link(url), name="bench-gcra")
    row("limiter", "shared GCRA", best_of(limiter_case(gcra), few, rounds), few)
    window = RateLimiter(SlidingWindow(BIG, 60.0), shared=link(url), name="bench-window")
    row("limiter", "shared SlidingWindow", best_of(limiter_case(window), few, rounds), few)
    down = RateLimiter(TokenBucket(BIG, BIG), shared=down_link, name="bench-down")
    row("limiter", "shared, Redis down (local fallback)", best_of(limiter_case(down), calls, rounds), calls)

    ping_link = link(url)
    row(
        "reference",
        "PING through RedisLink",
        best_of(lambda n: [ping_link.execute("PING") for _ in range(n)], few, rounds),
        few,
    )
    bare = gevent_redis(url)
    row(
        "reference",
        "PING on a bare gevent client",
        best_of(lambda n: [bare.ping() for _ in range(n)], few, rounds),
        few,
    )
    bare.close()

    syncs = shared_cb.shared.syncs
    for made in links:
        made.close()
    local = {kind: next(r["us_per_call"] for r in rows if r["kind"] == kind) for kind in ("breaker", "limiter")}
    for r in rows:
        r["x_local"] = r["us_per_call"] / local[r["kind"]] if r["kind"] in local else None
    rows.append({"kind": "note", "case": "shared breaker syncs during its rounds", "syncs": syncs})
    return rows


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--url", default=None, help="a Redis to use (default: start redis-server on a free port)")
    args = parser.parse_args(argv)

    from nexus_green.testing.redis_server import RedisServer

    server = None
    url = args.url
    if url is None:
        server = RedisServer().start()
        url = server.url
    down = RedisServer()  # a free port with nobody listening: connection refused
    try:
        rows = measure(url, down.url, args.calls, args.rounds)
    finally:
        down.close()
        if server is not None:
            server.close()

    print(f"{'kind':<10} {'case':<38} {'us/call':>10} {'x local':>9} {'calls':>8}")
    for r in rows:
        if r["kind"] == "note":
            print(f"{'':<10} {r['case']}: {r['syncs']}")
            continue
        ratio = f"{r['x_local']:.1f}" if r["x_local"] is not None else ""
        print(f"{r['kind']:<10} {r['case']:<38} {r['us_per_call']:>10.2f} {ratio:>9} {r['calls']:>8}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "shared_breaker_limits.json"
    load = os.getloadavg()[0]
    out.write_text(json.dumps({"rows": rows, "load_average": load, "argv": sys.argv[1:]}, indent=2) + "\n")
    print(f"load average at the end: {load:.1f}; wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
