"""Resilience overhead benchmark: a call through @resilient (no faults) vs a bare call.

Every variant runs in the same process, interleaved round by round (A, B, C,
... then again), so they share warm-up, CPU frequency and noise; the figure
per variant is the median of its rounds, in microseconds per call.

Variants:
    bare                the undecorated function
    resilient           @resilient with the defaults (breaker, retry + budget,
                        idempotency key, overall deadline, request timeout)
    resilient-no-timeout  the same with timeout=None (no gevent.Timeout armed)
    resilient-all       defaults + bulkhead + fallback
    circuit_breaker / retry / timeout / bulkhead / fallback   one decorator each
    gevent.Timeout      for comparison with ``timeout``: a plain gevent.Timeout
                        armed and cancelled around each call (what @timeout did
                        before the per-hub deadline scheduler)

Two workloads: ``noop`` (the function returns at once: pure overhead) and
``yield`` (the function does one gevent.sleep(0), standing in for the hub
switch of a real I/O call).

Run: ``python bench/bench_resilience.py [--calls 10000] [--rounds 5]``.
Writes bench/results/resilience.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent

from nexus_green.events import EventBus
from nexus_green.resilience import (
    BulkheadConfig,
    FallbackConfig,
    bulkhead,
    circuit_breaker,
    fallback,
    resilient,
    retry,
    timeout,
)

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def noop(x: int) -> int:
    return x


def yielding(x: int) -> int:
    gevent.sleep(0)
    return x


def gevent_timeout(seconds: float) -> Callable[[Callable[[int], int]], Callable[[int], int]]:
    def decorate(fn: Callable[[int], int]) -> Callable[[int], int]:
        def wrapper(x: int) -> int:
            t = gevent.Timeout(seconds)
            t.start()
            try:
                return fn(x)
            finally:
                t.close()

        return wrapper

    return decorate


def variants(base: Callable[[int], int], tag: str) -> dict[str, Callable[[int], int]]:
    bus = EventBus()  # no subscribers: what an app without monitoring pays
    return {
        "bare": base,
        "resilient": resilient(idempotent=True, bus=bus)(base),
        "resilient-no-timeout": resilient(idempotent=True, timeout=None, bus=bus)(base),
        "resilient-all": resilient(
            idempotent=True,
            bulkhead=BulkheadConfig(name=f"bench-{tag}", max_concurrent=100),
            fallback=FallbackConfig(default=0),
            bus=bus,
        )(base),
        "circuit_breaker": circuit_breaker(bus=bus)(base),
        "retry": retry(idempotent=True, bus=bus)(base),
        "timeout": timeout(30.0)(base),
        "gevent.Timeout": gevent_timeout(30.0)(base),
        "bulkhead": bulkhead(f"bench-solo-{tag}", max_concurrent=100)(base),
        "fallback": fallback(default=0, bus=bus)(base),
    }


def time_per_call(fn: Callable[[int], int], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(i)
    return (time.perf_counter() - start) / calls * 1e6


def measure(fns: dict[str, Callable[[int], int]], calls: int, rounds: int) -> dict[str, dict[str, Any]]:
    for fn in fns.values():  # warm-up
        time_per_call(fn, calls // 10 or 1)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].append(time_per_call(fn, calls))
    bare = statistics.median(samples["bare"])
    out: dict[str, dict[str, Any]] = {}
    for name, values in samples.items():
        med = statistics.median(values)
        out[name] = {
            "us_per_call": med,
            "overhead_us": med - bare,
            "ratio_to_bare": med / bare,
            "rounds_us": values,
        }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=10000, help="calls per variant per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    results: dict[str, Any] = {
        "calls": args.calls,
        "rounds": args.rounds,
        "python": sys.version.split()[0],
        "gevent": gevent.__version__,
        "machine": platform.machine(),
        "workloads": {},
    }
    for tag, base in (("noop", noop), ("yield", yielding)):
        res = measure(variants(base, tag), args.calls, args.rounds)
        results["workloads"][tag] = res
        print(f"\nworkload: {tag}  ({args.calls} calls x {args.rounds} rounds, median)")
        print(f"{'variant':<22}{'us/call':>10}{'overhead us':>14}{'x bare':>9}")
        for name, r in res.items():
            print(f"{name:<22}{r['us_per_call']:>10.2f}{r['overhead_us']:>14.2f}{r['ratio_to_bare']:>9.2f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "resilience.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {RESULTS / 'resilience.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
