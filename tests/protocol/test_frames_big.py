"""FrameDecoder's big-frame mode and its get_buffer/buffer_updated path; encode_request_parts.

A frame whose payload is ``BIG_FRAME`` bytes or more is received into a buffer
of exactly its payload size. Setting ``BIG_FRAME`` on an instance lets these
tests drive that mode with small frames, so hypothesis can try every chunking.
"""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_green.errors import FrameTooLarge, RemoteProtocolError
from nexus_green.protocol.frames import (
    HEADER_SIZE,
    SEPARATE_BODY,
    TAG,
    VERSION,
    Frame,
    FrameDecoder,
    encode_frame,
    encode_request,
    encode_request_parts,
)
from nexus_green.protocol.headers import encode_header_block

FAST = settings(max_examples=150, deadline=None)
SMALL_BIG = 16  # payloads of 16 bytes or more are "big" on decoders made by big_decoder()

U32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
header_keys = st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=8)
header_maps = st.dictionaries(header_keys, st.text(max_size=8), max_size=3)
frames = st.builds(
    Frame,
    qid=U32,
    fid=U32,
    code=U32,
    tp=st.integers(min_value=0, max_value=0x3F),
    res=st.integers(min_value=0, max_value=1),
    ver=st.integers(min_value=0, max_value=0xFFFF),
    # Bodies on both sides of SMALL_BIG: small frames and big frames mixed in one stream.
    body=st.one_of(st.just(b""), st.binary(max_size=12), st.binary(min_size=14, max_size=120)),
    headers=st.one_of(st.just({}), header_maps),
)


def big_decoder(big: int = SMALL_BIG, **kwargs: int) -> FrameDecoder:
    dec = FrameDecoder(**kwargs)  # type: ignore[arg-type]
    dec.BIG_FRAME = big  # on the instance only: the class keeps 64 KiB
    return dec


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """Cut ``data`` at the given positions (any order; duplicates give empty chunks)."""
    points = sorted(c % (len(data) + 1) for c in cuts)
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def raw(frame: Frame) -> tuple:
    return (frame.qid, frame.fid, frame.code, frame.tp, frame.res, frame.ver, frame.body, dict(frame.headers))


def as_raw(t: tuple) -> tuple:
    return (*t[:7], dict(t[7]))


def prefix(length: int, *, tp: int = 0, res: int = 1, dh: int = 0, qid: int = 1) -> bytes:
    """A hand-made 24-byte frame prefix (Len + 20-byte header)."""
    return struct.pack(">IHHBBIIIH", length, TAG, VERSION, tp, res, qid, 2, 200, dh)


def recv_into_all(dec: FrameDecoder, scratch: bytearray, stream: bytes, limits: Sequence[int]) -> list[tuple]:
    """Drive ``dec`` as a reader would: each "recv" writes at most the next limit into get_buffer's buffer."""
    got: list[tuple] = []
    pos = 0
    i = 0
    while pos < len(stream):
        buf = dec.get_buffer(scratch)
        assert len(buf) > 0
        limit = limits[i % len(limits)] if limits else len(buf)
        i += 1
        n = min(len(buf), max(1, limit), len(stream) - pos)
        buf[:n] = stream[pos : pos + n]
        pos += n
        got += dec.buffer_updated(n, scratch)
        # The accounting holds after every read: consumed + buffered == received.
        assert dec.offset + dec.buffered == pos
    return got


# --- big frames through feed_raw --------------------------------------------------------------------------


@FAST
@given(
    st.lists(frames, max_size=6),
    st.lists(st.integers(min_value=0), max_size=14),
    st.sampled_from(["b", "ba", "mv"]),
)
def test_feed_raw_round_trips_big_frames_in_any_chunking(fs: list[Frame], cuts: list[int], kind: str) -> None:
    stream = b"".join(encode_frame(f) for f in fs)
    dec = big_decoder()
    got: list[tuple] = []
    fed = 0
    for chunk in split(stream, cuts):
        data = {"b": chunk, "ba": bytearray(chunk), "mv": memoryview(chunk)}[kind]
        out = dec.feed_raw(data)
        fed += len(chunk)
        assert all(type(t[6]) is bytes for t in out)
        got += out
        assert dec.offset + dec.buffered == fed
    assert [as_raw(t) for t in got] == [raw(f) for f in fs]
    assert dec.buffered == 0
    assert dec.offset == len(stream)
    assert dec.frames_decoded == len(fs)


