"""Tracing overhead: the Foundation Client workload with tracing off, at the default sampling and at 1.0, same run.

One client process runs the Foundation benchmark's Client workload (50
greenlets, 64-byte echo, a timeout on every call) against bench/echo_peer.py
without a pause, while a controller switches the workload between states in
short slices. Each state has its own Client (its own connection, warmed up
before measuring), so switching state is switching which client the 50
greenlets call:

    off          a Client with no middleware (tracing not installed)
    off-control  a second such Client: the A/A control, the noise floor of the method
    default      a Client with TracingMiddleware and the default sampler, ParentBased(TraceIdRatio(0.1)),
                 exporting the sampled spans as OTLP/JSON through a BatchExporter to a FileSink on /dev/null
    always       the same with every request sampled (AlwaysOn)
    unsampled    the same with no request sampled (AlwaysOff): the fixed cost every request pays
    default-lean the default sampling with message_spans=False (no per-request request.complete event)

Every request is a root (no span is current in the workers), so the default
state samples one request in ten. The exporter greenlet runs in the same
process and its encoding work is charged to the slices it runs in. Each
cycle runs every state once in a random order (``--seed``); a state's cost
in a cycle is its throughput against the off slice of the same cycle, and
the figure reported is the median over every cycle of every round, with a
95% bootstrap interval (see bench_monitoring_overhead.py for why slices and
medians: one slice's throughput scatters by several percent on this shared
2-core machine).

Target (issue 18): at most 2% lower throughput at the default sampling; the
cost at 1.0 is reported.

Run: ``python bench/bench_tracing_overhead.py [--seconds 12] [--slice 0.2] [--rounds 3]``.
Writes bench/results/tracing_overhead.json.
"""

from __future__ import annotations

import gc
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_foundation as bf  # noqa: E402
from common import interleaved_rounds, median_interval  # noqa: E402

VARIANTS = ("off", "off-control", "unsampled", "default", "default-lean", "always")
MEASURED = ("off-control", "unsampled", "default", "default-lean", "always")


def child(port: int, seconds: float, slice_s: float, seed: int) -> None:
    import gevent

    from nexus_green import Client
    from nexus_green.events import EventBus
    from nexus_green.tracing import (
        DEFAULT_SAMPLER,
        AlwaysOff,
        AlwaysOn,
        BatchExporter,
        FileSink,
        SpanManager,
        TracingMiddleware,
    )

    url = f"tcp://127.0.0.1:{port}"
    managers: dict[str, Any] = {}
    tracings: list[Any] = []
    clients: dict[str, Any] = {}
    for v in VARIANTS:
        bus = EventBus()
        mws: list[Any] = []
        if v not in ("off", "off-control"):
            exporter = BatchExporter(FileSink(os.devnull), interval=1.0)
            sampler = {"always": AlwaysOn(), "unsampled": AlwaysOff()}.get(v, DEFAULT_SAMPLER)
            manager = SpanManager(sampler=sampler, processors=[exporter])
            managers[v] = (manager, exporter)
            mw = TracingMiddleware(manager, bus=bus, message_spans=v != "default-lean")
            tracings.append(mw)
            mws.append(mw)
        clients[v] = Client(url, heartbeat_interval=None, bus=bus, middlewares=mws)
        clients[v].connect()
    done = [0]
    running = [True]
    active = ["off"]

    def worker() -> None:
        while running[0]:
            clients[active[0]].request(bf.BODY, 1, None, 5.0)
            done[0] += 1

    workers = [gevent.spawn(worker) for _ in range(bf.CONCURRENCY)]
    for v in VARIANTS:  # warm every client and its connection
        active[0] = v
        gevent.sleep(0.3)
    rng = random.Random(seed)
    cycles: list[dict[str, float]] = []
    totals = {v: {"requests": 0, "elapsed": 0.0, "cpu": 0.0} for v in VARIANTS}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        order = list(VARIANTS)
        rng.shuffle(order)
        cycle: dict[str, float] = {}
        for v in order:
            active[0] = v
            gevent.sleep(0.01)  # let the greenlets of the previous state's calls finish
            n0, t0, c0 = done[0], time.perf_counter(), time.process_time()
            gevent.sleep(slice_s)
            n1, t1, c1 = done[0], time.perf_counter(), time.process_time()
            gc.collect()
            tot = totals[v]
            tot["requests"] += n1 - n0
            tot["elapsed"] += t1 - t0
            tot["cpu"] += c1 - c0
            cycle[v] = (n1 - n0) / (t1 - t0)
        cycles.append(cycle)
    running[0] = False
    gevent.joinall(workers, timeout=10, raise_error=True)
    for c in clients.values():
        c.close()
    out: dict[str, Any] = {}
    for mw in tracings:
        mw.close()
    for v, (manager, exporter) in managers.items():
        manager.shutdown()
        out[v + "_spans"] = {"exported": exporter.exported, "dropped": exporter.dropped}
    for v, tot in totals.items():
        out[v] = {
            "rps": tot["requests"] / tot["elapsed"],
            "cpu_us_per_req": tot["cpu"] / max(1, tot["requests"]) * 1e6,
            "requests": tot["requests"],
        }
    for v in MEASURED:
        out[v]["cycle_costs"] = [1 - c[v] / c["off"] for c in cycles]
    print(json.dumps(out))


