"""Body codecs: round trips at every level, corrupt and truncated bodies, bombs, Tp bits."""

from __future__ import annotations

import gzip
import os
import tracemalloc
import zlib

import brotli
import lz4.frame
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_green.errors import CompressionError, ConfigurationError, RemoteProtocolError
from nexus_green.protocol.compression import CODECS, LEVELS, codec_for_bits, decompress_body, get_codec
from nexus_green.protocol.frames import DEFAULT_MAX_FRAME_SIZE, Frame, FrameDecoder, encode_frame

NAMES = ["gzip", "lz4", "zstd", "brotli"]
PAYLOADS = {
    "empty": b"",
    "one": b"x",
    "text": b"nexus green " * 500,
    "random": os.urandom(20000),
    "mixed": os.urandom(3000) + b"\0" * 50000,
}


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("level", ["fastest", "balanced", "best"])
@pytest.mark.parametrize("payload", list(PAYLOADS), ids=str)
def test_round_trip_every_codec_and_level(name: str, level: str, payload: str) -> None:
    codec = get_codec(name)
    data = PAYLOADS[payload]
    blob = codec.compress(data, level)
    assert codec.decompress(blob) == data
    assert decompress_body(codec.tp_bits, blob) == data
    assert decompress_body(codec.tp_bits | 0x01, blob) == data  # the heartbeat bit is not a codec bit
    if payload == "text":
        assert len(blob) < len(data) // 10


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(NAMES), st.binary(max_size=2000), st.sampled_from(sorted(LEVELS)))
def test_round_trip_arbitrary_bytes(name: str, data: bytes, level: str) -> None:
    codec = get_codec(name)
    blob = codec.compress(bytearray(data), level)
    assert codec.decompress(memoryview(blob), max_size=len(data)) == data


def test_levels_map_to_each_codecs_scale() -> None:
    assert sorted(LEVELS) == ["balanced", "best", "fastest"]
    assert [get_codec(n).level("fastest") for n in NAMES] == [1, 0, 1, 1]
    assert [get_codec(n).level("balanced") for n in NAMES] == [6, 4, 3, 5]
    assert [get_codec(n).level("best") for n in NAMES] == [9, 12, 19, 11]
    assert get_codec("zstd").compress(b"abc") == get_codec("zstd").compress(b"abc", "balanced")


def test_tp_bits_and_lookup() -> None:
    assert {n: CODECS[n].tp_bits for n in NAMES} == {"gzip": 0x20, "lz4": 0x40, "zstd": 0x80, "brotli": 0xC0}
    for n in NAMES:
        assert codec_for_bits(CODECS[n].tp_bits | 0x01) is CODECS[n]
        assert Frame(tp=CODECS[n].tp_bits).codec_bits == CODECS[n].tp_bits
    assert codec_for_bits(0) is None and codec_for_bits(0x01) is None and codec_for_bits(0x1F) is None
    assert decompress_body(0x01, b"plain") == b"plain"


@pytest.mark.parametrize("tp", [0x60, 0xA0, 0xE0, 0x61])
def test_unknown_codec_bits(tp: int) -> None:
    bits = tp & 0xE0
    with pytest.raises(CompressionError, match=f"^unknown compression bits 0x{bits:02x} in tp=0x{tp:02x}$"):
        codec_for_bits(tp)
    with pytest.raises(CompressionError):
        decompress_body(tp, b"whatever")


def test_unknown_names_are_configuration_errors() -> None:
    with pytest.raises(
        ConfigurationError, match=r"^unknown compression algorithm 'snappy'; known: gzip, lz4, zstd, brotli$"
    ):
        get_codec("snappy")
    with pytest.raises(ConfigurationError, match=r"unknown compression level 'max'; use fastest, balanced or best"):
        get_codec("gzip").level("max")
    with pytest.raises(ValueError):  # ConfigurationError is also a ValueError
        get_codec("lz4").compress(b"x", "ultra")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("body", [b"definitely not compressed data", b"\xff" * 64])
