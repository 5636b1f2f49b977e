"""Backpressure gates: watermarks with hysteresis, block vs raise, events, per-connection gates."""

from __future__ import annotations

import gevent
import pytest
from gevent.event import Event

from nexus_green.errors import ConfigurationError, Overloaded, UsageError
from nexus_green.events import EventBus
from nexus_green.middleware import BackpressureGate, BackpressureMiddleware, Watermarks
from nexus_green.protocol.messages import Request, Response


def recorder(bus: EventBus) -> list:
    seen: list = []
    bus.subscribe(seen.append, prefix="backpressure.")
    return seen


def test_watermarks_defaults_and_validation() -> None:
    assert Watermarks().high == 1000 and Watermarks().low == 800
    assert Watermarks(high=1).low == 0
    for kwargs in ({"high": 0}, {"high": 5, "low": 5}, {"high": 5, "low": -1}, {"high": "5"}):
        with pytest.raises(ConfigurationError):
            Watermarks(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        BackpressureGate(on_overload="drop")
    with pytest.raises(ConfigurationError):
        BackpressureGate(max_wait=-1)


def test_hysteresis_and_events() -> None:
    bus = EventBus()
    seen = recorder(bus)
    gate = BackpressureGate(Watermarks(high=3, low=1), on_overload="raise", bus=bus, name="g")
    for _ in range(3):
        gate.acquire()
    assert gate.paused and [e.name for e in seen] == ["backpressure.high"]
    gate.release()  # 2 in flight: above low, still paused
    assert gate.paused
    with pytest.raises(Overloaded, match="gate 'g' paused: 2 in flight"):
        gate.acquire()
    gate.release()  # 1 == low: resumes
    assert not gate.paused
    assert [e.name for e in seen] == ["backpressure.high", "backpressure.rejected", "backpressure.low"]
    assert seen[1].attrs["reason"] == "overloaded"
    gate.acquire()
    s = gate.stats()
    assert (s.in_flight, s.peak, s.rejected, s.admitted, s.paused) == (2, 3, 1, 4, False)
    assert "open" in repr(gate)


def test_release_more_than_acquired_is_usage_error() -> None:
    with pytest.raises(UsageError, match="released more often"):
        BackpressureGate().release()


def test_block_mode_waits_until_low_watermark() -> None:
    bus = EventBus()
    seen = recorder(bus)
    gate = BackpressureGate(Watermarks(high=2, low=0), max_wait=5, bus=bus)
    gate.acquire()
    gate.acquire()
    admitted = Event()

    def waiter() -> None:
        gate.acquire()
        admitted.set()

    g = gevent.spawn(waiter)
    gevent.sleep(0.01)
    assert not admitted.is_set() and gate.waiting == 1
    gate.release()  # 1 in flight, low is 0: still paused
    gevent.sleep(0.01)
    assert not admitted.is_set()
    gate.release()
    assert admitted.wait(2)
    g.join(2)
    assert gate.in_flight == 1 and gate.stats().waited == 1
    assert "backpressure.waited" in [e.name for e in seen]


def test_block_mode_times_out_with_overloaded() -> None:
    gate = BackpressureGate(Watermarks(high=1), max_wait=0.02)
    gate.acquire()
    with pytest.raises(Overloaded, match="after waiting"):
        gate.acquire()
    assert gate.rejected == 1 and gate.waiting == 0


def test_woken_waiters_recheck_when_gate_pauses_again() -> None:
    gate = BackpressureGate(Watermarks(high=1, low=0), max_wait=0.2)
    gate.acquire()
    results: list = []

    def waiter() -> None:
        try:
            gate.acquire()
            results.append("in")
        except Overloaded:
            results.append("overloaded")

    gs = [gevent.spawn(waiter) for _ in range(2)]
    gevent.sleep(0.01)
    gate.release()  # one gets in, which pauses the gate again; the other waits and times out
    gevent.joinall(gs, timeout=3)
    assert sorted(results) == ["in", "overloaded"]


def test_middleware_client_and_connection_gates() -> None:
    mw = BackpressureMiddleware(client=Watermarks(high=10), per_connection=Watermarks(high=1), on_overload="raise")
    inner: list = []

    def nested(request: Request) -> Response:
        # while a request to "a" is in flight, another to "a" is refused, one to "b" passes
        with pytest.raises(Overloaded):
            mw(Request(endpoint="a"), lambda r: Response())
        inner.append(mw(Request(endpoint="b"), lambda r: Response(body=b"b")).body)
        inner.append(mw(Request(endpoint="x", context={"conn_id": "c1"}), lambda r: Response(body=b"c1")).body)
        return Response()

    mw(Request(endpoint="a"), nested)
    assert inner == [b"b", b"c1"]
    stats = mw.stats()
    assert set(stats) == {"client", "connection:a", "connection:b", "connection:c1"}
    assert (stats["client"].in_flight, stats["client"].peak, stats["client"].admitted) == (0, 2, 4)
    assert "connections=3" in repr(mw)


def test_middleware_releases_on_error_and_can_disable_bounds() -> None:
    mw = BackpressureMiddleware(client=None, per_connection=Watermarks(high=1))

    def boom(request: Request) -> Response:
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        mw(Request(endpoint="a"), boom)
    assert mw.gate_for("a").in_flight == 0
    off = BackpressureMiddleware(client=None, per_connection=None)
    assert off(Request(), lambda r: Response(code=201)).code == 201
    assert off.stats() == {}
    gate = BackpressureGate(Watermarks(high=2), name="shared")
    assert BackpressureMiddleware(client=gate).client is gate


def test_middleware_forgets_idle_connection_gates() -> None:
    mw = BackpressureMiddleware(client=None, max_connections=2)
    for ep in "abc":
        mw(Request(endpoint=ep), lambda r: Response())
    assert set(mw.connections) == {"c"}
