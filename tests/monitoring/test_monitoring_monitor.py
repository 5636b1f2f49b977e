"""PerformanceMonitor fed by synthetic events emitted as the connection layer emits them."""

from __future__ import annotations

import json
import random

import gevent
import gevent.events
import pytest

from nexus_green.clock import FakeClock
from nexus_green.errors import ConnectionLost, RemoteProtocolError, UsageError
from nexus_green.events import EventBus
from nexus_green.greenlets import live_greenlets
from nexus_green.monitoring.config import MonitoringConfiguration
from nexus_green.monitoring.monitor import SNAPSHOT_SCHEMA, PerformanceMonitor
from nexus_green.monitoring.resources import ResourceSampler


def test_connection_metrics(monitor: PerformanceMonitor, stream, bus: EventBus) -> None:
    stream.open("c1")
    stream.open("c2")
    stream.refused("c3")
    v = monitor.value
    assert v("connect.attempts") == 3 and v("connections.opened") == 2 and v("connect.failures") == 1
    assert v("connections.active") == 2 and v("connections.tracked") == 2
    assert v("connect.duration", field="count") == 2
    assert abs(v("connect.duration", field="p50") - 0.007) <= 0.00007
    assert abs(v("connect.phase.duration", {"phase": "tls"}, field="max") - 0.004) <= 0.00004
    assert v("connect.phase.duration", {"phase": "socks5"}, field="count") == 0
    assert v("connect.phase.failures", {"phase": "tcp"}) == 1
    assert v("errors", {"kind": "connect", "class": "ConnectionRefused"}) == 1
    stream.close("c1", error=ConnectionLost("reset"))
    assert v("connections.closed") == 2 and v("connections.active") == 1
    assert v("connection.lifetime", field="count") == 2
    assert v("errors", {"kind": "connection", "class": "ConnectionLost"}) == 1
    for name, attrs in [
        ("reconnect.scheduled", {"attempt": 1, "delay": 0.1}),
        ("reconnect.failed", {"attempt": 1, "error": ConnectionLost("x")}),
        ("reconnect.scheduled", {"attempt": 2, "delay": 0.2}),
        ("reconnect.succeeded", {"attempt": 2}),
        ("reconnect.gave_up", {"attempt": 3}),
    ]:
        bus.emit(name, conn_id="c2", **attrs)
    assert (v("reconnect.attempts"), v("reconnect.failed"), v("reconnect.succeeded"), v("reconnect.gave_up")) == (
        2,
        1,
        1,
        1,
    )
    assert v("errors", {"kind": "reconnect", "class": "ConnectionLost"}) == 1


def test_performance_and_error_metrics(monitor: PerformanceMonitor, stream, bus: EventBus, clock: FakeClock) -> None:
    stream.open("c1")
    latencies = [0.001 * (i % 10 + 1) for i in range(1000)]
    for qid, lat in enumerate(latencies):
        stream.ok("c1", qid, lat)
    stream.ok("c1", 5000, 0.001, code=503)
    for qid in range(10):
        stream.timeout("c1", qid)
    bus.emit("request.late", conn_id="c1", qid=1)
    bus.emit("push.received", conn_id="c1", fid=9, qid=0)
    bus.emit("protocol.error", conn_id="c1", error=RemoteProtocolError("bad", offset=3), offset=3)
    bus.emit("heartbeat.rtt", conn_id="c1", rtt=0.02)
    bus.emit("heartbeat.timeout", conn_id="c1")
    v = monitor.value
    assert v("requests.completed") == 1001 and v("requests.non_ok") == 1 and v("requests.failed") == 10
    assert v("errors.timeouts") == 10 and v("errors", {"kind": "request", "class": "RequestTimeout"}) == 10
    assert v("requests.late") == 1 and v("push.received") == 1
    assert v("protocol.errors") == 1 and v("errors", {"kind": "protocol", "class": "RemoteProtocolError"}) == 1
    assert v("heartbeat.timeouts") == 1 and v("heartbeat.rtt", field="max") == 0.02
    assert v("messages.sent") == 1001 and v("bytes.sent") == 1001 * 124 and v("bytes.received") == 1001 * 224
    ordered = sorted(latencies + [0.001])
    for label, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999)):
        exact = ordered[int(q * (len(ordered) - 1))]
        assert abs(v("request.latency", field=label) - exact) <= 0.01 * exact
    # rates need a tick: two ticks 1 s apart
    monitor.tick()
    clock.advance(1.0)
    for qid in range(50):
        stream.ok("c1", qid, 0.004)
    stream.timeout("c1", 99)
    monitor.tick()
    assert v("throughput.requests") == 50 and v("throughput.errors") == 1
    assert v("throughput.bytes_sent") == 50 * 124 and v("throughput.messages_received") == 50
    assert v("errors.rate") == pytest.approx(1 / 51)
    # recent latency covers only the last interval
    assert abs(v("request.latency.recent", {"stat": "p99"}) - 0.004) <= 0.00004
    assert v("request.latency.recent", {"stat": "mean"}) == pytest.approx(0.004)
    clock.advance(1.0)
    monitor.tick()
    assert v("request.latency.recent", {"stat": "p50"}) == 0.0  # nothing happened in that interval


