"""HealthChecker: pluggable checks that say healthy, degraded or unhealthy, with the reasons.

This module owns health decisions. A check is any object with a ``name`` and
``__call__(monitor) -> CheckResult``; it reads figures from a
:class:`~nexus_green.monitoring.monitor.PerformanceMonitor` and decides. The
built-in checks (thresholds from
:class:`~nexus_green.monitoring.config.MonitoringConfiguration`):

* :class:`PoolCapacityCheck` -- degraded when a pool's utilisation reaches
  ``pool_utilisation_degraded`` or checkouts wait; unhealthy when a pool
  refused a checkout (``pool.exhausted``) since the previous check.
* :class:`ErrorRateCheck` -- ``errors.rate`` against ``error_rate_degraded``
  / ``error_rate_unhealthy``.
* :class:`HeartbeatRTTCheck` -- the worst last heartbeat RTT of live
  connections against ``heartbeat_rtt_degraded`` / ``_unhealthy``.
* :class:`HubBlockedCheck` -- the worst hub lag of the last interval against
  ``hub_lag_degraded`` / ``hub_lag_unhealthy``.
* :class:`BreakerCheck` -- degraded while a circuit breaker seen on the bus is
  open or half-open (a dependency is refused or on trial).

During an outage the error rate (failed calls, wherever they failed, over
``rate_window``) makes the report unhealthy and an open breaker degraded;
once calls succeed again and the breakers close, it is healthy after at most
one ``rate_window``.

The overall status is the worst check's. A check that raises makes the report
unhealthy with the exception as its reason: a broken check must not look
healthy.

Example::

    >>> from nexus_green.events import EventBus
    >>> from nexus_green.monitoring.monitor import PerformanceMonitor
    >>> with PerformanceMonitor(EventBus()) as mon:
    ...     report = HealthChecker(mon).check()
    >>> report.status, report.reasons
    ('healthy', [])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Protocol

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .monitor import PerformanceMonitor

__all__ = [
    "HEALTHY",
    "DEGRADED",
    "UNHEALTHY",
    "CheckResult",
    "HealthReport",
    "HealthCheck",
    "FunctionCheck",
    "PoolCapacityCheck",
    "ErrorRateCheck",
    "HeartbeatRTTCheck",
    "HubBlockedCheck",
    "BreakerCheck",
    "HealthChecker",
]

HEALTHY = "healthy"
DEGRADED = "degraded"
UNHEALTHY = "unhealthy"
_RANK = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckResult:
    """One check's verdict: ``status`` and, unless healthy, a ``reason``.

    Example::

        >>> CheckResult(name="x", status="degraded", reason="slow").status
        'degraded'
        >>> CheckResult(name="x", status="fine")
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: check 'x' returned status 'fine' (healthy, degraded or unhealthy)
    """

    name: str
    status: str
    reason: str = ""
    value: Optional[float] = None

    def __post_init__(self) -> None:
        if self.status not in _RANK:
            raise ConfigurationError(
                f"check {self.name!r} returned status {self.status!r} (healthy, degraded or unhealthy)"
            )

    def to_dict(self) -> dict[str, Any]:
        """A plain dict."""
        return {"name": self.name, "status": self.status, "reason": self.reason, "value": self.value}


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthReport:
    """The overall ``status`` (worst of the checks), each check's result, and the reasons.

    Example::

        >>> r = HealthReport(status="degraded", checks=(CheckResult(name="a", status="degraded", reason="slow"),))
        >>> r.reasons, r.to_dict()["status"]
        (['a: slow'], 'degraded')
    """

    status: str
    checks: tuple[CheckResult, ...] = field(default_factory=tuple)

    @property
    def reasons(self) -> list[str]:
        """``"name: reason"`` of every check that is not healthy."""
        return [f"{c.name}: {c.reason}" for c in self.checks if c.status != HEALTHY]

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-serialisable dict."""
        return {"status": self.status, "reasons": self.reasons, "checks": [c.to_dict() for c in self.checks]}


class HealthCheck(Protocol):
    """What a check is: a ``name`` and a call that judges a monitor."""

    name: str

    def __call__(self, monitor: PerformanceMonitor) -> CheckResult: ...


