"""EventBus: prefix routing, unsubscribe, listener errors, version and wants() cache."""

from __future__ import annotations

import dataclasses
import logging
import time

import pytest

import nexus_green.events as events_mod
from nexus_green.events import Event, EventBus, default_bus


def test_prefix_routing() -> None:
    bus = EventBus()
    everything: list[str] = []
    requests: list[str] = []
    tls: list[str] = []
    bus.subscribe(lambda e: everything.append(e.name))
    bus.subscribe(lambda e: requests.append(e.name), prefix="request.")
    bus.subscribe(lambda e: tls.append(e.name), prefix="connect.tls.")
    for name in ("request.complete", "connect.tls.started", "connect.tcp.complete", "request.failed", "io.sent"):
        bus.emit(name)
    assert everything == [
        "request.complete",
        "connect.tls.started",
        "connect.tcp.complete",
        "request.failed",
        "io.sent",
    ]
    assert requests == ["request.complete", "request.failed"]
    assert tls == ["connect.tls.started"]


def test_prefix_is_a_plain_string_prefix() -> None:
    bus = EventBus()
    got: list[str] = []
    bus.subscribe(lambda e: got.append(e.name), prefix="io.sent")
    bus.emit("io.sent")
    bus.emit("io.sentinel")
    bus.emit("io.received")
    assert got == ["io.sent", "io.sentinel"]


def test_event_fields_and_delivery_order() -> None:
    bus = EventBus()
    order: list[tuple] = []
    bus.subscribe(lambda e: order.append(("first", e)), prefix="x")
    bus.subscribe(lambda e: order.append(("second", e)), prefix="")
    before = time.monotonic()
    bus.emit("x.y", qid=1, latency=0.5)
    after = time.monotonic()
    assert [who for who, _ in order] == ["first", "second"]
    event = order[0][1]
    assert order[1][1] is event  # one Event object shared by all listeners
    assert event.name == "x.y" and dict(event.attrs) == {"qid": 1, "latency": 0.5}
    assert before <= event.time <= after
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.name = "z"  # type: ignore[misc]
    assert Event(name="n", time=1.0).attrs == {}


def test_emit_name_is_positional_only_so_attrs_may_be_called_name() -> None:
    bus = EventBus()
    seen: list[Event] = []
    bus.subscribe(seen.append)
    bus.emit("pool.checkout", name="pool-1")
    assert seen[0].name == "pool.checkout" and seen[0].attrs["name"] == "pool-1"


def test_emit_without_listener_builds_no_event(monkeypatch: pytest.MonkeyPatch) -> None:
    bus = EventBus()
    bus.subscribe(lambda e: None, prefix="request.")

    def boom() -> float:
        raise AssertionError("time read for an event nobody wants")

    monkeypatch.setattr(events_mod.time, "monotonic", boom)
    bus.emit("io.sent", nbytes=1)  # no listener under this name: no Event, no clock read


def test_unsubscribe_is_idempotent() -> None:
    bus = EventBus()
    got: list[str] = []
    off = bus.subscribe(lambda e: got.append(e.name))
    bus.emit("a")
    off()
    off()
    bus.emit("b")
    assert got == ["a"]


def test_double_unsubscribe_does_not_remove_a_twin_subscription() -> None:
    bus = EventBus()
    got: list[str] = []

    def listener(e: Event) -> None:
        got.append(e.name)

    off_a = bus.subscribe(listener, prefix="a")
    off_b = bus.subscribe(listener, prefix="a")  # the same listener and prefix, subscribed twice
    off_a()
    v = bus.version
    off_a()  # must not remove the second, identical subscription
    bus.emit("a.x")
    assert got == ["a.x"]
    assert bus.version == v
    off_b()
    bus.emit("a.y")
    assert got == ["a.x"]


def test_listener_errors_are_counted_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    bus = EventBus()
    got: list[str] = []

    def broken(e: Event) -> None:
        raise RuntimeError("sink down")

    bus.subscribe(broken)
    bus.subscribe(lambda e: got.append(e.name))
    with caplog.at_level(logging.ERROR, logger="nexus_green.events"):
        bus.emit("request.complete")
        bus.emit("request.failed")
    assert got == ["request.complete", "request.failed"]  # later listeners still run
    assert bus.listener_errors == 2
    assert "listener_errors=2" in repr(bus) and "subscribers=2" in repr(bus)
    assert len(caplog.records) == 2
    assert "failed on request.complete" in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info is not None


def test_version_changes_on_subscribe_and_real_unsubscribe_only() -> None:
    bus = EventBus()
    seen = [bus.version]
    off = bus.subscribe(lambda e: None)
    seen.append(bus.version)
    off()
    seen.append(bus.version)
    off()
    assert bus.version == seen[-1]  # a second unsubscribe changes nothing
    assert len(set(seen)) == 3


def test_two_buses_never_share_a_version() -> None:
    # An emitter caching wants() by version notices when it is handed another bus.
    a, b = EventBus(), EventBus()
    versions = {a.version, b.version}
    a.subscribe(lambda e: None)
    b.subscribe(lambda e: None)
    versions |= {a.version, b.version}
    assert len(versions) == 4


def test_wants_cache_is_invalidated() -> None:
    bus = EventBus()
    assert bus.wants("request.complete") is False  # cached as "nobody"
    got: list[str] = []
    off = bus.subscribe(lambda e: got.append(e.name), prefix="request.")
    assert bus.wants("request.complete") is True
    bus.emit("request.complete")
    assert got == ["request.complete"]
    assert bus.wants("io.sent") is False
    off()
    assert bus.wants("request.complete") is False
    bus.emit("request.complete")
    assert got == ["request.complete"]


def test_listener_unsubscribing_itself_during_emit() -> None:
    bus = EventBus()
    got: list[str] = []
    offs = []

    def once(e: Event) -> None:
        got.append("once:" + e.name)
        offs[0]()

    offs.append(bus.subscribe(once))
    bus.subscribe(lambda e: got.append("always:" + e.name))
    bus.emit("a")
    bus.emit("b")
    assert got == ["once:a", "always:a", "always:b"]


def test_default_bus() -> None:
    assert isinstance(default_bus, EventBus)
