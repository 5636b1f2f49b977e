"""MetricsAggregator: a PerformanceMonitor's snapshots and history turned into the dashboard's view model.

This module owns the view model, the one dict every stream sends and the page
draws (schema ``nexus_green.dashboard/1``):

* ``overview`` -- active connections, requests and messages per second,
  average and p99 latency, error rate, requests in flight;
* ``connections`` -- one row per connection (state, heartbeat RTT, requests
  per second, failures, warning marks), capped at ``max_rows`` with the rows
  that need attention first, and the ``total`` so the page can say how many
  it left out;
* ``point`` -- this build's point of the time series (throughput, errors,
  memory, latency); the full view model adds ``series``, the last
  ``series_points`` points, back-filled from the monitor's history;
* ``latency`` -- a histogram of every latency the monitor's sketch holds, in
  fixed millisecond bins, with its quantiles;
* ``health`` -- the health verdict and CPU, memory, FDs, hub lag;
* ``resilience`` -- each circuit breaker's state (from the event stream) and,
  for breakers handed to :meth:`MetricsAggregator.watch`, its window's error
  rate; retries, retries given up, fallbacks served, rejections by policy.

Rates are taken from counter differences between two builds, so they are as
fresh as the build. Building reads plain figures and a capped number of rows:
it does not grow with traffic, and thousands of connections cost one row list.

Example::

    >>> from nexus_green.clock import FakeClock
    >>> from nexus_green.events import EventBus
    >>> from nexus_green.monitoring import PerformanceMonitor
    >>> bus, clock = EventBus(), FakeClock()
    >>> with PerformanceMonitor(bus, clock=clock) as mon:
    ...     agg = MetricsAggregator(mon)
    ...     bus.emit("io.stats", conn_id="c1", completed=10, latencies=[0.002] * 10)
    ...     clock.advance(2.0)
    ...     view = agg.build()
    ...     agg.close()
    >>> view["overview"]["requests_per_s"], view["overview"]["avg_latency_ms"]
    (5.0, 2.0)
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Optional

import gevent

from ..errors import ConfigurationError
from ..events import Event
from ..monitoring.health import HealthChecker, HealthReport
from ..monitoring.monitor import PerformanceMonitor
from ..monitoring.registry import Counter, Gauge, series_fields
from ..monitoring.sketch import DDSketch
from ..resilience.breaker import CircuitBreaker

__all__ = ["MetricsAggregator", "VIEW_SCHEMA", "LATENCY_BINS_MS"]

VIEW_SCHEMA = "nexus_green.dashboard/1"
_YIELD_EVERY_ROWS = 2000  # connection records ranked between two yields to the hub

#: Upper bounds (ms) of the latency histogram's bins; the last bin is open-ended.
LATENCY_BINS_MS: tuple[float, ...] = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)

# The history fields a series point is back-filled from: point key -> (metric, tags, field).
_HISTORY_FIELDS: tuple[tuple[str, str, tuple[tuple[str, str], ...], str], ...] = (
    ("requests_per_s", "throughput.requests", (), "value"),
    ("errors_per_s", "throughput.errors", (), "value"),
    ("messages_in_per_s", "throughput.messages_received", (), "value"),
    ("messages_out_per_s", "throughput.messages_sent", (), "value"),
    ("rss_bytes", "process.rss", (), "value"),
    ("write_buffer_bytes", "buffers.write.bytes", (), "value"),
    ("p50_ms", "request.latency.recent", (("stat", "p50"),), "value"),
    ("p99_ms", "request.latency.recent", (("stat", "p99"),), "value"),
)


def _num(value: Any) -> float:
    if value is None:
        return 0.0
    v = float(value)
    return v if math.isfinite(v) else 0.0


def _r(value: float, digits: int = 3) -> float:
    return round(value, digits)


def _breaker_of(obj: Any) -> CircuitBreaker:
    # A CircuitBreaker, a Resilient (``.breaker``) or a function decorated with
    # @resilient (``.resilient.breaker``).
    if isinstance(obj, CircuitBreaker):
        return obj
    for candidate in (getattr(obj, "breaker", None), getattr(getattr(obj, "resilient", None), "breaker", None)):
        if isinstance(candidate, CircuitBreaker):
            return candidate
    raise ConfigurationError(
        f"watch() takes a CircuitBreaker, a Resilient or a function decorated with @resilient "
        f"that has a breaker, not {obj!r}"
    )


class MetricsAggregator:
    """Builds the dashboard view model from a :class:`~nexus_green.monitoring.PerformanceMonitor`.

    ``max_rows`` (default 100) caps the connection rows; ``series_points``
    (default 300) the points kept for the charts; ``checker`` defaults to a
    :class:`~nexus_green.monitoring.HealthChecker` on the monitor;
    ``breakers`` are watched from the start (see :meth:`watch`). It listens
    to breaker events on the monitor's bus until :meth:`close`.

    Example::

        >>> from nexus_green.events import EventBus
        >>> from nexus_green.monitoring import PerformanceMonitor
        >>> bus = EventBus()
        >>> with PerformanceMonitor(bus) as mon:
        ...     agg = MetricsAggregator(mon, max_rows=2)
        ...     for i in range(5):
        ...         bus.emit("connect.complete", conn_id=f"c{i}", endpoint="tcp://h:1", duration=0.001)
        ...     rows = agg.build()["connections"]
        ...     agg.close()
        >>> rows["total"], rows["shown"], len(rows["rows"])
        (5, 2, 2)
    """

    def __init__(
        self,
        monitor: PerformanceMonitor,
        *,
        max_rows: int = 100,
        series_points: int = 300,
        checker: Optional[HealthChecker] = None,
        breakers: Iterable[Any] = (),
    ) -> None:
        if max_rows < 1:
            raise ConfigurationError(f"max_rows must be at least 1, got {max_rows}")
        if series_points < 2:
            raise ConfigurationError(f"series_points must be at least 2, got {series_points}")
        self.monitor = monitor
        self.max_rows = max_rows
        self.checker = checker if checker is not None else HealthChecker(monitor)
        self.series: deque[dict[str, Any]] = deque(maxlen=series_points)
        self.seq = 0
        self._watched: dict[str, CircuitBreaker] = {}
        self._rejected: dict[str, int] = {}
        self._opened: dict[str, int] = {}
        self._listeners: list[Callable[[str], None]] = []
        self._prev: Optional[tuple[float, float, float, float, float, DDSketch]] = None
        self._prev_rows: dict[str, tuple[int, int]] = {}
        self._prev_time: Optional[float] = None
        self._latency_sketch: Optional[DDSketch] = None
        for b in breakers:
            self.watch(b)
        bus = monitor.bus
        self._unsubscribe = [
            bus.subscribe(self._on_breaker_state, prefix="breaker.state"),
            bus.subscribe(self._on_breaker_rejected, prefix="breaker.rejected"),
        ]
        self._backfill()
        # Rates of the first build are over the time since now.
        mon = monitor
        mon.flush()
        self._prev = (
            mon.clock.now(),
            self._metric("requests.completed"),
            self._metric("requests.failed"),
            self._metric("messages.sent"),
            self._metric("messages.received"),
            mon.latency.sketch.copy(),
        )

    # ------------------------------------------------------------------ wiring
    def watch(self, obj: Any) -> CircuitBreaker:
        """Show this breaker's error rate and window too: a CircuitBreaker, a Resilient or a @resilient function.

        Breakers that are not watched still show, by name, with the state
        their events told. Example::

            >>> from nexus_green.events import EventBus
            >>> from nexus_green.monitoring import PerformanceMonitor
            >>> from nexus_green.resilience import resilient
            >>> @resilient(name="inventory", retry=None)
            ... def stock(): return 3
            >>> with PerformanceMonitor(EventBus()) as mon:
            ...     agg = MetricsAggregator(mon); agg.watch(stock).name
            ...     agg.close()
            'inventory'
        """
        breaker = _breaker_of(obj)
        self._watched[str(breaker.name)] = breaker
        return breaker

    def on_change(self, fn: Callable[[str], None]) -> Callable[[], None]:
        """Call ``fn(reason)`` when something the page must show at once happens (a breaker changed state)."""
        self._listeners.append(fn)

        def off() -> None:
            if fn in self._listeners:
                self._listeners.remove(fn)

        return off

    def _on_breaker_state(self, event: Event) -> None:
        name = str(event.attrs.get("breaker", ""))
        if event.attrs.get("new") == "open":
            self._opened[name] = self._opened.get(name, 0) + 1
        for fn in list(self._listeners):
            fn("breaker")

    def _on_breaker_rejected(self, event: Event) -> None:
        name = str(event.attrs.get("breaker", ""))
        self._rejected[name] = self._rejected.get(name, 0) + 1

    def close(self) -> None:
        """Stop listening to breaker events (idempotent)."""
        for off in self._unsubscribe:
            off()
        self._unsubscribe.clear()
        self._listeners.clear()

    # ------------------------------------------------------------------ history
    def _backfill(self) -> None:
        # The charts start with the monitor's history, so a page opened late still has a past.
        columns: dict[int, list[tuple[str, int, str]]] = {}
        for wall, _uptime, layout, values in list(self.monitor.history)[-(self.series.maxlen or 1) :]:
            key = id(layout)
            wanted = columns.get(key)
            if wanted is None:
                wanted = columns[key] = self._columns(layout)
            point: dict[str, Any] = {"t": _r(wall)}
            for name, index, _unit in wanted:
                v = values[index]
                v = 0.0 if math.isnan(v) else float(v)
                point[name] = _r(v * 1000.0, 4) if name.endswith("_ms") else _r(v)
            for name, _, _, _ in _HISTORY_FIELDS:
                point.setdefault(name, 0.0)
            self.series.append(point)

    def _columns(self, layout: Any) -> list[tuple[str, int, str]]:
        out: list[tuple[str, int, str]] = []
        i = 0
        quantiles = self.monitor.config.quantiles
        for name, kind, unit, tags in layout:
            fields = series_fields(kind, quantiles)
            for key, metric, want_tags, field in _HISTORY_FIELDS:
                if metric == name and tuple(tags) == want_tags and field in fields:
                    out.append((key, i + fields.index(field), unit))
            i += len(fields)
        return out

    # ------------------------------------------------------------------ reading figures
    def _metric(self, name: str, tags: Optional[Mapping[str, object]] = None) -> float:
        m = self.monitor.registry.get(name, tags)
        if isinstance(m, Gauge):
            return _num(m.read())
        if isinstance(m, Counter):
            return _num(m.value)
        return 0.0

    def _family(self, name: str, tag: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for m in self.monitor.registry.series():
            if m.name == name and isinstance(m, (Counter, Gauge)):
                key = dict(m.tags).get(tag, "")
                out[key] = out.get(key, 0.0) + _num(m.read() if isinstance(m, Gauge) else m.value)
        return out

    # ------------------------------------------------------------------ building
    def build(self) -> dict[str, Any]:
        """The next view model (without ``series``); its ``point`` is appended to :attr:`series`.

        Each build advances ``seq`` by one; rates are over the time since the
        previous build (the first, since the aggregator was made; with no time
        between, the monitor's own rates).
        """
        mon = self.monitor
        mon.flush()
        now, wall = mon.clock.now(), mon.clock.wall()
        completed = self._metric("requests.completed")
        failed = self._metric("requests.failed")
        sent = self._metric("messages.sent")
        received = self._metric("messages.received")
        latency = mon.latency.sketch
        prev = self._prev
        if prev is not None and now > prev[0]:
            dt = now - prev[0]
            requests_per_s = (completed - prev[1]) / dt
            errors_per_s = (failed - prev[2]) / dt
            out_per_s = (sent - prev[3]) / dt
            in_per_s = (received - prev[4]) / dt
            finished = (completed - prev[1]) + (failed - prev[2])
            error_rate = (failed - prev[2]) / finished if finished else 0.0
            recent = latency.since(prev[5])
        else:
            requests_per_s = self._metric("throughput.requests")
            errors_per_s = self._metric("throughput.errors")
            out_per_s = self._metric("throughput.messages_sent")
            in_per_s = self._metric("throughput.messages_received")
            error_rate = self._metric("errors.rate")
            recent = latency.copy()
        if prev is None or now > prev[0]:
            self._prev = (now, completed, failed, sent, received, latency.copy())
        avg_ms = recent.sum / recent.count * 1000.0 if recent.count else 0.0
        p50, p99 = (None, None) if not recent.count else tuple(recent.quantiles((0.5, 0.99)))
        self.seq += 1
        point = {
            "t": _r(wall),
            "requests_per_s": _r(requests_per_s),
            "errors_per_s": _r(errors_per_s),
            "messages_in_per_s": _r(in_per_s),
            "messages_out_per_s": _r(out_per_s),
            "rss_bytes": self._metric("process.rss"),
            "write_buffer_bytes": self._metric("buffers.write.bytes"),
            "p50_ms": _r(_num(p50) * 1000.0, 4),
            "p99_ms": _r(_num(p99) * 1000.0, 4),
        }
        self.series.append(point)
        report = self.checker.check()
        view: dict[str, Any] = {
            "schema": VIEW_SCHEMA,
            "seq": self.seq,
            "time": _r(wall),
            "uptime": _r(now - mon.started_at),
            "overview": {
                "active_connections": int(self._metric("connections.active")),
                "tracked_connections": int(self._metric("connections.tracked")),
                "requests_total": int(completed),
                "failed_total": int(failed),
                "requests_per_s": point["requests_per_s"],
                "messages_per_s": _r(in_per_s + out_per_s),
                "avg_latency_ms": _r(avg_ms, 4),
                "p99_latency_ms": point["p99_ms"],
                "error_rate": _r(error_rate, 4),
                "in_flight": int(self._metric("requests.in_flight")),
            },
            "connections": self._connections(now),
            "point": point,
            "latency": self._latency(latency),
            "health": self._health(report),
            "resilience": self._resilience(),
        }
        return view

    def full(self, view: dict[str, Any]) -> dict[str, Any]:
        """``view`` with the chart series (what a page that has nothing yet is sent first)."""
        return {**view, "series": list(self.series)}

    def health(self) -> HealthReport:
        """Run the health checks now."""
        return self.checker.check()

    def _connections(self, now: float) -> dict[str, Any]:
        # The tracker's records are read in place (monitoring's internals, same package):
        # building a ConnectionInfo for each of 10,000 connections held the hub for
        # ~70 ms a push. Ranking reads a few attributes; rows are built for the shown ones.
        tracker = self.monitor.tracker
        records = [*tracker._live.values(), *tracker._closed]
        dt = now - self._prev_time if self._prev_time is not None and now > self._prev_time else 0.0
        rtt_warn = self.monitor.config.heartbeat_rtt_degraded
        prev_rows = self._prev_rows
        rows_now: dict[str, tuple[int, int]] = {}
        ranked: list[tuple[int, float, str, int, list[str]]] = []
        for i, rec in enumerate(records):
            if i and not i % _YIELD_EVERY_ROWS:
                gevent.sleep(1e-6)  # thousands of connections: let the hub run between slices
            key, closed = rec.conn_id, rec.ended is not None
            before = prev_rows.get(key)
            rows_now[key] = (rec.requests, rec.failures)
            rate = (rec.requests - before[0]) / dt if before is not None and dt else 0.0
            warnings = []
            if closed:
                warnings.append("closed")
            elif rec.state != "connected":
                warnings.append(rec.state)
            if before is not None and rec.failures > before[1]:
                warnings.append("failing")
            if rec.heartbeat_rtt is not None and rec.heartbeat_rtt >= rtt_warn:
                warnings.append("slow heartbeat")
            if rec.heartbeat_timeouts:
                warnings.append("heartbeat timeouts")
            # Rows that need attention first (live ones before closed), then the busiest.
            rank = 2 if closed else (0 if warnings else 1)
            ranked.append((rank, -rate, key, i, warnings))
        self._prev_rows = rows_now
        self._prev_time = now
        shown = []
        for _rank, neg_rate, _key, i, warnings in heapq.nsmallest(self.max_rows, ranked):
            info = records[i].info(now)
            shown.append(
                {
                    "id": info.conn_id,
                    "endpoint": info.endpoint,
                    "state": "closed" if info.closed else info.state,
                    "age_s": _r(info.age, 1),
                    "rtt_ms": None if info.heartbeat_rtt is None else _r(info.heartbeat_rtt * 1000.0, 3),
                    "requests": info.requests,
                    "requests_per_s": _r(-neg_rate, 2),
                    "failures": info.failures,
                    "bytes_sent": info.bytes_sent,
                    "bytes_received": info.bytes_received,
                    "last_error": info.last_error,
                    "warnings": warnings,
                }
            )
        return {"total": len(records), "shown": len(shown), "cap": self.max_rows, "rows": shown}

    def _latency(self, sketch: DDSketch) -> dict[str, Any]:
        counts = [0] * (len(LATENCY_BINS_MS) + 1)
        counts[0] += sketch.zero_count
        bins = LATENCY_BINS_MS
        for key, n in sketch._pos.items():  # the sketch's buckets (same package): one pass, at most max_buckets
            ms = sketch._value(key) * 1000.0
            i = 0
            while i < len(bins) and ms > bins[i]:
                i += 1
            counts[i] += n
        lows = (0.0, *bins)
        buckets = [
            {"lo_ms": lo, "hi_ms": bins[i] if i < len(bins) else None, "count": counts[i]} for i, lo in enumerate(lows)
        ]
        qs = sketch.quantiles((0.5, 0.95, 0.99, 0.999)) if sketch.count else [None] * 4
        out: dict[str, Any] = {"count": sketch.count, "buckets": buckets}
        for label, q in zip(("p50_ms", "p95_ms", "p99_ms", "p999_ms"), qs, strict=True):
            out[label] = None if q is None else _r(q * 1000.0, 4)
        out["max_ms"] = _r(sketch.max * 1000.0, 4) if sketch.count else None
        return out

    def _health(self, report: HealthReport) -> dict[str, Any]:
        blocked = self._family("hub.blocked", "source")
        return {
            "status": report.status,
            "reasons": report.reasons,
            "checks": [c.to_dict() for c in report.checks],
            "cpu_percent": _r(self._metric("process.cpu"), 2),
            "rss_bytes": int(self._metric("process.rss")),
            "open_fds": int(self._metric("process.open_fds")),
            "hub_lag_ms": _r(self._metric("hub.lag.worst") * 1000.0, 3),
            "hub_blocked": int(sum(blocked.values())),
            "greenlets": int(self._metric("greenlets.library")),
        }

    def _resilience(self) -> dict[str, Any]:
        states = self.monitor.outages.breaker_states()
        names = sorted(set(states) | set(self._watched) | set(self._rejected))
        breakers = []
        for name in names:
            watched = self._watched.get(name)
            entry: dict[str, Any] = {
                "name": name,
                "state": states.get(name, "closed"),
                "error_rate": None,
                "calls": None,
                "failures": None,
                "rejections": self._rejected.get(name, 0),
                "openings": self._opened.get(name, 0),
            }
            if watched is not None:
                figures = watched.figures()
                entry["state"] = watched.current_state
                entry["error_rate"] = _r(figures.failure_rate, 4)
                entry["calls"] = figures.calls
                entry["failures"] = figures.failures
            breakers.append(entry)
        rejections = {k: int(v) for k, v in sorted(self._family("rejections", "by").items())}
        return {
            "breakers": breakers,
            "breakers_open": sum(1 for b in breakers if b["state"] == "open"),
            "retries": int(self._metric("retry.attempts")),
            "retries_gave_up": int(sum(self._family("retry.gave_up", "reason").values())),
            "fallbacks": int(sum(self._family("fallback.served", "level").values())),
            "rejections": rejections,
            "rejections_total": sum(rejections.values()),
        }

    def __repr__(self) -> str:
        return f"<MetricsAggregator seq={self.seq} series={len(self.series)} watched={sorted(self._watched)}>"
