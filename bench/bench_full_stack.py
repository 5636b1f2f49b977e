"""The full default stack against raw gevent (issue 14): resilience + cache + monitor, hit-heavy and miss-heavy.

Every variant runs in its own child process, interleaved over rounds, against
one echo peer (the C epoll peer where a C compiler exists, bench/peers.py),
with 50 greenlets sending 64-byte requests for ``--seconds``:

    gevent     raw gevent sockets, one per greenlet (the floor to beat)
    bare       nexus_green Client.request, no middleware
    full-hit   Client(middlewares=[ResilienceMiddleware(), CacheMiddleware(l2="temporary")], monitor=...):
               requests drawn from 100 keys, so nearly every call is a cache hit
    full-miss  the same stack, every request a new key: a miss, a round trip, an L1 store and an L2 write behind

The monitor is a started PerformanceMonitor on the client's bus (what
``monitoring.enable()`` runs), so its per-request costs are in the figures.

Run: ``python bench/bench_full_stack.py [--seconds 3] [--rounds 3] [--code DIR]``.
Writes bench/results/full_stack.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from common import RESULTS, check_code_origin, code_env, frame, recv_exact, run_child
from peers import start_peer

VARIANTS = ["gevent", "bare", "full-hit", "full-miss"]
CONCURRENCY = 50
BODY = b"x" * 64


def child(variant: str, port: int, seconds: float) -> dict[str, Any]:
    import gevent
    from gevent import socket

    count = [0]
    stop = [0.0]

    if variant == "gevent":
        socks = []
        for _ in range(CONCURRENCY):
            s = socket.create_connection(("127.0.0.1", port))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            socks.append(s)
        wire = frame(1, BODY)

        def raw(s: Any) -> None:
            while time.perf_counter() < stop[0]:
                s.sendall(wire)
                head = recv_exact(s, 24)
                recv_exact(s, int.from_bytes(head[:4], "big") - 20)
                count[0] += 1

        workers = [(raw, s) for s in socks]
        closer: Any = lambda: [s.close() for s in socks]  # noqa: E731
    else:
        from nexus_green import Client
        from nexus_green.events import EventBus
        from nexus_green.middleware import CacheMiddleware
        from nexus_green.monitoring import PerformanceMonitor
        from nexus_green.resilience import ResilienceMiddleware

        bus = EventBus()
        monitor = None
        middlewares: list[Any] = []
        if variant != "bare":
            monitor = PerformanceMonitor(bus).start()
            middlewares = [ResilienceMiddleware(bus=bus), CacheMiddleware(when=1, l2="temporary", ttl=60)]
        client = Client(f"tcp://127.0.0.1:{port}", bus=bus, middlewares=middlewares, monitor=monitor)
        client.request(BODY, fid=1, timeout=5)
        keys = [b"k%03d" % i + BODY for i in range(100)]
        seq = [0]

        def nexus() -> None:
            req = client.request
            while time.perf_counter() < stop[0]:
                seq[0] += 1
                if variant == "full-hit":
                    body = keys[seq[0] % 100]
                elif variant == "full-miss":
                    body = b"%d-" % seq[0] + BODY
                else:
                    body = BODY
                req(body, fid=1, timeout=5)
                count[0] += 1

        if variant == "full-hit":  # warm the 100 keys
            for k in keys:
                client.request(k, fid=1, timeout=5)
        workers = [(nexus,) for _ in range(CONCURRENCY)]

        def closer() -> None:
            client.close()
            if monitor is not None:
                monitor.close()
            for m in middlewares:
                close = getattr(getattr(m, "cache", None), "close", None)
                if close is not None:
                    close()

    import resource

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    stop[0] = t0 + seconds
    gevent.joinall([gevent.spawn(*w) for w in workers])
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    closer()
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"rps": count[0] / wall, "cpu_us_per_req": cpu / max(1, count[0]) * 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--code", help="import nexus_green from this tree (before/after comparisons)")
    ap.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        res = child(args.child, args.port, args.seconds)
        if args.child != "gevent":
            res["code"] = check_code_origin(args.code)
        print(json.dumps(res))
        return 0
    peer = start_peer()
    print(f"peer: {peer.describe()}", flush=True)
    print(
        f"full stack: {len(VARIANTS)} variants x {args.rounds} rounds x {args.seconds:.0f} s: "
        f"about {len(VARIANTS) * args.rounds * (args.seconds + 1.5) / 60:.1f} min",
        flush=True,
    )
    env = code_env(args.code)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    try:
        for r in range(args.rounds):
            order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
            for variant in order:
                cpu0, t0 = peer.cpu_seconds(), time.perf_counter()
                argv = [__file__, "--child", variant, "--port", str(peer.port), "--seconds", str(args.seconds)]
                argv += ["--code", args.code] if args.code else []
                res = run_child(argv, timeout=args.seconds * 10 + 60, env=env)
                res["peer_cpu"] = (peer.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
                runs[variant].append(res)
                print(f"  round {r + 1}/{args.rounds} {variant:10s} {res['rps']:>10,.0f} req/s", flush=True)
    finally:
        peer.stop()
    med = {v: statistics.median(x["rps"] for x in runs[v]) for v in VARIANTS}
    cpu = {v: statistics.median(x["cpu_us_per_req"] for x in runs[v]) for v in VARIANTS}
    print("\nvariant       req/s (median)  x raw gevent   CPU us/req")
    for v in VARIANTS:
        print(f"{v:10s} {med[v]:>14,.0f}  {med[v] / med['gevent']:>11.2f}   {cpu[v]:>10.1f}")
    RESULTS.mkdir(exist_ok=True)
    out = {"median_rps": med, "cpu_us_per_req": cpu, "runs": runs, "code": runs["bare"][0]["code"]}
    (RESULTS / "full_stack.json").write_text(json.dumps(out, indent=2))
    print(f"nexus_green imported from {out['code']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
