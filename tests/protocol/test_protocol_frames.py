"""FrameDecoder / encode_frame: round trips under any chunking, exact errors, strict mode."""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_green.errors import FrameTooLarge, LocalProtocolError, ProtocolError, RemoteProtocolError
from nexus_green.protocol.frames import (
    CODE_OK,
    DEFAULT_MAX_FRAME_SIZE,
    HEADER_SIZE,
    HEARTBEAT_FID,
    TAG,
    TP_CODEC_MASK,
    TP_GZIP,
    TP_HEARTBEAT,
    VERSION,
    Frame,
    FrameDecoder,
    encode_frame,
    encode_request,
    heartbeat_frame,
    make_frame,
)
from nexus_green.protocol.headers import encode_header_block

FAST = settings(max_examples=150, deadline=None)

U32 = st.integers(min_value=0, max_value=0xFFFFFFFF)
valid_tp = st.integers(min_value=0, max_value=0xFF).filter(lambda tp: not (tp & TP_GZIP and tp & TP_CODEC_MASK))
header_keys = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), min_size=1, max_size=24)
header_maps = st.dictionaries(header_keys, st.text(max_size=24), max_size=4)
frames = st.builds(
    Frame,
    qid=U32,
    fid=U32,
    code=U32,
    tp=valid_tp,
    res=st.integers(min_value=0, max_value=1),
    ver=st.integers(min_value=0, max_value=0xFFFF),
    body=st.one_of(st.just(b""), st.binary(max_size=200)),
    headers=header_maps,
)
#: Frames a plain NexusKit peer produces: no header block, no extension codec bits.
nexuskit_frames = st.builds(
    Frame,
    qid=U32,
    fid=U32,
    code=U32,
    tp=st.integers(min_value=0, max_value=0x3F),
    res=st.integers(min_value=0, max_value=1),
    body=st.binary(max_size=100),
)


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    """Cut ``data`` at the given positions (any order, duplicates give empty chunks)."""
    points = sorted(c % (len(data) + 1) for c in cuts)
    out, prev = [], 0
    for p in points:
        out.append(data[prev:p])
        prev = p
    out.append(data[prev:])
    return out


def raw(frame: Frame) -> tuple:
    return (frame.qid, frame.fid, frame.code, frame.tp, frame.res, frame.ver, frame.body, dict(frame.headers))


def prefix(length: int, *, tag: int = TAG, ver: int = VERSION, tp: int = 0, res: int = 0, dh: int = 0) -> bytes:
    """A hand-made 24-byte frame prefix (Len + 20-byte header)."""
    return struct.pack(">IHHBBIIIH", length, tag, ver, tp, res, 1, 2, 0, dh)


# --- round trips ----------------------------------------------------------------------------------------


@FAST
@given(
    st.lists(frames, max_size=6), st.lists(st.integers(min_value=0), max_size=12), st.sampled_from(["b", "ba", "mv"])
)
def test_feed_round_trips_any_chunking(fs: list[Frame], cuts: list[int], kind: str) -> None:
    stream = b"".join(encode_frame(f) for f in fs)
    dec = FrameDecoder()
    got: list[Frame] = []
    for chunk in split(stream, cuts):
        data = {"b": chunk, "ba": bytearray(chunk), "mv": memoryview(chunk)}[kind]
        got += dec.feed(data)
    assert got == fs
    assert dec.buffered == 0
    assert dec.offset == len(stream)
    assert dec.frames_decoded == len(fs)


@FAST
@given(st.lists(frames, max_size=6), st.lists(st.integers(min_value=0), max_size=12))
def test_feed_raw_round_trips_any_chunking(fs: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(f) for f in fs)
    dec = FrameDecoder()
    got = []
    for chunk in split(stream, cuts):
        got += dec.feed_raw(chunk)
    assert [(*t[:7], dict(t[7])) for t in got] == [raw(f) for f in fs]
    assert all(type(t[6]) is bytes for t in got)


@FAST
@given(st.lists(nexuskit_frames, max_size=5), st.lists(st.integers(min_value=0), max_size=8))
def test_strict_decoder_round_trips_nexuskit_frames(fs: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(f, strict=True) for f in fs)
    dec = FrameDecoder(strict=True)
    got: list[Frame] = []
    for chunk in split(stream, cuts):
        got += dec.feed(chunk)
    assert got == fs


