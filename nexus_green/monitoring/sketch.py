"""A mergeable log-linear quantile sketch (DDSketch-style) with a relative-error bound.

This module owns the one data structure every latency percentile in
nexus_green comes from. A value ``v > 0`` is written ``v = f * 2**e`` with
``f`` in ``[0.5, 1)`` (``math.frexp``); its bucket is the exponent ``e`` and
the top ``m`` bits of the mantissa, ``k = (e << m) + floor(f * 2**(m+1)) - 2**m``.
That splits every power of two into ``2**m`` buckets of equal width, each
spanning at most a factor ``1 + 2**-m``; the bucket's representative (the
harmonic mean of its bounds) is within relative error ``1 / (2**(m+1) + 1)``
of every value in it. ``m`` is the smallest number of bits that keeps this
under ``relative_accuracy`` (default 1 %, giving ``m = 6``, a bound of
0.78 %). So a quantile read from the sketch is within ``relative_accuracy``
of the exact quantile (the sample at rank ``floor(q * (n - 1))``, i.e.
"lower" interpolation): the guarantee of Masson, Rim and Lee, *DDSketch*
(VLDB 2019), whose "linearly interpolated" mapping this is, with more
buckets per power of two than the logarithmic one for the same bound.

Why not ``ceil(log(v) / log(gamma))``: the key above is a bit field of the
float itself, so a whole batch of latencies is bucketed in C
(:meth:`DDSketch.add_many`): packed as float32, the top 16 bits of each
value are sign, exponent and 7 mantissa bits, counted by ``collections.Counter``
without a Python-level operation per value. That is about 60 ns per value
against 160 ns for the logarithm, and it is what keeps monitoring at sample
rate 1.0 within its cost budget (docs/benchmarks.md).

Buckets are counts in a dict, so two sketches with the same accuracy merge
(and subtract, for "what happened since the last read") bucket by bucket.
The number of buckets is bounded by ``max_buckets``: when it is exceeded the
lowest buckets collapse into one, which only degrades the accuracy of the
smallest quantiles (the tail the operator cares about stays exact to the
bound). Values ``<= min_value`` (default 1 ns) count as zero; negative values
have their own mirrored store.

Example::

    >>> s = DDSketch(relative_accuracy=0.01)
    >>> for v in range(1, 1001):
    ...     s.add(v / 1000)
    >>> s.count, round(s.sum, 3), s.mantissa_bits
    (1000, 500.5, 6)
    >>> abs(s.quantile(0.99) - 0.990) / 0.990 <= 0.01
    True
"""

from __future__ import annotations

import math
import operator
import struct
import sys
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import accumulate, repeat
from typing import Any, Optional

from ..errors import ConfigurationError

__all__ = ["DDSketch", "DEFAULT_RELATIVE_ACCURACY"]

DEFAULT_RELATIVE_ACCURACY = 0.01

# float32 keeps 7 mantissa bits in its top 16: the bulk fast path serves m <= 7.
_F32_BITS = 7
# Bulk bucketing converts to float32, which rounds: a value just under a bucket
# boundary may land in the next bucket. Its error then exceeds the bucket bound
# by at most 2**-24 relative; m is chosen with that slack included.
_ROUNDING_SLACK = 2.0**-23
_HIGH_HALF = 1 if sys.byteorder == "little" else 0  # index of a float32's top 16 bits as 'H'


# Batches at least this long may be counted with numpy: about 7 ns a value
# against 45-65 with Counter. Smaller ones are not worth a call into numpy.
NUMPY_MIN_BATCH = 2048
_np_module: Any = None


def _numpy(load: Optional[bool]) -> Any:
    """numpy, or None. ``load`` True imports it (once); None only uses it when
    the application has imported it already (importing numpy costs ~20 MB of
    RSS); False never uses it. None too when it is not installed."""
    global _np_module
    if load is False:
        return None
    if _np_module is None:
        if load is None and "numpy" not in sys.modules:
            return None
        try:
            import numpy
        except ImportError:  # numpy is a dependency; this guards a broken or stripped install
            _np_module = False
        else:
            _np_module = numpy
    return _np_module or None