def _grade(name: str, value: Optional[float], degraded: float, unhealthy: float, what: str, unit: str) -> CheckResult:
    if value is None:
        return CheckResult(name=name, status=HEALTHY, reason="", value=None)
    if value >= unhealthy:
        return CheckResult(
            name=name, status=UNHEALTHY, reason=f"{what} {value:g}{unit} >= {unhealthy:g}{unit}", value=value
        )
    if value >= degraded:
        return CheckResult(
            name=name, status=DEGRADED, reason=f"{what} {value:g}{unit} >= {degraded:g}{unit}", value=value
        )
    return CheckResult(name=name, status=HEALTHY, value=value)


class FunctionCheck:
    """Wrap a plain function ``fn(monitor) -> CheckResult | (status, reason)`` as a check.

    Example::

        >>> chk = FunctionCheck("disk", lambda mon: ("degraded", "disk 91% full"))
        >>> chk(None).reason
        'disk 91% full'
    """

    def __init__(self, name: str, fn: Callable[[Any], Any]) -> None:
        self.name = name
        self.fn = fn

    def __call__(self, monitor: PerformanceMonitor) -> CheckResult:
        out = self.fn(monitor)
        if isinstance(out, CheckResult):
            return out
        status, reason = out
        return CheckResult(name=self.name, status=status, reason=reason)


class ErrorRateCheck:
    """Failed / finished requests over the rate window against two thresholds.

    Example::

        >>> ErrorRateCheck(degraded=0.05, unhealthy=0.25).name
        'error_rate'
    """

    name = "error_rate"

    def __init__(self, *, degraded: float, unhealthy: float) -> None:
        self.degraded, self.unhealthy = degraded, unhealthy

    def __call__(self, monitor: PerformanceMonitor) -> CheckResult:
        return _grade(self.name, monitor.value("errors.rate"), self.degraded, self.unhealthy, "error rate", "")


class HeartbeatRTTCheck:
    """The worst last heartbeat RTT among live connections (seconds).

    Example::

        >>> HeartbeatRTTCheck(degraded=0.5, unhealthy=2.0).name
        'heartbeat_rtt'
    """

    name = "heartbeat_rtt"

    def __init__(self, *, degraded: float, unhealthy: float) -> None:
        self.degraded, self.unhealthy = degraded, unhealthy

    def __call__(self, monitor: PerformanceMonitor) -> CheckResult:
        rtt = monitor.tracker.max_heartbeat_rtt()
        return _grade(self.name, rtt, self.degraded, self.unhealthy, "heartbeat RTT", "s")


class HubBlockedCheck:
    """The worst hub lag seen in the last interval (seconds).

    Example::

        >>> HubBlockedCheck(degraded=0.1, unhealthy=1.0).name
        'hub_blocked'
    """

    name = "hub_blocked"

    def __init__(self, *, degraded: float, unhealthy: float) -> None:
        self.degraded, self.unhealthy = degraded, unhealthy

    def __call__(self, monitor: PerformanceMonitor) -> CheckResult:
        return _grade(self.name, monitor.value("hub.lag.worst"), self.degraded, self.unhealthy, "hub lag", "s")


class BreakerCheck:
    """Degraded while any circuit breaker is open or half-open (breakers on the monitor's bus).

    Example::

        >>> from nexus_green.events import EventBus
        >>> from nexus_green.monitoring.monitor import PerformanceMonitor
        >>> bus = EventBus()
        >>> with PerformanceMonitor(bus) as mon:
        ...     bus.emit("breaker.state", breaker="db", old="closed", new="open", reason="failure_rate")
        ...     BreakerCheck()(mon).reason
        'breaker db is open'
    """

    name = "breakers"

    def __call__(self, monitor: PerformanceMonitor) -> CheckResult:
        states = monitor.outages.breaker_states()
        bad = sorted((name, state) for name, state in states.items() if state != "closed")
        if not bad:
            return CheckResult(name=self.name, status=HEALTHY, value=0)
        reason = ", ".join(f"breaker {name} is {state}" for name, state in bad)
        return CheckResult(name=self.name, status=DEGRADED, reason=reason, value=len(bad))