@FAST
@given(st.lists(frames, min_size=1, max_size=6), st.lists(st.integers(min_value=1, max_value=64), max_size=8))
def test_get_buffer_round_trips_big_frames_in_any_read_sizes(fs: list[Frame], limits: list[int]) -> None:
    stream = b"".join(encode_frame(f) for f in fs)
    dec = big_decoder()
    scratch = bytearray(SMALL_BIG + 24 + 64)
    got = recv_into_all(dec, scratch, stream, limits)
    assert [as_raw(t) for t in got] == [raw(f) for f in fs]
    assert all(type(t[6]) is bytes for t in got)
    assert dec.buffered == 0 and dec.offset == len(stream)
    assert dec.frames_decoded == len(fs)


@FAST
@given(
    st.lists(frames, min_size=1, max_size=6),
    st.lists(st.tuples(st.booleans(), st.integers(min_value=1, max_value=50)), min_size=1, max_size=10),
)
def test_feed_raw_and_get_buffer_mixed_on_one_decoder(fs: list[Frame], plan: list[tuple[bool, int]]) -> None:
    """A decoder can switch between the two ways in at any read boundary."""
    stream = b"".join(encode_frame(f) for f in fs)
    dec = big_decoder()
    scratch = bytearray(SMALL_BIG + 24 + 64)
    got: list[tuple] = []
    pos = i = 0
    while pos < len(stream):
        use_buffer, size = plan[i % len(plan)]
        i += 1
        if use_buffer:
            buf = dec.get_buffer(scratch)
            n = min(len(buf), size, len(stream) - pos)
            buf[:n] = stream[pos : pos + n]
            got += dec.buffer_updated(n, scratch)
        else:
            n = min(size, len(stream) - pos)
            got += dec.feed_raw(stream[pos : pos + n])
        pos += n
        assert dec.offset + dec.buffered == pos
    assert [as_raw(t) for t in got] == [raw(f) for f in fs]
    assert dec.frames_decoded == len(fs)


def test_big_frame_buffer_is_exactly_the_rest_of_its_payload() -> None:
    body = bytes(range(256)) * 400  # 102,400 bytes: big at the class's 64 KiB
    wire = encode_request(9, 3, body)
    dec, scratch = FrameDecoder(), bytearray(256 * 1024)
    buf = dec.get_buffer(scratch)
    assert len(buf) == len(scratch)
    buf[:100] = wire[:100]
    assert dec.buffer_updated(100, scratch) == []
    assert dec.buffered == 100 and dec.offset == 0
    buf = dec.get_buffer(scratch)
    assert len(buf) == len(body) - 76  # its own buffer, not the scratch
    assert buf.obj is not scratch
    half = len(buf) // 2
    buf[:half] = wire[100 : 100 + half]
    assert dec.buffer_updated(half, scratch) == []
    assert dec.buffered == 100 + half
    buf = dec.get_buffer(scratch)
    assert len(buf) == len(body) - 76 - half
    buf[:] = wire[100 + half :]
    (frame,) = dec.buffer_updated(len(buf), scratch)
    assert frame[:6] == (9, 3, 0, 0, 0, VERSION)
    assert frame[6] == body and type(frame[6]) is bytes
    assert dec.buffered == 0 and dec.offset == len(wire) and dec.frames_decoded == 1
    # Back to the scratch for the next frame.
    assert dec.get_buffer(scratch).obj is scratch


