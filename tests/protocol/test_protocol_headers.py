"""The extension header block: round trips, size limits and malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_green.errors import LocalProtocolError, RemoteProtocolError
from nexus_green.protocol.headers import MAX_HEADER_BLOCK, decode_header_block, encode_header_block

keys = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), min_size=1, max_size=255)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(keys, st.text(max_size=64), max_size=8))
def test_round_trip(headers: dict[str, str]) -> None:
    block = encode_header_block(headers)
    assert decode_header_block(block) == headers
    assert len(block) == sum(1 + len(k) + 2 + len(v.encode()) for k, v in headers.items())


def test_exact_layout() -> None:
    assert encode_header_block({"idem": "k-1"}).hex() == "046964656d00036b2d31"
    assert encode_header_block({"a": "é"}) == b"\x01a\x00\x02\xc3\xa9"
    assert encode_header_block({}) == b"" and decode_header_block(b"") == {}


def test_limits_at_the_edges() -> None:
    k255 = "k" * 255
    assert decode_header_block(encode_header_block({k255: ""})) == {k255: ""}
    fits = {"k": "v" * (MAX_HEADER_BLOCK - 4)}  # 1 + 1 + 2 + 65531 = 65535
    assert len(encode_header_block(fits)) == MAX_HEADER_BLOCK == 65535


@pytest.mark.parametrize(
    "headers, message",
    [
        ({1: "v"}, "header 1: keys and values must be str"),
        ({"k": b"v"}, "header 'k': keys and values must be str"),
        ({"clé": "v"}, "header key 'clé' is not ASCII"),
        ({"": "v"}, "header key '' must be 1 to 255 bytes long"),
        ({"k" * 256: "v"}, "must be 1 to 255 bytes long"),
        ({"k": "v" * 65536}, "header 'k' value is 65536 bytes, above 65535"),
        ({"k": "v" * (MAX_HEADER_BLOCK - 3)}, "header block is 65536 bytes, above 65535"),
        ({"a": "v" * 40000, "b": "v" * 40000}, "header block is 80008 bytes, above 65535"),
    ],
)
def test_encode_errors(headers: dict, message: str) -> None:
    with pytest.raises(LocalProtocolError) as ei:
        encode_header_block(headers)
    assert message in str(ei.value)


def test_non_ascii_key_error_is_chained() -> None:
    with pytest.raises(LocalProtocolError) as ei:
        encode_header_block({"ключ": "v"})
    assert isinstance(ei.value.__cause__, UnicodeEncodeError)


@pytest.mark.parametrize(
    "block, message",
    [
        (b"\x00", "empty header key at byte 0"),
        (b"\x02ab\x00", "header block truncated at byte 0 of 4"),
        (b"\x01a\x00\x00\x03ab", "header block truncated at byte 4 of 7"),
        (b"\x01a\x00\x03xy", "header value overruns the block at byte 4 of 6"),
        (b"\x01a\x00\x01\x80", "header at byte 4 is not valid text: invalid start byte"),
        (b"\x01\xff\x00\x00", "header at byte 4 is not valid text: ordinal not in range(128)"),
    ],
)
def test_decode_errors(block: bytes, message: str) -> None:
    with pytest.raises(RemoteProtocolError) as ei:
        decode_header_block(block)
    assert str(ei.value) == message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_garbage_decodes_or_raises_remote_protocol_error(block: bytes) -> None:
    try:
        out = decode_header_block(block)
    except RemoteProtocolError:
        return
    assert all(isinstance(k, str) and 1 <= len(k) <= 255 and isinstance(v, str) for k, v in out.items())
