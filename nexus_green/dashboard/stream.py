"""RealtimeStream: one producer, a replay ring, and a bounded queue per watcher.

This module owns how view models reach the watchers, whatever carries them
(SSE, WebSocket or polling, in :mod:`nexus_green.dashboard.server`):

* One producer greenlet builds a view model every ``interval`` seconds (1 to
  60, changeable while running) and at once when something urgent happens (a
  breaker changed state: :meth:`MetricsAggregator.on_change`). Each build is
  one ``tick`` event with an increasing ``id`` (the view's ``seq``).
* The last ``replay`` events stay in a ring buffer. A watcher that comes back
  with the id of the last event it saw (SSE's ``Last-Event-ID``) gets the
  events it missed, so its charts have no gap; one that comes back too late
  for the ring, or new, gets one ``snapshot`` event (the view model with its
  chart series) instead.
* Every watcher has its own queue of at most ``queue_size`` events. The
  producer only appends to queues: it never writes to a socket and never
  waits. A watcher whose queue is full is too slow to follow: it is dropped
  (its queue emptied, its transport told to close the connection through the
  ``abort`` hook), and the others never notice.

Memory is bounded by ``replay`` events plus ``queue_size`` events per
watcher.

Example::

    >>> from nexus_green.events import EventBus
    >>> from nexus_green.monitoring import PerformanceMonitor
    >>> from nexus_green.dashboard.aggregator import MetricsAggregator
    >>> mon = PerformanceMonitor(EventBus()); agg = MetricsAggregator(mon)
    >>> stream = RealtimeStream(agg, interval=1.0, queue_size=2)
    >>> first = stream.publish(); watcher = stream.subscribe()
    >>> [e.name for e in watcher.pending()], stream.publish().id
    (['snapshot'], 2)
    >>> for _ in range(3): _ = stream.publish()
    >>> watcher.dropped, watcher.reason
    (True, 'too slow: 3 events waiting (queue of 2)')
    >>> late = stream.subscribe(last_event_id=2)   # came back after event 2: events 3 to 5 are replayed
    >>> [(e.id, e.name) for e in late.pending()]
    [(3, 'tick'), (4, 'tick'), (5, 'tick')]
    >>> stream.close(); agg.close(); mon.close()
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from typing import Any, NamedTuple, Optional

import gevent
from gevent.event import Event as GEvent
from gevent.lock import Semaphore

from ..errors import ConfigurationError, UsageError
from ..greenlets import spawn
from .aggregator import MetricsAggregator

__all__ = ["RealtimeStream", "Subscriber", "StreamEvent", "StreamClosed", "MIN_INTERVAL", "MAX_INTERVAL"]

log = logging.getLogger("nexus_green.dashboard")

MIN_INTERVAL = 1.0
MAX_INTERVAL = 60.0
# An urgent push waits this long for more urgent news, so a burst of changes is one event.
_COALESCE = 0.01


class StreamEvent(NamedTuple):
    """One event: ``id`` (increasing), ``name`` (``tick`` or ``snapshot``) and ``data`` (JSON text, one line)."""

    id: int
    name: str
    data: str

    def sse(self) -> bytes:
        """The event in Server-Sent Events format.

        Example::

            >>> StreamEvent(7, "tick", '{"seq": 7}').sse()
            b'id: 7\\nevent: tick\\ndata: {"seq": 7}\\n\\n'
        """
        return f"id: {self.id}\nevent: {self.name}\ndata: {self.data}\n\n".encode()

    def message(self) -> str:
        """The event as one JSON text (WebSocket frames and polling answers).

        Example::

            >>> StreamEvent(7, "tick", '{"seq": 7}').message()
            '{"id": 7, "event": "tick", "data": {"seq": 7}}'
        """
        return f'{{"id": {self.id}, "event": "{self.name}", "data": {self.data}}}'


class StreamClosed(Exception):
    """The watcher was closed or dropped; ``str()`` says why."""


def check_interval(seconds: Any) -> float:
    """``seconds`` as a push interval, or ConfigurationError when it is not a number from 1 to 60.

    Example::

        >>> check_interval("5"), check_interval(1)
        (5.0, 1.0)
        >>> check_interval(0.5)
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: push interval must be from 1 to 60 seconds, got 0.5
    """
    try:
        value = float(seconds)
    except (TypeError, ValueError):
        raise ConfigurationError(f"push interval must be a number of seconds from 1 to 60, got {seconds!r}") from None
    if not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise ConfigurationError(f"push interval must be from 1 to 60 seconds, got {seconds!r}")
    return value


class Subscriber:
    """One watcher's queue: the producer :meth:`offer` s events, the watcher's transport takes them with :meth:`next`.

    ``abort`` (settable) is called once when the watcher is dropped, to close
    its connection from the outside (a writer stuck on a full socket wakes up).
    """

    def __init__(self, stream: RealtimeStream, limit: int, initial: list[StreamEvent]) -> None:
        self._stream = stream
        self.limit = limit
        self.queue: deque[StreamEvent] = deque(initial)
        self._replay = len(initial)  # events at the front that do not count against the limit
        self._wake = GEvent()
        self.closed = False
        self.dropped = False
        self.reason = ""
        self.delivered = 0
        self.abort: Optional[Callable[[], None]] = None

    def offer(self, event: StreamEvent) -> bool:
        """Queue ``event``; a full queue drops the watcher instead (never waits). True if queued."""
        if self.closed:
            return False
        if len(self.queue) - self._replay >= self.limit:
            self.drop(f"too slow: {len(self.queue) - self._replay + 1} events waiting (queue of {self.limit})")
            return False
        self.queue.append(event)
        self._wake.set()
        return True

    def pending(self) -> list[StreamEvent]:
        """Take every queued event now, without waiting."""
        out = list(self.queue)
        self.queue.clear()
        self._replay = 0
        self.delivered += len(out)
        return out

    def next(self, timeout: Optional[float]) -> Optional[StreamEvent]:
        """The next event, waiting at most ``timeout`` seconds (None: no event came); StreamClosed once closed."""
        while True:
            if self.closed:
                raise StreamClosed(self.reason or "closed")
            if self.queue:
                self.delivered += 1
                self._replay = max(0, self._replay - 1)
                return self.queue.popleft()
            self._wake.clear()
            if not self._wake.wait(timeout):
                return None

    def drop(self, reason: str) -> None:
        """Drop a watcher that cannot keep up: empty its queue, close it and abort its connection."""
        if self.closed:
            return
        self.dropped = True
        self._stream.dropped += 1
        log.info("dashboard watcher dropped: %s", reason)
        self.end(reason)

    def end(self, reason: str) -> None:
        """Close the watcher and its connection (the dashboard stops, or the watcher was dropped)."""
        self.reason = self.reason or reason
        self.queue.clear()
        self.close(reason)
        abort, self.abort = self.abort, None
        if abort is not None:
            try:
                abort()
            except OSError:  # already gone
                pass

    def close(self, reason: str = "closed") -> None:
        """Stop watching (idempotent): the transport's next :meth:`next` raises StreamClosed."""
        if not self.closed:
            self.closed = True
            self.reason = self.reason or reason
            self._stream._remove(self)
        self._wake.set()

    def __repr__(self) -> str:
        state = "dropped" if self.dropped else ("closed" if self.closed else "open")
        return f"<Subscriber {state} queued={len(self.queue)}/{self.limit} delivered={self.delivered}>"


