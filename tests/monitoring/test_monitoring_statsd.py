"""StatsDSink: packets received on a real UDP socket, every line parsed."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import gevent
import pytest

from nexus_green.clock import FakeClock
from nexus_green.errors import UsageError
from nexus_green.events import EventBus
from nexus_green.monitoring.config import MonitoringConfiguration
from nexus_green.monitoring.export import statsd_name
from nexus_green.monitoring.monitor import PerformanceMonitor
from nexus_green.monitoring.statsd_sink import StatsDSink, hub_resolve

LINE = re.compile(r"^(?P<stat>[A-Za-z0-9_.\-]+):(?P<value>-?[0-9.e+\-]+)\|(?P<kind>c|g)(\|@(?P<rate>[0-9.]+))?$")


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    yield sock
    sock.close()


def receive_all(sock: socket.socket, quiet: float = 0.2) -> list[bytes]:
    packets = []
    sock.settimeout(quiet)
    while True:
        try:
            packets.append(sock.recv(65536))
        except TimeoutError:
            return packets


def parse(packets: list[bytes]) -> list[tuple[str, float, str, str]]:
    lines = []
    for p in packets:
        for line in p.decode("ascii").split("\n"):
            m = LINE.match(line)
            assert m, f"unparseable statsd line {line!r}"
            lines.append((m["stat"], float(m["value"]), m["kind"], m["rate"] or ""))
    return lines


def config_for(sock: socket.socket, **extra: object) -> MonitoringConfiguration:
    extra.setdefault("sample_rate", 1.0)
    return MonitoringConfiguration(statsd_port=sock.getsockname()[1], statsd_prefix="app", **extra)  # type: ignore[arg-type]


def busy(mon: PerformanceMonitor, bus: EventBus, n: int = 300) -> None:
    bus.emit("connect.complete", conn_id="c1", endpoint="tcp://h:1", duration=0.01, phases={"tcp": 0.01})
    for q in range(n):
        bus.emit("io.stats", conn_id="c1", completed=1, latencies=[0.001 * (q % 7 + 1)], bytes_sent=50, frames_sent=1)
    bus.emit("request.failed", conn_id="c1", qid=0, fid=1, latency=1.0, error=TimeoutError("late"))


def test_flush_sends_pipelined_packets_that_match_the_snapshot(receiver: socket.socket, leakcheck: None) -> None:
    bus = EventBus()
    cfg = config_for(receiver)
    with PerformanceMonitor(bus, config=cfg) as mon:
        busy(mon, bus)
        sink = StatsDSink(mon, config=cfg, timers=False)  # the summary form; timers: test_monitoring_enable.py
        sent = sink.flush()
        snap = mon.snapshot()
        packets = receive_all(receiver)
        lines = parse(packets)
        assert len(lines) == sent and sent > 50
        assert len(packets) < len(lines) / 5  # many lines per datagram: pipelined
        assert all(len(p) <= cfg.statsd_max_udp_size for p in packets)
        got: dict[str, tuple[float, str]] = {}
        for stat, value, kind, _rate in lines:
            assert stat.startswith("app.")
            if stat in got and kind == "g" and value == 0:  # statsd sends 0 before a negative gauge
                continue
            got[stat[4:]] = (value, kind)
        assert got["requests.completed"] == (300.0, "c")
        assert got["requests.failed"] == (1.0, "c")
        assert got["request.latency.count"] == (300.0, "c")
        assert got["bytes.sent"] == (15000.0, "c")
        assert got["connections.active"] == (1.0, "g")
        lat = next(m for m in snap["metrics"] if m["name"] == "request.latency")
        for f in ("p50", "p95", "p99", "p999", "max", "mean"):
            assert got[f"request.latency.{f}"] == (pytest.approx(lat[f], rel=1e-6), "g")
        key = statsd_name("errors", {"kind": "request", "class": "TimeoutError"})
        assert got[key] == (1.0, "c")
        # second flush: counters only by their increase
        for _ in range(5):
            bus.emit("io.stats", conn_id="c1", completed=1, latencies=[0.002])
        sink.flush()
        second = {s[4:]: (v, k) for s, v, k, _ in parse(receive_all(receiver))}
        assert second["requests.completed"] == (5.0, "c") and "requests.failed" not in second
        sink.close()
        assert sink.flushes == 3  # close sends a last flush
        sink.close()
        assert sink.flush() == 0 and "flushes=3" in repr(sink)


def test_background_flusher_runs_on_interval_and_stops_cleanly(receiver: socket.socket, leakcheck: None) -> None:
    bus, clock = EventBus(), FakeClock(autojump=False)
    cfg = config_for(receiver, statsd_interval=10.0)
    mon = PerformanceMonitor(bus, config=cfg, clock=clock)
    with StatsDSink(mon, config=cfg, clock=clock, timers=False) as sink:
        assert sink.running and sink.start() is sink
        busy(mon, bus, n=10)
        gevent.sleep(0)
        clock.advance(9.9)
        gevent.sleep(0)
        assert sink.flushes == 0
        clock.advance(0.1)
        gevent.sleep(0)
        assert sink.flushes == 1
        first = parse(receive_all(receiver))
        assert ("app.requests.completed", 10.0, "c", "") in first
    assert not sink.running
    with pytest.raises(UsageError, match="closed"):
        sink.start()
    mon.close()


def test_sample_rate_is_applied_to_counters(receiver: socket.socket) -> None:
    bus = EventBus()
    cfg = config_for(receiver, statsd_sample_rate=0.5)
    with PerformanceMonitor(bus, config=cfg) as mon:
        busy(mon, bus)
        sink = StatsDSink(mon, config=cfg, timers=False)  # the summary form; timers: test_monitoring_enable.py
        counter_lines = 0
        for _ in range(10):
            mon.registry.counter("requests.completed").inc()
            sink.flush()
            for _stat, _v, kind, rate in parse(receive_all(receiver, quiet=0.05)):
                if kind == "c":
                    counter_lines += 1
                    assert rate == "0.5"
                else:
                    assert rate == ""
        assert 0 < counter_lines < sink.lines_sent
        sink.close()


def test_unreachable_host_never_breaks_or_blocks(leakcheck: None) -> None:
    # Nothing listens on this port: ICMP refusals must be swallowed.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    bus = EventBus()
    cfg = MonitoringConfiguration(statsd_port=port)
    with PerformanceMonitor(bus, config=cfg) as mon, StatsDSink(mon, config=cfg) as sink:
        busy(mon, bus, n=5)
        for _ in range(20):
            assert sink.flush() > 0
    assert sink.errors == 0 and sink.flushes == 21


def test_resolution_failure_is_logged_counted_and_retried(leakcheck: None, caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def resolve(host: str, port: int, ipv6: bool) -> str:
        calls.append(host)
        if len(calls) < 3:
            raise OSError(f"cannot resolve {host}")
        return "127.0.0.1"

    cfg = MonitoringConfiguration(statsd_host="statsd.invalid", statsd_port=9)
    sink = StatsDSink(lambda: {"metrics": []}, config=cfg, resolve=resolve)
    assert sink.flush() == 0 and sink.flush() == 0
    assert sink.errors == 2 and "cannot use statsd.invalid:9" in caplog.text
    sink.flush()
    assert sink.flushes == 1 and sink.address == "127.0.0.1" and len(calls) == 3
    sink.close()


def test_failing_snapshot_is_counted_not_raised(leakcheck: None) -> None:
    def boom() -> dict:
        raise RuntimeError("snapshot broke")

    sink = StatsDSink(boom, config=MonitoringConfiguration(statsd_port=9))
    assert sink.flush() == 0 and sink.errors == 1
    sink.close()


def test_bad_source_is_refused() -> None:
    with pytest.raises(UsageError, match="needs a monitor or a callable"):
        StatsDSink(42)


def test_hub_resolve() -> None:
    assert hub_resolve("::1", 8125, True) == "::1"
    assert hub_resolve("localhost", 8125) == "127.0.0.1"
    try:
        addr = hub_resolve("localhost", 8125, True)
    except OSError as exc:
        assert "no IPv6 address" in str(exc)
    else:
        assert addr == "::1"