def test_sample_rate_applies_to_latency_only(bus: EventBus, clock: FakeClock, stream) -> None:
    cfg = MonitoringConfiguration(sample_rate=0.1)
    with PerformanceMonitor(bus, clock=clock, config=cfg, rng=random.Random(42)) as mon:
        for qid in range(10_000):
            stream.ok("c1", qid, 0.002)
        assert mon.value("requests.completed") == 10_000  # counters stay exact
        sampled = mon.value("request.latency", field="count")
        assert 800 < sampled < 1200
        assert abs(mon.value("request.latency", field="p50") - 0.002) <= 0.00002


def test_pool_state_buffers_and_collectors(monitor: PerformanceMonitor, bus: EventBus) -> None:
    stats = {"endpoint": "tcp://h:1", "size": 4, "max_size": 4, "in_use": 3, "idle": 1, "waiters": 2}
    stats.update({"utilisation": 0.95, "in_flight": 40, "pool": "ignored"})
    off = monitor.watch_pool("p1", lambda: stats)
    calls = []

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("collector bug")

    monitor.add_collector(broken)
    monitor.tick()
    v = monitor.value
    assert calls == [1]  # the broken collector ran, and the tick still completed
    assert v("pool.in_use", {"pool": "p1"}) == 3 and v("pool.waiters", {"pool": "p1"}) == 2
    assert v("pool.utilisation", {"pool": "p1"}) == 0.95 and v("requests.in_flight") == 40
    bus.emit("pool.state", pool="p2", in_flight=2)
    assert v("requests.in_flight") == 42
    off()
    off()  # removing twice is harmless
    bus.emit("pool.checkout", pool="p1", wait=0.25)
    bus.emit("pool.exhausted", pool="p1", wait=5.0)
    bus.emit("pool.connection.opened", pool="p1", conn_id="c1", reason="demand")
    bus.emit("pool.connection.discarded", pool="p1", conn_id="c1", reason="idle")
    assert v("pool.checkouts", {"pool": "p1"}) == 1 and v("pool.exhausted", {"pool": "p1"}) == 1
    assert v("pool.checkout.wait", {"pool": "p1"}, field="count") == 2
    assert v("pool.connections.opened", {"pool": "p1"}) == 1
    assert v("pool.connections.discarded", {"pool": "p1", "reason": "idle"}) == 1
    assert v("errors", {"kind": "pool", "class": "PoolExhausted"}) == 1
    bus.emit("buffers.state", in_use=3, capacity=12)
    assert v("buffers.utilisation") == 0.25 and v("buffers.capacity") == 12
    bus.emit("buffers.state", in_use=0, capacity=0)
    assert v("buffers.utilisation") == 0.0


def test_resources_are_read_on_tick(bus: EventBus, clock: FakeClock) -> None:
    cpu = iter([10.0, 10.25])
    sampler = ResourceSampler(clock=clock, cpu_times=lambda: next(cpu))
    with PerformanceMonitor(bus, clock=clock, resources=sampler) as mon:
        mon.tick()
        clock.advance(1.0)
        mon.tick()
        assert mon.value("process.cpu") == 25.0
        assert mon.value("process.rss") > 1_000_000 and mon.value("process.open_fds") >= 3
        assert mon.value("greenlets.library") == len(live_greenlets())
    missing = ResourceSampler(clock=clock, statm_path="/nonexistent", fd_path="/nonexistent")
    with PerformanceMonitor(EventBus(), clock=clock, resources=missing) as mon:
        mon.tick()
        assert mon.value("process.rss") == 0 and mon.value("process.open_fds") == 0  # unknown: left unset


def test_snapshot_schema_and_connections(monitor: PerformanceMonitor, stream) -> None:
    stream.open("c1")
    stream.ok("c1", 1, 0.003)
    snap = monitor.snapshot(connections=True)
    assert snap["schema"] == SNAPSHOT_SCHEMA
    assert snap["quantiles"] == ["p50", "p95", "p99", "p999"] and snap["interval"] == 1.0
    assert snap["uptime"] == pytest.approx(0.007)
    assert snap["connections"][0]["conn_id"] == "c1" and snap["connections"][0]["requests"] == 1
    names = {m["name"] for m in snap["metrics"]}
    for required in ("connect.duration", "request.latency", "process.rss", "hub.lag", "errors.rate"):
        assert required in names
    json.loads(json.dumps(snap))
    assert "connections" not in monitor.snapshot()
    assert monitor.value("nope") is None
    assert monitor.value("requests.completed", field="p99") is None
    assert monitor.value("connections.active", field="p99") is None


