"""RepeatedLog (log hygiene) and TimerSamples (the raw values behind StatsD timers), with a FakeClock."""

from __future__ import annotations

import logging
import random

import pytest

from nexus_green.clock import FakeClock
from nexus_green.errors import ConnectionLost, RequestTimeout
from nexus_green.events import EventBus
from nexus_green.logs import RepeatedLog
from nexus_green.monitoring import PerformanceMonitor
from nexus_green.monitoring.config import MonitoringConfiguration
from nexus_green.monitoring.samples import TimerSamples
from nexus_green.monitoring.statsd_sink import StatsDSink
from nexus_green.testing import run_module_patched

pytestmark = pytest.mark.usefixtures("leakcheck")


def test_a_repeating_warning_is_logged_once_per_interval_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    rlog = RepeatedLog(logging.getLogger("t.repeats"), interval=10, clock=clock, max_keys=2)
    caplog.set_level(logging.WARNING, logger="t.repeats")
    assert rlog.warning("a", "down %s", "x") and not rlog.warning("a", "down %s", "x")
    assert rlog.suppressed("a") == 1 and rlog.suppressed("nope") == 0
    clock.advance(10)
    assert rlog.error("a", "down %s", "x")
    try:
        raise KeyError("k")
    except KeyError:
        assert rlog.exception("b", "broke")
    assert not rlog.exception("b", "broke")
    rlog.warning("c", "third key")  # over max_keys: "a", the oldest, is forgotten
    assert rlog.warning("a", "down %s", "x")
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["down x", "down x (repeated 1 times in the last 10s)", "broke", "third key", "down x"]
    assert caplog.records[2].exc_info is not None
    assert "keys=2" in repr(rlog)


def test_the_sink_logs_a_failing_flush_once_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock(autojump=False)

    def broken() -> dict[str, object]:
        raise RuntimeError("no snapshot")

    sink = StatsDSink(broken, config=MonitoringConfiguration(statsd_port=9), clock=clock)
    for _ in range(30):
        assert sink.flush() == 0
    clock.advance(60)
    sink.flush()
    sink.close()
    failures = [r.getMessage() for r in caplog.records if "flush failed" in r.getMessage()]
    assert failures == ["statsd: flush failed", "statsd: flush failed (repeated 29 times in the last 60s)"]
    assert sink.errors == 32  # close() tried a last flush too


def test_samples_are_uniform_bounded_and_stand_for_every_value() -> None:
    s = TimerSamples(cap=8, rng=random.Random(1))
    for i in range(1000):
        s.add(float(i))
    assert len(s) < 16 and s.stride > 1 and "of 1000" in repr(s)
    values, rate = s.drain()
    assert len(values) == 8 and rate == pytest.approx(8 / 1000)
    assert min(values) < 500 < max(values)  # early and late values both kept
    for _ in range(50):
        s.add_many([1.0, 2.0, 3.0])
    s.add_many([])
    values, rate = s.drain()
    assert len(values) == 8 and rate == pytest.approx(8 / 150)
    s.stride, s._skip = 4, 5
    s.add_many([1.0, 2.0])  # skipped whole: still counted
    assert s.seen == 2 and s.values == []
    s.note_seen(3)
    assert s.drain() == ([], 1.0)


def test_a_restated_wire_error_is_still_counted_once() -> None:
    bus = EventBus()
    with PerformanceMonitor(bus) as mon:
        wire = ConnectionLost("link died")
        try:
            raise RequestTimeout("gave up") from wire
        except RequestTimeout as exc:
            restated = exc
        bus.emit("request.failed", conn_id="c1", qid=1, fid=1, latency=0.1, error=wire)
        bus.emit("client.request.failed", endpoint="tcp://h:1", fid=1, phase="", error=restated)
        assert mon.value("requests.failed") == 1
        assert mon.value("calls.failed", {"class": "RequestTimeout", "where": "response"}) == 1
        # another greenlet's failure, or a different error: counted as a failure before the wire
        bus.emit("request.failed", conn_id="c1", qid=2, fid=1, latency=0.1, error=ConnectionLost("x"))
        bus.emit("client.request.failed", endpoint="tcp://h:1", fid=1, phase="", error=KeyError("y"))
        assert mon.value("requests.failed") == 3
        assert mon.value("calls.failed", {"class": "KeyError", "where": "call"}) == 1


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
