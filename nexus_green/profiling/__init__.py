"""Profiling tools (an app layer, above the client): where the CPU, the memory and the system calls go.

* :class:`SamplingProfiler` -- a native sampler thread that sees greenlets;
  collapsed stacks (flame graphs) and speedscope JSON.
* :class:`PerformanceProfiler` and :func:`profiled` -- cProfile/pstats as a
  context manager and a decorator.
* :class:`MemoryProfiler` -- tracemalloc snapshots, top allocation sites,
  leak suspects.
* :class:`IOProfiler` -- writes, reads, bytes and frames from the transport's
  own counters.
* :class:`ProfilingReport` -- hot spots, allocations, I/O and suggestions from
  rules, as text, JSON and Markdown.
* ``nexus-green profile`` -- :mod:`nexus_green.profiling.cli`.

Library code never imports this package. docs/profiling.md has the guide and
the measured overhead.

Example::

    >>> with SamplingProfiler(interval=0.001) as prof:
    ...     _ = sum(i * i for i in range(300_000))
    >>> prof.samples > 0
    True
"""

from .cpu import FunctionCost, PerformanceProfiler, profiled
from .io import IOFigures, IOProfiler
from .memory import AllocationSite, MemoryProfiler
from .report import RULES, HotSpot, ProfilingReport, Suggestion
from .sampler import SamplerError, SamplingProfiler, parse_collapsed

__all__ = [
    "AllocationSite",
    "FunctionCost",
    "HotSpot",
    "IOFigures",
    "IOProfiler",
    "MemoryProfiler",
    "PerformanceProfiler",
    "ProfilingReport",
    "RULES",
    "SamplerError",
    "SamplingProfiler",
    "Suggestion",
    "parse_collapsed",
    "profiled",
]
