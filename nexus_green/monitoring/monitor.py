"""PerformanceMonitor: every connection, performance, resource and error metric, from the event stream.

This module owns the metric catalogue of the connection layer (names, units,
meanings: docs/monitoring.md lists them), the event handlers that keep it up
to date, the once-per-interval tick (rates, recent latency, resources, hub
lag, history), and the snapshot schema the dashboard and diagnostics read.

How it stays cheap:

* Nothing runs per request. Connections keep their traffic counters always
  and gather latencies; the monitor asks each for one ``io.stats`` event (the
  traffic since the last one) at each tick, flush and read, and a connection
  emits one by itself every 4,096 latencies. The handler does a few attribute
  updates and appends the latencies to a buffer that is bucketed in bulk. Below ``sample_rate`` 1.0
  the monitor asks connections (through the bus's ``latency_sample_every``
  hint) to keep the latencies of every k-th batch only. Counters are exact.
* Everything derived (rates, recent latency percentiles, resources, hub lag)
  is computed once per ``history_interval`` in a background greenlet started
  by :meth:`PerformanceMonitor.start` (or by calling :meth:`tick` yourself).
* Hub health: a lag probe in the same greenlet sleeps ``hub_probe_interval``
  and records how much it overslept (gevent's ``monitor_thread`` cannot be
  turned on after the hub exists, and prints tracebacks to stderr, so it is
  not relied on). When the application did enable ``gevent.config.monitor_thread``,
  its ``EventLoopBlocked`` events are counted as well.

Snapshot schema (``snapshot()``, and every history point)::

    {"schema": "nexus_green.monitoring/1", "time": <unix s>, "uptime": <s>,
     "interval": <s>, "quantiles": ["p50", "p95", "p99", "p999"],
     "quantile_values": [0.5, 0.95, 0.99, 0.999],
     "metrics": [{"name", "type", "unit", "tags", "value"} |
                 {"name", "type": "histogram", "unit", "tags", "count", "sum",
                  "min", "max", "mean", "p50", "p95", "p99", "p999"}, ...],
     "dropped_series": {name: refusals},
     "connections": [ConnectionInfo.to_dict(), ...]   # only when asked}

Example::

    >>> from nexus_green.clock import FakeClock
    >>> from nexus_green.events import EventBus
    >>> bus, clock = EventBus(), FakeClock()
    >>> with PerformanceMonitor(bus, clock=clock) as mon:
    ...     bus.emit("io.stats", conn_id="c1", completed=1, latencies=[0.004], bytes_sent=30, bytes_received=40)
    ...     clock.advance(1.0); mon.tick()
    ...     mon.value("requests.completed"), round(mon.value("request.latency", field="p99"), 3)
    (1, 0.004)
"""

from __future__ import annotations

import functools
import logging
import math
import random
from array import array
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Optional

import gevent
import gevent.events

from ..clock import SYSTEM_CLOCK, Clock
from ..connection.connection import live_connections
from ..errors import NexusTimeout, UsageError
from ..events import Event, EventBus, default_bus
from ..greenlets import live_greenlets, spawn
from .config import MonitoringConfiguration
from .outages import OutageMetrics
from .registry import Counter, Gauge, MetricsRegistry, Tags, quantile_label, series_fields
from .resources import ResourceSampler
from .sketch import DDSketch
from .tracker import ConnectionTracker, error_name

__all__ = ["PerformanceMonitor", "SNAPSHOT_SCHEMA"]

log = logging.getLogger("nexus_green.monitoring")

SNAPSHOT_SCHEMA = "nexus_green.monitoring/1"

_PHASES = ("dns", "tcp", "tls", "socks5")
_RATE_COUNTERS = (
    "requests.completed",
    "requests.failed",
    "messages.sent",
    "messages.received",
    "bytes.sent",
    "bytes.received",
)
_Layout = tuple[tuple[str, str, str, Tags], ...]


# Bucket as soon as this many latencies wait (128 KB as float32). Bulk
# bucketing costs per value (about 65 ns without numpy, 7 with it) and per
# call and distinct bucket (a Python loop over ~600 buckets, ~0.1 ms): at
# 8,192 a batch, that loop alone was a quarter of the monitor's cost at
# sample rate 1.0.
_MAX_PENDING_LATENCIES = 32768


def _is_timeout(error: object) -> bool:
    return isinstance(error, (NexusTimeout, gevent.Timeout, TimeoutError)) or (
        isinstance(error, str) and "Timeout" in error
    )


