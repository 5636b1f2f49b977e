"""``make bench``: the benchmark suite as one report (issue 15).

Runs the parts one after another, each an existing bench/ script called with
flags (its own table on stdout, its JSON read back from bench/results/):

    connection  bench_connect.py        connect time plain, TLS, SOCKS5, SOCKS5 + TLS; pool warm-up
    matrix      bench_matrix.py         body size x concurrency, nexus against raw gevent, threads,
                                        asyncio and uvloop, against the same C epoll peer in the same run
    seed        bench_seed_targets.py   the Swift plan's targets; its paced run (12k QPS on a token
                                        schedule, latency from the intended send time) is the latency
                                        part, safe from coordinated omission, with its CDF
    greenlets   bench_greenlets.py      10,000 greenlets sharing one Client
    pool        bench_pool.py           pool options (max_size, spread_bytes, max_in_flight) under one load
    memory      bench_idle_memory.py    idle connections (the seed part adds RSS under load)
    pipeline    bench_pipeline.py       middlewares on vs off
    resilience  bench_resilience.py     @resilient / ResilienceMiddleware on vs off (Client section)
    cache       bench_cache.py          CacheMiddleware hit / miss against no cache
    compression bench_compression.py    codec ratio and speed, the adaptive choice per link (not in --quick)

It says up front how long it will take, prints progress, writes everything to
bench/results/<timestamp>.json, and regenerates docs/benchmarks.md between its
markers plus the charts in docs/bench/ (bench/report.py). A failing part is
reported and the rest still run; the exit status is non-zero if any failed.

    python bench/run_all.py             # the full suite, under 10 minutes
    python bench/run_all.py --quick     # every part, small: under a minute
    python bench/run_all.py --long      # the long statistical runs (make bench-long), about 35 minutes
    python bench/run_all.py --only matrix --only seed
    python bench/run_all.py --no-docs   # measure and write the JSON only

``--quick`` writes the JSON but leaves the docs alone unless ``--docs`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"


@dataclass(frozen=True)
class Part:
    name: str
    what: str
    argv: list[str]  # the full suite
    quick: list[str]  # --quick
    result: str  # the JSON file in bench/results/ the script writes
    seconds: float  # estimated wall time, full
    quick_seconds: float


PARTS = [
    Part(
        "connection",
        "connect time plain/TLS/SOCKS5, pool warm-up",
        ["bench_connect.py", "--connects", "50"],
        ["bench_connect.py", "--quick"],
        "connect.json",
        10,
        3,
    ),
    Part(
        "matrix",
        "size x concurrency, 5 contenders, same peer",
        ["bench_matrix.py", "--rounds", "2"],
        ["bench_matrix.py", "--quick", "--seconds", "0.3"],
        "matrix.json",
        250,
        16,
    ),
    Part(
        "pool",
        "pool options: max_size, spread_bytes, max_in_flight",
        ["bench_pool.py", "--rounds", "2"],
        ["bench_pool.py", "--quick"],
        "pool.json",
        35,
        6,
    ),
    Part(
        "seed",
        "seed targets; paced 12k QPS latency (no coordinated omission)",
        ["bench_seed_targets.py", "--seconds", "5"],
        ["bench_seed_targets.py", "--quick", "--seconds", "1", "--connects", "10"],
        "seed_targets.json",
        25,
        7,
    ),
    Part(
        "greenlets",
        "10,000 greenlets sharing one pool",
        ["bench_greenlets.py", "--requests", "5"],
        ["bench_greenlets.py", "--quick"],
        "greenlets.json",
        5,
        2,
    ),
    Part(
        "memory",
        "idle connections",
        ["bench_idle_memory.py"],
        ["bench_idle_memory.py", "--quick"],
        "idle_memory.json",
        12,
        4,
    ),
    Part(
        "pipeline",
        "middlewares on vs off",
        ["bench_pipeline.py", "--seconds", "2", "--rounds", "2"],
        ["bench_pipeline.py", "--seconds", "0.5", "--rounds", "1"],
        "pipeline.json",
        25,
        5,
    ),
    Part(
        "resilience",
        "resilience layers on vs off",
        ["bench_resilience.py", "--rounds", "3", "--inner-rounds", "10"],
        ["bench_resilience.py", "--sections", "client", "--rounds", "1", "--inner-rounds", "3"],
        "resilience.json",
        30,
        2,
    ),
    Part(
        "cache",
        "cache hit/miss vs no cache",
        ["bench_cache.py", "--rounds", "2"],
        ["bench_cache.py", "--no-zipf", "--rounds", "1", "--inner", "2", "--seconds", "0.1", "--concurrency", "50"],
        "cache.json",
        45,
        3,
    ),
    Part(
        "compression",
        "codec ratio and speed, adaptive choice per link (cost model)",
        ["bench_compression.py"],
        [],  # not in --quick (its quick form alone takes 9 s)
        "compression.json",
        18,
        0,
    ),
]

# make bench-long: the long statistical runs and the area benchmarks outside the report.
LONG = [
    ["bench_monitoring_overhead.py", "--seconds", "120", "--rounds", "8"],  # about 1,100 cycles, 16 minutes
    ["bench_profiler_overhead.py", "--seconds", "120"],
    ["bench_tracing_overhead.py"],
    ["bench_memory_inflight.py", "--seconds", "30", "--timeout", "300"],
    ["bench_foundation.py", "--seconds", "5"],
    ["bench_compression.py"],
    ["bench_compression_e2e.py", "--seconds", "3"],
    ["bench_monitoring_memory.py"],
    ["bench_ratelimit.py"],
    ["request_path_observations.py"],
    ["bench_copies.py"],
    ["bench_full_stack.py"],
    ["bench_dashboard_push.py", "--rounds", "10"],
]
LONG_ESTIMATE_S = 35 * 60


def fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min"


def run_part(part: Part, quick: bool, python: str) -> tuple[Optional[dict[str, Any]], float, int]:
    argv = part.quick if quick else part.argv
    path = RESULTS / part.result
    before = path.stat().st_mtime if path.exists() else None
    t0 = time.perf_counter()
    rc = subprocess.call([python, str(HERE / argv[0]), *argv[1:]], cwd=ROOT)
    wall = time.perf_counter() - t0
    if rc or not path.exists() or path.stat().st_mtime == before:
        return None, wall, rc or 1
    return json.loads(path.read_text()), wall, 0


def load_average() -> Optional[list[float]]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return None


def run_long(python: str) -> int:
    print(f"make bench-long: {len(LONG)} benchmarks, about {fmt_s(LONG_ESTIMATE_S)}", flush=True)
    failed = []
    t0 = time.perf_counter()
    for i, argv in enumerate(LONG, 1):
        print(f"\n=== [{i}/{len(LONG)}] {' '.join(argv)}   ({fmt_s(time.perf_counter() - t0)} elapsed) ===", flush=True)
        if subprocess.call([python, str(HERE / argv[0]), *argv[1:]], cwd=ROOT):
            failed.append(argv[0])
    print(
        f"\n{len(LONG) - len(failed)} of {len(LONG)} ran in {fmt_s(time.perf_counter() - t0)}; results in bench/results/"
    )
    if failed:
        print(f"failed: {', '.join(failed)}")
        return 1
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every part, small: under a minute")
    ap.add_argument("--long", action="store_true", help="the long statistical runs instead (make bench-long)")
    ap.add_argument("--only", action="append", default=[], choices=[p.name for p in PARTS], help="run only these parts")
    ap.add_argument(
        "--docs", action=argparse.BooleanOptionalAction, default=None, help="regenerate docs (default: full runs only)"
    )
    ap.add_argument("--out", type=Path, help="the suite's JSON (default bench/results/<timestamp>.json)")
    args = ap.parse_args(argv)
    python = sys.executable
    if args.long:
        return run_long(python)
    parts = [p for p in PARTS if (not args.only or p.name in args.only) and (p.quick or not args.quick)]
    estimate = sum(p.quick_seconds if args.quick else p.seconds for p in parts) + 5
    mode = "quick" if args.quick else "full"
    load = load_average()
    print(
        f"make bench ({mode}): {len(parts)} parts, about {fmt_s(estimate)} "
        f"(load average {load[0] if load else '?'} on {os.cpu_count()} CPUs)",
        flush=True,
    )
    for p in parts:
        print(f"  {p.name:11} {fmt_s(p.quick_seconds if args.quick else p.seconds):>8}  {p.what}")
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime())
    t0 = time.perf_counter()
    results: dict[str, Any] = {}
    walls: dict[str, float] = {}
    failed: list[str] = []
    done_est = 0.0
    for i, p in enumerate(parts, 1):
        elapsed = time.perf_counter() - t0
        left = estimate - done_est
        print(
            f"\n=== [{i}/{len(parts)}] {p.name}: {p.what}   ({fmt_s(elapsed)} elapsed, about {fmt_s(max(left, 0))} left) ===",
            flush=True,
        )
        res, wall, rc = run_part(p, args.quick, python)
        done_est += p.quick_seconds if args.quick else p.seconds
        walls[p.name] = wall
        if res is None:
            failed.append(p.name)
            print(f"!!! part {p.name} failed (exit {rc})", flush=True)
        else:
            results[p.name] = res
    total = time.perf_counter() - t0
    suite = {
        "meta": {
            "mode": mode,
            "command": "python bench/run_all.py" + (" --quick" if args.quick else ""),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "stamp": stamp,
            "cpus": os.cpu_count(),
            "load_average_start": load,
            "load_average_end": load_average(),
            "python": sys.version.split()[0],
            "estimate_s": estimate,
            "wall_s": total,
            "part_wall_s": walls,
            "failed": failed,
        },
        "parts": results,
    }
    out = args.out or RESULTS / f"{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(suite, indent=1))
    print(
        f"\nthe suite took {fmt_s(total)} (estimate {fmt_s(estimate)}); wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}"
    )
    write_docs = args.docs if args.docs is not None else not args.quick and not args.only
    if write_docs:
        import report

        written = report.render(suite, report.DOCS, report.CHARTS, json_copy=report.CHARTS / "report.json")
        print("regenerated: " + ", ".join(str(Path(w).relative_to(ROOT)) for w in written))
    if failed:
        print(f"failed parts: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
