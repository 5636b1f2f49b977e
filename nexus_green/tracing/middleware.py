"""TracingMiddleware: a client span per logical request, its context sent in the frame header block (layer L4).

It runs outermost (:data:`ORDER_TRACING`, below
:data:`~nexus_green.pipeline.ORDER_RESILIENCE`), so its span covers every
retry, hedge and fallback, and the resilience events of the request
(``retry.attempt``, ``breaker.rejected``, ``fallback.used``, ...) become
events of that span (see :class:`~nexus_green.tracing.lifecycle.BusTracer`,
which the middleware subscribes on its ``bus``).

Per request:

* current span None (a root): the sampler decides from a fresh trace id.
  Unsampled, the request goes on untouched: no span object, no header block.
* a current span that records: a sampled ``CLIENT`` child span, current while
  the request runs; its context goes on the wire as ``trace-id``,
  ``span-id``, ``parent-span-id`` and ``traceparent`` (docs/protocol.md).
* a current span that does not record (an unsampled trace): no span; the
  parent's context is sent with the sampled bit clear, so the server follows.

``strict=True`` (give it the client's ``strict``) never adds a header: a
NexusKit peer would misread the block.

Example::

    >>> from nexus_green import Client
    >>> from nexus_green.testing import EmbeddedServer
    >>> from nexus_green.events import EventBus
    >>> from nexus_green.tracing import SpanManager, AlwaysOn, InMemorySpans
    >>> bus, spans = EventBus(), InMemorySpans()
    >>> mw = TracingMiddleware(SpanManager(sampler=AlwaysOn(), processors=[spans]), bus=bus)
    >>> with EmbeddedServer() as server, Client(server.url, middlewares=[mw], bus=bus) as c:
    ...     c.request(b"hi", fid=1).body
    b'hi'
    >>> mw.close()
    >>> "nexus.request" in spans.names()
    True
"""

from __future__ import annotations

from typing import Any, Optional

from ..events import EventBus, default_bus
from ..pipeline import ORDER_RESILIENCE, Handler
from ..protocol.messages import Request
from ..transport.endpoint import Endpoint
from .context import _rand, inject, new_trace_id
from .lifecycle import BusTracer
from .manager import SpanManager, _get_current, current_span_var, get_default_manager
from .sampling import AlwaysOff, AlwaysOn, ParentBased, TraceIdRatio
from .span import Span, SpanKind, now_ns

__all__ = ["TracingMiddleware", "ORDER_TRACING"]

ORDER_TRACING = ORDER_RESILIENCE - 50
"""Outermost: the span covers all the attempts the resilience middlewares make."""

_set_current = current_span_var.set
_reset_current = current_span_var.reset


_REQUEST_FIELDS = ("body", "fid", "headers", "timeout", "idempotent", "endpoint", "context")
_REQUEST_SLOTS = tuple((Request.__dict__[n].__get__, Request.__dict__[n].__set__) for n in _REQUEST_FIELDS)
_new = object.__new__


def _with_headers(request: Any, extra: dict[str, str]) -> Any:
    # Request.with_headers goes through dataclasses.replace (about 2.5 us); copying the slots is a fifth of it.
    if type(request) is not Request:
        return request.with_headers(extra)
    headers = request.headers
    if headers:
        extra = {**headers, **extra}
    copy = _new(Request)
    for get, set_ in _REQUEST_SLOTS:
        set_(copy, get(request))
    Request.__dict__["headers"].__set__(copy, extra)
    return copy


def _root_bound(sampler: Any) -> Optional[int]:
    """The bound on a root's low 64 trace-id bits below which ``sampler`` samples it, when it is that simple."""
    root = sampler.root if isinstance(sampler, ParentBased) else sampler
    if isinstance(root, TraceIdRatio):
        return root.bound
    if isinstance(root, AlwaysOn):
        return 1 << 64
    if isinstance(root, AlwaysOff):
        return 0
    return None


