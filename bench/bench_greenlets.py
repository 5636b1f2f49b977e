"""10,000 greenlets sharing one Client (one pool), against the echo peer (issue 15).

After a warm-up, ``--greenlets`` greenlets are spawned at once; each sends
``--requests`` 64-byte requests (``timeout=30``) one after another through the
same Client (default pool: at most 4 connections, 256 requests in flight per
connection, so most greenlets wait for a slot). Reported: wall time from the
first spawn to the last answer, requests per second, per-request latency
(p50, p99, max; waiting for a connection slot included), the time until every
greenlet has its first answer, the RSS growth at the peak (sampled every
10 ms), the pool's size and errors.

Run: ``python bench/bench_greenlets.py [--greenlets 10000] [--requests 5] [--quick]``.
Writes bench/results/greenlets.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Optional

from common import RESULTS, PeakRSS, cpu_seconds, percentile
from peers import start_peer

BODY = b"x" * 64


def run(url: str, greenlets: int, requests: int) -> dict[str, Any]:
    import gc

    import gevent

    from nexus_green import Client

    client = Client(url)
    try:
        client.connect(timeout=10)
        for _ in range(200):
            client.request(BODY, fid=1, timeout=5)
        gc.collect()
        lat: list[float] = []
        firsts: list[float] = []
        errors = [0]
        first_error = [""]
        pc = time.perf_counter
        req = client.request

        def worker() -> None:
            for i in range(requests):
                t0 = pc()
                try:
                    req(BODY, fid=1, timeout=30)
                except Exception as exc:
                    errors[0] += 1
                    first_error[0] = first_error[0] or repr(exc)
                    continue
                t1 = pc()
                lat.append(t1 - t0)
                if i == 0:
                    firsts.append(t1)

        rss = PeakRSS().start()
        cpu0 = cpu_seconds(os.getpid())
        t0 = pc()
        gs = [gevent.spawn(worker) for _ in range(greenlets)]
        spawned = pc() - t0
        gevent.joinall(gs)
        wall = pc() - t0
        cpu = cpu_seconds(os.getpid()) - cpu0
        rss.stop()
        stats = client.stats()
    finally:
        client.close()
    lat.sort()
    return {
        "greenlets": greenlets,
        "requests_per_greenlet": requests,
        "requests": len(lat),
        "errors": errors[0],
        "first_error": first_error[0],
        "wall_s": wall,
        "spawn_s": spawned,
        "rps": len(lat) / wall if wall else 0.0,
        "cpu_us_per_request": cpu / len(lat) * 1e6 if lat else 0.0,
        "all_first_answers_s": (max(firsts) - t0) if firsts else 0.0,
        "p50_ms": percentile(lat, 0.50) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
        "max_ms": lat[-1] * 1000 if lat else 0.0,
        "rss_base_mb": rss.base / 2**20,
        "rss_growth_mb": (rss.peak - rss.base) / 2**20,
        "rss_kb_per_greenlet": (rss.peak - rss.base) / 1024 / greenlets,
        "pool_size": stats.get("size"),
    }


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--greenlets", type=int, default=10_000)
    ap.add_argument("--requests", type=int, default=5, help="requests per greenlet, one after another")
    ap.add_argument("--quick", action="store_true", help="one request per greenlet")
    ap.add_argument("--peer", choices=["auto", "c", "embedded"], default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / "greenlets.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.requests = 1
    peer = start_peer(args.peer)
    print(f"peer: {peer.describe()}")
    print(f"{args.greenlets:,} greenlets x {args.requests} requests on one Client: a few seconds", flush=True)
    try:
        cpu0 = peer.cpu_seconds()
        res = run(peer.url, args.greenlets, args.requests)
        res["peer_cpu_share"] = (peer.cpu_seconds() - cpu0) / res["wall_s"]
    finally:
        peer.stop()
    res["peer"] = peer.describe().split(" on port")[0]
    print(
        f"{res['requests']:,} requests in {res['wall_s']:.2f} s ({res['rps']:,.0f} req/s), "
        f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, max {res['max_ms']:.1f} ms; "
        f"every greenlet answered once after {res['all_first_answers_s']:.2f} s; "
        f"RSS +{res['rss_growth_mb']:.1f} MB ({res['rss_kb_per_greenlet']:.2f} KB/greenlet); "
        f"pool {res['pool_size']} connections; errors {res['errors']}; "
        f"client CPU {res['cpu_us_per_request']:.1f} us/request"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
