"""ConnectionTracker: per-connection figures built from the event stream, queryable by id.

This module owns the per-connection view: endpoint, lifecycle state, age,
connect time and phases, requests, failures, bytes and frames each way, last
error, last heartbeat RTT, reconnects. It subscribes to the ``connect.*``,
``connection.*``, ``request.*``, ``io.*``, ``heartbeat.*``, ``reconnect.*``
and ``protocol.error`` events of :mod:`nexus_green.events`; the connection
never calls it.

Memory is bounded: at most ``max_tracked`` live connections (the rest are
counted in :attr:`ConnectionTracker.untracked`) and the last ``closed_kept``
closed ones. Per-event work is a dict lookup and a few attribute updates.

Example::

    >>> from nexus_green.clock import FakeClock
    >>> from nexus_green.events import EventBus
    >>> bus, clock = EventBus(), FakeClock()
    >>> tracker = ConnectionTracker(clock=clock)
    >>> tracker.attach(bus)
    >>> bus.emit("connect.started", conn_id="c1", endpoint="tcp://127.0.0.1:7600")
    >>> bus.emit("connect.complete", conn_id="c1", endpoint="tcp://127.0.0.1:7600", duration=0.002, phases={"tcp": 0.002})
    >>> bus.emit("io.stats", conn_id="c1", completed=1, latencies=[0.001], bytes_sent=30, bytes_received=40)
    >>> clock.advance(5)
    >>> info = tracker.get("c1")
    >>> info.state, info.requests, info.age
    ('connected', 1, 5.0)
    >>> tracker.close()
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from ..clock import SYSTEM_CLOCK, Clock
from ..connection.connection import live_connections
from ..errors import ConfigurationError
from ..events import Event, EventBus

__all__ = ["ConnectionInfo", "ConnectionTracker", "error_name"]


def error_name(error: object) -> str:
    """A short, bounded label for an error attribute: its public class name.

    Internal classes (the timer machinery's ``Interrupt``, private ``_``
    classes) are named by their first public base: an Interrupt is a
    ``Timeout``.

    Example::

        >>> error_name(TimeoutError("x")), error_name("ConnectionRefused"), error_name(None)
        ('TimeoutError', 'ConnectionRefused', 'none')
        >>> from nexus_green.timers import Interrupt, Timer
        >>> error_name(Interrupt(Timer(None, 1.0, print, None)))
        'Timeout'
    """
    if error is None:
        return "none"
    if isinstance(error, BaseException):
        return _public_name(type(error))
    return str(error)[:64]


_INTERNAL_MODULES = frozenset({"nexus_green.timers", "nexus_green.deadlines", "nexus_green.greenlets"})


def _public_name(cls: type) -> str:
    for klass in cls.__mro__:
        if klass.__module__ not in _INTERNAL_MODULES and not klass.__name__.startswith("_"):
            return klass.__name__
    return cls.__name__  # pragma: no cover - BaseException is public


def _error_text(error: object) -> Optional[str]:
    if error is None:
        return None
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"[:200]
    return str(error)[:200]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionInfo:
    """What the tracker knows about one connection (times in seconds).

    Example::

        >>> ConnectionInfo(conn_id="c1", endpoint="tcp://h:1", state="connected", age=1.0).requests
        0
    """

    conn_id: str
    endpoint: str
    state: str
    age: float
    connect_time: Optional[float] = None
    phases: Mapping[str, float] = field(default_factory=dict)
    requests: int = 0
    failures: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    frames_sent: int = 0
    frames_received: int = 0
    last_error: Optional[str] = None
    heartbeat_rtt: Optional[float] = None
    heartbeat_timeouts: int = 0
    reconnects: int = 0
    closed: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict."""
        d = asdict(self)
        d["phases"] = dict(self.phases)
        return d


class _Record:
    __slots__ = (
        "key",
        "conn_id",
        "endpoint",
        "state",
        "created",
        "ended",
        "connect_time",
        "phases",
        "requests",
        "failures",
        "bytes_sent",
        "bytes_received",
        "frames_sent",
        "frames_received",
        "last_error",
        "heartbeat_rtt",
        "heartbeat_timeouts",
        "reconnects",
    )

    def __init__(self, key: Any, endpoint: str, now: float) -> None:
        self.key = key
        self.conn_id = str(key)
        self.endpoint = endpoint
        self.state = "idle"
        self.created = now
        self.ended: Optional[float] = None
        self.connect_time: Optional[float] = None
        self.phases: Optional[dict[str, float]] = None
        self.requests = 0
        self.failures = 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self.frames_sent = 0
        self.frames_received = 0
        self.last_error: Optional[str] = None
        self.heartbeat_rtt: Optional[float] = None
        self.heartbeat_timeouts = 0
        self.reconnects = 0

    def info(self, now: float) -> ConnectionInfo:
        end = self.ended if self.ended is not None else now
        return ConnectionInfo(
            conn_id=self.conn_id,
            endpoint=self.endpoint,
            state=self.state,
            age=end - self.created,
            connect_time=self.connect_time,
            phases=dict(self.phases or {}),
            requests=self.requests,
            failures=self.failures,
            bytes_sent=self.bytes_sent,
            bytes_received=self.bytes_received,
            frames_sent=self.frames_sent,
            frames_received=self.frames_received,
            last_error=self.last_error,
            heartbeat_rtt=self.heartbeat_rtt,
            heartbeat_timeouts=self.heartbeat_timeouts,
            reconnects=self.reconnects,
            closed=self.ended is not None,
        )


