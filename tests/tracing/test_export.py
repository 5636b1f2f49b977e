"""OTLP/JSON export: the encoding checked with opentelemetry-proto, the file and HTTP sinks, drops, the bridge."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent.pywsgi import WSGIServer
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from nexus_green.errors import ConfigurationError
from nexus_green.testing.hostile import RefusingPort
from nexus_green.tracing import (
    AlwaysOn,
    BatchExporter,
    FileSink,
    HTTPSink,
    InMemorySpans,
    Span,
    SpanKind,
    SpanManager,
    TraceContext,
    spans_to_otlp,
)
from nexus_green.tracing.export import encode_otlp_json, otlp_value
from nexus_green.tracing.span import SpanLink

pytestmark = pytest.mark.usefixtures("leakcheck")


def hex_ids_to_base64(doc: Any) -> Any:
    """Protobuf's JSON mapping reads bytes as base64; OTLP/JSON sends hex ids: convert before parsing."""
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            if k in ("traceId", "spanId", "parentSpanId") and isinstance(v, str):
                out[k] = base64.b64encode(bytes.fromhex(v)).decode()
            else:
                out[k] = hex_ids_to_base64(v)
        return out
    if isinstance(doc, list):
        return [hex_ids_to_base64(x) for x in doc]
    return doc


def parse(doc: dict[str, Any]) -> ExportTraceServiceRequest:
    return json_format.ParseDict(hex_ids_to_base64(doc), ExportTraceServiceRequest())


def sample_spans() -> tuple[list[Span], Span, Span]:
    spans = InMemorySpans()
    m = SpanManager(sampler=AlwaysOn(), processors=[spans], service_name="svc")
    other = TraceContext(trace_id=0xFEED, span_id=0xBEEF, flags=1)
    with m.span("parent", kind=SpanKind.CLIENT, attributes={"s": "x", "i": 2**40, "f": 0.25, "b": True}) as parent:
        child = m.start_span("child", kind=SpanKind.SERVER, links=(SpanLink(other, {"why": "retry"}),))
        child.add_event("ev", {"n": 1, "big": 2**70, "list": [1, "a"], "obj": object.__name__})
        child.record_error(ValueError("nope"))
        child.end()
    return list(spans.spans), parent, child


def test_otlp_json_parses_with_opentelemetry_proto() -> None:
    spans, parent, child = sample_spans()
    doc = spans_to_otlp(spans, {"service.name": "svc", "host.cpus": 2, "ok": True, "\u00e9": "\u00fc"})
    text = json.dumps(doc)
    # What the exporter sends, built as text, is the same document.
    assert (
        json.loads(encode_otlp_json(spans, {"service.name": "svc", "host.cpus": 2, "ok": True, "\u00e9": "\u00fc"}))
        == doc
    )
    assert '"startTimeUnixNano": "' in text and '"intValue": "1099511627776"' in text
    req = parse(json.loads(text))
    (rs,) = req.resource_spans
    assert rs.resource.attributes[0].key == "service.name" and rs.resource.attributes[0].value.string_value == "svc"
    assert rs.resource.attributes[3].value.string_value == "\u00fc"
    (ss,) = rs.scope_spans
    assert ss.scope.name == "nexus_green"
    by_name = {s.name: s for s in ss.spans}
    p, c = by_name["parent"], by_name["child"]
    assert len(p.trace_id) == 16 and len(p.span_id) == 8 and len(c.parent_span_id) == 8
    assert p.trace_id.hex() == parent.context.trace_id_hex and c.parent_span_id == p.span_id
    assert p.parent_span_id == b""
    assert p.kind == 3 and c.kind == 2  # SPAN_KIND_CLIENT, SPAN_KIND_SERVER
    assert p.start_time_unix_nano == parent.start_ns and p.end_time_unix_nano == parent.end_ns
    attrs = {a.key: a.value for a in p.attributes}
    assert attrs["s"].string_value == "x" and attrs["i"].int_value == 2**40
    assert attrs["f"].double_value == 0.25 and attrs["b"].bool_value is True
    assert c.status.code == 2 and c.status.message == "ValueError: nope"
    assert p.status.code == 0
    ev = {e.name: e for e in c.events}
    assert ev["ev"].time_unix_nano == child.events[0].time_ns
    ev_attrs = {a.key: a.value for a in ev["ev"].attributes}
    assert ev_attrs["big"].string_value == str(2**70)  # beyond int64: a string, not a wrong number
    assert [v.int_value or v.string_value for v in ev_attrs["list"].array_value.values] == [1, "a"]
    (link,) = c.links
    assert link.trace_id.hex() == f"{0xFEED:032x}" and len(link.span_id) == 8
    assert c.flags & 0x100 and c.flags & 0xFF == 1


def test_otlp_value_mapping() -> None:
    assert otlp_value(False) == {"boolValue": False}
    assert otlp_value(-(2**63)) == {"intValue": str(-(2**63))}
    assert otlp_value(None) == {"stringValue": "None"}


