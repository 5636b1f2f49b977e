"""Incremental body decoders: linear in their input, bounded per step and in total, the same bytes as one go.

Sans-IO: no socket, no hub. Linearity is counted, not timed: zlib is wrapped
to add up the input each call is handed, which the old decoder made
quadratic (the rest of the body, once per gzip member). The Client's use of
these decoders over a real socket is proved in
tests/middleware/test_hostile_bodies.py.
"""

from __future__ import annotations

import gzip
import os
import tracemalloc
import zlib
from typing import Any

import brotli
import lz4.frame
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_green.errors import CompressionError
from nexus_green.protocol import compression as comp
from nexus_green.protocol.compression import (
    DECODE_CHUNK,
    BodyDecoder,
    BrotliDecoder,
    GzipDecoder,
    Lz4Decoder,
    PlainDecoder,
    ZstdDecoder,
    body_decoder,
    get_codec,
    try_decompress,
)

MiB = 1 << 20
NAMES = ["gzip", "lz4", "zstd", "brotli"]
TP = {"gzip": 0x20, "lz4": 0x40, "zstd": 0x80, "brotli": 0xC0}
EMPTY_MEMBER = gzip.compress(b"", mtime=0)  # 20 bytes


def zeros(name: str, size: int, **kw: Any) -> bytes:
    """``size`` zero bytes compressed a MiB at a time (a bomb, never held whole)."""
    chunks = [b"\0" * MiB] * (size // MiB)
    if name == "gzip":
        c = zlib.compressobj(1, zlib.DEFLATED, 31)
        return b"".join(c.compress(x) for x in chunks) + c.flush()
    if name == "lz4":
        lc = lz4.frame.LZ4FrameCompressor()
        return lc.begin() + b"".join(lc.compress(x) for x in chunks) + lc.flush()
    if name == "zstd":
        zc = zstandard.ZstdCompressor(level=1, write_content_size=False).compressobj()
        return b"".join(zc.compress(x) for x in chunks) + zc.flush()
    bc = brotli.Compressor(quality=kw.get("quality", 1))
    return b"".join(bc.process(x) for x in chunks) + bc.finish()


BOMBS = {name: zeros(name, 64 * MiB) for name in NAMES}


class CountingZlib:
    """Stands in for ``zlib`` in protocol/compression.py: counts objects made and input bytes handed to them."""

    def __init__(self) -> None:
        self.made = 0
        self.fed = 0

    def decompressobj(self, wbits: int = zlib.MAX_WBITS) -> Any:
        self.made += 1
        return _Counted(self, zlib.decompressobj(wbits))

    def __getattr__(self, name: str) -> Any:
        return getattr(zlib, name)


class _Counted:
    def __init__(self, owner: CountingZlib, d: Any) -> None:
        self._owner = owner
        self._d = d

    def decompress(self, data: Any, max_length: int = 0) -> bytes:
        self._owner.fed += len(data)
        out: bytes = self._d.decompress(data, max_length)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._d, name)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> CountingZlib:
    z = CountingZlib()
    monkeypatch.setattr(comp, "zlib", z)
    return z


# --------------------------------------------------------------------- linear in the input
@pytest.mark.parametrize("members", [1_000, 10_000, 100_000])
def test_gzip_members_are_fed_a_bounded_slice_each(counting: CountingZlib, members: int) -> None:
    body = EMPTY_MEMBER * members
    assert GzipDecoder(body).run() == b""
    assert counting.made == members
    # About 128 bytes per member (its first slice); the old loop handed each member the whole rest: n^2 / 2.
    assert counting.fed <= 8 * len(body), counting.fed


def test_a_large_member_among_many_is_fed_in_growing_slices(counting: CountingZlib) -> None:
    big = os.urandom(300_000)
    body = EMPTY_MEMBER * 50 + gzip.compress(big) + EMPTY_MEMBER * 50 + gzip.compress(b"tail")
    assert GzipDecoder(body).run() == big + b"tail"
    assert counting.fed <= 3 * len(body) + 64 * 1024, counting.fed