def test_history_ring_buffer(bus: EventBus, clock: FakeClock, stream) -> None:
    cfg = MonitoringConfiguration(history_seconds=5, history_interval=1, sample_rate=1.0)
    with PerformanceMonitor(bus, clock=clock, config=cfg) as mon:
        for i in range(8):
            stream.ok("c1", i, 0.001 * (i + 1))
            clock.advance(1.0)
            mon.tick()
        assert len(mon.history) == 5
        points = mon.history_points()
        assert [p["time"] for p in points] == [clock.wall() - 4 + i for i in range(5)]
        completed = [v for _, v in mon.series_history("requests.completed")]
        assert completed == [4.0, 5.0, 6.0, 7.0, 8.0]
        p99 = [v for _, v in mon.series_history("request.latency.recent", {"stat": "p99"})]
        assert all(abs(a - b) <= 0.01 * b for a, b in zip(p99, [0.004, 0.005, 0.006, 0.007, 0.008], strict=True))
        assert [v for _, v in mon.series_history("nope")] == [None] * 5
        last = points[-1]
        lat = next(m for m in last["metrics"] if m["name"] == "request.latency")
        assert lat["count"] == 8 and isinstance(lat["count"], int)
        empty = next(m for m in last["metrics"] if m["name"] == "connect.duration")
        assert empty["p50"] is None
        assert mon.history_points(last=2) == points[-2:] and mon.history_points(last=0) == []
        # a history point and a snapshot taken at the same moment agree
        snap = mon.snapshot()
        hist = {(m["name"], tuple(sorted(m["tags"].items()))): m for m in last["metrics"]}
        for m in snap["metrics"]:
            if m["name"] in ("greenlets.library", "process.open_fds"):
                continue
            assert hist[(m["name"], tuple(sorted(m["tags"].items())))] == m
        # a new series after some points changes the layout of later points only
        mon.registry.counter("late.series").inc()
        mon.tick()
        assert "late.series" in {m["name"] for m in mon.history_points(1)[0]["metrics"]}
        assert "late.series" not in {m["name"] for m in mon.history_points()[0]["metrics"]}


def test_background_greenlet_probes_hub_lag_and_ticks(bus: EventBus, leakcheck: None) -> None:
    clock = FakeClock(autojump=False)
    cfg = MonitoringConfiguration(hub_probe_interval=0.05, history_interval=1.0, hub_lag_degraded=0.1)
    mon = PerformanceMonitor(bus, clock=clock, config=cfg).start()
    assert mon.start() is mon and mon.running  # idempotent
    gevent.sleep(0)
    for _ in range(20):  # 1 s of on-time probes
        clock.advance(0.05)
        gevent.sleep(0)
    assert len(mon.history) == 1 and mon.value("hub.lag.worst") == pytest.approx(0.0, abs=1e-9)
    clock.advance(0.45)  # the probe wakes 0.4 s late: the hub was "blocked"
    gevent.sleep(0)
    assert mon.value("hub.lag", field="max") == pytest.approx(0.4)
    assert mon.value("hub.blocked", {"source": "probe"}) == 1
    for _ in range(12):
        clock.advance(0.05)
        gevent.sleep(0)
    assert len(mon.history) == 2 and mon.value("hub.lag.worst") == pytest.approx(0.4)
    mon.close()
    assert not mon.running
    mon.close()  # idempotent
    with pytest.raises(UsageError, match="closed"):
        mon.start()
    assert "running=False" in repr(mon)


def test_gevent_monitor_events_are_counted_when_enabled(bus: EventBus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gevent.config, "monitor_thread", True)
    before = list(gevent.events.subscribers)
    mon = PerformanceMonitor(bus)
    assert len(gevent.events.subscribers) == len(before) + 1
    gevent.events.notify(gevent.events.EventLoopBlocked(gevent.getcurrent(), 0.3, ["info"]))
    gevent.events.notify(object())  # other gevent events are ignored
    assert mon.value("hub.blocked", {"source": "gevent_monitor"}) == 1
    assert mon.value("hub.blocked.time") == pytest.approx(0.3)
    mon.close()
    assert gevent.events.subscribers == before
    off = PerformanceMonitor(bus, config=MonitoringConfiguration(use_gevent_monitor=False))
    assert gevent.events.subscribers == before
    off.close()


