"""Compression middleware, adaptive chooser, analyzer and zstd dictionaries."""

from __future__ import annotations

import json
import threading

import pytest
import zstandard

from nexus_green.errors import CompressionError, ConfigurationError
from nexus_green.events import EventBus
from nexus_green.middleware import (
    CompressionAnalyzer,
    CompressionMiddleware,
    DictionaryRegistry,
    ZstdDictionary,
    choose_compression,
)
from nexus_green.protocol.compression import decompress_body
from nexus_green.protocol.messages import Request, Response

BODY = json.dumps(
    [{"id": i, "name": f"user-{i}", "email": f"u{i}@example.com", "active": i % 2 == 0} for i in range(300)]
).encode()


class Wire:
    """A fake call_next that decodes what it is sent, like the embedded server."""

    def __init__(self, registry: DictionaryRegistry | None = None) -> None:
        self.sent: list = []
        self.registry = registry

    def __call__(self, request: Request) -> Response:
        tp = request.context.get("tp", 0)
        decode = self.registry.decompress if self.registry else decompress_body
        plain = decode(tp, request.body)
        self.sent.append((tp, len(request.body), plain))
        return Response(body=plain)


@pytest.mark.parametrize("algorithm,bits", [("gzip", 0x20), ("lz4", 0x40), ("zstd", 0x80), ("brotli", 0xC0)])
@pytest.mark.parametrize("level", ["fastest", "balanced", "best", "adaptive"])
def test_each_algorithm_and_level_roundtrips(algorithm: str, bits: int, level: str) -> None:
    mw = CompressionMiddleware(algorithm, level)
    wire = Wire()
    assert mw(Request(body=BODY, context={"other": 1}), wire).body == BODY
    tp, size, plain = wire.sent[0]
    assert tp == bits and size < len(BODY) // 2 and plain == BODY
    s = mw.stats()
    assert s.compressed == 1 and s.per_algorithm[algorithm][0] == 1 and s.saved > 0.5


def test_level_none_small_empty_and_already_compressed_pass_through() -> None:
    wire = Wire()
    CompressionMiddleware("zstd", "none")(Request(body=BODY), wire)
    mw = CompressionMiddleware("zstd")
    mw(Request(body=b"x" * 100), wire)
    mw(Request(body=b""), wire)
    mw(Request(body=b"\x1f\x8b", context={"tp": 0x20}), lambda r: Response())
    assert [t for t, _, _ in wire.sent] == [0, 0, 0]
    assert mw.stats().skipped == 3 and mw.stats().compressed == 0


def test_incompressible_body_is_sent_plain() -> None:
    import os

    noise = os.urandom(4096)
    wire = Wire()
    mw = CompressionMiddleware("zstd")
    mw(Request(body=noise), wire)
    assert wire.sent[0][:2] == (0, 4096) and mw.stats().incompressible == 1


def test_context_overrides() -> None:
    wire = Wire()
    mw = CompressionMiddleware(level="best")
    mw(Request(body=BODY, context={"compression": "none"}), wire)
    mw(Request(body=BODY, context={"compression": "brotli"}), wire)
    mw(Request(body=BODY, context={"latency_sensitive": True}), wire)
    mw(Request(body=BODY, context={"bandwidth_constrained": True}), wire)
    assert [t for t, _, _ in wire.sent] == [0, 0xC0, 0x40, 0xC0]
    with pytest.raises(ConfigurationError, match="unknown compression algorithm"):
        mw(Request(body=BODY, context={"compression": "rar"}), wire)


def test_strict_mode_is_gzip_only() -> None:
    mw = CompressionMiddleware(strict=True)
    wire = Wire()
    mw(Request(body=BODY), wire)
    assert wire.sent[0][0] == 0x20
    with pytest.raises(ConfigurationError, match="gzip only"):
        mw(Request(body=BODY, context={"compression": "zstd"}), wire)
    with pytest.raises(ConfigurationError):
        CompressionMiddleware("zstd", strict=True)


def test_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="unknown compression level"):
        CompressionMiddleware(level="max")
    with pytest.raises(ConfigurationError, match="unknown compression algorithm"):
        CompressionMiddleware("snappy")
    with pytest.raises(ConfigurationError):
        CompressionAnalyzer(candidates=())
    with pytest.raises(ConfigurationError):
        CompressionAnalyzer(candidates=("zip",))
    with pytest.raises(ConfigurationError):
        CompressionAnalyzer(bandwidth=0)
    with pytest.raises(ConfigurationError):
        CompressionAnalyzer(alpha=0)
    with pytest.raises(ConfigurationError, match="directions"):
        CompressionAnalyzer(directions=0)
    with pytest.raises(ConfigurationError, match="tolerance"):
        CompressionAnalyzer(tolerance=1.0)
    with pytest.raises(ConfigurationError, match="decompress_every"):
        CompressionAnalyzer(decompress_every=0)


