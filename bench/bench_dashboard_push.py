"""Dashboard push latency: from a metric change to the event arriving at an SSE client (issue 17: < 100 ms at 1 s).

Two figures, with the push interval at 1 s:

* **breaker change** -- a real CircuitBreaker on the monitor's bus is tripped;
  the time until an SSE event showing it open is parsed by a client on a raw
  socket. The stream pushes a breaker change at once, not at the next tick.
* **tick delivery** -- for ordinary ticks, the time from the view model's
  ``time`` (when it was built) to its arrival at the client.

Prints a table and writes bench/results/bench_dashboard_push.json. Run:
``.venv/bin/python bench/bench_dashboard_push.py --rounds 20``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import gevent
from gevent import socket as gsocket

from nexus_green.dashboard import DashboardServer
from nexus_green.events import EventBus
from nexus_green.monitoring import PerformanceMonitor
from nexus_green.resilience import BreakerConfig, CircuitBreaker

RESULTS = Path(__file__).resolve().parent / "results"


class Reader:
    def __init__(self, port: int) -> None:
        self.sock = gsocket.create_connection(("127.0.0.1", port))
        self.sock.sendall(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        self.buf = b""
        self.events: list[tuple[float, dict]] = []
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            data = self.sock.recv(1 << 16)
            if not data:
                return
            self.buf += data
            while b"\n\n" in self.buf:
                block, _, self.buf = self.buf.partition(b"\n\n")
                for line in block.split(b"\n"):
                    if line.startswith(b"data: "):
                        self.events.append((time.time(), json.loads(line[6:])))

    def close(self) -> None:
        self.greenlet.kill()
        self.sock.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    bus = EventBus()
    mon = PerformanceMonitor(bus).start()
    breaker = CircuitBreaker(BreakerConfig(name="bench", reset_timeout=0.2, max_reset_timeout=0.2), bus=bus)
    change: list[float] = []
    with DashboardServer(mon, interval=1.0) as dash:
        reader = Reader(dash.port)
        gevent.sleep(1.5)
        for _ in range(args.rounds):
            gevent.sleep(0.3)  # somewhere between two ticks
            seen = len(reader.events)
            t0 = time.time()
            breaker.open()
            while not any(e["resilience"]["breakers_open"] for _, e in reader.events[seen:]):
                gevent.sleep(0.0005)
            arrived = next(t for t, e in reader.events[seen:] if e["resilience"]["breakers_open"])
            change.append(arrived - t0)
            breaker.close()
            gevent.sleep(0.3)
        gevent.sleep(3)
        ticks = [t - e["time"] for t, e in reader.events if "series" not in e]
        reader.close()
    mon.close()
    rows = {
        "breaker change -> event (ms)": change,
        "tick built -> arrived (ms)": ticks,
    }
    print(f"dashboard push latency, interval 1 s, {args.rounds} rounds")
    print(f"{'':32} {'n':>4} {'p50':>8} {'p90':>8} {'max':>8}")
    out = {}
    for name, values in rows.items():
        ms = sorted(v * 1000 for v in values)
        p50, p90 = statistics.median(ms), ms[int(0.9 * (len(ms) - 1))]
        print(f"{name:32} {len(ms):>4} {p50:>8.2f} {p90:>8.2f} {ms[-1]:>8.2f}")
        out[name] = {"n": len(ms), "p50_ms": p50, "p90_ms": p90, "max_ms": ms[-1]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_dashboard_push.json").write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