def test_a_big_frame_starts_from_a_partial_frame_in_the_scratch() -> None:
    """Twenty bytes of a prefix wait in the decoder; the next read completes it and starts big mode."""
    body = b"B" * 70_000
    wire = encode_request(4, 5, body) + encode_request(6, 7, b"tail")
    dec, scratch = FrameDecoder(), bytearray(256 * 1024)
    assert dec.feed_raw(wire[:20]) == []
    assert dec.buffered == 20
    buf = dec.get_buffer(scratch)
    assert bytes(scratch[:20]) == wire[:20]  # the partial prefix moved to the front of the scratch
    assert len(buf) == len(scratch) - 20
    buf[:1000] = wire[20:1020]
    assert dec.buffer_updated(1000, scratch) == []
    assert dec.buffered == 1020
    buf = dec.get_buffer(scratch)
    buf[:] = wire[1020 : 24 + len(body)]
    (big,) = dec.buffer_updated(len(buf), scratch)
    assert big[6] == body
    rest = wire[24 + len(body) :]
    buf = dec.get_buffer(scratch)
    buf[: len(rest)] = rest
    (tail,) = dec.buffer_updated(len(rest), scratch)
    assert tail[6] == b"tail"
    assert dec.frames_decoded == 2 and dec.offset == len(wire) and dec.buffered == 0


def test_get_buffer_again_without_buffer_updated_loses_nothing() -> None:
    """A reader asks for a buffer, its recv_into finds nothing (EAGAIN), and it asks again next turn.

    asyncio's BufferedProtocol contract allows that; the partial frame the
    decoder held must survive it (and still count in ``buffered``).
    """
    wire = encode_request(1, 1, b"hello world") + encode_request(2, 1, b"x" * 100)
    dec, scratch = FrameDecoder(), bytearray(256 * 1024)
    assert dec.feed_raw(wire[:10]) == []
    assert dec.buffered == 10
    dec.get_buffer(scratch)  # nothing was read into it
    assert dec.buffered == 10
    scratch[:] = b"\xab" * len(scratch)  # meanwhile another connection reads into the shared scratch
    buf = dec.get_buffer(scratch)
    buf[: len(wire) - 10] = wire[10:]
    got = dec.buffer_updated(len(wire) - 10, scratch)
    assert [t[6] for t in got] == [b"hello world", b"x" * 100]


# --- bodies are bytes of their own ------------------------------------------------------------------------


def test_bodies_are_bytes_independent_of_the_scratch() -> None:
    small = encode_request(1, 1, b"small body")
    big_body = b"\x01\x02" * 40_000
    big = encode_request(2, 1, big_body, header_block=encode_header_block({"k": "v"}))
    dec, scratch = FrameDecoder(), bytearray(256 * 1024)
    buf = dec.get_buffer(scratch)
    stream = small + big
    first = min(len(buf), len(stream))
    buf[:first] = stream[:first]
    got = dec.buffer_updated(first, scratch)
    pos = first
    while pos < len(stream):
        buf = dec.get_buffer(scratch)
        n = min(len(buf), len(stream) - pos)
        buf[:n] = stream[pos : pos + n]
        pos += n
        got += dec.buffer_updated(n, scratch)
    scratch[:] = b"\xff" * len(scratch)  # the reader reuses its scratch for the next connection
    assert [t[6] for t in got] == [b"small body", big_body]
    assert all(type(t[6]) is bytes for t in got)
    assert dict(got[1][7]) == {"k": "v"}
    assert pickle.loads(pickle.dumps(got[1][6])) == big_body


def test_feed_raw_bodies_are_independent_of_a_caller_bytearray() -> None:
    data = bytearray(encode_request(1, 1, b"x" * 50) + encode_request(2, 1, b"y" * 50)[:30])
    dec = big_decoder()
    (f,) = dec.feed_raw(data)
    data[:] = b"\x00" * len(data)
    more = bytearray(encode_request(2, 1, b"y" * 50)[30:])
    (g,) = dec.feed_raw(memoryview(more))
    more[:] = b"\x00" * len(more)
    assert (f[6], g[6]) == (b"x" * 50, b"y" * 50)
    assert type(f[6]) is bytes and type(g[6]) is bytes


