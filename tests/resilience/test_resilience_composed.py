"""The composed runner (one function for the defaults) against the general path.

Every scenario runs three times, on identical fresh policies: through the
decorator and through ResilienceMiddleware (both use the configuration's
composed runner, ``Resilient.runner``: the flat one for the defaults) and
through ``Resilient.run`` (the closure-per-layer composition), and every
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
from nexus_green.protocol.messages import Request, Response
from nexus_green.resilience import (
    BreakerConfig,
    BulkheadConfig,
    CircuitBreakerListener,
    ResilienceConfiguration,
    ResilienceMiddleware,
    Resilient,
    RetryConfig,
    TimeoutConfig,
    current_idempotency_key,
)
from nexus_green.resilience.retrying import current_retry_scope

# A script of outcomes, consumed call by call: "ok", an exception to raise, or "sleep" (times out).
Outcome = Any


PATHS = ("decorator", "middleware", "general")


def _run_scenario(
    path: str, script: list[Outcome], *, calls: int, subscribe: bool, predicate: bool = False, **cfg: Any
) -> dict[str, Any]:
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
    if path == "decorator":
        fn = r.decorate(target, idempotent=(lambda x: x >= 0) if predicate else True)
        assert r.runner is not None and fn.__wrapped__ is target  # type: ignore[attr-defined]
    elif path == "middleware":
        mw = ResilienceMiddleware(resilient=r)
        assert mw._run is r.runner is not None

        def call_next(request: Request) -> Response:
            return Response(body=b"%d" % target(int(request.body)))

        def fn(x: int) -> int:
            return int(mw(Request(body=b"%d" % x, idempotent=True), call_next).body)

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
    return {
        "results": results,
        "seen": seen,
        "state": breaker.current_state if breaker is not None else None,
        "generation": breaker.generation if breaker is not None else None,
        "figures": breaker.figures() if breaker is not None else None,
        "counter": breaker.fail_counter if breaker is not None else None,
        "budget": budget.figures() if budget is not None else None,
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
    decorator, middleware, general = (_run_scenario(p, script, calls=40, subscribe=subscribe, **cfg) for p in PATHS)
    assert decorator == general
    assert middleware == general
    assert all(key and scope for key, scope in decorator["seen"])


MIXES: dict[str, dict[str, Any]] = {
    "no breaker": {"breaker": None},
    "no retry": {"retry": None},
    "neither": {"breaker": None, "retry": None},
    "attempt timeout": {"retry": RetryConfig(base_delay=0.01, attempt_timeout=5.0)},
    "no budget, no overall deadline": {"budget": None, "timeout": TimeoutConfig(overall=None)},
    "no keys": {"idempotency_keys": False},
}


@pytest.mark.parametrize("timeout", [True, False], ids=["request-timeout", "no-timeout"])
@pytest.mark.parametrize("mix", list(MIXES))
def test_every_mix_of_the_default_policies_matches_the_general_path(mix: str, timeout: bool) -> None:
    # Whatever the composed runner leaves out (the flat one or the layered one), it acts as Resilient.run.
    cfg: dict[str, Any] = {"retry": RetryConfig(base_delay=0.01), **MIXES[mix]}
    if not timeout:
        cfg["timeout"] = None
    script = [ConnectionLost("x"), "ok", RemoteError("no", code=404), ConnectionLost("x"), ConnectionLost("x")] * 3
    runs = [_run_scenario(p, script, calls=12, subscribe=True, **cfg) for p in PATHS]
    runs.append(_run_scenario("decorator", script, calls=12, subscribe=True, predicate=True, **cfg))
    assert runs[0] == runs[1] == runs[2] == runs[3]
    assert any(isinstance(r, int) for r in runs[0]["results"]) and "ConnectionLost" in runs[0]["results"]


def test_an_adaptive_timeout_is_not_composed() -> None:
    from nexus_green.resilience.composed import compose
    from nexus_green.resilience.timeouts import AdaptiveTimeout, TimeoutPolicy

    with pytest.raises(ValueError, match="adaptive"):
        compose(breaker=None, retry=None, timeout=TimeoutPolicy(adaptive=AdaptiveTimeout()), keys=True, overall=None)


def test_the_decorator_and_the_middleware_share_one_runner_built_once() -> None:
    r = Resilient(bus=EventBus())
    run = r.runner
    assert run is not None and ResilienceMiddleware(resilient=r)._run is run

    @r
    def f() -> int:
        return 1

    assert f() == 1 and r.runner is run  # calls build nothing new
    for policy in ({"bulkhead": BulkheadConfig(name="composed-test")}, {"timeout": TimeoutConfig(adaptive=True)}):
        assert Resilient(bus=EventBus(), **policy).runner is None  # those take Resilient.run


def test_composed_path_without_timeout_matches() -> None:
    cfg: dict[str, Any] = {"retry": RetryConfig(base_delay=0.01), "timeout": None}
    script = SCENARIOS["retried then succeed"]
    decorator, middleware, general = (_run_scenario(p, script, calls=20, subscribe=False, **cfg) for p in PATHS)
    assert decorator == middleware == general


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
