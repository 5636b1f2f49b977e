"""BusTracer and TracingMiddleware driven directly: event orders the wire rarely produces, and the bookkeeping."""

from __future__ import annotations

import gevent
import greenlet
import pytest

from nexus_green.events import EventBus
from nexus_green.pipeline import Pipeline
from nexus_green.protocol.messages import Request, Response
from nexus_green.tracing import (
    AlwaysOff,
    AlwaysOn,
    BusTracer,
    InMemorySpans,
    SpanManager,
    StatusCode,
    TracingMiddleware,
)
from nexus_green.tracing.manager import _spawn_trace
from nexus_green.tracing.span import monotonic_to_ns


@pytest.fixture
def spans() -> InMemorySpans:
    return InMemorySpans()


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def tracer(spans: InMemorySpans, bus: EventBus) -> BusTracer:
    t = BusTracer(SpanManager(sampler=AlwaysOn(), processors=[spans]), bus=bus).start()
    yield t
    t.stop()


def test_start_is_idempotent_and_stop_unsubscribes(bus: EventBus, tracer: BusTracer) -> None:
    n = len(bus._subs)
    assert tracer.start() is tracer and len(bus._subs) == n
    assert "subscribed=True" in repr(tracer)
    tracer.stop()
    tracer.stop()
    assert len(bus._subs) == 0 and not bus.wants("connect.started")


def test_stop_ends_spans_left_open(bus: EventBus, tracer: BusTracer, spans: InMemorySpans) -> None:
    bus.emit("connect.started", conn_id="c", endpoint="not a url")
    bus.emit("heartbeat.sent", conn_id="c")
    bus.emit("reconnect.scheduled", conn_id="c", attempt=1, delay=0.1)
    tracer.stop()
    assert sorted(spans.names()) == ["nexus.connect", "nexus.heartbeat", "nexus.reconnect"]
    (conn,) = [s for s in spans.spans if s.name == "nexus.connect"]
    assert conn.attributes["server.address"] == "not a url"  # not parseable: kept as given


def test_events_for_unknown_connections_are_ignored(bus: EventBus, tracer: BusTracer, spans: InMemorySpans) -> None:
    bus.emit("connect.tcp.complete", conn_id="x", duration=0.1)
    bus.emit("connect.complete", conn_id="x", phases={})
    bus.emit("heartbeat.rtt", conn_id="x", rtt=0.1)
    bus.emit("reconnect.succeeded", conn_id="x", attempt=1)
    bus.emit("request.traced", conn_id="x", latency=0.1, qid=1)  # no current span
    bus.emit("retry.attempt", attempt=2)  # no current span
    assert spans.names() == []


def test_a_second_ping_ends_the_unanswered_one(bus: EventBus, tracer: BusTracer, spans: InMemorySpans) -> None:
    bus.emit("heartbeat.sent", conn_id="c")
    bus.emit("heartbeat.sent", conn_id="c")
    bus.emit("heartbeat.rtt", conn_id="c", rtt=0.001)
    assert spans.names() == ["nexus.heartbeat", "send-ping", "receive-pong", "nexus.heartbeat"]
    # No write time in the event: the ping's write is placed at the start.
    ping = spans.spans[1]
    assert ping.end_ns == ping.start_ns + 1


def test_closed_connection_ends_its_open_spans_and_forgets_it(
    bus: EventBus, tracer: BusTracer, spans: InMemorySpans
) -> None:
    bus.emit("connect.started", conn_id="c", endpoint="tcp://h:1")
    bus.emit("connection.closed", conn_id="c", endpoint="tcp://h:1", error=None)
    assert spans.names() == ["nexus.connect"] and tracer._connecting == {}


def test_ping_write_time_splits_send_ping_from_receive_pong(
    bus: EventBus, tracer: BusTracer, spans: InMemorySpans
) -> None:
    bus.emit("heartbeat.sent", conn_id="c")
    (hb,) = tracer._heartbeats.values()
    # The event carries clock seconds: the ping's write 2 ms after the span started.
    written = (hb.start_ns - monotonic_to_ns(0.0)) / 1e9 + 0.002
    gevent.sleep(0.005)  # the pong arrives after the write
    bus.emit("heartbeat.rtt", conn_id="c", rtt=0.004, written=written)
    ping = next(s for s in spans.spans if s.name == "send-ping")
    pong = next(s for s in spans.spans if s.name == "receive-pong")
    assert abs(ping.end_ns - ping.start_ns - 2_000_000) < 1_000 and pong.start_ns == ping.end_ns


def test_unsampled_connect_records_no_phases(bus: EventBus, spans: InMemorySpans) -> None:
    t = BusTracer(SpanManager(sampler=AlwaysOff(), processors=[spans]), bus=bus).start()
    try:
        bus.emit("connect.started", conn_id="c", endpoint="tcp://h:1")
        bus.emit("connect.dns.complete", conn_id="c", duration=0.1)
        bus.emit("heartbeat.sent", conn_id="c")
        bus.emit("heartbeat.rtt", conn_id="c", rtt=0.1)
        bus.emit("connect.complete", conn_id="c", phases={"dns": 0.1})
    finally:
        t.stop()
    assert spans.names() == []


def test_span_event_values_are_made_exportable(bus: EventBus, tracer: BusTracer) -> None:
    with tracer.manager.span("op") as span:
        bus.emit("fallback.used", fallback="f", level="default", error=ValueError("v"), obj=object)
    (ev,) = span.events
    assert ev.attributes["error"] == "ValueError: v" and ev.attributes["obj"] == "<class 'object'>"