def test_close_unsubscribes(bus: EventBus, clock: FakeClock, stream) -> None:
    mon = PerformanceMonitor(bus, clock=clock)
    mon.close()
    stream.open("c1")
    stream.ok("c1", 1, 0.1)
    assert mon.value("requests.completed") == 0 and mon.tracker.tracked == 0
    assert not bus.wants("request.complete")


def test_error_counters_respect_the_cardinality_guard(bus: EventBus, clock: FakeClock) -> None:
    cfg = MonitoringConfiguration(max_series=1000)
    with PerformanceMonitor(bus, clock=clock, config=cfg) as mon:
        room = cfg.max_series - len(mon.registry)
        for i in range(room + 5):
            err = type(f"Err{i}", (Exception,), {})("x")
            bus.emit("request.failed", conn_id="c1", qid=i, fid=1, latency=0.1, error=err)
        assert len(mon.registry) == cfg.max_series
        assert mon.registry.dropped == {"errors": 5} and mon.value("monitoring.series.dropped") == 5
        assert mon.value("requests.failed") == room + 5
        assert mon.snapshot()["dropped_series"] == {"errors": 5}


def test_string_errors_and_missing_attributes_are_tolerated(monitor: PerformanceMonitor, bus: EventBus) -> None:
    bus.emit("request.failed", conn_id="c1", qid=1, fid=1, latency=1.0, error="RequestTimeout")
    bus.emit("io.stats", conn_id="c1", completed=1)  # no latencies: counted, not recorded
    bus.emit("connect.complete", conn_id="c1", endpoint="tcp://h:1")
    bus.emit("connection.closed", conn_id="c1", endpoint="tcp://h:1")
    bus.emit("heartbeat.rtt", conn_id="c1")
    bus.emit("connect.socks5.complete", conn_id="c1")
    assert monitor.value("errors.timeouts") == 1 and monitor.value("requests.completed") == 1
    assert monitor.value("request.latency", field="count") == 0
    assert monitor.value("connect.duration", field="count") == 0 and monitor.value("connections.closed") == 1
    assert bus.listener_errors == 0


def test_connection_buffers_are_summed_at_each_tick() -> None:
    # A real connection to a peer that reads nothing and sends half a frame:
    # bytes wait in the read buffer, and queued writes in the write buffer.
    from nexus_green.connection.connection import Connection, ConnectionOptions
    from nexus_green.testing import scripted_peer

    def peer(sock: object) -> None:
        sock.sendall(b"\x00\x00\x00\x40" + b"\x7a\x5a" + b"\x00" * 10)  # type: ignore[attr-defined]  # 16 of 68 bytes
        sock.recv(1)  # type: ignore[attr-defined]  # until the client closes

    bus = EventBus()
    with PerformanceMonitor(bus) as mon, scripted_peer(peer) as (host, port):
        conn = Connection(f"tcp://{host}:{port}", bus=bus, options=ConnectionOptions(heartbeat_interval=None))
        with conn:
            conn.connect()
            with gevent.Timeout(5):  # the peer's 16 bytes reach the read buffer
                while conn.buffered()[0] != 16:
                    gevent.sleep(0.01)
            conn._wbuf.append(b"x" * 100)  # queued, writer not woken
            mon.tick()
            assert conn.buffered() == (16, 100)
            assert mon.value("buffers.read.bytes") == 16 and mon.value("buffers.write.bytes") == 100
            conn._wbuf.clear()
        mon.tick()
        assert mon.value("buffers.read.bytes") == 0 and mon.value("buffers.write.bytes") == 0


@pytest.mark.parametrize(
    ("rate", "numpy", "expected"), [(1.0, None, True), (0.1, None, None), (0.1, True, True), (1.0, False, False)]
)
def test_numpy_policy_follows_the_sample_rate_unless_configured(rate: float, numpy: object, expected: object) -> None:
    from array import array

    import nexus_green.monitoring.sketch as sk

    bus = EventBus()
    with PerformanceMonitor(bus, config=MonitoringConfiguration(sample_rate=rate, numpy=numpy)) as mon:  # type: ignore[arg-type]
        assert mon._numpy is expected
        seen: list[object] = []
        real = sk.DDSketch.add_many

        def spy(self: sk.DDSketch, values: object, *, numpy: object = None) -> None:
            seen.append(numpy)
            real(self, values, numpy=numpy)  # type: ignore[arg-type]

        sk.DDSketch.add_many = spy  # type: ignore[method-assign]
        try:
            bus.emit("io.stats", conn_id="c1", completed=3, latencies=array("f", [0.001, 0.002, 0.003]))
            mon.flush()
        finally:
            sk.DDSketch.add_many = real  # type: ignore[method-assign]
        assert seen == [expected]
