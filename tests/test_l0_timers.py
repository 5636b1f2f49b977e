"""The L0 timers: the per-hub TimerScheduler, arm()/Interrupt, nesting, expiry order, no leaks, FakeClock-driven arms.

Most tests run on a private :class:`TimerScheduler` (``own`` fixture) behind
a small real-time clock, so timers that other tests (a connection's
heartbeat, say) leave on the hub's scheduler cannot disturb the counts; the
tests of ``hub_scheduler()`` itself use the hub's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest
from gevent.event import Event
from greenlet import getcurrent

from nexus_green.clock import SYSTEM_CLOCK, FakeClock
from nexus_green.deadlines import deadline
from nexus_green.errors import DeadlineExceeded, RequestTimeout
from nexus_green.resilience.timeouts import run_with_timeout
from nexus_green.timers import Interrupt, Timer, TimerScheduler, arm, hub_scheduler


class OwnClock:
    """The real clock, with its timers on a private scheduler of this hub."""

    def __init__(self) -> None:
        self.scheduler = TimerScheduler(gevent.get_hub())

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        gevent.sleep(seconds)

    def call_at(self, when: float, fn: Callable[[Any], Any], arg: Any = None) -> Timer:
        return self.scheduler.call_at(when, fn, arg)

    def after(self, seconds: float) -> Timer:
        """arm() a timer ``seconds`` from now for the current greenlet."""
        return arm(self, self.now() + seconds)


def settle(s: TimerScheduler) -> None:
    assert s.armed == 0
    assert all(not bucket for bucket in s._buckets.values())
    assert s.buckets <= 1  # at most the last bucket armed into, kept empty
    assert s._timer.ref is False  # an idle scheduler never keeps the loop alive


@pytest.fixture
def own() -> Iterator[OwnClock]:
    clock = OwnClock()
    yield clock
    settle(clock.scheduler)


# --- TimerScheduler.call_at / cancel -------------------------------------------------------
def test_call_at_runs_the_function_in_the_hub_in_order(own: OwnClock) -> None:
    s = own.scheduler
    ran: list[tuple[str, bool]] = []
    hub = gevent.get_hub()

    def note(name: str) -> None:
        ran.append((name, getcurrent() is hub))

    now = time.monotonic()
    late = s.call_at(now + 0.006, note, "late")
    early = s.call_at(now + 0.002, note, "early")
    assert (s.armed, late.active, late.when) == (2, True, now + 0.006)
    assert s.next_tick() == early.tick
    gevent.sleep(0.03)
    assert ran == [("early", True), ("late", True)]
    assert early.fired and late.fired and not late.active
    assert s.fired == 2 and s.next_tick() is None


def test_a_cancelled_timer_never_fires_and_leaves_nothing_armed(own: OwnClock) -> None:
    s = own.scheduler
    ts = [own.after(0.005) for _ in range(100)]
    called = s.call_at(time.monotonic() + 0.005, pytest.fail, "a cancelled function ran")
    assert s.armed == 101 and s._timer.ref is True
    called.cancel()
    for t in ts:
        t.cancel()
        t.cancel()  # twice is harmless
    assert not any(t.active or t.fired for t in [*ts, called])
    gevent.sleep(0.03)  # past every timer: nothing is delivered, nothing runs
    assert s.fired == 0


def test_bucket_count_stays_bounded_by_the_timers_armed(own: OwnClock) -> None:
    """Calls arm and cancel timers in ever new milliseconds (rate x time): the buckets stay O(armed)."""
    s = own.scheduler
    base = time.monotonic() + 30.0
    held: list[Timer] = []
    most = most_ticks = 0
    for i in range(20_000):
        t = s.call_at(base + i / 1000, print)  # a new millisecond every call
        held.append(t)
        if len(held) > 5:  # five calls in flight at any time
            held.pop(0).cancel()
        assert s.buckets <= s.armed + 1
        most = max(most, s.buckets)
        most_ticks = max(most_ticks, len(s._ticks))
    assert most <= 6 and s.armed == 5
    assert most_ticks <= 2 * (most + 1) + 1024  # stale ticks are compacted, not kept for 20000 calls
    for t in held:
        t.cancel()
    assert s.buckets <= 1


def test_cancelled_buckets_are_compacted(own: OwnClock) -> None:
    s = own.scheduler
    base = time.monotonic() + 10.0
    ts = [s.call_at(base + i / 1000, print) for i in range(3000)]  # 3000 distinct milliseconds
    assert s.buckets == 3000 and s.next_tick() == ts[0].tick
    for t in ts:
        t.cancel()
    assert s.buckets <= 1 and len(s._ticks) == 3000  # the ticks are stale, not yet dropped
    s.call_at(base + 10.0, print).cancel()  # a new bucket: the heap of stale ticks is compacted
    assert len(s._ticks) <= 2 * s.buckets + 1025
    assert s.next_tick() is None or s.next_tick() in s._buckets


def test_an_earlier_timer_restarts_the_hub_timer(own: OwnClock) -> None:
    s = own.scheduler
    late = own.after(30.0)
    starts = s.timer_starts
    with pytest.raises(RequestTimeout):
        run_with_timeout(lambda: gevent.sleep(5), 0.005, clock=own)
    assert s.timer_starts > starts
    assert late.active
    late.cancel()


# --- arm() and Interrupt ---------------------------------------------------------------------
def test_an_expired_timer_interrupts_its_own_greenlet_only(own: OwnClock) -> None:
    caught: list[Any] = []

    def victim() -> None:
        t = own.after(0.005)
        try:
            Event().wait(timeout=5)
        except Interrupt as i:
            caught.append((i.timer is t, i.deadline is t, t.fired, t.active))

    def bystander() -> None:
        gevent.sleep(0.02)
        caught.append("bystander finished")

    gevent.joinall([gevent.spawn(victim), gevent.spawn(bystander)], timeout=5)
    assert caught == [(True, True, True, False), "bystander finished"]


def test_the_interrupt_is_not_an_exception(own: OwnClock) -> None:
    swallowed = []

    def user_code() -> None:
        try:
            gevent.sleep(5)
        except Exception:  # a user's broad handler must not swallow our interrupt
            swallowed.append(True)

    with pytest.raises(RequestTimeout):
        run_with_timeout(user_code, 0.005, clock=own)
    assert swallowed == []
    assert issubclass(Interrupt, gevent.Timeout) and not issubclass(Interrupt, Exception)


def test_many_concurrent_timers_expire_in_order(own: OwnClock) -> None:
    order: list[Timer] = []
    armed: list[Timer] = []
    n = 300

    def worker(i: int) -> None:
        t = own.after(0.002 + (n - i) * 0.0001)  # spawned first, expires last
        armed.append(t)
        try:
            gevent.sleep(5)
        except Interrupt as e:
            assert e.timer is t
            order.append(t)

    gevent.joinall([gevent.spawn(worker, i) for i in range(n)], timeout=10, raise_error=True)
    assert len(order) == n
    # Delivered by millisecond tick, and within one tick in the order armed.
    expected = sorted(armed, key=lambda t: (t.tick, armed.index(t)))
    assert order == expected


def test_half_cancelled_half_expired(own: OwnClock) -> None:
    outcome: dict[int, str] = {}

    def worker(i: int) -> None:
        t = own.after(0.01)
        try:
            if i % 2:
                t.cancel()
            gevent.sleep(0.03)
            outcome[i] = "ran"
        except Interrupt:
            outcome[i] = "interrupted"

    gevent.joinall([gevent.spawn(worker, i) for i in range(100)], timeout=5)
    assert outcome == {i: "ran" if i % 2 else "interrupted" for i in range(100)}


def test_nested_arms_each_layer_catches_only_its_own(own: OwnClock) -> None:
    """Two arms in one greenlet: the inner one fires first, is caught inside; the outer one then fires outside."""
    log: list[str] = []
    outer = own.after(0.02)
    try:
        inner = own.after(0.005)
        try:
            gevent.sleep(5)
        except Interrupt as i:
            assert i.timer is inner and i.timer is not outer
            log.append("inner")
        finally:
            inner.cancel()
        assert outer.active
        gevent.sleep(5)
    except Interrupt as i:
        assert i.timer is outer
        log.append("outer")
    finally:
        outer.cancel()
    assert log == ["inner", "outer"]


def test_nested_inner_expires_first(own: OwnClock) -> None:
    def inner() -> None:
        gevent.sleep(5)

    def outer() -> str:
        with pytest.raises(RequestTimeout, match="inner"):
            run_with_timeout(inner, 0.005, clock=own, what="inner")
        return "outer continues"

    assert run_with_timeout(outer, 5.0, clock=own, what="outer") == "outer continues"


def test_nested_outer_expires_first_and_passes_through_the_inner_layer(own: OwnClock) -> None:
    seen = []

    def inner() -> None:
        try:
            gevent.sleep(5)
        except BaseException as e:
            seen.append(type(e).__name__)
            raise

    def outer() -> None:
        run_with_timeout(inner, 5.0, clock=own, what="inner")  # the inner limit is 5 s, the outer one fires

    with pytest.raises(RequestTimeout, match="outer timed out") as info:
        run_with_timeout(outer, 0.005, clock=own, what="outer")
    assert seen == ["Interrupt"] and info.value.phase == "call"


def test_two_timers_of_one_call_expiring_together_deliver_once(own: OwnClock) -> None:
    # Both expire before the hub runs again, so one hub tick finds both due.
    # The outer one (armed first) is delivered; unwinding cancels the inner
    # one, which must then not hit the code that runs afterwards.
    after: list[str] = []

    def block_the_hub_then_wait() -> None:
        time.sleep(0.02)  # no yield: both timers pass meanwhile
        gevent.sleep(5)

    def run() -> None:
        try:
            run_with_timeout(
                lambda: run_with_timeout(block_the_hub_then_wait, 0.005, clock=own, what="inner"),
                0.005,
                clock=own,
                what="outer",
            )
        except RequestTimeout as e:
            after.append(str(e))
        gevent.sleep(0.02)  # a stale inner interrupt would land here
        after.append("slept in peace")

    g = gevent.spawn(run)
    g.join(timeout=5)
    assert g.successful(), g.exception
    assert after == ["outer timed out after 0.005s", "slept in peace"]


def test_an_overall_deadline_limit_becomes_deadline_exceeded(own: OwnClock) -> None:
    with deadline(0.005), pytest.raises(DeadlineExceeded) as info:
        run_with_timeout(lambda: gevent.sleep(5), 30.0, clock=own)
    assert info.value.phase == "call"


def test_a_dead_greenlet_is_not_thrown_into(own: OwnClock) -> None:
    s = own.scheduler
    leaked: list[Timer] = []
    g = gevent.spawn(lambda: leaked.append(own.after(0.005)))  # arms and exits without cancelling
    g.join()
    gevent.sleep(0.03)
    assert leaked[0].fired and not leaked[0].active
    assert s.fired == 1


def test_repr_and_properties(own: OwnClock) -> None:
    t = arm(own, 1000.0)
    assert repr(t) == "<Timer at 1000.000 active>" and "armed=1" in repr(own.scheduler)
    i = Interrupt(t)
    assert str(i) == "timer at 1000.000 expired" and repr(i) == "<Interrupt <Timer at 1000.000 active>>"
    assert i.timer is t and i.deadline is t
    t.cancel()
    assert not t.active and not t.fired and repr(t) == "<Timer at 1000.000 cancelled>"


# --- the hub's scheduler ------------------------------------------------------------------------
def test_the_system_clock_arms_on_the_hub_scheduler() -> None:
    s = hub_scheduler()
    before = s.armed
    t = arm(SYSTEM_CLOCK, SYSTEM_CLOCK.now() + 30.0)
    assert s.armed == before + 1 and t.active
    t.cancel()
    assert s.armed == before
    with pytest.raises(RequestTimeout):
        run_with_timeout(lambda: gevent.sleep(5), 0.005)
    assert s.armed == before


def test_one_scheduler_per_hub_and_threads_get_their_own() -> None:
    mine = hub_scheduler()
    assert hub_scheduler() is mine
    other: list[Any] = []

    def in_thread() -> None:
        s = hub_scheduler()
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


# --- a FakeClock drives arm() --------------------------------------------------------------------
def test_fake_clock_autojumps_to_an_armed_timer() -> None:
    clock = FakeClock()
    t = arm(clock, 30.0)
    started = time.monotonic()
    with pytest.raises(Interrupt) as info:
        Event().wait()  # every greenlet waits: time jumps to the timer
    assert info.value.timer is t and t.fired
    assert clock.now() == 30.0 and clock.armed == 0
    assert time.monotonic() - started < 5  # no real 30 s


def test_fake_clock_arms_of_several_greenlets_share_one_timeline() -> None:
    clock = FakeClock()
    log: list[tuple[str, float]] = []

    def worker(name: str, seconds: float) -> None:
        t = arm(clock, clock.now() + seconds)
        try:
            Event().wait()
        except Interrupt as i:
            assert i.timer is t
            log.append((name, clock.now()))

    gevent.joinall([gevent.spawn(worker, "b", 2.0), gevent.spawn(worker, "a", 1.0)], timeout=5, raise_error=True)
    assert log == [("a", 1.0), ("b", 2.0)] and clock.now() == 2.0


def test_fake_clock_without_autojump_fires_only_on_advance() -> None:
    clock = FakeClock(autojump=False)
    caught: list[float] = []

    def guarded() -> None:
        t = arm(clock, 5.0)
        try:
            Event().wait()
        except Interrupt as i:
            assert i.timer is t
            caught.append(clock.now())

    g = gevent.spawn(guarded)
    gevent.sleep(0.01)  # real time passes; the clock does not move
    assert caught == [] and clock.armed == 1
    clock.advance(4.0)
    gevent.sleep(0)
    assert caught == []
    clock.advance(1.0)
    g.join(timeout=5)
    assert caught == [5.0] and clock.armed == 0


def test_fake_clock_drives_run_with_timeout() -> None:
    clock = FakeClock(start=100.0)
    with pytest.raises(RequestTimeout, match="timed out after 30.000s") as info:
        run_with_timeout(lambda: Event().wait(), 30.0, clock=clock)
    assert clock.now() == 130.0 and info.value.phase == "call" and clock.armed == 0
    assert run_with_timeout(lambda: clock.sleep(29.0), 30.0, clock=clock) is None  # 1 s to spare
    assert clock.now() == 159.0 and clock.armed == 0


def test_fake_clock_a_timer_cancelled_before_the_hub_runs_is_not_delivered() -> None:
    """The real scheduler's rule holds for a FakeClock too: cancel() after the time passed, before the hub ran, wins.

    A guarded call that spends its time without yielding (here ``advance``)
    ends and cancels its timer before the hub runs: nothing may be thrown
    into the code after it.
    """
    clock = FakeClock(autojump=False)
    t = arm(clock, 1.0)
    clock.advance(2.0)  # the guarded work spends its time without yielding
    t.cancel()  # the work is over
    for _ in range(3):
        gevent.sleep(0)  # a stale Interrupt would land here
    assert not t.active