def test_byte_at_a_time_and_zero_length_body() -> None:
    fs = [
        Frame(qid=1),
        Frame(qid=2, body=b"", headers={"k": ""}),
        Frame(qid=3, fid=9, body=b"xyz", res=1, code=CODE_OK),
    ]
    stream = b"".join(encode_frame(f) for f in fs)
    dec = FrameDecoder()
    got: list[Frame] = []
    for i in range(len(stream)):
        got += dec.feed(stream[i : i + 1])
        assert dec.buffered + dec.offset == i + 1
    assert got == fs
    assert got[0].body == b"" and dict(got[0].headers) == {}
    assert dict(got[1].headers) == {"k": ""}


def test_feed_empty_and_headers_are_read_only() -> None:
    dec = FrameDecoder()
    assert dec.feed(b"") == []
    [f] = dec.feed(encode_frame(Frame(qid=1, body=b"x")))
    with pytest.raises(TypeError):
        f.headers["a"] = "b"  # type: ignore[index]


def test_frame_at_exactly_max_frame_size_is_accepted() -> None:
    body = b"z" * 44
    dec = FrameDecoder(max_frame_size=HEADER_SIZE + 44)
    [f] = dec.feed(encode_frame(Frame(body=body)))
    assert f.body == body
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame_size=HEADER_SIZE + 43).feed(encode_frame(Frame(body=body)))


def test_max_frame_size_must_cover_the_header() -> None:
    with pytest.raises(ValueError, match="max_frame_size must be at least 20, got 19"):
        FrameDecoder(max_frame_size=19)
    assert FrameDecoder().max_frame_size == DEFAULT_MAX_FRAME_SIZE == 16 * 1024 * 1024


# --- wire layout ----------------------------------------------------------------------------------------


def test_exact_wire_bytes() -> None:
    data = encode_frame(Frame(qid=1, fid=2, body=b"ok"))
    assert data.hex() == "000000167a5a0001000000000001000000020000000000006f6b"
    hdr = encode_frame(Frame(qid=7, fid=3, code=200, res=1, tp=TP_GZIP, body=b"b", headers={"a": "1"}))
    assert hdr.hex() == ("0000001a7a5a000120010000000700000003000000c80005016100013162")


def test_header_block_counts_in_len_and_dh() -> None:
    block = encode_header_block({"trace-id": "abc"})
    data = encode_frame(Frame(body=b"xyz", headers={"trace-id": "abc"}))
    (length,) = struct.unpack_from(">I", data)
    (dh,) = struct.unpack_from(">H", data, 22)
    assert length == HEADER_SIZE + len(block) + 3
    assert dh == len(block)
    assert data[24:] == block + b"xyz"


def test_heartbeat_frames() -> None:
    ping, pong = heartbeat_frame(), heartbeat_frame(response=True)
    assert len(ping) == len(pong) == 24
    [p] = FrameDecoder().feed(ping)
    [q] = FrameDecoder().feed(pong)
    assert p.is_heartbeat and q.is_heartbeat
    assert (p.tp, p.fid, p.res, p.body) == (TP_HEARTBEAT, HEARTBEAT_FID, 0, b"")
    assert (q.res, q.is_response, p.is_response) == (1, True, False)
    assert ping == encode_frame(Frame(tp=TP_HEARTBEAT, fid=HEARTBEAT_FID))


def test_frame_properties_and_make_frame() -> None:
    f = Frame(tp=TP_HEARTBEAT | 0x80, res=1)
    assert (f.is_heartbeat, f.is_response, f.codec_bits) == (True, True, 0x80)
    assert Frame(tp=TP_GZIP | 0x02).codec_bits == TP_GZIP
    assert Frame().codec_bits == 0 and not Frame().is_heartbeat
    assert make_frame(1, 2, 3, 4, 1, 1, b"b", {"k": "v"}) == Frame(
        qid=1, fid=2, code=3, tp=4, res=1, body=b"b", headers={"k": "v"}
    )


def test_encode_request_matches_encode_frame() -> None:
    block = encode_header_block({"idem": "k"})
    assert encode_request(5, 6, b"body", tp=0x80, header_block=block) == encode_frame(
        Frame(qid=5, fid=6, tp=0x80, body=b"body", headers={"idem": "k"})
    )
    assert encode_request(0xFFFFFFFF, 0, b"") == encode_frame(Frame(qid=0xFFFFFFFF))


