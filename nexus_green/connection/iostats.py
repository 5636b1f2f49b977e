"""The traffic counters of one connection and the ``io.stats`` events that report them.

This module owns:

* the counters a connection keeps whether or not anyone monitors: bytes and
  frames sent and received, requests answered (``responses``) and those
  answered with a code other than 200 (``responses_non_ok``). The
  connection's I/O greenlets add to them directly: a few integer additions
  per recv or send batch, exact at any moment;
* which of the costly per-request events anyone wants, cached per bus
  version: ``emit_complete`` (``request.complete``), ``emit_traced``
  (``request.traced``, only for requests that carry a trace context), ``emit_io``
  (``io.sent`` / ``io.received``) and ``emit_stats`` (``io.stats``);
* latency sampling: while someone listens to ``io.stats``, the
  send-to-arrival times of every ``bus.latency_sample_every``-th batch of
  answers are gathered (:meth:`IOStats.sampler`) in a float32 array;
* :meth:`IOStats.flush`: one ``io.stats`` event with the traffic since the
  previous one, measured against a baseline that a wholly new audience
  resets (it hears what happens from its arrival on).

A connection emits ``io.stats`` when asked (``Connection.flush_stats``: the
monitor's tick and flush, and close), or by itself once
:data:`STATS_MAX_LATENCIES` latencies are gathered (16 KB of them).

Example::

    >>> from nexus_green.clock import FakeClock
    >>> from nexus_green.events import EventBus
    >>> bus, stats = EventBus(), IOStats("c1", FakeClock())
    >>> off = bus.subscribe(lambda e: print(e.attrs["completed"], e.attrs["bytes_sent"], list(e.attrs["latencies"])), prefix="io.stats")
    >>> stats.refresh(bus)
    >>> stats.bytes_sent += 27; stats.frames_sent += 1
    >>> record = stats.sampler(bus); record(0.5); stats.responses += 1
    >>> stats.flush(bus)
    1 27 [0.5]
    >>> stats.flush(bus)   # nothing moved since: no event
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:
    from ..clock import Clock
    from ..events import EventBus

__all__ = ["IOStats", "STATS_MAX_LATENCIES"]

STATS_MAX_LATENCIES = 4096


class IOStats:
    """Traffic counters of one connection, the bus flags its hot path reads, and its ``io.stats`` flushing.

    The bus is passed to each method that needs it (the connection's
    ``bus`` attribute may be replaced; the cached flags notice by the bus's
    version).

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> from nexus_green.events import EventBus
        >>> stats = IOStats("c1", FakeClock()); stats.refresh(EventBus())
        >>> stats.counts(), stats.emit_stats, stats.emit_complete
        ((0, 0, 0, 0, 0, 0), False, False)
    """

    __slots__ = (
        "conn_id",
        "clock",
        "bytes_sent",
        "frames_sent",
        "bytes_received",
        "frames_received",
        "responses",
        "responses_non_ok",
        "bus_version",
        "emit_complete",
        "emit_traced",
        "emit_io",
        "emit_stats",
        "_listeners",
        "_latencies",
        "_since",
        "_base",
        "_batches",
    )

    def __init__(self, conn_id: str, clock: Clock) -> None:
        self.conn_id = conn_id
        self.clock = clock
        self.bytes_sent = self.frames_sent = self.bytes_received = self.frames_received = 0
        self.responses = 0  # requests answered (any code)
        self.responses_non_ok = 0  # ... with a code other than 200
        self.bus_version = -1  # the version of the bus the flags below were read from
        self.emit_complete = False
        self.emit_traced = False
        self.emit_io = False
        self.emit_stats = False
        self._listeners: tuple[Any, ...] = ()  # who heard the last io.stats
        # array('f'): a latency is stored in 4 bytes (float32: 7 significant
        # digits, far finer than the sketch's 1 %), not kept alive as a float
        # object: thousands of those scattered through the allocator's pools
        # measurably slowed the whole client. The monitor buckets the array in
        # place (DDSketch.add_many).
        self._latencies: array[float] = array("f")
        self._since = clock.now()
        self._base = self.counts()  # the counters at the last io.stats
        self._batches = 0  # batches to skip before the next sampled one

    def counts(self) -> tuple[int, int, int, int, int, int]:
        """The counters now: ``(bytes_sent, frames_sent, bytes_received, frames_received, responses, responses_non_ok)``.

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> s = IOStats("c1", FakeClock()); s.bytes_received += 24; s.frames_received += 1; s.counts()
            (0, 0, 24, 1, 0, 0)
        """
        return (
            self.bytes_sent,
            self.frames_sent,
            self.bytes_received,
            self.frames_received,
            self.responses,
            self.responses_non_ok,
        )

    @property
    def pending_latencies(self) -> int:
        """Latencies gathered and not yet reported in an ``io.stats`` (none while nobody listens).

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> IOStats("c1", FakeClock()).pending_latencies
            0
        """
        return len(self._latencies)

    def refresh(self, bus: EventBus) -> None:
        """Read again who listens on ``bus`` (after an (un)subscribe, or for another bus).

        A wholly new ``io.stats`` audience (nobody listened, or every earlier
        listener left) hears what happens from now on, not what the counters
        gathered before it came. While any listener stays, the baseline stays
        too: it is owed that traffic (a newcomer may hear up to one tick of
        older traffic; a monitor flushes every connection before it
        subscribes and when it closes, so it neither brings nor leaves any behind).

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> from nexus_green.events import EventBus
            >>> bus, s = EventBus(), IOStats("c1", FakeClock())
            >>> s.responses += 3                        # before anyone listened
            >>> off = bus.subscribe(print, prefix="io.stats"); s.refresh(bus)
            >>> s.emit_stats, s.bus_version == bus.version
            (True, True)
            >>> s.flush(bus)                            # the newcomer is owed nothing yet
        """
        self.bus_version = bus.version
        self.emit_complete = bus.wants("request.complete")
        self.emit_traced = bus.wants("request.traced")
        self.emit_io = bus.wants("io.sent") or bus.wants("io.received")
        listeners = bus.listeners("io.stats")
        if listeners and not any(fn in self._listeners for fn in listeners):
            self._base = self.counts()
            self._since = self.clock.now()
            del self._latencies[:]
            self._batches = 0
        self._listeners = listeners
        self.emit_stats = bool(listeners)

    def sampler(self, bus: EventBus) -> Optional[Callable[[float], None]]:
        """For one batch of answers while ``emit_stats``: where to record its latencies, or None to skip the batch.

        Whole batches are sampled (the first, then every
        ``bus.latency_sample_every``-th), so an unsampled batch costs nothing
        per request; the counters stay exact.

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> from nexus_green.events import EventBus
            >>> bus = EventBus(); bus.latency_sample_every = 2
            >>> s = IOStats("c1", FakeClock())
            >>> [s.sampler(bus) is not None for _ in range(5)]
            [True, False, True, False, True]
        """
        n = self._batches
        record: Optional[Callable[[float], None]] = None
        if n <= 0:
            record = self._latencies.append
            n = bus.latency_sample_every
        self._batches = n - 1
        return record

    def full(self) -> bool:
        """True once :data:`STATS_MAX_LATENCIES` latencies are gathered: time to flush without being asked.

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> IOStats("c1", FakeClock()).full()
            False
        """
        return len(self._latencies) >= STATS_MAX_LATENCIES

    def flush(self, bus: EventBus, now: Optional[float] = None) -> None:
        """Emit one ``io.stats`` on ``bus``: the traffic since the last one (if anyone listens and anything moved).

        ``now`` is the time on the connection's clock (read from it when None).

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> from nexus_green.events import EventBus
            >>> bus, s = EventBus(), IOStats("c1", FakeClock())
            >>> s.bytes_sent += 10
            >>> s.flush(bus)   # nobody listens: no event, and the traffic stays owed to no one
        """
        if bus.version != self.bus_version:
            self.refresh(bus)
        if not self.emit_stats:
            return
        base = self._base
        if (
            self.responses == base[4]
            and self.bytes_received == base[2]
            and self.bytes_sent == base[0]
            and not self._latencies
        ):
            return  # nothing moved (frames move with bytes): readers walk idle connections cheaply
        t = self.clock.now() if now is None else now
        # Copy, then empty in place: the reader may be in the middle of a
        # batch with this array's append bound (a push callback or listener
        # that reads the monitor runs there), and its latencies must land in
        # the array the next io.stats carries.
        lat = self._latencies[:]
        del self._latencies[:]
        counts, since = self.counts(), self._since
        bo, fo, bi, fi, done, non_ok = (c - b for c, b in zip(counts, base, strict=True))
        # The new baseline is in place before any listener runs: a listener
        # that asks again (a tracker query, a monitor read) gets nothing twice.
        self._base, self._since = counts, t
        if done or bi or bo:
            bus.emit(
                "io.stats",
                conn_id=self.conn_id,
                interval=t - since,
                bytes_sent=bo,
                frames_sent=fo,
                bytes_received=bi,
                frames_received=fi,
                completed=done,
                sampled_every=bus.latency_sample_every,
                non_ok=non_ok,
                latencies=lat,
            )

    def __repr__(self) -> str:
        """Example::

        >>> from nexus_green.clock import FakeClock
        >>> IOStats("c1", FakeClock())
        <IOStats c1 sent=0B/0 received=0B/0 responses=0 non_ok=0>
        """
        return (
            f"<IOStats {self.conn_id} sent={self.bytes_sent}B/{self.frames_sent} "
            f"received={self.bytes_received}B/{self.frames_received} "
            f"responses={self.responses} non_ok={self.responses_non_ok}>"
        )