def test_choose_compression_rules() -> None:
    assert choose_compression(1023).algorithm is None
    assert choose_compression(5000, level="none").reason == "level_none"
    assert choose_compression(5000, latency_sensitive=True, level="best").level == "best"
    assert choose_compression(5000, bandwidth_constrained=True).level == "balanced"
    assert choose_compression(5000).level == "balanced"
    assert choose_compression(5000, level="best").level == "best"
    a = CompressionAnalyzer(candidates=("lz4",), min_samples=0)
    assert choose_compression(5000, analyzer=a).algorithm == "lz4"


def test_configured_algorithm_adaptive_level_by_size() -> None:
    mw = CompressionMiddleware("lz4")
    assert mw.choose(Request(body=BODY)).level == "fastest"
    mw = CompressionMiddleware("zstd")
    assert mw.choose(Request(body=BODY)).level == "balanced"
    assert mw.choose(Request(body=b"x" * (1 << 20))).level == "fastest"


def test_analyzer_explores_then_picks_cheapest_and_switches() -> None:
    bus = EventBus()
    seen: list = []
    bus.subscribe(seen.append, prefix="compression.")
    a = CompressionAnalyzer(
        candidates=("lz4", "zstd"), min_samples=1, explore_every=5, bandwidth=1e6, alpha=1.0, bus=bus
    )
    assert [a.best(), a.best()] == ["lz4", "zstd"]
    assert a.best() == "lz4"  # probes out, no results yet: the first candidate
    a.record("lz4", 10_000, 5_000, 0.001)  # max(cpu 1e-7, wire 2 x 0.5 / 1e6) = 1e-6 s/byte
    a.record("zstd", 10_000, 1_000, 0.002)  # max(cpu 2e-7, wire 2 x 0.1 / 1e6) = 2e-7 s/byte
    assert a.best() == "zstd"  # choice 4
    assert a.best() == "lz4"  # choice 5: re-probe the one sampled longest ago
    a.record("zstd", 10_000, 9_000, 0.002)  # traffic changed: zstd no longer shrinks it
    assert a.best() == "lz4" and a.switches == 1
    assert [e.attrs["to_algorithm"] for e in seen] == ["lz4"]
    st = a.stats()
    assert st["zstd"].samples == 2 and st["zstd"].bytes_in == 20_000 and st["lz4"].cost == pytest.approx(1e-6)
    assert st["lz4"].bound == "wire" and st["zstd"].bound == "wire" and st["zstd"].cost == pytest.approx(1.8e-6)
    a.record("brotli", 1, 1, 1)  # not a candidate: ignored
    a.record("lz4", 0, 0, 1)  # empty: ignored
    assert a.stats()["lz4"].samples == 1
    assert "switches=1" in repr(a)


def test_adaptive_middleware_feeds_analyzer() -> None:
    a = CompressionAnalyzer(min_samples=1)
    mw = CompressionMiddleware(analyzer=a)
    wire = Wire()
    for _ in range(6):
        mw(Request(body=BODY), wire)
    assert all(s.samples >= 1 for s in a.stats().values())
    assert a.current in ("zstd", "lz4", "gzip", "brotli")
    assert all(plain == BODY for _, _, plain in wire.sent)


def test_large_body_compressed_off_hub() -> None:
    threads: list = []
    mw = CompressionMiddleware("zstd", offload_threshold=4096)

    def capture(request: Request) -> Response:
        threads.append(threading.get_ident())
        return Response()

    mw(Request(body=BODY * 4), capture)
    assert mw.stats().offloaded == 1
    mw(Request(body=BODY[:2000]), capture)
    assert mw.stats().offloaded == 1


def test_corrupt_and_unknown_bodies_give_clear_errors() -> None:
    with pytest.raises(CompressionError, match="corrupt zstd"):
        decompress_body(0x80, b"\x28\xb5\x2f\xfd garbage")
    with pytest.raises(CompressionError, match="corrupt zstd"):
        DictionaryRegistry().decompress(0x80, b"not zstd at all")


