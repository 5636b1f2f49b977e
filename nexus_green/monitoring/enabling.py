"""``enable()`` and ``disable()``: monitoring, health and StatsD for the whole process in one call.

This module owns the process-wide monitoring switch. :func:`enable` starts a
:class:`~nexus_green.monitoring.monitor.PerformanceMonitor` on the library's
``default_bus`` (where Clients and resilience policies emit unless given
another bus), on the registry that ``@timed`` and ``@counted`` write to by
default (:data:`~nexus_green.monitoring.registry.default_registry`), so what
they measure is exported with everything else; a
:class:`~nexus_green.monitoring.health.HealthChecker` on it; and, with
``statsd="host:port"``, a running
:class:`~nexus_green.monitoring.statsd_sink.StatsDSink` that sends counters,
gauges and latencies as StatsD timers every ``interval`` seconds.
:func:`disable` stops all of it: no greenlet and no socket stay behind.

Calling :func:`enable` again replaces the running setup.

Example::

    >>> from nexus_green.monitoring import enable, disable
    >>> m = enable()                       # no StatsD: the monitor and health only
    >>> m.monitor.running, m.sink is None, m.health().status
    (True, True, 'healthy')
    >>> disable(); m.monitor.running
    False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError
from ..events import EventBus, default_bus
from .config import MonitoringConfiguration
from .health import HealthChecker, HealthReport
from .monitor import PerformanceMonitor
from .registry import MetricsRegistry, default_registry
from .statsd_sink import StatsDSink

__all__ = ["Monitoring", "enable", "disable", "enabled", "parse_statsd_address"]

DEFAULT_STATSD_PORT = 8125


def parse_statsd_address(address: str) -> tuple[str, int, bool]:
    """``(host, port, ipv6)`` of ``"host:port"``, ``"host"`` (port 8125), ``"[::1]:8125"``.

    Example::

        >>> parse_statsd_address("127.0.0.1:9125"), parse_statsd_address("[::1]:8125"), parse_statsd_address("stats")
        (('127.0.0.1', 9125, False), ('::1', 8125, True), ('stats', 8125, False))
    """
    text = address.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigurationError(f"statsd address {address!r}: expected [IPv6]:port")
        port_text, ipv6 = rest[1:], True
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
        ipv6 = False
    if not host:
        raise ConfigurationError(f"statsd address {address!r} has no host (expected host:port)")
    try:
        port = int(port_text) if port_text else DEFAULT_STATSD_PORT
    except ValueError:
        raise ConfigurationError(f"statsd address {address!r}: port {port_text!r} is not a number") from None
    return host, port, ipv6


@dataclass(frozen=True, slots=True, kw_only=True)
class Monitoring:
    """What :func:`enable` started: the ``monitor``, the ``checker`` and the StatsD ``sink`` (or None)."""

    monitor: PerformanceMonitor
    checker: HealthChecker
    sink: Optional[StatsDSink]

    def health(self) -> HealthReport:
        """Run the health checks now."""
        return self.checker.check()

    def close(self) -> None:
        """Stop the sink (with a last flush) and the monitor."""
        if self.sink is not None:
            self.sink.close()
        self.monitor.close()


_current: Optional[Monitoring] = None


def enable(
    statsd: Optional[str] = None,
    *,
    prefix: Optional[str] = None,
    interval: Optional[float] = None,
    config: Optional[MonitoringConfiguration] = None,
    bus: EventBus = default_bus,
    registry: Optional[MetricsRegistry] = None,
    clock: Clock = SYSTEM_CLOCK,
    **options: Any,
) -> Monitoring:
    """Start monitoring, health checks and (with ``statsd``) the StatsD sink; returns what runs.

    ``statsd`` is ``"host:port"`` (port 8125 when left out; ``[v6]:port`` for
    IPv6); ``prefix`` (default "nexus_green") goes before every stat;
    ``interval`` (default 10 s) is the flush period. ``config`` and any
    :class:`MonitoringConfiguration` option given by name set the rest (a
    config with ``statsd_enabled=True`` starts the sink without ``statsd``).
    ``bus`` defaults to ``default_bus``; ``registry`` to the registry of
    ``@timed``/``@counted``. Replaces a setup that an earlier call started.
    """
    disable()
    cfg = config or MonitoringConfiguration()
    changes: dict[str, Any] = dict(options)
    if statsd is not None:
        host, port, ipv6 = parse_statsd_address(statsd)
        changes.update(statsd_enabled=True, statsd_host=host, statsd_port=port, statsd_ipv6=ipv6)
    if prefix is not None:
        changes["statsd_prefix"] = prefix
    if interval is not None:
        changes["statsd_interval"] = interval
    if changes:
        cfg = cfg.replace(**changes)
    reg = registry if registry is not None else default_registry
    if reg.quantiles != tuple(cfg.quantiles):
        raise ConfigurationError(
            f"quantiles {cfg.quantiles} differ from the registry's {reg.quantiles}: pass a registry made with them"
        )
    monitor = PerformanceMonitor(bus, config=cfg, registry=reg, clock=clock)
    sink = StatsDSink(monitor, config=cfg, clock=clock).mark().start() if cfg.statsd_enabled else None
    monitor.start()
    checker = HealthChecker(monitor)
    checker.check()  # the baseline: refusals counted on this registry before now are not news
    global _current
    _current = Monitoring(monitor=monitor, checker=checker, sink=sink)
    return _current


def disable() -> None:
    """Stop what :func:`enable` started: a last StatsD flush, then no greenlet, socket or subscription is left.

    Idempotent. Figures already counted stay in the registry.
    """
    global _current
    current, _current = _current, None
    if current is not None:
        current.close()


def enabled() -> Optional[Monitoring]:
    """What :func:`enable` started, or None."""
    return _current
