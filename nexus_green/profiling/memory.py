"""MemoryProfiler: tracemalloc snapshots, the top allocation sites, and sites that keep growing (leak suspects).

Each :meth:`MemoryProfiler.snapshot` reduces a tracemalloc snapshot to
``{site: (bytes, blocks)}`` (a site is ``file:line`` of the allocating
line, or a short traceback with ``frames > 1``) and keeps only the last
``keep`` of them, so watching a service for hours holds a few small dicts,
not every snapshot. A *leak suspect* is a site whose live size grew in each
of the last ``consecutive`` intervals between snapshots, by at least
``min_growth`` bytes in all: a cache warming up grows then stops, a leak keeps
growing.

tracemalloc slows allocation-heavy code by about 2x while it traces: use it
on a bounded run (the ``nexus-green profile --memory`` option).

Example::

    >>> hoard = []
    >>> with MemoryProfiler(consecutive=3, min_growth=10_000) as mem:
    ...     for _ in range(4):
    ...         hoard.extend(bytearray(1000) for _ in range(100))
    ...         _ = mem.snapshot()
    >>> suspect = mem.leak_suspects()[0]
    >>> suspect.size >= 300_000, suspect.count >= 300
    (True, True)
"""

from __future__ import annotations

import linecache
import os
import tracemalloc
from collections import deque
from dataclasses import dataclass

__all__ = ["AllocationSite", "MemoryProfiler"]

# tracemalloc and the profilers allocate to take the snapshot itself: not the program's memory.
_IGNORED = (
    tracemalloc.__file__,
    linecache.__file__,
    os.path.join(os.path.dirname(__file__), "*"),
    "<frozen importlib._bootstrap>",
    "<frozen importlib._bootstrap_external>",
    "<unknown>",
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocationSite:
    """Live memory at one allocation site: ``size`` bytes in ``count`` blocks (or their growth).

    Example::

        >>> AllocationSite(site="app.py:3", size=2048, count=2).per_block
        1024.0
    """

    site: str
    size: int
    count: int

    @property
    def per_block(self) -> float:
        """Average bytes per block."""
        return self.size / self.count if self.count else 0.0


class MemoryProfiler:
    """Take tracemalloc snapshots; rank allocation sites; report sites that grow across snapshots.

    ``frames`` is the traceback depth tracemalloc keeps per block (1: the
    allocating line only; more costs more); ``consecutive`` is how many
    growing intervals in a row make a leak suspect; ``min_growth`` the bytes
    they must add in all. tracemalloc is started by :meth:`start` and stopped
    by :meth:`stop` only if it was not already tracing.

    Example::

        >>> mem = MemoryProfiler().start()
        >>> data = [bytes(100) for _ in range(1000)]
        >>> top = mem.snapshot()[0]
        >>> mem.stop(); top.size >= 100_000
        True
    """

    def __init__(self, *, frames: int = 1, consecutive: int = 3, min_growth: int = 64 * 1024) -> None:
        if frames < 1 or consecutive < 1:
            raise ValueError(f"frames and consecutive must be >= 1, got {frames} and {consecutive}")
        self.frames = frames
        self.consecutive = consecutive
        self.min_growth = min_growth
        self._history: deque[dict[str, tuple[int, int]]] = deque(maxlen=consecutive + 1)
        self._started = False
        self.traced_peak = 0

    @property
    def tracing(self) -> bool:
        """True while tracemalloc traces allocations."""
        return tracemalloc.is_tracing()

    def start(self) -> MemoryProfiler:
        """Start tracing (if not already); returns ``self``."""
        if not tracemalloc.is_tracing():
            tracemalloc.start(self.frames)
            self._started = True
        return self

    def stop(self) -> None:
        """Stop tracing if :meth:`start` started it; the snapshots taken stay readable."""
        if self._started:
            self.traced_peak = max(self.traced_peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
            self._started = False

    def __enter__(self) -> MemoryProfiler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def snapshot(self, limit: int = 10) -> list[AllocationSite]:
        """Take a snapshot, keep its per-site totals, and return its top ``limit`` sites."""
        if not tracemalloc.is_tracing():
            raise RuntimeError("MemoryProfiler.snapshot() needs tracing: call start() first")
        snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, p) for p in _IGNORED])
        group = "traceback" if self.frames > 1 else "lineno"
        sites: dict[str, tuple[int, int]] = {}
        for stat in snap.statistics(group):
            sites[_site(stat.traceback)] = (stat.size, stat.count)
        self._history.append(sites)
        self.traced_peak = max(self.traced_peak, tracemalloc.get_traced_memory()[1])
        return self.top(limit)

    @property
    def snapshots(self) -> int:
        """How many snapshots are kept (at most ``consecutive + 1``)."""
        return len(self._history)

    def top(self, limit: int = 10) -> list[AllocationSite]:
        """The largest sites of the last snapshot (empty before the first)."""
        if not self._history:
            return []
        items = sorted(self._history[-1].items(), key=lambda kv: -kv[1][0])[:limit]
        return [AllocationSite(site=s, size=size, count=count) for s, (size, count) in items]

    def growth(self, limit: int = 10) -> list[AllocationSite]:
        """The sites that grew most between the last two snapshots (size and count are the differences)."""
        if len(self._history) < 2:
            return []
        before, after = self._history[-2], self._history[-1]
        diffs = []
        for site, (size, count) in after.items():
            b_size, b_count = before.get(site, (0, 0))
            if size > b_size:
                diffs.append(AllocationSite(site=site, size=size - b_size, count=count - b_count))
        diffs.sort(key=lambda s: -s.size)
        return diffs[:limit]

    def leak_suspects(self) -> list[AllocationSite]:
        """Sites that grew in each of the last ``consecutive`` intervals, by ``min_growth`` bytes or more in all.

        Size and count are the growth over those intervals; empty until
        ``consecutive + 1`` snapshots were taken.
        """
        history = list(self._history)
        if len(history) < self.consecutive + 1:
            return []
        suspects = []
        for site, (_size, count) in history[-1].items():
            sizes = [h.get(site, (0, 0))[0] for h in history]
            if all(b > a for a, b in zip(sizes, sizes[1:], strict=False)) and sizes[-1] - sizes[0] >= self.min_growth:
                first_count = history[0].get(site, (0, 0))[1]
                suspects.append(AllocationSite(site=site, size=sizes[-1] - sizes[0], count=count - first_count))
        suspects.sort(key=lambda s: -s.size)
        return suspects

    def __repr__(self) -> str:
        return f"<MemoryProfiler snapshots={len(self._history)} tracing={self.tracing}>"


def _site(traceback: tracemalloc.Traceback) -> str:
    frames = list(traceback)
    return " < ".join(f"{_short(f.filename)}:{f.lineno}" for f in reversed(frames)) if frames else "?"


def _short(filename: str) -> str:
    parts = filename.replace(os.sep, "/").split("/")
    return "/".join(parts[-2:])
