"""Memory of idle connections (issue 14 target: <= 15 KB per connection).

After imports and a warm-up (one Client connected, requests sent, closed), the
child opens N idle connections to the echo peer in one of two shapes:

    clients   N Clients, each connected (its pool keeps one connection)
    pool      one Client with min_size=N, max_size=N (waits until the pool holds N)

then lets them idle for --idle seconds and reports, per connection:

* tracemalloc: Python memory still allocated (the increase of traced memory
  over the baseline), and the allocation sites that hold the most;
* RSS: the growth of the resident set (measured in a separate child, without
  tracemalloc, which itself costs memory);
* greenlets: live greenlet objects (found by ``gc.get_objects()``) added per
  connection; heartbeats and pool maintenance run in them.

Run: ``python bench/bench_idle_memory.py [--connections 200] [--idle 1.0] [--code DIR] [--quick]``.
Writes bench/results/idle_memory.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

from common import RESULTS, check_code_origin, code_env, rss_bytes, run_child
from peers import start_peer

TARGET_KB = 15.0


def live_greenlets() -> int:
    import greenlet

    return sum(1 for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and not o.dead)


def child(shape: str, method: str, port: int, n: int, idle: float) -> dict[str, Any]:
    import gevent

    from nexus_green import Client

    url = f"tcp://127.0.0.1:{port}"
    with Client(url) as warm:  # warm-up: every import and first-use path taken once
        for _ in range(50):
            warm.request(b"x" * 64, fid=1, timeout=5)
    gevent.sleep(0.1)
    gc.collect()
    if method == "tracemalloc":
        tracemalloc.start(10)
    g0 = live_greenlets()
    gc.collect()
    rss0 = rss_bytes()
    traced0 = tracemalloc.get_traced_memory()[0] if method == "tracemalloc" else 0
    snap0 = tracemalloc.take_snapshot() if method == "tracemalloc" else None

    clients: list[Any] = []
    if shape == "clients":
        for _ in range(n):
            clients.append(Client(url).connect(timeout=10))
    else:
        c = Client(url, min_size=n, max_size=n).connect(timeout=10)
        clients.append(c)
        deadline = time.monotonic() + 30
        while c.stats()["size"] < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pool opened {c.stats()['size']} of {n} connections in 30 s")
            gevent.sleep(0.01)
    gevent.sleep(idle)
    gc.collect()
    opened = sum(c.stats()["size"] for c in clients)
    res: dict[str, Any] = {"shape": shape, "method": method, "connections": opened}
    res["greenlets_per_conn"] = (live_greenlets() - g0) / opened
    if method == "tracemalloc":
        traced = tracemalloc.get_traced_memory()[0] - traced0
        snap = tracemalloc.take_snapshot()
        assert snap0 is not None
        top = snap.compare_to(snap0, "lineno")[:8]
        res["traced_kb_per_conn"] = traced / opened / 1024
        res["top_sites"] = [
            {"site": str(s.traceback[0]), "kb_per_conn": s.size_diff / opened / 1024, "count_diff": s.count_diff}
            for s in top
        ]
        tracemalloc.stop()
    else:
        res["rss_kb_per_conn"] = (rss_bytes() - rss0) / opened / 1024
    for c in clients:
        c.close()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--idle", type=float, default=1.0, help="seconds the connections idle before measuring")
    ap.add_argument("--quick", action="store_true", help="100 connections, 0.3 s idle")
    ap.add_argument("--code", help="a tree to import nexus_green from")
    ap.add_argument("--peer", choices=["auto", "c", "embedded"], default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / "idle_memory.json")
    ap.add_argument("--child", nargs=2, metavar=("SHAPE", "METHOD"), help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        check_code_origin(args.code)
        print(json.dumps(child(args.child[0], args.child[1], args.port, args.connections, args.idle)))
        return 0
    if args.quick:
        args.connections, args.idle = min(args.connections, 100), min(args.idle, 0.3)

    peer = start_peer(args.peer)
    print(f"peer: {peer.describe()}")
    print(f"{args.connections} idle connections, 2 shapes x (tracemalloc, RSS): about {4 * (args.idle + 1.5):.0f} s")
    rows: dict[str, dict[str, Any]] = {}
    try:
        for shape in ("clients", "pool"):
            row: dict[str, Any] = {}
            for method in ("tracemalloc", "rss"):
                argv = [__file__, "--child", shape, method, "--port", str(peer.port)]
                argv += ["--connections", str(args.connections), "--idle", str(args.idle)]
                argv += ["--code", args.code] if args.code else []
                row[method] = run_child(argv, timeout=120, env=code_env(args.code))
            rows[shape] = row
    finally:
        stats = peer.stop()

    print(f"\nIdle connections: {args.connections}, idle {args.idle} s, target <= {TARGET_KB:g} KB per connection\n")
    print(f"{'shape':38} {'tracemalloc KB/conn':>20} {'RSS KB/conn':>12} {'greenlets/conn':>15}")
    labels = {"clients": "N Clients, one connection each", "pool": "one Client, pool of N connections"}
    summary: dict[str, Any] = {}
    for shape, row in rows.items():
        t, r = row["tracemalloc"], row["rss"]
        print(
            f"{labels[shape]:38} {t['traced_kb_per_conn']:>20.1f} {r['rss_kb_per_conn']:>12.1f} {r['greenlets_per_conn']:>15.2f}"
        )
        summary[shape] = {
            "traced_kb_per_conn": t["traced_kb_per_conn"],
            "rss_kb_per_conn": r["rss_kb_per_conn"],
            "greenlets_per_conn": r["greenlets_per_conn"],
            "meets_target": max(t["traced_kb_per_conn"], r["rss_kb_per_conn"]) <= TARGET_KB,
        }
    print("\nwhere the Python memory of one idle connection is (tracemalloc, N Clients):")
    for site in rows["clients"]["tracemalloc"]["top_sites"]:
        print(f"  {site['kb_per_conn']:>7.2f} KB  {site['site']}")
    if stats:
        print(f"\npeer {stats}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "connections": args.connections,
                "idle_s": args.idle,
                "target_kb": TARGET_KB,
                "summary": summary,
                "details": rows,
                "peer": peer.kind,
            },
            indent=1,
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