class PoolCapacityCheck:
    """Every pool has capacity: no refused checkouts, no waiters, utilisation under the threshold.

    Example::

        >>> PoolCapacityCheck(degraded_utilisation=0.9).name
        'pool_capacity'
    """

    name = "pool_capacity"

    def __init__(self, *, degraded_utilisation: float) -> None:
        self.degraded_utilisation = degraded_utilisation
        self._exhausted_seen: dict[str, float] = {}

    def __call__(self, monitor: PerformanceMonitor) -> CheckResult:
        found = [CheckResult(name=self.name, status=HEALTHY)]
        for m in monitor.registry.series():
            if not m.name.startswith("pool.") or m.kind == "histogram":
                continue
            pool = dict(m.tags).get("pool", "")
            value = float(m.read() if m.kind == "gauge" else m.value)  # type: ignore[union-attr]
            if m.name == "pool.exhausted":
                before = self._exhausted_seen.get(pool, 0.0)
                self._exhausted_seen[pool] = value
                if value > before:
                    reason = f"pool {pool} refused {value - before:g} checkout(s) for lack of capacity"
                    found.append(CheckResult(name=self.name, status=UNHEALTHY, reason=reason, value=value - before))
            elif m.name == "pool.waiters" and value > 0:
                reason = f"pool {pool} has {value:g} checkout(s) waiting"
                found.append(CheckResult(name=self.name, status=DEGRADED, reason=reason, value=value))
            elif m.name == "pool.utilisation" and value >= self.degraded_utilisation:
                reason = f"pool {pool} utilisation {value:.0%} >= {self.degraded_utilisation:.0%}"
                found.append(CheckResult(name=self.name, status=DEGRADED, reason=reason, value=value))
        return max(found, key=lambda r: _RANK[r.status])


class HealthChecker:
    """Runs checks against a monitor and combines them (worst wins).

    ``checks`` defaults to the five built-in ones with thresholds from the
    monitor's configuration; :meth:`add` plugs in more.

    Example::

        >>> from nexus_green.events import EventBus
        >>> from nexus_green.monitoring.monitor import PerformanceMonitor
        >>> mon = PerformanceMonitor(EventBus())
        >>> hc = HealthChecker(mon)
        >>> hc.add(FunctionCheck("maintenance", lambda m: ("degraded", "draining for deploy")))
        >>> r = hc.check(); r.status, r.reasons
        ('degraded', ['maintenance: draining for deploy'])
        >>> mon.close()
    """

    def __init__(self, monitor: PerformanceMonitor, checks: Optional[Sequence[HealthCheck]] = None) -> None:
        self.monitor = monitor
        cfg = monitor.config
        self.checks: list[HealthCheck] = (
            list(checks)
            if checks is not None
            else [
                PoolCapacityCheck(degraded_utilisation=cfg.pool_utilisation_degraded),
                ErrorRateCheck(degraded=cfg.error_rate_degraded, unhealthy=cfg.error_rate_unhealthy),
                HeartbeatRTTCheck(degraded=cfg.heartbeat_rtt_degraded, unhealthy=cfg.heartbeat_rtt_unhealthy),
                HubBlockedCheck(degraded=cfg.hub_lag_degraded, unhealthy=cfg.hub_lag_unhealthy),
                BreakerCheck(),
            ]
        )

    def add(self, check: HealthCheck) -> None:
        """Plug in another check."""
        self.checks.append(check)

    def check(self) -> HealthReport:
        """Run every check now and combine the results."""
        results: list[CheckResult] = []
        for chk in self.checks:
            name = getattr(chk, "name", type(chk).__name__)
            try:
                result = chk(self.monitor)
            except Exception as exc:
                result = CheckResult(name=name, status=UNHEALTHY, reason=f"check failed: {type(exc).__name__}: {exc}")
            results.append(result)
        status = max((r.status for r in results), key=_RANK.__getitem__, default=HEALTHY)
        return HealthReport(status=status, checks=tuple(results))