def test_corrupt_body_names_the_codec(name: str, body: bytes) -> None:
    with pytest.raises(CompressionError) as ei:
        get_codec(name).decompress(body)
    assert str(ei.value).startswith(f"corrupt {name} body ({len(body)} bytes): ")
    assert ei.value.__cause__ is not None
    assert isinstance(ei.value, RemoteProtocolError)


@pytest.mark.parametrize("name", NAMES)
def test_corrupted_middle_is_refused(name: str) -> None:
    codec = get_codec(name)
    data = os.urandom(4000) * 3
    blob = bytearray(codec.compress(data))
    for i in range(len(blob) // 3, len(blob) // 3 + 8):
        blob[i] ^= 0xFF
    # gzip carries a CRC; nexus_green writes lz4 and zstd frames with a content
    # checksum, so they notice too. Brotli has no checksum: the damaged bytes
    # must at least not come back as the original.
    try:
        out = codec.decompress(bytes(blob))
    except CompressionError as exc:
        assert name in str(exc)
    else:
        assert name == "brotli" and out != data


def test_lz4_frames_from_peers_without_a_checksum_still_decode() -> None:
    data = b"abc" * 1000
    assert get_codec("lz4").decompress(lz4.frame.compress(data)) == data


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("cut", ["half", "last_byte"])
def test_truncated_body(name: str, cut: str) -> None:
    codec = get_codec(name)
    blob = codec.compress(os.urandom(5000) + b"a" * 5000)
    short = blob[: len(blob) // 2] if cut == "half" else blob[:-1]
    with pytest.raises(CompressionError) as ei:
        codec.decompress(short)
    msg = str(ei.value)
    assert name in msg and ("truncated" in msg or "corrupt" in msg)


@pytest.mark.parametrize("name", ["gzip", "lz4", "brotli"])
def test_empty_body_is_truncated(name: str) -> None:
    with pytest.raises(CompressionError, match=f"^truncated {name} body \\(0 bytes\\)$"):
        get_codec(name).decompress(b"")


def test_truncated_zstd_says_truncated() -> None:
    blob = zstandard.ZstdCompressor(write_content_size=False).compress(os.urandom(1000) * 5)
    with pytest.raises(CompressionError, match=r"^truncated zstd body"):
        get_codec("zstd").decompress(blob[:-4])


# --- bombs ----------------------------------------------------------------------------------------------

MiB = 1 << 20


def _zeros(size: int) -> list[bytes]:
    return [b"\0" * MiB] * (size // MiB)


def gzip_stream(size: int) -> bytes:
    """Compress ``size`` zero bytes a MiB at a time (never holding them all)."""
    c = zlib.compressobj(1, zlib.DEFLATED, 31)
    return b"".join(c.compress(x) for x in _zeros(size)) + c.flush()


def lz4_stream(size: int) -> bytes:
    c = lz4.frame.LZ4FrameCompressor()
    return c.begin() + b"".join(c.compress(x) for x in _zeros(size)) + c.flush()


def zstd_stream(size: int) -> bytes:
    c = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
    return b"".join(c.compress(x) for x in _zeros(size)) + c.flush()


def brotli_stream(size: int) -> bytes:
    c = brotli.Compressor(quality=1)
    return b"".join(c.process(x) for x in _zeros(size)) + c.finish()


def _bombs() -> dict[str, tuple]:
    size = 64 * MiB
    return {
        "gzip": ("gzip", gzip_stream(size)),
        "lz4": ("lz4", lz4_stream(size)),
        "zstd-declared": ("zstd", zstandard.ZstdCompressor(level=1).compress(b"\0" * (4 * MiB))),
        "zstd-undeclared": ("zstd", zstd_stream(size)),
        "brotli": ("brotli", brotli_stream(size)),
    }


BOMBS = _bombs()


@pytest.mark.parametrize("kind", list(BOMBS))
def test_bomb_refused_without_expanding_in_memory(kind: str) -> None:
    name, blob = BOMBS[kind]
    assert len(blob) < 300_000
    tracemalloc.start()
    try:
        with pytest.raises(CompressionError, match=f"^{name} body expands beyond max_size 1048576 bytes$"):
            get_codec(name).decompress(blob, max_size=MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"{kind}: peak {peak} bytes while refusing a bomb"


def test_declared_zstd_size_refused_before_decoding() -> None:
    blob = zstandard.ZstdCompressor().compress(b"a" * 1000)
    assert zstandard.frame_content_size(blob) == 1000
    with pytest.raises(CompressionError, match="zstd body expands beyond max_size 999 bytes"):
        get_codec("zstd").decompress(blob, max_size=999)


@pytest.mark.parametrize("name, declared", [(n, True) for n in NAMES] + [("zstd", False)])
def test_max_size_boundary(name: str, declared: bool) -> None:
    data = b"0123456789" * 1000
    if declared:
        blob = get_codec(name).compress(data)
    else:
        blob = zstandard.ZstdCompressor(write_content_size=False).compress(data)
        assert zstandard.frame_content_size(blob) == -1
    assert get_codec(name).decompress(blob, max_size=len(data)) == data
    with pytest.raises(CompressionError, match="expands beyond max_size 9999 bytes"):
        get_codec(name).decompress(blob, max_size=len(data) - 1)


@pytest.mark.parametrize("name", NAMES)
def test_default_max_size_is_the_frame_limit(name: str) -> None:
    blob = {"gzip": gzip_stream, "lz4": lz4_stream, "zstd": zstd_stream, "brotli": brotli_stream}[name](17 * MiB)
    with pytest.raises(CompressionError, match=f"expands beyond max_size {DEFAULT_MAX_FRAME_SIZE} bytes"):
        decompress_body(CODECS[name].tp_bits, blob)


# --- gzip interoperability --------------------------------------------------------------------------------


def test_gzip_interoperates_with_stdlib() -> None:
    data = b"hello nexus" * 100
    assert get_codec("gzip").decompress(gzip.compress(data)) == data
    assert gzip.decompress(get_codec("gzip").compress(data)) == data
    assert get_codec("gzip").decompress(zlib.compress(data)) == data  # zlib wrapping is auto-detected


def test_gzip_multi_member_body() -> None:
    body = gzip.compress(b"abc") + gzip.compress(b"def")
    assert get_codec("gzip").decompress(body) == b"abcdef"
    with pytest.raises(CompressionError, match="expands beyond max_size 5"):
        get_codec("gzip").decompress(body, max_size=5)
    with pytest.raises(CompressionError, match="^corrupt gzip body"):
        get_codec("gzip").decompress(gzip.compress(b"abc") + b"trailing garbage")


def test_compressed_frame_end_to_end() -> None:
    codec = get_codec("brotli")
    data = b"payload " * 300
    wire = encode_frame(Frame(qid=4, tp=codec.tp_bits, body=codec.compress(data), headers={"t": "1"}))
    [f] = FrameDecoder().feed(wire)
    assert decompress_body(f.tp, f.body) == data


@pytest.mark.parametrize("name", NAMES)
def test_max_size_zero(name: str) -> None:
    codec = get_codec(name)
    assert codec.decompress(codec.compress(b""), max_size=0) == b""
    with pytest.raises(CompressionError, match=f"^{name} body expands beyond max_size 0 bytes$"):
        codec.decompress(codec.compress(b"x"), max_size=0)
    if name == "zstd":
        undeclared = zstandard.ZstdCompressor(write_content_size=False).compress(b"x")
        with pytest.raises(CompressionError, match="^zstd body expands beyond max_size 0 bytes$"):
            codec.decompress(undeclared, max_size=0)