def wait_for(check: Any, timeout: float = 5.0) -> None:
    with gevent.Timeout(timeout, AssertionError("condition not met in time")):
        while not check():
            gevent.sleep(0.005)


def test_file_sink_writes_json_lines_in_batches(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    exporter = BatchExporter(FileSink(str(path)), resource={"service.name": "t"}, interval=0.01, max_batch=2)
    m = SpanManager(sampler=AlwaysOn(), processors=[exporter])
    for i in range(5):
        with m.span(f"s{i}"):
            pass
    assert exporter.flush(5)
    m.shutdown()
    lines = path.read_text().splitlines()
    assert len(lines) >= 3  # max_batch 2: five spans need at least three requests
    names = [s.name for line in lines for s in parse(json.loads(line)).resource_spans[0].scope_spans[0].spans]
    assert sorted(names) == ["s0", "s1", "s2", "s3", "s4"]
    assert exporter.exported == 5 and exporter.dropped == 0
    assert "exported=5" in repr(exporter) and "FileSink" in repr(exporter.sink)
    with pytest.raises(ConfigurationError, match="closed"):
        exporter.sink.send(b"{}")


class Collector:
    """An OTLP/HTTP receiver for the test: POST /v1/traces, decoded with opentelemetry-proto."""

    def __init__(self, status: str = "200 OK") -> None:
        self.status = status
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: list[str] = []
        self.server = WSGIServer(("127.0.0.1", 0), self.app, log=None, error_log=None)

    def app(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = environ["wsgi.input"].read()
        self.content_types.append(environ.get("CONTENT_TYPE", ""))
        if environ["PATH_INFO"] == "/v1/traces" and environ["REQUEST_METHOD"] == "POST":
            self.requests.append(parse(json.loads(body)))
        start_response(self.status, [("Content-Type", "application/json")])
        return [b"{}"]

    def __enter__(self) -> Collector:
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(timeout=2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}/v1/traces"


def test_http_sink_posts_to_an_otlp_receiver() -> None:
    with Collector() as collector:
        exporter = BatchExporter(HTTPSink(collector.url, headers={"x-tenant": "t"}), interval=0.01)
        m = SpanManager(sampler=AlwaysOn(), processors=[exporter])
        with m.span("over-http", attributes={"k": "v"}):
            pass
        wait_for(lambda: collector.requests)
        m.shutdown()
    (span,) = collector.requests[0].resource_spans[0].scope_spans[0].spans
    assert span.name == "over-http" and len(span.trace_id) == 16
    assert collector.content_types == ["application/json"]
    assert exporter.exported == 1 and exporter.dropped == 0


def test_down_collector_costs_only_dropped_spans() -> None:
    with RefusingPort() as port:
        exporter = BatchExporter(HTTPSink(f"http://127.0.0.1:{port.port}/v1/traces", timeout=1), interval=0.01)
        m = SpanManager(sampler=AlwaysOn(), processors=[exporter])
        for i in range(3):
            with m.span(f"lost-{i}"):  # never waits for the collector
                pass
        wait_for(lambda: exporter.dropped == 3)
        m.shutdown()
    assert exporter.send_errors >= 1 and exporter.exported == 0


def test_collector_answering_an_error_status_drops_the_batch() -> None:
    with Collector(status="503 Service Unavailable") as collector:
        exporter = BatchExporter(HTTPSink(collector.url), interval=0.01)
        exporter.on_end(sample_spans()[1])
        wait_for(lambda: exporter.dropped == 1)
        exporter.shutdown()
    assert exporter.send_errors == 1 and len(collector.requests) == 1


def test_full_queue_drops_and_counts_without_blocking(tmp_path: Path) -> None:
    exporter = BatchExporter(FileSink(str(tmp_path / "x.jsonl")), interval=60, max_batch=2, max_queue=3)
    span = sample_spans()[1]
    for _ in range(5):
        exporter.on_end(span)  # the exporter greenlet has not run: the queue fills
    assert exporter.dropped == 2
    exporter.shutdown()
    exporter.on_end(span)  # after shutdown: dropped
    exporter.shutdown()  # idempotent
    assert exporter.dropped == 3 and exporter.exported == 3


def test_spans_from_another_thread_are_dropped(tmp_path: Path) -> None:
    exporter = BatchExporter(FileSink(str(tmp_path / "x.jsonl")))
    span = sample_spans()[1]
    t = threading.Thread(target=exporter.on_end, args=(span,))
    t.start()
    t.join(5)
    assert exporter.dropped == 1 and exporter.flush() is True
    exporter.shutdown()


def test_shutdown_of_a_stuck_sink_is_bounded(tmp_path: Path) -> None:
    class Stuck:
        def send(self, payload: bytes) -> None:
            gevent.sleep(30)

        def close(self) -> None:
            pass

    exporter = BatchExporter(Stuck(), interval=0.01)
    exporter.on_end(sample_spans()[1])
    exporter.on_end(sample_spans()[1])
    wait_for(lambda: not exporter._queue)
    exporter.on_end(sample_spans()[1])
    exporter.shutdown(timeout=0.05)
    assert exporter.dropped == 3 and exporter.exported == 0  # the batch stuck in send, and the span still queued


def test_bad_configuration_is_refused(tmp_path: Path) -> None:
    sink = FileSink(str(tmp_path / "x"))
    with pytest.raises(ConfigurationError, match="max_batch"):
        BatchExporter(sink, max_batch=10, max_queue=5)
    with pytest.raises(ConfigurationError, match="closed"):
        sink.send(b"{}")  # the refused exporter closed its sink
    with pytest.raises(ConfigurationError, match="plain http"):
        HTTPSink("ftp://x/")
    assert HTTPSink("http://collector").port == 80 and HTTPSink("http://collector").path == "/v1/traces"
    assert repr(HTTPSink("http://c:1/v1/traces")) == "<HTTPSink http://c:1/v1/traces>"


# ------------------------------------------------------------------ the OpenTelemetry bridge
def test_bridge_hands_spans_to_the_sdk_unchanged() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind as OKind
    from opentelemetry.trace import StatusCode as OStatus

    from nexus_green.tracing.bridge import OTelBridge

    provider, memory = TracerProvider(), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    bridge = OTelBridge(provider)
    m = SpanManager(sampler=AlwaysOn(), processors=[bridge])
    other = TraceContext(trace_id=5, span_id=6, flags=1)
    with m.span("parent", kind=SpanKind.CLIENT, attributes={"a": 1, "obj": [1]}) as parent:
        with pytest.raises(KeyError):
            with m.span("child", kind=SpanKind.SERVER) as child:
                child.links = (SpanLink(other, {}),)
                raise KeyError("x")
        with m.span("inner") as inner:
            inner.status = inner.status.OK
    got = {s.name: s for s in memory.get_finished_spans()}
    p, c = got["parent"], got["child"]
    assert p.context.trace_id == parent.context.trace_id and p.context.span_id == parent.context.span_id
    assert c.parent is not None and c.parent.span_id == parent.context.span_id and p.parent is None
    assert p.kind is OKind.CLIENT and c.kind is OKind.SERVER and got["inner"].kind is OKind.INTERNAL
    assert p.start_time == parent.start_ns and p.end_time == parent.end_ns
    assert dict(p.attributes) == {"a": 1, "obj": "[1]"}
    assert c.status.status_code is OStatus.ERROR and [e.name for e in c.events] == ["exception"]
    assert got["inner"].status.status_code is OStatus.OK
    assert c.links[0].context.trace_id == 5
    assert bridge.errors == 0 and "sdk=True" in repr(bridge)


def test_bridge_through_the_api_of_another_provider() -> None:
    from opentelemetry import trace as otel_trace

    from nexus_green.tracing.bridge import OTelBridge

    made: list[tuple[str, dict[str, Any]]] = []

    class Recorder(otel_trace.NonRecordingSpan):
        def __init__(self, name: str, attributes: dict[str, Any]) -> None:
            super().__init__(otel_trace.INVALID_SPAN_CONTEXT)
            made.append((name, attributes))
            self.ops: list[str] = []

        def add_event(self, name: str, attributes: Any = None, timestamp: Any = None) -> None:
            made.append(("event:" + name, dict(attributes or {})))

        def end(self, end_time: Any = None) -> None:
            made.append(("end", {"t": end_time}))

    class Tracer:
        def start_span(self, name: str, **kw: Any) -> Recorder:
            return Recorder(name, dict(kw["attributes"]))

    class Provider:
        def get_tracer(self, scope: str) -> Tracer:
            return Tracer()

    bridge = OTelBridge(Provider())
    m = SpanManager(sampler=AlwaysOn(), processors=[bridge])
    with m.span("root") as root:
        with pytest.raises(ValueError):
            with m.span("child"):
                raise ValueError("v")
    names = [n for n, _ in made]
    assert names == ["child", "event:exception", "end", "root", "end"]
    child_attrs = made[0][1]
    assert child_attrs["nexus.parent_span_id"] == root.context.span_id_hex
    assert made[3][1]["nexus.trace_id"] == root.context.trace_id_hex and "nexus.parent_span_id" not in made[3][1]
    assert made[-1][1]["t"] == root.end_ns


def test_bridge_counts_a_provider_that_raises() -> None:
    from nexus_green.tracing.bridge import OTelBridge

    class Broken:
        def get_tracer(self, scope: str) -> Any:
            return self

        def start_span(self, *a: Any, **kw: Any) -> Any:
            raise RuntimeError("provider bug")

    bridge = OTelBridge(Broken())
    SpanManager(sampler=AlwaysOn(), processors=[bridge]).start_span("x").end()
    assert bridge.errors == 1


def test_bridge_defaults_to_the_global_provider() -> None:
    from opentelemetry import trace as otel_trace

    from nexus_green.tracing.bridge import OTelBridge

    assert OTelBridge().provider is otel_trace.get_tracer_provider()
