"""MetricsAggregator: the view model's figures, exact on a FakeClock, from events and from a real Client."""

from __future__ import annotations

from typing import Any

import gevent
import pytest

from nexus_green import Client
from nexus_green.clock import FakeClock
from nexus_green.dashboard import LATENCY_BINS_MS, VIEW_SCHEMA, MetricsAggregator
from nexus_green.errors import ConfigurationError
from nexus_green.events import EventBus
from nexus_green.monitoring import MonitoringConfiguration, PerformanceMonitor
from nexus_green.resilience import BreakerConfig, CircuitBreaker, CircuitBreakerOpen, Resilient, resilient
from nexus_green.testing import EmbeddedServer


@pytest.fixture
def fake() -> Any:
    bus, clock = EventBus(), FakeClock()
    mon = PerformanceMonitor(bus, clock=clock, config=MonitoringConfiguration(sample_rate=1.0))
    yield bus, clock, mon
    mon.close()


def test_options_and_watch_are_checked(monitor: PerformanceMonitor) -> None:
    with pytest.raises(ConfigurationError, match="max_rows"):
        MetricsAggregator(monitor, max_rows=0)
    with pytest.raises(ConfigurationError, match="series_points"):
        MetricsAggregator(monitor, series_points=1)
    agg = MetricsAggregator(monitor)
    with pytest.raises(ConfigurationError, match="CircuitBreaker, a Resilient or a function decorated"):
        agg.watch(print)
    breaker = CircuitBreaker(BreakerConfig(name="raw"), bus=monitor.bus)
    r = Resilient(name="composed", bus=monitor.bus, retry=None)
    assert agg.watch(breaker) is breaker and agg.watch(r) is r.breaker
    assert "watched=['composed', 'raw']" in repr(agg)
    seen: list[str] = []
    off = agg.on_change(seen.append)
    monitor.bus.emit("breaker.state", breaker="raw", old="closed", new="open")
    off()
    off()  # idempotent
    monitor.bus.emit("breaker.state", breaker="raw", old="open", new="half-open")
    assert seen == ["breaker"]
    agg.close()
    agg.close()


def test_rates_latency_and_overview_are_exact(fake: Any) -> None:
    bus, clock, mon = fake
    agg = MetricsAggregator(mon)
    bus.emit("connect.complete", conn_id="c1", endpoint="tcp://h:1", duration=0.001)
    bus.emit("io.stats", conn_id="c1", completed=30, latencies=[0.0004] * 10 + [0.003] * 20, frames_sent=30)
    bus.emit("io.stats", conn_id="c1", frames_received=30)
    bus.emit("request.failed", conn_id="c1", qid=1, fid=1, latency=0.5, error=TimeoutError("late"))
    clock.advance(2.0)
    view = agg.build()
    o = view["overview"]
    assert view["schema"] == VIEW_SCHEMA and view["seq"] == 1 and agg.seq == 1
    assert o["requests_per_s"] == 15.0 and o["messages_per_s"] == 30.0 and o["requests_total"] == 30
    assert o["failed_total"] == 1 and o["error_rate"] == round(1 / 31, 4) and o["active_connections"] == 1
    assert abs(o["avg_latency_ms"] - (10 * 0.4 + 20 * 3.0) / 30) < 0.05
    lat = view["latency"]
    assert lat["count"] == 30 and len(lat["buckets"]) == len(LATENCY_BINS_MS) + 1
    by_bin = {b["hi_ms"]: b["count"] for b in lat["buckets"]}
    assert by_bin[0.5] == 10 and by_bin[5] == 20 and lat["buckets"][-1]["hi_ms"] is None
    assert view["point"]["requests_per_s"] == 15.0 and list(agg.series)[-1] == view["point"]
    # The next build counts only what happened since: nothing.
    clock.advance(1.0)
    view = agg.build()
    assert view["overview"]["requests_per_s"] == 0.0 and view["overview"]["avg_latency_ms"] == 0.0
    assert view["overview"]["error_rate"] == 0.0 and view["latency"]["count"] == 30
    # Two builds at the same instant: no time between, the monitor's own rates.
    view = agg.build()
    assert view["seq"] == 3 and view["overview"]["requests_per_s"] == 0.0
    full = agg.full(view)
    assert len(full["series"]) == 3 and "series" not in view
    agg.close()


def test_rows_are_capped_with_the_troubled_first(fake: Any) -> None:
    bus, clock, mon = fake
    agg = MetricsAggregator(mon, max_rows=4)
    for i in range(6):
        bus.emit("connect.complete", conn_id=f"c{i}", endpoint="tcp://h:1", duration=0.001)
    agg.build()
    bus.emit("io.stats", conn_id="c5", completed=50)
    bus.emit("request.failed", conn_id="c4", qid=1, fid=1, latency=0.1, error=TimeoutError("late"))
    bus.emit("heartbeat.rtt", conn_id="c3", rtt=0.9)
    bus.emit("heartbeat.timeout", conn_id="c2")
    bus.emit("connection.state", conn_id="c1", endpoint="tcp://h:1", old="connected", new="reconnecting")
    bus.emit("connection.closed", conn_id="c0", endpoint="tcp://h:1", age=1.0, requests=0, error=None)
    clock.advance(1.0)
    rows = agg.build()["connections"]
    assert rows["total"] == 6 and rows["shown"] == 4 and rows["cap"] == 4
    warned = {r["id"]: r["warnings"] for r in rows["rows"]}
    assert warned == {
        "c1": ["reconnecting"],
        "c2": ["heartbeat timeouts"],
        "c3": ["slow heartbeat"],
        "c4": ["failing"],
    }
    agg2 = MetricsAggregator(mon, max_rows=10)
    rows = agg2.build()["connections"]["rows"]
    assert rows[-1]["id"] == "c0" and rows[-1]["state"] == "closed" and rows[-1]["warnings"] == ["closed"]
    assert next(r for r in rows if r["id"] == "c3")["rtt_ms"] == 900.0
    agg.close()
    agg2.close()