def test_each_member_costs_a_kib_of_the_input_budget() -> None:
    d = GzipDecoder(EMPTY_MEMBER * 10_000)
    assert not d.step(max_input=64 * 1024)
    assert 50 <= d.consumed // len(EMPTY_MEMBER) <= 80  # about 64 members per 64 KiB of work
    steps = 1
    while not d.step(max_input=64 * 1024):
        steps += 1
    assert 100 <= steps <= 200 and d.result() == b""


# --------------------------------------------------------------------- bounded per step and in total
@pytest.mark.parametrize("name", NAMES)
def test_each_step_is_bounded_and_a_bomb_is_refused_naming_the_bound(name: str) -> None:
    d = body_decoder(TP[name], BOMBS[name], max_size=16 * MiB)
    # brotli's output limit applies once its ring buffer (the window, 4 MiB here) is filled.
    slack = 4 * MiB if name == "brotli" else 128 * 1024
    produced = 0
    with pytest.raises(CompressionError, match=f"^{name} body expands beyond max_size {16 * MiB} bytes$"):
        while True:
            done = d.step(max_output=256 * 1024)
            assert not done
            assert d.produced - produced <= 256 * 1024 + slack
            produced = d.produced
    assert 16 * MiB - 256 * 1024 - slack <= produced <= 16 * MiB


@pytest.mark.parametrize("name", NAMES)
def test_a_bomb_never_expands_far_in_memory(name: str) -> None:
    tracemalloc.start()
    try:
        with pytest.raises(CompressionError, match="beyond max_size 1048576"):
            body_decoder(TP[name], BOMBS[name], max_size=MiB).run()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * MiB, f"{name}: peak {peak} bytes while refusing a bomb"


def test_a_declared_zstd_frame_is_refused_before_any_work() -> None:
    blob = zstandard.ZstdCompressor().compress(b"a" * 5000)
    with pytest.raises(CompressionError, match="^zstd body expands beyond max_size 4999 bytes$"):
        ZstdDecoder(blob, max_size=4999)


def test_a_declared_zstd_frame_decodes_in_one_call_when_the_step_has_room_or_on_the_next_step() -> None:
    data = os.urandom(1000) * 300
    blob = zstandard.ZstdCompressor().compress(data)
    d = ZstdDecoder(blob)
    assert not d.step(max_output=1000) and d.produced == 0  # no room: nothing done yet
    assert d.step(max_output=1000) and d.result() == data  # the next step does it, whatever its room
    e = ZstdDecoder(blob)
    assert e.step(max_output=len(data)) and e.steps == 1


def test_an_undeclared_zstd_frame_streams_counted_then_decodes_once() -> None:
    data = os.urandom(2000) * 500  # 1 MB
    blob = zstandard.ZstdCompressor(write_content_size=False).compress(data)
    d = ZstdDecoder(blob)
    steps = 0
    while not d.step(max_output=200_000):
        steps += 1
        assert d.produced <= steps * (200_000 + 128 * 1024)
    assert d.result() == data and d.produced == len(data) and d.consumed == len(blob)


def test_a_small_undeclared_zstd_frame_decodes_in_one_step() -> None:
    blob = zstandard.ZstdCompressor(write_content_size=False).compress(b"small" * 100)
    d = ZstdDecoder(blob)
    assert d.step() and d.steps == 1 and d.result() == b"small" * 100


@pytest.mark.parametrize("cut", [1, 4, 100])
def test_a_truncated_undeclared_zstd_frame_is_truncated(cut: int) -> None:
    blob = zstandard.ZstdCompressor(write_content_size=False, write_checksum=True).compress(os.urandom(500) * 400)
    with pytest.raises(CompressionError, match=r"^truncated zstd body \("):
        d = ZstdDecoder(blob[:-cut])
        while not d.step(max_output=50_000):
            pass


