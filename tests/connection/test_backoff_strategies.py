"""Reconnect strategies: exact delays with a seeded random source."""

from __future__ import annotations

import math
import random

import pytest

from nexus_green.connection.backoff import (
    CallableStrategy,
    ExponentialBackoff,
    FixedInterval,
    ReconnectStrategy,
)
from nexus_green.errors import ConfigurationError


def test_defaults() -> None:
    b = ExponentialBackoff()
    assert (b.base, b.cap, b.max_attempts, b.jitter) == (0.5, 30.0, None, "full")
    assert isinstance(b.rng, random.Random)
    assert repr(b) == "ExponentialBackoff(base=0.5, cap=30.0, max_attempts=None, jitter='full')"


def test_no_jitter_doubles_up_to_the_cap() -> None:
    b = ExponentialBackoff(base=0.5, cap=30.0, jitter="none")
    assert [b.next_delay(n) for n in range(1, 10)] == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    # huge attempt numbers neither overflow nor exceed the cap
    assert b.next_delay(10**6) == 30.0


def test_full_jitter_is_exact_with_a_seeded_random() -> None:
    b = ExponentialBackoff(base=0.5, cap=4.0, jitter="full", rng=random.Random(42))
    got = [b.next_delay(n) for n in range(1, 7)]
    ref = random.Random(42)
    want = [ref.uniform(0.0, min(4.0, 0.5 * 2 ** (n - 1))) for n in range(1, 7)]
    assert got == want
    assert all(0.0 <= d <= min(4.0, 0.5 * 2 ** (n - 1)) for n, d in enumerate(got, 1))


def test_decorrelated_jitter_is_exact_and_reset_restarts_it() -> None:
    b = ExponentialBackoff(base=1.0, cap=10.0, jitter="decorrelated", rng=random.Random(3))
    ref = random.Random(3)
    prev = 1.0
    want = []
    for _ in range(8):
        prev = min(10.0, ref.uniform(1.0, prev * 3))
        want.append(prev)
    got = [b.next_delay(n) for n in range(1, 9)]
    assert got == want
    assert all(1.0 <= d <= 10.0 for d in got)
    b.reset()
    assert b.next_delay(1) == ref.uniform(1.0, 3.0)


def test_decorrelated_stays_within_base_and_cap_over_many_draws() -> None:
    b = ExponentialBackoff(base=0.1, cap=2.0, jitter="decorrelated", rng=random.Random(0))
    delays = [b.next_delay(n) for n in range(1, 2001)]
    assert min(delays) >= 0.1 and max(delays) == 2.0


def test_max_attempts() -> None:
    b = ExponentialBackoff(jitter="none", max_attempts=3)
    assert [b.next_delay(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.0, 2.0, None, None]
    assert ExponentialBackoff(max_attempts=0).next_delay(1) is None
    assert ExponentialBackoff(jitter="decorrelated", max_attempts=1, rng=random.Random(1)).next_delay(2) is None


def test_fixed_interval() -> None:
    f = FixedInterval(1.5, max_attempts=2)
    assert [f.next_delay(n) for n in (1, 2, 3)] == [1.5, 1.5, None]
    f.reset()
    assert f.next_delay(1) == 1.5
    assert FixedInterval(0).next_delay(99) == 0.0
    assert repr(f) == "FixedInterval(1.5, max_attempts=2)"


def test_callable_strategy() -> None:
    seen = []
    resets = []

    def schedule(attempt: int) -> float | None:
        seen.append(attempt)
        return None if attempt > 2 else attempt

    s = CallableStrategy(schedule, on_reset=lambda: resets.append(True))
    assert [s.next_delay(n) for n in (1, 2, 3)] == [1.0, 2.0, None]
    assert isinstance(s.next_delay(1), float)
    assert seen == [1, 2, 3, 1]
    s.reset()
    assert resets == [True]
    CallableStrategy(schedule).reset()  # no on_reset: nothing happens
    assert repr(s) == "CallableStrategy(schedule)"


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, "1", True])
def test_callable_strategy_rejects_bad_delays(bad: object) -> None:
    s = CallableStrategy(lambda n: bad)  # type: ignore[arg-type,return-value]
    with pytest.raises(ConfigurationError, match="returned .* for attempt 1"):
        s.next_delay(1)


def test_callable_strategy_needs_a_callable() -> None:
    with pytest.raises(ConfigurationError, match="needs a callable"):
        CallableStrategy(3.0)  # type: ignore[arg-type]


def test_callable_name_falls_back_to_repr() -> None:
    class Sched:
        def __call__(self, attempt: int) -> float:
            return -1.0

        def __repr__(self) -> str:
            return "<Sched>"

    s = CallableStrategy(Sched())
    assert repr(s) == "CallableStrategy(<Sched>)"
    with pytest.raises(ConfigurationError, match="strategy <Sched> returned -1.0"):
        s.next_delay(1)


@pytest.mark.parametrize("strategy", [ExponentialBackoff(), FixedInterval(1.0), CallableStrategy(lambda n: 0.0)])
@pytest.mark.parametrize("attempt", [0, -1, 1.0, True])
def test_attempts_start_at_one(strategy: ReconnectStrategy, attempt: object) -> None:
    with pytest.raises(ConfigurationError, match="start at 1"):
        strategy.next_delay(attempt)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs,text",
    [
        ({"base": 0}, "backoff base must be a positive"),
        ({"base": -1}, "base"),
        ({"base": math.inf}, "base"),
        ({"cap": 0.1, "base": 0.5}, "must not be below its base"),
        ({"cap": "30"}, "cap"),
        ({"jitter": "equal"}, "jitter must be one of full, decorrelated, none"),
        ({"max_attempts": -1}, "max_attempts"),
        ({"max_attempts": 2.5}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
    ],
)
def test_bad_exponential_options(kwargs: dict, text: str) -> None:
    with pytest.raises(ConfigurationError, match=text):
        ExponentialBackoff(**kwargs)


@pytest.mark.parametrize("interval", [-1, math.nan, None])
def test_bad_fixed_interval(interval: object) -> None:
    with pytest.raises(ConfigurationError, match="reconnect interval must be a non-negative"):
        FixedInterval(interval)  # type: ignore[arg-type]


def test_all_are_reconnect_strategies() -> None:
    for s in (ExponentialBackoff(), FixedInterval(1), CallableStrategy(lambda n: None)):
        assert isinstance(s, ReconnectStrategy)
