"""``@timed(name)`` and ``@counted(name)``: measure any call site into a metrics registry.

This module owns the two measuring decorators. Each works on any callable
(not only nexus_green calls) and, as a context manager, on any block:

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
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Optional, TypeVar, cast

from greenlet import getcurrent

from ..clock import SYSTEM_CLOCK, Clock
from .registry import Counter, Histogram, MetricsRegistry, default_registry

__all__ = ["timed", "counted"]

F = TypeVar("F", bound=Callable[..., Any])


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

    def __init__(
        self,
        name: str,
        *,
        registry: Optional[MetricsRegistry] = None,
        tags: Optional[Mapping[str, object]] = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.registry = registry if registry is not None else default_registry
        self.histogram: Histogram = self.registry.histogram(name, tags, unit="seconds")
        self.clock = clock
        self._starts: dict[Any, list[float]] = {}

    def __call__(self, fn: F) -> F:
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

    def __init__(
        self,
        name: str,
        *,
        registry: Optional[MetricsRegistry] = None,
        tags: Optional[Mapping[str, object]] = None,
    ) -> None:
        self.registry = registry if registry is not None else default_registry
        self.name = name
        self.tags = dict(tags or {})
        self.counter: Counter = self.registry.counter(name, tags, unit="calls")
        # Declared up front: a clash surfaces here, not while re-raising a caller's error.
        self.registry.declare("counter", name + ".errors", unit="calls", help=f"calls of {name} that raised")

    def _error(self, exc_type: type[BaseException]) -> None:
        self.registry.counter(self.name + ".errors", {**self.tags, "class": exc_type.__name__}).value += 1

    def __call__(self, fn: F) -> F:
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
        self.counter.value += 1
        return self

    def __exit__(
        self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        if exc_type is not None:
            self._error(exc_type)
