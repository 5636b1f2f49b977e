"""Reused zstd contexts: lent to one caller at a time, bounded, dropped after big inputs or errors."""

from __future__ import annotations

import os
import threading
import time

import gevent
import pytest
import zstandard

from nexus_green.errors import CompressionError
from nexus_green.middleware.compression import ZstdDictionary
from nexus_green.protocol import compression as comp
from nexus_green.protocol.compression import ContextPool, get_codec


class Ctx:
    """A context that notices when two callers use it at once."""

    def __init__(self) -> None:
        self.busy = False
        self.uses = 0

    def use(self) -> bool:
        clash = self.busy
        self.busy = True
        time.sleep(0)  # let another thread run while this one holds the context
        self.uses += 1
        self.busy = False
        return clash


def test_a_context_is_never_lent_to_two_threads_at_once() -> None:
    pool: ContextPool[Ctx] = ContextPool(Ctx, max_free=3)
    clashes: list[bool] = []

    def worker() -> None:
        for _ in range(300):
            ctx = pool.take()
            clashes.append(ctx.use())
            pool.give(ctx, size=1)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(clashes) == 8 * 300
    assert not any(clashes)
    assert 1 <= len(pool) <= 3 + 8  # max_free is a soft cap: racing gives may each pass the check
    assert sum(c.uses for c in pool._free) >= 1


def test_contexts_are_reused_and_bounded() -> None:
    made: list[Ctx] = []

    def factory() -> Ctx:
        made.append(Ctx())
        return made[-1]

    pool = ContextPool(factory, max_free=2, max_input=100)
    a, b, c = pool.take(), pool.take(), pool.take()
    assert len(made) == 3
    for ctx in (a, b, c):
        pool.give(ctx, size=10)
    assert len(pool) == 2  # the third is let go
    assert pool.take() in (a, b) and len(made) == 3
    pool.give(pool.take(), size=101)  # used on an input above max_input: not kept
    assert len(pool) == 0


def test_zstd_codec_reuses_one_compressor_per_level_and_matches_a_fresh_one() -> None:
    codec = get_codec("zstd")
    data = b'{"user": 1, "name": "ann"}' * 200
    comp._ZSTD_COMPRESSORS.clear()
    first = codec.compress(data, "best")
    pooled = comp._ZSTD_COMPRESSORS[codec.level("best")]
    ctx = pooled.take()
    pooled.give(ctx, size=0)
    assert (
        codec.compress(data, "best") == first == zstandard.ZstdCompressor(level=19, write_checksum=True).compress(data)
    )
    assert pooled.take() is ctx  # the same compressor served the second call
    pooled.give(ctx, size=0)
    assert len(pooled) == 1


def test_big_inputs_do_not_park_big_contexts() -> None:
    codec = get_codec("zstd")
    comp._ZSTD_COMPRESSORS.clear()
    big = os.urandom(1000) * 200  # 200 KB, above max_input
    assert codec.decompress(codec.compress(big, "fastest")) == big
    assert len(comp._ZSTD_COMPRESSORS[1]) == 0


def test_a_failed_decompression_drops_its_context_and_the_next_one_works() -> None:
    codec = get_codec("zstd")
    good = codec.compress(b"nexus " * 1000)
    codec.decompress(good)
    before = len(comp._ZSTD_DECOMPRESSORS)
    with pytest.raises(CompressionError, match="truncated zstd"):
        codec.decompress(good[:-4])
    assert len(comp._ZSTD_DECOMPRESSORS) == max(0, before - 1)
    assert codec.decompress(good) == b"nexus " * 1000


@pytest.mark.parametrize("name", ["zstd", "dictionary"])
def test_threadpool_and_hub_compress_at_once(name: str) -> None:
    samples = [b'{"id": %d, "kind": "event", "ok": true, "tags": ["a", "b"]}' % i for i in range(400)]
    dictionary = ZstdDictionary.train(samples, size=2048, dict_id=77)
    codec = get_codec("zstd")

    def roundtrip(i: int) -> bool:
        data = samples[i % len(samples)] * (1 + i % 7)
        if name == "zstd":
            return codec.decompress(codec.compress(data, ("fastest", "balanced")[i % 2])) == data
        return dictionary.decompress(dictionary.compress(data)) == data

    pool = gevent.get_hub().threadpool
    results: list[bool] = []

    def offloaded() -> None:
        results.extend(pool.apply(lambda: [roundtrip(i) for i in range(200)]))

    def on_hub() -> None:
        for i in range(200):
            results.append(roundtrip(i))
            gevent.sleep(0)

    jobs = [gevent.spawn(offloaded) for _ in range(4)] + [gevent.spawn(on_hub)]
    gevent.joinall(jobs, timeout=60, raise_error=True)
    assert len(results) == 5 * 200 and all(results)
