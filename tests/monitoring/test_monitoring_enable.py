"""enable()/disable() at the seams: a real Client against a server that is killed and restarted, and a
real UDP StatsD listener on loopback reading what the sink sends.

The monitor runs on a FakeClock that only the test advances (rate windows and
ticks are exact); the Client on its own FakeClock, as the outage tests of the
connection layer do.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import gevent
import pytest

from nexus_green import Client
from nexus_green.clock import FakeClock
from nexus_green.errors import ConfigurationError, ConnectError, NexusError, RequestTimeout, UsageError
from nexus_green.events import EventBus, default_bus
from nexus_green.monitoring import (
    HEALTHY,
    UNHEALTHY,
    MetricsRegistry,
    PerformanceMonitor,
    StatsDSink,
    counted,
    default_registry,
    disable,
    enable,
    enabled,
    timed,
)
from nexus_green.monitoring.config import MonitoringConfiguration
from nexus_green.monitoring.enabling import parse_statsd_address
from nexus_green.monitoring.outages import failure_site
from nexus_green.testing import FID_ECHO, FID_SILENT, RestartableServer, run_module_patched
from nexus_green.timers import Interrupt, Timer

pytestmark = pytest.mark.usefixtures("leakcheck")

LINE = re.compile(
    r"^(?P<stat>[A-Za-z0-9_.\-]+):(?P<value>-?[0-9.e+\-]+)\|(?P<kind>c|g|ms|h)(\|@(?P<rate>[0-9.e\-]+))?$"
)


class Listener:
    """A StatsD server as far as the test needs one: a UDP socket on loopback that parses every line."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.packets: list[bytes] = []

    def receive(self, quiet: float = 0.2) -> list[tuple[str, float, str, str]]:
        """Every line of the datagrams that arrive until ``quiet`` seconds pass without one."""
        self.sock.settimeout(quiet)
        lines = []
        while True:
            try:
                packet = self.sock.recv(65536)
            except TimeoutError:
                return lines
            self.packets.append(packet)
            for line in packet.decode("ascii").split("\n"):
                m = LINE.match(line)
                assert m, f"unparseable statsd line {line!r}"
                lines.append((m["stat"], float(m["value"]), m["kind"], m["rate"] or ""))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


@pytest.fixture(autouse=True)
def _disabled(leakcheck: None) -> Iterator[None]:  # disabled before leakcheck looks
    yield
    disable()


def _sum(lines: list[tuple[str, float, str, str]], stat: str, kind: str = "c") -> float:
    return sum(v for s, v, k, _ in lines if s == stat and k == kind)


