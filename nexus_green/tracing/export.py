"""OTLP/JSON export: span encoding, a batching exporter greenlet, a file sink and an OTLP/HTTP sink (layer L4).

The encoding is the OTLP/JSON mapping of ``ExportTraceServiceRequest``
(opentelemetry-proto, OTLP specification "JSON Protobuf Encoding"): trace and
span ids as lowercase hex (not base64), enums as integers, lowerCamelCase
keys, 64-bit integers (times, ``intValue``) as decimal strings.

:class:`BatchExporter` is a span processor: ``on_end`` only appends the span
to a bounded queue (a full queue drops the span and counts it), so a caller
never waits for export. One greenlet, started on the first span, takes up to
``max_batch`` spans every ``interval`` seconds (or as soon as a batch is
full), encodes them and hands the bytes to the sink. A sink that fails (a
collector that is down) costs the spans of that batch, counted in
``dropped``, and nothing else.

Example::

    >>> import json
    >>> from nexus_green.tracing import SpanManager, AlwaysOn, InMemorySpans
    >>> spans = InMemorySpans()
    >>> with SpanManager(sampler=AlwaysOn(), processors=[spans]).span("a", attributes={"n": 7}): pass
    >>> doc = spans_to_otlp(spans.spans, {"service.name": "demo"})
    >>> otlp = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    >>> otlp["name"], otlp["kind"], otlp["attributes"], len(otlp["traceId"]), type(otlp["startTimeUnixNano"])
    ('a', 1, [{'key': 'n', 'value': {'intValue': '7'}}], 32, <class 'str'>)
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Optional, Protocol
from urllib.parse import urlsplit

import gevent
from gevent import socket as gsocket
from gevent.event import Event

from ..errors import ConfigurationError
from ..greenlets import spawn
from .manager import current_span_var
from .span import Span

__all__ = [
    "spans_to_otlp",
    "encode_otlp_json",
    "otlp_value",
    "Sink",
    "FileSink",
    "HTTPSink",
    "BatchExporter",
    "SCOPE_NAME",
]

log = logging.getLogger("nexus_green.tracing.export")

SCOPE_NAME = "nexus_green"
_INT64 = (-(1 << 63), (1 << 63) - 1)


def otlp_value(v: Any) -> dict[str, Any]:
    """One attribute value as an OTLP ``AnyValue`` (JSON mapping).

    Example::

        >>> otlp_value(True), otlp_value(3), otlp_value(0.5), otlp_value([1, "a"])["arrayValue"]["values"][1]
        ({'boolValue': True}, {'intValue': '3'}, {'doubleValue': 0.5}, {'stringValue': 'a'})
    """
    t = type(v)
    if t is str:
        return {"stringValue": v}
    if t is int and _INT64[0] <= v <= _INT64[1]:
        return {"intValue": str(v)}
    if t is float:
        return {"doubleValue": v}
    if isinstance(v, bool):
        return {"boolValue": v}
    if isinstance(v, int) and _INT64[0] <= v <= _INT64[1]:
        return {"intValue": str(v)}
    if isinstance(v, float):
        return {"doubleValue": v}
    if isinstance(v, (list, tuple)):
        return {"arrayValue": {"values": [otlp_value(x) for x in v]}}
    return {"stringValue": str(v)}


def _attributes(attrs: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": str(k), "value": otlp_value(v)} for k, v in attrs.items()]


def _span(span: Span) -> dict[str, Any]:
    ctx = span.context
    out: dict[str, Any] = {
        "traceId": f"{ctx.trace_id:032x}",
        "spanId": f"{ctx.span_id:016x}",
        "flags": 0x100 | (ctx.flags & 0xFF),  # bit 8: "has is_remote", parent local
        "name": span.name,
        "kind": int(span.kind),
        "startTimeUnixNano": str(span.start_ns),
        "endTimeUnixNano": str(span.end_ns),
        "status": {"code": int(span.status)},
    }
    if ctx.parent_span_id:
        out["parentSpanId"] = f"{ctx.parent_span_id:016x}"
    if span.attributes:
        out["attributes"] = [{"key": k, "value": otlp_value(v)} for k, v in span.attributes.items()]
    if span.events:
        out["events"] = [
            {"timeUnixNano": str(e.time_ns), "name": e.name, "attributes": _attributes(e.attributes)}
            for e in span.events
        ]
    if span.links:
        out["links"] = [
            {
                "traceId": link.context.trace_id_hex,
                "spanId": link.context.span_id_hex,
                "attributes": _attributes(link.attributes),
            }
            for link in span.links
        ]
    if span.status_message:
        out["status"]["message"] = span.status_message
    return out


def spans_to_otlp(spans: Iterable[Span], resource: Mapping[str, Any]) -> dict[str, Any]:
    """An OTLP/JSON ``ExportTraceServiceRequest`` (as a dict) for ``spans`` of one resource."""
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": _attributes(resource)},
                "scopeSpans": [{"scope": {"name": SCOPE_NAME}, "spans": [_span(s) for s in spans]}],
            }
        ]
    }


# ---------------------------------------------------------------------- the exporter's encoder
# The same document as json.dumps(spans_to_otlp(...)) writes, built as text: json.dumps of the
# nested dicts cost about 6 us per span, this about a third of that. Strings go through the
# stdlib's C string encoder; every other value is a number or a fixed word.
_q = json.encoder.encode_basestring_ascii


def _value_json(v: Any) -> str:
    t = type(v)
    if t is str:
        return '{"stringValue":' + _q(v) + "}"
    if t is int and _INT64[0] <= v <= _INT64[1]:
        return '{"intValue":"' + str(v) + '"}'
    if t is bool:
        return '{"boolValue":true}' if v else '{"boolValue":false}'
    return json.dumps(otlp_value(v), separators=(",", ":"))


_KEY_JSON: dict[str, str] = {}  # '{"key":"<k>","value":' per attribute key: keys repeat, values do not


def _key_json(k: str) -> str:
    text = _KEY_JSON.get(k)
    if text is None:
        text = '{"key":' + _q(k) + ',"value":'
        if len(_KEY_JSON) < 4096:  # keys are names the code uses; a bound in case an app makes them up
            _KEY_JSON[k] = text
    return text


def _attrs_json(attrs: Mapping[str, Any]) -> str:
    parts = []
    for k, v in attrs.items():
        t = type(v)
        if t is str:
            value = '{"stringValue":' + _q(v) + "}}"
        elif t is int and _INT64[0] <= v <= _INT64[1]:
            value = '{"intValue":"' + str(v) + '"}}'
        else:
            value = _value_json(v) + "}"
        key = _KEY_JSON.get(k)
        parts.append((key if key is not None else _key_json(k)) + value)
    return ",".join(parts)


def _span_json(span: Span) -> str:
    ctx = span.context
    parts = [
        f'{{"traceId":"{ctx.trace_id:032x}","spanId":"{ctx.span_id:016x}"',
        f',"parentSpanId":"{ctx.parent_span_id:016x}"' if ctx.parent_span_id else "",
        f',"flags":{0x100 | (ctx.flags & 0xFF)},"name":{_q(span.name)},"kind":{int(span.kind)}',
        f',"startTimeUnixNano":"{span.start_ns}","endTimeUnixNano":"{span.end_ns}"',
    ]
    if span.attributes:
        parts.append(',"attributes":[' + _attrs_json(span.attributes) + "]")
    if span.events:
        events = ",".join(
            f'{{"timeUnixNano":"{e.time_ns}","name":{_q(e.name)},"attributes":[{_attrs_json(e.attributes)}]}}'
            for e in span.events
        )
        parts.append(',"events":[' + events + "]")
    if span.links:
        links = ",".join(
            f'{{"traceId":"{lk.context.trace_id:032x}","spanId":"{lk.context.span_id:016x}",'
            f'"attributes":[{_attrs_json(lk.attributes)}]}}'
            for lk in span.links
        )
        parts.append(',"links":[' + links + "]")
    if span.status_message:
        parts.append(f',"status":{{"code":{int(span.status)},"message":{_q(span.status_message)}}}}}')
    else:
        parts.append(f',"status":{{"code":{int(span.status)}}}}}')
    return "".join(parts)


def encode_otlp_json(spans: Iterable[Span], resource: Mapping[str, Any]) -> bytes:
    """The OTLP/JSON text of :func:`spans_to_otlp` (compact, ASCII), as the exporter sends it.

    Example::

        >>> from nexus_green.tracing import SpanManager, AlwaysOn, InMemorySpans
        >>> spans = InMemorySpans()
        >>> with SpanManager(sampler=AlwaysOn(), processors=[spans]).span("a", attributes={"n": 7, "s": "é"}): pass
        >>> json.loads(encode_otlp_json(spans.spans, {"service.name": "demo"})) == spans_to_otlp(spans.spans, {"service.name": "demo"})
        True
    """
    body = ",".join(_span_json(s) for s in spans)
    text = (
        '{"resourceSpans":[{"resource":{"attributes":['
        + _attrs_json(resource)
        + ']},"scopeSpans":[{"scope":{"name":'
        + _q(SCOPE_NAME)
        + '},"spans":['
        + body
        + "]}]}]}"
    )
    return text.encode("ascii")


class Sink(Protocol):
    """Where encoded batches go: ``send(payload: bytes)``, raising on failure; ``close()``."""

    def send(self, payload: bytes) -> None: ...

    def close(self) -> None: ...


class FileSink:
    """Appends each batch as one line of JSON to ``path`` (OTLP/JSON lines: one request per line).

    Example::

        >>> import tempfile, pathlib
        >>> with tempfile.TemporaryDirectory() as d:
        ...     path = pathlib.Path(d, "t.jsonl")
        ...     sink = FileSink(str(path)); sink.send(b'{"resourceSpans": []}'); sink.close()
        ...     path.read_text()
        '{"resourceSpans": []}\\n'
    """

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        self._file: Any = open(self.path, "ab")  # noqa: SIM115 - closed by close()

    def send(self, payload: bytes) -> None:
        if self._file is None:
            raise ConfigurationError(f"file sink {self.path} is closed")
        self._file.write(payload + b"\n")
        self._file.flush()

    def close(self) -> None:
        f, self._file = self._file, None
        if f is not None:
            f.close()

    def __repr__(self) -> str:
        return f"<FileSink {self.path}>"


class HTTPSink:
    """POSTs each batch to an OTLP/HTTP endpoint (``http://host:port/v1/traces``) as ``application/json``.

    One short HTTP/1.1 exchange per batch over a gevent socket, bounded by
    ``timeout`` seconds; a status outside 2xx or any socket error raises
    (the exporter counts the batch as dropped).

    Example::

        >>> HTTPSink("http://127.0.0.1:4318/v1/traces").path
        '/v1/traces'
        >>> HTTPSink("https://collector/v1/traces")
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: HTTPSink speaks plain http://, got 'https://collector/v1/traces'
    """

    def __init__(self, url: str, *, timeout: float = 5.0, headers: Optional[Mapping[str, str]] = None) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigurationError(f"HTTPSink speaks plain http://, got {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/v1/traces"
        self.timeout = timeout
        self.headers = dict(headers or {})

    def send(self, payload: bytes) -> None:
        head = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host}:{self.port}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
            "Connection: close",
        ]
        head += [f"{k}: {v}" for k, v in self.headers.items()]
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + payload
        with gsocket.create_connection((self.host, self.port), timeout=self.timeout) as sock:
            sock.sendall(request)
            reply = b""
            while b"\r\n" not in reply and len(reply) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        status_line = reply.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[1].isdigit() or not 200 <= int(fields[1]) < 300:
            raise OSError(f"OTLP/HTTP endpoint {self.url} answered {status_line!r}")

    def close(self) -> None:
        """Nothing is kept open between batches."""

    def __repr__(self) -> str:
        return f"<HTTPSink {self.url}>"


class BatchExporter:
    """A span processor that exports OTLP/JSON in batches from one greenlet (see the module docstring).

    ``resource`` describes the process (``service.name``); ``max_queue``
    bounds the spans waiting; ``dropped`` counts spans lost (queue full or a
    failed send), ``exported`` those sent, ``send_errors`` failed sends.
    Spans ended in another OS thread are counted in ``dropped`` (gevent
    objects belong to one hub). The exporter owns ``sink``: :meth:`shutdown`
    closes it (and so does a refused configuration).

    Example::

        >>> import tempfile, pathlib, json
        >>> from nexus_green.tracing import SpanManager, AlwaysOn
        >>> with tempfile.TemporaryDirectory() as d:
        ...     exporter = BatchExporter(FileSink(str(pathlib.Path(d, "s.jsonl"))), interval=0.01)
        ...     tracer = SpanManager(sampler=AlwaysOn(), processors=[exporter])
        ...     with tracer.span("a"): pass
        ...     tracer.shutdown()
        ...     doc = json.loads(pathlib.Path(d, "s.jsonl").read_text())
        >>> exporter.exported, doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"]
        (1, 'a')
    """

    def __init__(
        self,
        sink: Sink,
        *,
        resource: Optional[Mapping[str, Any]] = None,
        interval: float = 1.0,
        max_batch: int = 512,
        max_queue: int = 4096,
    ) -> None:
        if interval <= 0 or max_batch < 1 or max_queue < max_batch:
            sink.close()  # the exporter owns its sink, refused or not: nothing is left open
            raise ConfigurationError("BatchExporter needs interval > 0 and 1 <= max_batch <= max_queue")
        self.sink = sink
        self.resource: dict[str, Any] = dict(resource or {"service.name": "nexus_green"})
        self.interval = interval
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.dropped = 0
        self.exported = 0
        self.send_errors = 0
        self._queue: collections.deque[Span] = collections.deque()
        self._wake = Event()
        self._idle = Event()
        self._idle.set()
        self._greenlet: Optional[gevent.Greenlet] = None
        self._closed = False
        self._sending = 0
        self._thread = threading.get_ident()

    def on_end(self, span: Span) -> None:
        if self._closed or threading.get_ident() != self._thread or len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append(span)
        self._idle.clear()
        if self._greenlet is None:
            self._greenlet = spawn(self._run, name="tracing-export")
        if len(self._queue) >= self.max_batch:
            self._wake.set()

    def _run(self) -> None:
        current_span_var.set(None)  # the exporter is nobody's child
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            self._drain()
            if self._closed:
                return

    def _drain(self) -> None:
        queue = self._queue
        while queue:
            batch = [queue.popleft() for _ in range(min(self.max_batch, len(queue)))]
            self._sending = len(batch)
            try:
                payload = encode_otlp_json(batch, self.resource)
                self.sink.send(payload)
            except Exception as exc:
                self.dropped += len(batch)
                self.send_errors += 1
                log.warning("tracing export to %r failed, %d spans dropped: %s", self.sink, len(batch), exc)
            else:
                self.exported += len(batch)
            self._sending = 0
        self._idle.set()

    def flush(self, timeout: float = 5.0) -> bool:
        """Send what is queued now; True when the queue emptied within ``timeout``."""
        if not self._queue:
            return True
        self._wake.set()
        return bool(self._idle.wait(timeout))

    def shutdown(self, timeout: float = 5.0) -> None:
        """Flush, stop the greenlet and close the sink (idempotent); spans ended later are dropped."""
        if self._closed:
            return
        self._closed = True
        g = self._greenlet
        if g is not None:
            self._wake.set()
            g.join(timeout)
            if not g.dead:
                g.kill(block=True, timeout=1)
                self.dropped += self._sending  # the batch it was sending when stopped
                self._sending = 0
        if self._queue:  # never started, or killed mid-way
            self.dropped += len(self._queue)
            self._queue.clear()
        self.sink.close()

    def __repr__(self) -> str:
        return (
            f"<BatchExporter {self.sink!r} queued={len(self._queue)} exported={self.exported} dropped={self.dropped}>"
        )
