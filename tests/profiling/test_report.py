"""ProfilingReport: each rule fires on crafted figures and stays silent otherwise; built from real profiles; outputs."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import gevent
import pytest

from nexus_green import Client
from nexus_green.events import EventBus
from nexus_green.middleware.compression import CompressionMiddleware
from nexus_green.profiling.io import IOFigures, IOProfiler
from nexus_green.profiling.memory import AllocationSite, MemoryProfiler
from nexus_green.profiling.report import (
    RULES,
    HotSpot,
    ProfilingReport,
    file_share,
    middleware_shares,
)
from nexus_green.profiling.sampler import SamplingProfiler
from nexus_green.testing import EmbeddedServer, run_module_patched


def io(writes: int = 1000, per_write: int = 4000, frames_per_write: float = 4.0) -> IOFigures:
    frames = int(writes * frames_per_write)
    return IOFigures(
        writes=writes,
        reads=writes,
        bytes_sent=writes * per_write,
        bytes_received=writes * per_write,
        frames_sent=frames,
        frames_received=frames,
        seconds=1.0,
    )


def fired(report: ProfilingReport) -> list[str]:
    return [s.rule for s in report.suggestions()]


def test_quiet_figures_fire_nothing() -> None:
    report = ProfilingReport(
        io=io(),
        pool={"checkouts": 1000, "checkout_wait_total": 0.01, "exhausted": 0, "max_size": 2},
        capacity=200,
        concurrency=50,
        compression_min_size=1024,
        decoder_share=0.05,
        compression_share=0.01,
        middleware={"CacheMiddleware": 0.3},
        request_seconds=1.0,
        allocations=[
            AllocationSite(site="protocol/frames.py:525", size=10, count=1),
            AllocationSite(site="app.py:1", size=1000, count=1),
        ],
    )
    assert fired(report) == []
    assert fired(ProfilingReport()) == []  # no figures: every rule is silent
    assert len(RULES) == 5


def test_small_writes() -> None:
    assert fired(ProfilingReport(io=io(writes=100, per_write=90, frames_per_write=1.0))) == ["small_writes"]
    assert fired(ProfilingReport(io=io(writes=49, per_write=90, frames_per_write=1.0))) == []  # too few to judge
    assert fired(ProfilingReport(io=io(writes=100, per_write=90, frames_per_write=2.0))) == []  # coalesced
    assert fired(ProfilingReport(io=io(writes=100, per_write=600, frames_per_write=1.0))) == []  # not small


def test_decoder_copying() -> None:
    assert fired(ProfilingReport(decoder_share=0.2)) == ["decoder_copying"]
    heavy = [
        AllocationSite(site="protocol/frames.py:525", size=500, count=1),
        AllocationSite(site="a:1", size=500, count=1),
    ]
    assert fired(ProfilingReport(allocations=heavy)) == ["decoder_copying"]
    light = [
        AllocationSite(site="protocol/frames.py:525", size=100, count=1),
        AllocationSite(site="a:1", size=900, count=1),
    ]
    assert fired(ProfilingReport(allocations=light, decoder_share=0.1)) == []


def test_compression_on_tiny_bodies() -> None:
    tiny = io(writes=10, per_write=24 + 100, frames_per_write=1.0)
    assert fired(ProfilingReport(io=tiny, compression_min_size=64)) == ["compression_tiny"]
    assert fired(ProfilingReport(io=tiny, compression_min_size=1024)) == []  # tiny bodies are not compressed
    assert fired(ProfilingReport(io=tiny, compression_share=0.2)) == ["compression_tiny"]  # busy compressing
    big = io(writes=10, per_write=24 + 4000, frames_per_write=1.0)
    assert fired(ProfilingReport(io=big, compression_min_size=64, compression_share=0.2)) == []
    empty = IOFigures(writes=0, reads=0, bytes_sent=0, bytes_received=0, frames_sent=0, frames_received=0, seconds=1)
    assert fired(ProfilingReport(io=empty, compression_min_size=64)) == []


def test_pool_too_small() -> None:
    ok = {"checkouts": 100, "checkout_wait_total": 0.01, "exhausted": 0, "max_size": 1}
    assert fired(ProfilingReport(pool=ok)) == []
    assert fired(ProfilingReport(pool={**ok, "exhausted": 2})) == ["pool_too_small"]
    assert fired(ProfilingReport(pool={**ok, "checkout_wait_total": 0.5})) == ["pool_too_small"]
    assert fired(ProfilingReport(pool=ok, capacity=10, concurrency=50)) == ["pool_too_small"]
    assert fired(ProfilingReport(pool={"checkouts": 0}, capacity=100, concurrency=50)) == []


def test_middleware_dominates() -> None:
    assert fired(ProfilingReport(middleware={"Slow": 0.7, "Fast": 0.1}, request_seconds=1.0)) == [
        "middleware_dominates"
    ]
    assert fired(ProfilingReport(middleware={"Slow": 0.7}, request_seconds=0.01)) == []  # too little time seen
    assert fired(ProfilingReport(middleware={"Slow": 0.4, "Fast": 0.4}, request_seconds=1.0)) == []
    s = ProfilingReport(middleware={"Slow": 0.7}, request_seconds=1.0).suggestions()[0]
    assert "Slow" in s.finding and "Slow" in s.advice


class SlowSigning:
    """A middleware that burns CPU on every call (the kind the rule is for)."""

    name = "slow-signing"
    order = 150

    def __call__(self, request: Any, call_next: Any) -> Any:
        end = time.perf_counter() + 0.005
        while time.perf_counter() < end:
            pass
        return call_next(request)


class Cheap:
    name = "cheap"
    order = 160

    def __call__(self, request: Any, call_next: Any) -> Any:
        return call_next(request)


def profile_client(middlewares: Any, seconds: float = 0.6, **options: Any) -> ProfilingReport:
    bus = EventBus()
    mws = middlewares(bus)
    with EmbeddedServer() as server, Client(server.url, bus=bus, middlewares=mws, **options) as client:
        client.connect()
        stop_at = time.perf_counter() + seconds

        def worker() -> None:
            while time.perf_counter() < stop_at:
                client.request(b"q" * 32, fid=1, timeout=5)

        with SamplingProfiler(interval=0.002) as sampler, IOProfiler(bus) as iop:
            gevent.joinall([gevent.spawn(worker) for _ in range(4)], timeout=30)
        return ProfilingReport.build(title="t", sampler=sampler, io=iop.figures(), client=client, concurrency=4)


def test_a_slow_middleware_is_found_through_a_real_client() -> None:
    report = profile_client(lambda bus: [SlowSigning(), Cheap()])
    assert report.middleware, report.as_dict()
    assert max(report.middleware, key=report.middleware.get) == "SlowSigning"
    assert report.middleware["SlowSigning"] > 0.5 and report.request_seconds > 0.1, report.to_text()
    assert "middleware_dominates" in fired(report)
    assert report.pool is not None and report.capacity is not None and report.capacity >= 1


def test_a_cheap_middleware_does_not_fire() -> None:
    report = profile_client(lambda bus: [Cheap()], seconds=0.4)
    assert report.request_seconds > 0 and "middleware_dominates" not in fired(report), report.middleware
    assert report.compression_min_size is None


def test_compression_is_read_from_the_client() -> None:
    report = profile_client(lambda bus: [CompressionMiddleware("gzip", min_size=16)], seconds=0.3)
    assert report.compression_min_size == 16
    assert "compression_tiny" in fired(report)  # 32-byte bodies, compressed from 16 bytes up


def test_a_pool_too_small_for_the_concurrency_through_a_real_client() -> None:
    report = profile_client(lambda bus: [], seconds=0.3, max_size=1, max_in_flight=2)
    assert report.capacity == 2 and report.concurrency == 4
    assert "pool_too_small" in fired(report)


def test_stack_helpers() -> None:
    assert middleware_shares(Counter({("main", test_stack_helpers.__code__): 5})) == ({}, 0)
    assert file_share(Counter(), ("x.py",)) == 0.0


def test_outputs(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mem = MemoryProfiler(consecutive=1, min_growth=1)
    hoard: list = []
    with mem:
        for _ in range(2):
            hoard.extend(bytearray(100) for _ in range(100))
            mem.snapshot()
    sampler = SamplingProfiler(interval=0.001)
    with sampler:
        end = time.perf_counter() + 0.05
        while time.perf_counter() < end:
            pass
    sampler.errors = 2
    report = ProfilingReport.build(
        title="out",
        sampler=sampler,
        memory=mem,
        io=io(writes=100, per_write=50, frames_per_write=1.0),
        throughput=1234.0,
        concurrency=8,
    )
    report.pool = {"size": 1, "max_size": 1, "checkouts": 10, "exhausted": 0}
    report.middleware = {"A": 0.2}
    assert report.hot_spots and isinstance(report.hot_spots[0], HotSpot)
    assert report.leak_suspects and report.allocations
    text = report.to_text()
    for needle in (
        "hot spots",
        "allocation hot spots",
        "leak suspects",
        "I/O:",
        "pool:",
        "middleware share",
        "[small_writes]",
        "throughput: 1,234",
        "note: 2 samples failed",
    ):
        assert needle in text, needle
    md = report.to_markdown()
    for needle in (
        "# nexus_green profile: out",
        "## Hot spots",
        "| self % |",
        "## Allocation hot spots",
        "## Leak suspects",
        "## I/O",
        "**small_writes**",
    ):
        assert needle in md, needle
    data = json.loads(report.to_json())
    assert data["suggestions"][0]["rule"] == "small_writes" and data["io"]["writes"] == 100
    assert data["hot_spots"][0]["self"] > 0 and data["leak_suspects"]
    paths = report.write(str(tmp_path / "r"))
    assert [p.rsplit(".", 1)[1] for p in paths] == ["txt", "json", "md"]
    quiet = ProfilingReport(title="quiet", io=io())
    assert "suggestions: none" in quiet.to_text() and "None: no rule fired." in quiet.to_markdown()
    assert ProfilingReport.build(io=io()).seconds == 1.0


def test_rules_are_pure() -> None:
    report = ProfilingReport(decoder_share=0.5)
    assert report.suggestions() == report.suggestions()
    with pytest.raises(AssertionError):
        ProfilingReport()._io_line()


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
