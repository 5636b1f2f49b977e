"""Monitoring memory: 1,000 tracked connections plus a full 10-minute history must stay under 10 MB.

Measured with tracemalloc: everything the PerformanceMonitor (registry,
sketches, tracker, history ring buffer) allocates while it follows 1,000
live connections and records 600 history points (one per second for 10
minutes, the defaults), with request traffic (io.stats events as connections
send them, latencies in array('f')), heartbeats, pool state and a spread of
error classes in between. Time is a FakeClock, so the run takes seconds.
The default configuration does not load numpy; what loading it costs (sample
rate 1.0 does) is measured in a fresh interpreter and reported on its own.

Also reports the monitor's own cost per latency (io.stats handling plus
bucketing, no network), with and without numpy.

Run: .venv/bin/python bench/bench_monitoring_memory.py
Writes bench/results/monitoring_memory.json.
"""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
import time
import tracemalloc
from array import array
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
        for _ in range(20):  # 20 connections report 10 requests each per second
            cid = f"c{rng.randrange(CONNECTIONS)}"
            latencies = array("f", [rng.lognormvariate(-6, 1.5) for _ in range(10)])  # wide: many buckets
            bus.emit(
                "io.stats",
                conn_id=cid,
                interval=0.1,
                bytes_sent=1200,
                frames_sent=10,
                bytes_received=2200,
                frames_received=10,
                completed=10,
                sampled_every=1,
                non_ok=0,
                latencies=latencies,
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


def run_handler_cost(batches: int = 120, size: int = 4096) -> dict:
    """The monitor's own cost per latency: io.stats handling and bucketing, batches as connections send them."""
    rng = random.Random(2)
    data = [array("f", [rng.lognormvariate(-7.5, 0.5) for _ in range(size)]) for _ in range(batches)]
    results = {}
    for label, rate, numpy in (
        ("sample_rate=1.0, numpy", 1.0, True),
        ("sample_rate=1.0, no numpy", 1.0, False),
        ("sample_rate=0.1 (default)", 0.1, None),
    ):
        bus = EventBus()
        mon = PerformanceMonitor(bus, config=MonitoringConfiguration(sample_rate=rate, numpy=numpy))
        emit = bus.emit
        best = float("inf")
        for _ in range(3):
            t0 = time.perf_counter()
            for lat in data:
                emit("io.stats", conn_id="c1", completed=size, latencies=lat)
            mon.flush()
            best = min(best, time.perf_counter() - t0)
        results[label] = best / (batches * size) * 1e9
        mon.close()
    return results


def numpy_import_cost() -> dict:
    """What importing numpy costs a fresh interpreter: traced Python memory and resident memory."""
    # Current RSS from /proc/self/statm: ru_maxrss of a child starts at its forking parent's peak.
    code = (
        "import json, os, tracemalloc\n"
        "def rss(): return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
        "r0 = rss(); tracemalloc.start(); import numpy\n"
        "print(json.dumps({'traced_bytes': tracemalloc.get_traced_memory()[0], 'rss_bytes': rss() - r0}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(out.stdout)


def main() -> int:
    mem = run_memory()
    cost = run_handler_cost()
    np_cost = numpy_import_cost()
    print("Monitoring memory (tracemalloc): 1,000 connections + full 10-minute history")
    print(f"{'figure':<34}{'value':>16}")
    for k in ("tracked_connections", "history_points", "series", "latency_buckets"):
        print(f"{k:<34}{mem[k]:>16}")
    print(f"{'monitor memory (MB)':<34}{mem['monitor_bytes'] / 1048576:>16.2f}")
    print(f"{'tracemalloc peak (MB)':<34}{mem['tracemalloc_peak_bytes'] / 1048576:>16.2f}")
    print(f"{'limit (MB)':<34}{LIMIT_BYTES / 1048576:>16.2f}")
    print(f"{'under the limit':<34}{str(mem['ok']):>16}")
    print()
    print(
        f"numpy, loaded at sample_rate 1.0 (not by the default): +{np_cost['traced_bytes'] / 1048576:.1f} MB traced,"
        f" +{np_cost['rss_bytes'] / 1048576:.1f} MB RSS, once per process"
    )
    print()
    print("Monitor cost per latency (io.stats handling + bucketing; io.stats of 4,096 latencies as array('f'))")
    print(f"{'case':<40}{'ns/latency':>12}")
    for k, v in cost.items():
        print(f"{k:<40}{v:>12.1f}")
    out = Path(__file__).resolve().parent / "results" / "monitoring_memory.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {"memory": mem, "per_latency_ns": cost, "numpy_import": np_cost, "python": sys.version.split()[0]},
            indent=2,
        )
        + "\n"
    )
    print(f"\nwrote {out}")
    return 0 if mem["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
