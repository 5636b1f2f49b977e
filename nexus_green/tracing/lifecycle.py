"""BusTracer: spans for the connection lifecycle, built from the event stream (layer L4).

Nothing in the transport or the connection knows about tracing: this
subscriber turns the events they emit (:mod:`nexus_green.events`) into spans.

============================  ====================================================================
span                          from
============================  ====================================================================
``nexus.connect``             ``connect.started`` to ``connect.complete`` / ``connect.failed``;
                              a child of the current span when there is one (a request that
                              waits for the connection), else a root. Attributes
                              ``server.address``, ``server.port``, ``nexus.conn_id`` and one
                              ``nexus.connect.<phase>_s`` per phase of ``phases``.
``connect.dns`` / ``.tcp`` /  each ``connect.<phase>.complete`` / ``.failed``: it ends at the
``.socks5`` / ``.tls``        event and lasts its ``duration`` (``dns.question.name`` on dns)
``nexus.heartbeat``           ``heartbeat.sent`` to ``heartbeat.rtt`` (or ``heartbeat.timeout``,
                              an error), a root; children ``send-ping`` (until the write that
                              took the ping to the kernel: ``heartbeat.rtt``'s ``written``) and
                              ``receive-pong`` (from there to the pong)
``nexus.reconnect``           a :class:`~nexus_green.connection.Connection` that reconnects by
                              itself: ``reconnect.scheduled`` to ``reconnect.succeeded`` /
                              ``.failed`` / ``.gave_up``; a root *linked* to the connection span
                              it replaces; the ``nexus.connect`` of the attempt is its child. A
                              Client's pool instead replaces a lost connection by a new one: the
                              new ``nexus.connect`` of that endpoint is linked to the lost one
                              (``connection.closed`` with an error)
``nexus.message``             one per attempt of a sampled request (``request.traced`` /
                              ``request.failed`` in the caller's greenlet, whose current span is
                              the request's): from the moment the frame was queued
                              (``queued``) to the answer's arrival, with children ``send``
                              (queued until the coalesced batch holding it was written to the
                              kernel: ``written``) and ``receive`` (written until the answer
                              arrived: network, server, reader); a code of 500 or more marks it
                              an error. The connection emits ``request.traced`` only for requests
                              that carry a ``traceparent``, so unsampled requests pay nothing
============================  ====================================================================

Resilience events of the request in progress become events of the current
span: ``retry.attempt``, ``retry.gave_up``, ``breaker.rejected``,
``fallback.used``, ``bulkhead.rejected``, ``hedge.sent``, ``hedge.won``,
``failover.switched``.

Bookkeeping is per connection and released on ``connection.closed``.

Example::

    >>> from nexus_green.events import EventBus
    >>> from nexus_green.tracing import SpanManager, AlwaysOn, InMemorySpans
    >>> bus, spans = EventBus(), InMemorySpans()
    >>> tracer = BusTracer(SpanManager(sampler=AlwaysOn(), processors=[spans]), bus=bus).start()
    >>> bus.emit("connect.started", conn_id="c1", endpoint="tcp://db:7600")
    >>> bus.emit("connect.dns.complete", conn_id="c1", endpoint="tcp://db:7600", duration=0.001)
    >>> bus.emit("connect.complete", conn_id="c1", endpoint="tcp://db:7600", duration=0.002, phases={"dns": 0.001})
    >>> tracer.stop()
    >>> [(s.name, s.attributes.get("server.address")) for s in spans.spans]
    [('connect.dns', None), ('nexus.connect', 'db')]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..events import Event, EventBus, default_bus
from ..transport.endpoint import Endpoint
from .context import TraceContext
from .manager import SpanManager, _get_current
from .span import Span, SpanKind, SpanLink, StatusCode, monotonic_to_ns

__all__ = ["BusTracer", "SPAN_EVENTS"]

MAX_LOST = 256  # endpoints whose lost connection awaits its replacement (one entry each)

SPAN_EVENTS = (
    "retry.attempt",
    "retry.gave_up",
    "breaker.rejected",
    "fallback.used",
    "bulkhead.rejected",
    "hedge.sent",
    "hedge.won",
    "failover.switched",
)
"""Resilience events recorded as events of the current span."""

_PHASES = ("dns", "tcp", "socks5", "tls")


def _value(v: Any) -> Any:
    if isinstance(v, (str, bool, int, float)):
        return v
    if isinstance(v, BaseException):
        return f"{type(v).__name__}: {v}"
    return str(v)


class BusTracer:
    """Subscribes to ``bus`` and records lifecycle spans with ``manager``; :meth:`start` / :meth:`stop`.

    ``message_spans=False`` leaves out the message spans (and so does not
    subscribe to ``request.traced`` and ``request.failed``).

    Example::

        >>> bus = EventBus()
        >>> t = BusTracer(SpanManager(), bus=bus, message_spans=False).start()
        >>> bus.wants("connect.started"), bus.wants("request.traced")
        (True, False)
        >>> t.stop()
    """

    def __init__(self, manager: SpanManager, *, bus: EventBus = default_bus, message_spans: bool = True) -> None:
        self.manager = manager
        self.bus = bus
        self._connecting: dict[str, Span] = {}
        self._last_connect: dict[str, Span] = {}
        self._reconnecting: dict[str, Span] = {}
        self._heartbeats: dict[str, Span] = {}
        self._lost: dict[str, tuple[TraceContext, str]] = {}
        self._unsubscribe: list[Callable[[], None]] = []
        handlers: dict[str, Callable[[Event], None]] = {
            "connect.started": self._connect_started,
            "connect.complete": self._connect_done,
            "connect.failed": self._connect_done,
            "heartbeat.sent": self._heartbeat_sent,
            "heartbeat.rtt": self._heartbeat_done,
            "heartbeat.timeout": self._heartbeat_done,
            "reconnect.scheduled": self._reconnect_scheduled,
            "reconnect.succeeded": self._reconnect_done,
            "reconnect.failed": self._reconnect_done,
            "reconnect.gave_up": self._reconnect_done,
            "connection.closed": self._closed,
            "request.traced": self._message,
            "request.failed": self._message,
        }
        if not message_spans:
            for name in ("request.traced", "request.failed"):
                del handlers[name]
        for phase in _PHASES:
            handlers[f"connect.{phase}.complete"] = self._phase
            handlers[f"connect.{phase}.failed"] = self._phase
        for name in SPAN_EVENTS:
            handlers[name] = self._span_event
        self._handlers = handlers

    def start(self) -> BusTracer:
        """Subscribe (idempotent); returns self."""
        if not self._unsubscribe:
            for name, fn in self._handlers.items():
                self._unsubscribe.append(self.bus.subscribe(fn, prefix=name))
        return self

    def stop(self) -> None:
        """Unsubscribe and end the spans still open (idempotent)."""
        subs, self._unsubscribe = self._unsubscribe, []
        for off in subs:
            off()
        for table in (self._connecting, self._reconnecting, self._heartbeats):
            for span in table.values():
                span.end()
            table.clear()
        self._last_connect.clear()
        self._lost.clear()

    # ------------------------------------------------------------------ connect
    def _connect_started(self, ev: Event) -> None:
        a = ev.attrs
        conn_id = a.get("conn_id", "")
        parent: Any = self._reconnecting.get(conn_id) or _get_current()
        endpoint = str(a.get("endpoint", ""))
        lost = self._lost.pop(endpoint, None)
        links = (
            (SpanLink(lost[0], {"nexus.link": "replaces lost connection", "nexus.conn_id": lost[1]}),) if lost else ()
        )
        span = self.manager.start_span(
            "nexus.connect", kind=SpanKind.CLIENT, parent=parent, links=links, start_ns=monotonic_to_ns(ev.time)
        )
        if span.recording:
            span.attributes["nexus.conn_id"] = conn_id
            try:
                ep = Endpoint.parse(endpoint)
                span.attributes["server.address"] = ep.host
                span.attributes["server.port"] = ep.port
                span.attributes["nexus.tls"] = ep.tls
            except Exception:
                span.attributes["server.address"] = endpoint
        self._connecting[conn_id] = span

    def _phase(self, ev: Event) -> None:
        a = ev.attrs
        parent = self._connecting.get(a.get("conn_id", ""))
        if parent is None or not parent.recording:
            return
        end = monotonic_to_ns(ev.time)
        name = ev.name.rsplit(".", 1)[0]  # connect.dns
        span = self.manager.start_span(
            name, kind=SpanKind.INTERNAL, parent=parent, start_ns=end - int(float(a.get("duration", 0.0)) * 1e9)
        )
        if name == "connect.dns":
            span.attributes["dns.question.name"] = parent.attributes.get("server.address", "")
        error = a.get("error")
        if error is not None:
            span.record_error(error)
        span.end(end)

    def _connect_done(self, ev: Event) -> None:
        a = ev.attrs
        conn_id = a.get("conn_id", "")
        span = self._connecting.pop(conn_id, None)
        if span is None:
            return
        for phase, seconds in (a.get("phases") or {}).items():
            span.set_attribute(f"nexus.connect.{phase}_s", float(seconds))
        error = a.get("error")
        if error is not None:
            span.record_error(error)
        else:
            self._last_connect[conn_id] = span
        span.end(monotonic_to_ns(ev.time))

    # ------------------------------------------------------------------ heartbeat
    def _heartbeat_sent(self, ev: Event) -> None:
        conn_id = ev.attrs.get("conn_id", "")
        old = self._heartbeats.pop(conn_id, None)
        if old is not None:
            old.end()
        span = self.manager.start_span(
            "nexus.heartbeat", kind=SpanKind.CLIENT, parent=None, start_ns=monotonic_to_ns(ev.time)
        )
        span.set_attribute("nexus.conn_id", conn_id)
        span.marks = {"sent": monotonic_to_ns(ev.time)}
        self._heartbeats[conn_id] = span

    def _heartbeat_done(self, ev: Event) -> None:
        conn_id = ev.attrs.get("conn_id", "")
        span = self._heartbeats.pop(conn_id, None)
        if span is None:
            return
        end = monotonic_to_ns(ev.time)
        if ev.name == "heartbeat.timeout":
            span.status = StatusCode.ERROR
            span.status_message = "heartbeat timeout: no pong"
            span.set_attribute("error.type", "HeartbeatTimeout")
        elif span.recording:
            span.set_attribute("nexus.rtt_s", float(ev.attrs.get("rtt", 0.0)))
            w = ev.attrs.get("written")
            written = min(max(monotonic_to_ns(w), span.start_ns), end) if w else span.start_ns
            self.manager.start_span("send-ping", parent=span, start_ns=span.start_ns).end(written)
            self.manager.start_span("receive-pong", parent=span, start_ns=written).end(end)
        span.end(end)

    # ------------------------------------------------------------------ reconnect
    def _reconnect_scheduled(self, ev: Event) -> None:
        a = ev.attrs
        conn_id = a.get("conn_id", "")
        span = self._reconnecting.get(conn_id)
        if span is None:
            previous = self._last_connect.get(conn_id)
            links = (SpanLink(previous.context, {"nexus.link": "previous connection"}),) if previous is not None else ()
            span = self.manager.start_span(
                "nexus.reconnect", kind=SpanKind.INTERNAL, parent=None, links=links, start_ns=monotonic_to_ns(ev.time)
            )
            span.set_attribute("nexus.conn_id", conn_id)
            self._reconnecting[conn_id] = span
        span.set_attribute("nexus.reconnect.attempts", int(a.get("attempt", 0)))
        span.add_event(
            "reconnect.scheduled", {"attempt": int(a.get("attempt", 0)), "delay": float(a.get("delay", 0.0))}
        )

    def _reconnect_done(self, ev: Event) -> None:
        a = ev.attrs
        conn_id = a.get("conn_id", "")
        span = self._reconnecting.get(conn_id)
        if span is None:
            return
        if ev.name == "reconnect.failed":
            span.add_event("reconnect.failed", {"attempt": int(a.get("attempt", 0)), "error": _value(a.get("error"))})
            return  # another attempt follows (or gave_up)
        del self._reconnecting[conn_id]
        if ev.name == "reconnect.gave_up":
            span.status = StatusCode.ERROR
            span.status_message = f"gave up after {a.get('attempt')} attempts"
            span.set_attribute("error.type", "ReconnectGaveUp")
        span.end(monotonic_to_ns(ev.time))

    def _closed(self, ev: Event) -> None:
        conn_id = ev.attrs.get("conn_id", "")
        last = self._last_connect.pop(conn_id, None)
        if last is not None and ev.attrs.get("error") is not None and len(self._lost) < MAX_LOST:
            # A pool replaces a lost connection with a new one: that connect span links to this one.
            self._lost[str(ev.attrs.get("endpoint", ""))] = (last.context, conn_id)
        for table in (self._connecting, self._heartbeats, self._reconnecting):
            span = table.pop(conn_id, None)
            if span is not None:
                span.end(monotonic_to_ns(ev.time))

    # ------------------------------------------------------------------ messages
    def _message(self, ev: Event) -> None:
        parent = _get_current()
        if parent is None or not parent.recording:
            return
        a = ev.attrs
        conn_id = a.get("conn_id", "")
        arrival = monotonic_to_ns(ev.time)
        q = a.get("queued")
        queued = monotonic_to_ns(q) if q is not None else arrival - int(float(a.get("latency", 0.0)) * 1e9)
        span = self.manager.start_span("nexus.message", kind=SpanKind.INTERNAL, parent=parent, start_ns=queued)
        attrs = span.attributes
        attrs["nexus.conn_id"] = conn_id
        attrs["nexus.qid"] = a.get("qid", 0)
        if ev.name == "request.traced":
            code = attrs["nexus.code"] = a.get("code", 0)
            if code >= 500:  # the server failed it (a retry may follow): an error attempt, as OTel's RPC spans do
                span.status = StatusCode.ERROR
                span.status_message = f"code {code}"
                attrs["error.type"] = str(code)
            attrs["nexus.bytes_out"] = a.get("bytes_out", 0)
            attrs["nexus.bytes_in"] = a.get("bytes_in", 0)
            w = a.get("written")
            written = min(max(monotonic_to_ns(w), queued), arrival) if w else queued
            self.manager.start_span("send", parent=span, start_ns=queued).end(written)
            self.manager.start_span("receive", parent=span, start_ns=written).end(arrival)
        else:
            span.record_error(a.get("error") or RuntimeError("request failed"))
        span.end(arrival)
        marks = parent.marks
        if marks is None:
            marks = parent.marks = {}
        marks.setdefault("first_queued", queued)
        marks["last_arrival"] = arrival

    # ------------------------------------------------------------------ resilience
    def _span_event(self, ev: Event) -> None:
        span = _get_current()
        if span is None or not span.recording:
            return
        span.add_event(ev.name, {k: _value(v) for k, v in ev.attrs.items()}, monotonic_to_ns(ev.time))

    def __repr__(self) -> str:
        return f"<BusTracer subscribed={bool(self._unsubscribe)} connecting={len(self._connecting)}>"
