"""Timeout levels, own-Timeout-only catching, deadline flow, adaptive timeout."""

from __future__ import annotations

from typing import Any, Optional

import gevent
import pytest
from gevent.event import Event

from nexus_green.clock import FakeClock
from nexus_green.deadlines import deadline, remaining
from nexus_green.errors import ConfigurationError, ConnectTimeout, DeadlineExceeded, RequestTimeout
from nexus_green.resilience.retrying import Retry
from nexus_green.resilience.timeouts import (
    LEVELS,
    AdaptiveTimeout,
    LatencyWindow,
    TimeoutConfig,
    TimeoutPolicy,
    run_with_timeout,
    timeout,
    timeout_from_config,
)


def block_forever() -> None:
    gevent.sleep(60)


def test_levels_and_defaults() -> None:
    assert {k: v[0] for k, v in LEVELS.items()} == {"connect": 10.0, "request": 30.0, "overall": 60.0}
    assert TimeoutPolicy(level="connect").current() == 10.0
    assert TimeoutPolicy().current() == 30.0
    assert TimeoutPolicy(level="overall").error is DeadlineExceeded
    c = TimeoutConfig()
    assert (c.connect, c.request, c.overall) == (10.0, 30.0, 60.0)


def test_timeout_raises_the_level_error() -> None:
    with pytest.raises(RequestTimeout, match="timed out after 0.010s"):
        TimeoutPolicy(0.01).run(block_forever)
    with pytest.raises(ConnectTimeout):
        TimeoutPolicy(0.01, level="connect").run(block_forever)


def test_only_our_own_timeout_is_caught() -> None:
    outer = gevent.Timeout(0.01)
    outer.start()
    try:
        with pytest.raises(gevent.Timeout) as info:
            run_with_timeout(block_forever, 30.0)
        assert info.value is outer  # passed through untouched
    finally:
        outer.close()


def test_no_limit_runs_directly() -> None:
    assert run_with_timeout(lambda: 5, None) == 5


def test_zero_limit_is_a_timeout_error() -> None:
    with pytest.raises(RequestTimeout, match="leaves no time"):
        run_with_timeout(lambda: 1, 0.0)


def test_the_deadline_flows_down_and_cannot_be_outlived() -> None:
    clock = FakeClock()
    seen: list[Optional[float]] = []

    @timeout(5.0, clock=clock)
    def inner() -> None:
        seen.append(remaining(clock=clock))

    @timeout(20.0, clock=clock)
    def outer() -> None:
        clock.advance(2.0)
        inner()

    with deadline(10.0, clock=clock):
        outer()
    assert seen == [5.0]  # min(own 5 s, 10 - 2 = 8 s left)

    with deadline(3.0, clock=clock):
        clock.advance(1.0)
        with pytest.raises(DeadlineExceeded, match="already passed") as info:
            outer()  # outer gets 2 s, spends them: nothing is left for inner
    assert len(seen) == 1 and info.value.phase == "call"
    # outer's own timer passed while it ran without yielding; outer cancelled
    # it on the way out, so nothing may land here.
    for _ in range(3):
        gevent.sleep(0)
    assert clock.armed == 0


def test_deadline_expiry_is_deadline_exceeded() -> None:
    with deadline(0.01), pytest.raises(DeadlineExceeded, match="overall deadline reached"):
        run_with_timeout(block_forever, 30.0)
    clock = FakeClock()
    with deadline(1.0, clock=clock):
        clock.advance(2.0)
        with pytest.raises(DeadlineExceeded, match="already passed"):
            run_with_timeout(lambda: 1, 30.0, clock=clock)


def test_retries_inside_an_overall_deadline_never_outlive_it() -> None:
    calls: list[int] = []

    def stuck() -> None:
        calls.append(1)
        gevent.sleep(60)

    r = Retry(max_attempts=50, base_delay=0.0, attempt_timeout=30.0)
    with deadline(0.05), pytest.raises(DeadlineExceeded):
        r.run(stuck, idempotent=True)
    assert len(calls) == 1  # DeadlineExceeded is not retryable


def test_bad_timeouts() -> None:
    with pytest.raises(ConfigurationError, match="unknown timeout level"):
        TimeoutPolicy(level="socket")
    with pytest.raises(ConfigurationError, match="must be > 0"):
        TimeoutPolicy(0)
    with pytest.raises(ConfigurationError, match="request timeout"):
        TimeoutConfig(request=0)
    with pytest.raises(ConfigurationError, match="overall timeout"):
        TimeoutConfig(overall=-1)
    with pytest.raises(ConfigurationError, match="adaptive bounds"):
        TimeoutConfig(minimum=10, maximum=5)
    with pytest.raises(ConfigurationError, match="percentile"):
        TimeoutConfig(percentile=0)
    with pytest.raises(ConfigurationError, match="adaptive bounds"):
        AdaptiveTimeout(minimum=0)
    with pytest.raises(ConfigurationError, match="size"):
        LatencyWindow(size=0)
    with pytest.raises(ConfigurationError, match="percentile"):
        LatencyWindow().percentile(1.5)


