"""Process resource readings: RSS, CPU %, open file descriptors (no extra dependency).

This module owns how the process's own resource figures are read. On Linux
they come from ``/proc/self`` (``statm`` for RSS, ``fd/`` for descriptors);
CPU time comes from :func:`os.times` (user + system), turned into a percentage
of one core between two readings. Where ``/proc`` is missing (macOS), a
figure that cannot be read is None rather than a guess; psutil is not needed
for these three numbers.

Reading costs one small file read and one directory listing: the monitor does
it once per history interval, never on a request.

Example::

    >>> from nexus_green.clock import FakeClock
    >>> clock = FakeClock()
    >>> r = ResourceSampler(clock=clock)
    >>> first = r.sample()
    >>> first.cpu_percent is None          # needs two readings
    True
    >>> clock.advance(1.0)
    >>> r.sample().cpu_percent >= 0.0
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

from ..clock import SYSTEM_CLOCK, Clock

__all__ = ["ResourceSample", "ResourceSampler", "read_rss_bytes", "count_open_fds"]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def read_rss_bytes(path: str = "/proc/self/statm") -> Optional[int]:
    """Resident set size in bytes from ``statm`` (second field, in pages), or None.

    Example::

        >>> rss = read_rss_bytes()
        >>> rss is None or rss > 0
        True
        >>> read_rss_bytes("/nonexistent/statm") is None
        True
    """
    try:
        with open(path, "rb") as f:
            fields = f.read().split()
        return int(fields[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return None


def count_open_fds(path: str = "/proc/self/fd") -> Optional[int]:
    """Number of open file descriptors, or None where ``/proc`` is missing.

    Example::

        >>> n = count_open_fds()
        >>> n is None or n >= 3
        True
    """
    try:
        return len(os.listdir(path))
    except OSError:
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class ResourceSample:
    """One reading: ``rss_bytes``, ``cpu_percent`` (of one core), ``open_fds`` (None when unknown).

    Example::

        >>> ResourceSample(rss_bytes=1, cpu_percent=None, open_fds=3).open_fds
        3
    """

    rss_bytes: Optional[int]
    cpu_percent: Optional[float]
    open_fds: Optional[int]


class ResourceSampler:
    """Takes :class:`ResourceSample` readings; CPU % is measured between consecutive samples.

    ``cpu_times`` (default: user + system seconds from :func:`os.times`) and
    the file paths are injectable for tests.

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> clock, cpu = FakeClock(), iter([1.0, 1.5])
        >>> r = ResourceSampler(clock=clock, cpu_times=lambda: next(cpu))
        >>> _ = r.sample(); clock.advance(1.0)
        >>> r.sample().cpu_percent
        50.0
    """

    def __init__(
        self,
        *,
        clock: Clock = SYSTEM_CLOCK,
        cpu_times: Optional[Callable[[], float]] = None,
        statm_path: str = "/proc/self/statm",
        fd_path: str = "/proc/self/fd",
    ) -> None:
        self.clock = clock
        self._cpu_times = cpu_times or _process_cpu_seconds
        self.statm_path = statm_path
        self.fd_path = fd_path
        self._last: Optional[tuple[float, float]] = None

    def sample(self) -> ResourceSample:
        """Read the figures now."""
        now, cpu = self.clock.now(), self._cpu_times()
        percent: Optional[float] = None
        if self._last is not None and now > self._last[0]:
            percent = max(0.0, (cpu - self._last[1]) / (now - self._last[0]) * 100.0)
        self._last = (now, cpu)
        return ResourceSample(
            rss_bytes=read_rss_bytes(self.statm_path),
            cpu_percent=percent,
            open_fds=count_open_fds(self.fd_path),
        )


def _process_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system
