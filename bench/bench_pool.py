"""Pool sizing: the same load through Clients with different pool options, side by side in one run (issue 15).

Variants (each a fresh Client per run, in this process, against the C epoll
echo peer; the variants take turns, ``--rounds`` times, so the machine's noise
hits them alike):

    default        max_size 4, max_in_flight 256, spread_bytes 1 MiB
    max_size=1     every request on one TCP link
    no-spread      spread_bytes 1 GiB: only max_in_flight opens another connection
    max_in_flight=8  a connection takes 8 requests before the pool opens another

Cells: 64 B bodies at 50 greenlets, 64 KiB at 50, 1 MiB at 10 (closed loop,
``timeout=10`` per call, ``--seconds`` per run after a short warm-up). Reported
per cell and variant: median req/s over the rounds, p99 latency, and the
connections the pool held at the end.

Run: ``python bench/bench_pool.py [--seconds 1] [--rounds 2] [--quick]``.
Writes bench/results/pool.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

from common import RESULTS, percentile
from peers import start_peer

VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "max_size=1": {"max_size": 1},
    "no-spread": {"spread_bytes": 1 << 30},
    "max_in_flight=8": {"max_in_flight": 8},
}
CELLS = [(64, 50), (65536, 50), (1 << 20, 10)]


def run(url: str, options: dict[str, Any], size: int, conc: int, seconds: float) -> dict[str, Any]:
    import gevent

    from nexus_green import Client

    body = b"x" * size
    client = Client(url, **options)
    try:
        client.connect(timeout=10)
        lat: list[float] = []
        errors = [0]
        pc = time.perf_counter
        start = pc() + 0.1  # warm-up: the pool opens what it will open
        end = start + seconds

        def worker() -> None:
            while True:
                t0 = pc()
                if t0 >= end:
                    return
                try:
                    client.request(body, fid=1, timeout=10)
                except Exception:
                    errors[0] += 1
                    continue
                t1 = pc()
                if start <= t1 <= end:
                    lat.append(t1 - t0)

        gevent.joinall([gevent.spawn(worker) for _ in range(conc)])
        size_now = client.stats().get("size")
    finally:
        client.close()
    lat.sort()
    return {
        "rps": len(lat) / seconds,
        "p50_ms": percentile(lat, 0.5) * 1000,
        "p99_ms": percentile(lat, 0.99) * 1000,
        "connections": size_now,
        "errors": errors[0],
    }


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="one round of 0.3 s")
    ap.add_argument("--peer", choices=["auto", "c", "embedded"], default="auto")
    ap.add_argument("--out", type=Path, default=RESULTS / "pool.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 0.3, 1
    peer = start_peer(args.peer)
    est = len(CELLS) * len(VARIANTS) * args.rounds * (args.seconds + 0.3)
    print(f"peer: {peer.describe()}")
    print(f"{len(CELLS)} cells x {len(VARIANTS)} pool variants x {args.rounds} rounds: about {est:.0f} s", flush=True)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {f"{s}/{c}": {v: [] for v in VARIANTS} for s, c in CELLS}
    try:
        for r in range(args.rounds):
            for size, conc in CELLS:
                names = list(VARIANTS)
                k = r % len(names)
                for name in names[k:] + names[:k]:
                    res = run(peer.url, VARIANTS[name], size, conc, args.seconds)
                    runs[f"{size}/{conc}"][name].append(res)
                print(
                    f"  round {r + 1}/{args.rounds} {size:>8} B c={conc:<3} "
                    + "  ".join(f"{n} {runs[f'{size}/{conc}'][n][-1]['rps']:,.0f}" for n in names),
                    flush=True,
                )
    finally:
        peer.stop()
    cells = []
    for size, conc in CELLS:
        cell = runs[f"{size}/{conc}"]
        row: dict[str, Any] = {"size": size, "conc": conc, "variants": {}}
        for name, rs in cell.items():
            row["variants"][name] = {
                "median_rps": statistics.median(x["rps"] for x in rs),
                "p99_ms": statistics.median(x["p99_ms"] for x in rs),
                "connections": rs[-1]["connections"],
                "errors": sum(x["errors"] for x in rs),
            }
        cells.append(row)
    print(f"\n{'cell':>14} " + " ".join(f"{n:>18}" for n in VARIANTS))
    for row in cells:
        vals = " ".join(
            f"{v['median_rps']:>10,.0f} ({v['connections']} conn)".rjust(18) for v in row["variants"].values()
        )
        print(f"{row['size']:>8} B c={row['conc']:<3} {vals}")
    out = {
        "seconds": args.seconds,
        "rounds": args.rounds,
        "variants": {k: v for k, v in VARIANTS.items()},
        "peer": peer.describe().split(" on port")[0],
        "cells": cells,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
