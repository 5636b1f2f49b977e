"""Bulkheads: limits, bounded queue, wait timeout, isolation between dependencies."""

from __future__ import annotations

from typing import Any

import gevent
import pytest
from gevent.event import Event as GEvent

from nexus_green.clock import FakeClock
from nexus_green.deadlines import deadline
from nexus_green.errors import BulkheadFull, ConfigurationError
from nexus_green.events import EventBus
from nexus_green.resilience.bulkheads import Bulkhead, BulkheadConfig, bulkhead, get_bulkhead


def hold(bh: Bulkhead, release: GEvent, n: int) -> list[gevent.Greenlet]:
    gs = [gevent.spawn(bh.run, lambda: release.wait(timeout=10)) for _ in range(n)]
    gevent.sleep(0)
    return gs


def test_limits_concurrency_queues_then_rejects() -> None:
    bus = EventBus()
    events: list[Any] = []
    bus.subscribe(events.append, prefix="bulkhead.")
    bh = Bulkhead("db", max_concurrent=2, max_queue=1, wait_timeout=5.0, bus=bus)
    release = GEvent()
    running = hold(bh, release, 2)
    assert bh.active == 2 and bh.decide() == "wait"
    queued = gevent.spawn(bh.run, lambda: "queued ran")
    gevent.sleep(0)
    assert bh.waiting == 1 and bh.decide() == "reject"
    with pytest.raises(BulkheadFull, match="2 running and 1 waiting"):
        bh.run(lambda: None)
    assert events[0].attrs == {"bulkhead": "db", "reason": "queue_full", "active": 2, "waiting": 1}
    release.set()
    assert queued.get(timeout=5) == "queued ran"
    gevent.joinall(running, timeout=5)
    assert bh.active == 0 and bh.waiting == 0 and bh.rejected == 1
    assert "active=0/2" in repr(bh)


def test_wait_timeout_raises_bulkhead_full() -> None:
    bh = Bulkhead("w", max_concurrent=1, max_queue=5, wait_timeout=0.01, bus=EventBus())
    release = GEvent()
    running = hold(bh, release, 1)
    with pytest.raises(BulkheadFull, match="no slot within 0.010s"):
        bh.run(lambda: None)
    assert bh.waiting == 0
    release.set()
    gevent.joinall(running, timeout=5)


def test_the_wait_never_passes_the_deadline() -> None:
    bh = Bulkhead("d", max_concurrent=1, max_queue=5, wait_timeout=None, bus=EventBus())
    release = GEvent()
    running = hold(bh, release, 1)
    with deadline(0.01), pytest.raises(BulkheadFull):
        bh.run(lambda: None)
    clock = FakeClock()
    bh2 = Bulkhead("d2", max_concurrent=1, max_queue=5, wait_timeout=None, clock=clock, bus=EventBus())
    running += hold(bh2, release, 1)
    with deadline(1.0, clock=clock):
        clock.advance(2.0)
        with pytest.raises(BulkheadFull, match="no slot within"):
            bh2.run(lambda: None)
    release.set()
    gevent.joinall(running, timeout=5)


def test_unbounded_wait_without_deadline() -> None:
    bh = Bulkhead("u", max_concurrent=1, max_queue=1, wait_timeout=None, bus=EventBus())
    release = GEvent()
    running = hold(bh, release, 1)
    waiter = gevent.spawn(bh.run, lambda: "got in")
    gevent.sleep(0)
    release.set()
    assert waiter.get(timeout=5) == "got in"
    gevent.joinall(running, timeout=5)


def test_a_slow_dependency_does_not_delay_calls_to_another(leakcheck: None) -> None:
    slow_bh = Bulkhead("slow-dep", max_concurrent=3, max_queue=2, wait_timeout=10.0, bus=EventBus())
    fast_bh = Bulkhead("fast-dep", max_concurrent=3, max_queue=2, wait_timeout=10.0, bus=EventBus())
    stuck = GEvent()
    slow_calls = [gevent.spawn(slow_bh.run, lambda: stuck.wait(timeout=10)) for _ in range(5)]
    gevent.sleep(0)
    assert slow_bh.active == 3 and slow_bh.waiting == 2
    # the slow dependency is saturated; more callers to it are turned away at once...
    with pytest.raises(BulkheadFull):
        slow_bh.run(lambda: None)
    # ...while the other dependency serves every call without waiting behind it
    fast = [gevent.spawn(fast_bh.run, lambda i=i: i) for i in range(20)]
    assert [g.get(timeout=5) for g in fast] == list(range(20))
    assert slow_bh.active == 3 and not any(g.dead for g in slow_calls)
    stuck.set()
    gevent.joinall(slow_calls, timeout=5)


def test_named_registry_and_decorator() -> None:
    a = get_bulkhead("reg-test", max_concurrent=4)
    assert get_bulkhead("reg-test") is a and get_bulkhead("reg-test", max_concurrent=4) is a
    with pytest.raises(ConfigurationError, match="already exists"):
        get_bulkhead("reg-test", max_concurrent=5)

    @bulkhead("reg-test")
    def work(x: int) -> int:
        return x + 1

    assert work(1) == 2 and work.bulkhead is a  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_queue": -1}, "max_queue"),
        ({"wait_timeout": -1}, "wait_timeout"),
    ],
)
def test_bad_bulkhead_configuration(options: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        BulkheadConfig(**options)


def test_release_on_error() -> None:
    bh = Bulkhead("e", max_concurrent=1, bus=EventBus())

    def boom() -> None:
        raise ValueError("x")

    with pytest.raises(ValueError):
        bh.run(boom)
    assert bh.active == 0
