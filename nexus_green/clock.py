"""Clocks (layer L0): the one place nexus_green reads time or sleeps.

Every time-dependent object (heartbeat, pool expiry, backoff, rate limiter,
breaker window) takes a :class:`Clock`, so tests can swap in a
:class:`FakeClock` and run exactly and fast.

``SystemClock.sleep`` is ``gevent.sleep``: a clock that slept with
``time.sleep`` would freeze the hub in an application that has not
monkey-patched, and the library must behave the same patched or not. This is
the one gevent import L0 allows (see docs/design.md).

A clock also schedules: ``call_at(when, fn, arg)`` runs ``fn(arg)`` in the
hub at time ``when`` of that clock and returns a cancellable
:class:`~nexus_green.timers.Timer`. Every timeout of the library is one of
these timers, so a :class:`FakeClock` drives request and connect timeouts,
reconnect backoff and heartbeats without a real sleep.

Example::

    >>> clock = FakeClock()
    >>> clock.sleep(2.5)          # autojump: time jumps once every greenlet waits
    >>> clock.now()
    2.5
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import Any, Optional, Protocol, runtime_checkable

import gevent
from gevent.hub import Waiter, get_hub

from .timers import FIRED, Timer, hub_scheduler, run_timer

__all__ = ["Clock", "SystemClock", "FakeClock", "SYSTEM_CLOCK"]


@runtime_checkable
class Clock(Protocol):
    """What nexus_green needs from a clock.

    ``now()`` is monotonic seconds (for durations and deadlines), ``wall()``
    is Unix time (for timestamps in reports), ``sleep()`` yields to other
    greenlets, ``call_at(when, fn, arg)`` runs ``fn(arg)`` in the hub at
    ``when`` (a time of this clock) and returns a cancellable Timer.
    """

    def now(self) -> float: ...

    def wall(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...

    def call_at(self, when: float, fn: Callable[[Any], Any], arg: Any = None) -> Timer: ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time`` and ``gevent.sleep``.

    Example::

        >>> c = SystemClock()
        >>> t0 = c.now(); c.sleep(0); c.now() >= t0
        True
    """

    __slots__ = ()

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        gevent.sleep(max(0.0, seconds))

    def call_at(self, when: float, fn: Callable[[Any], Any], arg: Any = None) -> Timer:
        """Run ``fn(arg)`` in the hub at monotonic time ``when``, on this thread's hub scheduler."""
        return hub_scheduler().call_at(when, fn, arg)

    def __repr__(self) -> str:
        return "<SystemClock>"


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """A controllable clock for tests (modelled on trio's ``MockClock``).

    Its timers (``call_at``, and every :meth:`sleep`) fire only when its time
    reaches them. With ``autojump=True`` (the default) time jumps to the
    earliest timer as soon as every greenlet is waiting (the hub has nothing
    else to run: an idle watcher), like trio's ``autojump_threshold=0``: a
    request timeout of 30 s, a backoff of 10 s or a heartbeat every 15 s then
    take microseconds of real time, and still happen in the right order
    relative to real I/O on loopback. With ``autojump=False`` time moves only
    when a test calls :meth:`advance`.

    Autojump suits peers in the same process (loopback I/O completes before
    the hub goes idle); a peer in another process may not have answered when
    time jumps.

    Example::

        >>> clock = FakeClock(start=100.0)
        >>> clock.advance(5)
        >>> clock.now(), clock.wall()
        (105.0, 1000000105.0)
    """

    def __init__(self, start: float = 0.0, *, autojump: bool = True, wall_offset: float = 1_000_000_000.0) -> None:
        self._now = float(start)
        self._wall_offset = wall_offset
        self.autojump = autojump
        self.sleeps: list[float] = []
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._armed = 0
        self._idle: Any = None
        self._sleeping: dict[Timer, None] = {}

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    # ------------------------------------------------------------------ timers
    def call_at(self, when: float, fn: Callable[[Any], Any], arg: Any = None) -> Timer:
        """Run ``fn(arg)`` in the hub once this clock reaches ``when``."""
        t = Timer(self, float(when), fn, arg)
        heapq.heappush(self._heap, (t.when, next(self._seq), t))
        self._armed += 1
        if t.when <= self._now:
            self._fire_due()
        elif self.autojump:
            self._watch_idle(True)
        return t

    def _cancel(self, t: Timer) -> None:
        self._armed -= 1
        self._sleeping.pop(t, None)
        if not self._armed:
            self._heap.clear()
            self._watch_idle(False)
        elif len(self._heap) > 2 * self._armed + 64:
            self._heap = [e for e in self._heap if e[2]._owner is self]
            heapq.heapify(self._heap)

    @property
    def armed(self) -> int:
        """Timers armed on this clock and not yet fired or cancelled."""
        return self._armed

    def next_timer(self) -> Optional[float]:
        """The time of the earliest armed timer, or None."""
        heap = self._heap
        while heap and heap[0][2]._owner is not self:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def _fire_due(self) -> None:
        heap = self._heap
        loop = get_hub().loop
        while heap and heap[0][0] <= self._now:
            t = heapq.heappop(heap)[2]
            if t._owner is self:
                # Timer functions run in the hub (they switch or throw into
                # greenlets); the timer stays armed until then, so a cancel()
                # before the hub runs it still wins, as on the real scheduler.
                loop.run_callback(self._run_due, t)

    def _run_due(self, t: Timer) -> None:
        if t._owner is not self:
            return  # cancelled after its time came, before the hub ran it
        t._owner = FIRED
        self._armed -= 1
        self._sleeping.pop(t, None)
        if not self._armed:
            self._watch_idle(False)
        run_timer(t)

    def _watch_idle(self, on: bool) -> None:
        if on:
            if self._idle is None:
                self._idle = get_hub().loop.idle()
                self._idle.start(self._on_idle)
        elif self._idle is not None:
            self._idle.stop()
            self._idle.close()
            self._idle = None

    def _on_idle(self) -> None:
        # Every greenlet waits and no I/O is ready: jump to the earliest timer.
        when = self.next_timer()
        if when is None:
            self._watch_idle(False)
            return
        if when > self._now:
            self._now = when
        self._fire_due()

    def advance(self, seconds: float) -> None:
        """Move time forward and fire every timer whose time has come."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards by {seconds}")
        self._now += seconds
        self._fire_due()

    def sleep(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.sleeps.append(seconds)
        if seconds == 0:
            gevent.sleep(0)
            return
        waiter = Waiter()
        t = self.call_at(self._now + seconds, waiter.switch, None)
        self._sleeping[t] = None
        try:
            waiter.get()
        finally:
            t.cancel()

    @property
    def sleepers(self) -> int:
        """How many greenlets are blocked in :meth:`sleep`."""
        return len(self._sleeping)

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now} autojump={self.autojump} timers={self._armed} sleepers={self.sleepers}>"
