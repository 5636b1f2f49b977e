"""IOProfiler: the transport's reads, writes and bytes through a real Client and server, from public counters."""

from __future__ import annotations

import gevent
import pytest

from nexus_green import Client
from nexus_green.events import EventBus
from nexus_green.profiling.io import IOFigures, IOProfiler
from nexus_green.testing import EmbeddedServer, run_module_patched


def test_counts_writes_reads_and_bytes(leakcheck: None) -> None:
    bus = EventBus()
    with EmbeddedServer() as server, Client(server.url, bus=bus) as client:
        client.connect()
        io = IOProfiler(bus).start()
        assert io.start() is io and io.running  # idempotent
        gevent.joinall([gevent.spawn(client.request, b"y" * 200, fid=1, timeout=5) for _ in range(40)], timeout=10)
        live = io.figures()  # readable while running
        io.stop()
        io.stop()
        f = io.figures()
        assert not io.running and "stopped" in repr(io)
    assert live.frames_sent >= 40
    # 40 frames of 24 + 200 bytes each way, counted by the connection's own counters.
    assert f.frames_sent == 40 and f.bytes_sent == 40 * 224
    assert f.frames_received == 40 and f.bytes_received == 40 * 224
    assert 1 <= f.writes <= 40 and 1 <= f.reads <= 40
    assert f.bytes_per_write == pytest.approx(f.bytes_sent / f.writes)
    assert f.frames_per_write >= 1.0 and f.bytes_per_read >= 224
    assert f.seconds > 0
    d = f.as_dict()
    assert d["writes"] == f.writes and d["frames_per_read"] == round(f.frames_per_read, 2)


def test_connections_opened_while_profiling_count_in_full(leakcheck: None) -> None:
    bus = EventBus()
    with EmbeddedServer() as server:
        with IOProfiler(bus) as io, Client(server.url, bus=bus) as client:
            for _ in range(5):
                client.request(b"z" * 10, fid=1, timeout=5)
            f = io.figures()
        assert f.frames_sent == 5 and f.bytes_sent == 5 * 34
        # After the client closed, the events still hold what its connection did.
        after = io.figures()
        assert after.frames_sent >= 5


def test_empty_figures() -> None:
    f = IOFigures(writes=0, reads=0, bytes_sent=0, bytes_received=0, frames_sent=0, frames_received=0, seconds=0)
    assert (f.bytes_per_write, f.frames_per_write, f.bytes_per_read, f.frames_per_read) == (0, 0, 0, 0)
    assert IOProfiler(EventBus()).figures().writes == 0


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
