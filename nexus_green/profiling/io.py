"""I/O figures of the transport while a profile runs: reads, writes, bytes and frames per read and write.

:class:`IOProfiler` reads two public sources and changes nothing in the
connection:

* the traffic counters every connection keeps
  (:attr:`Connection.bytes_sent <nexus_green.connection.Connection.bytes_sent>`,
  ``frames_sent``, ``bytes_received``, ``frames_received``), as differences
  between :meth:`~IOProfiler.start` and :meth:`~IOProfiler.stop`, over the
  connections of the bus (:func:`~nexus_green.connection.live_connections`);
* the ``io.sent`` / ``io.received`` events (one per write batch handed to the
  kernel and per read), to which it subscribes while it runs: they give the
  number of writes and reads. Subscribing makes the connections emit them,
  a few microseconds per batch, only while profiling.

Bytes per write and frames per write tell how well writes are coalesced;
bytes per read how full the reads are (buffer efficiency). The transport does
not count system calls or copies: a write here is one batch (a large batch
may take several ``send`` calls), and copies are not counted at all.

Example::

    >>> from nexus_green import Client
    >>> from nexus_green.events import EventBus
    >>> from nexus_green.testing import EmbeddedServer
    >>> bus = EventBus()
    >>> with EmbeddedServer() as server, Client(server.url, bus=bus) as client:
    ...     _ = client.connect()
    ...     with IOProfiler(bus) as io:
    ...         for _ in range(10):
    ...             _ = client.request(b"x" * 100, fid=1, timeout=5)
    >>> f = io.figures()
    >>> f.writes >= 1, f.frames_sent, f.bytes_sent, f.bytes_per_write >= 124
    (True, 10, 1240, True)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Optional

from ..connection.connection import live_connections
from ..events import Event, EventBus, default_bus

__all__ = ["IOFigures", "IOProfiler"]


@dataclass(frozen=True, slots=True, kw_only=True)
class IOFigures:
    """Transport traffic over a profile: counts of writes/reads (batches), bytes and frames, and the ratios.

    Example::

        >>> f = IOFigures(writes=4, reads=2, bytes_sent=400, bytes_received=400, frames_sent=8, frames_received=8, seconds=1.0)
        >>> f.bytes_per_write, f.frames_per_write, f.bytes_per_read, f.frames_per_read
        (100.0, 2.0, 200.0, 4.0)
    """

    writes: int
    reads: int
    bytes_sent: int
    bytes_received: int
    frames_sent: int
    frames_received: int
    seconds: float

    @property
    def bytes_per_write(self) -> float:
        """Average bytes handed to the kernel per write batch."""
        return self.bytes_sent / self.writes if self.writes else 0.0

    @property
    def frames_per_write(self) -> float:
        """Average frames per write batch (write coalescing)."""
        return self.frames_sent / self.writes if self.writes else 0.0

    @property
    def bytes_per_read(self) -> float:
        """Average bytes per read (how full reads are)."""
        return self.bytes_received / self.reads if self.reads else 0.0

    @property
    def frames_per_read(self) -> float:
        """Average frames decoded per read."""
        return self.frames_received / self.reads if self.reads else 0.0

    def as_dict(self) -> dict[str, Any]:
        """The figures and the ratios, as a plain dict (for JSON)."""
        d = asdict(self)
        for name in ("bytes_per_write", "frames_per_write", "bytes_per_read", "frames_per_read"):
            d[name] = round(getattr(self, name), 2)
        return d


class IOProfiler:
    """Count the transport's reads and writes on ``bus`` and difference its connections' counters.

    ``connections`` returns the connections to read counters from (default:
    every live connection on ``bus``). Use as a context manager, or
    :meth:`start` / :meth:`stop`; :meth:`figures` may be read at any time.
    """

    def __init__(self, bus: EventBus = default_bus, *, connections: Optional[Callable[[], list[Any]]] = None) -> None:
        self.bus = bus
        self._connections = connections or (lambda: live_connections(bus))
        self._off: list[Callable[[], None]] = []
        self._base: dict[int, tuple[int, int, int, int]] = {}
        self._conns: dict[int, Any] = {}
        self._events = [0, 0, 0, 0, 0, 0]  # writes, bytes, frames sent; reads, bytes, frames received
        self._t0 = 0.0
        self._seconds = 0.0

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return bool(self._off)

    def start(self) -> IOProfiler:
        """Subscribe to the I/O events and remember the connections' counters; returns ``self``."""
        if self._off:
            return self
        for conn in self._connections():
            self._watch(conn)
        self._off = [
            self.bus.subscribe(self._on_sent, prefix="io.sent"),
            self.bus.subscribe(self._on_received, prefix="io.received"),
        ]
        self._t0 = time.perf_counter()
        return self

    def stop(self) -> None:
        """Unsubscribe (idempotent)."""
        if not self._off:
            return
        for off in self._off:
            off()
        self._off = []
        self._seconds += time.perf_counter() - self._t0
        self._refresh()

    def __enter__(self) -> IOProfiler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _watch(self, conn: Any) -> None:
        key = id(conn)
        if key not in self._base:
            self._base[key] = _counts(conn)
            self._conns[key] = conn

    def _refresh(self) -> None:
        for conn in self._connections():
            if id(conn) not in self._base:
                self._base[id(conn)] = (0, 0, 0, 0)  # opened while profiling: all of its traffic counts
                self._conns[id(conn)] = conn

    def _on_sent(self, event: Event) -> None:
        e = self._events
        e[0] += 1
        e[1] += event.attrs.get("nbytes", 0)
        e[2] += event.attrs.get("frames", 0)

    def _on_received(self, event: Event) -> None:
        e = self._events
        e[3] += 1
        e[4] += event.attrs.get("nbytes", 0)
        e[5] += event.attrs.get("frames", 0)

    def figures(self) -> IOFigures:
        """The figures so far: counter differences where they cover more than the events (connections that closed keep only events)."""
        if self._off:
            self._refresh()
        totals = [0, 0, 0, 0]
        for key, conn in self._conns.items():
            now, base = _counts(conn), self._base[key]
            for i in range(4):
                totals[i] += now[i] - base[i]
        e = self._events
        seconds = self._seconds + (time.perf_counter() - self._t0 if self._off else 0.0)
        return IOFigures(
            writes=e[0],
            reads=e[3],
            bytes_sent=max(totals[0], e[1]),
            frames_sent=max(totals[1], e[2]),
            bytes_received=max(totals[2], e[4]),
            frames_received=max(totals[3], e[5]),
            seconds=seconds,
        )

    def __repr__(self) -> str:
        return f"<IOProfiler {'running' if self._off else 'stopped'} writes={self._events[0]} reads={self._events[3]}>"


def _counts(conn: Any) -> tuple[int, int, int, int]:
    return (conn.bytes_sent, conn.frames_sent, conn.bytes_received, conn.frames_received)
