"""Deadlines in a context variable: nesting, remaining(), effective_timeout(), check_deadline()."""

from __future__ import annotations

import gevent
import pytest

from nexus_green.clock import FakeClock
from nexus_green.deadlines import check_deadline, current_deadline, deadline, effective_timeout, remaining
from nexus_green.errors import DeadlineExceeded, NexusTimeout
from nexus_green.greenlets import spawn


def test_no_deadline_in_force() -> None:
    clock = FakeClock()
    assert current_deadline() is None
    assert remaining(clock=clock) is None
    assert effective_timeout(2.0, clock=clock) == 2.0
    assert effective_timeout(None, clock=clock) is None
    check_deadline(clock=clock)  # nothing to exceed


def test_deadline_sets_and_restores() -> None:
    clock = FakeClock(start=100.0)
    with deadline(5.0, clock=clock) as d:
        assert d == 105.0 == current_deadline()
        clock.advance(2)
        assert remaining(clock=clock) == 3.0
    assert current_deadline() is None


def test_nesting_only_shortens() -> None:
    clock = FakeClock()
    with deadline(10.0, clock=clock) as outer:
        with deadline(3.0, clock=clock) as inner:
            assert inner == 3.0 == current_deadline()
            with deadline(60.0, clock=clock) as innermost:  # cannot extend
                assert innermost == 3.0
            assert current_deadline() == 3.0
        assert current_deadline() == outer == 10.0
    assert current_deadline() is None


def test_none_leaves_outer_unchanged() -> None:
    clock = FakeClock()
    with deadline(None, clock=clock) as d:
        assert d is None and current_deadline() is None
    with deadline(4.0, clock=clock):
        with deadline(None, clock=clock) as d:
            assert d == 4.0 == current_deadline()


def test_restored_after_exception() -> None:
    clock = FakeClock()
    with pytest.raises(RuntimeError):
        with deadline(1.0, clock=clock):
            raise RuntimeError("x")
    assert current_deadline() is None


def test_effective_timeout_takes_the_minimum() -> None:
    clock = FakeClock()
    with deadline(5.0, clock=clock):
        assert effective_timeout(2.0, clock=clock) == 2.0
        assert effective_timeout(9.0, clock=clock) == 5.0
        assert effective_timeout(None, clock=clock) == 5.0
        clock.advance(7)
        assert effective_timeout(1.0, clock=clock) == -2.0  # already past: negative, the caller fails fast
        assert remaining(clock=clock) == -2.0


def test_check_deadline_raises_when_passed() -> None:
    clock = FakeClock()
    with deadline(2.0, clock=clock):
        clock.advance(1.999)
        check_deadline("fetch", clock=clock)
        clock.advance(0.001)
        with pytest.raises(DeadlineExceeded, match=r"^fetch: overall deadline passed 0\.000s ago$"):
            check_deadline("fetch", clock=clock)
        clock.advance(1.5)
        with pytest.raises(DeadlineExceeded) as ei:
            check_deadline(clock=clock)
    assert str(ei.value) == "call: overall deadline passed 1.500s ago"
    assert isinstance(ei.value, NexusTimeout) and ei.value.retryable is False


def test_zero_and_negative_deadlines_are_already_passed() -> None:
    clock = FakeClock()
    for seconds in (0.0, -1.0):
        with deadline(seconds, clock=clock):
            with pytest.raises(DeadlineExceeded):
                check_deadline(clock=clock)


def test_system_clock_default() -> None:
    with deadline(100.0):
        left = remaining()
        assert left is not None and 0 < left <= 100.0
        check_deadline()


def test_deadline_flows_into_spawned_greenlets_and_stays_isolated() -> None:
    clock = FakeClock()
    seen = {}
    with deadline(5.0, clock=clock):
        child = spawn(current_deadline)
        assert child.get(timeout=5) == 5.0
    # A deadline set inside one greenlet is invisible to another running at the same time.

    def inner(name: str, seconds: float) -> None:
        with deadline(seconds, clock=clock):
            gevent.sleep(0)
            seen[name] = current_deadline()

    gevent.joinall([spawn(inner, "a", 1.0), spawn(inner, "b", 2.0)], timeout=5, raise_error=True)
    assert seen == {"a": 1.0, "b": 2.0}
    assert current_deadline() is None
