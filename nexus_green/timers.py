"""The one timer scheduler of nexus_green (layer L0).

Every timeout in the library -- a request waiting for its answer, a connect
attempt, a pool checkout, a ``@timeout`` around any call -- is a
:class:`Timer` on the scheduler of its :class:`~nexus_green.clock.Clock`
(``clock.call_at(when, fn, arg)``); request deadlines share one per
connection, armed for the earliest of them (the session's deadline heap).
There is no other timer: the connection's
old millisecond buckets and ``resilience/timerwheel.py`` are gone, and a
:class:`~nexus_green.clock.FakeClock` drives all of them in tests.

:class:`TimerScheduler` is the real-time one: one per hub (that is, per
thread), on ``time.monotonic``. Arming a ``gevent.Timeout`` per call costs a
libev timer start and stop and an allocation even when, as almost always, the
call ends long before its limit (GEVENT_NOTES: a multiplexed prototype fell
from 2x to 1.3x raw sockets that way). The scheduler keeps timers in buckets
keyed by millisecond (a dict of dicts) with a heap of the bucket ticks, and
arms **one** hub timer, for the earliest bucket:

* arming is a dict insert (plus a heap push when its millisecond has no
  bucket yet); cancelling is a dict delete, and a bucket that empties is
  dropped, so the bookkeeping is O(timers armed), never O(rate x timeout);
  the heap of ticks is compacted when cancelled buckets leave it more than
  half stale;
* a timer fires at the first hub timer tick at or after its time, at most
  about 1 ms late, never early; timers fire in order of their millisecond,
  and in the order they were armed within one millisecond;
* ``fn(arg)`` runs in the hub greenlet: it must not block (waking a
  ``Waiter`` or throwing into a greenlet is what it is for);
* a cancelled timer never runs, even when it had expired in the same hub tick
  as another that ran first;
* the hub timer keeps the loop alive only while timers are armed.

:func:`arm` builds the common case on top: a timer that throws an
:class:`Interrupt` into the greenlet that armed it. Code that arms one
catches an Interrupt only when ``interrupt.timer is mine`` and re-raises any
other, so nested limits work and anyone else's ``gevent.Timeout`` passes
through untouched.

Example::

    >>> import gevent
    >>> from nexus_green.clock import SYSTEM_CLOCK
    >>> fired = []
    >>> t = SYSTEM_CLOCK.call_at(SYSTEM_CLOCK.now() + 0.01, fired.append, "ring")
    >>> gevent.sleep(0.05); fired
    ['ring']
    >>> mine = arm(SYSTEM_CLOCK, SYSTEM_CLOCK.now() + 0.01)
    >>> try:
    ...     gevent.sleep(1)
    ... except Interrupt as i:
    ...     print(i.timer is mine)
    True
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable
from typing import Any, Optional

import gevent
from greenlet import getcurrent

__all__ = ["Timer", "TimerScheduler", "Interrupt", "arm", "wait_until", "hub_scheduler", "run_timer", "FIRED"]

_INF_TICK = 1 << 62
_new = object.__new__
_monotonic = time.monotonic
_heappush = heapq.heappush
_heappop = heapq.heappop

#: ``Timer._owner`` once the timer ran (None once cancelled).
_FIRED = FIRED = object()


class Timer:
    """One armed timer: when it fires, ``fn(arg)`` runs in the hub. :meth:`cancel` disarms it.

    Made by ``clock.call_at(...)``; cancelling twice, or after it fired, is
    harmless.

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> clock = FakeClock(autojump=False)
        >>> t = clock.call_at(5.0, print, "five")
        >>> t.active, t.when
        (True, 5.0)
        >>> t.cancel(); t.active
        False
    """

    __slots__ = ("_owner", "tick", "when", "fn", "arg")

    def __init__(self, owner: Any, when: float, fn: Callable[[Any], Any], arg: Any, tick: int = 0) -> None:
        self._owner = owner  # the scheduler while armed; None once cancelled; _FIRED once fired
        self.when = when
        self.tick = tick
        self.fn = fn
        self.arg = arg

    @property
    def active(self) -> bool:
        """True while armed: not cancelled and not yet fired."""
        return self._owner is not None and self._owner is not _FIRED

    @property
    def fired(self) -> bool:
        """True once it expired and its function ran."""
        return self._owner is _FIRED

    def cancel(self) -> None:
        """Disarm; the function never runs afterwards."""
        owner = self._owner
        if owner.__class__ is TimerScheduler:
            # The real clock's case, once per request: its bookkeeping inline.
            self._owner = None
            tick = self.tick
            buckets = owner._buckets
            bucket = buckets.get(tick)
            if bucket is not None and bucket.pop(self, 0) is None:
                owner.armed -= 1
                if not owner.armed:
                    owner._timer.ref = False
                if not bucket and tick != owner._last_tick:
                    del buckets[tick]
            return
        if owner is None or owner is _FIRED:
            return
        self._owner = None
        owner._cancel(self)

    def __repr__(self) -> str:
        state = "fired" if self.fired else "active" if self.active else "cancelled"
        return f"<Timer at {self.when:.3f} {state}>"


class Interrupt(gevent.Timeout):
    """Thrown into a greenlet when a timer made by :func:`arm` expires.

    ``timer`` is the :class:`Timer` that expired: catch an Interrupt only when
    it is your own (``except Interrupt as i: if i.timer is not mine: raise``).
    It is a ``gevent.Timeout``, hence a ``BaseException``: a user's
    ``except Exception`` does not swallow it.

    Example::

        >>> i = Interrupt(Timer(None, 1.5, print, None))
        >>> isinstance(i, BaseException) and not isinstance(i, Exception), str(i)
        (True, 'timer at 1.500 expired')
    """

    def __init__(self, timer: Timer) -> None:
        super().__init__(None)  # no gevent timer of its own
        self.timer = timer

    @property
    def deadline(self) -> Timer:
        """The same as :attr:`timer` (the name resilience code reads)."""
        return self.timer

    def __str__(self) -> str:
        return f"timer at {self.timer.when:.3f} expired"

    def __repr__(self) -> str:
        return f"<Interrupt {self.timer!r}>"


def _throw(glet: Any) -> None:
    """Marker function of the timers :func:`arm` makes (``run_timer`` throws an Interrupt instead)."""
    raise AssertionError("run_timer handles this timer")  # pragma: no cover


def arm(clock: Any, when: float) -> Timer:
    """Arm a timer on ``clock`` that throws an :class:`Interrupt` into the calling greenlet at ``when``.

    ``when`` is a time on ``clock`` (``clock.now() + seconds``). Cancel it
    when the guarded work ends.

    Example::

        >>> from nexus_green.clock import SYSTEM_CLOCK
        >>> t = arm(SYSTEM_CLOCK, SYSTEM_CLOCK.now() + 5); t.active
        True
        >>> t.cancel()
    """
    t: Timer = clock.call_at(when, _throw, getcurrent())
    return t


def wait_until(wait: Callable[[], Any], clock: Any, until: Optional[float]) -> bool:
    """Call the blocking ``wait()`` (an ``Event.wait``, say) until it returns or ``clock`` reaches ``until``.

    True when ``wait()`` returned, False when the time ran out first. ``until``
    None waits without a limit. The limit is a timer on ``clock``, so a
    FakeClock drives it.

    Example::

        >>> from gevent.event import Event
        >>> from nexus_green.clock import FakeClock
        >>> clock = FakeClock()
        >>> wait_until(Event().wait, clock, 30.0), clock.now()
        (False, 30.0)
    """
    if until is None:
        wait()
        return True
    if until <= clock.now():
        return False
    mine = arm(clock, until)
    try:
        wait()
        return True
    except Interrupt as caught:
        if caught.timer is not mine:
            raise
        return False
    finally:
        mine.cancel()


class TimerScheduler:
    """The real-time timers of one hub: millisecond buckets, a heap of bucket ticks, one hub timer.

    Example::

        >>> s = hub_scheduler()
        >>> before = s.armed
        >>> a = s.call_at(_monotonic() + 10, print, "a"); b = s.call_at(_monotonic() + 20, print, "b")
        >>> s.armed - before
        2
        >>> a.cancel(); b.cancel(); s.armed - before
        0
    """

    def __init__(self, hub: Any) -> None:
        self._loop = hub.loop
        self._buckets: dict[int, dict[Timer, None]] = {}
        self._ticks: list[int] = []
        self._timer: Any = self._loop.timer(0.0, ref=False)
        self._timer_tick = _INF_TICK
        # The bucket last armed into: kept even when empty, so that timers armed
        # within one millisecond add to one dict without a lookup or a heap push.
        self._last_tick = -1
        self._last_bucket: dict[Timer, None] = {}
        self.armed = 0
        self.fired = 0
        self.timer_starts = 0

    def call_at(self, when: float, fn: Callable[[Any], Any], arg: Any = None) -> Timer:
        """Run ``fn(arg)`` in the hub at monotonic time ``when`` (unless cancelled first)."""
        tick = int(when * 1000.0) + 1
        # Slots set here rather than through __init__: this runs once per request.
        t = _new(Timer)
        t._owner = self
        t.when = when
        t.tick = tick
        t.fn = fn
        t.arg = arg
        if tick == self._last_tick:
            self._last_bucket[t] = None
        else:
            self._bucket(tick)[t] = None
        if not self.armed:
            self._timer.ref = True
        self.armed += 1
        return t

    def _cancel(self, t: Timer) -> None:
        tick = t.tick
        bucket = self._buckets.get(tick)
        if bucket is not None and bucket.pop(t, 0) is None:
            self.armed -= 1
            if not self.armed:
                self._timer.ref = False
            if not bucket and tick != self._last_tick:
                del self._buckets[tick]

    def _bucket(self, tick: int) -> dict[Timer, None]:
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
        """The millisecond tick of the earliest armed timer, or None."""
        ticks, buckets = self._ticks, self._buckets
        while ticks and ticks[0] not in buckets:
            _heappop(ticks)
        return ticks[0] if ticks else None

    @property
    def buckets(self) -> int:
        """Millisecond buckets held now (bounded by the timers armed, plus one)."""
        return len(self._buckets)

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
        due: list[Timer] = []
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
        for t in due:
            # A function run earlier in this loop may have cancelled this one
            # (an outer limit of the same call): skip it then.
            if t._owner is not self:
                continue
            t._owner = _FIRED
            self.fired += 1
            run_timer(t)

    def __repr__(self) -> str:
        return f"<TimerScheduler armed={self.armed} buckets={len(self._buckets)} fired={self.fired}>"


def run_timer(t: Timer) -> None:
    """Run a due timer's function (in the hub); schedulers call it after marking the timer fired."""
    if t.fn is _throw:
        glet = t.arg
        if not glet.dead:
            glet.throw(Interrupt(t))
        return
    t.fn(t.arg)


#: The hub attribute holding its scheduler.
SCHEDULER_ATTR = "_nexus_green_timers"


def hub_scheduler() -> TimerScheduler:
    """The :class:`TimerScheduler` of the current thread's hub (created on first use).

    Example::

        >>> hub_scheduler() is hub_scheduler()
        True
    """
    hub = gevent.get_hub()
    s: Optional[TimerScheduler] = getattr(hub, SCHEDULER_ATTR, None)
    if s is None:
        s = TimerScheduler(hub)
        setattr(hub, SCHEDULER_ATTR, s)
    return s
