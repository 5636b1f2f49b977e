"""Span: one timed operation of a trace, with attributes, events, links and a status (layer L4).

Times are nanoseconds since the epoch, taken from the monotonic clock plus
one offset fixed at import (:func:`now_ns`), so a span's duration never goes
backwards and an event stamped with :attr:`nexus_green.events.Event.time`
(monotonic seconds) lands on the same axis (:func:`monotonic_to_ns`).

Attribute names follow the OpenTelemetry semantic conventions where one
exists (``server.address``, ``server.port``, ``network.peer.address``,
``tls.protocol.version``, ``dns.question.name``, ``error.type``).

A span is ended once; later ``end()`` calls are ignored. A span from an
unsampled decision is not recording: it carries its context (so its children
inherit the decision) and drops everything else.

Example::

    >>> from nexus_green.tracing.context import TraceContext
    >>> s = Span("work", TraceContext(trace_id=1, span_id=2, flags=1), kind=SpanKind.CLIENT)
    >>> s.set_attribute("server.port", 7600)
    >>> s.add_event("retry", {"attempt": 1})
    >>> s.record_error(TimeoutError("slow"))
    >>> s.end()
    >>> s.status, s.attributes["error.type"], [e.name for e in s.events]
    (<StatusCode.ERROR: 2>, 'TimeoutError', ['retry', 'exception'])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from enum import IntEnum
from typing import Any, NamedTuple, Optional

from .context import TraceContext

__all__ = ["Span", "SpanKind", "StatusCode", "SpanEvent", "SpanLink", "now_ns", "monotonic_to_ns"]

_EPOCH_OFFSET_NS = time.time_ns() - time.monotonic_ns()
_monotonic_ns = time.monotonic_ns


def now_ns() -> int:
    """Nanoseconds since the epoch, on the monotonic clock.

    Example::

        >>> abs(now_ns() - time.time_ns()) < 60 * 10**9
        True
    """
    return _monotonic_ns() + _EPOCH_OFFSET_NS


def monotonic_to_ns(t: float) -> int:
    """A ``time.monotonic()`` reading (an event's time) as epoch nanoseconds on the :func:`now_ns` axis.

    Example::

        >>> abs(monotonic_to_ns(time.monotonic()) - now_ns()) < 10**9
        True
    """
    return int(t * 1e9) + _EPOCH_OFFSET_NS


class SpanKind(IntEnum):
    """The OTLP span kinds this library records (values are OTLP's).

    Example::

        >>> int(SpanKind.CLIENT), int(SpanKind.SERVER)
        (3, 2)
    """

    INTERNAL = 1
    SERVER = 2
    CLIENT = 3


class StatusCode(IntEnum):
    """OTLP status codes.

    Example::

        >>> int(StatusCode.ERROR)
        2
    """

    UNSET = 0
    OK = 1
    ERROR = 2


class SpanEvent(NamedTuple):
    """A timestamped annotation of a span.

    Example::

        >>> SpanEvent("retry", 5, {"attempt": 2}).name
        'retry'
    """

    name: str
    time_ns: int
    attributes: Mapping[str, Any]


class SpanLink(NamedTuple):
    """A causal link to another span (a reconnect links to the connection it replaces).

    Example::

        >>> from nexus_green.tracing.context import TraceContext
        >>> SpanLink(TraceContext(trace_id=1, span_id=2), {}).context.span_id
        2
    """

    context: TraceContext
    attributes: Mapping[str, Any]


class Span:
    """One operation: ``name``, ``context``, ``kind``, ``start_ns``/``end_ns``, attributes, events, links, status.

    ``on_end`` (set by the :class:`~nexus_green.tracing.SpanManager`) gets the
    span once it ends.

    Example::

        >>> from nexus_green.tracing.context import TraceContext
        >>> ended = []
        >>> s = Span("op", TraceContext(trace_id=1, span_id=2, flags=1), start_ns=100, on_end=ended.append)
        >>> s.end(350); s.end(900)
        >>> (s.duration_ns, ended == [s])
        (250, True)
    """

    __slots__ = (
        "name",
        "context",
        "kind",
        "start_ns",
        "end_ns",
        "attributes",
        "events",
        "links",
        "status",
        "status_message",
        "error",
        "recording",
        "marks",
        "_on_end",
    )

    def __init__(
        self,
        name: str,
        context: TraceContext,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        start_ns: Optional[int] = None,
        attributes: Optional[Mapping[str, Any]] = None,
        links: tuple[SpanLink, ...] = (),
        recording: bool = True,
        on_end: Optional[Callable[[Span], None]] = None,
    ) -> None:
        self.name = name
        self.context = context
        self.kind = kind
        self.start_ns = now_ns() if start_ns is None else start_ns
        self.end_ns = 0
        self.attributes: dict[str, Any] = dict(attributes) if attributes else {}
        self.events: list[SpanEvent] = []
        self.links = links
        self.status = StatusCode.UNSET
        self.status_message = ""
        self.error: Optional[BaseException] = None
        self.recording = recording
        self.marks: Optional[dict[str, int]] = None  # timestamps the tracing subscriber notes for its phases
        self._on_end = on_end

    @property
    def ended(self) -> bool:
        """True once :meth:`end` ran."""
        return self.end_ns != 0

    @property
    def duration_ns(self) -> int:
        """``end_ns - start_ns`` (0 while running)."""
        return self.end_ns - self.start_ns if self.end_ns else 0

    def set_attribute(self, key: str, value: Any) -> None:
        """Set one attribute (ignored when not recording)."""
        if self.recording:
            self.attributes[key] = value

    def add_event(
        self, name: str, attributes: Optional[Mapping[str, Any]] = None, time_ns: Optional[int] = None
    ) -> None:
        """Add a timestamped event (ignored when not recording)."""
        if self.recording:
            self.events.append(SpanEvent(name, now_ns() if time_ns is None else time_ns, dict(attributes or {})))

    def record_error(self, exc: BaseException) -> None:
        """Status ERROR, ``error.type`` and an ``exception`` event (OTel's names) for ``exc``."""
        if not self.recording:
            return
        self.error = exc
        self.status = StatusCode.ERROR
        self.status_message = f"{type(exc).__name__}: {exc}"[:500]
        self.attributes["error.type"] = type(exc).__name__
        self.add_event("exception", {"exception.type": type(exc).__qualname__, "exception.message": str(exc)[:500]})

    def end(self, end_ns: Optional[int] = None) -> None:
        """End the span (once) and hand it to the manager's processors."""
        if self.end_ns:
            return
        self.end_ns = max(now_ns() if end_ns is None else end_ns, self.start_ns + 1)
        if self.recording and self._on_end is not None:
            self._on_end(self)

    def __repr__(self) -> str:
        state = f"{self.duration_ns / 1e6:.3f}ms" if self.end_ns else "running"
        return f"<Span {self.name!r} {self.context.trace_id_hex}/{self.context.span_id_hex} {state}>"
