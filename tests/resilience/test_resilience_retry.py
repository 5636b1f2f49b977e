"""Retry, retry budget and the shared per-request retry scope."""

from __future__ import annotations

import random
from typing import Any

import pytest

from nexus_green.clock import FakeClock
from nexus_green.deadlines import deadline
from nexus_green.errors import (
    BulkheadFull,
    ConfigurationError,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    DeadlineExceeded,
    RemoteError,
    RemoteProtocolError,
    RequestTimeout,
    RetryBudgetExhausted,
    TLSError,
)
from nexus_green.events import EventBus
from nexus_green.resilience.budget import BudgetConfig, RetryBudget
from nexus_green.resilience.retrying import (
    Retry,
    RetryConfig,
    RetryPolicy,
    RetryScope,
    current_retry_scope,
    is_retryable,
    retry,
    was_not_sent,
)


# --- classification -------------------------------------------------------------------
@pytest.mark.parametrize(
    "exc, retryable",
    [
        (ConnectionRefused(), True),
        (ConnectionLost("reset"), True),
        (ConnectTimeout(), True),
        (RequestTimeout(), True),
        (DeadlineExceeded(), False),
        (TLSError(), False),
        (RemoteProtocolError(), False),
        (BulkheadFull(), False),
        (RetryBudgetExhausted(), False),
        (RemoteError(code=503), True),
        (RemoteError(code=500), False),
        (ConnectionResetError(), True),
        (TimeoutError(), True),
        (ValueError(), False),
    ],
)
def test_error_classification(exc: BaseException, retryable: bool) -> None:
    assert is_retryable(exc) is retryable


def test_remote_codes_are_configurable() -> None:
    assert is_retryable(RemoteError(code=500), retryable_codes=frozenset({500}))
    assert not is_retryable(RemoteError(code=503), retryable_codes=frozenset())


def test_not_sent_errors() -> None:
    assert (
        was_not_sent(ConnectionRefused()) and was_not_sent(ConnectTimeout()) and was_not_sent(ConnectionRefusedError())
    )
    assert not was_not_sent(ConnectionLost()) and not was_not_sent(RequestTimeout())


# --- pure policy -------------------------------------------------------------------------
def test_full_jitter_backoff_is_exact_with_a_seeded_rng() -> None:
    policy = RetryPolicy(RetryConfig(base_delay=0.1, multiplier=2.0, max_delay=0.5), rng=random.Random(3))
    ref = random.Random(3)
    caps = [0.1, 0.2, 0.4, 0.5, 0.5]
    assert [policy.backoff(n) for n in range(1, 6)] == [ref.random() * c for c in caps]


