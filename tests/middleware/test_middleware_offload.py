"""run_off_hub: inline below the threshold, in the threadpool above it, hub stays responsive."""

from __future__ import annotations

import threading
import zlib

import gevent
import pytest

from nexus_green.middleware.offload import run_off_hub


def where(data: bytes) -> int:
    return threading.get_ident()


def test_small_runs_inline_large_in_threadpool() -> None:
    me = threading.get_ident()
    assert run_off_hub(where, b"x", size=1, threshold=10) == me
    assert run_off_hub(where, b"x", size=10, threshold=10) != me


def test_errors_propagate_from_the_thread() -> None:
    def bad(data: bytes) -> bytes:
        raise zlib.error("boom")

    with pytest.raises(zlib.error, match="boom"):
        run_off_hub(bad, b"x", size=100, threshold=1)


def test_hub_stays_responsive_while_compressing_large_body() -> None:
    import zstandard

    body = b"".join(
        b'{"id": %d, "name": "user-%d", "tags": ["a", "b"], "score": %d}\n' % (i, i * 7, i % 97) for i in range(15_000)
    )
    ticks: list = []
    lag = [0.0]
    running = [True]

    def heartbeat() -> None:
        loop = gevent.get_hub().loop
        last = loop.now()
        while running[0]:
            gevent.sleep(0.005)
            loop.update_now()
            now = loop.now()
            lag[0] = max(lag[0], now - last - 0.005)
            last = now
            ticks.append(now)

    hb = gevent.spawn(heartbeat)
    gevent.sleep(0.02)
    comp = zstandard.ZstdCompressor(level=19)
    before = len(ticks)
    out = run_off_hub(comp.compress, body, size=len(body), threshold=1024)
    during = len(ticks) - before
    running[0] = False
    hb.join(timeout=5)
    assert zstandard.ZstdDecompressor().decompress(out) == body
    assert during > 0  # the heartbeat ran while the thread compressed
    assert lag[0] < 0.5