SAMPLES = [json.dumps({"user": i, "event": "login", "ok": True, "region": "eu-west-1"}).encode() for i in range(500)]


def test_dictionary_train_register_and_use_for_small_messages() -> None:
    d = ZstdDictionary.train(SAMPLES, size=2048, dict_id=99)
    assert d.dict_id == 99 and "id=99" in repr(d)
    reg = DictionaryRegistry([d])
    reg.register(ZstdDictionary(d.as_bytes()))  # same bytes: fine
    wire = Wire(reg)
    mw = CompressionMiddleware(dictionary=d)
    msg = SAMPLES[7]
    plain_size = len(zstandard.ZstdCompressor(level=3).compress(msg))
    mw(Request(body=msg), wire)
    tp, size, plain = wire.sent[0]
    assert tp == 0x80 and plain == msg and size < plain_size and size < len(msg)
    assert zstandard.get_frame_parameters(wire.sent and _last_blob(mw, msg, d)).dict_id == 99
    assert mw.stats().dictionary == 1
    mw(Request(body=b"tiny"), wire)  # under dictionary_min_size: plain
    assert wire.sent[-1][0] == 0


def _last_blob(mw: CompressionMiddleware, msg: bytes, d: ZstdDictionary) -> bytes:
    return d.compress(msg)


def test_dictionary_errors() -> None:
    d = ZstdDictionary.train(SAMPLES, size=2048, dict_id=5)
    other = ZstdDictionary.train(
        list(reversed(SAMPLES)) + [b"different %d" % i for i in range(200)], size=1024, dict_id=5
    )
    reg = DictionaryRegistry([d])
    with pytest.raises(ConfigurationError, match="already registered"):
        reg.register(other)
    with pytest.raises(CompressionError, match="dictionary id 5, which is not registered"):
        DictionaryRegistry().decompress(0x80, d.compress(SAMPLES[0]))
    with pytest.raises(ConfigurationError, match="not a zstd dictionary"):
        ZstdDictionary(b"\x37\xa4\x30\xec" + b"\x00" * 8)
    with pytest.raises(ConfigurationError, match="cannot train"):
        ZstdDictionary.train([b"a"], size=1024)
    with pytest.raises(ConfigurationError, match="id 0"):
        ZstdDictionary(d.as_bytes()[:4] + b"\x00\x00\x00\x00" + d.as_bytes()[8:])  # a full dict whose id is 0
    big = d.compress(b"{" * 100_000)
    with pytest.raises(CompressionError, match="beyond max_size"):
        d.decompress(big, max_size=1000)
    with pytest.raises(CompressionError, match="truncated"):
        d.decompress(d.compress(SAMPLES[1] * 50)[:-6])
    with pytest.raises(CompressionError, match="corrupt"):
        d.decompress(b"\x00\x01")
    # plain zstd and other codecs still decode through the registry
    assert reg.decompress(0x80, zstandard.ZstdCompressor().compress(b"abc")) == b"abc"
    assert reg.decompress(0, b"abc") == b"abc"


def test_dictionary_with_undeclared_size_is_bounded() -> None:
    d = ZstdDictionary.train(SAMPLES, size=2048, dict_id=8)
    comp = zstandard.ZstdCompressor(dict_data=zstandard.ZstdCompressionDict(d.as_bytes()), write_content_size=False)
    blob = comp.compress(b"x" * 200_000)
    with pytest.raises(CompressionError, match="beyond max_size"):
        d.decompress(blob, max_size=50_000)
    corrupt = bytearray(d.compress(SAMPLES[2] * 20))
    corrupt[-8] ^= 0xFF
    with pytest.raises(CompressionError):
        d.decompress(bytes(corrupt))


def test_strict_refuses_dictionary() -> None:
    d = ZstdDictionary.train(SAMPLES, size=2048, dict_id=3)
    with pytest.raises(ConfigurationError):
        CompressionMiddleware(strict=True, dictionary=d)