@pytest.mark.parametrize("qid, fid, tp", [(-1, 2, 0), (2**32, 2, 0), (1, -1, 0), (1, 2, 256)])
def test_encode_request_range_errors(qid: int, fid: int, tp: int) -> None:
    with pytest.raises(LocalProtocolError, match=f"cannot encode request qid={qid} fid={fid}") as ei:
        encode_request(qid, fid, b"", tp=tp)
    assert isinstance(ei.value.__cause__, struct.error)


# --- encode errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["qid", "fid", "code"])
@pytest.mark.parametrize("value", [-1, 2**32])
def test_encode_u32_range(field: str, value: int) -> None:
    with pytest.raises(LocalProtocolError, match=f"^{field}={value} does not fit in an unsigned 32-bit field$"):
        encode_frame(Frame(**{field: value}))
    encode_frame(Frame(**{field: 0xFFFFFFFF}))  # the top of the range is fine


@pytest.mark.parametrize("changes", [{"tp": -1}, {"tp": 256}, {"res": 2}, {"res": -1}, {"ver": -1}, {"ver": 0x10000}])
def test_encode_tp_res_ver_range(changes: dict) -> None:
    with pytest.raises(LocalProtocolError, match="tp, res or ver out of range"):
        encode_frame(Frame(**changes))


def test_encode_non_int_field_is_a_local_protocol_error() -> None:
    with pytest.raises(LocalProtocolError, match="cannot encode") as ei:
        encode_frame(Frame(qid=1.5))  # type: ignore[arg-type]
    assert isinstance(ei.value.__cause__, struct.error)


@pytest.mark.parametrize("tp", [0x60, 0xA0, 0xE0, 0x61])
def test_encode_refuses_gzip_with_codec_bits(tp: int) -> None:
    with pytest.raises(LocalProtocolError, match=f"tp=0x{tp:02x} sets both gzip and an extension codec"):
        encode_frame(Frame(tp=tp))


def test_encode_refuses_u32_overflowing_body() -> None:
    class HugeBody(bytes):
        def __len__(self) -> int:
            return 2**32

    with pytest.raises(LocalProtocolError, match="too large for the u32 length"):
        encode_frame(Frame(body=HugeBody()))


@pytest.mark.parametrize("frame", [Frame(headers={"trace-id": "a"}), Frame(tp=0x40), Frame(tp=0x80), Frame(tp=0xC1)])
def test_strict_encoder_refuses_extensions(frame: Frame) -> None:
    with pytest.raises(LocalProtocolError, match="^strict mode: frame needs a header block or codec bits"):
        encode_frame(frame, strict=True)
    encode_frame(frame)  # fine when not strict


def test_strict_encoder_allows_nexuskit_features() -> None:
    for f in (Frame(tp=TP_GZIP, body=b"x"), Frame(tp=TP_HEARTBEAT, fid=HEARTBEAT_FID), Frame(headers={})):
        assert encode_frame(f, strict=True) == encode_frame(f)


# --- decode errors --------------------------------------------------------------------------------------


def assert_sticky(dec: FrameDecoder, err: ProtocolError) -> None:
    """After an error the decoder raises the same error for every later feed."""
    assert dec.buffered == 0
    assert "failed" in repr(dec)
    for more in (b"", encode_frame(Frame())):
        with pytest.raises(type(err)) as again:
            dec.feed(more)
        assert again.value is err
        with pytest.raises(type(err)):
            dec.feed_raw(more)


GOOD = encode_frame(Frame(qid=1, body=b"hello"))


@pytest.mark.parametrize("lead", [b"", GOOD])
def test_wrong_tag_detected_with_six_bytes(lead: bytes) -> None:
    dec = FrameDecoder()
    assert dec.feed(lead) == ([Frame(qid=1, body=b"hello")] if lead else [])
    assert dec.feed(b"\x00\x00\x00\x14") == []  # a plausible length alone is not an error yet
    at = len(lead) + 4
    with pytest.raises(RemoteProtocolError) as ei:
        dec.feed(b"\x12\x34")
    assert str(ei.value) == f"bad tag 0x1234, expected 0x7a5a (at byte offset {at})"
    assert ei.value.offset == at
    assert_sticky(dec, ei.value)


def test_wrong_tag_in_whole_frame_in_one_feed() -> None:
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError, match=r"bad tag 0x5a7a, expected 0x7a5a \(at byte offset 4\)"):
        dec.feed(prefix(20, tag=0x5A7A))


