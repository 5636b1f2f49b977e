"""Tracing at the seams: a real Client, the embedded server and raw-socket peers, plain and after patch_all.

The trace tree crosses the wire (client span -> server span), the bytes on
the wire show what is (and is not) propagated, and the connection lifecycle
(connect phases, heartbeats, reconnects) and the resilience layer (retries,
breaker, fallback) show up as spans and span events.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import gevent
import pytest

from nexus_green import Client
from nexus_green.connection import Connection, ConnectionOptions
from nexus_green.connection.backoff import FixedInterval
from nexus_green.errors import CircuitOpen, NexusError, RequestTimeout
from nexus_green.events import EventBus
from nexus_green.pipeline import ORDER_RESILIENCE
from nexus_green.protocol.frames import Frame, FrameDecoder, encode_frame
from nexus_green.resilience import BreakerConfig, FallbackConfig, RetryConfig
from nexus_green.resilience.middleware import ResilienceMiddleware
from nexus_green.testing import FID_SILENT, EmbeddedServer, Reply, run_module_patched
from nexus_green.testing.hostile import ListeningPeer, RefusingPort, settle_io
from nexus_green.testing.socks5_proxy import Socks5Proxy
from nexus_green.testing.tls import make_test_certificates
from nexus_green.tracing import (
    ORDER_TRACING,
    AlwaysOff,
    AlwaysOn,
    InMemorySpans,
    ParentBased,
    Span,
    SpanKind,
    SpanManager,
    StatusCode,
    TraceIdRatio,
    TracingMiddleware,
)

pytestmark = pytest.mark.usefixtures("leakcheck")


class RecordingPeer(ListeningPeer):
    """A NexusKit echo server written on raw sockets: it keeps every request's bytes as they arrived."""

    def __init__(self) -> None:
        super().__init__()
        self.wire: list[bytes] = []

    def serve(self, sock: Any) -> None:
        decoder = FrameDecoder()
        buf = b""
        while True:
            data = sock.recv(65536)
            if not data:
                return
            buf += data
            for frame in decoder.feed(data):
                size = struct.unpack(">I", buf[:4])[0] + 4
                self.wire.append(buf[:size])
                buf = buf[size:]
                if frame.tp & 0x01:
                    continue
                sock.sendall(encode_frame(Frame(qid=frame.qid, fid=frame.fid, code=200, res=1, body=frame.body)))
            self.notify_changed()


def dh(raw: bytes) -> int:
    """The Dh field (header block length) of one raw frame: bytes 22-23 after the 4-byte length."""
    return int(struct.unpack(">H", raw[22:24])[0])


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
def spans() -> InMemorySpans:
    return InMemorySpans()


@pytest.fixture
def tracer(spans: InMemorySpans) -> SpanManager:
    return SpanManager(sampler=AlwaysOn(), processors=[spans])


@pytest.fixture
def mw(tracer: SpanManager, bus: EventBus) -> Iterator[TracingMiddleware]:
    m = TracingMiddleware(tracer, bus=bus)
    yield m
    m.close()


def named(spans: InMemorySpans, name: str) -> list[Span]:
    return [s for s in spans.spans if s.name == name]


def children(spans: InMemorySpans, parent: Span) -> list[str]:
    return sorted(s.name for s in spans.spans if s.context.parent_span_id == parent.context.span_id)


def test_order_is_outermost() -> None:
    assert ORDER_TRACING < ORDER_RESILIENCE
    assert TracingMiddleware.order == ORDER_TRACING


def test_span_tree_crosses_the_wire(
    bus: EventBus, spans: InMemorySpans, tracer: SpanManager, mw: TracingMiddleware
) -> None:
    with (
        EmbeddedServer(tracer=tracer) as server,
        Client(server.url, middlewares=[mw], bus=bus, heartbeat_interval=None) as c,
    ):
        with tracer.span("checkout") as root:
            for _ in range(3):
                assert c.request(b"ping", fid=1).body == b"ping"
    requests = named(spans, "nexus.request")
    servers = named(spans, "nexus.server")
    assert len(requests) == 3 and len(servers) == 3
    for req in requests:
        assert req.kind is SpanKind.CLIENT and req.context.parent_span_id == root.context.span_id
        assert req.attributes["server.address"] == "127.0.0.1" and req.attributes["server.port"] == server.port
        assert req.attributes["nexus.code"] == 200 and req.attributes["nexus.fid"] == 1
        (srv,) = [s for s in servers if s.context.parent_span_id == req.context.span_id]
        assert srv.kind is SpanKind.SERVER and srv.context.trace_id == root.context.trace_id
        assert req.start_ns <= srv.start_ns and srv.end_ns <= req.end_ns
        kids = children(spans, req)
        assert [k for k in kids if k != "nexus.connect"] == ["decode", "encode", "nexus.message", "nexus.server"]
        (msg,) = [s for s in named(spans, "nexus.message") if s.context.parent_span_id == req.context.span_id]
        assert children(spans, msg) == ["receive", "send"]
        assert msg.attributes["nexus.bytes_out"] > 24 and msg.attributes["nexus.bytes_in"] == 24 + 4
    # The connection was opened by the first request: its span is that request's child, with its phases.
    (conn,) = named(spans, "nexus.connect")
    assert conn.context.parent_span_id == requests[0].context.span_id
    assert children(spans, conn) == ["connect.dns", "connect.tcp"]
    assert conn.attributes["nexus.connect.tcp_s"] > 0 and conn.attributes["server.port"] == server.port
    (dns,) = named(spans, "connect.dns")
    assert dns.attributes["dns.question.name"] == "127.0.0.1"