# --- adaptive ------------------------------------------------------------------------------
def test_latency_window_percentiles_and_exclusions() -> None:
    blocked = [False]
    w = LatencyWindow(size=10, refresh=0, clock=FakeClock(), hub_blocked=lambda: blocked[0])
    assert w.percentile(0.95) is None
    for i in range(1, 21):
        w.record(float(i))
    assert len(w) == 10  # the last 10 samples: 11..20
    assert w.percentile(0.95) == 20.0 and w.percentile(0.5) == 15.0 and w.percentile(0.01) == 11.0
    assert not w.record(-1.0)
    blocked[0] = True
    assert not w.record(1000.0)
    assert w.excluded == 2 and "excluded=2" in repr(w)


def test_latency_window_refreshes_its_sorted_view_on_the_clock() -> None:
    clock = FakeClock()
    w = LatencyWindow(refresh=1.0, clock=clock)
    w.record(1.0)
    assert w.percentile(1.0) == 1.0
    w.record(9.0)
    assert w.percentile(1.0) == 1.0  # cached until refresh seconds pass
    clock.advance(1.0)
    assert w.percentile(1.0) == 9.0


def test_adaptive_timeout_is_p95_times_two_plus_buffer_clamped() -> None:
    window = LatencyWindow(refresh=0, clock=FakeClock())
    a = AdaptiveTimeout(window, min_samples=20)
    for _ in range(19):
        window.record(4.0)
    assert a.current() == 30.0  # too few samples: the default
    window.record(4.0)
    assert a.current() == 9.0  # 4 * 2 + 1
    for _ in range(500):
        window.record(0.1)
    assert a.current() == 5.0  # clamped up to the minimum
    for _ in range(500):
        window.record(200.0)
    assert a.current() == 300.0  # clamped down to the maximum
    assert "current=300s" in repr(a)


def test_adaptive_timeout_takes_any_latency_source() -> None:
    class Histogram:
        def __len__(self) -> int:
            return 100

        def percentile(self, q: float) -> Optional[float]:
            return 10.0 if q == 0.95 else None

    a = AdaptiveTimeout(Histogram(), buffer=0.5)
    assert a.current() == 20.5
    assert a.record(1.0) is False  # the histogram is fed elsewhere

    class Empty(Histogram):
        def percentile(self, q: float) -> Optional[float]:
            return None

    assert AdaptiveTimeout(Empty()).current() == 30.0


def test_adaptive_policy_learns_from_calls_including_timeouts() -> None:
    clock = FakeClock()
    policy = timeout_from_config(TimeoutConfig(adaptive=True, min_samples=1, request=0.01), clock=clock)
    assert policy.adaptive is not None
    policy.adaptive.source.record  # a LatencyWindow  # noqa: B018

    def takes_3s() -> str:
        clock.advance(3.0)
        return "ok"

    assert policy.run(takes_3s) == "ok"
    assert isinstance(policy.adaptive.source, LatencyWindow) and len(policy.adaptive.source) == 1
    w: Any = policy.adaptive.source
    w._refresh = 0  # read the new sample at once
    assert policy.current() == 7.0  # max(5, 3 * 2 + 1)
    with pytest.raises(RequestTimeout):
        policy.run(block_forever, seconds=0.01)  # the FakeClock jumps to the limit
    assert len(policy.adaptive.source) == 2
    assert w.percentile(0.5) == pytest.approx(0.01)  # the censored sample is the limit
    assert "TimeoutPolicy level=request" in repr(policy)


def test_a_fake_clock_drives_the_timeout_decorator() -> None:
    """The limit is a timer on the decorator's clock: a FakeClock jumps to it once the call waits."""
    clock = FakeClock(start=50.0)

    @timeout(30.0, clock=clock)
    def waits(event: Event) -> str:
        event.wait()
        return "done"

    with pytest.raises(RequestTimeout, match="timed out after 30.000s") as info:
        waits(Event())
    assert clock.now() == 80.0 and info.value.phase == "call" and clock.armed == 0

    ready = Event()

    def answer_after_29s() -> None:
        clock.sleep(29.0)
        ready.set()

    gevent.spawn(answer_after_29s)
    assert waits(ready) == "done" and clock.now() == 109.0  # 1 s to spare: no timeout

    with deadline(10.0, clock=clock), pytest.raises(DeadlineExceeded, match="overall deadline reached") as dl:
        waits(Event())  # the deadline in force is the limit
    assert clock.now() == 119.0 and dl.value.phase == "call" and clock.armed == 0


def test_a_timeout_that_leaves_no_time_names_the_call_phase() -> None:
    with pytest.raises(RequestTimeout) as info:
        run_with_timeout(lambda: 1, -1.0)
    assert info.value.phase == "call"


def test_timeout_decorator_keeps_metadata() -> None:
    @timeout(1.0)
    def named() -> str:
        """doc"""
        return "x"

    assert named() == "x" and named.__name__ == "named" and named.timeout_policy.current() == 1.0  # type: ignore[attr-defined]