def test_reused_big_frame_buffers_never_leak_into_bodies() -> None:
    """Big-frame buffers are reused: a later, smaller frame gets exactly its own bytes, earlier bodies stay."""
    scratch = bytearray(256 * 1024)
    first_body = b"\x11" * 100_000
    second_body = bytes(range(256)) * 273 + b"end"  # 69,891 bytes: smaller, so a reused buffer is longer
    third_body = b"\x33" * 100_000
    bodies = []
    for body in (first_body, second_body, third_body):
        wire = encode_request(1, 1, body)
        for dec in (FrameDecoder(), FrameDecoder()):
            # Once through get_buffer/buffer_updated, once through feed_raw.
            got: list[tuple] = []
            if not bodies or len(bodies) % 2 == 0:
                pos = 0
                while pos < len(wire):
                    buf = dec.get_buffer(scratch)
                    n = min(len(buf), len(wire) - pos, 30_000)
                    buf[:n] = wire[pos : pos + n]
                    pos += n
                    got += dec.buffer_updated(n, scratch)
            else:
                for i in range(0, len(wire), 30_000):
                    got += dec.feed_raw(wire[i : i + 30_000])
            (t,) = got
            bodies.append(t[6])
    assert [len(b) for b in bodies] == [100_000, 100_000, 69_891, 69_891, 100_000, 100_000]
    assert bodies[0] == bodies[1] == first_body
    assert bodies[2] == bodies[3] == second_body
    assert bodies[4] == bodies[5] == third_body


def test_two_decoders_with_big_frames_in_progress_at_once() -> None:
    """Interleaved big frames of two links: each decoder fills its own buffer."""
    a = encode_request(1, 1, b"A" * 90_000)
    b = encode_request(2, 1, b"B" * 80_000)
    da, db = FrameDecoder(), FrameDecoder()
    got_a: list[tuple] = []
    got_b: list[tuple] = []
    for i in range(0, max(len(a), len(b)), 10_000):
        got_a += da.feed_raw(a[i : i + 10_000])
        got_b += db.feed_raw(b[i : i + 10_000])
    assert [t[6] for t in got_a] == [b"A" * 90_000]
    assert [t[6] for t in got_b] == [b"B" * 80_000]


# --- header blocks on big frames --------------------------------------------------------------------------


@FAST
@given(header_maps.filter(bool), st.binary(min_size=0, max_size=60), st.lists(st.integers(min_value=0), max_size=8))
def test_header_block_on_a_big_frame(headers: dict[str, str], body: bytes, cuts: list[int]) -> None:
    frame = Frame(qid=3, fid=4, res=1, body=body, headers=headers)
    stream = encode_frame(frame)
    dec = big_decoder(8)  # the header block counts in the payload: most of these frames are big
    got: list[tuple] = []
    for chunk in split(stream, cuts):
        got += dec.feed_raw(chunk)
    assert [as_raw(t) for t in got] == [raw(frame)]


def test_malformed_header_block_on_a_big_frame_is_detected_at_completion_feed_raw() -> None:
    good = encode_request(1, 1, b"ok")
    block = b"\x01a\x00\x05xy"  # the value overruns the block
    payload = block + b"z" * 40
    bad = prefix(HEADER_SIZE + len(payload), dh=len(block), qid=2) + payload
    dec = big_decoder()
    assert [t[6] for t in dec.feed_raw(good + bad[:30])] == [b"ok"]
    assert dec.feed_raw(bad[30:-1]) == []  # the block is all there, but the frame is not yet whole
    assert dec.error is None
    with pytest.raises(RemoteProtocolError) as ei:
        dec.feed_raw(bad[-1:])
    at = len(good)
    assert str(ei.value) == f"header value overruns the block at byte 4 of 6 (in frame at byte offset {at})"
    assert ei.value.offset == at
    assert isinstance(ei.value.__cause__, RemoteProtocolError)
    assert dec.error is ei.value
    assert dec.salvaged == []  # nothing completed in the failing feed
    assert dec.buffered == 0 and "failed" in repr(dec)
    for more in (b"", good):
        with pytest.raises(RemoteProtocolError) as again:
            dec.feed_raw(more)
        assert again.value is ei.value
    with pytest.raises(RemoteProtocolError) as again:
        dec.get_buffer(bytearray(100))
    assert again.value is ei.value


