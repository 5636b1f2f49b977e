"""The per-hub deadline scheduler: many deadlines, cancellation, nesting, expiry order, no leaks."""

from __future__ import annotations

import threading
import time
from typing import Any

import gevent
import pytest
from gevent.event import Event

from nexus_green.errors import DeadlineExceeded, RequestTimeout
from nexus_green.resilience.timeouts import run_with_timeout
from nexus_green.resilience.timerwheel import Deadline, DeadlineScheduler, Interrupt, arm, scheduler


def settle(s: DeadlineScheduler) -> None:
    assert s.armed == 0
    assert all(not bucket for bucket in s._buckets.values())
    assert s._timer.ref is False  # an idle scheduler never keeps the loop alive


def test_a_cancelled_deadline_never_fires_and_leaves_nothing_armed() -> None:
    s = scheduler()
    fired = s.fired
    ds = [arm(0.005) for _ in range(100)]
    assert s.armed == 100 and s._timer.ref is True
    for d in ds:
        d.cancel()
        d.cancel()  # twice is harmless
    assert not any(d.active for d in ds)
    gevent.sleep(0.03)  # past every deadline: nothing is delivered
    assert s.fired == fired
    settle(s)


def test_an_expired_deadline_interrupts_its_own_greenlet_only() -> None:
    caught: list[Any] = []

    def victim() -> None:
        d = arm(0.005)
        try:
            Event().wait(timeout=5)
        except Interrupt as i:
            caught.append((i.deadline is d, d.fired, d.active))

    def bystander() -> None:
        gevent.sleep(0.02)
        caught.append("bystander finished")

    gevent.joinall([gevent.spawn(victim), gevent.spawn(bystander)], timeout=5)
    assert caught == [(True, True, False), "bystander finished"]
    settle(scheduler())


def test_the_interrupt_is_not_an_exception() -> None:
    swallowed = []

    def user_code() -> None:
        try:
            gevent.sleep(5)
        except Exception:  # a user's broad handler must not swallow our interrupt
            swallowed.append(True)

    with pytest.raises(RequestTimeout):
        run_with_timeout(user_code, 0.005)
    assert swallowed == []
    assert issubclass(Interrupt, gevent.Timeout) and not issubclass(Interrupt, Exception)


def test_many_concurrent_deadlines_expire_in_deadline_order() -> None:
    order: list[Deadline] = []
    armed: list[Deadline] = []
    n = 300

    def worker(i: int) -> None:
        d = arm(0.002 + (n - i) * 0.0001)  # spawned first, expires last
        armed.append(d)
        try:
            gevent.sleep(5)
        except Interrupt as e:
            assert e.deadline is d
            order.append(d)

    gevent.joinall([gevent.spawn(worker, i) for i in range(n)], timeout=10, raise_error=True)
    assert len(order) == n
    # Delivered by millisecond tick, and within one tick in the order armed.
    expected = sorted(armed, key=lambda d: (d.tick, armed.index(d)))
    assert order == expected
    settle(scheduler())


def test_half_cancelled_half_expired() -> None:
    outcome: dict[int, str] = {}

    def worker(i: int) -> None:
        d = arm(0.01)
        try:
            if i % 2:
                d.cancel()
            gevent.sleep(0.03)
            outcome[i] = "ran"
        except Interrupt:
            outcome[i] = "interrupted"

    gevent.joinall([gevent.spawn(worker, i) for i in range(100)], timeout=5)
    assert outcome == {i: "ran" if i % 2 else "interrupted" for i in range(100)}
    settle(scheduler())


def test_nested_inner_expires_first() -> None:
    def inner() -> None:
        gevent.sleep(5)

    def outer() -> str:
        with pytest.raises(RequestTimeout, match="inner"):
            run_with_timeout(inner, 0.005, what="inner")
        return "outer continues"

    assert run_with_timeout(outer, 5.0, what="outer") == "outer continues"
    settle(scheduler())