def test_sampled_request_carries_both_header_forms(bus: EventBus, spans: InMemorySpans, mw: TracingMiddleware) -> None:
    with RecordingPeer() as peer, Client(peer.url, middlewares=[mw], bus=bus, heartbeat_interval=None) as c:
        c.request(b"x", fid=3)
    (raw,) = peer.wire
    (frame,) = FrameDecoder().feed(raw)
    (span,) = named(spans, "nexus.request")
    ctx = span.context
    assert dh(raw) > 0
    assert frame.headers["trace-id"] == ctx.trace_id_hex and frame.headers["span-id"] == ctx.span_id_hex
    assert frame.headers["traceparent"] == f"00-{ctx.trace_id_hex}-{ctx.span_id_hex}-01"
    assert "parent-span-id" not in frame.headers  # a root has no parent


def test_unsampled_root_sends_no_header_block(bus: EventBus, spans: InMemorySpans) -> None:
    mw = TracingMiddleware(SpanManager(sampler=ParentBased(AlwaysOff()), processors=[spans]), bus=bus)
    try:
        with RecordingPeer() as peer, Client(peer.url, middlewares=[mw], bus=bus, heartbeat_interval=None) as c:
            for _ in range(5):
                c.request(b"abc", fid=2)
    finally:
        mw.close()
    assert len(peer.wire) == 5
    for raw in peer.wire:
        assert dh(raw) == 0 and len(raw) == 24 + 3 and raw.endswith(b"abc")
    assert spans.names() == []


def test_unsampled_trace_propagates_its_decision(bus: EventBus, spans: InMemorySpans) -> None:
    tracer = SpanManager(sampler=ParentBased(AlwaysOff()), processors=[spans])
    mw = TracingMiddleware(tracer, bus=bus)
    server_spans = InMemorySpans()
    try:
        with (
            EmbeddedServer(tracer=SpanManager(processors=[server_spans])) as server,
            Client(server.url, middlewares=[mw], bus=bus, heartbeat_interval=None) as c,
            tracer.span("unsampled-root") as root,
        ):
            c.request(b"x", fid=1)
            with RecordingPeer() as peer, Client(peer.url, middlewares=[mw], bus=bus, heartbeat_interval=None) as c2:
                c2.request(b"y", fid=1)
    finally:
        mw.close()
    assert not root.recording and spans.names() == [] and server_spans.names() == []
    (frame,) = FrameDecoder().feed(peer.wire[0])
    assert frame.headers["traceparent"].endswith("-00")
    assert frame.headers["span-id"] == root.context.span_id_hex


def test_strict_mode_sends_nothing_extra(bus: EventBus, spans: InMemorySpans, tracer: SpanManager) -> None:
    mw = TracingMiddleware(tracer, bus=bus, strict=True)
    unsampled = TracingMiddleware(SpanManager(sampler=AlwaysOff()), bus=bus, strict=True, lifecycle=False)
    try:
        with RecordingPeer() as peer:
            with Client(peer.url, middlewares=[mw], bus=bus, heartbeat_interval=None, strict=True) as c:
                c.request(b"strict", fid=4)
            with Client(peer.url, middlewares=[unsampled], bus=bus, heartbeat_interval=None, strict=True) as c:
                with unsampled.manager.span("off"):
                    c.request(b"strict", fid=4)
    finally:
        mw.close()
        unsampled.close()
    assert len(peer.wire) == 2
    for raw in peer.wire:
        assert dh(raw) == 0 and raw.endswith(b"strict") and len(raw) == 24 + 6
    assert len(named(spans, "nexus.request")) == 1  # traced locally all the same