def test_malformed_header_block_on_a_big_frame_is_detected_at_completion_buffer_updated() -> None:
    block = b"\x00\x00\x00"  # empty key
    payload = block + b"q" * 80_000
    good = encode_request(1, 1, b"ok")
    bad = prefix(HEADER_SIZE + len(payload), dh=len(block)) + payload
    dec, scratch = FrameDecoder(), bytearray(256 * 1024)
    buf = dec.get_buffer(scratch)
    first = len(good) + 1000
    buf[:first] = (good + bad)[:first]
    assert [t[6] for t in dec.buffer_updated(first, scratch)] == [b"ok"]
    buf = dec.get_buffer(scratch)
    assert len(buf) == len(payload) - 976
    buf[:] = bad[1000:]
    with pytest.raises(RemoteProtocolError) as ei:
        dec.buffer_updated(len(buf), scratch)
    assert ei.value.offset == len(good)
    assert str(ei.value) == f"empty header key at byte 0 (in frame at byte offset {len(good)})"
    assert dec.error is ei.value and dec.buffered == 0


def test_malformed_bytes_after_a_big_frame_in_the_same_feed_salvage_the_big_frame() -> None:
    big = encode_request(1, 1, b"b" * 40)
    dec = big_decoder()
    assert dec.feed_raw(big[:30]) == []
    with pytest.raises(RemoteProtocolError) as ei:
        dec.feed_raw(big[30:] + b"\x00\x00\x00\x20GARBAGE-GARBAGE-GARBAGE-GARB")
    assert ei.value.offset == len(big) + 4  # the bad tag
    assert [t[6] for t in dec.salvaged] == [b"b" * 40]


def test_header_block_longer_than_a_big_body_fails_on_the_prefix() -> None:
    dec = big_decoder()
    with pytest.raises(RemoteProtocolError, match=r"header block of 50 bytes is longer than the 40-byte body"):
        dec.feed_raw(prefix(HEADER_SIZE + 40, dh=50) + b"x" * 10)
    assert dec.buffered == 0


def test_strict_decoder_ignores_dh_on_a_big_frame() -> None:
    payload = b"\x05ab" + b"x" * 40  # would be a malformed block if dh were read
    wire = prefix(HEADER_SIZE + len(payload), dh=3) + payload
    dec = big_decoder(strict=True)
    assert dec.feed_raw(wire[:30]) == []
    (t,) = dec.feed_raw(wire[30:])
    assert t[6] == payload and dict(t[7]) == {}


# --- bytes after a big frame, limits, accounting -------------------------------------------------------------


def test_bytes_after_a_big_frame_in_the_same_feed() -> None:
    big = encode_request(1, 1, b"B" * 100)
    small = encode_request(2, 1, b"s")
    big2 = encode_request(3, 1, b"C" * 60)
    dec = big_decoder()
    assert dec.feed_raw(big[:40]) == []
    assert dec.buffered == 40
    # The rest of the big frame, a whole small frame, and the start of another big frame.
    out = dec.feed_raw(big[40:] + small + big2[:50])
    assert [t[0] for t in out] == [1, 2]
    assert [t[6] for t in out] == [b"B" * 100, b"s"]
    assert dec.offset == len(big) + len(small)
    assert dec.buffered == 50
    assert dec.frames_decoded == 2
    (t,) = dec.feed_raw(big2[50:])
    assert t[6] == b"C" * 60
    assert dec.frames_decoded == 3
    assert dec.offset == len(big) + len(small) + len(big2) and dec.buffered == 0


def test_frames_decoded_counts_each_frame_once_after_a_big_frame() -> None:
    big = encode_request(1, 1, b"B" * 100)
    tail = encode_request(2, 1, b"1") + encode_request(3, 1, b"2")
    dec = big_decoder()
    dec.feed_raw(big[:30])
    out = dec.feed_raw(big[30:] + tail)
    assert len(out) == 3
    assert dec.frames_decoded == 3, repr(dec)
    assert repr(dec) == f"<FrameDecoder ok offset={len(big) + len(tail)} buffered=0 frames=3>"


