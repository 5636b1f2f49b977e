"""Bucketed sliding-window counters shared by the breaker and the retry budget.

A :class:`BucketedCounts` keeps ``width``-second buckets of a few named
counters over the last ``window`` seconds of an injected clock. Buckets are
reused in a ring, so memory is fixed and an old bucket is cleared the moment
time reaches it again: totals only ever cover the last ``window`` seconds.

Example::

    >>> from nexus_green.clock import FakeClock
    >>> clock = FakeClock()
    >>> w = BucketedCounts(window=10.0, width=1.0, fields=2, clock=clock)
    >>> w.add(0, 3); clock.advance(9.5); w.add(1)
    3
    1
    >>> w.totals()
    [3, 1]
    >>> clock.advance(1.0)      # the bucket of t=0 has left the window
    >>> w.totals()
    [0, 1]
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Optional

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError

__all__ = ["BucketedCounts"]


class BucketedCounts:
    """``fields`` counters summed over the last ``window`` seconds, in ``width``-second buckets.

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> w = BucketedCounts(window=2.0, width=1.0, fields=1, clock=FakeClock())
        >>> w.add(0), w.add(0), w.totals()
        (1, 2, [2])
    """

    __slots__ = ("_clock", "_now", "_width", "_n", "_fields", "_last", "_idx", "_counts", "_totals")

    def __init__(self, *, window: float, width: float = 1.0, fields: int = 1, clock: Clock = SYSTEM_CLOCK) -> None:
        if not window > 0 or not width > 0 or width > window:
            raise ConfigurationError(f"window ({window}) and bucket width ({width}) must be > 0 and width <= window")
        if fields < 1:
            raise ConfigurationError(f"fields must be >= 1, got {fields}")
        self._clock = clock
        # The system clock's now() is time.monotonic: call it directly (one frame less per call).
        self._now = time.monotonic if clock is SYSTEM_CLOCK else clock.now
        self._width = float(width)
        self._n = int(math.ceil(window / width))
        self._fields = fields
        self._counts: list[list[int]] = [[0] * fields for _ in range(self._n)]
        self._totals: list[int] = [0] * fields
        self._last = int(clock.now() // self._width)
        self._idx = self._last % self._n

    def _slot(self, now: Optional[float] = None) -> int:
        # Running totals, kept O(1) per call: when time reaches new buckets,
        # the ring slots they reuse are subtracted from the totals and cleared.
        # ``now`` lets a caller that already read the clock reuse its reading.
        b = int((self._now() if now is None else now) // self._width)
        last = self._last
        if b <= last:
            return self._idx
        if b - last >= self._n:
            self.reset()
        else:
            totals = self._totals
            for k in range(last + 1, b + 1):
                counts = self._counts[k % self._n]
                for f in range(self._fields):
                    totals[f] -= counts[f]
                    counts[f] = 0
        self._last = b
        self._idx = b % self._n
        return self._idx

    def add(self, field: int, n: int = 1, now: Optional[float] = None) -> int:
        """Add ``n`` to counter ``field`` in the bucket of the current time; return its new total.

        ``now`` is the current time of the window's clock when the caller has just read it.
        """
        t = self._now() if now is None else now
        # The common case inline: still in the bucket of the last call.
        self._counts[self._idx if int(t // self._width) == self._last else self._slot(t)][field] += n
        self._totals[field] += n
        return self._totals[field]

    def add_all(self, deltas: Sequence[int]) -> Sequence[int]:
        """Add ``deltas[k]`` to counter ``k``, for every counter, in one step; return the totals.

        The totals returned are a read-only view, valid until the next change.
        """
        counts = self._counts[self._slot()]
        totals = self._totals
        for k, n in enumerate(deltas):
            counts[k] += n
            totals[k] += n
        return totals

    def totals(self) -> list[int]:
        """Each counter summed over the buckets still inside the window."""
        self._slot()
        return list(self._totals)

    def total(self, field: int) -> int:
        """One counter summed over the window."""
        self._slot()
        return self._totals[field]

    def reset(self) -> None:
        """Forget every count."""
        self._counts = [[0] * self._fields for _ in range(self._n)]
        self._totals = [0] * self._fields

    def __repr__(self) -> str:
        return f"<BucketedCounts buckets={self._n}x{self._width}s totals={self.totals()}>"
