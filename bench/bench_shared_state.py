"""Cost per call of the shared state (issue 20) next to the local behaviour, measured side by side in one run.

Starts a real ``redis-server`` on a free loopback port (``--url`` uses one of
yours) and ``bench/echo_peer.py`` (the origin, another process), then times,
in one process on the real clock, concurrency 1 (latency):

Cache, through ``Client.request`` + ``CacheMiddleware`` (64-byte bodies):

    raw            Client.request without a cache (the origin round trip)
    l1-hit         the key in L1
    l3-hit         no L1/L2: every call a Redis GET, HMAC check, unpickle
    miss           L1 only, a new key every call (origin round trip + store)
    miss+l3        L1 + L3, a new key every call: an L3 GET that misses,
                   the origin, and the inline L3 SET
    miss+l3 down   the same with Redis unreachable (the link is down:
                   nothing is sent, the fallback is counted)

Idempotency guard, ``begin`` + ``complete`` of a new key:

    guard local    the in-process window
    guard shared   the window in Redis (two Lua scripts: two round trips)
    guard down     shared, Redis unreachable (the local window decides)

plus ``PING`` through the link, for reference. The cases take turns
(``--turns`` turns of ``--seconds`` each, after a warm-up), so a change of
load on a shared machine hits them alike; each figure is the median of its
turns (microseconds per call), and each ratio the median of the per-turn
ratios. The shared breaker and rate limits have their own benchmark
(bench/bench_shared_breaker_limits.py, by the helper that built them); with
``--with-breaker-limits`` (the default) it runs after this one and its table
is printed and stored alongside.

Run: ``.venv/bin/python bench/bench_shared_state.py [--turns 7] [--seconds 0.3] [--url redis://...]``.
Writes bench/results/shared_state.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
RESULTS = HERE / "results"
BODY = b"x" * 56
SECRET = b"bench-secret-bench-secret-bench!"
DEAD = "redis://127.0.0.1:1/0"  # nothing listens on port 1

CACHE_CASES = ("raw", "l1-hit", "l3-hit", "miss", "miss+l3", "miss+l3 down")
GUARD_CASES = ("guard local", "guard shared", "guard down", "link ping")
RATIOS = (
    ("l3-hit", "l1-hit"),
    ("l3-hit", "raw"),
    ("miss+l3", "miss"),
    ("miss+l3 down", "miss"),
    ("guard shared", "guard local"),
    ("guard down", "guard local"),
)


def per_call(run: Callable[[int], None], seconds: float) -> float:
    """Microseconds per call of ``run`` over about ``seconds`` (batches of 50 calls)."""
    calls = 0
    t0 = time.perf_counter()
    stop = t0 + seconds
    while time.perf_counter() < stop:
        run(50)
        calls += 50
    return (time.perf_counter() - t0) / calls * 1e6


def measure(url: str, origin: str, turns: int, seconds: float) -> dict[str, Any]:
    from nexus_green import Client
    from nexus_green.middleware import RedisCache
    from nexus_green.middleware.cache import CacheMiddleware, TwoLevelCache
    from nexus_green.resilience.idempotency import IdempotencyGuard
    from nexus_green.transport.redis import RedisLink

    counter = itertools.count()

    def fixed() -> bytes:
        return BODY + b"hit00000"

    def fresh() -> bytes:
        return BODY + b"%08d" % next(counter)

    # A per-call limit well above a loopback round trip: the figures are the cost of calls that reached Redis
    # (the default 50 ms limit fell back now and then on this shared 2-core machine; fallbacks are reported).
    link = RedisLink(url, namespace="bench", timeout=1.0)
    dead = RedisLink(DEAD, namespace="bench")
    caches: dict[str, Any] = {
        "raw": None,
        "l1-hit": TwoLevelCache(l2=None),
        "l3-hit": TwoLevelCache(l1=None, l2=None, l3=RedisCache(link, secret=SECRET, name="hit")),
        "miss": TwoLevelCache(l2=None),
        "miss+l3": TwoLevelCache(l2=None, l3=RedisCache(link, secret=SECRET, name="miss")),
        "miss+l3 down": TwoLevelCache(l2=None, l3=RedisCache(dead, secret=SECRET, name="down", listen=False)),
    }
    clients = {
        case: Client(
            origin,
            heartbeat_interval=None,
            middlewares=[CacheMiddleware(cache, when={1})] if cache is not None else [],
        )
        for case, cache in caches.items()
    }
    guards = {
        "guard local": IdempotencyGuard(),
        "guard shared": IdempotencyGuard(shared=link),
        "guard down": IdempotencyGuard(shared=dead),
    }
    keys = itertools.count()

    def cache_run(case: str) -> Callable[[int], None]:
        request = clients[case].request
        body_of = fixed if case in ("raw", "l1-hit", "l3-hit") else fresh

        def run(n: int) -> None:
            for _ in range(n):
                request(body_of(), fid=1, timeout=5)

        return run

    def guard_run(case: str) -> Callable[[int], None]:
        if case == "link ping":

            def ping(n: int) -> None:
                for _ in range(n):
                    link.execute("PING")

            return ping
        guard = guards[case]

        def run(n: int) -> None:
            for _ in range(n):
                key = f"k{next(keys)}"
                guard.begin(key)
                guard.complete(key, b"result")

        return run

    runs = {case: cache_run(case) for case in CACHE_CASES} | {case: guard_run(case) for case in GUARD_CASES}
    per_turn: dict[str, list[float]] = {case: [] for case in runs}
    try:
        for run in runs.values():
            run(200)  # warm up: connections, scripts loaded, the hit keys stored
        for _ in range(turns):
            for case, run in runs.items():
                per_turn[case].append(per_call(run, seconds))
        out: dict[str, Any] = {
            "us_per_call": {case: statistics.median(v) for case, v in per_turn.items()},
            "turns": per_turn,
            "ratios": {
                f"{a} / {b}": statistics.median(x / y for x, y in zip(per_turn[a], per_turn[b], strict=True))
                for a, b in RATIOS
            },
        }
        l3_down = caches["miss+l3 down"].l3
        out["fallbacks"] = {
            "l3 down: calls that fell back": l3_down.stats().errors,
            "guard down: begins decided locally": guards["guard down"].stats().fallbacks,
            "dead link: connects attempted": dead.failures,
            "live link: calls that fell back (should be 0)": link.fallbacks,
        }
        return out
    finally:
        for client in clients.values():
            client.close()
        for cache in caches.values():
            if cache is not None:
                cache.close()
        link.close()
        dead.close()


def breaker_limits(url: str) -> Optional[dict[str, Any]]:
    """Run bench/bench_shared_breaker_limits.py on the same Redis; its stored results, or None."""
    script = HERE / "bench_shared_breaker_limits.py"
    if not script.exists():
        return None
    done = subprocess.run(
        [sys.executable, str(script), "--url", url, "--calls", "20000", "--rounds", "3"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(done.stdout)
    if done.returncode != 0:
        print(f"bench_shared_breaker_limits.py failed ({done.returncode}):\n{done.stderr[-2000:]}")
        return None
    stored = RESULTS / "shared_breaker_limits.json"
    return json.loads(stored.read_text()) if stored.exists() else None


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=7)
    parser.add_argument("--seconds", type=float, default=0.3)
    parser.add_argument("--url", help="a redis:// URL to use instead of starting redis-server")
    parser.add_argument("--with-breaker-limits", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args(argv)

    from nexus_green.testing.redis_server import RedisServer

    server = None if args.url else RedisServer().start()
    url = args.url or server.url  # type: ignore[union-attr]
    peer = subprocess.Popen([sys.executable, str(HERE / "echo_peer.py")], stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout is not None
        origin = "tcp://" + peer.stdout.readline().rsplit(" ", 1)[1].strip()
        started = time.time()
        result = measure(url, origin, args.turns, args.seconds)
        others = breaker_limits(url) if args.with_breaker_limits else None
    finally:
        peer.terminate()
        peer.wait(10)
        if server is not None:
            server.close()

    print(f"{'case':<16} {'us/call':>9}")
    for case, us in result["us_per_call"].items():
        print(f"{case:<16} {us:>9.1f}")
    print()
    for name, ratio in result["ratios"].items():
        print(f"{name:<28} x{ratio:.2f}")
    for name, count in result["fallbacks"].items():
        print(f"{name}: {count}")
    load = os.getloadavg()[0]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "shared_state.json"
    stored = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "argv": sys.argv[1:],
        "load_average": load,
        **result,
        "breaker_limits": others,
    }
    out.write_text(json.dumps(stored, indent=2) + "\n")
    print(f"load average at the end: {load:.1f}; wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