def test_analyzer_chooses_none_on_a_link_faster_than_compression() -> None:
    a = CompressionAnalyzer(candidates=("lz4",), min_samples=1, explore_every=3, bandwidth=1e10)
    assert a.best() == "lz4"
    a.record("lz4", 10_000, 5_000, 0.0001)  # 1e-8 s/byte to compress > 1e-10 s/byte on the wire
    assert a.best() == "none"
    assert a.best() == "lz4"  # every 3rd choice re-probes, even while choosing none
    mw = CompressionMiddleware(analyzer=a)
    wire = Wire()
    for _ in range(3):
        mw(Request(body=BODY), wire)
    assert [t for t, _, _ in wire.sent].count(0) == 2  # two plain, one re-probe compressed
    c = choose_compression(50_000, analyzer=CompressionAnalyzer(candidates=("lz4",), min_samples=0, bandwidth=1e10))
    assert c.algorithm == "lz4"  # nothing measured yet: the first candidate
    keep = CompressionAnalyzer(candidates=("lz4",), min_samples=1, bandwidth=1e10, allow_none=False)
    keep.best()
    keep.record("lz4", 10_000, 5_000, 0.0001)
    assert keep.best() == "lz4"


def test_choose_reports_link_faster_reason() -> None:
    a = CompressionAnalyzer(candidates=("gzip",), min_samples=1, explore_every=0, bandwidth=1e10)
    a.best()
    a.record("gzip", 10_000, 2_000, 0.001)
    assert choose_compression(50_000, analyzer=a).reason == "link_faster_than_compression"


# --- the throughput model -------------------------------------------------------------
MB = 1_000_000


def _measured(bandwidth: float, **kw) -> CompressionAnalyzer:  # type: ignore[no-untyped-def]
    """An analyzer fed the figures of a 1 MB JSON body (CPU seconds, as measured on this machine's scale)."""
    a = CompressionAnalyzer(
        candidates=("zstd", "lz4", "brotli"), min_samples=0, explore_every=0, bandwidth=bandwidth, alpha=1.0, **kw
    )
    a.record("zstd", MB, 190_000, 0.003, decompress_seconds=0.001)  # cpu 4 ns/B
    a.record("lz4", MB, 340_000, 0.001, decompress_seconds=0.0005)  # cpu 1.5 ns/B
    a.record("brotli", MB, 170_000, 0.040, decompress_seconds=0.004)  # cpu 44 ns/B
    return a


def test_throughput_model_on_a_1_gbit_link_picks_zstd() -> None:
    a = _measured(125e6)
    # per byte: zstd max(4.0, 2 x 0.19 / 0.125 = 3.04) = 4.0 ns; lz4 max(1.5, 5.44) = 5.44 ns;
    # brotli 44 ns; plain 2 / 0.125 = 16 ns
    assert a.cost("zstd") == pytest.approx(4.0e-9)
    assert a.cost("lz4") == pytest.approx(5.44e-9)
    assert a.cost("brotli") == pytest.approx(44e-9)
    assert a.plain_cost == pytest.approx(16e-9)
    assert a.best() == "zstd" and a.current == "zstd"
    st = a.stats()
    assert (st["zstd"].bound, st["lz4"].bound, st["brotli"].bound) == ("cpu", "wire", "cpu")
    assert st["zstd"].speed == pytest.approx(MB / 0.003) and st["zstd"].decompress_speed == pytest.approx(MB / 0.001)


def test_throughput_model_on_slow_and_fast_links() -> None:
    slow = _measured(1.25e6)  # 10 Mbit/s: every codec is wire-bound, the best ratio wins
    assert slow.best() == "brotli" and slow.cost("brotli") == pytest.approx(2 * 0.17 / 1.25e6)
    ten = _measured(1.25e9)  # 10 Gbit/s: plain costs 1.6 ns/B, within 10% of lz4's CPU (1.5 ns/B): plain wins
    assert ten.best() == "none"
    exact = _measured(1.25e9, tolerance=0.0)  # no tolerance: lz4 just beats plain
    assert exact.best() == "lz4"
    fast = _measured(2.5e9)  # 20 Gbit/s: plain costs 0.8 ns/B, less than any codec's CPU
    assert fast.best() == "none"
    one_way = _measured(125e6, directions=1)  # small replies: wire time halves
    assert one_way.wire_cost("lz4") == pytest.approx(2.72e-9) and one_way.best() == "lz4"  # lz4 now 2.72 < zstd 4.0
    keep = _measured(2.5e9, allow_none=False)
    assert keep.best() == "lz4"  # the least CPU when all are CPU-bound


def test_equal_cost_prefers_less_cpu_and_unmeasured_is_none() -> None:
    a = CompressionAnalyzer(candidates=("gzip", "zstd"), min_samples=0, explore_every=0, bandwidth=1e6)
    assert a.cost("zstd") is None and a.cpu_cost("zstd") is None and a.wire_cost("zstd") is None
    assert a.stats()["zstd"].bound is None and a.stats()["zstd"].speed == 0.0
    a.record("gzip", 10_000, 1_000, 0.0010)  # wire-bound: 2e-7 s/B, cpu 1e-7
    a.record("zstd", 10_000, 1_000, 0.0005)  # same wire cost, half the CPU
    assert a.best() == "zstd"


