"""Monitoring (layer L4): metrics, history, per-connection figures, health and export, from the event stream.

Everything here subscribes to :mod:`nexus_green.events`; the transport and
the connection never import it. One call turns everything on for the
process (the monitor on ``default_bus``, health checks, StatsD), and one
turns it off again::

    >>> m = enable()                       # enable(statsd="127.0.0.1:8125", prefix="shop", interval=10)
    >>> m.health().status
    'healthy'
    >>> disable()

Or build the pieces yourself, starting with :class:`PerformanceMonitor`:

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
from .enabling import Monitoring, disable, enable, enabled
from .export import statsd_stats, to_csv, to_json, to_prometheus
from .health import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    BreakerCheck,
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
    "enable",
    "disable",
    "enabled",
    "Monitoring",
    "BreakerCheck",
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