class RealtimeStream:
    """The producer, the replay ring and the watchers (see the module docstring).

    ``interval`` 1-60 s between ticks; ``replay`` events kept for
    ``Last-Event-ID``; ``queue_size`` events a watcher may lag before it is
    dropped. :meth:`start` runs the producer greenlet; :meth:`publish` makes
    one event by hand.

    Example::

        >>> from nexus_green.events import EventBus
        >>> from nexus_green.monitoring import PerformanceMonitor
        >>> mon = PerformanceMonitor(EventBus()); agg = MetricsAggregator(mon)
        >>> stream = RealtimeStream(agg, interval=60)
        >>> stream.interval = 5; stream.interval
        5.0
        >>> stream.interval = 61
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: push interval must be from 1 to 60 seconds, got 61
        >>> stream.close(); agg.close(); mon.close()
    """

    def __init__(
        self,
        aggregator: MetricsAggregator,
        *,
        interval: float = 1.0,
        replay: int = 300,
        queue_size: int = 32,
    ) -> None:
        if replay < 1:
            raise ConfigurationError(f"replay must be at least 1 event, got {replay}")
        if queue_size < 1:
            raise ConfigurationError(f"queue_size must be at least 1 event, got {queue_size}")
        self.aggregator = aggregator
        self._interval = check_interval(interval)
        self.queue_size = queue_size
        self.ring: deque[StreamEvent] = deque(maxlen=replay)
        self.latest: Optional[StreamEvent] = None
        self._latest_view: Optional[dict[str, Any]] = None
        self._subs: list[Subscriber] = []
        self._wake = GEvent()
        self._urgent = False
        self._greenlet: Optional[gevent.Greenlet] = None
        self._closed = False
        self.dropped = 0
        self.published = 0
        self._off_change = aggregator.on_change(self._on_change)
        # A build yields to the hub on long connection lists: one build at a time keeps ids in order.
        self._building = Semaphore()

    # ------------------------------------------------------------------ settings
    @property
    def interval(self) -> float:
        """Seconds between ticks (1-60); setting it takes effect at once."""
        return self._interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        self._interval = check_interval(seconds)
        self._wake.set()

    @property
    def watchers(self) -> int:
        """Watchers connected now."""
        return len(self._subs)

    # ------------------------------------------------------------------ producing
    def publish(self) -> StreamEvent:
        """Build one view model, keep it in the ring and offer it to every watcher (never waits)."""
        with self._building:
            view = self.aggregator.build()
            view["interval"] = self._interval
            view["watchers"] = len(self._subs)
            event = StreamEvent(view["seq"], "tick", json.dumps(view, separators=(",", ":")))
            self.ring.append(event)
            self.latest, self._latest_view = event, view
        self.published += 1
        for sub in list(self._subs):
            sub.offer(event)
        return event

    def _on_change(self, reason: str) -> None:
        self._urgent = True
        self._wake.set()

    def poke(self) -> None:
        """Publish now instead of at the next interval (from the producer greenlet)."""
        self._on_change("poke")

    def start(self) -> RealtimeStream:
        """Run the producer greenlet (idempotent)."""
        if self._closed:
            raise UsageError("RealtimeStream was closed; create a new one")
        if self._greenlet is None:
            self._greenlet = spawn(self._run, name="dashboard-stream")
        return self

    @property
    def running(self) -> bool:
        """True while the producer greenlet runs."""
        return self._greenlet is not None and not self._greenlet.dead

    def _run(self) -> None:
        hub_now = gevent.get_hub().loop.now
        while True:
            try:
                self.publish()
            except Exception:  # a failing build must not end the stream: say it, try again next tick
                log.exception("dashboard: building the view model failed")
            due = hub_now() + self._interval
            while True:
                self._wake.clear()
                remaining = due - hub_now()
                if self._urgent:
                    self._urgent = False
                    gevent.sleep(_COALESCE)
                    break
                if remaining <= 0:
                    break
                if self._wake.wait(remaining):
                    due = min(due, hub_now() + self._interval)  # a shorter interval applies now

    # ------------------------------------------------------------------ watching
    def subscribe(self, last_event_id: Optional[int] = None) -> Subscriber:
        """A new watcher; ``last_event_id`` (the last id it saw) replays what it missed, else a snapshot first."""
        if self._closed:
            raise UsageError("RealtimeStream was closed")
        if self.latest is None:
            self.publish()
        missed = self.since(last_event_id) if last_event_id is not None else None
        if missed is None:
            missed = [self.snapshot_event()]
        sub = Subscriber(self, self.queue_size, missed)
        self._subs.append(sub)
        return sub

    def since(self, last_event_id: int) -> Optional[list[StreamEvent]]:
        """Events after ``last_event_id`` from the ring, or None when the ring no longer covers that gap."""
        latest = self.latest
        if latest is None or last_event_id > latest.id or not self.ring:
            return None  # an id from the future: another server (or a restart) gave it
        if last_event_id < self.ring[0].id - 1:
            return None
        return [e for e in self.ring if e.id > last_event_id]

    def snapshot_event(self) -> StreamEvent:
        """The latest view model with its chart series, as a ``snapshot`` event (publishes one if none yet)."""
        if self.latest is None:
            self.publish()
        assert self.latest is not None and self._latest_view is not None
        full = self.aggregator.full(self._latest_view)
        return StreamEvent(self.latest.id, "snapshot", json.dumps(full, separators=(",", ":")))

    def _remove(self, sub: Subscriber) -> None:
        if sub in self._subs:
            self._subs.remove(sub)

    def close(self) -> None:
        """Stop the producer and drop every watcher (idempotent)."""
        self._closed = True
        self._off_change()
        g, self._greenlet = self._greenlet, None
        if g is not None:
            g.kill(block=True, timeout=5)
        for sub in list(self._subs):
            sub.end("the dashboard stopped")

    def __repr__(self) -> str:
        return (
            f"<RealtimeStream interval={self._interval:g}s watchers={len(self._subs)} ring={len(self.ring)}"
            f"/{self.ring.maxlen} dropped={self.dropped} running={self.running}>"
        )