def test_failed_request_records_the_error_on_request_and_message(
    bus: EventBus, spans: InMemorySpans, mw: TracingMiddleware
) -> None:
    with EmbeddedServer() as server, Client(server.url, middlewares=[mw], bus=bus, heartbeat_interval=None) as c:
        with pytest.raises(RequestTimeout):
            c.request(b"", fid=FID_SILENT, timeout=0.05)
    (req,) = named(spans, "nexus.request")
    (msg,) = named(spans, "nexus.message")
    assert req.status is StatusCode.ERROR and req.attributes["error.type"] == "RequestTimeout"
    assert msg.status is StatusCode.ERROR and msg.context.parent_span_id == req.context.span_id


def test_non_200_code_is_noted(bus: EventBus, spans: InMemorySpans, mw: TracingMiddleware) -> None:
    with (
        EmbeddedServer() as server,
        Client(server.url, middlewares=[mw], bus=bus, heartbeat_interval=None, raise_for_code=False) as c,
    ):
        assert c.request(b"404", fid=3).code == 404
    (req,) = named(spans, "nexus.request")
    assert req.attributes["nexus.code"] == 404 and req.status_message == "code 404"


def test_retries_breaker_and_fallback_are_span_events(
    bus: EventBus, spans: InMemorySpans, tracer: SpanManager, mw: TracingMiddleware
) -> None:
    calls = {"n": 0}

    def flaky(frame: Frame) -> Any:
        calls["n"] += 1
        return Reply(b"busy", code=503) if calls["n"] == 1 else b"ok"

    retry = ResilienceMiddleware(
        bus=bus, retry=RetryConfig(max_attempts=3, base_delay=0.001), breaker=None, budget=None, timeout=None
    )
    fallback = ResilienceMiddleware(
        bus=bus,
        name="fb",
        retry=None,
        breaker=None,
        budget=None,
        timeout=None,
        fallback=FallbackConfig(default=b"later"),
    )
    breaker = ResilienceMiddleware(
        bus=bus, name="br", retry=None, budget=None, timeout=None, breaker=BreakerConfig(name="t")
    )
    with EmbeddedServer(tracer=tracer, handlers={20: flaky, 21: lambda f: Reply(b"down", code=503)}) as server:
        with Client(server.url, middlewares=[mw, retry], bus=bus, heartbeat_interval=None) as c:
            assert c.request(b"", fid=20, idempotent=True).body == b"ok"
        with Client(server.url, middlewares=[mw, fallback], bus=bus, heartbeat_interval=None) as c:
            assert c.request(b"", fid=21).body == b"later"
        with Client(server.url, middlewares=[mw, breaker], bus=bus, heartbeat_interval=None) as c:
            assert breaker.resilient.breaker is not None
            breaker.resilient.breaker.open()
            with pytest.raises(CircuitOpen):
                c.request(b"", fid=1)
    retried, fell_back, rejected = named(spans, "nexus.request")
    assert [e.name for e in retried.events] == ["retry.attempt"]
    assert retried.events[0].attributes["attempt"] == 2 and "503" in retried.events[0].attributes["error"]
    attempts = [s for s in named(spans, "nexus.message") if s.context.parent_span_id == retried.context.span_id]
    assert [(s.status, s.attributes["nexus.code"]) for s in attempts] == [
        (StatusCode.ERROR, 503),
        (StatusCode.UNSET, 200),
    ]
    assert attempts[0].attributes["error.type"] == "503"
    assert len([s for s in named(spans, "nexus.server") if s.context.parent_span_id == retried.context.span_id]) == 2
    assert "fallback.used" in [e.name for e in fell_back.events] and fell_back.status is StatusCode.UNSET
    assert [e.name for e in rejected.events] == ["breaker.rejected", "exception"]
    assert rejected.attributes["error.type"] == "CircuitBreakerOpen" and rejected.status is StatusCode.ERROR


def test_heartbeat_spans_with_ping_and_pong(bus: EventBus, spans: InMemorySpans, mw: TracingMiddleware) -> None:
    with EmbeddedServer() as server, Client(server.url, middlewares=[mw], bus=bus, heartbeat_interval=0.02) as c:
        c.connect()
        with gevent.Timeout(5, AssertionError("no heartbeat span")):
            while not named(spans, "nexus.heartbeat"):
                gevent.sleep(0.01)
    hb = named(spans, "nexus.heartbeat")[0]
    assert hb.context.parent_span_id == 0 and hb.attributes["nexus.rtt_s"] >= 0
    assert children(spans, hb) == ["receive-pong", "send-ping"]
    ping, pong = (
        next(s for s in named(spans, n) if s.context.parent_span_id == hb.context.span_id)
        for n in ("send-ping", "receive-pong")
    )
    assert hb.start_ns == ping.start_ns <= ping.end_ns <= pong.start_ns + 1 and pong.end_ns == hb.end_ns


