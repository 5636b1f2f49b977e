"""Monitoring memory: 1,000 tracked connections plus a full 10-minute history must stay under 10 MB.

Measured with tracemalloc: everything the PerformanceMonitor (registry,
sketches, tracker, history ring buffer) allocates while it follows 1,000
live connections and records 600 history points (one per second for 10
minutes, the defaults), with request traffic, heartbeats, pool state and a
spread of error classes in between. Time is a FakeClock, so the run takes
seconds. Also reports the per-event cost of the request.complete handlers.

Run: .venv/bin/python bench/bench_monitoring_memory.py
Writes bench/results/monitoring_memory.json.
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time
import tracemalloc
from pathlib import Path

from nexus_green.clock import FakeClock
from nexus_green.errors import ConnectionLost, RequestTimeout
from nexus_green.events import EventBus
from nexus_green.monitoring import MonitoringConfiguration, PerformanceMonitor

CONNECTIONS = 1000
LIMIT_BYTES = 10 * 1024 * 1024


def run_memory() -> dict:
    rng = random.Random(1)
    bus, clock = EventBus(), FakeClock(start=0.0)
    cfg = MonitoringConfiguration()  # defaults: 600 points, one per second
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    mon = PerformanceMonitor(bus, clock=clock, config=cfg)
    for i in range(CONNECTIONS):
        cid, ep = f"c{i}", f"tcp://10.0.{i // 250}.{i % 250}:7600"
        bus.emit("connection.state", conn_id=cid, endpoint=ep, old="idle", new="connecting")
        bus.emit("connect.started", conn_id=cid, endpoint=ep)
        for phase in ("dns", "tcp", "tls"):
            bus.emit(f"connect.{phase}.complete", conn_id=cid, endpoint=ep, duration=rng.uniform(0.0001, 0.01))
        bus.emit(
            "connect.complete",
            conn_id=cid,
            endpoint=ep,
            duration=0.01,
            phases={"dns": 0.001, "tcp": 0.004, "tls": 0.005},
        )
        bus.emit("connection.state", conn_id=cid, endpoint=ep, old="connecting", new="connected")
    for point in range(cfg.history_points):
        for _ in range(200):
            cid = f"c{rng.randrange(CONNECTIONS)}"
            bus.emit("io.sent", conn_id=cid, nbytes=120, frames=1)
            bus.emit("io.received", conn_id=cid, nbytes=220, frames=1)
            latency = rng.lognormvariate(-6, 1.5)  # wide spread: many sketch buckets
            bus.emit(
                "request.complete",
                conn_id=cid,
                qid=point,
                fid=1,
                latency=latency,
                bytes_out=120,
                bytes_in=220,
                code=200,
            )
        cid = f"c{rng.randrange(CONNECTIONS)}"
        bus.emit("request.failed", conn_id=cid, qid=point, fid=1, latency=1.0, error=RequestTimeout("t"))
        bus.emit("heartbeat.rtt", conn_id=cid, rtt=rng.uniform(0.0001, 0.05))
        if point % 10 == 0:
            err = type(f"AppError{point % 40}", (Exception,), {})("x")
            bus.emit("request.failed", conn_id=cid, qid=point, fid=1, latency=0.1, error=err)
            bus.emit(
                "pool.state",
                pool=f"pool{point % 4}",
                size=4,
                max_size=4,
                in_use=2,
                idle=2,
                waiters=0,
                utilisation=0.4,
                in_flight=20,
            )
        clock.advance(1.0)
        mon.tick()
    # churn: some connections close and are replaced (closed ones are kept up to closed_connections_kept)
    for i in range(200):
        bus.emit(
            "connection.closed", conn_id=f"c{i}", endpoint="tcp://x", age=600.0, requests=10, error=ConnectionLost("x")
        )
        bus.emit("connect.started", conn_id=f"n{i}", endpoint="tcp://y")
        bus.emit("connect.complete", conn_id=f"n{i}", endpoint="tcp://y", duration=0.01, phases={})
    gc.collect()
    after = tracemalloc.take_snapshot()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    used = sum(s.size_diff for s in after.compare_to(before, "filename"))
    figures = {
        "tracked_connections": mon.tracker.tracked,
        "history_points": len(mon.history),
        "series": len(mon.registry),
        "latency_buckets": mon.latency.sketch.buckets,
        "monitor_bytes": used,
        "tracemalloc_peak_bytes": peak,
        "limit_bytes": LIMIT_BYTES,
        "ok": used < LIMIT_BYTES,
    }
    mon.close()
    return figures


def run_handler_cost(n: int = 200_000) -> dict:
    """ns per request's events (io.sent + io.received + request.complete) with and without a monitor."""
    results = {}
    for label in ("bus only", "with monitor", "with monitor, sample_rate=0.1"):
        bus = EventBus()
        mon = None
        if label != "bus only":
            rate = 0.1 if "0.1" in label else 1.0
            mon = PerformanceMonitor(bus, config=MonitoringConfiguration(sample_rate=rate))
        else:
            # Subscribe a no-op so the bus builds the same Event objects.
            for name in ("io.sent", "io.received", "request.complete"):
                bus.subscribe(lambda e: None, prefix=name)
        emit = bus.emit
        t0 = time.perf_counter()
        for q in range(n):
            emit("io.sent", conn_id="c1", nbytes=120, frames=1)
            emit("io.received", conn_id="c1", nbytes=220, frames=1)
            emit("request.complete", conn_id="c1", qid=q, fid=1, latency=0.0012, bytes_out=120, bytes_in=220, code=200)
        results[label] = (time.perf_counter() - t0) / n * 1e9
        if mon is not None:
            mon.close()
    results["monitor overhead per request (ns)"] = results["with monitor"] - results["bus only"]
    return results


def main() -> int:
    mem = run_memory()
    cost = run_handler_cost()
    print("Monitoring memory (tracemalloc): 1,000 connections + full 10-minute history")
    print(f"{'figure':<34}{'value':>16}")
    for k in ("tracked_connections", "history_points", "series", "latency_buckets"):
        print(f"{k:<34}{mem[k]:>16}")
    print(f"{'monitor memory (MB)':<34}{mem['monitor_bytes'] / 1048576:>16.2f}")
    print(f"{'tracemalloc peak (MB)':<34}{mem['tracemalloc_peak_bytes'] / 1048576:>16.2f}")
    print(f"{'limit (MB)':<34}{LIMIT_BYTES / 1048576:>16.2f}")
    print(f"{'under the limit':<34}{str(mem['ok']):>16}")
    print()
    print("Per-request event cost (io.sent + io.received + request.complete)")
    print(f"{'case':<40}{'ns/request':>12}")
    for k, v in cost.items():
        print(f"{k:<40}{v:>12.0f}")
    out = Path(__file__).resolve().parent / "results" / "monitoring_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps({"memory": mem, "per_request_ns": cost, "python": sys.version.split()[0]}, indent=2) + "\n"
    )
    print(f"\nwrote {out}")
    return 0 if mem["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