def test_decisions() -> None:
    p = RetryPolicy(RetryConfig(max_attempts=3, base_delay=1.0, max_delay=1.0), rng=random.Random(0))
    d = p.decide(attempt=1, exc=ConnectionLost(), idempotent=True, remaining=None)
    assert d.retry and d.reason == "idempotent" and 0 <= d.delay <= 1.0
    assert p.decide(attempt=1, exc=ConnectionLost(), idempotent=False, remaining=None).reason == "not_idempotent"
    d = p.decide(attempt=1, exc=ConnectionRefused(), idempotent=False, remaining=None)
    assert d.retry and d.reason == "not_sent"
    assert p.decide(attempt=1, exc=RemoteProtocolError(), idempotent=True, remaining=None).reason == "not_retryable"
    assert p.decide(attempt=3, exc=ConnectionLost(), idempotent=True, remaining=None).reason == "max_attempts"
    assert p.decide(attempt=1, exc=ConnectionLost(), idempotent=True, remaining=0.0).reason == "deadline"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"base_delay": -1}, "base_delay"),
        ({"base_delay": 5, "max_delay": 1}, "max_delay"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"attempt_timeout": 0}, "attempt_timeout"),
        ({"tries": 3}, "unknown retry option"),
    ],
)
def test_bad_retry_configuration(options: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Retry(**options)


# --- runner --------------------------------------------------------------------------------
def flaky(failures: int, exc: BaseException, calls: list[int]) -> Any:
    def fn() -> str:
        calls.append(1)
        if len(calls) <= failures:
            raise exc
        return "ok"

    return fn


def test_retries_idempotent_calls_with_backoff_sleeps_on_the_clock() -> None:
    clock = FakeClock()
    bus = EventBus()
    seen: list[Any] = []
    bus.subscribe(seen.append, prefix="retry.")
    r = Retry(max_attempts=3, base_delay=1.0, max_delay=1.0, clock=clock, rng=random.Random(5), bus=bus)
    calls: list[int] = []
    assert r.run(flaky(2, ConnectionLost(), calls), idempotent=True) == "ok"
    ref = random.Random(5)
    assert clock.sleeps == [ref.random() * 1.0, ref.random() * 1.0]  # caps: min(1, 1), min(1, 2)
    assert [e.attrs["attempt"] for e in seen] == [2, 3]
    assert len(calls) == 3


def test_does_not_retry_non_idempotent_calls_unless_not_sent() -> None:
    clock = FakeClock()
    r = Retry(clock=clock)
    calls: list[int] = []
    with pytest.raises(ConnectionLost):
        r.run(flaky(5, ConnectionLost(), calls), idempotent=False)
    assert len(calls) == 1
    calls.clear()
    assert r.run(flaky(1, ConnectionRefused(), calls), idempotent=False) == "ok"
    assert len(calls) == 2


def test_non_retryable_errors_are_raised_at_once() -> None:
    calls: list[int] = []
    with pytest.raises(RemoteProtocolError):
        Retry(clock=FakeClock()).run(flaky(5, RemoteProtocolError(), calls), idempotent=True)
    assert len(calls) == 1


def test_gives_up_after_max_attempts_with_the_last_error() -> None:
    calls: list[int] = []
    with pytest.raises(ConnectionLost):
        Retry(max_attempts=4, clock=FakeClock()).run(flaky(10, ConnectionLost(), calls), idempotent=True)
    assert len(calls) == 4


def test_budget_exhaustion_raises_retry_budget_exhausted_from_the_error() -> None:
    bus = EventBus()
    gave_up: list[Any] = []
    bus.subscribe(gave_up.append, prefix="retry.gave_up")
    budget = RetryBudget(ratio=0.0, min_per_second=0.0, clock=FakeClock())
    r = Retry(clock=FakeClock(), budget=budget, bus=bus)
    calls: list[int] = []
    with pytest.raises(RetryBudgetExhausted) as info:
        r.run(flaky(5, ConnectionLost(), calls), idempotent=True)
    assert isinstance(info.value.__cause__, ConnectionLost)
    assert len(calls) == 1 and gave_up[0].attrs["reason"] == "budget"


def test_retries_stop_before_the_overall_deadline() -> None:
    clock = FakeClock()
    r = Retry(base_delay=5.0, max_delay=5.0, clock=clock, rng=random.Random(1))
    calls: list[int] = []
    with deadline(0.5, clock=clock), pytest.raises(ConnectionLost):
        r.run(flaky(5, ConnectionLost(), calls), idempotent=True)
    assert clock.now() < 0.5 and len(calls) <= 2


def test_per_attempt_timeout() -> None:
    import gevent

    calls: list[int] = []

    def slow_then_fast() -> str:
        calls.append(1)
        if len(calls) == 1:
            gevent.sleep(10)
        return "fast"

    r = Retry(attempt_timeout=0.01, clock=FakeClock())
    assert r.run(slow_then_fast, idempotent=True) == "fast"
    assert len(calls) == 2


def test_no_budget_option() -> None:
    r = Retry(use_budget=False, clock=FakeClock())
    assert r.budget is None
    calls: list[int] = []
    assert r.run(flaky(2, ConnectionLost(), calls), idempotent=True) == "ok"


# --- budget ------------------------------------------------------------------------------------
def test_budget_allows_ten_percent_plus_a_small_reserve() -> None:
    clock = FakeClock()
    b = RetryBudget(clock=clock)  # defaults: 60 s, 10%, 1/s reserve -> 60 retries
    for _ in range(100):
        b.record_request()
    spent = 0
    while b.try_spend():
        spent += 1
    assert spent == 60 + 10
    f = b.figures()
    assert (f.requests, f.retries, f.allowed) == (100, 70, 70.0)
    assert "retries=70" in repr(b)


def test_quiet_client_can_still_retry_and_window_slides() -> None:
    clock = FakeClock()
    b = RetryBudget(min_per_second=0.05, ratio=0.1, clock=clock)  # reserve 3
    assert [b.try_spend() for _ in range(4)] == [True, True, True, False]
    clock.advance(59.0)
    assert not b.can_retry()
    clock.advance(1.0)  # the retries of second 0 left the 60 s window
    assert b.can_retry()


@pytest.mark.parametrize(
    "options, message",
    [({"window": 0}, "window"), ({"ratio": -1}, "ratio"), ({"min_per_second": -1}, "min_per_second")],
)
def test_bad_budget_configuration(options: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        BudgetConfig(**options)


def test_bucketed_counts_validation() -> None:
    from nexus_green.resilience.window import BucketedCounts

    with pytest.raises(ConfigurationError, match="bucket width"):
        BucketedCounts(window=1.0, width=2.0)
    with pytest.raises(ConfigurationError, match="fields"):
        BucketedCounts(window=1.0, fields=0)
    counts = BucketedCounts(window=2.0, clock=FakeClock())
    counts.add(0, 4)
    assert "totals=[4]" in repr(counts)


# --- nested layers share one scope ----------------------------------------------------------------
def test_three_layers_of_three_attempts_make_three_calls_not_27() -> None:
    clock = FakeClock()
    calls: list[int] = []
    scopes: list[Any] = []

    @retry(idempotent=True, max_attempts=3, clock=clock)
    def leaf() -> None:
        calls.append(1)
        scopes.append(current_retry_scope())
        raise ConnectionLost("down")

    @retry(idempotent=True, max_attempts=3, clock=clock)
    def middle() -> None:
        leaf()

    @retry(idempotent=True, max_attempts=3, clock=clock)
    def outer() -> None:
        middle()

    with pytest.raises(ConnectionLost):
        outer()
    assert len(calls) == 3
    assert len({id(s) for s in scopes}) == 1  # one scope shared by the three layers
    calls.clear()
    with pytest.raises(ConnectionLost):
        outer()
    assert len(calls) == 3  # a new logical request, a new allowance
    assert scopes[-1] is not scopes[0]
    assert current_retry_scope() is None


def test_nested_layers_spend_the_outermost_budget() -> None:
    clock = FakeClock()
    outer_budget = RetryBudget(ratio=0.0, min_per_second=1 / 60, clock=clock)  # exactly one retry
    inner_budget = RetryBudget(clock=clock)
    calls: list[int] = []
    inner = Retry(max_attempts=5, clock=clock, budget=inner_budget)
    outer = Retry(max_attempts=5, clock=clock, budget=outer_budget)
    with pytest.raises(RetryBudgetExhausted):
        outer.run(lambda: inner.run(flaky(10, ConnectionLost(), calls), idempotent=True), idempotent=True)
    assert len(calls) == 2
    assert inner_budget.figures().requests == 0 and outer_budget.figures().retries == 1


def test_retry_scope_take() -> None:
    budget = RetryBudget(ratio=0.0, min_per_second=1 / 60, clock=FakeClock())
    s = RetryScope(budget=budget, retries_left=5)
    assert s.take() == "" and s.take() == "budget"
    assert "retries=1" in repr(s)


def test_retry_decorator_forms() -> None:
    clock = FakeClock()

    @retry
    def bare() -> int:
        return 1

    shared = Retry(clock=clock, idempotent=True)
    calls: list[int] = []

    @retry(shared)
    def uses_shared() -> str:
        return flaky(1, ConnectionLost(), calls)()

    assert bare() == 1 and uses_shared() == "ok" and uses_shared.retry is shared  # type: ignore[attr-defined]
    assert "max_attempts=3" in repr(shared)
