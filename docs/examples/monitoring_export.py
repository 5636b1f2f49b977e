"""Generates the four export formats shown in docs/monitoring.md from one run.

A PerformanceMonitor follows a short, scripted session (two connections, 200
requests, a timeout, a refused connect), on a FakeClock so the output is the
same on every run. One snapshot, cut down to a few series so the page stays
readable, is rendered as JSON, Prometheus text and CSV, and sent through a
real StatsDSink to a UDP socket on 127.0.0.1, whose packets are printed.

Run: .venv/bin/python docs/examples/monitoring_export.py
"""

from __future__ import annotations

import socket

from nexus_green.clock import FakeClock
from nexus_green.errors import ConnectionRefused, RequestTimeout
from nexus_green.events import EventBus
from nexus_green.monitoring import MonitoringConfiguration, PerformanceMonitor, StatsDSink
from nexus_green.monitoring.export import to_csv, to_json, to_prometheus

SHOWN = {"requests.completed", "connections.active", "request.latency", "errors", "throughput.requests"}


def session(bus: EventBus, clock: FakeClock, mon: PerformanceMonitor) -> None:
    for cid in ("c1", "c2"):
        ep = "tcp://127.0.0.1:7600"
        bus.emit("connect.started", conn_id=cid, endpoint=ep)
        bus.emit("connect.complete", conn_id=cid, endpoint=ep, duration=0.0021, phases={"tcp": 0.0021})
    bus.emit(
        "connect.failed",
        conn_id="c3",
        endpoint="tcp://127.0.0.1:1",
        duration=0.0004,
        error=ConnectionRefused("refused"),
    )
    mon.tick()
    clock.advance(1.0)
    for q in range(200):
        latency = 0.0008 + (q % 20) * 0.0001 + (0.010 if q % 100 == 99 else 0.0)
        bus.emit("io.stats", conn_id="c1" if q % 2 else "c2", completed=1, latencies=[latency])
    bus.emit("request.failed", conn_id="c1", qid=500, fid=7, latency=1.0, error=RequestTimeout("qid=500 timed out"))
    mon.tick()


def main() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(2.0)
    bus, clock = EventBus(), FakeClock(start=0.0, wall_offset=1_767_225_600.0)
    cfg = MonitoringConfiguration(statsd_port=receiver.getsockname()[1], statsd_prefix="app", sample_rate=1.0)
    with PerformanceMonitor(bus, clock=clock, config=cfg) as mon:
        session(bus, clock, mon)
        snap = mon.snapshot()
        snap["metrics"] = [m for m in snap["metrics"] if m["name"] in SHOWN]
        print("=== JSON ===")
        print(to_json(snap, indent=2))
        print("=== Prometheus ===")
        print(to_prometheus(snap), end="")
        print("=== CSV ===")
        print(to_csv(snap), end="")
        print("=== StatsD ===")
        sink = StatsDSink(lambda: snap, config=cfg)
        sink.flush()
        receiver.settimeout(0.5)
        try:
            while True:
                print(receiver.recv(65536).decode("ascii"))
        except TimeoutError:
            pass
        sink.close()
    receiver.close()


if __name__ == "__main__":
    main()
