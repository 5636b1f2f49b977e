"""Body codecs and the Tp bits that name them (sans-IO, layer L1).

NexusKit marks a gzip body with Tp bit 0x20. nexus_green adds three codecs in
Tp bits 0xC0, which NexusKit leaves unused: 0x40 lz4 (frame format), 0x80 zstd,
0xC0 brotli. Decompression is bounded by ``max_size`` so a small malicious
body cannot expand into gigabytes (a :class:`CompressionError`).

This module only transforms bytes; deciding *where* (on the hub or in the
threadpool) and *which* codec to use is the middleware's job.

Example::

    >>> c = get_codec("zstd")
    >>> data = b"nexus " * 100
    >>> blob = c.compress(data, LEVELS["balanced"])
    >>> decompress_body(c.tp_bits, blob) == data
    True
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import brotli
import lz4.frame
import zstandard

from ..errors import CompressionError, ConfigurationError
from .frames import DEFAULT_MAX_FRAME_SIZE, TP_CODEC_MASK, TP_GZIP

__all__ = ["Codec", "CODECS", "LEVELS", "ContextPool", "get_codec", "codec_for_bits", "decompress_body"]

T = TypeVar("T")

# Named levels mapped to each codec's own scale: (gzip, lz4, zstd, brotli).
LEVELS: dict[str, str] = {"fastest": "fastest", "balanced": "balanced", "best": "best"}
_LEVEL_TABLE: dict[str, dict[str, int]] = {
    "gzip": {"fastest": 1, "balanced": 6, "best": 9},
    "lz4": {"fastest": 0, "balanced": 4, "best": 12},
    "zstd": {"fastest": 1, "balanced": 3, "best": 19},
    "brotli": {"fastest": 1, "balanced": 5, "best": 11},
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Codec:
    """A compression algorithm and the Tp bits that announce it on the wire."""

    name: str
    tp_bits: int
    _compress: Callable[[bytes, int], bytes]
    _decompress: Callable[[bytes, int], bytes]

    def level(self, level: str) -> int:
        """This codec's numeric level for a named level (fastest, balanced, best)."""
        try:
            return _LEVEL_TABLE[self.name][level]
        except KeyError:
            raise ConfigurationError(f"unknown compression level {level!r}; use fastest, balanced or best") from None

    def compress(self, data: bytes, level: str = "balanced") -> bytes:
        """Compress ``data`` at a named level."""
        return self._compress(bytes(data), self.level(level))

    def decompress(self, data: bytes, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
        """Decompress, refusing output above ``max_size`` bytes."""
        try:
            out = self._decompress(bytes(data), max_size)
        except CompressionError:
            raise
        except Exception as exc:  # each library raises its own error type
            raise CompressionError(f"corrupt {self.name} body ({len(data)} bytes): {exc}") from exc
        return out


def _too_big(name: str, max_size: int) -> CompressionError:
    return CompressionError(f"{name} body expands beyond max_size {max_size} bytes")


def _gzip_c(data: bytes, level: int) -> bytes:
    co = zlib.compressobj(level, zlib.DEFLATED, 31)
    return co.compress(data) + co.flush()


def _gzip_d(data: bytes, max_size: int) -> bytes:
    parts = []
    total = 0
    rest = data
    while True:  # one pass per gzip member (RFC 1952 allows several, concatenated)
        d = zlib.decompressobj(47)  # gzip or zlib header, auto-detected
        out = d.decompress(rest, max_size + 1 - total)
        total += len(out)
        if total > max_size or d.unconsumed_tail:
            raise _too_big("gzip", max_size)
        if not d.eof:
            raise CompressionError(f"truncated gzip body ({len(data)} bytes)")
        parts.append(out)
        rest = d.unused_data
        if not rest:
            return b"".join(parts)


def _lz4_c(data: bytes, level: int) -> bytes:
    # The content checksum (4 bytes, xxHash32) lets the receiver tell a
    # corrupted body from a valid one; without it lz4 can decode damage into
    # wrong bytes. Any lz4 frame decoder accepts it.
    return lz4.frame.compress(data, compression_level=level, content_checksum=True)


def _lz4_d(data: bytes, max_size: int) -> bytes:
    d = lz4.frame.LZ4FrameDecompressor()
    out = d.decompress(data, max_length=max_size + 1)
    if len(out) > max_size:
        raise _too_big("lz4", max_size)
    if not d.eof:
        raise CompressionError(f"truncated lz4 body ({len(data)} bytes)")
    return out


class ContextPool(Generic[T]):
    """Reusable codec contexts (zstd compressors, decompressors), each lent to one caller at a time.

    Building a ``zstandard.ZstdCompressor`` or ``ZstdDecompressor`` costs about
    20 us, fifteen times compressing a 2 KB body. The objects are not
    thread-safe, and gevent's threadpool (real threads) calls the codecs for
    large bodies while the hub calls them for small ones, so a context is
    never shared: :meth:`take` pops one from the free list (or builds one) and
    :meth:`give` puts it back. ``list.pop`` and ``list.append`` are atomic in
    CPython, so no lock is needed, and nothing here can switch greenlets. Not
    ``threading.local``: after ``monkey.patch_all()`` that becomes
    greenlet-local, one context (up to megabytes) per greenlet.

    At most ``max_free`` contexts are kept. A context is only given back after
    work on at most ``max_input`` bytes: zstd sizes its tables to the input
    and keeps them (level 19 on 4 MB holds 54 MB), and for a large body
    building a fresh context costs nothing in comparison.

    Example::

        >>> pool = ContextPool(list, max_free=1)
        >>> a = pool.take()
        >>> pool.give(a, size=10); pool.take() is a
        True
        >>> pool.give([], size=10); pool.give([], size=10); len(pool)   # max_free
        1
        >>> pool.give([], size=10**9); len(pool)                      # used on a big input: dropped
        1
    """

    __slots__ = ("_factory", "_free", "max_free", "max_input")

    def __init__(self, factory: Callable[[], T], *, max_free: int = 4, max_input: int = 128 * 1024) -> None:
        self._factory = factory
        self._free: list[T] = []
        self.max_free = max_free
        self.max_input = max_input

    def take(self) -> T:
        """A context for the caller's exclusive use: a free one, or a new one."""
        try:
            return self._free.pop()
        except IndexError:
            return self._factory()

    def give(self, ctx: T, *, size: int) -> None:
        """Return a context after a *successful* call on ``size`` bytes (or let it go)."""
        if size <= self.max_input and len(self._free) < self.max_free:
            self._free.append(ctx)  # two threads may both pass the check: max_free is a soft cap

    def __len__(self) -> int:
        return len(self._free)


_ZSTD_COMPRESSORS: dict[int, ContextPool[zstandard.ZstdCompressor]] = {}
_ZSTD_DECOMPRESSORS: ContextPool[zstandard.ZstdDecompressor] = ContextPool(zstandard.ZstdDecompressor, max_free=8)


def _zstd_c(data: bytes, level: int) -> bytes:
    pool = _ZSTD_COMPRESSORS.get(level)
    if pool is None:
        pool = _ZSTD_COMPRESSORS.setdefault(
            level, ContextPool(lambda: zstandard.ZstdCompressor(level=level, write_checksum=True))
        )
    comp = pool.take()
    out = comp.compress(data)  # one-shot: the context is reset at the start of each call
    pool.give(comp, size=len(data))
    return out


def _zstd_d(data: bytes, max_size: int) -> bytes:
    declared = zstandard.frame_content_size(data)
    if declared > max_size:
        raise _too_big("zstd", max_size)
    try:
        # Output is capped at max_size (an undeclared-size frame decodes into a buffer of that size).
        dctx = _ZSTD_DECOMPRESSORS.take()
        out = dctx.decompress(data, max_output_size=max(1, max_size))
        _ZSTD_DECOMPRESSORS.give(dctx, size=len(out))  # after an error the context is dropped
    except zstandard.ZstdError as exc:
        # Truncated, or an undeclared-size bomb: tell which by streaming, never holding the output.
        total = 0
        for chunk in zstandard.ZstdDecompressor().read_to_iter(data):
            total += len(chunk)
            if total > max_size:
                raise _too_big("zstd", max_size) from None
        raise CompressionError(f"truncated zstd body ({len(data)} bytes)") from exc
    if len(out) > max_size:
        raise _too_big("zstd", max_size)
    return out


def _brotli_c(data: bytes, level: int) -> bytes:
    return bytes(brotli.compress(data, quality=level))


def _brotli_d(data: bytes, max_size: int) -> bytes:
    d = brotli.Decompressor()
    # The output buffer stops growing at the limit, so a bomb never expands in memory.
    out = bytes(d.process(data, output_buffer_limit=max_size + 1))
    if len(out) > max_size:
        raise _too_big("brotli", max_size)
    if not d.is_finished():
        raise CompressionError(f"truncated brotli body ({len(data)} bytes)")
    return out


CODECS: dict[str, Codec] = {
    "gzip": Codec(name="gzip", tp_bits=TP_GZIP, _compress=_gzip_c, _decompress=_gzip_d),
    "lz4": Codec(name="lz4", tp_bits=0x40, _compress=_lz4_c, _decompress=_lz4_d),
    "zstd": Codec(name="zstd", tp_bits=0x80, _compress=_zstd_c, _decompress=_zstd_d),
    "brotli": Codec(name="brotli", tp_bits=0xC0, _compress=_brotli_c, _decompress=_brotli_d),
}
_BY_BITS: dict[int, Codec] = {c.tp_bits: c for c in CODECS.values()}


def get_codec(name: str) -> Codec:
    """The codec called ``name`` (gzip, lz4, zstd, brotli)."""
    try:
        return CODECS[name]
    except KeyError:
        raise ConfigurationError(f"unknown compression algorithm {name!r}; known: {', '.join(CODECS)}") from None


def codec_for_bits(tp: int) -> Codec | None:
    """The codec a frame's Tp names, or None for a plain body."""
    bits = tp & (TP_GZIP | TP_CODEC_MASK)
    if not bits:
        return None
    codec = _BY_BITS.get(bits)
    if codec is None:
        raise CompressionError(f"unknown compression bits 0x{bits:02x} in tp=0x{tp:02x}")
    return codec


def decompress_body(tp: int, body: bytes, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
    """Undo whatever codec ``tp`` names (identity for a plain body)."""
    codec = codec_for_bits(tp)
    return body if codec is None else codec.decompress(body, max_size)
