"""TimerSamples: a bounded, uniform sample of one histogram's raw values between two StatsD flushes.

This module owns the raw values behind StatsD's timer lines
(``name:12.5|ms|@0.25``). A histogram's sketch answers quantiles, but StatsD
wants the values themselves and computes its own aggregates; so while a
StatsD sink runs, every histogram also keeps a sample of what it recorded
since the last flush.

The sample is systematic with a power-of-two stride: every value is kept
until ``2 * cap`` are held, then every other one is dropped (from a random
start) and from then on only every second value is kept, and so on. Each value
of the interval is kept with the same probability, the work is a slice in C
per batch, and memory stays under ``2 * cap`` values. :meth:`TimerSamples.drain`
returns at most ``cap`` values and the rate StatsD must scale them by
(values sent / values recorded), so the server's count is the real count.

Example::

    >>> import random
    >>> s = TimerSamples(cap=100, rng=random.Random(7))
    >>> for i in range(1000):
    ...     s.add(i / 1000)
    >>> values, rate = s.drain()
    >>> len(values) <= 100, rate == len(values) / 1000
    (True, True)
    >>> s.drain()
    ([], 1.0)
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Optional

__all__ = ["TimerSamples"]


class TimerSamples:
    """Up to ``cap`` raw values per flush, uniformly sampled, with the count they stand for."""

    __slots__ = ("cap", "rng", "values", "seen", "stride", "_skip")

    def __init__(self, cap: int = 100, *, rng: Optional[random.Random] = None) -> None:
        self.cap = max(1, cap)
        self.rng = rng or random.Random()
        self.values: list[float] = []
        self.seen = 0  # values recorded since the last drain (what the sample stands for)
        self.stride = 1
        self._skip = 0

    def add(self, value: float) -> None:
        """Record one value (kept or not, it counts)."""
        self.seen += 1
        if self._skip:
            self._skip -= 1
            return
        self._skip = self.stride - 1
        values = self.values
        values.append(value)
        if len(values) >= 2 * self.cap:
            self._thin()

    def add_many(self, values: Sequence[float], *, seen: Optional[int] = None) -> None:
        """Record a batch; ``seen`` is how many values it stands for when it is itself a sample."""
        n = len(values)
        self.seen += n if seen is None else seen
        if not n:
            return
        skip = self._skip
        if skip >= n:
            self._skip = skip - n
            return
        stride = self.stride
        taken = values[skip::stride]
        self._skip = (skip - n) % stride
        self.values.extend(float(v) for v in taken)
        while len(self.values) >= 2 * self.cap:
            self._thin()

    def note_seen(self, n: int) -> None:
        """Count ``n`` more recorded values that were sampled away before reaching :meth:`add_many`."""
        self.seen += n

    def _thin(self) -> None:
        self.values = self.values[self.rng.randrange(2) :: 2]
        self.stride *= 2

    def drain(self) -> tuple[list[float], float]:
        """``(values, rate)`` since the last drain, at most ``cap`` values; then start a new interval."""
        values, seen = self.values, self.seen
        if len(values) > self.cap:
            values = self.rng.sample(values, self.cap)
        self.values, self.seen, self.stride, self._skip = [], 0, 1, 0
        if not values:
            return [], 1.0
        return values, min(1.0, len(values) / seen) if seen else 1.0

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        return f"<TimerSamples {len(self.values)}/{self.cap} of {self.seen} stride={self.stride}>"