def test_max_frame_size_still_refuses_a_big_frame_on_its_length_prefix() -> None:
    dec = big_decoder(max_frame_size=1000)
    with pytest.raises(FrameTooLarge) as ei:
        dec.feed_raw(struct.pack(">I", 5000))  # four bytes are enough to refuse it
    assert ei.value.offset == 0
    assert dec.buffered == 0
    dec2 = FrameDecoder(max_frame_size=100_000)
    scratch = bytearray(256 * 1024)
    good = encode_request(1, 1, b"ok")
    wire = good + prefix(HEADER_SIZE + 200_000)
    buf = dec2.get_buffer(scratch)
    buf[: len(wire)] = wire
    with pytest.raises(FrameTooLarge) as ei2:
        dec2.buffer_updated(len(wire), scratch)
    assert ei2.value.offset == len(good)
    assert str(ei2.value) == f"frame length 200020 exceeds max_frame_size 100000 (at byte offset {len(good)})"
    assert [t[6] for t in dec2.salvaged] == [b"ok"]
    # No buffer was allocated for the refused frame.
    assert dec2.buffered == 0


def test_frame_at_exactly_max_frame_size_is_big_and_accepted() -> None:
    body = b"m" * 70_000
    wire = encode_request(1, 1, body)
    dec = FrameDecoder(max_frame_size=len(wire) - 4)
    got = []
    for i in range(0, len(wire), 9000):
        got += dec.feed_raw(wire[i : i + 9000])
    assert [t[6] for t in got] == [body]


def test_big_frame_threshold_is_inclusive() -> None:
    dec, scratch = big_decoder(), bytearray(200)
    exactly = encode_request(1, 1, b"e" * SMALL_BIG)  # payload == SMALL_BIG
    buf = dec.get_buffer(scratch)
    buf[:30] = exactly[:30]
    dec.buffer_updated(30, scratch)
    assert dec.get_buffer(scratch).obj is not scratch  # big mode
    below = encode_request(2, 1, b"s" * (SMALL_BIG - 1))
    dec2 = big_decoder()
    buf = dec2.get_buffer(scratch)
    buf[:30] = below[:30]
    dec2.buffer_updated(30, scratch)
    assert dec2.get_buffer(scratch).obj is scratch  # still the scratch


def test_class_default_is_64_kib_and_instances_override() -> None:
    assert FrameDecoder.BIG_FRAME == 64 * 1024
    dec = big_decoder()
    assert dec.BIG_FRAME == SMALL_BIG and FrameDecoder().BIG_FRAME == 64 * 1024


def test_buffered_counts_prefix_and_payload_of_a_big_frame() -> None:
    wire = encode_request(1, 1, b"p" * 200)
    dec = big_decoder()
    for i in range(0, len(wire) - 1, 7):
        dec.feed_raw(wire[i : i + 7])
        received = min(i + 7, len(wire))
        if received < len(wire):
            assert dec.buffered == received
            assert dec.offset == 0
    assert "buffered=" in repr(dec)


# --- encode_request_parts ---------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=0, max_value=0xFFFFFFFF),
    st.integers(min_value=0, max_value=0xFFFFFFFF),
    st.integers(min_value=0, max_value=0x3F),
    st.one_of(st.just({}), header_maps),
    st.sampled_from([0, 1, SEPARATE_BODY - 1, SEPARATE_BODY, SEPARATE_BODY + 1, 70_000]),
)
def test_encode_request_parts_round_trips(qid: int, fid: int, tp: int, headers: dict[str, str], size: int) -> None:
    body = bytes([qid & 0xFF]) * size
    block = encode_header_block(headers) if headers else b""
    parts = encode_request_parts(qid, fid, body, tp=tp, header_block=block)
    joined = encode_request(qid, fid, body, tp=tp, header_block=block)
    if size >= SEPARATE_BODY:
        assert isinstance(parts, tuple)
        head, tail = parts
        assert tail is body  # never copied
        assert len(head) == 24 + len(block)
        assert head + tail == joined
        wire = head + tail
    else:
        assert type(parts) is bytes
        assert parts == joined
        wire = parts
    (t,) = FrameDecoder().feed_raw(wire)
    assert as_raw(t) == (qid, fid, 0, tp, 0, VERSION, body, headers)


# --- a big payload taken whole (take_payload) -----------------------------------------------------------


def _start_big(dec: FrameDecoder, scratch: bytearray, wire: bytes) -> None:
    """Feed only the 24-byte prefix of ``wire`` through get_buffer, as the reader does after a big frame."""
    buf = dec.get_buffer(scratch)
    buf[:24] = wire[:24]
    assert dec.buffer_updated(24, scratch) == []


