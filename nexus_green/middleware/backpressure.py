"""Backpressure: bounds on requests in flight, with high and low watermarks (layer L4).

A :class:`BackpressureGate` counts requests in flight. When the count reaches
the high watermark the gate *pauses*: new callers block (bounded by
``max_wait`` and by the deadline in force) or are refused at once with
:class:`~nexus_green.errors.Overloaded`, by configuration. It resumes only
when the count has drained down to the low watermark, so admission does not
flap around a single threshold.

:class:`BackpressureMiddleware` holds one gate for the whole client and one
per connection (keyed by ``request.context["conn_id"]`` when the caller
pinned a connection, else by ``request.endpoint``). Gates can also be used
directly, e.g. by a connection (``with gate.slot(): ...``).

Events on the configured bus (default :data:`nexus_green.events.default_bus`):

* ``backpressure.high`` [gate, in_flight, high] -- the gate paused.
* ``backpressure.low`` [gate, in_flight, low] -- the gate drained and resumed.
* ``backpressure.waited`` [gate, waited] -- a blocked caller got in after ``waited`` s.
* ``backpressure.rejected`` [gate, in_flight, waited, reason] -- a caller was
  refused; ``reason`` is ``"overloaded"`` (raise mode) or ``"timeout"``.

Example::

    >>> gate = BackpressureGate(Watermarks(high=2, low=1), on_overload="raise")
    >>> gate.acquire(); gate.acquire()
    >>> gate.paused
    True
    >>> gate.acquire()
    Traceback (most recent call last):
    ...
    nexus_green.errors.Overloaded: backpressure gate 'client' paused: 2 in flight (high watermark 2, resumes at 1)
    >>> gate.release(); gate.paused
    False
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Optional, Union

from gevent.event import Event

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import effective_timeout
from ..errors import ConfigurationError, Overloaded, UsageError
from ..events import EventBus, default_bus
from ..pipeline import ORDER_BACKPRESSURE, Handler
from ..protocol.messages import Request, Response

__all__ = ["Watermarks", "BackpressureStats", "BackpressureGate", "BackpressureMiddleware", "connection_key"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Watermarks:
    """Pause at ``high`` requests in flight, resume at ``low`` (default: 80% of high).

    Example::

        >>> Watermarks(high=10).low
        8
    """

    high: int = 1000
    low: Optional[int] = None

    def __post_init__(self) -> None:
        if not isinstance(self.high, int) or self.high < 1:
            raise ConfigurationError(f"high watermark must be an int >= 1, got {self.high!r}")
        if self.low is None:
            object.__setattr__(self, "low", (self.high * 4) // 5)
        elif not isinstance(self.low, int) or not 0 <= self.low < self.high:
            raise ConfigurationError(f"low watermark must be an int in [0, high={self.high}), got {self.low!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BackpressureStats:
    """A gate's figures at one moment (for monitoring).

    Example::

        >>> BackpressureGate(Watermarks(high=4)).stats().in_flight
        0
    """

    name: str
    in_flight: int
    peak: int
    high: int
    low: int
    paused: bool
    admitted: int
    waited: int
    rejected: int
    wait_time: float
    waiting: int


class BackpressureGate:
    """One in-flight bound with hysteresis (see the module docstring).

    ``on_overload`` is ``"block"`` (wait up to ``max_wait`` seconds, then
    Overloaded) or ``"raise"`` (Overloaded at once).

    Example::

        >>> gate = BackpressureGate(Watermarks(high=3))
        >>> with gate.slot():
        ...     gate.in_flight
        1
        >>> gate.in_flight
        0
    """

    def __init__(
        self,
        watermarks: Watermarks = Watermarks(),
        *,
        name: str = "client",
        on_overload: str = "block",
        max_wait: float = 1.0,
        bus: Optional[EventBus] = None,
    ) -> None:
        if on_overload not in ("block", "raise"):
            raise ConfigurationError(f"on_overload must be 'block' or 'raise', got {on_overload!r}")
        if not max_wait >= 0:
            raise ConfigurationError(f"max_wait must be >= 0, got {max_wait!r}")
        self.watermarks = watermarks
        self.high = watermarks.high
        self.low: int = watermarks.low  # type: ignore[assignment]  # set by __post_init__
        self.name = name
        self.on_overload = on_overload
        self.max_wait = float(max_wait)
        self.bus = bus if bus is not None else default_bus
        # Waits are real gevent waits (an Event), so they are measured on the real clock.
        self.clock: Clock = SYSTEM_CLOCK
        self.in_flight = 0
        self.peak = 0
        self.paused = False
        self.admitted = 0
        self.waited = 0
        self.rejected = 0
        self.wait_time = 0.0
        self.waiting = 0
        self._resume = Event()
        self._resume.set()

    def _admit(self) -> None:
        self.in_flight += 1
        self.admitted += 1
        if self.in_flight > self.peak:
            self.peak = self.in_flight
        if self.in_flight >= self.high and not self.paused:
            self.paused = True
            self._resume.clear()
            if self.bus.wants("backpressure.high"):
                self.bus.emit("backpressure.high", gate=self.name, in_flight=self.in_flight, high=self.high)

    def _reject(self, reason: str, waited: float) -> Overloaded:
        self.rejected += 1
        if self.bus.wants("backpressure.rejected"):
            self.bus.emit(
                "backpressure.rejected", gate=self.name, in_flight=self.in_flight, waited=waited, reason=reason
            )
        how = f" after waiting {waited:.3f}s" if reason == "timeout" else ""
        return Overloaded(
            f"backpressure gate {self.name!r} paused{how}: {self.in_flight} in flight"
            f" (high watermark {self.high}, resumes at {self.low})"
        )

    def acquire(self) -> None:
        """Take a slot, blocking (bounded) or raising Overloaded while the gate is paused."""
        if not self.paused:
            self._admit()
            return
        if self.on_overload == "raise":
            raise self._reject("overloaded", 0.0)
        timeout = max(0.0, effective_timeout(self.max_wait, clock=self.clock) or 0.0)
        start = self.clock.now()
        waited = 0.0
        self.waiting += 1
        try:
            while self.paused:
                left = timeout - waited
                if left <= 0:
                    raise self._reject("timeout", waited)
                self._resume.wait(left)
                waited = self.clock.now() - start
        finally:
            self.waiting -= 1
        self._admit()
        self.waited += 1
        self.wait_time += waited
        if self.bus.wants("backpressure.waited"):
            self.bus.emit("backpressure.waited", gate=self.name, waited=waited)

    def release(self) -> None:
        """Give a slot back; resumes the gate once in-flight drains to the low watermark."""
        if self.in_flight <= 0:
            raise UsageError(f"backpressure gate {self.name!r} released more often than acquired")
        self.in_flight -= 1
        if self.paused and self.in_flight <= self.low:
            self.paused = False
            self._resume.set()
            if self.bus.wants("backpressure.low"):
                self.bus.emit("backpressure.low", gate=self.name, in_flight=self.in_flight, low=self.low)

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """``acquire()`` on entry, ``release()`` on exit (also on error)."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def stats(self) -> BackpressureStats:
        """The gate's figures now."""
        return BackpressureStats(
            name=self.name,
            in_flight=self.in_flight,
            peak=self.peak,
            high=self.high,
            low=self.low,
            paused=self.paused,
            admitted=self.admitted,
            waited=self.waited,
            rejected=self.rejected,
            wait_time=self.wait_time,
            waiting=self.waiting,
        )

    def __repr__(self) -> str:
        state = "paused" if self.paused else "open"
        return f"<BackpressureGate {self.name} {state} in_flight={self.in_flight} high={self.high} low={self.low}>"


