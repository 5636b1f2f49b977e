"""``@traced``: a span around any call site, bare or with options (layer L4).

``@traced`` names the span after the function's qualified name;
``@traced("name")`` or ``@traced(name="name", kind=..., attributes=...,
manager=...)`` set it. The span is a child of the caller's current span and
current while the function runs, so requests made inside it are its
children; an exception is recorded on it and re-raised. Without
``manager=`` the process-wide :func:`~nexus_green.tracing.get_default_manager`
is looked up at each call (so ``set_default_manager`` later still applies).

Example::

    >>> from nexus_green.tracing import SpanManager, AlwaysOn, InMemorySpans, set_default_manager
    >>> spans = InMemorySpans()
    >>> set_default_manager(SpanManager(sampler=AlwaysOn(), processors=[spans]))
    >>> @traced
    ... def load(): return 1
    >>> @traced("checkout", attributes={"shop": "eu"})
    ... def checkout(): return load() + 1
    >>> checkout()
    2
    >>> [(s.name, s.attributes) for s in spans.spans][-1]
    ('checkout', {'shop': 'eu'})
    >>> set_default_manager(None)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, Optional, TypeVar, Union

from ..decorating import check_options, is_bare
from .manager import SpanManager, get_default_manager
from .span import SpanKind

__all__ = ["traced"]

F = TypeVar("F", bound=Callable[..., Any])
_OPTIONS = ("name", "kind", "attributes", "manager")


def _wrap(
    fn: F, name: str, kind: SpanKind, attributes: Optional[Mapping[str, Any]], manager: Optional[SpanManager]
) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        m = manager if manager is not None else get_default_manager()
        with m.span(name, kind=kind, attributes=attributes):
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def traced(first: Union[Callable[..., Any], str, None] = None, /, **options: Any) -> Any:
    """Trace calls of the decorated function (see the module docstring).

    Example::

        >>> from nexus_green.tracing import SpanManager, AlwaysOn, InMemorySpans
        >>> kept = InMemorySpans()
        >>> @traced("lookup", manager=SpanManager(sampler=AlwaysOn(), processors=[kept]))
        ... def lookup(key): return key.upper()
        >>> lookup("a"), kept.names()
        ('A', ['lookup'])
    """
    check_options("traced", options, _OPTIONS)
    if is_bare(first, options):
        assert callable(first)
        return _wrap(first, getattr(first, "__qualname__", repr(first)), SpanKind.INTERNAL, None, None)
    if first is not None and not isinstance(first, str):
        raise TypeError(f"@traced takes a span name (str) as its first argument, got {first!r}")
    if first is not None and "name" in options:
        raise TypeError("@traced got the span name twice: positionally and as name=")
    name: Optional[str] = first if first is not None else options.get("name")
    if name is not None and not isinstance(name, str):
        raise TypeError(f"@traced name must be a str, got {name!r}")
    kind = SpanKind(options.get("kind", SpanKind.INTERNAL))
    attributes = options.get("attributes")
    manager = options.get("manager")

    def decorate(fn: F) -> F:
        span_name = str(name or getattr(fn, "__qualname__", repr(fn)))
        return _wrap(fn, span_name, kind, attributes, manager)

    return decorate
