"""Idempotency keys (client side) and the server-side IdempotencyGuard."""

from __future__ import annotations

import random

import pytest

from nexus_green.clock import FakeClock
from nexus_green.errors import ConfigurationError, ConnectionLost, PolicyRejection
from nexus_green.greenlets import spawn
from nexus_green.resilience.idempotency import (
    IdempotencyGuard,
    IdempotencyInProgress,
    current_idempotency_key,
    idempotency_key,
    idempotent,
    new_idempotency_key,
)
from nexus_green.resilience.retrying import Retry


def test_one_key_for_every_attempt_of_a_logical_request() -> None:
    keys: list[str] = []
    calls = [0]

    @idempotent
    def op() -> str:
        def attempt() -> str:
            keys.append(current_idempotency_key() or "")
            calls[0] += 1
            if calls[0] < 3:
                raise ConnectionLost()
            return "ok"

        return Retry(clock=FakeClock()).run(attempt, idempotent=True)

    assert op() == "ok"
    assert len(keys) == 3 and len(set(keys)) == 1 and len(keys[0]) == 32
    calls[0] = 0
    op()
    assert keys[3] != keys[0]  # a new logical request, a new key
    assert current_idempotency_key() is None


def test_explicit_key_wins_and_spawned_greenlets_see_it() -> None:
    with idempotency_key("outer"):
        with idempotency_key("explicit") as k:
            assert k == "explicit"
            assert spawn(current_idempotency_key).get(timeout=5) == "explicit"
        assert current_idempotency_key() == "outer"


def test_keys_from_an_injected_rng_are_deterministic() -> None:
    assert new_idempotency_key(random.Random(9)) == new_idempotency_key(random.Random(9))
    assert new_idempotency_key() != new_idempotency_key()


def test_guard_returns_the_first_result_for_duplicates_within_the_window() -> None:
    clock = FakeClock()
    guard = IdempotencyGuard(window=10.0, clock=clock)
    runs: list[int] = []

    def apply() -> int:
        runs.append(1)
        return len(runs)

    assert guard.call("a", apply) == 1
    clock.advance(9.9)
    assert guard.call("a", apply) == 1
    assert guard.call("b", apply) == 2
    clock.advance(0.1)  # "a" completed at t=0: its window is over
    assert guard.call("a", apply) == 3
    assert guard.call(None, apply) == 4  # no key: no deduplication
    assert guard.call(None, apply) == 5
    assert "keys=" in repr(guard)


def test_guard_reports_in_progress_and_forgets_failures() -> None:
    guard = IdempotencyGuard(clock=FakeClock())
    assert guard.begin("k").action == "run"
    assert guard.begin("k").action == "in_progress"
    with pytest.raises(IdempotencyInProgress) as info:
        guard.call("k", lambda: 1)
    assert isinstance(info.value, PolicyRejection) and info.value.retryable
    guard.complete("k", "done")
    d = guard.begin("k")
    assert (d.action, d.result) == ("replay", "done")

    def broken() -> None:
        raise ValueError("failed")

    with pytest.raises(ValueError):
        guard.call("x", broken)
    assert guard.begin("x").action == "run"  # the failed request was forgotten


def test_guard_bounds_its_memory() -> None:
    clock = FakeClock()
    guard = IdempotencyGuard(window=5.0, max_keys=3, clock=clock)
    for k in "abcd":
        guard.call(k, lambda: 1)
    assert len(guard) == 3  # "a" evicted
    assert guard.begin("a").action == "run"
    clock.advance(6)
    guard.begin("z")
    assert len(guard) == 2  # expired entries purged; running ones kept ("a", "z")


def test_guard_validation() -> None:
    with pytest.raises(ConfigurationError, match="window"):
        IdempotencyGuard(window=0)
    with pytest.raises(ConfigurationError, match="max_keys"):
        IdempotencyGuard(max_keys=0)
