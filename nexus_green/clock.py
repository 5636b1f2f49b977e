"""Clocks (layer L0): the one place nexus_green reads time or sleeps.

Every time-dependent object (heartbeat, pool expiry, backoff, rate limiter,
breaker window) takes a :class:`Clock`, so tests can swap in a
:class:`FakeClock` and run exactly and fast.

``SystemClock.sleep`` is ``gevent.sleep``: a clock that slept with
``time.sleep`` would freeze the hub in an application that has not
monkey-patched, and the library must behave the same patched or not. This is
the one gevent import L0 allows (see DESIGN.md).

Example::

    >>> clock = FakeClock()
    >>> clock.sleep(2.5)          # autojump: returns at once, time moves on
    >>> clock.now()
    2.5
"""

from __future__ import annotations

import heapq
import itertools
import time
from typing import Protocol, runtime_checkable

import gevent
from gevent.event import Event

__all__ = ["Clock", "SystemClock", "FakeClock", "SYSTEM_CLOCK"]


@runtime_checkable
class Clock(Protocol):
    """What nexus_green needs from a clock.

    ``now()`` is monotonic seconds (for durations and deadlines), ``wall()``
    is Unix time (for timestamps in reports), ``sleep()`` yields to other
    greenlets.
    """

    def now(self) -> float: ...

    def wall(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


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

    def __repr__(self) -> str:
        return "<SystemClock>"


SYSTEM_CLOCK = SystemClock()


class FakeClock:
    """A controllable clock for tests (modelled on trio's ``MockClock``).

    With ``autojump=True`` (the default) ``sleep(s)`` moves time forward by
    ``s`` and returns after a cooperative yield: right for code driven by one
    greenlet. With ``autojump=False`` a sleeper blocks until :meth:`advance`
    moves time past its wake-up point: right for tests that drive several
    greenlets step by step.

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
        self._sleepers: list[tuple[float, int, Event]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose time has come."""
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards by {seconds}")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            heapq.heappop(self._sleepers)[2].set()

    def sleep(self, seconds: float) -> None:
        seconds = max(0.0, float(seconds))
        self.sleeps.append(seconds)
        if self.autojump:
            self.advance(seconds)
            gevent.sleep(0)
            return
        ev = Event()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), ev))
        if seconds == 0:
            self.advance(0)
        ev.wait()

    @property
    def sleepers(self) -> int:
        """How many greenlets are blocked in :meth:`sleep` (``autojump=False``)."""
        return sum(1 for _, _, ev in self._sleepers if not ev.is_set())

    def __repr__(self) -> str:
        return f"<FakeClock now={self._now} autojump={self.autojump} sleepers={self.sleepers}>"
