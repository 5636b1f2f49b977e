"""SpanManager: starts spans, keeps the current span of each greenlet, hands ended spans on (layer L4).

The current span lives in a :class:`contextvars.ContextVar`, and gevent gives
each greenlet its own context, so each greenlet has its own current span.
:func:`nexus_green.greenlets.spawn` runs a child in a copy of the caller's
context, so a span current in the parent is the parent of spans started in
the child. ``gevent.spawn`` itself copies nothing: an application that wants
the same for its own plain ``gevent.spawn`` calls :func:`install_spawn_hook`
once. The hook is a ``greenlet.settrace`` function (no monkey-patching): when
a greenlet that never ran is first switched to, it gets a copy of its
spawning greenlet's context as it is at that moment (gevent starts a child at
the next loop turn, typically while the parent still waits inside its span).

Ended spans go to the manager's processors: anything with ``on_end(span)``
(and optionally ``flush()`` / ``shutdown()``), such as
:class:`~nexus_green.tracing.export.BatchExporter` or :class:`InMemorySpans`.

Example::

    >>> from nexus_green.tracing.sampling import AlwaysOn
    >>> spans = InMemorySpans()
    >>> tracer = SpanManager(sampler=AlwaysOn(), processors=[spans])
    >>> with tracer.span("outer") as outer:
    ...     with tracer.span("inner") as inner:
    ...         current_span() is inner
    True
    >>> [s.name for s in spans.spans], inner.context.parent_span_id == outer.context.span_id
    (['inner', 'outer'], True)
"""

from __future__ import annotations

import collections
import contextvars
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional, Protocol, Union

import greenlet

from ..errors import ConfigurationError
from .context import FLAG_SAMPLED, TraceContext, make_context, new_span_id, new_trace_id
from .sampling import DEFAULT_SAMPLER, Sampler
from .span import Span, SpanKind, SpanLink

__all__ = [
    "SpanManager",
    "SpanProcessor",
    "InMemorySpans",
    "current_span",
    "install_spawn_hook",
    "uninstall_spawn_hook",
    "get_default_manager",
    "set_default_manager",
]

log = logging.getLogger("nexus_green.tracing")

_CURRENT: contextvars.ContextVar[Optional[Span]] = contextvars.ContextVar("nexus_green_span", default=None)
current_span_var = _CURRENT
_get_current = _CURRENT.get


def current_span() -> Optional[Span]:
    """The current span of this greenlet (recording or not), or None.

    Example::

        >>> current_span() is None
        True
    """
    return _get_current()


class SpanProcessor(Protocol):
    """Receives every ended, sampled span."""

    def on_end(self, span: Span) -> None: ...


class InMemorySpans:
    """Keeps the last ``max_spans`` ended spans (for tests and examples).

    Example::

        >>> from nexus_green.tracing.sampling import AlwaysOn
        >>> spans = InMemorySpans()
        >>> with SpanManager(sampler=AlwaysOn(), processors=[spans]).span("a"): pass
        >>> spans.names()
        ['a']
    """

    def __init__(self, max_spans: int = 10000) -> None:
        self.spans: collections.deque[Span] = collections.deque(maxlen=max_spans)

    def on_end(self, span: Span) -> None:
        self.spans.append(span)

    def names(self) -> list[str]:
        """The names of the kept spans, oldest first."""
        return [s.name for s in self.spans]

    def clear(self) -> None:
        """Forget every kept span."""
        self.spans.clear()


_USE_CURRENT: Any = object()
Parent = Union[Span, TraceContext, None]


