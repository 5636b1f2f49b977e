"""Fixtures for the monitoring tests: a bus, a fake clock, and a realistic synthetic event stream.

The events are emitted exactly as the connection layer emits them (names and
attributes per the catalogue in nexus_green/events.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nexus_green.clock import FakeClock
from nexus_green.errors import ConnectionRefused, RequestTimeout
from nexus_green.events import EventBus
from nexus_green.monitoring.config import MonitoringConfiguration
from nexus_green.monitoring.monitor import PerformanceMonitor


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(start=1000.0)


@pytest.fixture
def monitor(bus: EventBus, clock: FakeClock) -> Iterator[PerformanceMonitor]:
    mon = PerformanceMonitor(bus, clock=clock, config=MonitoringConfiguration(rate_window=2.0, sample_rate=1.0))
    yield mon
    mon.close()


class Stream:
    """Emits the connection layer's events for one scenario step at a time."""

    def __init__(self, bus: EventBus, clock: FakeClock) -> None:
        self.bus = bus
        self.clock = clock

    def open(self, conn_id: str, endpoint: str = "tcp://127.0.0.1:7600") -> None:
        """The events of one successful connect: state changes, phases, complete."""
        bus, clock = self.bus, self.clock
        bus.emit("connection.state", conn_id=conn_id, endpoint=endpoint, old="idle", new="connecting")
        bus.emit("connect.started", conn_id=conn_id, endpoint=endpoint)
        phases = {}
        for phase, took in (("dns", 0.001), ("tcp", 0.002), ("tls", 0.004)):
            bus.emit(f"connect.{phase}.started", conn_id=conn_id, endpoint=endpoint)
            clock.advance(took)
            phases[phase] = took
            bus.emit(f"connect.{phase}.complete", conn_id=conn_id, endpoint=endpoint, duration=took)
        bus.emit("connect.complete", conn_id=conn_id, endpoint=endpoint, duration=sum(phases.values()), phases=phases)
        bus.emit("connection.state", conn_id=conn_id, endpoint=endpoint, old="connecting", new="connected")

    def refused(self, conn_id: str, endpoint: str = "tcp://127.0.0.1:1") -> None:
        """A connect that fails in the TCP phase; the connection gives up and closes."""
        bus = self.bus
        err = ConnectionRefused(f"connection refused by {endpoint}")
        bus.emit("connection.state", conn_id=conn_id, endpoint=endpoint, old="idle", new="connecting")
        bus.emit("connect.started", conn_id=conn_id, endpoint=endpoint)
        bus.emit("connect.tcp.started", conn_id=conn_id, endpoint=endpoint)
        bus.emit("connect.tcp.failed", conn_id=conn_id, endpoint=endpoint, duration=0.001, error=err)
        bus.emit("connect.failed", conn_id=conn_id, endpoint=endpoint, duration=0.001, error=err)
        bus.emit("connection.state", conn_id=conn_id, endpoint=endpoint, old="connecting", new="reconnecting")
        bus.emit("connection.state", conn_id=conn_id, endpoint=endpoint, old="reconnecting", new="closed")
        bus.emit("connection.closed", conn_id=conn_id, endpoint=endpoint, age=0.001, requests=0, error=err)

    def ok(self, conn_id: str, qid: int, latency: float, size: int = 100, code: int = 200) -> None:
        bus = self.bus
        bus.emit(
            "io.stats",
            conn_id=conn_id,
            interval=0.1,
            bytes_sent=size + 24,
            frames_sent=1,
            bytes_received=size * 2 + 24,
            frames_received=1,
            completed=1,
            non_ok=int(code != 200),
            latencies=[latency],
        )

    def timeout(self, conn_id: str, qid: int) -> None:
        err = RequestTimeout(f"qid={qid} timed out")
        self.bus.emit("request.failed", conn_id=conn_id, qid=qid, fid=7, latency=1.0, error=err)

    def close(self, conn_id: str, error: object = None, endpoint: str = "tcp://127.0.0.1:7600") -> None:
        bus = self.bus
        bus.emit("connection.state", conn_id=conn_id, endpoint=endpoint, old="connected", new="closing")
        bus.emit("connection.state", conn_id=conn_id, endpoint=endpoint, old="closing", new="closed")
        bus.emit("connection.closed", conn_id=conn_id, endpoint=endpoint, age=12.5, requests=3, error=error)


@pytest.fixture
def stream(bus: EventBus, clock: FakeClock) -> Stream:
    return Stream(bus, clock)