def test_heartbeat_timeout_is_an_error_span(bus: EventBus, spans: InMemorySpans, mw: TracingMiddleware) -> None:
    with (
        EmbeddedServer(heartbeat_echo=False) as server,
        Client(server.url, middlewares=[mw], bus=bus, heartbeat_interval=0.02, heartbeat_timeout=0.05) as c,
    ):
        c.connect()
        with gevent.Timeout(5, AssertionError("no heartbeat timeout")):
            while not any(s.status is StatusCode.ERROR for s in named(spans, "nexus.heartbeat")):
                gevent.sleep(0.01)
    bad = [s for s in named(spans, "nexus.heartbeat") if s.status is StatusCode.ERROR][0]
    assert bad.attributes["error.type"] == "HeartbeatTimeout"


def test_pool_replacing_a_lost_connection_links_the_spans(
    bus: EventBus, spans: InMemorySpans, mw: TracingMiddleware
) -> None:
    with EmbeddedServer() as server, Client(server.url, middlewares=[mw], bus=bus, heartbeat_interval=None) as c:
        c.request(b"a", fid=1)
        server.drop_connections()
        with gevent.Timeout(5, AssertionError("no second connect span")):
            while len(named(spans, "nexus.connect")) < 2:
                gevent.sleep(0.01)
        assert c.request(b"b", fid=1).body == b"b"
    first, second = named(spans, "nexus.connect")
    assert [link.context.span_id for link in second.links] == [first.context.span_id]
    assert second.links[0].attributes == {
        "nexus.link": "replaces lost connection",
        "nexus.conn_id": first.attributes["nexus.conn_id"],
    }


def test_connection_reconnect_is_a_linked_span(bus: EventBus, spans: InMemorySpans, mw: TracingMiddleware) -> None:
    with (
        EmbeddedServer() as server,
        Connection(
            server.url, options=ConnectionOptions(heartbeat_interval=None, reconnect=FixedInterval(0.02)), bus=bus
        ) as conn,
    ):
        conn.request(b"a", fid=1)
        server.drop_connections()
        with gevent.Timeout(5, AssertionError("no reconnect span")):
            while not named(spans, "nexus.reconnect"):
                gevent.sleep(0.01)
    first, second = named(spans, "nexus.connect")[:2]
    (rec,) = named(spans, "nexus.reconnect")
    assert rec.context.parent_span_id == 0 and rec.status is StatusCode.UNSET
    assert [link.context.span_id for link in rec.links] == [first.context.span_id]
    assert second.context.parent_span_id == rec.context.span_id
    assert [e.name for e in rec.events][0] == "reconnect.scheduled"


def test_failed_connect_and_failed_reconnects(bus: EventBus, spans: InMemorySpans, mw: TracingMiddleware) -> None:
    with RefusingPort() as port, Client(port.url, middlewares=[mw], bus=bus, heartbeat_interval=None) as c:
        with pytest.raises(NexusError):
            c.request(b"x", fid=1, timeout=1)
    conns = named(spans, "nexus.connect")
    assert conns and all(s.status is StatusCode.ERROR for s in conns)
    tcp = [s for s in named(spans, "connect.tcp") if s.context.parent_span_id == conns[0].context.span_id]
    assert tcp and tcp[0].status is StatusCode.ERROR


def test_reconnect_that_gives_up(bus: EventBus, spans: InMemorySpans, mw: TracingMiddleware) -> None:
    server = EmbeddedServer().start()
    conn = Connection(
        server.url,
        options=ConnectionOptions(heartbeat_interval=None, reconnect=FixedInterval(0.01, max_attempts=2)),
        bus=bus,
    )
    try:
        conn.request(b"a", fid=1)
        server.stop()
        with gevent.Timeout(5, AssertionError("no failed reconnect span")):
            while not any(s.status is StatusCode.ERROR for s in named(spans, "nexus.reconnect")):
                gevent.sleep(0.01)
    finally:
        conn.close()
        server.stop()
    (rec,) = named(spans, "nexus.reconnect")
    assert rec.attributes["error.type"] == "ReconnectGaveUp"
    assert "reconnect.failed" in [e.name for e in rec.events]