class TracingMiddleware:
    """Trace each request through the pipeline; ``manager`` (default: the process-wide one) makes the spans.

    ``bus`` is the client's bus (the lifecycle subscriber listens there);
    ``lifecycle=False`` traces the requests only (no connection, heartbeat or
    reconnect spans, no message phases); ``message_spans=False`` keeps the
    lifecycle spans but not the per-attempt message spans, which need the
    connection's per-request ``request.complete`` event (emitted for every
    request once anyone listens: the largest part of the cost an unsampled
    request pays, see docs/tracing.md). Call :meth:`close` to unsubscribe.

    Example::

        >>> from nexus_green.events import EventBus
        >>> mw = TracingMiddleware(bus=EventBus(), strict=True, lifecycle=False)
        >>> mw.name, mw.order, mw.manager.sampler
        ('tracing', 50, ParentBased(TraceIdRatio(0.1)))
    """

    name = "tracing"
    order = ORDER_TRACING

    def __init__(
        self,
        manager: Optional[SpanManager] = None,
        *,
        bus: EventBus = default_bus,
        strict: bool = False,
        lifecycle: bool = True,
        message_spans: bool = True,
    ) -> None:
        self.manager = manager if manager is not None else get_default_manager()
        self.bus = bus
        self.strict = strict
        self._sample = self.manager.sampler.should_sample
        self._bound = _root_bound(self.manager.sampler)
        self._endpoints: dict[str, tuple[str, int]] = {}
        self._ticket: Optional[int] = None  # a root's sampled draw, from needed() to the __call__ that follows
        self.subscriber: Optional[BusTracer] = (
            BusTracer(self.manager, bus=bus, message_spans=message_spans).start() if lifecycle else None
        )

    def _server(self, endpoint: str) -> tuple[str, int]:
        found = self._endpoints.get(endpoint)
        if found is None:
            try:
                ep = Endpoint.parse(endpoint)
                found = (ep.host, ep.port)
            except Exception:
                found = (endpoint, 0)
            if len(self._endpoints) < 64:
                self._endpoints[endpoint] = found
        return found

    def needed(self) -> bool:
        """False when this call would go through untouched: an unsampled root (see :class:`~nexus_green.pipeline.Middleware`).

        A Client whose only middleware this is asks before it builds the
        Request, so an unsampled root costs one draw and a comparison and takes
        the Client's short path. A sampled draw is kept for the ``__call__``
        that follows in the same greenlet.

        Example::

            >>> from nexus_green.events import EventBus
            >>> from nexus_green.tracing import AlwaysOff, AlwaysOn
            >>> off = TracingMiddleware(SpanManager(sampler=AlwaysOff()), bus=EventBus(), lifecycle=False)
            >>> on = TracingMiddleware(SpanManager(sampler=AlwaysOn()), bus=EventBus(), lifecycle=False)
            >>> off.needed(), on.needed()
            (False, True)
        """
        if _get_current() is not None:
            return True
        bound = self._bound
        if bound is None:
            return True  # a sampler of its own: it decides in __call__
        low = _rand(64)
        if low >= bound:
            return False
        self._ticket = low
        return True

    def __call__(self, request: Any, call_next: Handler) -> Any:
        parent = _get_current()
        if parent is None:
            bound = self._bound
            if bound is not None:
                # A ratio decides on the low 64 bits of the trace id: draw them first, the rest only when sampled.
                low = self._ticket
                if low is None:
                    low = _rand(64)
                else:
                    self._ticket = None  # needed() drew it for this call
                if low >= bound:
                    return call_next(request)  # an unsampled root: one draw, one comparison
                trace_id = (_rand(64) << 64) | low or new_trace_id()
            else:
                trace_id = new_trace_id()
                if not self._sample(None, trace_id):
                    return call_next(request)
            span = self.manager.start_span("nexus.request", kind=SpanKind.CLIENT, parent=None, trace_id=trace_id)
        elif not parent.recording:
            if self.strict:
                return call_next(request)
            return call_next(_with_headers(request, inject(parent.context)))
        else:
            span = self.manager.start_span("nexus.request", kind=SpanKind.CLIENT, parent=parent)
        return self._traced(span, request, call_next)

    def _traced(self, span: Span, request: Any, call_next: Handler) -> Any:
        host, port = self._server(request.endpoint)
        attrs = span.attributes
        attrs["rpc.system"] = "nexus"
        attrs["rpc.method"] = str(request.fid)
        attrs["nexus.fid"] = request.fid
        attrs["server.address"] = host
        attrs["server.port"] = port
        attrs["nexus.request.size"] = len(request.body)
        if not self.strict:
            request = _with_headers(request, inject(span.context))
        token = _set_current(span)
        try:
            response = call_next(request)
        except BaseException as exc:
            span.record_error(exc)
            raise
        else:
            attrs["nexus.code"] = response.code
            attrs["nexus.response.size"] = len(response.body)
            if response.conn_id:
                attrs["nexus.conn_id"] = response.conn_id
                attrs["nexus.qid"] = response.qid
            if response.cached:
                attrs["nexus.cached"] = response.cached
            if response.code != 200:
                span.status_message = f"code {response.code}"
            return response
        finally:
            _reset_current(token)
            end = now_ns()
            marks = span.marks
            if marks is not None:
                # Before the first message was queued: pipeline, checkout, encoding. After the last
                # answer arrived: the caller's wake-up, decompression, the middlewares on the way out.
                first, last = marks.get("first_queued"), marks.get("last_arrival")
                if first is not None:
                    self.manager.start_span("encode", parent=span, start_ns=span.start_ns).end(first)
                if last is not None:
                    self.manager.start_span("decode", parent=span, start_ns=last).end(end)
            span.end(end)

    def close(self) -> None:
        """Unsubscribe the lifecycle subscriber (idempotent)."""
        sub, self.subscriber = self.subscriber, None
        if sub is not None:
            sub.stop()

    def __repr__(self) -> str:
        return f"<TracingMiddleware order={self.order} strict={self.strict} {self.manager!r}>"