def _wait(check, timeout: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = gevent.get_hub().loop.now() + timeout
    while not check():
        if gevent.get_hub().loop.now() > deadline:
            return False
        gevent.sleep(0.01)
    return True


# ---------------------------------------------------------------- the outage, end to end
def test_killed_server_counts_failures_by_class_and_site_and_health_follows_the_outage(listener: Listener) -> None:
    mclock = FakeClock(start=100.0, autojump=False)
    cfg = MonitoringConfiguration(rate_window=2.0, sample_rate=1.0)
    m = enable(statsd=listener.address, prefix="t", interval=10.0, config=cfg, clock=mclock)
    assert m.sink is not None and m.sink.running and m.monitor.running and enabled() is m
    assert m.monitor.bus is default_bus and m.monitor.registry is default_registry
    mon = m.monitor

    def tick(seconds: float = 1.0) -> None:
        mclock.advance(seconds)
        mon.tick()

    clock = FakeClock()
    with RestartableServer() as server, Client(server.url, clock=clock, heartbeat_interval=None) as client:
        for _ in range(20):
            assert client.request(b"up", FID_ECHO, timeout=1).body == b"up"
        tick()
        assert m.health().status == HEALTHY
        listener.receive()  # nothing yet: the flusher waits for its interval
        m.sink.flush()
        before = listener.receive()
        assert _sum(before, "t.requests.completed") == 20
        timers = [(v, rate) for s, v, k, rate in before if s == "t.request.latency"]
        assert len(timers) == 20 and all(k == "ms" for s, _, k, _ in before if s == "t.request.latency")

        server.wait_for(lambda s: s.connections >= 1)
        server.kill()
        assert _wait(lambda: client.pool.stats()["connected"] == 0), client.pool
        failures: list[NexusError] = []
        for _ in range(10):
            try:
                client.request(b"x", FID_ECHO, timeout=0.2)
            except NexusError as exc:
                failures.append(exc)
        assert len(failures) == 10
        tick()
        assert mon.value("requests.failed") == 10
        assert mon.value("errors.rate") == 1.0  # since the previous tick: 10 failed, none answered
        report = m.health()
        assert report.status == UNHEALTHY and any("error rate" in r for r in report.reasons), report
        by_site: dict[tuple[str, str], int] = {}
        for s in mon.registry.series():
            if s.name == "calls.failed" and s.value:  # type: ignore[union-attr]
                tags = dict(s.tags)
                by_site[(tags["class"], tags["where"])] = by_site.get((tags["class"], tags["where"]), 0) + int(s.value)  # type: ignore[union-attr]
        assert sum(by_site.values()) == 10, by_site
        for exc in failures:
            assert (type(exc).__name__, failure_site(exc)) in by_site
        assert all(where in ("connect", "tcp", "dns", "checkout", "write", "call") for _, where in by_site), by_site

        m.sink.flush()
        during = listener.receive()
        assert _sum(during, "t.requests.failed") == 10
        sent_failures = {s: v for s, v, k, _ in during if s.startswith("t.calls.failed.") and k == "c"}
        assert sum(sent_failures.values()) == 10 and all(".where_" in s for s in sent_failures), sent_failures

        server.restart()
        assert client.request(b"back", FID_ECHO, timeout=5).body == b"back"
        for _ in range(30):
            client.request(b"ok", FID_ECHO, timeout=5)
        tick(3.0)  # one rate window after the outage
        tick()
        assert mon.value("errors.rate") == 0.0
        assert m.health().status == HEALTHY, m.health().reasons
    disable()
    assert enabled() is None and not mon.running and not m.sink.running
    after = listener.receive()  # disable() sent a last flush
    assert _sum(after, "t.requests.completed") == 31


def test_a_failure_on_the_wire_is_counted_once(listener: Listener) -> None:
    bus = EventBus()
    with (
        RestartableServer() as server,
        PerformanceMonitor(bus, config=MonitoringConfiguration(sample_rate=1.0)) as mon,
        Client(server.url, bus=bus, heartbeat_interval=None) as client,
    ):
        with pytest.raises(RequestTimeout) as info:
            client.request(b"", FID_SILENT, timeout=0.05)  # the embedded server does not answer it
        assert info.value.phase == "response"
        assert mon.value("requests.failed") == 1  # the connection's request.failed and the Client's event: one
        assert mon.value("calls.failed", {"class": "RequestTimeout", "where": "response"}) == 1


# ---------------------------------------------------------------- names and forms
def test_every_statsd_name_is_unique_and_timers_have_their_own_form(listener: Listener) -> None:
    mclock = FakeClock(autojump=False)
    reg = MetricsRegistry()
    cfg = MonitoringConfiguration(statsd_timer_samples=10, statsd_max_udp_size=1400)
    m = enable(statsd=listener.address, prefix="u", config=cfg, registry=reg, clock=mclock)
    bus = m.monitor.bus
    bus.emit("connect.complete", conn_id="c1", endpoint="tcp://h:1", duration=0.01, phases={"tcp": 0.01})
    for q in range(500):
        bus.emit("io.stats", conn_id="c1", completed=1, latencies=[0.001 * (q % 7 + 1)], bytes_sent=5)
    bus.emit("request.failed", conn_id="c1", qid=1, fid=1, latency=1.0, error=Interrupt(Timer(None, 1.0, print, None)))
    bus.emit("breaker.state", breaker="db", old="closed", new="open", reason="failure_rate")
    bus.emit("breaker.rejected", breaker="db", state="open", retry_after=1.0)
    bus.emit("retry.attempt", attempt=1, delay=0.1, error=None, reason="not_sent")
    bus.emit("retry.gave_up", attempts=3, reason="attempts", error=None)
    bus.emit("fallback.used", fallback="f", level="default", error=None)
    bus.emit("pool.exhausted", pool="p", wait=0.5)

    @timed("app.step", registry=reg, clock=mclock)
    @counted("app.step.calls", registry=reg)
    def step() -> None:
        mclock.advance(0.25)

    for _ in range(3):
        step()
    for _ in range(3):
        m.monitor.hub_lag.record(0.001)
    mclock.advance(1.0)
    m.monitor.tick()
    assert m.sink is not None
    m.sink.flush()
    lines = listener.receive()
    kinds: dict[str, set[str]] = {}
    counts: dict[tuple[str, str], int] = {}
    for stat, _v, kind, _ in lines:
        kinds.setdefault(stat, set()).add(kind)
        counts[(stat, kind)] = counts.get((stat, kind), 0) + 1
    assert all(len(k) == 1 for k in kinds.values()), {s: k for s, k in kinds.items() if len(k) > 1}
    assert all(n == 1 for (s, kind), n in counts.items() if kind in ("c", "g")), counts  # one line per flush
    timers = {s for s, k in kinds.items() if k == {"ms"}}
    assert {"u.request.latency", "u.app.step", "u.hub.lag", "u.connect.duration"} <= timers
    derived = ("count", "sum", "mean", "max", "min", "upper", "lower", "median", "avg")
    clashes = [s for s in kinds if any(s == f"{t}.{d}" for t in timers for d in derived)]
    assert not clashes, clashes  # hub.lag.max used to be both a gauge and the hub.lag histogram's max
    assert "u.hub.lag.worst" in kinds and "u.hub.lag.max" not in kinds
    # the Interrupt is a Timeout in the tags; the resilience events are metrics
    assert "u.errors.class_Timeout.kind_request" in kinds and not any("Interrupt" in s for s in kinds)
    for stat in (
        "u.breaker.transitions.breaker_db.to_open",
        "u.rejections.by_breaker",
        "u.rejections.by_pool",
        "u.retry.attempts",
        "u.retry.gave_up.reason_attempts",
        "u.fallback.served.level_default",
        "u.app.step.calls",
    ):
        assert (stat, "c") in counts, stat
    assert ("u.breaker.state.breaker_db", "g") in counts and ("u.breakers.open", "g") in counts
    report = m.health()  # the pool's refusal makes it unhealthy, the open breaker degraded
    assert report.status == UNHEALTHY and "breakers: breaker db is open" in report.reasons, report


def test_timer_lines_are_sampled_raw_values_with_their_rate_and_capped_per_flush(listener: Listener) -> None:
    mclock = FakeClock(autojump=False)
    reg = MetricsRegistry()
    cfg = MonitoringConfiguration(statsd_timer_samples=50, statsd_max_timer_lines=120, sample_rate=1.0)
    m = enable(statsd=listener.address, prefix="r", config=cfg, registry=reg, clock=mclock)
    bus = m.monitor.bus
    for _ in range(4):
        bus.emit("io.stats", conn_id="c1", completed=250, latencies=[0.004] * 250)
    for i in range(1000):
        reg.histogram("job.duration").record(0.002 + i * 1e-6)
    assert m.sink is not None
    m.sink.flush()
    lines = listener.receive()
    latency = [(v, r) for s, v, k, r in lines if s == "r.request.latency" and k == "ms"]
    job = [(v, r) for s, v, k, r in lines if s == "r.job.duration" and k == "ms"]
    assert len(latency) == 50 and all(v == pytest.approx(4.0) for v, _ in latency)
    assert float(latency[0][1]) == pytest.approx(50 / 1000)  # StatsD counts 50 / 0.05 = 1000
    assert 0 < len(job) <= 70 and len(latency) + len(job) <= 120  # capped in all
    assert all(2.0 <= v <= 3.0 for v, _ in job)
    assert len(job) / float(job[0][1]) == pytest.approx(1000)
    assert all(len(p) <= cfg.statsd_max_udp_size for p in listener.packets)  # packed, within the datagram size
    m.sink.flush()
    assert not [s for s, _, k, _ in listener.receive() if k == "ms"]  # samples are per flush


def test_disable_stops_everything_and_enable_again_starts_from_a_baseline(listener: Listener) -> None:
    m = enable(statsd=listener.address, prefix="d", interval=0.05)
    assert m.sink is not None and _wait(lambda: m.sink.flushes >= 2)  # type: ignore[union-attr]
    default_bus.emit("io.stats", conn_id="c9", completed=7)
    disable()
    disable()  # idempotent
    assert not m.sink.running and not m.monitor.running
    assert default_registry.sample_cap is None
    assert _sum(listener.receive(), "d.requests.completed") == 7
    m2 = enable(statsd=listener.address, prefix="d", interval=60)
    assert m2.sink is not None and m2.sink.flush() >= 0
    assert _sum(listener.receive(), "d.requests.completed") == 0  # not the 7 counted before, again
    m3 = enable()  # replaces the running setup
    assert not m2.monitor.running and m3.sink is None and enabled() is m3


def test_timed_and_counted_on_the_default_registry_are_exported(listener: Listener) -> None:
    @counted("billing.calls")
    @timed("billing.charge")
    def charge() -> int:
        return 1

    m = enable(statsd=listener.address, prefix="b", interval=60)
    for _ in range(4):
        charge()
    assert m.sink is not None
    m.sink.flush()
    lines = listener.receive()
    assert _sum(lines, "b.billing.calls") == 4
    assert len([s for s, _, k, _ in lines if s == "b.billing.charge" and k == "ms"]) == 4


def test_enable_options_and_statsd_enabled(listener: Listener) -> None:
    host, port = listener.address.split(":")
    cfg = MonitoringConfiguration(statsd_enabled=True, statsd_host=host, statsd_port=int(port))
    m = enable(config=cfg, history_interval=2.0)
    assert m.sink is not None and m.sink.running and m.monitor.config.history_interval == 2.0
    assert parse_statsd_address("[::1]") == ("::1", 8125, True)
    for bad in ("[::1", ":8125", "h:port", "[::1]x"):
        with pytest.raises(ConfigurationError):
            parse_statsd_address(bad)
    with pytest.raises(ConfigurationError, match="quantiles"):
        enable(config=MonitoringConfiguration(quantiles=(0.5,)))
    assert enabled() is None  # the failed call left nothing running
    with pytest.raises(ConfigurationError, match="unknown monitoring option"):
        enable(nonsense=1)


def test_sink_refuses_timers_without_a_registry_and_sends_nothing_before_start(listener: Listener) -> None:
    with pytest.raises(UsageError, match="timers=True"):
        StatsDSink(lambda: {"metrics": []}, timers=True)
    host, port = listener.address.split(":")
    bus = EventBus()
    cfg = MonitoringConfiguration(statsd_host=host, statsd_port=int(port))
    with PerformanceMonitor(bus, config=cfg) as mon:
        sink = StatsDSink(mon, config=cfg)
        bus.emit("io.stats", conn_id="c1", completed=3)
        assert listener.receive() == [] and not sink.running
        sink.close()
        assert mon.registry.sample_cap is None


def test_failure_sites() -> None:
    from nexus_green.errors import (
        BulkheadFull,
        ClientClosed,
        CompressionError,
        ConnectionLost,
        PoolExhausted,
        RemoteError,
        RemoteProtocolError,
    )

    assert failure_site(PoolExhausted()) == "checkout"
    assert failure_site(BulkheadFull()) == "policy"
    assert failure_site(ConnectError()) == "connect"
    assert failure_site(ConnectionLost()) == "link"
    assert failure_site(CompressionError()) == "decode"
    assert failure_site(RemoteProtocolError()) == "protocol"
    assert failure_site(RemoteError("503", code=503)) == "remote"
    assert failure_site(ClientClosed()) == "client"
    assert failure_site(RequestTimeout(), reached=True) == "response"
    assert failure_site(RequestTimeout()) == "call"


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
