"""The server side of propagation: a SERVER span that continues the caller's trace (layer L4).

:func:`server_span` reads the context a client sent in the frame header block
(:func:`~nexus_green.tracing.context.extract`) and starts a ``SERVER`` span
as its child (a new root, sampled by the manager, when the frame carries
none). The embedded test server uses it when built with ``tracer=``.

Example::

    >>> from nexus_green.tracing import SpanManager, AlwaysOff, InMemorySpans, TraceContext, inject
    >>> spans = InMemorySpans()
    >>> m = SpanManager(sampler=AlwaysOff(), processors=[spans])
    >>> client = TraceContext(trace_id=7, span_id=9, flags=1)
    >>> with server_span(m, inject(client), "nexus.server") as s:
    ...     (s.context.trace_id, s.context.parent_span_id, s.recording)
    (7, 9, False)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

from .context import extract
from .manager import SpanManager
from .span import Span, SpanKind

__all__ = ["server_span"]


@contextmanager
def server_span(
    manager: SpanManager, headers: Mapping[str, str], name: str, attributes: Optional[Mapping[str, Any]] = None
) -> Iterator[Span]:
    """A current SERVER span for a request that carried ``headers``; ended (and errors recorded) on exit.

    The caller's span is the parent whatever the local sampler says: a
    parent-based sampler follows the caller's sampled flag.
    """
    parent = extract(headers)
    with manager.span(name, kind=SpanKind.SERVER, parent=parent, attributes=attributes) as span:
        yield span
