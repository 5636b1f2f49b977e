"""Distributed tracing (layer L4): spans for requests and the connection lifecycle, propagation, OTLP export.

* :class:`SpanManager` starts spans and keeps the current span of each
  greenlet; :func:`traced` wraps any call site;
* samplers :class:`AlwaysOn`, :class:`AlwaysOff`, :class:`TraceIdRatio`,
  :class:`ParentBased`; the default is ``ParentBased(TraceIdRatio(0.1))``;
* :class:`TracingMiddleware` (outermost in a Client pipeline) and
  :class:`BusTracer` (connection, heartbeat, reconnect and message spans from
  the event stream);
* the context travels in the frame header block (``trace-id``, ``span-id``,
  ``parent-span-id``, ``traceparent``); :func:`server_span` continues it;
* :class:`BatchExporter` sends OTLP/JSON to a :class:`FileSink` (JSON lines)
  or an :class:`HTTPSink` (OTLP/HTTP) from a greenlet; :class:`OTelBridge`
  hands spans to an OpenTelemetry tracer provider (extra ``otel``);
* ``nexus-green trace view FILE`` draws a waterfall (docs/tracing.md).

Example::

    >>> from nexus_green import Client
    >>> from nexus_green.events import EventBus
    >>> from nexus_green.testing import EmbeddedServer
    >>> bus, spans = EventBus(), InMemorySpans()
    >>> tracer = SpanManager(sampler=AlwaysOn(), processors=[spans])
    >>> mw = TracingMiddleware(tracer, bus=bus)
    >>> with EmbeddedServer(tracer=tracer) as server, Client(server.url, middlewares=[mw], bus=bus) as c:
    ...     with tracer.span("checkout"):
    ...         _ = c.request(b"x", fid=1)
    >>> mw.close()
    >>> by_name = {s.name: s for s in spans.spans}
    >>> by_name["nexus.server"].context.parent_span_id == by_name["nexus.request"].context.span_id
    True
"""

from __future__ import annotations

from .context import (
    FLAG_SAMPLED,
    TraceContext,
    extract,
    inject,
    new_span_id,
    new_trace_id,
    parse_traceparent,
)
from .export import BatchExporter, FileSink, HTTPSink, spans_to_otlp
from .lifecycle import BusTracer
from .manager import (
    InMemorySpans,
    SpanManager,
    current_span,
    get_default_manager,
    install_spawn_hook,
    set_default_manager,
    uninstall_spawn_hook,
)
from .middleware import ORDER_TRACING, TracingMiddleware
from .sampling import DEFAULT_RATIO, DEFAULT_SAMPLER, AlwaysOff, AlwaysOn, ParentBased, Sampler, TraceIdRatio
from .server import server_span
from .span import Span, SpanKind, StatusCode
from .traced import traced

__all__ = [
    "FLAG_SAMPLED",
    "TraceContext",
    "extract",
    "inject",
    "new_span_id",
    "new_trace_id",
    "parse_traceparent",
    "BatchExporter",
    "FileSink",
    "HTTPSink",
    "spans_to_otlp",
    "BusTracer",
    "InMemorySpans",
    "SpanManager",
    "current_span",
    "get_default_manager",
    "install_spawn_hook",
    "set_default_manager",
    "uninstall_spawn_hook",
    "ORDER_TRACING",
    "TracingMiddleware",
    "DEFAULT_RATIO",
    "DEFAULT_SAMPLER",
    "AlwaysOff",
    "AlwaysOn",
    "ParentBased",
    "Sampler",
    "TraceIdRatio",
    "server_span",
    "Span",
    "SpanKind",
    "StatusCode",
    "traced",
]
