"""The metrics registry: Counter, Gauge and Histogram series with dotted names and tags.

This module owns metric identity (a dotted ``name`` plus optional ``tags``),
the cardinality guard, and the plain snapshot every exporter renders.

* Names are lower-case dotted words (``request.latency``); tag keys are
  identifiers, tag values are strings. Bad ones raise
  :class:`~nexus_green.errors.MetricError`; so does reusing a name with
  another type or unit.
* Asking for an existing series returns the same object, so call sites keep
  a reference and update it with an attribute write (``counter.value += 1``
  is exactly what :meth:`Counter.inc` does): no lookup on the hot path.
* The cardinality guard caps distinct series at ``max_series``. A series
  beyond the cap gets a working but detached metric (it is never exported),
  and :attr:`MetricsRegistry.dropped` counts the refusals by name.
* :meth:`MetricsRegistry.snapshot` returns a list of plain dicts (the schema
  is in docs/monitoring.md); histogram quantiles come from a
  :class:`~nexus_green.monitoring.sketch.DDSketch` (<= 1 % relative error).

Example::

    >>> reg = MetricsRegistry()
    >>> reg.counter("requests.completed", unit="requests").inc()
    >>> reg.histogram("request.latency").record(0.010)
    >>> [(m["name"], m["type"]) for m in reg.snapshot()]
    [('request.latency', 'histogram'), ('requests.completed', 'counter')]
    >>> reg.counter("requests.completed").value
    1
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Optional, Union

from ..errors import MetricError
from .samples import TimerSamples
from .sketch import DEFAULT_RELATIVE_ACCURACY, DDSketch

__all__ = [
    "Counter",
    "Gauge",
    "Histogram",
    "Metric",
    "MetricsRegistry",
    "Tags",
    "default_registry",
    "quantile_label",
    "series_fields",
]

log = logging.getLogger("nexus_green.monitoring")

Tags = tuple[tuple[str, str], ...]
Number = Union[int, float]

_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")
_TAG_KEY = re.compile(r"^[a-z_][a-z0-9_]*$")
DEFAULT_QUANTILES: tuple[float, ...] = (0.5, 0.95, 0.99, 0.999)


@functools.lru_cache(maxsize=256)
def quantile_label(q: float) -> str:
    """The field name of quantile ``q`` in snapshots: ``p50``, ``p99``, ``p999``.

    Example::

        >>> [quantile_label(q) for q in (0.5, 0.95, 0.99, 0.999, 1.0)]
        ['p50', 'p95', 'p99', 'p999', 'p100']
    """
    return "p" + f"{q * 100:g}".replace(".", "")


def series_fields(kind: str, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> tuple[str, ...]:
    """The value fields a snapshot entry of ``kind`` carries, in order.

    Example::

        >>> series_fields("counter")
        ('value',)
        >>> series_fields("histogram")
        ('count', 'sum', 'min', 'max', 'mean', 'p50', 'p95', 'p99', 'p999')
    """
    return _series_fields(kind, tuple(quantiles))


@functools.lru_cache(maxsize=64)
def _series_fields(kind: str, quantiles: tuple[float, ...]) -> tuple[str, ...]:
    if kind == "histogram":
        return ("count", "sum", "min", "max", "mean") + tuple(quantile_label(q) for q in quantiles)
    return ("value",)


def _check_tags(name: str, tags: Optional[Mapping[str, object]]) -> Tags:
    if not tags:
        return ()
    out = []
    for k, v in tags.items():
        if not isinstance(k, str) or not _TAG_KEY.match(k):
            raise MetricError(f"metric {name!r}: tag key {k!r} must match [a-z_][a-z0-9_]*")
        out.append((k, str(v)))
    return tuple(sorted(out))


class _Base:
    __slots__ = ("name", "tags", "unit", "help")
    kind = ""

    def __init__(self, name: str, tags: Tags, unit: str, help: str) -> None:
        self.name = name
        self.tags = tags
        self.unit = unit
        self.help = help

    def _head(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.kind, "unit": self.unit, "tags": dict(self.tags)}

    def __repr__(self) -> str:
        tags = ",".join(f"{k}={v}" for k, v in self.tags)
        return f"<{type(self).__name__} {self.name}{'{' + tags + '}' if tags else ''}>"


class Counter(_Base):
    """A count that only goes up (``value``).

    Example::

        >>> c = Counter("requests.failed")
        >>> c.inc(); c.inc(2); c.value
        3
    """

    __slots__ = ("value",)
    kind = "counter"

    def __init__(self, name: str, tags: Tags = (), unit: str = "", help: str = "") -> None:
        super().__init__(name, tags, unit, help)
        self.value: Number = 0

    def inc(self, n: Number = 1) -> None:
        """Add ``n`` (must not be negative)."""
        if n < 0:
            raise MetricError(f"counter {self.name!r} cannot decrease (inc({n}))")
        self.value += n

    def to_dict(self, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, Any]:
        """This series as a snapshot entry."""
        d = self._head()
        d["value"] = self.value
        return d


class Gauge(_Base):
    """A value that goes up and down; optionally read from a function at snapshot time.

    Example::

        >>> g = Gauge("connections.active")
        >>> g.set(3); g.inc(); g.dec(2); g.read()
        2
        >>> Gauge("queue.depth", fn=lambda: 7).read()
        7
    """

    __slots__ = ("value", "fn")
    kind = "gauge"

    def __init__(
        self, name: str, tags: Tags = (), unit: str = "", help: str = "", fn: Optional[Callable[[], Number]] = None
    ) -> None:
        super().__init__(name, tags, unit, help)
        self.value: Number = 0
        self.fn = fn

    def set(self, value: Number) -> None:
        """Set the value."""
        self.value = value

    def inc(self, n: Number = 1) -> None:
        """Add ``n``."""
        self.value += n

    def dec(self, n: Number = 1) -> None:
        """Subtract ``n``."""
        self.value -= n

    def read(self) -> Number:
        """The current value (calls ``fn`` when set; a failing ``fn`` reads as NaN)."""
        if self.fn is None:
            return self.value
        try:
            return self.fn()
        except Exception:
            log.exception("gauge %s: value function failed", self.name)
            return math.nan

    def to_dict(self, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, Any]:
        """This series as a snapshot entry."""
        d = self._head()
        d["value"] = self.read()
        return d


class Histogram(_Base):
    """A distribution of values (latencies, sizes) kept in a :class:`DDSketch`.

    Example::

        >>> h = Histogram("request.latency", unit="seconds")
        >>> for ms in (1, 2, 3, 4):
        ...     h.record(ms / 1000)
        >>> d = h.to_dict()
        >>> d["count"], round(d["p50"], 4), round(d["max"], 3)
        (4, 0.002, 0.004)
    """

    __slots__ = ("sketch", "samples")
    kind = "histogram"

    def __init__(
        self,
        name: str,
        tags: Tags = (),
        unit: str = "seconds",
        help: str = "",
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
    ) -> None:
        super().__init__(name, tags, unit, help)
        self.sketch = DDSketch(relative_accuracy)
        # Raw values since the last StatsD flush, kept only while a sink asks
        # for them (MetricsRegistry.keep_samples).
        self.samples: Optional[TimerSamples] = None

    def record(self, value: float) -> None:
        """Add one observation."""
        self.sketch.add(value)
        samples = self.samples
        if samples is not None:
            samples.add(value)

    @property
    def count(self) -> int:
        """How many values were recorded."""
        return self.sketch.count

    def to_dict(self, quantiles: Sequence[float] = DEFAULT_QUANTILES) -> dict[str, Any]:
        """This series as a snapshot entry (None for figures of an empty histogram)."""
        return self.describe_sketch(self._head(), self.sketch, quantiles)

    @staticmethod
    def describe_sketch(head: dict[str, Any], s: DDSketch, quantiles: Sequence[float]) -> dict[str, Any]:
        """Fill ``head`` with count, sum, min, max, mean and quantiles of ``s``."""
        head["count"] = s.count
        head["sum"] = s.sum
        empty = s.count == 0
        head["min"] = None if empty else s.min
        head["max"] = None if empty else s.max
        head["mean"] = None if empty else s.sum / s.count
        for q, v in zip(quantiles, s.quantiles(quantiles), strict=True):
            head[quantile_label(q)] = v
        return head


Metric = Union[Counter, Gauge, Histogram]


class MetricsRegistry:
    """Named, tagged metric series with a cardinality guard.

    Options: ``max_series`` 1000 distinct (name, tags) series;
    ``relative_accuracy`` 0.01 for histograms; ``quantiles`` reported by
    snapshots (p50, p95, p99, p99.9).

    Example::

        >>> reg = MetricsRegistry(max_series=2)
        >>> reg.counter("errors", {"class": "A"}).inc()
        >>> reg.counter("errors", {"class": "B"}).inc()
        >>> reg.counter("errors", {"class": "C"}).inc()    # over the cap: detached
        >>> len(reg.series()), reg.dropped
        (2, {'errors': 1})
        >>> reg.gauge("errors")
        Traceback (most recent call last):
        ...
        nexus_green.errors.MetricError: metric 'errors' is a counter, not a gauge
    """

    def __init__(
        self,
        *,
        max_series: int = 1000,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
    ) -> None:
        if max_series < 1:
            raise MetricError(f"max_series must be at least 1, got {max_series}")
        self.max_series = max_series
        self.relative_accuracy = relative_accuracy
        self.quantiles: tuple[float, ...] = tuple(quantiles)
        self._series: dict[tuple[str, Tags], Metric] = {}
        self._names: dict[str, tuple[str, str, str]] = {}  # name -> (kind, unit, help)
        self._sorted: Optional[list[Metric]] = None
        self.dropped: dict[str, int] = {}
        self.sample_cap: Optional[int] = None

    # ------------------------------------------------------------------ declaring
    def counter(
        self, name: str, tags: Optional[Mapping[str, object]] = None, *, unit: str = "", help: str = ""
    ) -> Counter:
        """The counter series ``name`` + ``tags`` (created on first use)."""
        m = self._get("counter", name, tags, unit, help, None)
        assert isinstance(m, Counter)
        return m

    def gauge(
        self,
        name: str,
        tags: Optional[Mapping[str, object]] = None,
        *,
        unit: str = "",
        help: str = "",
        fn: Optional[Callable[[], Number]] = None,
    ) -> Gauge:
        """The gauge series ``name`` + ``tags``; ``fn``, if given, is read at snapshot time."""
        m = self._get("gauge", name, tags, unit, help, fn)
        assert isinstance(m, Gauge)
        if fn is not None:
            m.fn = fn
        return m

    def histogram(
        self, name: str, tags: Optional[Mapping[str, object]] = None, *, unit: str = "seconds", help: str = ""
    ) -> Histogram:
        """The histogram series ``name`` + ``tags`` (unit defaults to seconds)."""
        m = self._get("histogram", name, tags, unit, help, None)
        assert isinstance(m, Histogram)
        return m

    def _get(
        self,
        kind: str,
        name: str,
        tags: Optional[Mapping[str, object]],
        unit: str,
        help: str,
        fn: Optional[Callable[[], Number]],
    ) -> Metric:
        tag_key = _check_tags(name, tags) if tags else ()
        found = self._series.get((name, tag_key))
        if found is not None:
            if found.kind != kind:
                raise MetricError(f"metric {name!r} is a {found.kind}, not a {kind}")
            return found
        if len(self._series) >= self.max_series and name not in self._names:
            # Over the cap with a name never seen: validate, but remember nothing.
            if not isinstance(name, str) or not _NAME.match(name):
                raise MetricError(f"metric name {name!r} must be lower-case dotted words like 'request.latency'")
        else:
            kind, unit, help = self.declare(kind, name, unit=unit, help=help)
        metric: Metric
        if kind == "counter":
            metric = Counter(name, tag_key, unit, help)
        elif kind == "gauge":
            metric = Gauge(name, tag_key, unit, help, fn)
        else:
            metric = Histogram(name, tag_key, unit, help, self.relative_accuracy)
            if self.sample_cap is not None:
                metric.samples = TimerSamples(self.sample_cap)
        if len(self._series) >= self.max_series:
            if name not in self.dropped:
                log.warning("metrics: series limit %d reached, dropping new series of %r", self.max_series, name)
            # The report itself stays bounded: names past the first 100 share one entry.
            key = name if name in self.dropped or len(self.dropped) < 100 else "(other)"
            self.dropped[key] = self.dropped.get(key, 0) + 1
            return metric
        self._series[(name, tag_key)] = metric
        self._sorted = None
        return metric

    def declare(self, kind: str, name: str, *, unit: str = "", help: str = "") -> tuple[str, str, str]:
        """Fix ``name``'s type, unit and description without creating a series.

        Returns the name's ``(kind, unit, help)``; raises MetricError when
        ``name`` is invalid or already declared with another type or unit.

        Example::

            >>> reg = MetricsRegistry()
            >>> reg.declare("counter", "jobs.errors", unit="calls", help="failed jobs")
            ('counter', 'calls', 'failed jobs')
            >>> reg.declare("gauge", "jobs.errors")
            Traceback (most recent call last):
            ...
            nexus_green.errors.MetricError: metric 'jobs.errors' is a counter, not a gauge
        """
        if kind not in ("counter", "gauge", "histogram"):
            raise MetricError(f"metric {name!r}: unknown type {kind!r} (counter, gauge or histogram)")
        if not isinstance(name, str) or not _NAME.match(name):
            raise MetricError(f"metric name {name!r} must be lower-case dotted words like 'request.latency'")
        known = self._names.get(name)
        if known is None:
            self._names[name] = (kind, unit, help)
            return kind, unit, help
        if known[0] != kind:
            raise MetricError(f"metric {name!r} is a {known[0]}, not a {kind}")
        if unit and known[1] != unit:
            raise MetricError(f"metric {name!r} has unit {known[1]!r}, not {unit!r}")
        if help and not known[2]:
            self._names[name] = known = (kind, known[1], help)
        return known

    def keep_samples(self, cap: Optional[int]) -> None:
        """Keep up to ``cap`` raw values per histogram between drains (StatsD timers); None stops it.

        Applies to every histogram, now and created later. Example::

            >>> reg = MetricsRegistry(); reg.keep_samples(10)
            >>> h = reg.histogram("step"); h.record(0.5); h.samples.drain()
            ([0.5], 1.0)
            >>> reg.keep_samples(None); reg.histogram("step").samples is None
            True
        """
        self.sample_cap = cap
        for m in self._series.values():
            if isinstance(m, Histogram):
                m.samples = None if cap is None else TimerSamples(cap)

    # ------------------------------------------------------------------ reading
    def get(self, name: str, tags: Optional[Mapping[str, object]] = None) -> Optional[Metric]:
        """The registered series, or None (never creates one).

        Example::

            >>> MetricsRegistry().get("nope") is None
            True
        """
        return self._series.get((name, _check_tags(name, tags)))

    def series(self) -> list[Metric]:
        """Every registered series, sorted by name then tags."""
        if self._sorted is None:
            self._sorted = sorted(self._series.values(), key=lambda m: (m.name, m.tags))
        return list(self._sorted)

    def snapshot(self) -> list[dict[str, Any]]:
        """Every series as a plain, JSON-serialisable dict (see docs/monitoring.md)."""
        return [m.to_dict(self.quantiles) for m in self.series()]

    def describe(self) -> list[tuple[str, str, str, str]]:
        """``(name, type, unit, help)`` of every distinct name, sorted.

        Example::

            >>> reg = MetricsRegistry(); _ = reg.gauge("pool.idle", unit="connections", help="idle connections")
            >>> reg.describe()
            [('pool.idle', 'gauge', 'connections', 'idle connections')]
        """
        return [(name, *self._names[name]) for name in sorted(self._names)]

    @property
    def dropped_total(self) -> int:
        """Series refused by the cardinality guard, over all names."""
        return sum(self.dropped.values())

    def __len__(self) -> int:
        return len(self._series)

    def __repr__(self) -> str:
        return f"<MetricsRegistry series={len(self._series)}/{self.max_series} dropped={self.dropped_total}>"


default_registry = MetricsRegistry()
"""The registry :func:`~nexus_green.monitoring.decorators.timed` and ``counted`` use by default."""
