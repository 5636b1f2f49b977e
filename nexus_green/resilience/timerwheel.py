"""Cheap per-call deadlines (layer L4): one hub timer per thread instead of one per call.

Arming a ``gevent.Timeout`` for every call costs a libev/libuv timer start
and stop (and an allocation) even when, as almost always, the call finishes
long before its limit. :class:`DeadlineScheduler` keeps every armed deadline
of one hub in buckets keyed by monotonic millisecond (a dict of dicts) with a
heap of the bucket times, and arms **one** hub timer, for the earliest
bucket. Arming a deadline is a dict insert (plus a heap push when its
millisecond has no bucket yet); cancelling it is a dict delete. Only when a
deadline expires does the hub throw an :class:`Interrupt` into the greenlet
that armed it, exactly as ``gevent.Timeout`` does internally
(``greenlet.throw`` from a hub callback).

* Resolution: a deadline fires at the first hub timer tick at or after it,
  at most about 1 ms late, never early. Deadlines fire in order of their
  millisecond, and in the order they were armed within one millisecond.
* :class:`Interrupt` subclasses ``gevent.Timeout`` (a ``BaseException``: a
  user's ``except Exception`` does not swallow it) and carries the
  :class:`Deadline` it belongs to. The code that armed a deadline catches an
  Interrupt only when ``interrupt.deadline is mine`` and re-raises any other,
  so nested deadlines work and someone else's ``gevent.Timeout`` passes
  through untouched (:func:`nexus_green.resilience.timeouts.run_with_timeout`
  converts its own Interrupt to a NexusError at the boundary).
* A cancelled deadline is never delivered, even when it had already expired in
  the same hub tick as another one that was delivered first.
* The hub timer keeps the loop alive only while deadlines are armed; with none
  armed it may stay scheduled (it is cheaper to let it fire once for nothing
  than to stop and restart it on every call) but is unreferenced, so
  ``gevent.wait()`` does not wait for it.
* One scheduler per hub (that is, per thread), created on first use; it
  works the same whether or not the app has monkey-patched.

Example::

    >>> import gevent
    >>> d = arm(0.01)
    >>> try:
    ...     gevent.sleep(1)
    ... except Interrupt as i:
    ...     print(i.deadline is d, i)
    True deadline of 0.01s expired
    >>> with_deadline = arm(30.0)
    >>> with_deadline.cancel()          # the usual case: two dict operations
    >>> scheduler().armed
    0
"""

from __future__ import annotations

import heapq
import time
from typing import Any, Optional

import gevent
from greenlet import getcurrent

__all__ = ["SCHEDULER_ATTR", "Deadline", "DeadlineScheduler", "Interrupt", "arm", "scheduler"]

_INF_TICK = 1 << 62
_FIRED = object()
_monotonic = time.monotonic
_heappush = heapq.heappush
_heappop = heapq.heappop


class Interrupt(gevent.Timeout):
    """Thrown into a greenlet when one of its deadlines expires.

    ``deadline`` is the :class:`Deadline` that expired: catch an Interrupt
    only when it is your own (``except Interrupt as i: if i.deadline is not
    mine: raise``).

    Example::

        >>> d = Deadline(None, 0, 1.5, getcurrent())
        >>> i = Interrupt(d)
        >>> isinstance(i, BaseException) and not isinstance(i, Exception), i.deadline is d, str(i)
        (True, True, 'deadline of 1.5s expired')
    """

    def __init__(self, deadline: Deadline) -> None:
        super().__init__(None)  # no gevent timer of its own
        self.deadline = deadline
        self.seconds = deadline.seconds

    def __str__(self) -> str:
        return f"deadline of {self.deadline.seconds:g}s expired"

    def __repr__(self) -> str:
        return f"<Interrupt {self.deadline!r}>"


class Deadline:
    """One armed deadline: the greenlet to interrupt, its millisecond tick and its length.

    Made by :func:`arm` / :meth:`DeadlineScheduler.arm`; :meth:`cancel` it when
    the guarded call ends (cancelling twice, or after it fired, is harmless).

    Example::

        >>> d = arm(5.0)
        >>> d.active, d.seconds
        (True, 5.0)
        >>> d.cancel(); d.active
        False
    """

    __slots__ = ("_sched", "tick", "seconds", "glet")

    def __init__(self, sched: Any, tick: int, seconds: float, glet: Any) -> None:
        self._sched = sched  # the scheduler while armed; None once cancelled; _FIRED once fired
        self.tick = tick
        self.seconds = seconds
        self.glet = glet

    @property
    def active(self) -> bool:
        """True while armed: not cancelled and not yet fired."""
        return self._sched.__class__ is DeadlineScheduler

    @property
    def fired(self) -> bool:
        """True once it expired and was delivered (or found its greenlet dead)."""
        return self._sched is _FIRED

    def cancel(self) -> None:
        """Disarm (two dict operations); never delivers afterwards."""
        s = self._sched
        if s.__class__ is not DeadlineScheduler:
            return
        self._sched = None
        tick = self.tick
        bucket = s._buckets.get(tick)
        if bucket is not None and bucket.pop(self, 0) is None:
            s.armed -= 1
            if not s.armed:
                s._timer.ref = False
            if not bucket and tick != s._last_tick:
                del s._buckets[tick]

    def __repr__(self) -> str:
        return f"<Deadline {self.seconds:g}s tick={self.tick} active={self.active} fired={self.fired}>"