def test_failed_message_without_an_error_attribute(bus: EventBus, tracer: BusTracer, spans: InMemorySpans) -> None:
    with tracer.manager.span("op"):
        bus.emit("request.failed", conn_id="c", qid=3, fid=1, latency=0.01)
    msg = spans.spans[0]
    assert (
        msg.name == "nexus.message"
        and msg.status is StatusCode.ERROR
        and msg.attributes["error.type"] == "RuntimeError"
    )


def test_middleware_with_an_unparseable_endpoint_and_many_endpoints(spans: InMemorySpans, bus: EventBus) -> None:
    mw = TracingMiddleware(SpanManager(sampler=AlwaysOn(), processors=[spans]), bus=bus, lifecycle=False)
    handler = Pipeline([mw]).wrap(lambda r: Response(body=r.body))
    handler(Request(body=b"x", endpoint="garbage"))
    for port in range(1, 70):
        handler(Request(endpoint=f"tcp://h:{port}"))
    assert spans.spans[0].attributes["server.address"] == "garbage" and spans.spans[0].attributes["server.port"] == 0
    assert spans.spans[-1].attributes["server.port"] == 69
    assert len(mw._endpoints) == 64  # bounded
    assert "order=50" in repr(mw) and mw.subscriber is None
    mw.close()


def test_cached_response_is_noted(spans: InMemorySpans, bus: EventBus) -> None:
    mw = TracingMiddleware(SpanManager(sampler=AlwaysOn(), processors=[spans]), bus=bus, lifecycle=False)
    Pipeline([mw]).wrap(lambda r: Response(cached="memory"))(Request(endpoint="tcp://h:1"))
    assert spans.spans[0].attributes["nexus.cached"] == "memory" and "nexus.conn_id" not in spans.spans[0].attributes


def test_spawn_trace_gives_a_new_greenlet_its_spawners_context(spans: InMemorySpans) -> None:
    """The hook's decision, called as greenlet's trace machinery calls it (where coverage cannot see)."""
    m = SpanManager(sampler=AlwaysOn(), processors=[spans])
    seen = []

    def child() -> None:
        seen.append(1)

    def parent() -> gevent.Greenlet:
        with m.span("p"):
            return gevent.Greenlet(child)  # made, not started: its spawner is this greenlet

    spawner = gevent.spawn(parent)
    g = spawner.get(timeout=5)
    assert g.gr_context is None
    _spawn_trace("switch", (gevent.getcurrent(), g))
    assert g.gr_context is not None and g.gr_context is not spawner.gr_context
    _spawn_trace("switch", (gevent.getcurrent(), g))  # has a context now: left alone
    orphan = greenlet.greenlet(child)  # a raw greenlet: no spawner recorded
    _spawn_trace("throw", (gevent.getcurrent(), orphan))
    assert orphan.gr_context is None
    _spawn_trace("other", (gevent.getcurrent(), orphan))
    g.start()
    g.join(timeout=5)
    orphan.switch()
    assert seen == [1, 1] and orphan.dead


def test_trace_headers_join_the_callers_headers(spans: InMemorySpans, bus: EventBus) -> None:
    mw = TracingMiddleware(SpanManager(sampler=AlwaysOn(), processors=[spans]), bus=bus, lifecycle=False)
    seen: list[Request] = []
    handler = Pipeline([mw]).wrap(lambda r: seen.append(r) or Response())
    original = Request(body=b"b", fid=4, headers={"x-user": "7"}, timeout=2.0, idempotent=True, endpoint="tcp://h:1")
    handler(original)
    (sent,) = seen
    assert sent.headers["x-user"] == "7" and sent.headers["span-id"] == spans.spans[0].context.span_id_hex
    assert (sent.body, sent.fid, sent.timeout, sent.idempotent, sent.endpoint) == (b"b", 4, 2.0, True, "tcp://h:1")
    assert original.headers == {"x-user": "7"}  # the caller's request is not changed


def test_a_request_subclass_goes_through_with_headers(spans: InMemorySpans, bus: EventBus) -> None:
    class Tagged(Request):
        __slots__ = ()

    mw = TracingMiddleware(SpanManager(sampler=AlwaysOn(), processors=[spans]), bus=bus, lifecycle=False)
    seen: list[Request] = []
    Pipeline([mw]).wrap(lambda r: seen.append(r) or Response())(Tagged(endpoint="tcp://h:1"))
    assert type(seen[0]) is Tagged and "traceparent" in seen[0].headers


def test_custom_root_sampler_is_asked_with_the_trace_id(spans: InMemorySpans, bus: EventBus) -> None:
    asked: list[int] = []

    class Odd:
        def should_sample(self, parent: object, trace_id: int) -> bool:
            asked.append(trace_id)
            return trace_id % 2 == 1

    mw = TracingMiddleware(SpanManager(sampler=Odd(), processors=[spans]), bus=bus, lifecycle=False)
    handler = Pipeline([mw]).wrap(lambda r: Response())
    for _ in range(40):
        handler(Request(endpoint="tcp://h:1"))
    assert spans.spans and all(s.context.trace_id % 2 == 1 for s in spans.spans)
    assert len(spans.spans) == len({t for t in asked if t % 2 == 1})  # every sampled id became a span
    assert {s.context.trace_id for s in spans.spans} == {t for t in asked if t % 2 == 1}
