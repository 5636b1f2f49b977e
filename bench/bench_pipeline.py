"""Pipeline overhead: what the middleware pipeline costs a Client, against the Foundation workload.

Same method as bench/bench_foundation.py (whose helpers it imports): each
variant runs in its own process, one after another, against the same
bench/echo_peer.py process; 50 greenlets send 64-byte bodies, each call with
``timeout=5``, for a fixed time. Variants:

    (1) none      Client without middlewares (the Foundation benchmark's (a))
    (2) empty     Client(middlewares=Pipeline([]))
    (3) noop      Client with one middleware that only calls call_next
    (4) typical   rate limiter (huge limit) + backpressure (high watermarks)
                  + adaptive compression (64-byte bodies: it chooses none)

Target (issue 5): (2) and (3) cost at most 5% of (1)'s throughput. The whole
set is repeated ``--rounds`` times, interleaved, and each variant's best round
is compared (the machine is shared: the best round is the least disturbed).

It also measures, in one process and without the network, the CPU time each
variant adds per call: ``Client.request`` with the connection's round trip
replaced by a stub, minus the same with no middlewares.

Run: ``python bench/bench_pipeline.py [--seconds 3] [--rounds 3]``.
Writes bench/results/pipeline.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_foundation import BODY, CONCURRENCY, RESULTS, percentile, run_rounds  # noqa: E402

VARIANTS = ("none", "empty", "noop", "typical")
LABELS = {
    "none": "(1) Client, no middlewares",
    "empty": "(2) Client, Pipeline([])",
    "noop": "(3) Client, one no-op middleware",
    "typical": "(4) rate limit + backpressure + compression",
}


class NoOp:
    """The cheapest possible middleware."""

    name = "noop"

    def __call__(self, request: Any, call_next: Any) -> Any:
        return call_next(request)


def middlewares(variant: str) -> Any:
    from nexus_green.middleware import (
        BackpressureMiddleware,
        CompressionMiddleware,
        Pipeline,
        RateLimiter,
        RateLimitMiddleware,
        TokenBucket,
        Watermarks,
    )

    if variant == "none":
        return ()
    if variant == "empty":
        return Pipeline([])
    if variant == "noop":
        return Pipeline([NoOp()])
    return Pipeline(
        [
            RateLimitMiddleware(RateLimiter(TokenBucket(capacity=1e12, refill_rate=1e12)), per="fid"),
            BackpressureMiddleware(Watermarks(high=100_000, low=80_000), Watermarks(high=10_000, low=8_000)),
            CompressionMiddleware(),
        ]
    )


def run_variant(variant: str, port: int, seconds: float) -> dict[str, Any]:
    import gevent

    from nexus_green import Client

    lat: list[float] = []
    stop = time.perf_counter() + seconds
    client = Client(f"tcp://127.0.0.1:{port}", heartbeat_interval=None, middlewares=middlewares(variant))
    client.connect()

    def worker() -> None:
        pc = time.perf_counter
        req = client.request
        while True:
            t0 = pc()
            if t0 >= stop:
                return
            req(BODY, 1, None, 5.0)
            lat.append(pc() - t0)

    t0, c0 = time.perf_counter(), time.process_time()
    gevent.joinall([gevent.spawn(worker) for _ in range(CONCURRENCY)], raise_error=True)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - c0
    client.close()
    return {
        "requests": len(lat),
        "elapsed": elapsed,
        "client_cpu_us": cpu / max(1, len(lat)) * 1e6,
        "rps": len(lat) / elapsed,
        "p50": percentile(lat, 0.50) * 1000,
        "p95": percentile(lat, 0.95) * 1000,
        "p99": percentile(lat, 0.99) * 1000,
    }


def cpu_per_call(n: int) -> dict[str, float]:
    """Microseconds of CPU per call each variant adds, network replaced by a stub (one process)."""
    from nexus_green import Client
    from nexus_green.protocol.messages import Response

    reply = Response(body=BODY, fid=1)

    class StubPool:
        """What Client.request calls on its pool (request_until), answering at once."""

        def request_until(
            self, body: bytes, fid: int, headers: Any, tp: int, until: Any, by_deadline: bool = False
        ) -> Response:
            return reply

        def close(self, drain: float = 0.0) -> None:
            pass

    out: dict[str, float] = {}
    for variant in VARIANTS:
        client = Client("tcp://127.0.0.1:9", heartbeat_interval=None, middlewares=middlewares(variant))
        client.pool.close()
        client.pool = StubPool()  # type: ignore[assignment]
        req = client.request
        best = float("inf")
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(n):
                req(BODY, 1, None, 5.0)
            best = min(best, (time.perf_counter() - t0) / n)
        out[variant] = best * 1e6
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", choices=VARIANTS)
    ap.add_argument("--port", type=int)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run_variant(args.child, args.port, args.seconds)))
        return 0

    runs = run_rounds(__file__, list(VARIANTS), args.seconds, args.rounds)

    best = {v: max(r, key=lambda x: x["rps"]) for v, r in runs.items()}
    median = {v: statistics.median(x["rps"] for x in r) for v, r in runs.items()}
    base, base_median = best["none"]["rps"], median["none"]
    cpu = cpu_per_call(20_000)
    print(
        f"\nPipeline overhead: {CONCURRENCY} greenlets, 64-byte echo, timeout per call, "
        f"{args.seconds:g}s x {args.rounds} rounds (best round shown)\n"
    )
    print(
        f"{'variant':44} {'req/s':>9} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'peer CPU':>8}"
        f" {'cost':>7} {'cost(med)':>9} {'cli us/req':>10} {'+us/call':>8}"
    )
    summary: dict[str, Any] = {}
    for v in VARIANTS:
        r = best[v]
        cost = 1 - r["rps"] / base
        cost_median = 1 - median[v] / base_median
        added = cpu[v] - cpu["none"]
        summary[v] = {"cost": cost, "cost_median": cost_median, "cpu_us_per_call": cpu[v], "added_us_per_call": added}
        print(
            f"{LABELS[v]:44} {r['rps']:>9,.0f} {r['p50']:>7.3f} {r['p95']:>7.3f} {r['p99']:>7.3f} {r['server_cpu']:>8.0%}"
            f" {cost:>+7.1%} {cost_median:>+9.1%} {r['client_cpu_us']:>10.2f} {added:>8.2f}"
        )
    print(
        "\ncost = 1 - req/s / req/s of (1), best round (cost(med): medians of the rounds); cli us/req = client\n"
        "process CPU per request in that round; +us/call = client CPU added per call, network stubbed (one process)"
    )
    empty, noop = summary["empty"]["cost"], summary["noop"]["cost"]
    print(
        f"issue 5 target, the pipeline with no middlewares costs at most 5%: (2) {empty:+.1%} -> {'met' if empty <= 0.05 else 'NOT met'}"
    )
    print(f"stricter aim, one no-op middleware within 5%: (3) {noop:+.1%} -> {'met' if noop <= 0.05 else 'not met'}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pipeline.json").write_text(
        json.dumps(
            {
                "seconds": args.seconds,
                "rounds": args.rounds,
                "concurrency": CONCURRENCY,
                "runs": runs,
                "summary": summary,
                "cpu_us_per_call": cpu,
            },
            indent=2,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
