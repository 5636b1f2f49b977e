"""Hedged requests, driven step by step with FakeClock(autojump=False)."""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from gevent.event import Event as GEvent

from nexus_green.clock import FakeClock
from nexus_green.deadlines import deadline
from nexus_green.errors import ConfigurationError, ConnectionLost, DeadlineExceeded
from nexus_green.events import EventBus
from nexus_green.greenlets import spawn
from nexus_green.resilience.budget import RetryBudget
from nexus_green.resilience.hedging import Hedge, HedgeConfig, hedge
from nexus_green.resilience.retrying import Retry, current_retry_scope
from nexus_green.resilience.timeouts import LatencyWindow


class Backend:
    """Attempt i blocks until gates[i] is set, then returns or raises results[i]."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.gates = [GEvent() for _ in results]
        self.started = 0
        self.killed: list[int] = []

    def __call__(self) -> Any:
        i = self.started
        self.started += 1
        try:
            self.gates[i].wait(timeout=10)
        except gevent.GreenletExit:
            self.killed.append(i)
            raise
        if isinstance(self.results[i], BaseException):
            raise self.results[i]
        return self.results[i]


def settle() -> None:
    for _ in range(5):
        gevent.sleep(0)


def make(clock: FakeClock, bus: Any = None, **options: Any) -> Hedge:
    return Hedge(clock=clock, bus=bus or EventBus(), **options)


def test_hedges_after_the_delay_and_kills_the_loser(leakcheck: None) -> None:
    clock = FakeClock(autojump=False)
    bus = EventBus()
    events: list[Any] = []
    bus.subscribe(events.append, prefix="hedge.")
    h = make(clock, bus, delay=0.5)
    backend = Backend("slow", "fast")
    caller = spawn(h.run, backend, idempotent=True)
    settle()
    assert backend.started == 1
    clock.advance(0.49)
    settle()
    assert backend.started == 1
    clock.advance(0.01)
    settle()
    assert backend.started == 2
    backend.gates[1].set()
    assert caller.get(timeout=5) == "fast"
    assert backend.killed == [0]
    assert [e.name for e in events] == ["hedge.sent", "hedge.won"]
    assert events[1].attrs == {"attempt": 1, "hedged": True}


def test_no_hedge_when_the_first_attempt_is_fast(leakcheck: None) -> None:
    clock = FakeClock(autojump=False)
    h = make(clock, delay=0.5)
    backend = Backend("quick", "never")
    backend.gates[0].set()
    assert h.run(backend, idempotent=True) == "quick"
    assert backend.started == 1


def test_non_idempotent_calls_are_never_hedged() -> None:
    clock = FakeClock(autojump=False)
    h = make(clock, delay=0.0)
    backend = Backend("only")
    backend.gates[0].set()
    assert h.run(backend, idempotent=False) == "only" and backend.started == 1


def test_delay_follows_the_p95_of_seen_latencies() -> None:
    clock = FakeClock()
    h = make(clock, min_samples=3, latency=LatencyWindow(refresh=0, clock=clock))
    assert h.hedge_delay() is None

    def takes(seconds: float) -> Any:
        def fn() -> float:
            clock.advance(seconds)
            return seconds

        return fn

    for s in (0.25, 0.5, 1.0):
        h.run(takes(s), idempotent=True)  # unhedged: latency unknown
    assert h.hedge_delay() == 1.0
    assert "delay=1.0" in repr(h)


def test_hedges_are_bounded_by_the_budget(leakcheck: None) -> None:
    clock = FakeClock(autojump=False)
    h = make(clock, delay=0.5, budget=RetryBudget(ratio=0.0, min_per_second=0.0, clock=clock))
    backend = Backend("slow", "unused")
    caller = spawn(h.run, backend, idempotent=True)
    settle()
    clock.advance(1.0)
    settle()
    assert backend.started == 1  # the budget refused the hedge
    backend.gates[0].set()
    assert caller.get(timeout=5) == "slow"


def test_every_attempt_failing_raises_the_last_error(leakcheck: None) -> None:
    clock = FakeClock(autojump=False)
    h = make(clock, delay=0.5)
    backend = Backend(ConnectionLost("first"), ConnectionLost("second"))
    caller = spawn(h.run, backend, idempotent=True)
    settle()
    clock.advance(0.5)
    settle()
    backend.gates[0].set()
    settle()
    assert not caller.dead  # the hedge is still running
    backend.gates[1].set()
    with pytest.raises(ConnectionLost, match="second"):
        caller.get(timeout=5)


def test_a_first_failure_before_the_delay_is_raised_without_hedging(leakcheck: None) -> None:
    clock = FakeClock(autojump=False)
    h = make(clock, delay=0.5)
    backend = Backend(ConnectionLost("first"), "unused")
    backend.gates[0].set()
    with pytest.raises(ConnectionLost, match="first"):
        h.run(backend, idempotent=True)
    assert backend.started == 1


def test_several_hedges(leakcheck: None) -> None:
    clock = FakeClock(autojump=False)
    h = make(clock, delay=1.0, max_hedges=2)
    backend = Backend("a", "b", "c")
    caller = spawn(h.run, backend, idempotent=True)
    for expected in (2, 3, 3):
        settle()
        clock.advance(1.0)
        settle()
        assert backend.started == expected
    backend.gates[2].set()
    assert caller.get(timeout=5) == "c"
    assert sorted(backend.killed) == [0, 1]


def test_the_wait_stops_at_the_overall_deadline(leakcheck: None) -> None:
    h = Hedge(delay=30.0, bus=EventBus())
    backend = Backend("never")
    with deadline(0.01), pytest.raises(DeadlineExceeded, match="hedged call"):
        h.run(backend, idempotent=True)
    assert backend.killed == [0]


def test_hedges_share_the_request_retry_scope(leakcheck: None) -> None:
    clock = FakeClock(autojump=False)
    h = make(clock, delay=0.5)
    left: list[int] = []
    backend = Backend("slow", "fast")

    def attempt() -> Any:
        scope = current_retry_scope()
        assert scope is not None
        result = backend()
        left.append(scope.retries_left)
        return result

    r = Retry(max_attempts=3, clock=clock, bus=EventBus())
    caller = spawn(r.run, lambda: h.run(attempt, idempotent=True), idempotent=True)
    settle()
    clock.advance(0.5)
    settle()
    backend.gates[1].set()
    assert caller.get(timeout=5) == "fast"
    assert left == [1]  # the hedge took one of the request's two retries


def test_hedge_decorator_and_config() -> None:
    @hedge(delay=10.0, idempotent=lambda x: x > 0, bus=EventBus())
    def f(x: int) -> int:
        return x

    assert f(1) == 1 and f(-1) == -1
    assert f.hedge.config.delay == 10.0  # type: ignore[attr-defined]
    h = Hedge(use_budget=False)
    assert h.budget is None
    for options, message in (
        ({"delay": -1}, "delay"),
        ({"max_hedges": 0}, "max_hedges"),
        ({"percentile": 2}, "percentile"),
    ):
        with pytest.raises(ConfigurationError, match=message):
            HedgeConfig(**options)