@pytest.mark.parametrize("length", [0, 1, 19])
@pytest.mark.parametrize("lead", [b"", GOOD])
def test_length_below_header(length: int, lead: bytes) -> None:
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as ei:
        dec.feed(lead + struct.pack(">I", length))
    at = len(lead)
    assert str(ei.value) == f"frame length {length} is below the 20-byte header (at byte offset {at})"
    assert ei.value.offset == at
    assert type(ei.value) is RemoteProtocolError
    assert_sticky(dec, ei.value)


def test_length_below_header_in_whole_prefix() -> None:
    with pytest.raises(RemoteProtocolError, match=r"frame length 19 is below the 20-byte header \(at byte offset 0\)"):
        FrameDecoder().feed(prefix(19) + b"\x00" * 10)


@pytest.mark.parametrize("chunks", [[b"\x00\x00\x00\x41"], [b"\x00\x00", b"\x00\x41"]])
def test_frame_too_large_detected_on_the_length_prefix(chunks: list[bytes]) -> None:
    dec = FrameDecoder(max_frame_size=64)
    for c in chunks[:-1]:
        assert dec.feed(c) == []
    with pytest.raises(FrameTooLarge) as ei:
        dec.feed(chunks[-1])
    assert str(ei.value) == "frame length 65 exceeds max_frame_size 64 (at byte offset 0)"
    assert ei.value.offset == 0
    assert isinstance(ei.value, RemoteProtocolError)
    assert_sticky(dec, ei.value)


def test_frame_too_large_after_good_frames_default_limit() -> None:
    dec = FrameDecoder()
    with pytest.raises(FrameTooLarge) as ei:
        dec.feed(GOOD + GOOD + struct.pack(">I", DEFAULT_MAX_FRAME_SIZE + 1))
    assert ei.value.offset == 2 * len(GOOD)
    assert f"frame length {DEFAULT_MAX_FRAME_SIZE + 1} exceeds max_frame_size {DEFAULT_MAX_FRAME_SIZE}" in str(ei.value)


def test_frame_too_large_in_whole_prefix() -> None:
    with pytest.raises(FrameTooLarge, match=r"frame length 100 exceeds max_frame_size 64 \(at byte offset 0\)"):
        FrameDecoder(max_frame_size=64).feed(prefix(100))


@pytest.mark.parametrize("res", [2, 255])
def test_res_above_one(res: int) -> None:
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as ei:
        dec.feed(GOOD + prefix(20, res=res))
    at = len(GOOD)
    assert str(ei.value) == f"res={res} is neither request (0) nor response (1) (at byte offset {at})"
    assert ei.value.offset == at
    assert_sticky(dec, ei.value)


def test_header_block_longer_than_body() -> None:
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as ei:
        dec.feed(GOOD + prefix(25, dh=10) + b"\x01a\x00\x00x")
    at = len(GOOD)
    assert str(ei.value) == f"header block of 10 bytes is longer than the 5-byte body (at byte offset {at})"
    assert ei.value.offset == at
    assert_sticky(dec, ei.value)


@pytest.mark.parametrize(
    "block, message",
    [
        (b"\x00\x00\x00", "empty header key at byte 0"),
        (b"\x05ab", "header block truncated at byte 0 of 3"),
        (b"\x01a\x00\x05xy", "header value overruns the block at byte 4 of 6"),
        (b"\x01a\x00\x02\xff\xfe", "header at byte 4 is not valid text: invalid start byte"),
        (b"\x01\xc3\x00\x00", "header at byte 4 is not valid text: ordinal not in range(128)"),
        (b"\x01a\x00\x00\x00", "empty header key at byte 4"),
    ],
)
def test_malformed_header_block(block: bytes, message: str) -> None:
    dec = FrameDecoder()
    frame = prefix(HEADER_SIZE + len(block) + 2, dh=len(block)) + block + b"zz"
    with pytest.raises(RemoteProtocolError) as ei:
        dec.feed(GOOD + frame)
    at = len(GOOD)
    assert str(ei.value) == f"{message} (in frame at byte offset {at})"
    assert ei.value.offset == at
    assert isinstance(ei.value.__cause__, RemoteProtocolError)
    assert_sticky(dec, ei.value)


