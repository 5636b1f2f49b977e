"""MonitoringConfiguration: every monitoring option in one frozen dataclass, with its default.

This module owns the options and their validation; the components
(:class:`~nexus_green.monitoring.monitor.PerformanceMonitor`,
:class:`~nexus_green.monitoring.health.HealthChecker`,
:class:`~nexus_green.monitoring.statsd_sink.StatsDSink`) read them and never
re-validate. A bad value raises :class:`~nexus_green.errors.ConfigurationError`
naming the option.

Example::

    >>> cfg = MonitoringConfiguration(history_seconds=60)
    >>> cfg.history_points, cfg.sample_rate
    (60, 0.1)
    >>> MonitoringConfiguration(sample_rate=2)
    Traceback (most recent call last):
    ...
    nexus_green.errors.ConfigurationError: sample_rate must be in (0, 1], got 2
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Optional

from ..errors import ConfigurationError

__all__ = ["MonitoringConfiguration"]


@dataclass(frozen=True, slots=True, kw_only=True)
class MonitoringConfiguration:
    """Every monitoring option (units: seconds, fractions 0-1, counts).

    History and sampling:

    * ``history_interval`` 1.0 s -- one history point (and one refresh of
      rates, resource and hub figures) per interval.
    * ``history_seconds`` 600 s -- how much history the ring buffer keeps
      (``history_points`` = seconds / interval, 600 by default).
    * ``rate_window`` 5.0 s -- throughput and error rate are averaged over it.
    * ``sample_rate`` 0.1 -- fraction of completed requests whose latency goes
      into the latency histogram (every k-th one, k = 1/rate; counters are
      always exact). 1.0 records every latency (docs/benchmarks.md has its cost).
    * ``numpy`` None -- count big latency batches with numpy (about 7 ns a
      latency instead of 65). None: import numpy when ``sample_rate`` is 1.0,
      where that matters, and otherwise use it only if the application has
      imported it already (importing numpy adds ~20 MB of RSS). True: always;
      False: never.
    * ``relative_accuracy`` 0.01 -- the sketch's relative-error bound (<= 1 %).
    * ``quantiles`` (0.5, 0.95, 0.99, 0.999) -- reported for every histogram.

    Bounds:

    * ``max_series`` 1000 -- cardinality guard: distinct (name, tags) series.
    * ``max_tracked_connections`` 10000 -- connections the tracker follows.
    * ``closed_connections_kept`` 100 -- closed connections kept for inspection.

    Hub health:

    * ``hub_probe_interval`` 0.05 s -- the lag probe's sleep; oversleep is lag.
    * ``use_gevent_monitor`` True -- also count gevent's own ``EventLoopBlocked``
      events when the application enabled ``gevent.config.monitor_thread``.

    Health thresholds (degraded / unhealthy):

    * ``error_rate_degraded`` 0.05 / ``error_rate_unhealthy`` 0.25
    * ``heartbeat_rtt_degraded`` 0.5 s / ``heartbeat_rtt_unhealthy`` 2.0 s
    * ``hub_lag_degraded`` 0.1 s / ``hub_lag_unhealthy`` 1.0 s
    * ``pool_utilisation_degraded`` 0.9 (pool unhealthy when it has waiters
      and no capacity left, or refused a checkout in the last interval)

    StatsD (:func:`nexus_green.monitoring.enable` starts a sink when
    ``statsd_enabled``; ``enable(statsd="host:port")`` sets it):

    * ``statsd_host`` "127.0.0.1", ``statsd_port`` 8125, ``statsd_prefix``
      "nexus_green", ``statsd_sample_rate`` 1.0 (applied to counters),
      ``statsd_interval`` 10.0 s, ``statsd_max_udp_size`` 512 bytes,
      ``statsd_ipv6`` False.
    * ``statsd_timer_samples`` 100 -- raw values sent per histogram per flush
      as StatsD timers (``|ms|@rate``); ``statsd_max_timer_lines`` 2000 --
      timer lines per flush over all histograms.

    Example::

        >>> MonitoringConfiguration().replace(statsd_enabled=True).statsd_port
        8125
    """

    history_interval: float = 1.0
    history_seconds: float = 600.0
    rate_window: float = 5.0
    sample_rate: float = 0.1
    numpy: Optional[bool] = None
    relative_accuracy: float = 0.01
    quantiles: tuple[float, ...] = (0.5, 0.95, 0.99, 0.999)
    max_series: int = 1000
    max_tracked_connections: int = 10_000
    closed_connections_kept: int = 100
    hub_probe_interval: float = 0.05
    use_gevent_monitor: bool = True
    error_rate_degraded: float = 0.05
    error_rate_unhealthy: float = 0.25
    heartbeat_rtt_degraded: float = 0.5
    heartbeat_rtt_unhealthy: float = 2.0
    hub_lag_degraded: float = 0.1
    hub_lag_unhealthy: float = 1.0
    pool_utilisation_degraded: float = 0.9
    statsd_enabled: bool = False
    statsd_host: str = "127.0.0.1"
    statsd_port: int = 8125
    statsd_prefix: str = "nexus_green"
    statsd_sample_rate: float = 1.0
    statsd_interval: float = 10.0
    statsd_max_udp_size: int = 512
    statsd_ipv6: bool = False
    statsd_timer_samples: int = 100
    statsd_max_timer_lines: int = 2000

    def __post_init__(self) -> None:
        for name in ("history_interval", "history_seconds", "rate_window", "hub_probe_interval", "statsd_interval"):
            _positive(name, getattr(self, name))
        for name in ("sample_rate", "statsd_sample_rate"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 < value <= 1.0):
                raise ConfigurationError(f"{name} must be in (0, 1], got {value!r}")
        if self.numpy not in (None, True, False):
            raise ConfigurationError(f"numpy must be None, True or False, got {self.numpy!r}")
        if not (isinstance(self.relative_accuracy, (int, float)) and 0.0 < self.relative_accuracy <= 0.01):
            raise ConfigurationError(f"relative_accuracy must be in (0, 0.01], got {self.relative_accuracy!r}")
        if not self.quantiles or any(not (isinstance(q, (int, float)) and 0.0 <= q <= 1.0) for q in self.quantiles):
            raise ConfigurationError(
                f"quantiles must be a non-empty tuple of numbers in [0, 1], got {self.quantiles!r}"
            )
        for name in (
            "max_series",
            "max_tracked_connections",
            "statsd_max_udp_size",
            "statsd_timer_samples",
            "statsd_max_timer_lines",
        ):
            _positive_int(name, getattr(self, name), minimum=1)
        _positive_int("closed_connections_kept", self.closed_connections_kept, minimum=0)
        if not (isinstance(self.statsd_port, int) and 0 < self.statsd_port < 65536):
            raise ConfigurationError(f"statsd_port must be 1-65535, got {self.statsd_port!r}")
        if not self.statsd_host:
            raise ConfigurationError("statsd_host must not be empty")
        for low, high in (
            ("error_rate_degraded", "error_rate_unhealthy"),
            ("heartbeat_rtt_degraded", "heartbeat_rtt_unhealthy"),
            ("hub_lag_degraded", "hub_lag_unhealthy"),
        ):
            _positive(low, getattr(self, low))
            if getattr(self, high) < getattr(self, low):
                raise ConfigurationError(f"{high} ({getattr(self, high)}) must be >= {low} ({getattr(self, low)})")
        _positive("pool_utilisation_degraded", self.pool_utilisation_degraded)
        if self.history_points < 1:
            raise ConfigurationError(
                f"history_seconds ({self.history_seconds}) must cover at least one history_interval ({self.history_interval})"
            )

    @property
    def history_points(self) -> int:
        """How many points the history ring buffer holds (``history_seconds / history_interval``)."""
        return int(round(self.history_seconds / self.history_interval))

    def replace(self, **changes: Any) -> MonitoringConfiguration:
        """A copy with ``changes`` applied (validated again)."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ConfigurationError(f"unknown monitoring option(s): {', '.join(sorted(unknown))}")
        return replace(self, **changes)


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (value > 0 and math.isfinite(value)):
        raise ConfigurationError(f"{name} must be a positive number, got {value!r}")


def _positive_int(name: str, value: object, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
