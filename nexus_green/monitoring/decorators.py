"""``@timed(name)`` and ``@counted(name)``: measure any call site into a metrics registry.

This module owns the two measuring decorators. Each works on any callable
(not only nexus_green calls), bare (``@timed``: the histogram is named after
the function, see :func:`metric_name_for`; ``@counted``: the counter is that
name plus ``.calls``, so both can decorate one function) or called (``@timed("db.query")``,
``@timed(registry=...)``), and, given a name, as a context manager on any block:

* :class:`timed` records the duration of every call (including calls that
  raise) into the histogram ``name`` (seconds), read from the injected clock.
* :class:`counted` increments the counter ``name`` on every call, and the
  counter ``name + ".errors"`` (tagged with the exception class) when the
  call raises.

Both default to :data:`~nexus_green.monitoring.registry.default_registry`, so
the figures land next to the connection metrics a PerformanceMonitor on the
same registry exports. A ``gevent.Timeout`` or ``GreenletExit`` (BaseException)
passing through counts as an error and is re-raised untouched.

Example::

    >>> from nexus_green.clock import FakeClock
    >>> from nexus_green.monitoring.registry import MetricsRegistry
    >>> reg, clock = MetricsRegistry(), FakeClock()
    >>> @timed("db.query", registry=reg, clock=clock)
    ... @counted("db.query.calls", registry=reg)
    ... def query():
    ...     clock.advance(0.25)
    ...     return "rows"
    >>> query(), reg.counter("db.query.calls").value
    ('rows', 1)
    >>> with timed("db.block", registry=reg, clock=clock):
    ...     clock.advance(1.0)
    >>> reg.histogram("db.block").sketch.max
    1.0
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Optional, TypeVar, cast, overload

from greenlet import getcurrent

from ..clock import SYSTEM_CLOCK, Clock
from .registry import Counter, Histogram, MetricsRegistry, default_registry

__all__ = ["timed", "counted", "metric_name_for"]

F = TypeVar("F", bound=Callable[..., Any])

_NOT_NAME = re.compile(r"[^a-z0-9_]+")


def metric_name_for(fn: Callable[..., Any]) -> str:
    """The metric name of a function decorated bare: its module and qualified name, as lower-case dotted words.

    Example::

        >>> def fetch_user(): ...
        >>> metric_name_for(fetch_user)
        'nexus_green.monitoring.decorators.fetch_user'
        >>> class Repo:
        ...     def Load(self): ...
        >>> metric_name_for(Repo.Load).endswith("repo.load")
        True
    """
    dotted = f"{getattr(fn, '__module__', None) or ''}.{getattr(fn, '__qualname__', None) or type(fn).__name__}"
    words = [_NOT_NAME.sub("_", part.lower()).strip("_") for part in dotted.split(".")]
    name = ".".join(w for w in words if w) or "call"
    return name if name[0].isalpha() else f"fn_{name}"


def _nameless(what: str) -> TypeError:
    return TypeError(f'{what}() as a context manager needs a name: with {what}("db.block"): ...')


class timed:
    """Record how long each call (or ``with`` block) takes into histogram ``name``.

    The start time of a ``with`` block is kept per greenlet, so one instance
    may be shared by concurrent greenlets.

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> reg, clock = MetricsRegistry(), FakeClock()
        >>> t = timed("step", registry=reg, clock=clock, tags={"kind": "a"})
        >>> with t:
        ...     clock.advance(0.5)
        >>> reg.histogram("step", {"kind": "a"}).count
        1
    """

    @overload
    def __new__(cls, name: F, /) -> F: ...  # type: ignore[misc]

    @overload
    def __new__(
        cls,
        name: Optional[str] = None,
        *,
        registry: Optional[MetricsRegistry] = None,
        tags: Optional[Mapping[str, object]] = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> timed: ...

    def __new__(cls, name: Any = None, **options: Any) -> Any:
        # ``@timed`` bare: the function itself came as the name.
        if callable(name):
            if options:
                raise TypeError('timed(fn, ...) is not a form: write @timed, @timed("name") or @timed(registry=...)')
            return cls(metric_name_for(name))(name)
        return super().__new__(cls)

    def __init__(
        self,
        name: Optional[str] = None,
        *,
        registry: Optional[MetricsRegistry] = None,
        tags: Optional[Mapping[str, object]] = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f'timed() takes a metric name, not {name!r}: write @timed or @timed("db.query")')
        self.registry = registry if registry is not None else default_registry
        self.name = name
        self.tags = tags
        self.histogram: Optional[Histogram] = (
            self.registry.histogram(name, tags, unit="seconds") if name is not None else None
        )
        self.clock = clock
        self._starts: dict[Any, list[float]] = {}

    def __call__(self, fn: F) -> F:
        if self.histogram is None:  # @timed() or @timed(registry=...): named after the function
            return timed(metric_name_for(fn), registry=self.registry, tags=self.tags, clock=self.clock)(fn)
        hist, now = self.histogram, self.clock.now

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = now()
            try:
                return fn(*args, **kwargs)
            finally:
                hist.record(now() - t0)

        return cast(F, wrapper)

    def __enter__(self) -> timed:
        if self.histogram is None:
            raise _nameless("timed")
        self._starts.setdefault(getcurrent(), []).append(self.clock.now())
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        g = getcurrent()
        stack = self._starts[g]
        t0 = stack.pop()
        if not stack:
            del self._starts[g]
        assert self.histogram is not None  # __enter__ refused a nameless one
        self.histogram.record(self.clock.now() - t0)


class counted:
    """Count calls (or ``with`` blocks) into counter ``name``; failures also into ``name.errors``.

    Example::

        >>> reg = MetricsRegistry()
        >>> @counted("jobs", registry=reg)
        ... def job(ok):
        ...     if not ok:
        ...         raise KeyError("x")
        >>> job(True)
        >>> try:
        ...     job(False)
        ... except KeyError:
        ...     pass
        >>> reg.counter("jobs").value, reg.counter("jobs.errors", {"class": "KeyError"}).value
        (2, 1)
    """

    @overload
    def __new__(cls, name: F, /) -> F: ...  # type: ignore[misc]

    @overload
    def __new__(
        cls,
        name: Optional[str] = None,
        *,
        registry: Optional[MetricsRegistry] = None,
        tags: Optional[Mapping[str, object]] = None,
    ) -> counted: ...

    def __new__(cls, name: Any = None, **options: Any) -> Any:
        # ``@counted`` bare: the function itself came as the name.
        if callable(name):
            if options:
                raise TypeError(
                    'counted(fn, ...) is not a form: write @counted, @counted("name") or @counted(registry=...)'
                )
            return cls(metric_name_for(name) + ".calls")(name)
        return super().__new__(cls)

    def __init__(
        self,
        name: Optional[str] = None,
        *,
        registry: Optional[MetricsRegistry] = None,
        tags: Optional[Mapping[str, object]] = None,
    ) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f'counted() takes a metric name, not {name!r}: write @counted or @counted("jobs")')
        self.registry = registry if registry is not None else default_registry
        self.name = name
        self.tags = dict(tags or {})
        self.counter: Optional[Counter] = None
        if name is not None:
            self.counter = self.registry.counter(name, tags, unit="calls")
            # Declared up front: a clash surfaces here, not while re-raising a caller's error.
            self.registry.declare("counter", name + ".errors", unit="calls", help=f"calls of {name} that raised")

    def _error(self, exc_type: type[BaseException]) -> None:
        self.registry.counter(f"{self.name}.errors", {**self.tags, "class": exc_type.__name__}).value += 1

    def __call__(self, fn: F) -> F:
        if self.counter is None:  # @counted() or @counted(registry=...): named after the function
            return counted(metric_name_for(fn) + ".calls", registry=self.registry, tags=self.tags)(fn)
        counter = self.counter

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counter.value += 1
            try:
                return fn(*args, **kwargs)
            except BaseException as exc:
                self._error(type(exc))
                raise

        return cast(F, wrapper)

    def __enter__(self) -> counted:
        if self.counter is None:
            raise _nameless("counted")
        self.counter.value += 1
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc_type is not None:
            self._error(exc_type)