@pytest.mark.parametrize("tp", [0x60, 0xA0, 0xE0])
def test_decoder_refuses_gzip_with_codec_bits(tp: int) -> None:
    dec = FrameDecoder()
    with pytest.raises(RemoteProtocolError) as ei:
        dec.feed(GOOD + prefix(20, tp=tp))
    at = len(GOOD)
    assert str(ei.value) == f"tp=0x{tp:02x} sets both gzip and an extension codec (at byte offset {at})"
    assert ei.value.offset == at
    assert_sticky(dec, ei.value)


def test_strict_decoder_ignores_dh_and_codec_bits() -> None:
    block = encode_header_block({"trace-id": "t"})
    data = prefix(HEADER_SIZE + len(block) + 2, tp=0x60, dh=len(block)) + block + b"hi"
    [f] = FrameDecoder(strict=True).feed(data)
    assert f.body == block + b"hi"  # the header block stays part of the body, as NexusKit sees it
    assert dict(f.headers) == {} and f.tp == 0x60
    # An oversized Dh or a garbage block is not an error for a strict decoder either.
    [g] = FrameDecoder(strict=True).feed(prefix(22, dh=999) + b"\x00\x00")
    assert g.body == b"\x00\x00"
    with pytest.raises(RemoteProtocolError):
        FrameDecoder().feed(data)


def test_repr_reports_state() -> None:
    dec = FrameDecoder()
    dec.feed(GOOD + GOOD[:3])
    assert repr(dec) == f"<FrameDecoder ok offset={len(GOOD)} buffered=3 frames=1>"


# --- garbage --------------------------------------------------------------------------------------------


plausible = st.builds(
    lambda length, rest: struct.pack(">IH", length, TAG) + rest,
    st.integers(min_value=0, max_value=300),
    st.binary(max_size=200),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(frames, max_size=2),
    st.one_of(st.binary(max_size=300), plausible),
    st.lists(st.integers(min_value=0), max_size=10),
    st.booleans(),
    st.booleans(),
)
def test_garbage_never_hangs_or_crashes(
    good: list[Frame], garbage: bytes, cuts: list[int], strict: bool, use_raw: bool
) -> None:
    stream = b"".join(encode_frame(f, strict=False) for f in good) + garbage
    limit = 128
    dec = FrameDecoder(max_frame_size=limit, strict=strict)
    err = None
    fed = 0
    for chunk in split(stream, cuts):
        fed += len(chunk)
        try:
            dec.feed_raw(chunk) if use_raw else dec.feed(chunk)
        except ProtocolError as exc:
            assert isinstance(exc, RemoteProtocolError)  # FrameTooLarge is one too
            assert exc.offset is not None and 0 <= exc.offset <= len(stream)
            if err is not None:
                assert exc is err
            err = exc
        else:
            assert err is None
            assert dec.offset + dec.buffered == fed
            # Bounded: never more than one incomplete frame (with its length prefix) is buffered.
            assert dec.buffered < 4 + limit


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=16, max_size=200), st.integers(min_value=0, max_value=0xFFFF))
def test_garbage_after_valid_tag_only_raises_protocol_errors(rest: bytes, dh: int) -> None:
    """Whole frames with a good tag but random fields and Dh either decode or fail cleanly at offset 0."""
    data = struct.pack(">IH", HEADER_SIZE + len(rest) - 16, TAG) + rest[:16] + struct.pack(">H", dh) + rest[16:]
    assert len(data) == 4 + HEADER_SIZE + len(rest) - 16
    dec = FrameDecoder()
    try:
        out = dec.feed(data)
    except RemoteProtocolError as exc:
        assert exc.offset == 0
    else:
        assert len(out) == 1 and dec.buffered == 0
        assert out[0].body == rest[16 + (dh if dh <= len(rest) - 16 else 0) :]


def test_docs_hex_dumps_match_the_encoder() -> None:
    """docs/protocol.md shows real bytes: the dumps there are what the encoder produces."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text()
    dumps = []
    for block in re.findall(r"```\n(.*?)```", text, re.S):
        rows = re.findall(r"^[0-9a-f]{4}  ((?:[0-9a-f]{2} ?)+)", block, re.M)
        if rows:
            dumps.append(bytes.fromhex("".join(rows)))
    request = encode_frame(Frame(qid=7, fid=3, body=b"ping", headers={"trace-id": "ab12"}))
    response = encode_frame(Frame(qid=7, fid=3, code=CODE_OK, res=1, body=b"pong"))
    assert dumps == [request, response]
    assert f"ping: {heartbeat_frame().hex(' ')}" in text
    assert f"pong: {heartbeat_frame(response=True).hex(' ')}" in text