def test_nested_outer_expires_first_and_passes_through_the_inner_layer() -> None:
    seen = []

    def inner() -> None:
        try:
            gevent.sleep(5)
        except BaseException as e:
            seen.append(type(e).__name__)
            raise

    def outer() -> None:
        run_with_timeout(inner, 5.0, what="inner")  # the inner limit is 5 s, the outer one fires

    with pytest.raises(RequestTimeout, match="outer timed out"):
        run_with_timeout(outer, 0.005, what="outer")
    assert seen == ["Interrupt"]
    settle(scheduler())


def test_two_deadlines_of_one_call_expiring_together_deliver_once() -> None:
    # Both expire before the hub runs again, so one hub tick finds both due.
    # The outer one (armed first) is delivered; unwinding cancels the inner
    # one, which must then not hit the code that runs afterwards.
    after: list[str] = []

    def block_the_hub_then_wait() -> None:
        time.sleep(0.02)  # no yield: both deadlines pass meanwhile
        gevent.sleep(5)

    def run() -> None:
        try:
            run_with_timeout(
                lambda: run_with_timeout(block_the_hub_then_wait, 0.005, what="inner"), 0.005, what="outer"
            )
        except RequestTimeout as e:
            after.append(str(e))
        gevent.sleep(0.02)  # a stale inner interrupt would land here
        after.append("slept in peace")

    g = gevent.spawn(run)
    g.join(timeout=5)
    assert g.successful(), g.exception
    assert after == ["outer timed out after 0.005s", "slept in peace"]
    settle(scheduler())


def test_a_deadline_overall_limit_becomes_deadline_exceeded() -> None:
    from nexus_green.deadline import deadline

    with deadline(0.005), pytest.raises(DeadlineExceeded):
        run_with_timeout(lambda: gevent.sleep(5), 30.0)
    settle(scheduler())


def test_an_earlier_deadline_restarts_the_hub_timer() -> None:
    s = scheduler()
    late = arm(30.0)
    starts = s.timer_starts
    with pytest.raises(RequestTimeout):
        run_with_timeout(lambda: gevent.sleep(5), 0.005)
    assert s.timer_starts > starts
    assert late.active
    late.cancel()
    settle(s)


def test_a_dead_greenlet_is_not_thrown_into() -> None:
    s = scheduler()
    fired = s.fired
    leaked: list[Deadline] = []
    g = gevent.spawn(lambda: leaked.append(arm(0.005)))  # arms and exits without cancelling
    g.join()
    gevent.sleep(0.03)
    assert leaked[0].fired and not leaked[0].active
    assert s.fired == fired + 1
    settle(s)


def test_cancelled_buckets_are_compacted() -> None:
    s = scheduler()
    ds = [s.arm(10.0 + i / 1000) for i in range(3000)]  # 3000 distinct milliseconds
    assert s.next_tick() == ds[0].tick
    for d in ds:
        d.cancel()
    s.arm(20.0).cancel()  # a new bucket: the heap of stale ticks is compacted
    assert len(s._ticks) <= 2 * len(s._buckets) + 1025
    assert s.next_tick() is not None or not s._buckets
    settle(s)


def test_one_scheduler_per_hub_and_threads_get_their_own() -> None:
    mine = scheduler()
    assert scheduler() is mine
    other: list[Any] = []

    def in_thread() -> None:
        s = scheduler()
        try:
            run_with_timeout(lambda: gevent.sleep(5), 0.005)
        except RequestTimeout:
            other.append(s)
        finally:
            gevent.get_hub().destroy(destroy_loop=True)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join(timeout=10)
    assert len(other) == 1 and other[0] is not mine


def test_repr_and_properties() -> None:
    d = arm(1.0)
    assert "active=True" in repr(d) and "armed=" in repr(scheduler())
    i = Interrupt(d)
    assert str(i) == "deadline of 1s expired" and "Interrupt" in repr(i)
    d.cancel()
    assert not d.active and not d.fired
