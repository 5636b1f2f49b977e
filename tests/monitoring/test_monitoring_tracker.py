"""ConnectionTracker: per-connection figures from synthetic connection events."""

from __future__ import annotations

import pytest

from nexus_green.clock import FakeClock
from nexus_green.errors import ConfigurationError, ConnectionLost, RemoteProtocolError
from nexus_green.events import EventBus
from nexus_green.monitoring.tracker import ConnectionTracker, error_name


@pytest.fixture
def tracker(bus: EventBus, clock: FakeClock) -> ConnectionTracker:
    t = ConnectionTracker(clock=clock, closed_kept=2)
    t.attach(bus)
    yield t
    t.close()


def test_full_lifecycle_of_one_connection(tracker: ConnectionTracker, bus: EventBus, clock: FakeClock, stream) -> None:
    stream.open("c1")
    info = tracker.get("c1")
    assert info is not None
    assert (info.state, info.endpoint, info.closed) == ("connected", "tcp://127.0.0.1:7600", False)
    assert info.connect_time == pytest.approx(0.007) and set(info.phases) == {"dns", "tcp", "tls"}
    stream.ok("c1", 1, 0.002, size=100)
    stream.ok("c1", 2, 0.003, size=100)
    stream.timeout("c1", 3)
    bus.emit("heartbeat.rtt", conn_id="c1", rtt=0.0125)
    bus.emit("heartbeat.timeout", conn_id="c1")
    bus.emit("reconnect.succeeded", conn_id="c1", attempt=1)
    bus.emit("protocol.error", conn_id="c1", error=RemoteProtocolError("bad tag", offset=4), offset=4)
    clock.advance(10)
    info = tracker.get("c1")
    assert info.requests == 3 and info.failures == 1
    assert (info.bytes_sent, info.bytes_received, info.frames_sent, info.frames_received) == (248, 448, 2, 2)
    assert info.heartbeat_rtt == 0.0125 and info.heartbeat_timeouts == 1 and info.reconnects == 1
    assert info.last_error == "RemoteProtocolError: bad tag"
    assert info.age == pytest.approx(10.007)
    assert tracker.active == 1 and tracker.tracked == 1 and tracker.max_heartbeat_rtt() == 0.0125
    stream.close("c1", error=ConnectionLost("reset by peer"))
    clock.advance(5)
    info = tracker.get("c1")
    assert info.closed and info.state == "closed" and info.last_error == "ConnectionLost: reset by peer"
    assert info.age == pytest.approx(10.007)  # age stops at close
    assert tracker.active == 0 and tracker.tracked == 0
    assert [c.conn_id for c in tracker.connections(include_closed=True)] == ["c1"]
    assert tracker.connections() == []
    d = info.to_dict()
    assert d["conn_id"] == "c1" and d["phases"]["tls"] == 0.004


def test_failed_connect_is_recorded_once(tracker: ConnectionTracker, stream) -> None:
    stream.refused("c2")
    closed = tracker.connections(include_closed=True)
    assert len(closed) == 1
    assert closed[0].closed and closed[0].last_error.startswith("ConnectionRefused")


def test_closed_connections_kept_are_bounded(tracker: ConnectionTracker, stream) -> None:
    for i in range(4):
        stream.open(f"c{i}")
        stream.close(f"c{i}")
    assert [c.conn_id for c in tracker.connections(include_closed=True)] == ["c2", "c3"]
    assert tracker.get("c0") is None and tracker.get("nope") is None


def test_tracked_connections_are_capped(bus: EventBus, clock: FakeClock, stream) -> None:
    t = ConnectionTracker(clock=clock, max_tracked=2, closed_kept=0)
    t.attach(bus)
    for i in range(4):
        stream.open(f"c{i}")
    stream.ok("c3", 1, 0.001)
    assert t.tracked == 2 and t.untracked > 0 and t.get("c3") is None
    assert "untracked=" in repr(t)
    stream.close("c0")
    assert t.connections(include_closed=True)[0].conn_id == "c1"  # closed_kept=0 keeps none
    t.close()
    t.close()  # idempotent
    stream.ok("c1", 2, 0.001)
    assert t.get("c1").requests == 0  # detached


def test_events_without_conn_id_or_unknown_names_are_ignored(tracker: ConnectionTracker, bus: EventBus) -> None:
    bus.emit("request.complete", qid=1, latency=0.1)
    bus.emit("connection.unknown_event", conn_id="x")
    bus.emit("heartbeat.sent", conn_id="c5")  # not a figure the tracker keeps: no record
    assert tracker.get("c5") is None
    bus.emit("heartbeat.rtt", conn_id="c5", rtt=None)  # a record created lazily by a figure it keeps
    assert tracker.get("c5").heartbeat_rtt is None
    assert tracker.get("x") is None


def test_integer_connection_ids_are_found(tracker: ConnectionTracker, bus: EventBus) -> None:
    bus.emit("connect.started", conn_id=7, endpoint="tcp://h:1")
    bus.emit("connection.closed", conn_id=7, endpoint="tcp://h:1", age=1.0, requests=0, error=None)
    assert tracker.get(7).conn_id == "7" and tracker.get("7").closed


def test_bad_options_and_error_names() -> None:
    with pytest.raises(ConfigurationError, match="max_tracked"):
        ConnectionTracker(max_tracked=0)
    with pytest.raises(ConfigurationError, match="closed_kept"):
        ConnectionTracker(closed_kept=-1)
    assert error_name("x" * 100) == "x" * 64
