"""The extension header block: small key/value metadata carried in the body.

Used for trace context (``trace-id``, ``span-id``, ``parent-span-id``) and
idempotency keys. Layout, repeated until the block ends::

    [klen u8][key: klen bytes ASCII][vlen u16][value: vlen bytes UTF-8]

The whole block is at most 65535 bytes, because its length travels in the
frame's 16-bit Dh field.

Example::

    >>> block = encode_header_block({"idem": "k-1"})
    >>> block.hex()
    '046964656d00036b2d31'
    >>> decode_header_block(block)
    {'idem': 'k-1'}
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from ..errors import LocalProtocolError, RemoteProtocolError

__all__ = ["encode_header_block", "decode_header_block", "MAX_HEADER_BLOCK"]

MAX_HEADER_BLOCK = 0xFFFF
_U16 = struct.Struct(">H")


def encode_header_block(headers: Mapping[str, str]) -> bytes:
    """Encode headers; keys are 1-255 ASCII bytes, the block at most 65535 bytes.

    Example::

        >>> encode_header_block({})
        b''
    """
    parts = []
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise LocalProtocolError(f"header {key!r}: keys and values must be str")
        try:
            k = key.encode("ascii")
        except UnicodeEncodeError as exc:
            raise LocalProtocolError(f"header key {key!r} is not ASCII") from exc
        if not 1 <= len(k) <= 255:
            raise LocalProtocolError(f"header key {key!r} must be 1 to 255 bytes long")
        v = value.encode("utf-8")
        if len(v) > 0xFFFF:
            raise LocalProtocolError(f"header {key!r} value is {len(v)} bytes, above 65535")
        parts.append(bytes((len(k),)) + k + _U16.pack(len(v)) + v)
    block = b"".join(parts)
    if len(block) > MAX_HEADER_BLOCK:
        raise LocalProtocolError(f"header block is {len(block)} bytes, above {MAX_HEADER_BLOCK}")
    return block


def decode_header_block(block: bytes) -> dict[str, str]:
    """Decode a header block; malformed input raises :class:`RemoteProtocolError`.

    Example::

        >>> decode_header_block(b"\\x02ab\\x00")
        Traceback (most recent call last):
        ...
        nexus_green.errors.RemoteProtocolError: header block truncated at byte 0 of 4
    """
    out: dict[str, str] = {}
    pos = 0
    n = len(block)
    while pos < n:
        klen = block[pos]
        if klen == 0 or pos + 1 + klen + 2 > n:
            raise RemoteProtocolError(
                f"header block truncated at byte {pos} of {n}" if klen else f"empty header key at byte {pos}"
            )
        key_bytes = block[pos + 1 : pos + 1 + klen]
        pos += 1 + klen
        (vlen,) = _U16.unpack_from(block, pos)
        pos += 2
        if pos + vlen > n:
            raise RemoteProtocolError(f"header value overruns the block at byte {pos} of {n}")
        try:
            out[key_bytes.decode("ascii")] = block[pos : pos + vlen].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(f"header at byte {pos} is not valid text: {exc.reason}") from exc
        pos += vlen
    return out