def main() -> int:
    parsed = interleaved_rounds(__file__, child)
    if parsed is None:
        return 0  # a child: it printed its figures
    args, rounds = parsed
    print(
        f"\nTracing overhead: Client workload, 50 greenlets, states rotated every {args.slice}s "
        f"for {args.seconds:.0f}s in one process, {args.rounds} round(s)\n"
    )
    print(f"{'round':6} {'variant':12} {'req/s':>10} {'vs off':>8} {'CPU us/req':>11} {'vs off':>8} {'peer CPU':>9}")
    for k, r in enumerate(rounds, 1):
        base, base_cpu = r["off"]["rps"], r["off"]["cpu_us_per_req"]
        for v in VARIANTS:
            x = r[v]
            print(
                f"{k:<6} {v:12} {x['rps']:>10,.0f} {x['rps'] / base - 1:>+8.1%} {x['cpu_us_per_req']:>11.2f}"
                f" {x['cpu_us_per_req'] / base_cpu - 1:>+8.1%} {r['server_cpu']:>8.0%}"
            )
        for v in ("default", "default-lean", "always"):
            s = r[v + "_spans"]
            print(f"       {v}: {s['exported']:,} spans exported, {s['dropped']:,} dropped")
    print()
    summary = {}
    for v, target in (
        ("off-control", 0.0),
        ("unsampled", None),
        ("default", 0.02),
        ("default-lean", 0.02),
        ("always", None),
    ):
        pooled = [c for r in rounds for c in r[v]["cycle_costs"]]
        low, high = median_interval(pooled)
        summary[v] = {
            "throughput_cost_median_of_cycles": statistics.median(pooled),
            "throughput_cost_median_ci95": [low, high],
            "cycles": len(pooled),
        }
        if v == "off-control":
            goal = "A/A control: the noise floor, ideally 0"
        elif target is None:
            goal = "reported"
        else:
            verdict = "met" if high <= target else "NOT met" if low > target else "not proven"
            goal = f"target <= {target:.0%}: {verdict}"
        print(
            f"{v}: throughput cost {summary[v]['throughput_cost_median_of_cycles']:+.1%}"
            f" (95% interval {low:+.1%} .. {high:+.1%}; {goal}), median of {len(pooled)} cycles"
        )
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "tracing_overhead.json").write_text(
        json.dumps({"seconds": args.seconds, "slice": args.slice, "rounds": rounds, "summary": summary}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
