"""A mergeable log-bucket quantile sketch (DDSketch-style) with a relative-error bound.

This module owns the one data structure every latency percentile in
nexus_green comes from. A value ``v > 0`` falls in bucket
``k = ceil(log(v) / log(gamma))`` with ``gamma = (1 + a) / (1 - a)``; the
bucket's representative ``2 * gamma**k / (gamma + 1)`` is within relative
error ``a`` (the ``relative_accuracy``, default 1 %) of every value in it.
So a quantile read from the sketch is within ``a`` of the exact quantile
(the sample at rank ``floor(q * (n - 1))``, i.e. "lower" interpolation) --
the guarantee of Masson, Rim and Lee, *DDSketch* (VLDB 2019).

Buckets are counts in a dict, so two sketches with the same accuracy merge
(and subtract, for "what happened since the last read") bucket by bucket.
The number of buckets is bounded by ``max_buckets``: when it is exceeded the
lowest buckets collapse into one, which only degrades the accuracy of the
smallest quantiles (the tail the operator cares about stays exact to ``a``).
Values ``<= min_value`` (default 1 ns) count as zero; negative values have
their own mirrored store.

Recording is one ``log``, one ``ceil`` and one dict update: cheap enough for
the per-request path.

Example::

    >>> s = DDSketch(relative_accuracy=0.01)
    >>> for v in range(1, 1001):
    ...     s.add(v / 1000)
    >>> s.count, round(s.sum, 3)
    (1000, 500.5)
    >>> abs(s.quantile(0.99) - 0.990) / 0.990 <= 0.01
    True
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Optional

from ..errors import ConfigurationError

__all__ = ["DDSketch", "DEFAULT_RELATIVE_ACCURACY"]

DEFAULT_RELATIVE_ACCURACY = 0.01


class DDSketch:
    """Quantile sketch with relative error at most ``relative_accuracy``.

    ``count``, ``sum``, ``min`` and ``max`` are exact; quantiles are within
    the relative-error bound (and clamped to ``[min, max]``).

    Example::

        >>> a, b = DDSketch(), DDSketch()
        >>> a.add(1.0); b.add(3.0); b.add(2.0)
        >>> a.merge(b)
        >>> a.count, a.min, a.max
        (3, 1.0, 3.0)
        >>> abs(a.quantile(0.5) - 2.0) <= 0.01 * 2.0
        True
    """

    __slots__ = (
        "relative_accuracy",
        "gamma",
        "_multiplier",
        "min_value",
        "max_buckets",
        "_pos",
        "_neg",
        "zero_count",
        "count",
        "sum",
        "min",
        "max",
    )

    def __init__(
        self,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        *,
        min_value: float = 1e-9,
        max_buckets: int = 2048,
    ) -> None:
        if not 0.0 < relative_accuracy < 1.0:
            raise ConfigurationError(f"relative_accuracy must be in (0, 1), got {relative_accuracy!r}")
        if not min_value > 0.0:
            raise ConfigurationError(f"min_value must be positive, got {min_value!r}")
        if max_buckets < 2:
            raise ConfigurationError(f"max_buckets must be at least 2, got {max_buckets!r}")
        self.relative_accuracy = float(relative_accuracy)
        self.gamma = (1.0 + relative_accuracy) / (1.0 - relative_accuracy)
        self._multiplier = 1.0 / math.log(self.gamma)
        self.min_value = float(min_value)
        self.max_buckets = max_buckets
        self._pos: dict[int, int] = {}
        self._neg: dict[int, int] = {}
        self.zero_count = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    # ------------------------------------------------------------------ recording
    def add(self, value: float) -> None:
        """Record one value (the per-request path: keep it lean)."""
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if value > self.min_value:
            store = self._pos
            key = math.ceil(math.log(value) * self._multiplier)
        elif value < -self.min_value:
            store = self._neg
            key = math.ceil(math.log(-value) * self._multiplier)
        else:
            self.zero_count += 1
            return
        store[key] = store.get(key, 0) + 1
        if len(store) > self.max_buckets:
            self._collapse(store)

    def add_many(self, values: Sequence[float]) -> None:
        """Record many values at once; the bucketing loop runs in C (map/Counter).

        Equivalent to calling :meth:`add` for each value. Example::

            >>> a, b = DDSketch(), DDSketch()
            >>> vals = [0.001, 0.002, 0.002, 0.5]
            >>> a.add_many(vals)
            >>> for v in vals:
            ...     b.add(v)
            >>> a.count == b.count and a.quantile(0.5) == b.quantile(0.5)
            True
        """
        if not values:
            return
        low = min(values)
        if low <= self.min_value:  # zeros or negatives: take the general path
            for v in values:
                self.add(v)
            return
        self.count += len(values)
        self.sum += sum(values)
        if low < self.min:
            self.min = low
        high = max(values)
        if high > self.max:
            self.max = high
        store = self._pos
        keys = map(math.ceil, map(operator.mul, map(math.log, values), repeat(self._multiplier)))
        for key, n in Counter(keys).items():
            store[key] = store.get(key, 0) + n
        if len(store) > self.max_buckets:
            self._collapse(store)

    def _collapse(self, store: dict[int, int]) -> None:
        # Fold the lowest keys into one so the store keeps max_buckets keys.
        keys = sorted(store)
        excess = len(keys) - self.max_buckets
        target = keys[excess]
        for k in keys[:excess]:
            store[target] += store.pop(k)

    # ------------------------------------------------------------------ combining
    def _check_compatible(self, other: DDSketch) -> None:
        if not isinstance(other, DDSketch):
            raise TypeError(f"can only combine with a DDSketch, not {type(other).__name__}")
        if other.relative_accuracy != self.relative_accuracy or other.min_value != self.min_value:
            raise ConfigurationError(
                "cannot combine sketches with different relative_accuracy/min_value: "
                f"{self.relative_accuracy}/{self.min_value} vs {other.relative_accuracy}/{other.min_value}"
            )

    def merge(self, other: DDSketch) -> None:
        """Add every value of ``other`` into this sketch (same accuracy required)."""
        self._check_compatible(other)
        if other.count == 0:
            return
        for mine, theirs in ((self._pos, other._pos), (self._neg, other._neg)):
            for k, c in theirs.items():
                mine[k] = mine.get(k, 0) + c
            if len(mine) > self.max_buckets:
                self._collapse(mine)
        self.zero_count += other.zero_count
        self.count += other.count
        self.sum += other.sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)

    def copy(self) -> DDSketch:
        """An independent copy.

        Example::

            >>> s = DDSketch(); s.add(1.0); c = s.copy(); c.add(2.0)
            >>> s.count, c.count
            (1, 2)
        """
        c = DDSketch(self.relative_accuracy, min_value=self.min_value, max_buckets=self.max_buckets)
        c._pos = dict(self._pos)
        c._neg = dict(self._neg)
        c.zero_count = self.zero_count
        c.count = self.count
        c.sum = self.sum
        c.min = self.min
        c.max = self.max
        return c

    def since(self, earlier: DDSketch) -> DDSketch:
        """The values added after ``earlier`` was copied from this sketch.

        ``earlier`` must be a past :meth:`copy` of this sketch: counts only
        grow, so subtracting bucket by bucket leaves exactly the new values.
        ``min``/``max`` of the result are the bounds of its non-empty buckets.

        Example::

            >>> s = DDSketch(); s.add(1.0); before = s.copy()
            >>> s.add(5.0); s.add(5.0)
            >>> d = s.since(before)
            >>> d.count, round(d.quantile(0.5), 1)
            (2, 5.0)
        """
        self._check_compatible(earlier)
        if earlier.count > self.count:
            raise ConfigurationError(
                f"sketch holds {self.count} values but 'earlier' holds {earlier.count}: it is not a past copy"
            )
        d = DDSketch(self.relative_accuracy, min_value=self.min_value, max_buckets=self.max_buckets)
        for mine, theirs, out in ((self._pos, earlier._pos, d._pos), (self._neg, earlier._neg, d._neg)):
            for k, c in mine.items():
                left = c - theirs.get(k, 0)
                if left > 0:
                    out[k] = left
        d.zero_count = max(0, self.zero_count - earlier.zero_count)
        d.count = self.count - earlier.count
        d.sum = self.sum - earlier.sum
        if d.count:
            lows: list[float] = []
            highs: list[float] = []
            if d._neg:
                lows.append(-self._value(max(d._neg)))
                highs.append(-self._value(min(d._neg)))
            if d.zero_count:
                lows.append(0.0)
                highs.append(0.0)
            if d._pos:
                lows.append(self._value(min(d._pos)))
                highs.append(self._value(max(d._pos)))
            # Clamp to the parent's exact bounds: bucket values can overshoot them.
            d.min = max(min(lows), self.min)
            d.max = min(max(highs), self.max)
        return d

    # ------------------------------------------------------------------ reading
    def _value(self, key: int) -> float:
        # The bucket's representative: within relative_accuracy of all its values.
        return 2.0 * self.gamma**key / (self.gamma + 1.0)

    def quantile(self, q: float) -> Optional[float]:
        """The ``q``-quantile (0 <= q <= 1), or None when the sketch is empty."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[Optional[float]]:
        """Several quantiles in one pass over the buckets (``qs`` in any order).

        Example::

            >>> s = DDSketch()
            >>> for v in (1, 2, 3, 4, 100):
            ...     s.add(v)
            >>> [round(x) for x in s.quantiles([0.0, 0.5, 1.0])]
            [1, 3, 100]
        """
        for q in qs:
            if not 0.0 <= q <= 1.0:
                raise ConfigurationError(f"quantile must be within [0, 1], got {q!r}")
        if self.count == 0:
            return [None for _ in qs]
        # Buckets in ascending value order: negatives (largest key first), zero, positives.
        order: list[tuple[float, int]] = [(-self._value(k), c) for k, c in sorted(self._neg.items(), reverse=True)]
        if self.zero_count:
            order.append((0.0, self.zero_count))
        order.extend((self._value(k), c) for k, c in sorted(self._pos.items()))
        ranked = sorted(range(len(qs)), key=lambda i: qs[i])
        out: list[Optional[float]] = [None] * len(qs)
        idx = 0
        running = 0
        for i in ranked:
            rank = qs[i] * (self.count - 1)
            while idx < len(order) - 1 and running + order[idx][1] <= rank:
                running += order[idx][1]
                idx += 1
            if qs[i] >= 1.0:
                out[i] = self.max  # the extremes are known exactly
            elif qs[i] <= 0.0:
                out[i] = self.min
            else:
                out[i] = min(max(order[idx][0], self.min), self.max)
        return out

    @property
    def buckets(self) -> int:
        """Number of non-empty buckets (memory is proportional to it)."""
        return len(self._pos) + len(self._neg) + (1 if self.zero_count else 0)

    def clear(self) -> None:
        """Forget every value."""
        self._pos.clear()
        self._neg.clear()
        self.zero_count = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    @classmethod
    def from_values(cls, values: Iterable[float], relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY) -> DDSketch:
        """A sketch holding ``values``.

        Example::

            >>> DDSketch.from_values([3.0, 1.0, 2.0]).count
            3
        """
        s = cls(relative_accuracy)
        for v in values:
            s.add(v)
        return s

    def __repr__(self) -> str:
        return f"<DDSketch count={self.count} buckets={self.buckets} relative_accuracy={self.relative_accuracy}>"
