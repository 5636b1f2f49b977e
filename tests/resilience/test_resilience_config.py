"""@resilient and ResilienceConfiguration: the composition order and what flows through it."""

from __future__ import annotations

import random
from typing import Any, Optional

import gevent
import pytest

from nexus_green.clock import FakeClock
from nexus_green.deadlines import remaining
from nexus_green.errors import (
    CircuitOpen,
    ConfigurationError,
    ConnectionLost,
    ConnectionRefused,
    DeadlineExceeded,
)
from nexus_green.events import EventBus
from nexus_green.resilience import (
    BreakerConfig,
    BulkheadConfig,
    FailoverConfig,
    FallbackConfig,
    HedgeConfig,
    ResilienceConfiguration,
    Resilient,
    RetryConfig,
    TimeoutConfig,
    current_idempotency_key,
    resilient,
)
from nexus_green.resilience.retrying import current_retry_scope


def test_defaults() -> None:
    c = ResilienceConfiguration()
    assert c.breaker == BreakerConfig() and c.retry == RetryConfig() and c.timeout == TimeoutConfig()
    assert (c.bulkhead, c.fallback, c.failover, c.hedge) == (None, None, None, None)
    r = Resilient(c, bus=EventBus())
    assert repr(r) == "<Resilient 'default' policies=['breaker', 'retry', 'timeout']>"


def test_breaker_sees_one_outcome_per_logical_request() -> None:
    clock = FakeClock()
    calls: list[int] = []

    @resilient(idempotent=True, clock=clock, bus=EventBus())
    def down() -> None:
        calls.append(1)
        raise ConnectionLost("down")

    with pytest.raises(ConnectionLost):
        down()
    breaker = down.resilient.breaker  # type: ignore[attr-defined]
    assert len(calls) == 3 and breaker.figures().calls == 1 and breaker.name.endswith("down")


def test_fallback_is_outside_the_breaker() -> None:
    clock = FakeClock()
    cfg = ResilienceConfiguration(
        breaker=BreakerConfig(max_consecutive_failures=0),
        retry=None,
        fallback=FallbackConfig(backup=lambda: "from backup", on=CircuitOpen),
    )
    calls: list[int] = []

    @resilient(cfg, clock=clock, bus=EventBus())
    def svc() -> str:
        calls.append(1)
        raise ValueError("application bug")  # not covered (on=CircuitOpen): raised

    with pytest.raises(ValueError):
        svc()
    assert svc() == "from backup"  # the open breaker's CircuitOpen goes to the backup
    assert len(calls) == 1


def test_timeout_is_innermost_so_each_attempt_gets_its_own() -> None:
    calls: list[int] = []

    @resilient(idempotent=True, timeout=TimeoutConfig(request=0.01), retry=RetryConfig(base_delay=0), bus=EventBus())
    def sometimes_stuck() -> str:
        calls.append(1)
        if len(calls) == 1:
            gevent.sleep(30)
        return "second attempt"

    assert sometimes_stuck() == "second attempt"


def test_bulkhead_is_inside_retry() -> None:
    active: list[int] = []
    cfg = ResilienceConfiguration(bulkhead=BulkheadConfig(max_concurrent=1, max_queue=0))
    r = Resilient(cfg, clock=FakeClock(), bus=EventBus())
    assert r.bulkhead is not None and r.bulkhead.name == "default"

    def attempt(endpoint: Optional[str]) -> str:
        assert r.bulkhead is not None
        active.append(r.bulkhead.active)
        if len(active) == 1:
            raise ConnectionLost()
        return "ok"

    assert r.run(attempt, idempotent=True) == "ok"
    assert active == [1, 1] and r.bulkhead.active == 0


def test_overall_deadline_bounds_everything() -> None:
    calls: list[int] = []

    @resilient(
        idempotent=True,
        timeout=TimeoutConfig(request=30.0, overall=0.05),
        retry=RetryConfig(max_attempts=100, base_delay=0),
        bus=EventBus(),
    )
    def stuck() -> None:
        calls.append(1)
        left = remaining()
        assert left is not None and left <= 0.05
        gevent.sleep(30)

    with pytest.raises(DeadlineExceeded):
        stuck()
    assert len(calls) == 1


def test_one_idempotency_key_and_retry_scope_per_call() -> None:
    seen: list[Any] = []

    @resilient(idempotent=True, clock=FakeClock(), bus=EventBus())
    def op() -> str:
        seen.append((current_idempotency_key(), current_retry_scope()))
        if len(seen) % 2:
            raise ConnectionLost()
        return "ok"

    op()
    op()
    assert seen[0] == seen[1] and seen[2] == seen[3] and seen[0][0] != seen[2][0]
    assert seen[0][0] is not None

    @resilient(idempotency_keys=False, bus=EventBus())
    def no_keys() -> Optional[str]:
        return current_idempotency_key()

    assert no_keys() is None


def test_shared_resilient_shares_its_breaker() -> None:
    r = Resilient(ResilienceConfiguration(name="inventory"), clock=FakeClock(), bus=EventBus())

    @r
    def a() -> int:
        return 1

    @r
    def b() -> int:
        raise ConnectionRefused()

    a()
    with pytest.raises(ConnectionRefused):
        b()  # not idempotent, but never sent: retried, then raised
    assert r.breaker is not None and r.breaker.figures().calls == 2 and r.breaker.name == "inventory"


def test_failover_and_hedge_through_resilient() -> None:
    cfg = ResilienceConfiguration(
        failover=FailoverConfig(endpoints=("a", "b")),
        hedge=HedgeConfig(delay=10.0),
        bulkhead=BulkheadConfig(name="fo-test"),
    )

    @resilient(cfg, idempotent=lambda key: True, rng=random.Random(1), bus=EventBus())
    def read(key: str, *, endpoint: str) -> str:
        if endpoint == "a":
            raise ConnectionLost()
        return f"{key}@{endpoint}"

    assert read("k") == "k@b"
    r = read.resilient  # type: ignore[attr-defined]
    assert r.failover.policy.health("a").consecutive_failures == 1 and r.bulkhead.name == "fo-test"


def test_fallback_key_and_backup_get_the_call_arguments() -> None:
    cfg = ResilienceConfiguration(
        retry=None,
        fallback=FallbackConfig(cache={("x",): "cached x"}, backup=lambda k: f"backup {k}"),
    )

    @resilient(cfg, bus=EventBus())
    def get(k: str) -> str:
        raise ConnectionLost() if k == "x" else ConnectionResetError()

    assert get("x") == "cached x"
    assert get("y") == "backup y"


def test_bad_configurations() -> None:
    with pytest.raises(ConfigurationError, match="unknown resilience option"):
        Resilient(retries=3)
    with pytest.raises(ConfigurationError, match="only works in ResilienceMiddleware"):
        resilient(fallback=FallbackConfig(backup="backup:1"))(lambda: None)


def test_policies_can_all_be_off() -> None:
    r = Resilient(ResilienceConfiguration(breaker=None, retry=None, budget=None, timeout=None), bus=EventBus())
    assert r.run(lambda ep: ep) is None
    assert repr(r) == "<Resilient 'default' policies=[]>"
    r2 = Resilient(ResilienceConfiguration(budget=None, hedge=HedgeConfig(delay=1.0)), bus=EventBus())
    assert r2.retry is not None and r2.retry.budget is None and r2.hedge is not None and r2.hedge.budget is None
