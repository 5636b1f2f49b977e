"""@timed and @counted as decorators and context managers."""

from __future__ import annotations

import gevent
import pytest

from nexus_green.clock import FakeClock
from nexus_green.errors import MetricError
from nexus_green.monitoring.decorators import counted, timed
from nexus_green.monitoring.registry import MetricsRegistry, default_registry


def test_timed_records_every_call_including_failures() -> None:
    reg, clock = MetricsRegistry(), FakeClock()

    @timed("work", registry=reg, clock=clock)
    def work(seconds: float, fail: bool = False) -> str:
        clock.advance(seconds)
        if fail:
            raise ValueError("boom")
        return "done"

    assert work(0.1) == "done"
    with pytest.raises(ValueError, match="boom"):
        work(0.3, fail=True)
    h = reg.histogram("work")
    assert h.count == 2 and h.sketch.max == pytest.approx(0.3) and h.sketch.min == pytest.approx(0.1)
    assert work.__name__ == "work"


def test_timed_context_manager_is_per_greenlet_and_nestable() -> None:
    reg, clock = MetricsRegistry(), FakeClock(autojump=False)
    t = timed("block", registry=reg, clock=clock)

    def body(hold: float) -> None:
        with t:
            clock.sleep(hold)

    g1 = gevent.spawn(body, 1.0)
    g2 = gevent.spawn(body, 3.0)
    gevent.sleep(0)
    for _ in range(3):
        clock.advance(1.0)
        gevent.sleep(0)
    gevent.joinall([g1, g2], timeout=5, raise_error=True)
    with t:
        with t:
            clock.advance(0.5)
        clock.advance(0.5)
    s = reg.histogram("block").sketch
    assert s.count == 4
    assert sorted(round(v, 6) for v in (s.min, s.max)) == [0.5, 3.0]
    assert s.sum == pytest.approx(1.0 + 3.0 + 0.5 + 1.0)
    assert t._starts == {}


def test_counted_counts_calls_and_errors_by_class() -> None:
    reg = MetricsRegistry()

    @counted("jobs", registry=reg, tags={"queue": "a"})
    def job(err: type[BaseException] | None = None) -> None:
        if err is not None:
            raise err()

    job()
    for err in (KeyError, KeyError, gevent.Timeout):
        with pytest.raises(err):
            job(err)
    assert reg.counter("jobs", {"queue": "a"}).value == 4
    assert reg.counter("jobs.errors", {"queue": "a", "class": "KeyError"}).value == 2
    assert reg.counter("jobs.errors", {"queue": "a", "class": "Timeout"}).value == 1

    c = counted("blocks", registry=reg)
    with c:
        pass
    with pytest.raises(RuntimeError):
        with c:
            raise RuntimeError("x")
    assert reg.counter("blocks").value == 2 and reg.counter("blocks.errors", {"class": "RuntimeError"}).value == 1


def test_name_clash_is_reported_at_decoration_time() -> None:
    reg = MetricsRegistry()
    reg.gauge("jobs.errors")
    with pytest.raises(MetricError, match="'jobs.errors' is a gauge, not a counter"):
        counted("jobs", registry=reg)
    with pytest.raises(MetricError, match="is a gauge, not a histogram"):
        timed("jobs.errors", registry=reg)


def test_default_registry_is_used_when_none_given() -> None:
    @counted("tests.monitoring.default_registry_calls")
    @timed("tests.monitoring.default_registry_time")
    def f() -> int:
        return 1

    before = default_registry.counter("tests.monitoring.default_registry_calls").value
    assert f() == 1
    assert default_registry.counter("tests.monitoring.default_registry_calls").value == before + 1
    assert default_registry.histogram("tests.monitoring.default_registry_time").count >= 1
