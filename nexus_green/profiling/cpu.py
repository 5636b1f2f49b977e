"""PerformanceProfiler: deterministic profiling with cProfile/pstats, as a context manager and a decorator.

cProfile hooks every call of the thread, so under gevent it sees every
greenlet that runs while it is enabled, and a function's cumulative time
includes the time its greenlet was parked (waiting for the network): read
``tottime`` for CPU spent in a function's own code. It costs several times
the sampler (:mod:`nexus_green.profiling.sampler`): use it on a bounded piece
of work, the sampler on a running service.

:func:`profiled` works bare (``@profiled``) and called
(``@profiled(sort="tottime", limit=10)``); the wrapper's ``profiler``
attribute holds the :class:`PerformanceProfiler` that accumulated every call.

Example::

    >>> @profiled
    ... def work(n):
    ...     return sum(i * i for i in range(n))
    >>> work(1000)
    332833500
    >>> work.profiler.calls, any("work" in spot.function for spot in work.profiler.hot_spots())
    (1, True)
"""

from __future__ import annotations

import cProfile
import functools
import io
import os
import pstats
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

from ..decorating import check_options, is_bare

__all__ = ["PerformanceProfiler", "FunctionCost", "profiled"]

F = TypeVar("F", bound=Callable[..., Any])
_SORTS = ("cumulative", "tottime", "calls", "ncalls", "time", "cumtime", "name", "filename", "pcalls")


@dataclass(frozen=True, slots=True, kw_only=True)
class FunctionCost:
    """One row of a deterministic profile: calls, own time and time including callees (seconds).

    Example::

        >>> FunctionCost(function="m.py:1(f)", calls=2, tottime=0.5, cumtime=1.0).per_call
        0.5
    """

    function: str
    calls: int
    tottime: float
    cumtime: float

    @property
    def per_call(self) -> float:
        """Cumulative time per call."""
        return self.cumtime / self.calls if self.calls else 0.0


class PerformanceProfiler:
    """cProfile around a block or a function; the figures accumulate over every use.

    ``sort`` orders :meth:`report` and :meth:`hot_spots` (a pstats key:
    ``cumulative``, ``tottime``...); ``limit`` is how many rows they show;
    ``output`` is a path the raw pstats data is dumped to after each use
    (``python -m pstats FILE``, snakeviz).

    Example::

        >>> prof = PerformanceProfiler(sort="tottime", limit=5)
        >>> with prof:
        ...     _ = sorted(range(10000), key=lambda i: -i)
        >>> prof.calls, "function calls" in prof.report()
        (1, True)
    """

    def __init__(self, *, sort: str = "cumulative", limit: int = 20, output: Optional[str] = None) -> None:
        if sort not in _SORTS:
            raise ValueError(f"sort must be one of {', '.join(_SORTS)}, got {sort!r}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        self.sort = sort
        self.limit = limit
        self.output = output
        self.calls = 0
        self._profile = cProfile.Profile()
        self._depth = 0

    def __enter__(self) -> PerformanceProfiler:
        if self._depth == 0:
            self._profile.enable()
        self._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        self._depth -= 1
        if self._depth:
            return  # a recursive call of a decorated function: the outer one measures
        self._profile.disable()
        self.calls += 1
        if self.output:
            self._profile.dump_stats(self.output)

    def __call__(self, fn: F) -> F:
        """Use the profiler as a decorator: every call of ``fn`` runs inside it."""

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self:
                return fn(*args, **kwargs)

        wrapper.profiler = self  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    def stats(self) -> Optional[pstats.Stats]:
        """The pstats view of what was measured, or None before the first use."""
        if not self.calls:
            return None
        return pstats.Stats(self._profile, stream=io.StringIO()).sort_stats(self.sort)

    def report(self, limit: Optional[int] = None) -> str:
        """pstats' table of the top ``limit`` functions (``self.limit`` when None)."""
        stats = self.stats()
        if stats is None:
            return "no calls profiled yet\n"
        out = io.StringIO()
        stats.stream = out  # type: ignore[attr-defined]
        stats.print_stats(limit or self.limit)
        return out.getvalue()

    def hot_spots(self, limit: Optional[int] = None) -> list[FunctionCost]:
        """The top ``limit`` functions in ``sort`` order, as :class:`FunctionCost` rows."""
        stats = self.stats()
        if stats is None:
            return []
        rows = []
        for func in stats.fcn_list[: limit or self.limit]:  # type: ignore[attr-defined]
            _cc, ncalls, tottime, cumtime, _callers = stats.stats[func]  # type: ignore[attr-defined]
            filename, line, name = func
            where = f"{os.path.basename(filename)}:{line}({name})" if line else name
            rows.append(FunctionCost(function=where, calls=ncalls, tottime=tottime, cumtime=cumtime))
        return rows

    def __repr__(self) -> str:
        return f"<PerformanceProfiler sort={self.sort} calls={self.calls}>"


def profiled(fn: Any = None, /, **options: Any) -> Any:
    """Profile every call of a function with its own :class:`PerformanceProfiler` (bare or called).

    Options are those of :class:`PerformanceProfiler` (``sort``, ``limit``,
    ``output``); the wrapper's ``profiler`` attribute holds it.

    Example::

        >>> @profiled(sort="tottime", limit=3)
        ... def f():
        ...     return len([i for i in range(100)])
        >>> f(), f.profiler.sort, len(f.profiler.hot_spots()) <= 3
        (100, 'tottime', True)
        >>> profiled(colour="red")
        Traceback (most recent call last):
        ...
        nexus_green.decorating.UnknownOption: unknown profiled option(s): colour; valid options: limit, output, sort
    """
    if is_bare(fn, options):
        return PerformanceProfiler()(fn)
    if fn is not None:
        raise TypeError("@profiled takes options by keyword only: write @profiled(sort='tottime')")
    check_options("profiled", options, ("sort", "limit", "output"))
    return PerformanceProfiler(**options)
