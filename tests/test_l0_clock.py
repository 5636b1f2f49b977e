"""SystemClock and FakeClock (autojump and advance()-driven), with several greenlets."""

from __future__ import annotations

import time
from collections.abc import Callable

import gevent
import pytest

from nexus_green.clock import SYSTEM_CLOCK, Clock, FakeClock, SystemClock
from nexus_green.greenlets import spawn


def wait_until(check: Callable[[], bool], steps: int = 1000) -> None:
    """Yield to the hub (no real time passes) until ``check()``; bounded."""
    for _ in range(steps):
        if check():
            return
        gevent.sleep(0)
    raise AssertionError("condition not reached")


def test_both_clocks_satisfy_the_protocol() -> None:
    assert isinstance(SYSTEM_CLOCK, Clock) and isinstance(SystemClock(), Clock) and isinstance(FakeClock(), Clock)
    assert repr(SYSTEM_CLOCK) == "<SystemClock>"


def test_system_clock_reads_real_time() -> None:
    before = time.monotonic()
    now = SYSTEM_CLOCK.now()
    assert before <= now <= time.monotonic()
    assert abs(SYSTEM_CLOCK.wall() - time.time()) < 60


@pytest.mark.parametrize("seconds", [0, -5])
def test_system_clock_sleep_yields_to_other_greenlets(seconds: float) -> None:
    ran: list[int] = []
    g = gevent.spawn(ran.append, 1)
    SYSTEM_CLOCK.sleep(seconds)  # negative is clamped to 0, still a cooperative yield
    assert ran == [1]
    g.join(timeout=1)


def test_fake_clock_start_wall_and_repr() -> None:
    c = FakeClock(start=10, wall_offset=500.0)
    assert (c.now(), c.wall()) == (10.0, 510.0)
    assert isinstance(c.now(), float)
    assert repr(c) == "<FakeClock now=10.0 autojump=True timers=0 sleepers=0>"


def test_fake_clock_advance_refuses_going_backwards() -> None:
    c = FakeClock()
    with pytest.raises(ValueError, match="cannot move a clock backwards by -1"):
        c.advance(-1)
    c.advance(0)
    assert c.now() == 0.0


def test_autojump_sleep_moves_time_and_records() -> None:
    c = FakeClock()
    c.sleep(1.5)
    c.sleep(-3)  # clamped to 0
    c.sleep(0.5)
    assert c.now() == 2.0
    assert c.sleeps == [1.5, 0.0, 0.5]


def test_autojump_sleep_is_a_cooperative_yield() -> None:
    c = FakeClock()
    ran: list[int] = []
    g = gevent.spawn(ran.append, 1)
    c.sleep(10)
    assert ran == [1]
    g.join(timeout=1)


def test_autojump_with_several_greenlets() -> None:
    """Time jumps only when every greenlet waits, to the earliest timer: sleepers share one timeline."""
    c = FakeClock()
    log: list[tuple] = []

    def worker(name: str, delay: float) -> None:
        for _ in range(2):
            c.sleep(delay)
            log.append((name, c.now()))

    gs = [spawn(worker, "a", 1.0), spawn(worker, "b", 2.0)]
    gevent.joinall(gs, timeout=5, raise_error=True)
    assert all(g.dead for g in gs)
    assert c.now() == 4.0  # b's second sleep ends last, at 2 + 2
    assert log == [("a", 1.0), ("b", 2.0), ("a", 2.0), ("b", 4.0)]  # ties fire in the order they were armed
    assert sorted(c.sleeps) == [1.0, 1.0, 2.0, 2.0]


def test_advance_driven_wakes_sleepers_in_deadline_order() -> None:
    c = FakeClock(autojump=False)
    woke: list[tuple] = []

    def sleeper(name: str, delay: float) -> None:
        c.sleep(delay)
        woke.append((name, c.now()))

    gs = [spawn(sleeper, "late", 3.0), spawn(sleeper, "early", 1.0), spawn(sleeper, "mid", 2.0)]
    wait_until(lambda: c.sleepers == 3)
    assert woke == [] and c.now() == 0.0
    assert "sleepers=3" in repr(c)

    c.advance(1.5)
    wait_until(lambda: len(woke) == 1)
    assert woke == [("early", 1.5)] and c.sleepers == 2

    c.advance(0.4)  # 1.9: nobody is due
    gevent.sleep(0)
    assert len(woke) == 1 and c.sleepers == 2

    c.advance(10)
    gevent.joinall(gs, timeout=5, raise_error=True)
    assert woke[1:] == [("mid", 11.9), ("late", 11.9)]
    assert c.sleepers == 0


def test_advance_driven_same_wake_time_is_fifo() -> None:
    c = FakeClock(autojump=False)
    woke: list[int] = []

    def sleeper(i: int) -> None:
        c.sleep(1)
        woke.append(i)

    gs = [spawn(sleeper, i) for i in range(5)]
    wait_until(lambda: c.sleepers == 5)
    c.advance(1)
    gevent.joinall(gs, timeout=5, raise_error=True)
    assert woke == [0, 1, 2, 3, 4]


def test_advance_driven_sleep_zero_returns_at_once() -> None:
    c = FakeClock(autojump=False)
    c.sleep(0)
    c.sleep(-1)
    assert c.now() == 0.0 and c.sleepers == 0 and c.sleeps == [0.0, 0.0]


def test_advance_driven_sleep_blocks_without_advance() -> None:
    c = FakeClock(autojump=False)
    g = spawn(c.sleep, 5)
    wait_until(lambda: c.sleepers == 1)
    for _ in range(10):
        gevent.sleep(0)
    assert not g.dead
    c.advance(5)
    g.join(timeout=5)
    assert g.dead and g.successful()


def test_fake_clock_timers_fire_in_order_and_cancel() -> None:
    c = FakeClock(autojump=False)
    fired: list[str] = []
    c.call_at(2.0, fired.append, "two")
    t1 = c.call_at(1.0, fired.append, "one")
    dropped = c.call_at(1.5, fired.append, "cancelled")
    dropped.cancel()
    assert (c.armed, c.next_timer()) == (2, 1.0)
    c.advance(1.0)
    gevent.sleep(0)  # timer functions run in the hub
    assert fired == ["one"] and t1.fired and not dropped.fired
    c.advance(5.0)
    gevent.sleep(0)
    assert fired == ["one", "two"] and c.armed == 0 and c.next_timer() is None


def test_fake_clock_timer_already_due_fires_at_once() -> None:
    c = FakeClock(start=5.0, autojump=False)
    fired: list[int] = []
    c.call_at(1.0, fired.append, 1)
    gevent.sleep(0)
    assert fired == [1]


def test_autojump_does_not_jump_while_real_io_is_ready() -> None:
    """A greenlet kept busy with ready work holds time still; the jump waits for idleness."""
    c = FakeClock()
    fired: list[float] = []
    c.call_at(10.0, lambda _: fired.append(c.now()), None)
    for _ in range(50):
        gevent.sleep(0)  # ready work every iteration: no idle turn
    assert fired == [] and c.now() == 0.0
    gevent.wait(timeout=1)  # now the hub idles: the clock jumps to the timer
    assert fired == [10.0]


def test_fake_clock_cancelled_timers_are_compacted() -> None:
    c = FakeClock(autojump=False)
    keep = c.call_at(1000.0, print, None)
    for i in range(500):
        c.call_at(float(i + 1), print, None).cancel()
    assert c.armed == 1 and len(c._heap) <= 2 * c.armed + 64 + 1
    keep.cancel()
    assert c.armed == 0 and c._heap == []