class ConnectionTracker:
    """Per-connection figures from the event stream.

    Options: ``max_tracked`` 10000 live connections; ``closed_kept`` 100
    closed connections remembered for inspection; ``clock`` for ages.

    Example::

        >>> from nexus_green.events import EventBus
        >>> bus = EventBus(); t = ConnectionTracker(); t.attach(bus)
        >>> bus.emit("connection.state", conn_id="c9", endpoint="tcp://h:1", old="idle", new="connecting")
        >>> [c.state for c in t.connections()]
        ['connecting']
        >>> bus.emit("connection.closed", conn_id="c9", endpoint="tcp://h:1", age=0.5, requests=0, error=None)
        >>> t.active, t.get("c9").closed
        (0, True)
        >>> t.close()
    """

    def __init__(self, *, clock: Clock = SYSTEM_CLOCK, max_tracked: int = 10_000, closed_kept: int = 100) -> None:
        if max_tracked < 1:
            raise ConfigurationError(f"max_tracked must be at least 1, got {max_tracked}")
        if closed_kept < 0:
            raise ConfigurationError(f"closed_kept must not be negative, got {closed_kept}")
        self.clock = clock
        self.max_tracked = max_tracked
        self._live: dict[Any, _Record] = {}
        self._closed: deque[_Record] = deque(maxlen=closed_kept) if closed_kept else deque(maxlen=0)
        self.untracked = 0
        self._bus: Optional[EventBus] = None
        self._unsubscribe: list[Callable[[], None]] = []
        self._lifecycle: dict[str, Callable[[_Record, Mapping[str, Any]], None]] = {
            "connect.started": self._started,
            "connect.complete": self._complete,
            "connect.failed": self._failed,
            "connection.state": self._state,
            "connection.closed": self._closed_event,
            "heartbeat.rtt": self._rtt,
            "heartbeat.timeout": self._hb_timeout,
            "reconnect.succeeded": self._reconnected,
            "protocol.error": self._error_only,
        }

    # ------------------------------------------------------------------ wiring
    def attach(self, bus: EventBus, *, hot: bool = True) -> None:
        """Subscribe to ``bus``; :meth:`close` unsubscribes.

        Queries first ask the live connections on ``bus`` for their traffic
        since their last ``io.stats``, so the figures are exact to that moment.

        ``hot=False`` leaves out ``io.stats``: the PerformanceMonitor forwards
        it from its own handler, so each event costs one listener call, not two.
        """
        self._bus = bus
        self._unsubscribe.append(bus.subscribe(self._on_request_failed, prefix="request.failed"))
        if hot:
            self._unsubscribe.append(bus.subscribe(self._on_io_stats, prefix="io.stats"))
        for prefix in ("connect.started", "connect.complete", "connect.failed", "connection.", "heartbeat."):
            self._unsubscribe.append(bus.subscribe(self._on_lifecycle, prefix=prefix))
        self._unsubscribe.append(bus.subscribe(self._on_lifecycle, prefix="reconnect.succeeded"))
        self._unsubscribe.append(bus.subscribe(self._on_lifecycle, prefix="protocol.error"))

    def close(self) -> None:
        """Stop listening (idempotent); the figures stay readable."""
        for off in self._unsubscribe:
            off()
        self._unsubscribe.clear()
        self._bus = None

    def _take_in(self) -> None:
        if self._bus is not None:
            for conn in live_connections(self._bus):
                conn.flush_stats()

    # ------------------------------------------------------------------ hot path
    def _record(self, attrs: Mapping[str, Any]) -> Optional[_Record]:
        conn_id = attrs.get("conn_id")
        rec = self._live.get(conn_id)
        if rec is None:
            if conn_id is None:
                return None
            if len(self._live) >= self.max_tracked:
                self.untracked += 1
                return None
            rec = self._live[conn_id] = _Record(conn_id, str(attrs.get("endpoint", "")), self.clock.now())
        return rec

    def _on_request_failed(self, event: Event) -> None:
        rec = self._record(event.attrs)
        if rec is not None:
            rec.requests += 1
            rec.failures += 1
            rec.last_error = _error_text(event.attrs.get("error"))

    def _on_io_stats(self, event: Event) -> None:
        a = event.attrs
        rec = self._live.get(a.get("conn_id")) or self._record(a)
        if rec is not None:
            rec.requests += a.get("completed", 0)
            rec.bytes_sent += a.get("bytes_sent", 0)
            rec.frames_sent += a.get("frames_sent", 0)
            rec.bytes_received += a.get("bytes_received", 0)
            rec.frames_received += a.get("frames_received", 0)

    # ------------------------------------------------------------------ lifecycle
    def _on_lifecycle(self, event: Event) -> None:
        handler = self._lifecycle.get(event.name)
        if handler is None:
            return
        a = event.attrs
        if event.name == "connection.closed" or (event.name == "connection.state" and a.get("new") == "closed"):
            if a.get("conn_id") not in self._live:
                # Already retired (state change and close event both arrive): just note the error.
                for old in reversed(self._closed):
                    if old.key == a.get("conn_id"):
                        if a.get("error") is not None:
                            old.last_error = _error_text(a["error"])
                        break
                return
        rec = self._record(a)
        if rec is not None:
            handler(rec, event.attrs)

    def _started(self, rec: _Record, a: Mapping[str, Any]) -> None:
        rec.state = "connecting"
        if a.get("endpoint"):
            rec.endpoint = str(a["endpoint"])

    def _complete(self, rec: _Record, a: Mapping[str, Any]) -> None:
        rec.state = "connected"
        rec.connect_time = a.get("duration")
        phases = a.get("phases")
        rec.phases = dict(phases) if phases else None

    def _failed(self, rec: _Record, a: Mapping[str, Any]) -> None:
        rec.last_error = _error_text(a.get("error"))

    def _state(self, rec: _Record, a: Mapping[str, Any]) -> None:
        rec.state = str(a.get("new", rec.state))
        if rec.state == "closed":
            self._retire(rec)

    def _closed_event(self, rec: _Record, a: Mapping[str, Any]) -> None:
        rec.state = "closed"
        if a.get("error") is not None:
            rec.last_error = _error_text(a["error"])
        self._retire(rec)

    def _retire(self, rec: _Record) -> None:
        if self._live.pop(rec.key, None) is not None:
            rec.ended = self.clock.now()
            self._closed.append(rec)

    def _rtt(self, rec: _Record, a: Mapping[str, Any]) -> None:
        rec.heartbeat_rtt = a.get("rtt")

    def _hb_timeout(self, rec: _Record, a: Mapping[str, Any]) -> None:
        rec.heartbeat_timeouts += 1

    def _reconnected(self, rec: _Record, a: Mapping[str, Any]) -> None:
        rec.reconnects += 1

    def _error_only(self, rec: _Record, a: Mapping[str, Any]) -> None:
        rec.last_error = _error_text(a.get("error"))

    # ------------------------------------------------------------------ queries
    def get(self, conn_id: Any) -> Optional[ConnectionInfo]:
        """Figures of a live or recently closed connection, or None."""
        self._take_in()
        now = self.clock.now()
        rec = self._live.get(conn_id)
        if rec is None:
            rec = self._live.get(str(conn_id))
        if rec is not None:
            return rec.info(now)
        for old in reversed(self._closed):
            if old.conn_id == str(conn_id):
                return old.info(now)
        return None

    def connections(self, *, include_closed: bool = False) -> list[ConnectionInfo]:
        """Live connections (oldest first), then the kept closed ones when asked."""
        self._take_in()
        now = self.clock.now()
        out = [r.info(now) for r in self._live.values()]
        if include_closed:
            out += [r.info(now) for r in self._closed]
        return out

    @property
    def tracked(self) -> int:
        """Live connections being tracked (any state but closed)."""
        return len(self._live)

    @property
    def active(self) -> int:
        """Live connections in the ``connected`` state."""
        return sum(1 for r in self._live.values() if r.state == "connected")

    def max_heartbeat_rtt(self) -> Optional[float]:
        """The largest last-known heartbeat RTT among live connections, or None."""
        rtts = [r.heartbeat_rtt for r in self._live.values() if r.heartbeat_rtt is not None]
        return max(rtts) if rtts else None

    def __repr__(self) -> str:
        return f"<ConnectionTracker live={len(self._live)} closed_kept={len(self._closed)} untracked={self.untracked}>"
