"""Monitoring (layer L4): metrics, history, per-connection figures, health and export, from the event stream.

Everything here subscribes to :mod:`nexus_green.events`; the transport and
the connection never import it. Start with :class:`PerformanceMonitor`:

Example::

    >>> from nexus_green.events import EventBus
    >>> bus = EventBus()
    >>> with PerformanceMonitor(bus) as mon:
    ...     bus.emit("request.failed", conn_id="c1", qid=1, fid=1, latency=0.5, error=TimeoutError("late"))
    ...     mon.value("requests.failed"), mon.value("errors.timeouts")
    (1, 1)
"""

from .config import MonitoringConfiguration
from .decorators import counted, timed
from .export import statsd_stats, to_csv, to_json, to_prometheus
from .health import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    CheckResult,
    ErrorRateCheck,
    FunctionCheck,
    HealthChecker,
    HealthReport,
    HeartbeatRTTCheck,
    HubBlockedCheck,
    PoolCapacityCheck,
)
from .monitor import SNAPSHOT_SCHEMA, PerformanceMonitor
from .registry import Counter, Gauge, Histogram, MetricsRegistry, default_registry
from .sketch import DDSketch
from .statsd_sink import StatsDSink
from .tracker import ConnectionInfo, ConnectionTracker

__all__ = [
    "MonitoringConfiguration",
    "PerformanceMonitor",
    "SNAPSHOT_SCHEMA",
    "MetricsRegistry",
    "default_registry",
    "Counter",
    "Gauge",
    "Histogram",
    "DDSketch",
    "ConnectionTracker",
    "ConnectionInfo",
    "HealthChecker",
    "HealthReport",
    "CheckResult",
    "FunctionCheck",
    "PoolCapacityCheck",
    "ErrorRateCheck",
    "HeartbeatRTTCheck",
    "HubBlockedCheck",
    "HEALTHY",
    "DEGRADED",
    "UNHEALTHY",
    "StatsDSink",
    "timed",
    "counted",
    "to_json",
    "to_prometheus",
    "to_csv",
    "statsd_stats",
]