def connection_key(request: Request) -> Hashable:
    """The per-connection gate key: ``context["conn_id"]`` if set, else the endpoint.

    Example::

        >>> connection_key(Request(endpoint="a:1")), connection_key(Request(context={"conn_id": "c7"}))
        ('a:1', 'c7')
    """
    conn_id = request.context.get("conn_id")
    return conn_id if conn_id else request.endpoint


class BackpressureMiddleware:
    """Client-wide and per-connection in-flight bounds in the pipeline (order 400).

    ``client`` and ``per_connection`` take :class:`Watermarks` (None turns
    that bound off); a ready :class:`BackpressureGate` may be given for
    ``client``. Defaults: client high 1000 / low 800, per connection
    high 100 / low 80. Idle per-connection gates are forgotten once more than
    ``max_connections`` are known.

    Example::

        >>> mw = BackpressureMiddleware(client=Watermarks(high=5), per_connection=None)
        >>> mw(Request(), lambda r: Response(body=str(mw.client.in_flight).encode())).body
        b'1'
        >>> mw.client.in_flight
        0
    """

    order = ORDER_BACKPRESSURE

    def __init__(
        self,
        client: Union[Watermarks, BackpressureGate, None] = Watermarks(high=1000, low=800),
        per_connection: Optional[Watermarks] = Watermarks(high=100, low=80),
        *,
        connection_key: Callable[[Request], Hashable] = connection_key,
        on_overload: str = "block",
        max_wait: float = 1.0,
        bus: Optional[EventBus] = None,
        max_connections: int = 10_000,
        name: str = "backpressure",
    ) -> None:
        self.name = name
        self._opts = {"on_overload": on_overload, "max_wait": max_wait, "bus": bus}
        if isinstance(client, Watermarks):
            client = BackpressureGate(client, name="client", on_overload=on_overload, max_wait=max_wait, bus=bus)
        self.client: Optional[BackpressureGate] = client
        # The bus its gates emit on (pipeline.bus_of): a Client refuses one that is not its own.
        self.bus: EventBus = client.bus if client is not None else bus if bus is not None else default_bus
        self.per_connection = per_connection
        if per_connection is not None:
            BackpressureGate(per_connection, on_overload=on_overload, max_wait=max_wait)  # validate options now
        self._key = connection_key
        self.max_connections = max_connections
        self.connections: dict[Hashable, BackpressureGate] = {}

    def gate_for(self, key: Hashable) -> BackpressureGate:
        """The per-connection gate for ``key`` (created on first use)."""
        gate = self.connections.get(key)
        if gate is None:
            assert self.per_connection is not None
            if len(self.connections) >= self.max_connections:
                for k in [k for k, g in self.connections.items() if g.in_flight == 0 and not g.waiting]:
                    del self.connections[k]
            gate = BackpressureGate(self.per_connection, name=f"connection:{key}", **self._opts)  # type: ignore[arg-type]
            self.connections[key] = gate
        return gate

    def __call__(self, request: Request, call_next: Handler) -> Response:
        client = self.client
        if client is not None:
            client.acquire()
        try:
            if self.per_connection is None:
                return call_next(request)
            gate = self.gate_for(self._key(request))
            gate.acquire()
            try:
                return call_next(request)
            finally:
                gate.release()
        finally:
            if client is not None:
                client.release()

    def stats(self) -> dict[str, BackpressureStats]:
        """Figures of every gate, by gate name.

        Example::

            >>> sorted(BackpressureMiddleware().stats())
            ['client']
        """
        out = {g.name: g.stats() for g in self.connections.values()}
        if self.client is not None:
            out[self.client.name] = self.client.stats()
        return out

    def __repr__(self) -> str:
        return f"<BackpressureMiddleware client={self.client!r} connections={len(self.connections)}>"
