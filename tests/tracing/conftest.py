"""A real trace for the viewer tests and docs/tracing.md: a connect plus three requests, one of them retried."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nexus_green import Client
from nexus_green.events import EventBus
from nexus_green.protocol.frames import Frame
from nexus_green.resilience import RetryConfig
from nexus_green.resilience.middleware import ResilienceMiddleware
from nexus_green.testing import EmbeddedServer, Reply
from nexus_green.tracing import AlwaysOn, BatchExporter, FileSink, SpanManager, TracingMiddleware


def write_trace(path: str) -> SpanManager:
    """Run the workload with every span sampled; the spans go to ``path`` as OTLP/JSON lines."""
    bus = EventBus()
    exporter = BatchExporter(FileSink(path), resource={"service.name": "checkout"}, interval=0.05)
    tracer = SpanManager(sampler=AlwaysOn(), processors=[exporter], service_name="checkout")
    calls = {"n": 0}

    def flaky(frame: Frame) -> Any:
        calls["n"] += 1
        return Reply(b"busy", code=503) if calls["n"] == 1 else b"stock:" + frame.body

    tracing = TracingMiddleware(tracer, bus=bus)
    retry = ResilienceMiddleware(
        bus=bus, retry=RetryConfig(max_attempts=3, base_delay=0.002), breaker=None, budget=None
    )
    try:
        with (
            EmbeddedServer(tracer=tracer, handlers={30: flaky}) as server,
            Client(server.url, middlewares=[tracing, retry], bus=bus, heartbeat_interval=None) as client,
            tracer.span("checkout"),
        ):
            client.request(b"cart-42", fid=1)
            client.request(b"sku-7", fid=30, idempotent=True)  # answered 503 once: retried
            client.request(b"pay", fid=1)
    finally:
        tracing.close()
        tracer.shutdown()
    return tracer


@pytest.fixture(scope="session")
def trace_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OTLP/JSON file of the workload's trace (written once per run)."""
    path = tmp_path_factory.mktemp("trace") / "spans.jsonl"
    write_trace(str(path))
    return path
