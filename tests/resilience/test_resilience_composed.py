"""The composed fast path of @resilient (one wrapper for the defaults) against the general path.

Every scenario runs twice, on identical fresh policies: once through the
decorator (which picks ``Resilient._composed_wrapper`` for the defaults) and
once through ``Resilient.run`` (the closure-per-layer composition), and every
observable result must be the same: values and errors, attempts, breaker state
and window figures, budget figures, idempotency keys seen, events.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import gevent
import pytest

from nexus_green.clock import FakeClock
from nexus_green.errors import ConnectionLost, RemoteError
from nexus_green.events import EventBus
from nexus_green.resilience import (
    BreakerConfig,
    CircuitBreakerListener,
    ResilienceConfiguration,
    Resilient,
    RetryConfig,
    TimeoutConfig,
    current_idempotency_key,
)
from nexus_green.resilience.retrying import current_retry_scope

# A script of outcomes, consumed call by call: "ok", an exception to raise, or "sleep" (times out).
Outcome = Any


def _run_scenario(composed: bool, script: list[Outcome], *, calls: int, subscribe: bool, **cfg: Any) -> dict[str, Any]:
    clock = FakeClock()
    bus = EventBus()
    events: list[tuple[str, Any]] = []
    if subscribe:
        bus.subscribe(lambda e: events.append((e.name, e.attrs.get("outcome") or e.attrs.get("new"))))
    config = ResilienceConfiguration(name="svc", **cfg)
    r = Resilient(config, clock=clock, rng=random.Random(3), bus=bus)
    outcomes = iter(script)
    seen: list[tuple[bool, bool]] = []

    def target(x: int) -> int:
        seen.append((current_idempotency_key() is not None, current_retry_scope() is not None))
        what = next(outcomes, "ok")
        if what == "sleep":
            gevent.sleep(100)
        if isinstance(what, BaseException):
            raise what
        return x * 2

    fn: Callable[[int], int]
    if composed:
        fn = r.decorate(target, idempotent=True)
        assert "_composed_wrapper" in fn.__code__.co_qualname
    else:

        def fn(x: int) -> int:
            return r.run(lambda endpoint: target(x), idempotent=True)

    results: list[Any] = []
    for i in range(calls):
        try:
            results.append(fn(i))
        except Exception as exc:  # noqa: BLE001 - the error class is the observable result
            results.append(type(exc).__name__)
        clock.advance(0.25)
    breaker, budget = r.breaker, r.budget
    assert breaker is not None and budget is not None
    return {
        "results": results,
        "seen": seen,
        "state": breaker.current_state,
        "generation": breaker.generation,
        "figures": breaker.figures(),
        "counter": breaker.fail_counter,
        "budget": budget.figures(),
        "events": events,
    }


SCENARIOS: dict[str, list[Outcome]] = {
    "all succeed": ["ok"] * 30,
    "retried then succeed": [ConnectionLost("x"), "ok", ConnectionLost("x"), ConnectionLost("x"), "ok"] * 4,
    "not retryable": [RemoteError("no", code=404), "ok"] * 6,
    "trip on consecutive failures": [ConnectionLost("x")] * 40,
    "trip on failure rate, reopen, close": ([ConnectionLost("x")] * 2 + ["ok"]) * 12,
    "timeouts": ["sleep", "ok", "sleep", "sleep", "sleep"] * 3,
}


@pytest.mark.parametrize("subscribe", [False, True], ids=["no-subscriber", "subscriber"])
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_composed_path_matches_general_path(name: str, subscribe: bool) -> None:
    cfg: dict[str, Any] = {
        "retry": RetryConfig(max_attempts=3, base_delay=0.01),
        "timeout": TimeoutConfig(request=0.01, overall=5.0),
        "breaker": BreakerConfig(minimum_calls=4, reset_timeout=1.0, reset_jitter=0),
    }
    script = SCENARIOS[name]
    composed = _run_scenario(True, script, calls=40, subscribe=subscribe, **cfg)
    general = _run_scenario(False, script, calls=40, subscribe=subscribe, **cfg)
    assert composed == general
    assert all(key and scope for key, scope in composed["seen"])


def test_composed_path_without_timeout_matches() -> None:
    cfg: dict[str, Any] = {"retry": RetryConfig(base_delay=0.01), "timeout": None}
    script = SCENARIOS["retried then succeed"]
    assert _run_scenario(True, script, calls=20, subscribe=False, **cfg) == _run_scenario(
        False, script, calls=20, subscribe=False, **cfg
    )


def test_composed_path_hands_over_when_not_closed_or_observed() -> None:
    clock = FakeClock()
    r = Resilient(ResilienceConfiguration(name="h", retry=RetryConfig(base_delay=0.0)), clock=clock, bus=EventBus())
    assert r.breaker is not None
    calls: list[int] = []

    @r
    def f() -> int:
        calls.append(1)
        return len(calls)

    r.breaker.open()
    with pytest.raises(Exception, match="is open"):
        f()
    r.breaker.close()
    assert f() == 1  # closed again: the lock-free admission

    # A listener wants every call: the general path tells it.
    class Counting(CircuitBreakerListener):  # type: ignore[misc]
        def __init__(self) -> None:
            self.successes = 0

        def success(self, cb: Any) -> None:
            self.successes += 1

    listener = Counting()
    r.breaker.add_listener(listener)
    assert f() == 2 and listener.successes == 1


def test_stale_generation_is_recorded_by_the_general_path() -> None:
    # A state change between admission and recording: the result is discarded, as breaker.call does.
    bus = EventBus()
    r = Resilient(ResilienceConfiguration(name="s", timeout=None), clock=FakeClock(), bus=bus)
    assert r.breaker is not None
    breaker = r.breaker

    @r
    def f() -> str:
        breaker.open()
        breaker.close()  # two generations later, closed again
        return "done"

    before = breaker.figures().calls
    assert f() == "done"
    assert breaker.figures().calls == before  # discarded: not counted in the new generation


def test_throw_new_error_on_trip_through_composed_path() -> None:
    r = Resilient(
        ResilienceConfiguration(
            name="t", retry=None, breaker=BreakerConfig(max_consecutive_failures=0, throw_new_error_on_trip=True)
        ),
        clock=FakeClock(),
        bus=EventBus(),
    )
    r2 = Resilient(
        ResilienceConfiguration(
            name="t",
            retry=RetryConfig(max_attempts=1),
            breaker=BreakerConfig(max_consecutive_failures=0, throw_new_error_on_trip=True),
        ),
        clock=FakeClock(),
        bus=EventBus(),
    )
    for runner in (r, r2):

        @runner
        def boom() -> None:
            raise ConnectionLost("down")

        with pytest.raises(Exception, match="opened by this failure"):
            boom()