class SpanManager:
    """Starts spans and routes ended ones to ``processors``; ``sampler`` decides (default: :data:`DEFAULT_SAMPLER`).

    ``service_name`` and ``resource`` (a mapping) describe the process in the
    export. ``processor_errors`` counts processors that raised (a broken
    exporter never breaks a request).

    Example::

        >>> from nexus_green.tracing.sampling import AlwaysOff
        >>> m = SpanManager(sampler=AlwaysOff(), service_name="shop")
        >>> with m.span("checkout") as s:
        ...     s.recording, m.resource
        (False, {'service.name': 'shop'})
    """

    def __init__(
        self,
        *,
        sampler: Sampler = DEFAULT_SAMPLER,
        processors: Iterable[SpanProcessor] = (),
        service_name: str = "nexus_green",
        resource: Optional[Mapping[str, Any]] = None,
    ) -> None:
        if not isinstance(sampler, Sampler):
            raise ConfigurationError(f"sampler must have should_sample(parent, trace_id), got {sampler!r}")
        self.sampler = sampler
        self.processors: list[SpanProcessor] = list(processors)
        self.service_name = service_name
        self.resource: dict[str, Any] = {"service.name": service_name, **dict(resource or {})}
        self.processor_errors = 0
        self.started = 0
        self._should_sample = sampler.should_sample

    def add_processor(self, processor: SpanProcessor) -> None:
        """Send ended spans to ``processor`` too."""
        self.processors.append(processor)

    def start_span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        parent: Parent = _USE_CURRENT,
        attributes: Optional[Mapping[str, Any]] = None,
        links: tuple[SpanLink, ...] = (),
        start_ns: Optional[int] = None,
        trace_id: Optional[int] = None,
    ) -> Span:
        """A new span (not made current): child of ``parent`` (default: the current span; None: a new root).

        ``trace_id`` is the id of a new root when the caller drew it already
        (to ask the sampler first).

        The sampler decides whether it records; an unsampled span keeps its
        context (its children follow the decision) and records nothing.
        """
        if parent is _USE_CURRENT:
            parent = _get_current()
        parent_ctx = parent.context if isinstance(parent, Span) else parent
        if parent_ctx is None:
            trace_id, parent_id = trace_id or new_trace_id(), 0
        else:
            trace_id, parent_id = parent_ctx.trace_id, parent_ctx.span_id
        sampled = self._should_sample(parent_ctx, trace_id)
        ctx = make_context(trace_id, new_span_id(), parent_id, FLAG_SAMPLED if sampled else 0)
        self.started += 1
        return Span(
            name,
            ctx,
            kind=kind,
            start_ns=start_ns,
            attributes=attributes,
            links=links,
            recording=sampled,
            on_end=self._on_end,
        )

    def _on_end(self, span: Span) -> None:
        for p in self.processors:
            try:
                p.on_end(span)
            except Exception:
                self.processor_errors += 1
                log.exception("span processor %r failed", p)

    @contextmanager
    def span(
        self,
        name: str,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        parent: Parent = _USE_CURRENT,
        attributes: Optional[Mapping[str, Any]] = None,
    ) -> Iterator[Span]:
        """Start a span, make it current for the block, record an exception that leaves it, end it."""
        s = self.start_span(name, kind=kind, parent=parent, attributes=attributes)
        token = _CURRENT.set(s)
        try:
            yield s
        except BaseException as exc:
            if not isinstance(exc, greenlet.GreenletExit):
                s.record_error(exc)
            raise
        finally:
            _CURRENT.reset(token)
            s.end()

    @staticmethod
    @contextmanager
    def use(span: Optional[Span]) -> Iterator[Optional[Span]]:
        """Make ``span`` current for the block without ending it.

        Example::

            >>> with SpanManager.use(None): current_span() is None
            True
        """
        token = _CURRENT.set(span)
        try:
            yield span
        finally:
            _CURRENT.reset(token)

    def flush(self, timeout: float = 5.0) -> None:
        """Ask every processor that can to send what it holds (bounded by ``timeout`` each)."""
        for p in self.processors:
            fn: Optional[Callable[..., Any]] = getattr(p, "flush", None)
            if fn is not None:
                fn(timeout)

    def shutdown(self, timeout: float = 5.0) -> None:
        """Flush and stop every processor that can be stopped."""
        for p in self.processors:
            fn: Optional[Callable[..., Any]] = getattr(p, "shutdown", None)
            if fn is not None:
                fn(timeout)

    def __repr__(self) -> str:
        return f"<SpanManager {self.service_name!r} sampler={self.sampler!r} processors={len(self.processors)}>"


_default: Optional[SpanManager] = None


def get_default_manager() -> SpanManager:
    """The process-wide manager ``@traced`` uses when given none (made on first use, default sampler).

    Example::

        >>> get_default_manager() is get_default_manager()
        True
    """
    global _default
    if _default is None:
        _default = SpanManager()
    return _default


def set_default_manager(manager: Optional[SpanManager]) -> None:
    """Replace the process-wide manager (None: a fresh one on next use)."""
    global _default
    _default = manager


# ---------------------------------------------------------------------- the opt-in spawn hook
_hook_state: dict[str, Any] = {"installed": False, "previous": None}


def _spawn_trace(event: str, args: Any) -> None:
    if event == "switch" or event == "throw":
        target = args[1]
        # A greenlet that never ran and has no context of its own: give it a copy of its spawner's.
        if target.gr_frame is None and not target.dead and target.gr_context is None:
            ref = getattr(target, "spawning_greenlet", None)
            spawner = ref() if ref is not None else None
            ctx = spawner.gr_context if spawner is not None else None
            if ctx is not None:
                target.gr_context = ctx.copy()
    previous = _hook_state["previous"]
    if previous is not None:
        previous(event, args)


def install_spawn_hook() -> bool:
    """Let greenlets started with plain ``gevent.spawn`` inherit their spawner's contextvars (and so its span).

    Call once, early. Returns False when it was already installed. Another
    ``greenlet.settrace`` function already set keeps being called.

    Example::

        >>> install_spawn_hook(), install_spawn_hook(), uninstall_spawn_hook()
        (True, False, True)
    """
    if _hook_state["installed"]:
        return False
    _hook_state["previous"] = greenlet.settrace(_spawn_trace)
    _hook_state["installed"] = True
    return True


def uninstall_spawn_hook() -> bool:
    """Remove the hook of :func:`install_spawn_hook` (restoring any previous trace function); False if none."""
    if not _hook_state["installed"]:
        return False
    greenlet.settrace(_hook_state["previous"])
    _hook_state["installed"] = False
    _hook_state["previous"] = None
    return True
