"""Outage metrics: every failed call by class and by where it failed, and what the resilience policies did.

This module owns the figures that make an outage visible. A connection reports
``request.failed`` only for requests that reached it; a call that fails
earlier (the link is down, the pool is exhausted, the connect times out, a
breaker refuses it) is reported by the Client as ``client.request.failed``.
:class:`OutageMetrics` takes both:

* ``calls.failed{class, where}`` counts every failed Client call once, by the
  public class of its error (``Timeout``, never an internal ``Interrupt``) and
  by where it failed (:func:`failure_site`).
* A call that failed before reaching a connection also counts in
  ``requests.failed``, ``errors.timeouts`` and ``errors{kind=request}``, so
  ``errors.rate`` sees the outage. One that reached a connection was counted
  there already: the connection's ``request.failed`` and the Client's event
  arrive in the same greenlet, and the second is matched to the first by the
  error (the same object, or one chained from it).
* Resilience: ``breaker.transitions{breaker, to}``, ``breaker.state{breaker}``
  (0 closed, 1 half-open, 2 open), ``breakers.open``, ``retry.attempts``,
  ``retry.gave_up{reason}``, ``fallback.served{level}`` and
  ``rejections{by}`` (breaker, bulkhead, rate_limit, backpressure, pool).

Nothing here runs per successful request.

Example::

    >>> from nexus_green.errors import ConnectTimeout
    >>> from nexus_green.events import EventBus
    >>> from nexus_green.monitoring.monitor import PerformanceMonitor
    >>> bus = EventBus()
    >>> with PerformanceMonitor(bus) as mon:
    ...     bus.emit("client.request.failed", endpoint="tcp://h:1", fid=1, phase="tcp", error=ConnectTimeout(phase="tcp"))
    ...     mon.value("requests.failed"), mon.value("calls.failed", {"class": "ConnectTimeout", "where": "tcp"})
    (1, 1)
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from greenlet import getcurrent

from ..errors import (
    ClientClosed,
    CompressionError,
    ConnectError,
    ConnectionClosed,
    ConnectionLost,
    NexusTimeout,
    PolicyRejection,
    PoolExhausted,
    ProtocolError,
    RemoteError,
    UsageError,
)
from ..events import Event
from .registry import Counter, Gauge
from .tracker import error_name

if TYPE_CHECKING:
    from .monitor import PerformanceMonitor

__all__ = ["OutageMetrics", "failure_site", "BREAKER_STATE_VALUES"]

#: ``breaker.state`` gauge values.
BREAKER_STATE_VALUES = {"closed": 0, "half-open": 1, "open": 2}

_REJECTIONS = {
    "breaker.rejected": "breaker",
    "bulkhead.rejected": "bulkhead",
    "ratelimit.rejected": "rate_limit",
    "backpressure.rejected": "backpressure",
    "pool.exhausted": "pool",
}


def failure_site(error: object, reached: bool = False) -> str:
    """Where a call failed, from its error: a timeout's phase, or the stage its class belongs to.

    ``reached`` says the request had reached a connection. Sites: ``dns``,
    ``tcp``, ``tls``, ``socks5``, ``connect``, ``checkout``, ``write``,
    ``response``, ``decode``, ``call`` (timeouts, by phase); ``connect``
    (connect errors), ``checkout`` (pool exhausted), ``policy`` (other
    rejections), ``link`` (the link was lost), ``protocol``, ``remote`` (the
    server answered an error code), ``client`` (closed, misuse), and
    ``response`` or ``call`` for anything else, by ``reached``.

    Example::

        >>> from nexus_green.errors import RequestTimeout, ConnectionRefused, CircuitOpen
        >>> failure_site(RequestTimeout(phase="checkout")), failure_site(ConnectionRefused()), failure_site(CircuitOpen())
        ('checkout', 'connect', 'policy')
        >>> import gevent
        >>> failure_site(gevent.Timeout(), reached=True), failure_site(KeyError("x"))
        ('response', 'call')
    """
    if isinstance(error, NexusTimeout):
        return error.phase or ("response" if reached else "call")
    if isinstance(error, PoolExhausted):
        return "checkout"
    if isinstance(error, PolicyRejection):
        return "policy"
    if isinstance(error, ConnectError):
        return "connect"
    if isinstance(error, ConnectionLost):
        return "link"
    if isinstance(error, CompressionError):
        return "decode"
    if isinstance(error, ProtocolError):
        return "protocol"
    if isinstance(error, RemoteError):
        return "remote"
    if isinstance(error, (ClientClosed, ConnectionClosed, UsageError)):
        return "client"
    return "response" if reached else "call"


def _chained(error: object, cause: object) -> bool:
    # Is ``cause`` the error itself or in its chain (a pool or a policy may
    # restate the connection's error)? A few links at most.
    seen = 0
    while error is not None and seen < 8:
        if error is cause:
            return True
        error = getattr(error, "__cause__", None) or getattr(error, "__context__", None)
        seen += 1
    return False


class OutageMetrics:
    """Keeps the monitor's failed-call, breaker, retry, fallback and rejection figures (see the module docstring)."""

    def __init__(self, monitor: PerformanceMonitor) -> None:
        self.monitor = monitor
        r = monitor.registry
        r.declare("counter", "calls.failed", unit="calls", help="failed Client calls, by error class and site")
        r.declare("counter", "breaker.transitions", unit="transitions", help="breaker state changes, by new state")
        r.declare("gauge", "breaker.state", unit="state", help="a breaker's state: 0 closed, 1 half-open, 2 open")
        self.breakers_open: Gauge = r.gauge(
            "breakers.open", unit="breakers", help="circuit breakers open now", fn=self._open_breakers
        )
        self.retry_attempts: Counter = r.counter("retry.attempts", unit="attempts", help="retries made")
        r.declare("counter", "retry.gave_up", unit="calls", help="retries wanted but refused, by reason")
        r.declare("counter", "fallback.served", unit="calls", help="answers served by a fallback, by level")
        r.declare("counter", "rejections", unit="calls", help="calls refused by a policy, by who refused")
        self._breakers: dict[str, str] = {}
        # The last error a connection reported, per greenlet: the Client's event for the
        # same call follows in the same greenlet. Weak keys: a greenlet that ends takes it along.
        self._wire: weakref.WeakKeyDictionary[Any, object] = weakref.WeakKeyDictionary()
        self._counters: dict[tuple[str, ...], Counter] = {}
        self._dispatch: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "client.request.failed": self._call_failed,
            "breaker.state": self._breaker_state,
            "retry.attempt": self._retry_attempt,
            "retry.gave_up": self._retry_gave_up,
            "fallback.used": self._fallback_used,
        }

    def subscribe(self) -> list[Callable[[], None]]:
        """Subscribe to the events this module counts; returns the unsubscribers."""
        sub = self.monitor.bus.subscribe
        return [
            sub(self._on_event, prefix="client.request.failed"),
            sub(self._on_event, prefix="breaker."),
            sub(self._on_event, prefix="retry."),
            sub(self._on_event, prefix="fallback.used"),
            sub(self._on_event, prefix="bulkhead.rejected"),
            sub(self._on_event, prefix="ratelimit.rejected"),
            sub(self._on_event, prefix="backpressure.rejected"),
        ]

    def _counter(self, name: str, **tags: str) -> Counter:
        key = (name, *(f"{k}={v}" for k, v in sorted(tags.items())))
        c = self._counters.get(key)
        if c is None:
            c = self.monitor.registry.counter(name, tags)
            if self.monitor.registry.get(name, tags) is c:  # not a detached series past the cap
                self._counters[key] = c
        return c

    def _on_event(self, event: Event) -> None:
        handler = self._dispatch.get(event.name)
        if handler is not None:
            handler(event.attrs)
        by = _REJECTIONS.get(event.name)
        if by is not None:
            self.rejected(by)

    def rejected(self, by: str) -> None:
        """Count one call refused by ``by`` (the pool's refusals arrive through the monitor)."""
        self._counter("rejections", by=by).value += 1

    def wire_failed(self, error: object) -> None:
        """A connection reported a request that reached it as failed (``request.failed``)."""
        self._wire[getcurrent()] = error

    def _call_failed(self, a: Mapping[str, Any]) -> None:
        error = a.get("error")
        wire = self._wire.pop(getcurrent(), None)
        reached = wire is not None and _chained(error, wire)
        site = failure_site(error, reached)
        # Counted already: by the connection (reached), or as an answered request (an error
        # code, a body that did not decode).
        if not reached and site not in ("remote", "decode"):
            self.monitor.count_request_failure(error)
        self._counter("calls.failed", **{"class": error_name(error), "where": site}).value += 1

    def _breaker_state(self, a: Mapping[str, Any]) -> None:
        name, new = str(a.get("breaker", "")), str(a.get("new", ""))
        self._breakers[name] = new
        self._counter("breaker.transitions", breaker=name, to=new).value += 1
        self.monitor.registry.gauge("breaker.state", {"breaker": name}).set(BREAKER_STATE_VALUES.get(new, -1))

    def _open_breakers(self) -> int:
        return sum(1 for state in self._breakers.values() if state == "open")

    def breaker_states(self) -> dict[str, str]:
        """The last known state of every breaker seen on the bus, by name."""
        return dict(self._breakers)

    def _retry_attempt(self, a: Mapping[str, Any]) -> None:
        self.retry_attempts.value += 1

    def _retry_gave_up(self, a: Mapping[str, Any]) -> None:
        self._counter("retry.gave_up", reason=str(a.get("reason", "unknown"))).value += 1

    def _fallback_used(self, a: Mapping[str, Any]) -> None:
        self._counter("fallback.served", level=str(a.get("level", "unknown"))).value += 1
