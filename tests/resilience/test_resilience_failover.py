"""Failover across endpoints with Envoy-style outlier ejection, on a FakeClock."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from nexus_green.clock import FakeClock
from nexus_green.deadlines import deadline
from nexus_green.errors import ConfigurationError, ConnectError, ConnectionLost, ConnectionRefused, RemoteProtocolError
from nexus_green.events import EventBus
from nexus_green.resilience.failovers import Failover, FailoverConfig, FailoverPolicy, failover


class Service:
    """Endpoints that fail while listed in ``down``."""

    def __init__(self, *down: str, exc: Optional[BaseException] = None) -> None:
        self.down = set(down)
        self.exc = exc or ConnectionRefused("refused")
        self.calls: list[str] = []

    def __call__(self, endpoint: str) -> str:
        self.calls.append(endpoint)
        if endpoint in self.down:
            raise self.exc
        return endpoint


def make(*endpoints: str, clock: FakeClock, bus: Any = None, **options: Any) -> Failover:
    return Failover(endpoints=endpoints, clock=clock, bus=bus or EventBus(), **options)


def test_ordered_mode_prefers_the_primary() -> None:
    fo = make("a", "b", "c", clock=FakeClock())
    svc = Service("a")
    assert fo.run(svc, idempotent=True) == "b"
    assert svc.calls == ["a", "b"]
    svc.down.clear()
    assert fo.run(svc, idempotent=True) == "a"


def test_round_robin_rotates() -> None:
    fo = make("a", "b", "c", clock=FakeClock(), mode="round_robin")
    svc = Service()
    assert [fo.run(svc, idempotent=True) for _ in range(4)] == ["a", "b", "c", "a"]


def test_ejection_after_consecutive_failures_for_growing_times() -> None:
    clock = FakeClock()
    bus = EventBus()
    events: list[Any] = []
    bus.subscribe(events.append, prefix="failover.")
    fo = make("a", "b", clock=clock, bus=bus)
    svc = Service("a")
    for _ in range(4):
        fo.run(svc, idempotent=True)
    assert not fo.policy.is_ejected("a")
    fo.run(svc, idempotent=True)  # 5th consecutive failure
    assert fo.policy.ejected() == ["a"]
    ej = [e for e in events if e.name == "failover.ejected"]
    assert ej[-1].attrs == {"endpoint": "a", "until": 30.0, "ejections": 1}
    svc.calls.clear()
    fo.run(svc, idempotent=True)
    assert svc.calls == ["b"]  # ejected: not tried
    clock.advance(30)
    assert fo.policy.on_probation("a")
    fo.run(svc, idempotent=True)  # the probe (a real call) fails: ejected again, for longer
    ej = [e for e in events if e.name == "failover.ejected"]
    assert ej[-1].attrs == {"endpoint": "a", "until": 90.0, "ejections": 2}
    clock.advance(60)
    svc.down.clear()
    assert fo.run(svc, idempotent=True) == "a"  # the probe succeeds: readmitted
    assert events[-1].name == "failover.readmitted" and not fo.policy.on_probation("a")


def test_ejection_time_is_capped_and_decays_while_healthy() -> None:
    clock = FakeClock()
    policy = FailoverPolicy(
        FailoverConfig(endpoints=("a", "b"), consecutive_failures=1, max_ejection_time=70.0), clock=clock
    )
    policy.record_failure("a")
    for expected in (60.0, 70.0, 70.0):
        clock.advance(policy.health("a").ejected_until - clock.now())  # type: ignore[operator]
        policy.record_failure("a")
        assert policy.health("a").ejected_until == clock.now() + expected
    clock.advance(70)
    policy.record_success("a")
    assert policy.health("a").ejections == 4
    clock.advance(90)  # three base periods healthy: the multiplier decays by 3
    policy.record_failure("a")
    assert policy.health("a").ejections == 2 and policy.health("a").ejected_until == clock.now() + 60.0


def test_never_ejects_all_endpoints() -> None:
    clock = FakeClock()
    fo = make("a", "b", clock=clock, consecutive_failures=1)
    svc = Service("a", "b")
    for _ in range(5):
        with pytest.raises(ConnectionRefused):
            fo.run(svc, idempotent=True)
    assert fo.policy.ejected() == ["a"]  # b stays: one of two is the most
    solo = make("only", clock=clock, consecutive_failures=1)
    for _ in range(3):
        with pytest.raises(ConnectionRefused):
            solo.run(svc.__class__("only"), idempotent=True)
    assert solo.policy.ejected() == []


def test_max_ejection_percent() -> None:
    clock = FakeClock()
    p = FailoverPolicy(FailoverConfig(endpoints=tuple("abcd"), consecutive_failures=1), clock=clock)
    for ep in "abcd":
        p.record_failure(ep)
    assert p.ejected() == ["a", "b"]  # 50% of 4
    p0 = FailoverPolicy(
        FailoverConfig(endpoints=tuple("abcd"), consecutive_failures=1, max_ejection_percent=0), clock=clock
    )
    for ep in "abcd":
        p0.record_failure(ep)
    assert p0.ejected() == ["a"]  # at least one may always go (Envoy), never all
    assert "ejected=['a']" in repr(p0)


def test_active_probe_readmits_or_reejects() -> None:
    clock = FakeClock()
    healthy: dict[str, Any] = {"a": False}

    def probe(ep: str) -> bool:
        if healthy[ep] == "raise":
            raise ConnectionError("probe broke")
        return bool(healthy[ep])

    fo = make("a", "b", clock=clock, consecutive_failures=1, probe=probe)
    svc = Service("a")
    fo.run(svc, idempotent=True)
    clock.advance(30)
    svc.calls.clear()
    assert fo.run(svc, idempotent=True) == "b"
    assert svc.calls == ["b"] and fo.policy.is_ejected("a")  # the probe failed: no real call to a
    clock.advance(60)
    healthy["a"] = "raise"
    fo.run(svc, idempotent=True)
    assert fo.policy.is_ejected("a")
    clock.advance(90)
    healthy["a"] = True
    svc.down.clear()
    assert fo.run(svc, idempotent=True) == "a"
    assert not fo.policy.is_ejected("a") and not fo.policy.on_probation("a")


def test_no_endpoint_passing_its_probe_is_a_connect_error() -> None:
    clock = FakeClock()
    fo = make("a", "b", clock=clock, consecutive_failures=1, probe=lambda ep: False)
    fo.policy.record_failure("a")
    clock.advance(31)  # a on probation (not counted as ejected), so b may be ejected
    fo.policy.record_failure("b")
    with pytest.raises(ConnectError, match="passed its probe"):
        fo.run(Service(), idempotent=True)


def test_non_failover_errors_are_raised_at_once_and_not_counted() -> None:
    fo = make("a", "b", clock=FakeClock())
    svc = Service("a", exc=RemoteProtocolError("garbage"))
    with pytest.raises(RemoteProtocolError):
        fo.run(svc, idempotent=True)
    assert svc.calls == ["a"] and fo.policy.health("a").consecutive_failures == 0


def test_non_idempotent_calls_fail_over_only_when_not_sent() -> None:
    fo = make("a", "b", clock=FakeClock())
    lost = Service("a", exc=ConnectionLost("reset mid-request"))
    with pytest.raises(ConnectionLost):
        fo.run(lost, idempotent=False)
    assert lost.calls == ["a"]
    refused = Service("a")
    assert fo.run(refused, idempotent=False) == "b"


def test_stops_at_the_overall_deadline() -> None:
    clock = FakeClock()
    fo = make("a", "b", "c", clock=clock)

    def slow_fail(ep: str) -> str:
        clock.advance(5)
        raise ConnectionRefused(ep)

    with deadline(4.0, clock=clock), pytest.raises(ConnectionRefused, match="a"):
        fo.run(slow_fail, idempotent=True)


def test_decorator_passes_the_endpoint() -> None:
    @failover(["p", "r"], idempotent=lambda key: key.startswith("get"), endpoint_arg="host")
    def call(key: str, *, host: str) -> str:
        if host == "p":
            raise ConnectionLost()
        return f"{key}@{host}"

    assert call("get-x") == "get-x@r"
    with pytest.raises(ConnectionLost):
        call("put-x")
    assert "Failover" in repr(call.failover)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"endpoints": ()}, "at least one endpoint"),
        ({"endpoints": ("a", "a")}, "distinct"),
        ({"endpoints": ("a",), "mode": "random"}, "mode"),
        ({"endpoints": ("a",), "consecutive_failures": 0}, "consecutive_failures"),
        ({"endpoints": ("a",), "base_ejection_time": 0}, "ejection times"),
        ({"endpoints": ("a",), "max_ejection_percent": 101}, "max_ejection_percent"),
    ],
)
def test_bad_failover_configuration(options: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        FailoverConfig(**options)


def test_failover_needs_endpoints() -> None:
    with pytest.raises(ConfigurationError, match="needs endpoints"):
        Failover()
    fo = Failover(FailoverConfig(endpoints=("a",)), endpoints=["x", "y"])
    assert fo.config.endpoints == ("x", "y")
