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
    a.record("lz4", 10_000, 5_000, 0.001)  # cost 1e-7 + 0.5e-6
    a.record("zstd", 10_000, 1_000, 0.002)  # cost 2e-7 + 0.1e-6
    assert a.best() == "zstd"  # choice 4
    assert a.best() == "lz4"  # choice 5: re-probe the one sampled longest ago
    a.record("zstd", 10_000, 9_000, 0.002)  # traffic changed: zstd no longer shrinks it
    assert a.best() == "lz4" and a.switches == 1
    assert [e.attrs["to_algorithm"] for e in seen] == ["lz4"]
    st = a.stats()
    assert st["zstd"].samples == 2 and st["zstd"].bytes_in == 20_000 and st["lz4"].cost == pytest.approx(6e-7)
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
