"""Sampling-profiler overhead: a Client workload with the sampler on and off, side by side in one run.

One process runs a Client workload (50 greenlets, 64-byte echo requests,
timeout on every call, one pooled connection) against an echo peer in its
own process (bench/peers.py: the C epoll peer when a C compiler exists, the
library's EmbeddedServer otherwise), without a pause, while a controller
greenlet switches between states in short slices:

    off          nothing profiles
    off-control  the same again (an A/A test: its "cost" is the noise of the method)
    sampler        nexus_green.profiling.SamplingProfiler as it comes: 5 ms, greenlets labelled by entry function
    sampler+names  ... with greenlet_names=True (the greenlet.settrace switch hook)
    sampler+io     the default sampler and an IOProfiler counting the transport's reads and writes

Each cycle runs every state once, in a random order (``--seed``), so drift
on the shared machine hits every state alike. A state's cost in a cycle is
its throughput against the off slice of the same cycle; the figure reported
is the median over cycles, with a 95% bootstrap interval. The target (issue
15): the sampler costs at most 5% of throughput while it runs.

Run: ``python bench/bench_profiler_overhead.py [--seconds 30] [--slice 0.25] [--peer auto]``.
Writes bench/results/profiler_overhead.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import RESULTS  # noqa: E402
from peers import start_peer  # noqa: E402

VARIANTS = ("off", "off-control", "sampler", "sampler+names", "sampler+io")
MEASURED = ("off-control", "sampler", "sampler+names", "sampler+io")
CONCURRENCY = 50
BODY = b"x" * 64


def bootstrap(values: list[float], rng: random.Random, n: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of the median."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (0.0, 0.0)
    meds = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(n))
    return meds[int(0.025 * n)], meds[int(0.975 * n) - 1]


def run(port: int, seconds: float, slice_s: float, seed: int) -> dict[str, Any]:
    import gevent

    from nexus_green import Client
    from nexus_green.events import EventBus
    from nexus_green.profiling.io import IOProfiler
    from nexus_green.profiling.sampler import SamplingProfiler

    bus = EventBus()
    client = Client(f"tcp://127.0.0.1:{port}", heartbeat_interval=None, bus=bus)
    client.connect()
    done = [0]
    running = [True]

    def worker() -> None:
        req = client.request
        while running[0]:
            req(BODY, 1, None, 5.0)
            done[0] += 1

    workers = [gevent.spawn(worker) for _ in range(CONCURRENCY)]
    gevent.sleep(0.5)  # warm up
    rng = random.Random(seed)
    totals = {v: {"requests": 0, "elapsed": 0.0, "cpu": 0.0, "samples": 0} for v in VARIANTS}
    cycles: list[dict[str, tuple[float, float]]] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        order = list(VARIANTS)
        rng.shuffle(order)
        cycle: dict[str, tuple[float, float]] = {}
        for variant in order:
            sampler = (
                SamplingProfiler(greenlet_names=variant == "sampler+names") if variant.startswith("sampler") else None
            )
            io = IOProfiler(bus) if variant == "sampler+io" else None
            if io is not None:
                io.start()
            if sampler is not None:
                sampler.start()
            n0, t0, c0 = done[0], time.perf_counter(), time.process_time()
            gevent.sleep(slice_s)
            n1, t1, c1 = done[0], time.perf_counter(), time.process_time()
            if sampler is not None:
                sampler.stop()
                totals[variant]["samples"] += sampler.samples
            if io is not None:
                io.stop()
            gc.collect()  # outside the window
            tot = totals[variant]
            tot["requests"] += n1 - n0
            tot["elapsed"] += t1 - t0
            tot["cpu"] += c1 - c0
            cycle[variant] = ((n1 - n0) / (t1 - t0), (c1 - c0) / max(1, n1 - n0))
        cycles.append(cycle)
    running[0] = False
    gevent.joinall(workers, timeout=10)
    client.close()
    rng2 = random.Random(seed + 1)
    result: dict[str, Any] = {"cycles": len(cycles), "slice": slice_s, "states": {}}
    for variant in VARIANTS:
        tot = totals[variant]
        state: dict[str, Any] = {
            "throughput": tot["requests"] / tot["elapsed"] if tot["elapsed"] else 0.0,
            "cpu_us_per_request": 1e6 * tot["cpu"] / max(1, tot["requests"]),
        }
        if variant.startswith("sampler"):
            state["samples_per_second"] = tot["samples"] / tot["elapsed"] if tot["elapsed"] else 0.0
        if variant in MEASURED:
            costs = [1 - c[variant][0] / c["off"][0] for c in cycles if c["off"][0]]
            state["cost_median"] = statistics.median(costs) if costs else 0.0
            state["cost_ci95"] = bootstrap(costs, rng2)
            # CPU per request: steadier than throughput on a shared machine, and what limits a busy client.
            cpu = [c[variant][1] / c["off"][1] - 1 for c in cycles if c["off"][1]]
            state["cpu_cost_median"] = statistics.median(cpu) if cpu else 0.0
            state["cpu_cost_ci95"] = bootstrap(cpu, rng2)
        result["states"][variant] = state
    return result


def _pct(state: dict[str, Any], key: str) -> tuple[str, str]:
    if key + "_median" not in state:
        return "", ""
    lo, hi = state[key + "_ci95"]
    return f"{state[key + '_median'] * 100:+.1f}%", f"[{lo * 100:+.1f}%, {hi * 100:+.1f}%]"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--slice", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=15)
    ap.add_argument("--peer", default="auto", choices=("auto", "c", "embedded"))
    args = ap.parse_args(argv)
    peer = start_peer(args.peer)
    print(f"profiler overhead: {args.seconds:g} s of slices of {args.slice:g} s; peer: {peer.describe()}", flush=True)
    try:
        result = run(peer.port, args.seconds, args.slice, args.seed)
    finally:
        print(peer.stop())
    result["peer"] = peer.kind
    print(
        f"{result['cycles']} cycles; throughput cost = 1 - req/s / req/s(off), CPU cost = CPU per request / "
        "CPU per request(off) - 1, each against the off slice of the same cycle: median [95% CI]"
    )
    print(
        f"{'state':<14} {'req/s':>10} {'CPU us/req':>11} {'thr. cost':>10} {'95% CI':>18} "
        f"{'CPU cost':>9} {'95% CI':>18} {'samples/s':>10}"
    )
    for variant, s in result["states"].items():
        cost, ci = _pct(s, "cost")
        cpu, cpu_ci = _pct(s, "cpu_cost")
        rate = f"{s['samples_per_second']:.0f}" if "samples_per_second" in s else ""
        print(
            f"{variant:<14} {s['throughput']:>10,.0f} {s['cpu_us_per_request']:>11.2f} {cost:>10} {ci:>18} "
            f"{cpu:>9} {cpu_ci:>18} {rate:>10}"
        )
    sampler = result["states"]["sampler"]
    verdict = "met" if sampler["cost_median"] <= 0.05 and sampler["cpu_cost_median"] <= 0.05 else "NOT met"
    print(
        f"target: the sampler costs at most 5% of throughput -> {verdict} (median throughput cost "
        f"{sampler['cost_median'] * 100:+.1f}%, CPU per request {sampler['cpu_cost_median'] * 100:+.1f}%; "
        f"the A/A control shows the noise: {result['states']['off-control']['cost_median'] * 100:+.1f}%)"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "profiler_overhead.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