def test_take_payload_makes_the_received_bytes_the_body_without_a_copy() -> None:
    dec, scratch = FrameDecoder(), bytearray(256 * 1024)
    body = os.urandom(100_000)
    wire = encode_frame(Frame(qid=7, fid=3, res=1, code=201, body=body))
    _start_big(dec, scratch, wire + encode_frame(Frame(qid=8, fid=3, res=1, body=b"next")))
    assert dec.payload_wanted == 100_000 and dec.buffered == 24
    payload = wire[24:]
    ((qid, fid, code, _, res, _, got, headers),) = dec.take_payload(payload)
    assert got is payload and (qid, fid, code, res, dict(headers)) == (7, 3, 201, 1, {})
    assert dec.payload_wanted == 0 and dec.payloads_taken == 1 and dec.last_big and dec.buffered == 0
    assert dec.offset == len(wire)  # the stream accounting goes on: the next frame decodes as usual
    tail = encode_frame(Frame(qid=8, fid=3, res=1, body=b"next"))
    assert [f[6] for f in dec.feed_raw(tail)] == [b"next"]


def test_take_payload_with_a_header_block_decodes_it_and_slices_the_body() -> None:
    dec, scratch = FrameDecoder(), bytearray(256 * 1024)
    body = b"y" * 70_000
    wire = encode_frame(Frame(qid=1, fid=2, res=1, body=body, headers={"k": "v"}))
    _start_big(dec, scratch, wire)
    ((*_, got, headers),) = dec.take_payload(wire[24:])
    assert got == body and dict(headers) == {"k": "v"}


def test_take_payload_refuses_what_is_not_a_whole_waiting_payload_and_loses_nothing() -> None:
    dec, scratch = FrameDecoder(), bytearray(256 * 1024)
    with pytest.raises(ValueError, match="take_payload wants the whole payload"):
        dec.take_payload(b"x")  # no big frame in progress
    body = os.urandom(80_000)
    wire = encode_frame(Frame(qid=1, fid=2, res=1, body=body))
    _start_big(dec, scratch, wire)
    with pytest.raises(ValueError, match="80000 bytes"):
        dec.take_payload(wire[24:-1])  # one byte short
    # Nothing was consumed: the payload still arrives the usual way, into get_buffer's buffer.
    got: list[tuple] = []
    for pos in range(24, len(wire), 30_000):
        buf = dec.get_buffer(scratch)
        part = wire[pos : pos + 30_000]
        buf[: len(part)] = part
        got += dec.buffer_updated(len(part), scratch)
    assert [as_raw(f) for f in got] == [(1, 2, 0, 0, 1, VERSION, body, {})] and dec.payloads_taken == 0
    # Once part of a payload is in, it can no longer be taken whole.
    _start_big(dec, scratch, wire)
    buf = dec.get_buffer(scratch)
    buf[:10] = wire[24:34]
    assert dec.buffer_updated(10, scratch) == [] and dec.payload_wanted == 0
    with pytest.raises(ValueError):
        dec.take_payload(wire[24:])


def test_payload_wanted_is_zero_when_part_of_the_payload_came_with_the_prefix() -> None:
    dec, scratch = FrameDecoder(), bytearray(256 * 1024)
    wire = encode_frame(Frame(qid=1, fid=2, res=1, body=b"z" * 90_000))
    buf = dec.get_buffer(scratch)
    buf[:1000] = wire[:1000]
    assert dec.buffer_updated(1000, scratch) == [] and dec.payload_wanted == 0 and dec.buffered == 1000


def test_take_payload_with_a_malformed_header_block_fails_the_decoder() -> None:
    dec, scratch = FrameDecoder(), bytearray(256 * 1024)
    payload = b"\xff\xff\xff" + b"b" * 70_000
    _start_big(dec, scratch, prefix(20 + len(payload), dh=3))
    with pytest.raises(RemoteProtocolError, match="in frame at byte offset 0"):
        dec.take_payload(payload)
    assert dec.error is not None and dec.payload_wanted == 0
    with pytest.raises(RemoteProtocolError):
        dec.take_payload(payload)  # a failed decoder stays failed