def _numpy_count(np: Any, f32: memoryview) -> dict[int, int]:
    """Counts of the top 16 bits of every float32 in ``f32``."""
    top = np.frombuffer(f32, dtype=np.uint16)[_HIGH_HALF::2]
    low = int(top.min())
    counts = np.bincount(top - np.uint16(low))
    keys = np.flatnonzero(counts)
    return dict(zip((keys + low).tolist(), counts[keys].tolist(), strict=True))


def _np_min(a: Any) -> Any:
    return a.min()


def _np_max(a: Any) -> Any:
    return a.max()


def _bits_for(relative_accuracy: float) -> int:
    """Mantissa bits per bucket: the fewest whose bound 1/(2**(m+1)+1) is within ``relative_accuracy``."""
    m = 0
    while 1.0 / (2.0 ** (m + 1) + 1.0) + _ROUNDING_SLACK > relative_accuracy:
        m += 1
    return m


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
        "mantissa_bits",
        "_scale",
        "min_value",
        "max_buckets",
        "_pos",
        "_neg",
        "zero_count",
        "count",
        "sum",
        "min",
        "max",
        "_ranked",
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
        if not min_value >= sys.float_info.min:
            raise ConfigurationError(f"min_value must be a positive normal float (>= 2.2e-308), got {min_value!r}")
        if max_buckets < 2:
            raise ConfigurationError(f"max_buckets must be at least 2, got {max_buckets!r}")
        self.relative_accuracy = float(relative_accuracy)
        self.mantissa_bits = _bits_for(self.relative_accuracy)
        self._scale = float(2 ** (self.mantissa_bits + 1))
        self.min_value = float(min_value)
        self.max_buckets = max_buckets
        self._pos: dict[int, int] = {}
        self._neg: dict[int, int] = {}
        self.zero_count = 0
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf
        # The buckets in value order with their running counts, kept for
        # quantiles() until the count changes (or clear / collapse).
        self._ranked: Optional[tuple[int, list[int], int, list[int], list[int]]] = None

    # ------------------------------------------------------------------ recording
    def add(self, value: float) -> None:
        """Record one value; ``nan`` and infinities raise ``ValueError`` (they have no bucket).

        Example::

            >>> s = DDSketch(); s.add(0.25); s.count
            1
        """
        if not -math.inf < value < math.inf:
            raise ValueError(f"a sketch records finite numbers, not {value!r}")
        self.count += 1
        self.sum += value
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        if value > self.min_value:
            store = self._pos
            f, e = math.frexp(value)
        elif value < -self.min_value:
            store = self._neg
            f, e = math.frexp(-value)
        else:
            self.zero_count += 1
            return
        m = self.mantissa_bits
        key = (e << m) + int(f * self._scale) - (1 << m)
        store[key] = store.get(key, 0) + 1
        if len(store) > self.max_buckets:
            self._collapse(store)

    def _key(self, value: float) -> int:
        # The bucket of a positive value, as add() computes it.
        f, e = math.frexp(value)
        m = self.mantissa_bits
        return (e << m) + int(f * self._scale) - (1 << m)

    def add_many(self, values: Sequence[float], *, numpy: Optional[bool] = None) -> None:
        """Record many values at once; the bucketing loop runs in C.

        A list is packed as float32 and the top 16 bits of every value (sign,
        exponent, 7 mantissa bits) are counted by ``Counter`` over a
        memoryview: no Python operation per value. An ``array('f')`` (what
        connections gather latencies in) is read the same way in place, and
        an ``array('d')`` as 64-bit integers shifted in C; neither creates a
        float object per value. Sketches finer than 7 bits per bucket shift
        the bits in C too. Batches of ``NUMPY_MIN_BATCH`` values and more are
        counted with ``numpy.bincount`` instead when ``numpy`` allows it:
        True imports numpy if needed, None (the default) uses it only if the
        application already imported it, False never does.
        The keys found also tell whether the batch holds anything the fast
        path cannot take (zeros, negatives, values beyond float32: :meth:`add`
        then takes each value; nan or an infinity: ``ValueError`` and nothing
        is recorded) and whether it can move ``min``/``max`` at all, so the
        exact extremes are only scanned for when they may change.

        The result is what :meth:`add` gives for each value, except that for
        lists the float32 rounding can move a value lying within 2**-24
        (relative) under a bucket boundary into the next bucket, which the
        accuracy bound already allows for. Example::

            >>> a, b = DDSketch(), DDSketch()
            >>> vals = [0.001, 0.002, 0.002, 0.5]
            >>> a.add_many(vals)
            >>> for v in vals:
            ...     b.add(v)
            >>> a.count == b.count and a.quantile(0.5) == b.quantile(0.5) and a.max == 0.5
            True
        """
        n = len(values)
        if not n:
            return
        m = self.mantissa_bits
        counts: Optional[Mapping[int, int]] = None
        floats: Any = values  # what sum/min/max read: a numpy view when values is a float32 array
        np: Any = _numpy(numpy) if n >= NUMPY_MIN_BATCH and m <= _F32_BITS else None
        try:
            f32: Optional[memoryview] = None
            f64: Optional[memoryview] = None
            if isinstance(values, array) and values.typecode in "fd":
                # Read in place: no float object per value.
                if values.typecode == "f":
                    f32 = memoryview(values).cast("B")
                else:
                    f64 = memoryview(values).cast("B")
            elif m <= _F32_BITS:
                f32 = memoryview(struct.pack(f"={n}f", *values)).cast("B")
            else:
                f64 = memoryview(struct.pack(f"={n}d", *values)).cast("B")
            if f32 is not None and m <= _F32_BITS:
                # key16 = sign | E32 (8 bits) | top 7 mantissa bits; frexp's e is E32 - 126.
                width, shift, offset, exponents = (_F32_BITS, _F32_BITS - m, 126 << m, 0xFF)
                if np is not None:
                    counts = _numpy_count(np, f32)
                    if isinstance(values, array):  # the float32 values are the values
                        floats = np.frombuffer(f32, dtype=np.float32)  # in place, no copy
                else:
                    counts = Counter(f32.cast("H")[_HIGH_HALF::2])
            elif f32 is not None:
                counts = Counter(map(operator.rshift, f32.cast("I"), repeat(23 - m)))
                width, shift, offset, exponents = m, 0, 126 << m, 0xFF
            else:
                # float64: bits >> (52 - m) = sign | E64 (11 bits) | top m bits; e is E64 - 1022.
                assert f64 is not None
                counts = Counter(map(operator.rshift, f64.cast("Q"), repeat(52 - m)))
                width, shift, offset, exponents = m, 0, 1022 << m, 0x7FF
        except (OverflowError, TypeError, struct.error):  # beyond float32, or not floats: add() sorts it out
            counts = None
        if counts is not None:
            lowest, highest = min(counts), max(counts)
            # Every value must be a positive normal number (exponent field neither
            # 0 nor all ones, sign clear) above min_value.
            if (
                lowest >> width == 0
                or highest >> width >= exponents
                or (lowest >> shift) - offset <= self._key(self.min_value)
            ):
                counts = None
        if counts is None:
            bad = next((v for v in values if not -math.inf < v < math.inf), None)
            if bad is not None:  # refuse the whole batch rather than keep half of it
                raise ValueError(f"a sketch records finite numbers, not {bad!r}")
            for v in values:
                self.add(v)
            return
        self.count += n
        lowest_value: Callable[[Any], Any] = min
        highest_value: Callable[[Any], Any] = max
        if floats is values:
            self.sum += sum(values)
        else:
            self.sum += float(floats.sum(dtype=np.float64))
            lowest_value, highest_value = _np_min, _np_max
        lo_key, hi_key = (lowest >> shift) - offset, (highest >> shift) - offset
        if self._bounds(lo_key)[0] * (1.0 - _ROUNDING_SLACK) < self.min:
            self.min = min(self.min, float(lowest_value(floats)))
        if self._bounds(hi_key)[1] > self.max:
            self.max = max(self.max, float(highest_value(floats)))
        store = self._pos
        for key, c in counts.items():
            key = (key >> shift) - offset
            store[key] = store.get(key, 0) + c
        if len(store) > self.max_buckets:
            self._collapse(store)

    def _collapse(self, store: dict[int, int]) -> None:
        # Fold the lowest keys into one so the store keeps max_buckets keys.
        keys = sorted(store)
        excess = len(keys) - self.max_buckets
        target = keys[excess]
        for k in keys[:excess]:
            store[target] += store.pop(k)
        self._ranked = None

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
        ``min``/``max`` of the result are the representatives of its lowest
        and highest buckets (within ``relative_accuracy`` of the true ones),
        clamped to this sketch's exact ``min``/``max``.

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
        pos_before, neg_before = earlier._pos.get, earlier._neg.get
        d._pos = {k: c - pos_before(k, 0) for k, c in self._pos.items() if c > pos_before(k, 0)}
        d._neg = {k: c - neg_before(k, 0) for k, c in self._neg.items() if c > neg_before(k, 0)}
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
    def _bounds(self, key: int) -> tuple[float, float]:
        # The values a bucket holds: [lo, hi).
        m = self.mantissa_bits
        lo = math.ldexp((1 << m) + (key & ((1 << m) - 1)), (key >> m) - 1 - m)
        return lo, lo + math.ldexp(1.0, (key >> m) - 1 - m)

    def _value(self, key: int) -> float:
        # The bucket's representative, the harmonic mean of its bounds: within
        # 1 / (2**(m+1) + 1) of every value in it.
        lo, hi = self._bounds(key)
        return 2.0 * lo * hi / (lo + hi)

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
        # Buckets in ascending value order: negatives (largest key first), zero,
        # positives, with running counts; built once per count (a monitor reads
        # an unchanged histogram every tick). A quantile is the first bucket
        # whose running count exceeds its rank; a representative is computed
        # only for the buckets a quantile lands in.
        ranked = self._ranked
        if ranked is None or ranked[0] != self.count:
            neg = sorted(self._neg, reverse=True)
            pos = sorted(self._pos)
            counts = [self._neg[k] for k in neg]
            if self.zero_count:
                counts.append(self.zero_count)
            counts += map(self._pos.__getitem__, pos)
            ranked = self._ranked = (self.count, neg, 1 if self.zero_count else 0, pos, list(accumulate(counts)))
        _, neg, zero, pos, running = ranked
        last = len(running) - 1
        out: list[Optional[float]] = []
        for q in qs:
            if q >= 1.0:
                out.append(self.max)  # the extremes are known exactly
                continue
            if q <= 0.0:
                out.append(self.min)
                continue
            idx = min(bisect_right(running, q * (self.count - 1)), last)
            if idx < len(neg):
                value = -self._value(neg[idx])
            elif idx - len(neg) < zero:
                value = 0.0
            else:
                value = self._value(pos[idx - len(neg) - zero])
            out.append(min(max(value, self.min), self.max))
        return out

    @property
    def buckets(self) -> int:
        """Number of non-empty buckets (memory is proportional to it)."""
        return len(self._pos) + len(self._neg) + (1 if self.zero_count else 0)

    def clear(self) -> None:
        """Forget every value."""
        self._pos.clear()
        self._neg.clear()
        self._ranked = None
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