class DeadlineScheduler:
    """The deadlines of one hub: millisecond buckets, a heap of bucket ticks, one hub timer.

    Example::

        >>> s = DeadlineScheduler(gevent.get_hub())
        >>> a, b = s.arm(10.0), s.arm(20.0)
        >>> s.armed, s.next_tick() == a.tick
        (2, True)
        >>> a.cancel(); b.cancel(); s.armed
        0
    """

    def __init__(self, hub: Any) -> None:
        self._loop = hub.loop
        self._buckets: dict[int, dict[Deadline, None]] = {}
        self._ticks: list[int] = []
        self._timer: Any = self._loop.timer(0.0, ref=False)
        self._timer_tick = _INF_TICK
        # The bucket last armed into: kept even when empty, so that calls armed
        # within one millisecond add to one dict without a lookup or a heap push.
        self._last_tick = -1
        self._last_bucket: dict[Deadline, None] = {}
        self.armed = 0
        self.fired = 0
        self.timer_starts = 0

    def arm(self, seconds: float, until: Optional[float] = None) -> Deadline:
        """Arm a deadline ``seconds`` from now for the current greenlet.

        ``until`` is ``time.monotonic() + seconds`` when the caller has just read the clock.
        """
        tick = int(((_monotonic() + seconds) if until is None else until) * 1000.0) + 1
        d = Deadline(self, tick, seconds, getcurrent())
        if tick == self._last_tick:
            self._last_bucket[d] = None
        else:
            self._bucket(tick)[d] = None
        if not self.armed:
            self._timer.ref = True
        self.armed += 1
        return d

    def _bucket(self, tick: int) -> dict[Deadline, None]:
        # The bucket of a millisecond other than the last one used.
        buckets = self._buckets
        bucket = buckets.get(tick)
        if bucket is None:
            bucket = buckets[tick] = {}
            ticks = self._ticks
            _heappush(ticks, tick)
            if len(ticks) > 2 * len(buckets) + 1024:
                # Buckets emptied by cancellation leave their tick behind; compact.
                self._ticks = sorted(buckets)
            if tick < self._timer_tick:
                self._start_timer(tick)
        last = self._last_tick
        if last != -1 and last != tick and not self._last_bucket:
            buckets.pop(last, None)  # the previous last bucket, kept while it was current, is empty
        self._last_tick, self._last_bucket = tick, bucket
        return bucket

    def next_tick(self) -> Optional[int]:
        """The millisecond tick of the earliest armed deadline, or None."""
        ticks, buckets = self._ticks, self._buckets
        while ticks and ticks[0] not in buckets:
            _heappop(ticks)
        return ticks[0] if ticks else None

    def _start_timer(self, tick: int) -> None:
        self._timer.stop()
        self._timer.close()
        delay = max(0.0, tick / 1000.0 - _monotonic())
        self._timer = self._loop.timer(delay, ref=self.armed > 0)
        self._timer_tick = tick
        self.timer_starts += 1
        self._timer.start(self._fire, update=True)

    def _fire(self) -> None:
        self._timer_tick = _INF_TICK
        now_tick = int(_monotonic() * 1000.0)
        buckets, ticks = self._buckets, self._ticks
        due: list[Deadline] = []
        while ticks and ticks[0] <= now_tick:
            tick = _heappop(ticks)
            bucket = buckets.pop(tick, None)
            if tick == self._last_tick:
                self._last_tick, self._last_bucket = -1, {}
            if bucket:
                due.extend(bucket)
                self.armed -= len(bucket)
        nxt = self.next_tick()
        if nxt is not None:
            self._start_timer(nxt)
        if not self.armed:
            self._timer.ref = False
        for d in due:
            # A greenlet interrupted earlier in this loop may have cancelled
            # this one (an outer deadline of the same call): skip it then.
            if d._sched is not self:
                continue
            d._sched = _FIRED
            self.fired += 1
            glet = d.glet
            if not glet.dead:
                glet.throw(Interrupt(d))

    def __repr__(self) -> str:
        return f"<DeadlineScheduler armed={self.armed} buckets={len(self._buckets)} fired={self.fired}>"


#: The hub attribute holding its scheduler.
SCHEDULER_ATTR = "_nexus_green_deadlines"


def scheduler() -> DeadlineScheduler:
    """The :class:`DeadlineScheduler` of the current thread's hub (created on first use).

    Example::

        >>> scheduler() is scheduler()
        True
    """
    hub = gevent.get_hub()
    s: Optional[DeadlineScheduler] = getattr(hub, SCHEDULER_ATTR, None)
    if s is None:
        s = DeadlineScheduler(hub)
        setattr(hub, SCHEDULER_ATTR, s)
    return s


def arm(seconds: float) -> Deadline:
    """Arm a deadline ``seconds`` from now for the current greenlet, on its hub's scheduler.

    Example::

        >>> d = arm(1.0); d.active
        True
        >>> d.cancel()
    """
    hub = gevent.get_hub()
    s: Optional[DeadlineScheduler] = getattr(hub, SCHEDULER_ATTR, None)
    if s is None:
        s = DeadlineScheduler(hub)
        setattr(hub, SCHEDULER_ATTR, s)
    return s.arm(seconds)