# --------------------------------------------------------------------- the same bytes, however it is stepped
@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(NAMES),
    st.binary(max_size=3000),
    st.integers(0, 40),
    st.integers(1, 5000),
    st.integers(1, 70_000),
)
def test_stepping_gives_the_same_bytes_as_one_go(name: str, data: bytes, repeat: int, out: int, inp: int) -> None:
    payload = data * repeat
    blob = get_codec(name).compress(payload)
    d = body_decoder(TP[name], bytearray(blob))
    while not d.step(max_output=out, max_input=inp):
        pass
    assert d.result() == payload == get_codec(name).decompress(memoryview(blob))


def test_gzip_and_zlib_streams_and_multiple_members_step_alike() -> None:
    parts = [os.urandom(70_000), b"", b"abc" * 50_000]
    body = b"".join(gzip.compress(p) for p in parts) + zlib.compress(b"zlib last")
    for out in (1, 1000, DECODE_CHUNK):
        d = GzipDecoder(body)
        while not d.step(max_output=out, max_input=out):
            pass
        assert d.result() == b"".join(parts) + b"zlib last"


# --------------------------------------------------------------------- broken bodies name the codec
@pytest.mark.parametrize("name", ["gzip", "lz4", "brotli"])
def test_truncated_at_any_step(name: str) -> None:
    blob = get_codec(name).compress(os.urandom(3000) * 100)
    d = body_decoder(TP[name], blob[: len(blob) // 2])
    with pytest.raises(CompressionError, match=f"^truncated {name} body "):
        while not d.step(max_output=10_000):
            pass


def test_a_brotli_stream_with_bytes_after_its_end_is_corrupt(monkeypatch: pytest.MonkeyPatch) -> None:
    blob = brotli.compress(b"x" * 200_000)
    with pytest.raises(CompressionError, match=r"^corrupt brotli body \(\d+ bytes\): "):
        BrotliDecoder(blob + b"\0" * 3).run()  # brotli itself refuses what follows in the same slice
    monkeypatch.setattr(comp, "_FEED", len(blob))  # the stream ends exactly with a slice: the rest is never fed
    with pytest.raises(CompressionError, match=r"^corrupt brotli body \(\d+ bytes\): 3 bytes after the end"):
        BrotliDecoder(blob + b"\0" * 3).run()


def test_gzip_garbage_after_a_member_is_corrupt() -> None:
    with pytest.raises(CompressionError, match=r"^corrupt gzip body \(\d+ bytes\): .*incorrect header check"):
        GzipDecoder(gzip.compress(b"a") + b"garbage!").run()


def test_lz4_ignores_what_follows_its_frame() -> None:
    assert Lz4Decoder(lz4.frame.compress(b"abc") + b"whatever").run() == b"abc"


def test_result_before_done_and_bad_step_arguments() -> None:
    d = GzipDecoder(gzip.compress(os.urandom(200_000)))
    with pytest.raises(ValueError, match="is not done: call step"):
        d.result()
    with pytest.raises(ValueError, match="at least 1"):
        d.step(max_output=0)
    assert "GzipDecoder" in repr(d) and "step 0" in repr(d)
    d.run()
    assert d.step() and "done" in repr(d)


def test_the_input_is_released_once_done() -> None:
    buf = bytearray(get_codec("lz4").compress(b"hello"))
    d = Lz4Decoder(buf)
    assert d.run() == b"hello"
    buf.extend(b"more")  # a bytearray under a live memoryview could not be resized


def test_plain_and_two_dimensional_inputs() -> None:
    assert PlainDecoder(bytearray(b"abc")).result() == b"abc"
    assert body_decoder(0x01, b"heartbeat bit only").result() == b"heartbeat bit only"
    blob = next(b for n in range(100, 200) if len(b := gzip.compress(b"x" * n, mtime=0)) % 2 == 0)
    square = memoryview(blob).cast("B", (2, len(blob) // 2))
    assert GzipDecoder(square).run() == gzip.decompress(blob)  # read as one dimension of bytes
    assert GzipDecoder(memoryview(blob).cast("c")).run() == gzip.decompress(blob)
    with pytest.raises(NotImplementedError):
        BodyDecoder("base", b"x", 10).step()


# --------------------------------------------------------------------- the cheap first look
@pytest.mark.parametrize("name", NAMES)
def test_try_decompress_is_one_bounded_call(name: str) -> None:
    data = b'{"k": "v"}' * 1000
    blob = get_codec(name).compress(data)
    assert try_decompress(TP[name], blob, 16 * MiB, 64 * 1024) == data
    assert try_decompress(TP[name], blob, 16 * MiB, len(data) // 2) is None  # more than this call's room
    assert try_decompress(TP[name], blob, len(data) - 1, 64 * 1024) is None  # beyond max_size: the decoder says so
    assert try_decompress(TP[name], BOMBS[name], 16 * MiB, 64 * 1024) is None
    assert try_decompress(TP[name], b"junk", 16 * MiB, 64 * 1024) is None
    assert try_decompress(0, bytearray(b"plain"), 16, 16) == b"plain"


def test_try_decompress_leaves_unusual_gzip_to_the_decoder() -> None:
    two = gzip.compress(b"a") + gzip.compress(b"b")
    assert try_decompress(0x20, two, MiB, MiB) is None
    assert body_decoder(0x20, two).run() == b"ab"
    assert try_decompress(0x20, gzip.compress(b"x"), 0, 10) is None  # max_size 0: one byte is too many


class CountingBrotli:
    def __init__(self) -> None:
        self.calls = 0

    def Decompressor(self) -> Any:  # noqa: N802 - brotli's name
        self.calls += 1
        return brotli.Decompressor()

    def __getattr__(self, name: str) -> Any:
        return getattr(brotli, name)


def test_a_brotli_bomb_gets_no_call_at_all_on_the_first_look(monkeypatch: pytest.MonkeyPatch) -> None:
    counting = CountingBrotli()
    monkeypatch.setattr(comp, "brotli", counting)
    assert try_decompress(0xC0, BOMBS["brotli"], 16 * MiB, 256 * 1024) is None
    assert try_decompress(0xC0, zeros("brotli", 4 * MiB, quality=5), 16 * MiB, 256 * 1024) is None
    assert counting.calls == 0  # brotli's limit does not bound its work: the headers decide
    assert try_decompress(0xC0, brotli.compress(b"ok" * 1000), 16 * MiB, 256 * 1024) == b"ok" * 1000
    assert counting.calls == 1


def _first_block(blob: bytes) -> tuple[bool, int]:
    """A bit reader written from RFC 7932, 9.1-9.2, the slow obvious way: (last, MLEN)."""
    bits = "".join(f"{b:08b}"[::-1] for b in blob[:8])
    pos = 1 if bits[0] == "0" else 4 if bits[1:4] != "000" else 7
    last = bits[pos] == "1"
    if last and bits[pos + 1] == "1":
        return True, 0
    nibbles = int(bits[pos + 2 : pos + 4][::-1], 2) + 4 if last else int(bits[pos + 1 : pos + 3][::-1], 2) + 4
    start = pos + 4 if last else pos + 3
    return last, int(bits[start : start + 4 * nibbles][::-1], 2) + 1


@pytest.mark.parametrize("quality", [0, 1, 5, 11])
@pytest.mark.parametrize("lgwin", [10, 16, 17, 18, 22, 24])
@pytest.mark.parametrize("size", [0, 10, 5000, 300_000])
def test_the_brotli_header_look_agrees_with_the_rfc(quality: int, lgwin: int, size: int) -> None:
    blob = brotli.compress(b"nexus green " * (size // 12) + b"x" * (size % 12), quality=quality, lgwin=lgwin)
    last, mlen = _first_block(blob)
    assert comp._brotli_one_block(blob, 256 * 1024) == (last and mlen <= 256 * 1024)
    if last:
        assert mlen == size


def test_the_brotli_header_look_refuses_what_it_does_not_know() -> None:
    assert not comp._brotli_one_block(b"\x11\x00", 1000)  # large-window brotli (WBITS code 0010001)
    metadata = bytes([0b0001_1010, 0, 0])  # WBITS 16 (0), ISLAST 1, ISLASTEMPTY 0, MNIBBLES 11: metadata
    assert not comp._brotli_one_block(metadata, 1000)
    assert not comp._brotli_one_block(b"", 1000)