def test_decompress_sampling_schedule() -> None:
    a = CompressionAnalyzer(candidates=("zstd",), min_samples=2, decompress_every=3)
    wants = []
    for _ in range(9):
        w = a.wants_decompress_sample("zstd")
        wants.append(w)
        a.record("zstd", 1000, 100, 1e-5, decompress_seconds=2e-6 if w else None)
    # the first min_samples records, then one in every 3
    assert wants == [True, True, False, False, True, False, False, True, False]
    assert a.cpu_cost("zstd") == pytest.approx(1e-8 + 2e-9)
    a.record("zstd", 1000, 100, 0.0)  # below the timer's resolution: still a (tiny) positive cost
    assert a.stats()["zstd"].speed > 0


class StepTimer:
    """A fake CPU timer: each reading is ``step`` seconds after the previous one."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.step
        return self.now


@pytest.mark.parametrize("offload_threshold", [1 << 30, 1024], ids=["inline", "threadpool"])
def test_middleware_feeds_cpu_time_from_the_injected_timer(offload_threshold: int) -> None:
    timer = StepTimer(0.002)  # every timed job "takes" 2 ms of CPU
    a = CompressionAnalyzer(candidates=("zstd",), min_samples=1, decompress_every=2, alpha=1.0, allow_none=False)
    mw = CompressionMiddleware(analyzer=a, cpu_timer=timer, offload_threshold=offload_threshold)
    wire = Wire()
    for _ in range(5):
        mw(Request(body=BODY), wire)
    # compressions 5 x 2 reads; decompress samples on records 1, 3, 5 (first, then one in 2): 3 x 2 reads
    assert timer.reads == 16
    st = a.stats()["zstd"]
    assert st.samples == 5 and st.speed == pytest.approx(len(BODY) / 0.002)
    assert st.decompress_speed == pytest.approx(len(BODY) / 0.002)
    assert mw.stats().per_algorithm["zstd"][3] == pytest.approx(5 * 0.002)
    assert mw.stats().offloaded == (5 if offload_threshold == 1024 else 0)
    assert all(plain == BODY for _, _, plain in wire.sent)


def test_close_costs_go_to_the_codec_with_less_cpu() -> None:
    a = CompressionAnalyzer(candidates=("brotli", "zstd"), min_samples=0, explore_every=0, bandwidth=12.5e6)
    # a 30 KB body on 100 Mbit/s: brotli max(17.2, 31.4) ns/B, zstd max(2.8, 34.2) ns/B: 9% apart
    a.record("brotli", 30_000, 5_880, 30_000 * 15.6e-9, decompress_seconds=30_000 * 1.6e-9)
    a.record("zstd", 30_000, 6_420, 30_000 * 2.1e-9, decompress_seconds=30_000 * 0.7e-9)
    assert a.cost("brotli") < a.cost("zstd")  # type: ignore[operator]
    assert a.best() == "zstd"  # within 10%: the one that leaves the CPU to the application
    strict = CompressionAnalyzer(candidates=("brotli", "zstd"), min_samples=0, bandwidth=12.5e6, tolerance=0.0)
    strict.record("brotli", 30_000, 5_880, 30_000 * 15.6e-9, decompress_seconds=30_000 * 1.6e-9)
    strict.record("zstd", 30_000, 6_420, 30_000 * 2.1e-9, decompress_seconds=30_000 * 0.7e-9)
    assert strict.best() == "brotli"


def test_probing_keeps_the_lowest_cpu_sample_then_averages() -> None:
    a = CompressionAnalyzer(candidates=("zstd",), min_samples=3, alpha=0.5, decompress_every=100)
    a.record("zstd", 1000, 200, 10e-6, decompress_seconds=4e-6)  # cold: a context built, a busy core
    a.record("zstd", 1000, 200, 2e-6, decompress_seconds=1e-6)
    a.record("zstd", 1000, 200, 3e-6, decompress_seconds=2e-6)
    assert a.cpu_cost("zstd") == pytest.approx(2e-9 + 1e-9)  # the lowest of the probes
    a.record("zstd", 1000, 200, 4e-6)  # then EWMA (alpha 0.5); no decompress sample
    assert a.cpu_cost("zstd") == pytest.approx(3e-9 + 1e-9)