def test_tls_phase_span(bus: EventBus, spans: InMemorySpans, mw: TracingMiddleware) -> None:
    with (
        make_test_certificates() as kit,
        EmbeddedServer(tls=kit.server_context()) as server,
        Client(server.url, tls=kit.client_config(), middlewares=[mw], bus=bus, heartbeat_interval=None) as c,
    ):
        c.request(b"x", fid=1)
    (conn,) = named(spans, "nexus.connect")
    assert children(spans, conn) == ["connect.dns", "connect.tcp", "connect.tls"]
    assert conn.attributes["nexus.tls"] is True


def test_tls_through_socks5_has_every_phase(bus: EventBus, spans: InMemorySpans, mw: TracingMiddleware) -> None:
    with make_test_certificates() as kit, EmbeddedServer(tls=kit.server_context()) as server, Socks5Proxy() as proxy:
        with Client(
            server.url, tls=kit.client_config(), proxy=proxy.url, middlewares=[mw], bus=bus, heartbeat_interval=None
        ) as c:
            c.request(b"x", fid=1)
    (conn,) = named(spans, "nexus.connect")
    phases = sorted(
        (s for s in spans.spans if s.context.parent_span_id == conn.context.span_id), key=lambda s: s.start_ns
    )
    names = [s.name for s in phases]
    assert names[-2:] == ["connect.socks5", "connect.tls"] and "connect.tcp" in names
    assert {"nexus.connect.socks5_s", "nexus.connect.tls_s"} <= set(conn.attributes)
    for earlier, later in zip(phases, phases[1:], strict=False):
        assert earlier.end_ns <= later.start_ns + 1_000  # one after the other (1 us of rounding)


@pytest.mark.parametrize("io_greenlets", [False, True], ids=["hub-callbacks", "io-greenlets"])
def test_traced_requests_report_their_phases(
    bus: EventBus, spans: InMemorySpans, mw: TracingMiddleware, io_greenlets: bool
) -> None:
    """Each sampled request gets one request.traced: queued <= written <= arrival, and the spans follow it."""
    traced: list[dict[str, Any]] = []
    off = bus.subscribe(lambda e: traced.append(dict(e.attrs)), prefix="request.traced")
    try:
        with (
            EmbeddedServer() as server,
            Client(server.url, middlewares=[mw], bus=bus, heartbeat_interval=None, io_greenlets=io_greenlets) as c,
        ):
            gevent.joinall(
                [gevent.spawn(c.request, b"x" * 100, fid=1) for _ in range(20)], timeout=10, raise_error=True
            )
            assert not bus.wants("request.complete") and not bus.wants("io.sent")  # no event per request
    finally:
        off()
    assert len(traced) == 20
    for a in traced:
        assert a["queued"] <= a["written"] <= a["queued"] + a["latency"] and a["code"] == 200
        assert a["bytes_out"] > 124 and a["bytes_in"] == 124
    for msg in named(spans, "nexus.message"):
        (send,) = [s for s in spans.spans if s.name == "send" and s.context.parent_span_id == msg.context.span_id]
        (recv,) = [s for s in spans.spans if s.name == "receive" and s.context.parent_span_id == msg.context.span_id]
        assert msg.start_ns == send.start_ns <= send.end_ns == recv.start_ns <= recv.end_ns == msg.end_ns


def test_unsampled_roots_skip_the_pipeline_and_emit_nothing(
    bus: EventBus, spans: InMemorySpans, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lone tracing middleware's needed(): unsampled roots take the Client's short path, sampled ones don't."""
    import nexus_green.client as client_module

    built: list[int] = []
    make = client_module._make_request

    def counting(*args: Any) -> Any:
        built.append(1)
        return make(*args)

    monkeypatch.setattr(client_module, "_make_request", counting)
    traced: list[int] = []
    off = bus.subscribe(lambda e: traced.append(1), prefix="request.traced")
    half = TracingMiddleware(SpanManager(sampler=ParentBased(TraceIdRatio(0.5)), processors=[spans]), bus=bus)
    try:
        with RecordingPeer() as peer, Client(peer.url, middlewares=[half], bus=bus, heartbeat_interval=None) as c:
            for _ in range(200):
                c.request(b"x", fid=1)
            assert settle_io(lambda: len(peer.wire) == 200)
    finally:
        off()
        half.close()
    sampled = len(named(spans, "nexus.request"))
    # Exactly the sampled requests went through the pipeline, carried a header block and got a request.traced.
    assert 0 < sampled < 200 and len(built) == sampled == len(traced)
    assert sum(1 for raw in peer.wire if dh(raw)) == sampled
    assert half._ticket is None


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
