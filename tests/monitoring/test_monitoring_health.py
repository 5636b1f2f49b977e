"""HealthChecker: built-in checks against synthetic figures, pluggable checks, failing checks."""

from __future__ import annotations

import pytest

from nexus_green.clock import FakeClock
from nexus_green.errors import ConfigurationError
from nexus_green.events import EventBus
from nexus_green.monitoring.health import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    CheckResult,
    ErrorRateCheck,
    FunctionCheck,
    HealthChecker,
)
from nexus_green.monitoring.monitor import PerformanceMonitor


def statuses(report) -> dict:  # type: ignore[no-untyped-def]
    return {c.name: c.status for c in report.checks}


def test_everything_healthy_by_default(monitor: PerformanceMonitor) -> None:
    report = HealthChecker(monitor).check()
    assert report.status == HEALTHY and report.reasons == []
    assert statuses(report) == {
        n: HEALTHY for n in ("pool_capacity", "error_rate", "heartbeat_rtt", "hub_blocked", "breakers")
    }
    assert report.to_dict()["status"] == "healthy"


@pytest.mark.parametrize("failed, expected", [(2, HEALTHY), (10, DEGRADED), (40, UNHEALTHY)])
def test_error_rate_thresholds(
    monitor: PerformanceMonitor, stream, clock: FakeClock, failed: int, expected: str
) -> None:
    monitor.tick()
    clock.advance(1.0)
    for q in range(100 - failed):
        stream.ok("c1", q, 0.001)
    for q in range(failed):
        stream.timeout("c1", q)
    monitor.tick()
    report = HealthChecker(monitor).check()
    assert statuses(report)["error_rate"] == expected
    if expected != HEALTHY:
        assert report.status == expected
        assert report.reasons == [
            f"error_rate: error rate {failed / 100:g} >= {0.05 if expected == DEGRADED else 0.25:g}"
        ]


@pytest.mark.parametrize("rtt, expected", [(0.1, HEALTHY), (0.7, DEGRADED), (3.0, UNHEALTHY)])
def test_heartbeat_rtt_thresholds(
    monitor: PerformanceMonitor, bus: EventBus, stream, rtt: float, expected: str
) -> None:
    stream.open("c1")
    stream.open("c2")
    bus.emit("heartbeat.rtt", conn_id="c1", rtt=0.01)
    bus.emit("heartbeat.rtt", conn_id="c2", rtt=rtt)
    report = HealthChecker(monitor).check()
    assert statuses(report)["heartbeat_rtt"] == expected
    stream.close("c2")  # a closed connection's RTT no longer counts
    assert statuses(HealthChecker(monitor).check())["heartbeat_rtt"] == HEALTHY


def test_hub_blocked_check(monitor: PerformanceMonitor) -> None:
    monitor._lag_max = 0.5
    monitor.tick()
    report = HealthChecker(monitor).check()
    assert statuses(report)["hub_blocked"] == DEGRADED and "hub lag 0.5s >= 0.1s" in report.reasons[0]
    monitor._lag_max = 2.0
    monitor.tick()
    assert HealthChecker(monitor).check().status == UNHEALTHY
    monitor.tick()  # a quiet interval: healthy again
    assert HealthChecker(monitor).check().status == HEALTHY


def test_pool_capacity_check(monitor: PerformanceMonitor, bus: EventBus) -> None:
    checker = HealthChecker(monitor)
    bus.emit("pool.state", pool="p", size=4, max_size=4, in_use=2, idle=2, waiters=0, utilisation=0.5)
    assert checker.check().status == HEALTHY
    bus.emit("pool.state", pool="p", utilisation=0.95)
    report = checker.check()
    assert report.status == DEGRADED and report.reasons == ["pool_capacity: pool p utilisation 95% >= 90%"]
    bus.emit("pool.state", pool="p", waiters=3, utilisation=0.5)
    assert checker.check().reasons == ["pool_capacity: pool p has 3 checkout(s) waiting"]
    bus.emit("pool.exhausted", pool="p", wait=5.0)
    report = checker.check()
    assert report.status == UNHEALTHY and "refused 1 checkout(s)" in report.reasons[0]
    bus.emit("pool.state", pool="p", waiters=0)
    assert checker.check().status == HEALTHY  # no new refusal since the last check


def test_pluggable_and_failing_checks(monitor: PerformanceMonitor) -> None:
    def broken(mon: PerformanceMonitor) -> CheckResult:
        raise RuntimeError("no data source")

    broken.name = "custom"  # type: ignore[attr-defined]
    checker = HealthChecker(monitor, checks=[ErrorRateCheck(degraded=0.1, unhealthy=0.2)])
    checker.add(FunctionCheck("ok", lambda m: CheckResult(name="ok", status=HEALTHY)))
    checker.add(broken)  # type: ignore[arg-type]
    report = checker.check()
    assert report.status == UNHEALTHY
    assert report.reasons == ["custom: check failed: RuntimeError: no data source"]
    checker.add(FunctionCheck("weird", lambda m: ("fine", "")))
    assert "returned status 'fine'" in checker.check().checks[-1].reason
    assert HealthChecker(monitor, checks=[]).check().status == HEALTHY


def test_check_result_validates_status() -> None:
    with pytest.raises(ConfigurationError, match="returned status 'ok'"):
        CheckResult(name="x", status="ok")
    assert CheckResult(name="x", status=DEGRADED, reason="r", value=1.0).to_dict() == {
        "name": "x",
        "status": "degraded",
        "reason": "r",
        "value": 1.0,
    }
