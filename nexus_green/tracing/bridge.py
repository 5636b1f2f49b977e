"""OTelBridge: hand nexus_green spans to an OpenTelemetry tracer provider (extra ``otel``; layer L4).

A span processor for a :class:`~nexus_green.tracing.SpanManager`. Each
ended span goes to the application's tracer provider (default: the global
one, ``opentelemetry.trace.get_tracer_provider()``), so it reaches whatever
exporters the application configured.

* With the OpenTelemetry SDK's ``TracerProvider`` the span is handed over as
  it is: the same trace id, span id, parent, times, attributes, events,
  links and status (an SDK ``ReadableSpan`` given to the provider's span
  processors).
* With any other provider the span is re-created through the API
  (``start_span``/``end`` with our name, kind, times, attributes, events and
  status); the provider draws its own ids, and ours go along as the
  attributes ``nexus.trace_id``, ``nexus.span_id`` and ``nexus.parent_span_id``.

Needs ``opentelemetry-api`` (``pip install nexus_green[otel]``); without it
:class:`OTelBridge` raises :class:`~nexus_green.errors.ConfigurationError`.

Example::

    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    >>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    >>> from nexus_green.tracing import SpanManager, AlwaysOn
    >>> provider, exported = TracerProvider(), InMemorySpanExporter()
    >>> provider.add_span_processor(SimpleSpanProcessor(exported))
    >>> tracer = SpanManager(sampler=AlwaysOn(), processors=[OTelBridge(provider)])
    >>> with tracer.span("work") as s: pass
    >>> [(o.name, o.context.span_id == s.context.span_id) for o in exported.get_finished_spans()]
    [('work', True)]
"""

from __future__ import annotations

from typing import Any, Optional

from ..errors import ConfigurationError
from .span import Span, SpanKind, StatusCode

__all__ = ["OTelBridge"]


class OTelBridge:
    """Send ended spans to ``tracer_provider`` (default: OpenTelemetry's global provider).

    ``errors`` counts spans the provider refused (raised on).

    Example::

        >>> from opentelemetry import trace
        >>> OTelBridge().provider is trace.get_tracer_provider()
        True
    """

    def __init__(self, tracer_provider: Any = None, *, scope: str = "nexus_green") -> None:
        try:
            from opentelemetry import trace as otel_trace
        except ImportError as exc:  # pragma: no cover - the dev extra installs it
            raise ConfigurationError("OTelBridge needs opentelemetry-api: pip install 'nexus_green[otel]'") from exc
        self._otel = otel_trace
        self.provider = tracer_provider if tracer_provider is not None else otel_trace.get_tracer_provider()
        self.scope = scope
        self.errors = 0
        self._sdk = self._sdk_parts(self.provider)
        self._tracer = self.provider.get_tracer(scope)

    @staticmethod
    def _sdk_parts(provider: Any) -> Optional[tuple[Any, Any, Any]]:
        try:
            from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
        except ImportError:  # pragma: no cover - the dev extra installs it
            return None
        if not isinstance(provider, TracerProvider):
            return None
        return ReadableSpan, Event, provider

    def _kind(self, kind: SpanKind) -> Any:
        k = self._otel.SpanKind
        return {SpanKind.SERVER: k.SERVER, SpanKind.CLIENT: k.CLIENT}.get(kind, k.INTERNAL)

    def _status(self, span: Span) -> Any:
        from opentelemetry.trace.status import Status
        from opentelemetry.trace.status import StatusCode as OStatus

        code = {StatusCode.OK: OStatus.OK, StatusCode.ERROR: OStatus.ERROR}.get(span.status, OStatus.UNSET)
        return Status(code, span.status_message or None) if code is OStatus.ERROR else Status(code)

    def _context(self, trace_id: int, span_id: int, flags: int, remote: bool = False) -> Any:
        t = self._otel
        return t.SpanContext(trace_id, span_id, is_remote=remote, trace_flags=t.TraceFlags(flags & 0xFF))

    @staticmethod
    def _attrs(attrs: Any) -> dict[str, Any]:
        return {k: v if isinstance(v, (str, bool, int, float)) else str(v) for k, v in attrs.items()}

    def on_end(self, span: Span) -> None:
        try:
            if self._sdk is not None:
                self._hand_over(span)
            else:
                self._recreate(span)
        except Exception:
            self.errors += 1

    def _hand_over(self, span: Span) -> None:
        assert self._sdk is not None
        readable_cls, event_cls, provider = self._sdk
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        ctx = span.context
        parent = self._context(ctx.trace_id, ctx.parent_span_id, ctx.flags) if ctx.parent_span_id else None
        readable = readable_cls(
            name=span.name,
            context=self._context(ctx.trace_id, ctx.span_id, ctx.flags),
            parent=parent,
            resource=provider.resource,
            attributes=self._attrs(span.attributes),
            events=[event_cls(e.name, self._attrs(e.attributes), timestamp=e.time_ns) for e in span.events],
            links=[
                self._otel.Link(
                    self._context(link.context.trace_id, link.context.span_id, link.context.flags),
                    self._attrs(link.attributes),
                )
                for link in span.links
            ],
            kind=self._kind(span.kind),
            status=self._status(span),
            start_time=span.start_ns,
            end_time=span.end_ns,
            instrumentation_scope=InstrumentationScope(self.scope),
        )
        provider._active_span_processor.on_end(readable)

    def _recreate(self, span: Span) -> None:
        ctx = span.context
        attrs = self._attrs(span.attributes)
        attrs["nexus.trace_id"] = ctx.trace_id_hex
        attrs["nexus.span_id"] = ctx.span_id_hex
        if ctx.parent_span_id:
            attrs["nexus.parent_span_id"] = ctx.parent_span_id_hex
        o = self._tracer.start_span(span.name, kind=self._kind(span.kind), attributes=attrs, start_time=span.start_ns)
        for e in span.events:
            o.add_event(e.name, self._attrs(e.attributes), timestamp=e.time_ns)
        o.set_status(self._status(span))
        o.end(end_time=span.end_ns)

    def __repr__(self) -> str:
        return f"<OTelBridge {type(self.provider).__name__} sdk={self._sdk is not None} errors={self.errors}>"