def test_thousands_of_connections_cost_one_capped_row_list(monitor: PerformanceMonitor) -> None:
    for i in range(2500):
        monitor.bus.emit("connect.complete", conn_id=f"c{i:05d}", endpoint="tcp://h:1", duration=0.001)
    monitor.bus.emit("io.stats", conn_id="c02400", completed=5)
    agg = MetricsAggregator(monitor, max_rows=3)
    agg.build()
    monitor.bus.emit("io.stats", conn_id="c02400", completed=5)
    monitor.bus.emit("connection.state", conn_id="c01234", endpoint="tcp://h:1", old="connected", new="closing")
    gevent.sleep(0.01)
    rows = agg.build()["connections"]
    assert rows["total"] == 2500 and rows["shown"] == 3
    assert [r["id"] for r in rows["rows"]][:2] == ["c01234", "c02400"]  # the troubled one, then the busiest
    agg.close()


def test_concurrent_publishes_keep_ids_in_order(monitor: PerformanceMonitor) -> None:
    from nexus_green.dashboard import RealtimeStream

    for i in range(4500):  # builds yield to the hub twice
        monitor.bus.emit("connect.complete", conn_id=f"c{i}", endpoint="tcp://h:1", duration=0.001)
    agg = MetricsAggregator(monitor)
    stream = RealtimeStream(agg, interval=60)
    gevent.joinall([gevent.spawn(stream.publish) for _ in range(3)], timeout=10, raise_error=True)
    assert [e.id for e in stream.ring] == [1, 2, 3]
    stream.close()
    agg.close()


def test_history_fills_the_charts_of_a_late_page(fake: Any) -> None:
    bus, clock, mon = fake
    for i in range(5):
        bus.emit("io.stats", conn_id="c1", completed=10 * (i + 1))
        clock.advance(1.0)
        mon.tick()
    agg = MetricsAggregator(mon, series_points=3)
    points = list(agg.series)
    assert len(points) == 3 and points[-1]["requests_per_s"] > 0 and set(points[0]) >= {"rss_bytes", "p99_ms", "t"}
    agg.close()


def test_resilience_from_events_and_watched_breakers(monitor: PerformanceMonitor) -> None:
    bus = monitor.bus
    watched = CircuitBreaker(BreakerConfig(name="db", minimum_calls=2, failure_rate_threshold=0.5), bus=bus)
    agg = MetricsAggregator(monitor, breakers=[watched])
    for _ in range(3):
        try:
            watched.call(lambda: 1 / 0)
        except (ZeroDivisionError, CircuitBreakerOpen):
            pass
    bus.emit("breaker.state", breaker="cache", old="closed", new="half-open")
    bus.emit("breaker.rejected", breaker="db", state="open", retry_after=1.0)  # the third call was one too
    bus.emit("retry.attempt", attempt=2)
    bus.emit("retry.gave_up", attempts=3, reason="budget")
    bus.emit("fallback.used", fallback="f", level="default")
    bus.emit("bulkhead.rejected", bulkhead="b", reason="full")
    r = agg.build()["resilience"]
    by_name = {b["name"]: b for b in r["breakers"]}
    assert by_name["db"]["state"] == "open" and by_name["db"]["openings"] == 1 and by_name["db"]["rejections"] == 2
    assert by_name["cache"] == {
        "name": "cache",
        "state": "half-open",
        "error_rate": None,
        "calls": None,
        "failures": None,
        "rejections": 0,
        "openings": 0,
    }
    assert r["breakers_open"] == 1 and r["retries"] == 1 and r["retries_gave_up"] == 1 and r["fallbacks"] == 1
    assert r["rejections"] == {"breaker": 2, "bulkhead": 1} and r["rejections_total"] == 3
    watched.close()
    assert agg.build()["resilience"]["breakers"][1] | {"openings": 0} == {
        "name": "db",
        "state": "closed",
        "error_rate": 0.0,
        "calls": 0,
        "failures": 0,
        "rejections": 2,
        "openings": 0,
    }
    agg.close()


def test_a_real_client_fills_the_view(leakcheck: None) -> None:
    bus = EventBus()
    with PerformanceMonitor(bus, config=MonitoringConfiguration(sample_rate=1.0)) as mon:
        agg = MetricsAggregator(mon)

        @resilient(name="echo", bus=bus, retry=None)
        def call(client: Client, i: int) -> bytes:
            return client.request(b"%d" % i, fid=1).body

        agg.watch(call)
        with EmbeddedServer() as server, Client(server.url, bus=bus, monitor=mon) as client:
            for i in range(50):
                assert call(client, i) == b"%d" % i
            view = agg.build()
        agg.close()
    assert view["overview"]["requests_total"] == 50 and view["latency"]["count"] == 50
    assert view["connections"]["rows"][0]["requests"] == 50 and view["connections"]["rows"][0]["state"] == "connected"
    echo = view["resilience"]["breakers"][0]
    assert echo["name"] == "echo" and echo["calls"] == 50 and echo["error_rate"] == 0.0
    assert view["health"]["status"] == "healthy" and view["health"]["rss_bytes"] >= 0