class PerformanceMonitor:
    """Subscribes to an :class:`~nexus_green.events.EventBus` and keeps every metric.

    ``bus`` defaults to the library's ``default_bus``; ``config`` to
    :class:`MonitoringConfiguration` defaults; ``registry`` to a new
    :class:`MetricsRegistry` sized by the config; ``clock`` and ``rng``
    (for the sample rate) are injectable. Use it as a context manager or call
    :meth:`close`: that unsubscribes and stops the background greenlet.

    Example::

        >>> from nexus_green.events import EventBus
        >>> bus = EventBus()
        >>> mon = PerformanceMonitor(bus)
        >>> bus.emit("connect.complete", conn_id="c1", endpoint="tcp://h:1", duration=0.01, phases={"tcp": 0.01})
        >>> mon.value("connections.opened"), mon.value("connections.active")
        (1, 1)
        >>> mon.close()
    """

    def __init__(
        self,
        bus: EventBus = default_bus,
        *,
        config: Optional[MonitoringConfiguration] = None,
        registry: Optional[MetricsRegistry] = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: Optional[random.Random] = None,
        resources: Optional[ResourceSampler] = None,
    ) -> None:
        self.config = cfg = config or MonitoringConfiguration()
        self.bus = bus
        self.clock = clock
        self.rng = rng or random.Random()
        # "is not None": an empty registry has len() 0 and must still be used.
        self.registry = (
            registry
            if registry is not None
            else MetricsRegistry(
                max_series=cfg.max_series, relative_accuracy=cfg.relative_accuracy, quantiles=cfg.quantiles
            )
        )
        self.tracker = ConnectionTracker(
            clock=clock, max_tracked=cfg.max_tracked_connections, closed_kept=cfg.closed_connections_kept
        )
        self.resources = resources or ResourceSampler(clock=clock)
        self.started_at = clock.now()
        self.history: deque[tuple[float, float, _Layout, array[float]]] = deque(maxlen=cfg.history_points)
        self._layout: Optional[_Layout] = None
        self._layout_size = -1
        self._rate_window: deque[tuple[float, tuple[float, ...]]] = deque(
            maxlen=max(2, int(math.ceil(cfg.rate_window / cfg.history_interval)) + 1)
        )
        self._collectors: list[Callable[[], None]] = []
        self._unsubscribe: list[Callable[[], None]] = []
        self._greenlet: Optional[gevent.Greenlet] = None
        self._closed = False
        self._lag_max = 0.0
        self._pools: dict[str, dict[str, Any]] = {}
        self._sample_all = cfg.sample_rate >= 1.0
        self._numpy = cfg.numpy if cfg.numpy is not None else (True if self._sample_all else None)
        self._stride = max(1, round(1.0 / cfg.sample_rate))
        # Latencies wait here to be bucketed in bulk: float32 as connections
        # send them (array('f')), float64 for anything else (lists from other
        # emitters keep their exact values for min/max/sum).
        self._pending_latencies: array[float] = array("f")
        self._pending_exact: array[float] = array("d")
        self._owns_sampling = False
        self._skip = 0  # latencies to skip at the start of the next batch (every k-th sampled)
        self._declare()
        # On a registry an earlier monitor used (enable() after disable()), the tick's figures start afresh.
        for gauge in (
            self.error_rate,
            self.error_per_s,
            self.hub_lag_max,
            self.rate_requests,
            self.rate_msgs_sent,
            self.rate_msgs_received,
            self.rate_bytes_sent,
            self.rate_bytes_received,
            *self.recent.values(),
        ):
            gauge.value = 0
        self.outages = OutageMetrics(self)
        self._latency_prev: DDSketch = self.latency.sketch.copy()
        self._subscribe()

    # ------------------------------------------------------------------ catalogue
    def _declare(self) -> None:
        r = self.registry
        c, g, h = r.counter, r.gauge, r.histogram
        # connection
        self.connect_duration = h("connect.duration", help="connection establishment time, all phases")
        r.declare("histogram", "connect.phase.duration", unit="seconds", help="establishment time of one phase")
        r.declare("counter", "connect.phase.failures", unit="connections", help="connection attempts failed in a phase")
        self.phase_duration = {p: h("connect.phase.duration", {"phase": p}) for p in _PHASES}
        self.phase_failures = {p: c("connect.phase.failures", {"phase": p}) for p in _PHASES}
        self.connect_attempts = c("connect.attempts", unit="connections", help="connection attempts started")
        self.connect_failures = c("connect.failures", unit="connections", help="connection attempts that failed")
        self.connections_opened = c("connections.opened", unit="connections", help="connections established")
        self.connections_closed = c("connections.closed", unit="connections", help="connections closed")
        g("connections.active", unit="connections", help="connections in the connected state", fn=self._active)
        g("connections.tracked", unit="connections", help="live connections the tracker follows", fn=self._tracked)
        self.lifetime = h("connection.lifetime", help="age of connections when they closed")
        self.reconnect_attempts = c("reconnect.attempts", unit="attempts", help="reconnects scheduled")
        self.reconnect_succeeded = c("reconnect.succeeded", unit="attempts", help="reconnects that succeeded")
        self.reconnect_failed = c("reconnect.failed", unit="attempts", help="reconnect attempts that failed")
        self.reconnect_gave_up = c(
            "reconnect.gave_up", unit="connections", help="connections that stopped reconnecting"
        )
        r.declare("gauge", "pool.size", unit="connections", help="connections in the pool")
        r.declare("gauge", "pool.max_size", unit="connections", help="the pool's maximum size")
        r.declare("gauge", "pool.in_use", unit="connections", help="pooled connections with requests in flight")
        r.declare("gauge", "pool.idle", unit="connections", help="pooled connections with no request in flight")
        r.declare("gauge", "pool.waiters", unit="checkouts", help="checkouts waiting for capacity")
        r.declare("gauge", "pool.utilisation", unit="ratio", help="in-flight requests / pool capacity")
        r.declare("histogram", "pool.checkout.wait", unit="seconds", help="time a checkout waited")
        r.declare("counter", "pool.checkouts", unit="checkouts", help="successful checkouts")
        r.declare("counter", "pool.exhausted", unit="checkouts", help="checkouts refused: no capacity in time")
        r.declare("counter", "pool.connections.opened", unit="connections", help="connections the pool opened")
        r.declare("counter", "pool.connections.discarded", unit="connections", help="connections the pool dropped")
        # performance
        self.requests_completed = c("requests.completed", unit="requests", help="requests answered")
        self.requests_failed = c("requests.failed", unit="requests", help="requests that failed")
        self.requests_non_ok = c("requests.non_ok", unit="requests", help="answers with a code other than 200")
        self.requests_late = c("requests.late", unit="responses", help="responses after their request gave up")
        self.pushes = c("push.received", unit="messages", help="server pushes received")
        self.latency = h("request.latency", help="request latency (sampled at sample_rate)")
        r.declare("gauge", "request.latency.recent", unit="seconds", help="latency over the last interval, by stat")
        self.recent: dict[str, Gauge] = {
            stat: g("request.latency.recent", {"stat": stat}, unit="seconds")
            for stat in ("mean", "max") + tuple(quantile_label(q) for q in self.config.quantiles)
        }
        self.msgs_sent = c("messages.sent", unit="frames", help="frames written")
        self.msgs_received = c("messages.received", unit="frames", help="frames read")
        self.bytes_sent = c("bytes.sent", unit="bytes", help="bytes written to sockets")
        self.bytes_received = c("bytes.received", unit="bytes", help="bytes read from sockets")
        self.rate_requests = g("throughput.requests", unit="requests/s", help="requests completed per second")
        self.rate_msgs_sent = g("throughput.messages_sent", unit="frames/s", help="frames written per second")
        self.rate_msgs_received = g("throughput.messages_received", unit="frames/s", help="frames read per second")
        self.rate_bytes_sent = g("throughput.bytes_sent", unit="bytes/s", help="bytes written per second")
        self.rate_bytes_received = g("throughput.bytes_received", unit="bytes/s", help="bytes read per second")
        self.in_flight = g("requests.in_flight", unit="requests", help="requests sent and not answered (from pools)")
        # resources
        self.rss = g("process.rss", unit="bytes", help="resident memory of the process")
        self.cpu = g("process.cpu", unit="percent", help="CPU time of the process, % of one core")
        self.fds = g("process.open_fds", unit="fds", help="open file descriptors")
        g("greenlets.library", unit="greenlets", help="live greenlets started by nexus_green", fn=_library_greenlets)
        self.buffers_read = g("buffers.read.bytes", unit="bytes", help="bytes of incomplete frames in read buffers")
        self.buffers_write = g("buffers.write.bytes", unit="bytes", help="bytes queued for writing, not yet sent")
        self.buffers_in_use = g("buffers.in_use", unit="buffers", help="buffer-pool buffers in use")
        self.buffers_capacity = g("buffers.capacity", unit="buffers", help="buffer-pool capacity")
        self.buffers_utilisation = g("buffers.utilisation", unit="ratio", help="buffers in use / capacity")
        self.hub_lag = h("hub.lag", help="lag probe oversleep: how late the hub ran a ready greenlet")
        # Not "hub.lag.max": StatsD backends derive <timer>.max from the hub.lag timer.
        self.hub_lag_max = g("hub.lag.worst", unit="seconds", help="worst hub lag in the last interval")
        r.declare("counter", "hub.blocked", unit="events", help="times the hub was blocked past hub_lag_degraded")
        self.hub_blocked_probe = c("hub.blocked", {"source": "probe"})
        self.hub_blocked_gevent = c("hub.blocked", {"source": "gevent_monitor"})
        self.hub_blocked_time = c("hub.blocked.time", unit="seconds", help="blocked time gevent's monitor reported")
        # errors
        r.declare("counter", "errors", unit="errors", help="errors by kind and class")
        self.timeouts = c("errors.timeouts", unit="errors", help="requests that timed out")
        self.protocol_errors = c("protocol.errors", unit="errors", help="framing errors (connection closed)")
        self.heartbeat_timeouts = c("heartbeat.timeouts", unit="heartbeats", help="heartbeats not answered in time")
        self.heartbeat_rtt = h("heartbeat.rtt", help="heartbeat round-trip time")
        self.error_rate = g("errors.rate", unit="ratio", help="failed / finished requests over rate_window")
        self.error_per_s = g("throughput.errors", unit="requests/s", help="failed requests per second")
        g("monitoring.series.dropped", unit="series", help="series refused by the cardinality guard", fn=self._dropped)
        self._error_counters: dict[tuple[str, str], Counter] = {}
        self._pool_metrics: dict[tuple[str, str], Any] = {}

    def _active(self) -> int:
        return self.tracker.active

    def _tracked(self) -> int:
        return self.tracker.tracked

    def _dropped(self) -> int:
        return self.registry.dropped_total

    # ------------------------------------------------------------------ wiring
    def _subscribe(self) -> None:
        # Listeners already on the bus get their due first: a connection
        # starts a new io.stats baseline when its audience changes.
        self.flush()
        sub = self.bus.subscribe
        self._unsubscribe = [
            sub(self._on_io_stats, prefix="io.stats"),
            sub(self._on_request_failed, prefix="request.failed"),
            sub(self._on_other, prefix="request.late"),
            sub(self._on_other, prefix="connect."),
            sub(self._on_other, prefix="connection.closed"),
            sub(self._on_other, prefix="heartbeat."),
            sub(self._on_other, prefix="reconnect."),
            sub(self._on_other, prefix="pool."),
            sub(self._on_other, prefix="protocol.error"),
            sub(self._on_other, prefix="push.received"),
            sub(self._on_other, prefix="buffers.state"),
            *self.outages.subscribe(),
        ]
        self.tracker.attach(self.bus, hot=False)
        if not self._sample_all and self.bus.latency_sample_every == 1:
            # Ask connections to include every k-th batch's latencies only. The
            # first monitor on a bus decides; a later one samples again itself.
            self.bus.latency_sample_every = self._stride
            self._owns_sampling = True
        self._track_stats = self.tracker._on_io_stats
        if self.config.use_gevent_monitor and gevent.config.monitor_thread:
            gevent.events.subscribers.append(self._on_gevent_event)
            self._unsubscribe.append(lambda: _remove(gevent.events.subscribers, self._on_gevent_event))
        self._dispatch: dict[str, Callable[[Mapping[str, Any]], None]] = {
            "request.late": self._late,
            "connect.started": self._connect_started,
            "connect.complete": self._connect_complete,
            "connect.failed": self._connect_failed,
            "connection.closed": self._connection_closed,
            "heartbeat.rtt": self._heartbeat_rtt,
            "heartbeat.timeout": self._heartbeat_timeout,
            "reconnect.scheduled": self._reconnect_scheduled,
            "reconnect.succeeded": self._reconnect_succeeded,
            "reconnect.failed": self._reconnect_failed,
            "reconnect.gave_up": self._reconnect_gave_up,
            "pool.checkout": self._pool_checkout,
            "pool.exhausted": self._pool_exhausted,
            "pool.connection.opened": self._pool_opened,
            "pool.connection.discarded": self._pool_discarded,
            "pool.state": self._pool_state,
            "protocol.error": self._protocol_error,
            "push.received": self._push,
            "buffers.state": self._buffers_state,
        }
        for phase in _PHASES:
            self._dispatch[f"connect.{phase}.complete"] = functools.partial(self._phase_complete, phase)
            self._dispatch[f"connect.{phase}.failed"] = functools.partial(self._phase_failed, phase)

    # ------------------------------------------------------------------ hot path
    def _on_io_stats(self, event: Event) -> None:
        # One event per connection per tick (or per 4,096 latencies): exact counts, and the
        # latencies kept for bulk bucketing (every k-th one below rate 1.0).
        self._track_stats(event)
        a = event.attrs
        self.bytes_sent.value += a.get("bytes_sent", 0)
        self.msgs_sent.value += a.get("frames_sent", 0)
        self.bytes_received.value += a.get("bytes_received", 0)
        self.msgs_received.value += a.get("frames_received", 0)
        completed = a.get("completed", 0)
        self.requests_completed.value += completed
        samples = self.latency.samples
        if samples is not None and completed:
            samples.note_seen(completed)  # the latencies below stand for every completed request
        non_ok = a.get("non_ok", 0)
        if non_ok:
            self.requests_non_ok.value += non_ok
        latencies = a.get("latencies")
        if latencies:
            # Connections already keep only every k-th batch's latencies when a
            # monitor asked (``sampled_every``); sample the rest of the way here.
            stride = self._stride // a.get("sampled_every", 1)
            if stride > 1:
                skip = self._skip
                self._skip = (skip - len(latencies)) % stride
                latencies = latencies[skip::stride]
            if type(latencies) is array and latencies.typecode == "f":
                pending = self._pending_latencies
            else:
                pending = self._pending_exact
            pending.extend(latencies)  # a memcpy when the types match
            if len(pending) >= _MAX_PENDING_LATENCIES:
                self._flush_latencies()

    def _flush_latencies(self) -> None:
        samples = self.latency.samples
        pending = self._pending_latencies
        if pending:
            self._pending_latencies = array("f")
            self.latency.sketch.add_many(pending, numpy=self._numpy)
            if samples is not None:
                samples.add_many(pending, seen=0)
        exact = self._pending_exact
        if exact:
            self._pending_exact = array("d")
            self.latency.sketch.add_many(exact, numpy=self._numpy)
            if samples is not None:
                samples.add_many(exact, seen=0)

    def _on_request_failed(self, event: Event) -> None:
        error = event.attrs.get("error")
        self.outages.wire_failed(error)
        self.count_request_failure(error)

    def count_request_failure(self, error: object) -> None:
        """Count one failed request: ``requests.failed``, ``errors.timeouts``, ``errors{kind=request}``."""
        self.requests_failed.value += 1
        if _is_timeout(error):
            self.timeouts.value += 1
        self._count_error("request", error)

    def _count_error(self, kind: str, error: object) -> None:
        key = (kind, error_name(error))
        counter = self._error_counters.get(key)
        if counter is None:
            counter = self.registry.counter("errors", {"kind": kind, "class": key[1]})
            if self.registry.get("errors", {"kind": kind, "class": key[1]}) is counter:
                self._error_counters[key] = counter
        counter.value += 1

    # ------------------------------------------------------------------ everything else
    def _on_other(self, event: Event) -> None:
        handler = self._dispatch.get(event.name)
        if handler is not None:
            handler(event.attrs)

    def _late(self, a: Mapping[str, Any]) -> None:
        self.requests_late.value += 1

    def _connect_started(self, a: Mapping[str, Any]) -> None:
        self.connect_attempts.value += 1

    def _connect_complete(self, a: Mapping[str, Any]) -> None:
        self.connections_opened.value += 1
        if a.get("duration") is not None:
            self.connect_duration.record(a["duration"])

    def _connect_failed(self, a: Mapping[str, Any]) -> None:
        self.connect_failures.value += 1
        self._count_error("connect", a.get("error"))

    def _phase_complete(self, phase: str, a: Mapping[str, Any]) -> None:
        if a.get("duration") is not None:
            self.phase_duration[phase].record(a["duration"])

    def _phase_failed(self, phase: str, a: Mapping[str, Any]) -> None:
        self.phase_failures[phase].value += 1

    def _connection_closed(self, a: Mapping[str, Any]) -> None:
        self.connections_closed.value += 1
        if a.get("age") is not None:
            self.lifetime.record(a["age"])
        if a.get("error") is not None:
            self._count_error("connection", a["error"])

    def _heartbeat_rtt(self, a: Mapping[str, Any]) -> None:
        if a.get("rtt") is not None:
            self.heartbeat_rtt.record(a["rtt"])

    def _heartbeat_timeout(self, a: Mapping[str, Any]) -> None:
        self.heartbeat_timeouts.value += 1
        self._count_error("heartbeat", "HeartbeatTimeout")

    def _reconnect_scheduled(self, a: Mapping[str, Any]) -> None:
        self.reconnect_attempts.value += 1

    def _reconnect_succeeded(self, a: Mapping[str, Any]) -> None:
        self.reconnect_succeeded.value += 1

    def _reconnect_failed(self, a: Mapping[str, Any]) -> None:
        self.reconnect_failed.value += 1
        self._count_error("reconnect", a.get("error"))

    def _reconnect_gave_up(self, a: Mapping[str, Any]) -> None:
        self.reconnect_gave_up.value += 1

    def _pool_metric(self, kind: str, name: str, pool: str, **extra: str) -> Any:
        key = (name, pool + "|" + "|".join(f"{k}={v}" for k, v in sorted(extra.items())))
        m = self._pool_metrics.get(key)
        if m is None:
            m = getattr(self.registry, kind)(name, {"pool": pool, **extra})
            self._pool_metrics[key] = m
        return m

    def _pool_checkout(self, a: Mapping[str, Any]) -> None:
        pool = str(a.get("pool", ""))
        self._pool_metric("counter", "pool.checkouts", pool).value += 1
        self._pool_metric("histogram", "pool.checkout.wait", pool).record(a.get("wait", 0.0))

    def _pool_exhausted(self, a: Mapping[str, Any]) -> None:
        pool = str(a.get("pool", ""))
        self._pool_metric("counter", "pool.exhausted", pool).value += 1
        self._pool_metric("histogram", "pool.checkout.wait", pool).record(a.get("wait", 0.0))
        self._count_error("pool", "PoolExhausted")
        self.outages.rejected("pool")

    def _pool_opened(self, a: Mapping[str, Any]) -> None:
        self._pool_metric("counter", "pool.connections.opened", str(a.get("pool", ""))).value += 1

    def _pool_discarded(self, a: Mapping[str, Any]) -> None:
        pool, reason = str(a.get("pool", "")), str(a.get("reason", "unknown"))
        self._pool_metric("counter", "pool.connections.discarded", pool, reason=reason).value += 1

    def _pool_state(self, a: Mapping[str, Any]) -> None:
        pool = str(a.get("pool", ""))
        figures = self._pools.setdefault(pool, {})
        for key in ("size", "max_size", "in_use", "idle", "waiters", "utilisation", "in_flight"):
            if a.get(key) is not None:
                figures[key] = a[key]
                if key != "in_flight":
                    self._pool_metric("gauge", f"pool.{key}", pool).set(a[key])
        self.in_flight.set(sum(f.get("in_flight", 0) for f in self._pools.values()))

    def _protocol_error(self, a: Mapping[str, Any]) -> None:
        self.protocol_errors.value += 1
        self._count_error("protocol", a.get("error"))

    def _push(self, a: Mapping[str, Any]) -> None:
        self.pushes.value += 1

    def _buffers_state(self, a: Mapping[str, Any]) -> None:
        in_use, capacity = a.get("in_use", 0), a.get("capacity", 0)
        self.buffers_in_use.set(in_use)
        self.buffers_capacity.set(capacity)
        self.buffers_utilisation.set(in_use / capacity if capacity else 0.0)

    def _on_gevent_event(self, event: object) -> None:
        # Runs in gevent's monitor thread: attribute updates only.
        if isinstance(event, gevent.events.EventLoopBlocked):
            self.hub_blocked_gevent.value += 1
            self.hub_blocked_time.value += float(event.blocking_time)

    # ------------------------------------------------------------------ pull sources
    def add_collector(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Call ``fn()`` at the start of every tick (e.g. to emit ``pool.state``); returns a remover.

        Example::

            >>> from nexus_green.events import EventBus
            >>> bus = EventBus(); mon = PerformanceMonitor(bus)
            >>> off = mon.add_collector(lambda: bus.emit("pool.state", pool="p", size=2, max_size=4, in_use=1,
            ...                                                   idle=1, waiters=0, utilisation=0.25, in_flight=3))
            >>> mon.tick(); mon.value("pool.in_use", {"pool": "p"}), mon.value("requests.in_flight")
            (1, 3)
            >>> off(); mon.close()
        """
        self._collectors.append(fn)
        return lambda: _remove(self._collectors, fn)

    def watch_pool(self, name: str, stats: Callable[[], Mapping[str, Any]]) -> Callable[[], None]:
        """Emit ``pool.state`` for pool ``name`` from ``stats()`` (e.g. ``ConnectionPool.stats``) at every tick."""

        def collect() -> None:
            self.bus.emit("pool.state", pool=name, **{k: v for k, v in stats().items() if k != "pool"})

        return self.add_collector(collect)

    # ------------------------------------------------------------------ tick
    def flush(self) -> None:
        """Take in what connections have gathered since their last ``io.stats`` and bucket every pending latency.

        :meth:`tick`, :meth:`snapshot` and :meth:`value` start with this.
        Example::

            >>> from nexus_green.events import EventBus
            >>> with PerformanceMonitor(EventBus()) as mon:
            ...     mon.flush()
            ...     mon.value("requests.completed")
            0
        """
        self._flush_connections(buffers=False)

    def _flush_connections(self, *, buffers: bool = True) -> tuple[int, int]:
        # One pass over the connections: their io.stats, then every pending
        # latency bucketed; returns the bytes they hold in read and write
        # buffers (the tick's gauges; reads skip the sums).
        read = write = 0
        for conn in live_connections(self.bus):
            conn.flush_stats()
            if buffers:
                r, w = conn.buffered()
                read += r
                write += w
        self._flush_latencies()
        return read, write

    def tick(self) -> None:
        """Refresh derived figures (rates, recent latency, resources, hub lag) and append a history point."""
        read, write = self._flush_connections()
        self.buffers_read.set(read)
        self.buffers_write.set(write)
        for fn in list(self._collectors):
            try:
                fn()
            except Exception:  # a broken collector must not stop the tick
                log.exception("monitor collector %r failed", fn)
        now = self.clock.now()
        self._update_recent_latency()
        self._update_rates(now)
        sample = self.resources.sample()
        if sample.rss_bytes is not None:
            self.rss.set(sample.rss_bytes)
        if sample.cpu_percent is not None:
            self.cpu.set(round(sample.cpu_percent, 3))
        if sample.open_fds is not None:
            self.fds.set(sample.open_fds)
        self.hub_lag_max.set(self._lag_max)
        self._lag_max = 0.0
        self._record_history(self.clock.wall(), now)

    def _update_recent_latency(self) -> None:
        current = self.latency.sketch
        recent = current.since(self._latency_prev)
        self._latency_prev = current.copy()
        quantiles = self.config.quantiles
        values: dict[str, float] = {"mean": recent.sum / recent.count if recent.count else 0.0}
        values["max"] = recent.max if recent.count else 0.0
        for q, v in zip(quantiles, recent.quantiles(quantiles), strict=True):
            values[quantile_label(q)] = v if v is not None else 0.0
        for stat, gauge in self.recent.items():
            gauge.value = values[stat]

    def _update_rates(self, now: float) -> None:
        counters = tuple(float(self.registry.counter(n).value) for n in _RATE_COUNTERS)
        self._rate_window.append((now, counters))
        t0, first = self._rate_window[0]
        dt = now - t0
        if dt <= 0:
            return
        d = [(b - a) / dt for a, b in zip(first, counters, strict=True)]
        self.rate_requests.value = d[0]
        self.error_per_s.value = d[1]
        self.rate_msgs_sent.value = d[2]
        self.rate_msgs_received.value = d[3]
        self.rate_bytes_sent.value = d[4]
        self.rate_bytes_received.value = d[5]
        finished = d[0] + d[1]
        self.error_rate.value = d[1] / finished if finished else 0.0

    # ------------------------------------------------------------------ history
    def _current_layout(self) -> _Layout:
        if self._layout is None or self._layout_size != len(self.registry):
            self._layout = tuple((m.name, m.kind, m.unit, m.tags) for m in self.registry.series())
            self._layout_size = len(self.registry)
        return self._layout

    def _record_history(self, wall: float, now: float) -> None:
        layout = self._current_layout()
        values: array[float] = array("d")
        for entry in self.registry.snapshot():
            for f in series_fields(entry["type"], self.config.quantiles):
                v = entry[f]
                values.append(math.nan if v is None else float(v))
        self.history.append((wall, now - self.started_at, layout, values))

    def history_points(self, last: Optional[int] = None) -> list[dict[str, Any]]:
        """History as snapshot-shaped dicts (oldest first); ``last`` limits to the newest N.

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> from nexus_green.events import EventBus
            >>> mon = PerformanceMonitor(EventBus(), clock=FakeClock())
            >>> mon.tick(); mon.tick()
            >>> len(mon.history_points()), mon.history_points(1)[0]["schema"]
            (2, 'nexus_green.monitoring/1')
            >>> mon.close()
        """
        points = list(self.history)
        if last is not None:
            points = points[-last:] if last > 0 else []
        return [self._expand(p) for p in points]

    def _expand(self, point: tuple[float, float, _Layout, array[float]]) -> dict[str, Any]:
        wall, uptime, layout, values = point
        metrics: list[dict[str, Any]] = []
        i = 0
        for name, kind, unit, tags in layout:
            entry: dict[str, Any] = {"name": name, "type": kind, "unit": unit, "tags": dict(tags)}
            for f in series_fields(kind, self.config.quantiles):
                v = values[i]
                i += 1
                entry[f] = None if math.isnan(v) else (int(v) if f == "count" or kind == "counter" else v)
            metrics.append(entry)
        return self._envelope(wall, uptime, metrics)

    def series_history(
        self, name: str, tags: Optional[Mapping[str, object]] = None, *, field: str = "value"
    ) -> list[tuple[float, Optional[float]]]:
        """``(unix time, value)`` of one series field across the history (a dashboard's line).

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> from nexus_green.events import EventBus
            >>> mon = PerformanceMonitor(EventBus(), clock=FakeClock())
            >>> mon.tick()
            >>> [v for _, v in mon.series_history("requests.completed")]
            [0.0]
            >>> mon.close()
        """
        key_tags = tuple(sorted((k, str(v)) for k, v in (tags or {}).items()))
        out: list[tuple[float, Optional[float]]] = []
        for wall, _uptime, layout, values in self.history:
            i = 0
            found: Optional[float] = None
            for n, kind, _unit, t in layout:
                fields = series_fields(kind, self.config.quantiles)
                if n == name and t == key_tags and field in fields:
                    v = values[i + fields.index(field)]
                    found = None if math.isnan(v) else v
                    break
                i += len(fields)
            out.append((wall, found))
        return out

    # ------------------------------------------------------------------ reading
    def _envelope(self, wall: float, uptime: float, metrics: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "schema": SNAPSHOT_SCHEMA,
            "time": wall,
            "uptime": uptime,
            "interval": self.config.history_interval,
            "quantiles": [quantile_label(q) for q in self.config.quantiles],
            "quantile_values": list(self.config.quantiles),
            "metrics": metrics,
            "dropped_series": dict(self.registry.dropped),
        }

    def snapshot(self, *, connections: bool = False) -> dict[str, Any]:
        """A real-time, JSON-serialisable read of every metric (schema in the module docstring).

        Counters, histograms and function gauges are live (every connection's
        traffic is taken in first); rates, recent latency, resources and hub
        lag are as of the last tick.
        """
        self.flush()
        snap = self._envelope(self.clock.wall(), self.clock.now() - self.started_at, self.registry.snapshot())
        if connections:
            snap["connections"] = [c.to_dict() for c in self.tracker.connections(include_closed=True)]
        return snap

    def value(self, name: str, tags: Optional[Mapping[str, object]] = None, *, field: str = "value") -> Any:
        """One figure, read live (``field`` is ``value`` or a histogram field like ``p99``); None if unknown."""
        self.flush()
        m = self.registry.get(name, tags)
        if m is None:
            return None
        if isinstance(m, Gauge):
            return m.read() if field == "value" else None
        if isinstance(m, Counter):
            return m.value if field == "value" else None
        return m.to_dict(self.config.quantiles).get(field)

    # ------------------------------------------------------------------ background
    def start(self) -> PerformanceMonitor:
        """Start the background greenlet: the hub lag probe and one tick per ``history_interval``.

        Idempotent; after :meth:`stop` it starts again. Example::

            >>> from nexus_green.events import EventBus
            >>> mon = PerformanceMonitor(EventBus()).start()
            >>> mon.running, mon.stop().running, mon.start().running
            (True, False, True)
            >>> mon.close()
        """
        if self._closed:
            raise UsageError("PerformanceMonitor was closed; create a new one")
        if self._greenlet is None:
            self._greenlet = spawn(self._run, name="monitor")
        return self

    def _run(self) -> None:
        probe = self.config.hub_probe_interval
        interval = self.config.history_interval
        blocked = self.config.hub_lag_degraded
        next_tick = self.clock.now() + interval
        while True:
            t0 = self.clock.now()
            self.clock.sleep(probe)
            now = self.clock.now()
            lag = max(0.0, now - t0 - probe)
            self.hub_lag.record(lag)
            if lag > self._lag_max:
                self._lag_max = lag
            if lag >= blocked:
                self.hub_blocked_probe.value += 1
            if now >= next_tick:
                self.tick()
                next_tick = max(next_tick + interval, now)

    @property
    def running(self) -> bool:
        """True while the background greenlet runs."""
        return self._greenlet is not None and not self._greenlet.dead

    def stop(self) -> PerformanceMonitor:
        """Stop the background greenlet (no probe, no automatic tick) but keep listening.

        Counters and histograms stay exact; call :meth:`tick` yourself or
        :meth:`start` again. :meth:`close` also unsubscribes. Example::

            >>> from nexus_green.events import EventBus
            >>> bus = EventBus()
            >>> mon = PerformanceMonitor(bus).start().stop()
            >>> bus.emit("io.stats", conn_id="c1", completed=2)
            >>> mon.running, mon.value("requests.completed")
            (False, 2)
            >>> mon.close()
        """
        g, self._greenlet = self._greenlet, None
        if g is not None:
            g.kill(block=True, timeout=5)
        return self

    def close(self) -> None:
        """Take in the connections' last traffic, unsubscribe and stop the background greenlet (idempotent).

        Figures stay readable, exact to the moment of closing.
        """
        if not self._closed:
            self.flush()
        self._closed = True
        if self._owns_sampling:
            self.bus.latency_sample_every = 1
            self._owns_sampling = False
        for off in self._unsubscribe:
            off()
        self._unsubscribe.clear()
        self.tracker.close()
        self.stop()

    def __enter__(self) -> PerformanceMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<PerformanceMonitor series={len(self.registry)} history={len(self.history)}/{self.history.maxlen}"
            f" running={self.running}>"
        )


def _library_greenlets() -> int:
    return len(live_greenlets())


def _remove(items: list[Any], item: Any) -> None:
    try:
        items.remove(item)
    except ValueError:
        pass
