"""Body codecs and the Tp bits that name them (sans-IO, layer L1).

NexusKit marks a gzip body with Tp bit 0x20. nexus_green adds three codecs in
Tp bits 0xC0, which NexusKit leaves unused: 0x40 lz4 (frame format), 0x80 zstd,
0xC0 brotli. Decompression is bounded by ``max_size`` so a small malicious
body cannot expand into gigabytes (a :class:`CompressionError`).

Decoding is a :class:`BodyDecoder`: an incremental object that decodes one body
a bounded chunk at a time (:meth:`BodyDecoder.step`: at most about
``max_output`` bytes out and ``max_input`` bytes in per call) and is linear in
its input for every codec -- a gzip body of 400 000 empty members costs what
its 8 MB cost, not 45 s (the old loop copied the rest of the input once per
member). Whoever drives the steps decides *where* they run and *when* to stop:
the Client runs the first bounded step on the hub and the rest in gevent's
threadpool, checking the call's budget between steps
(:mod:`nexus_green.middleware.offload`).

This module only transforms bytes; deciding *where* (on the hub or in the
threadpool) and *which* codec to use is the middleware's job.

Example::

    >>> c = get_codec("zstd")
    >>> data = b"nexus " * 100
    >>> blob = c.compress(data, LEVELS["balanced"])
    >>> decompress_body(c.tp_bits, blob) == data
    True
    >>> d = body_decoder(c.tp_bits, blob, max_size=1000)   # what the Client drives, step by step
    >>> d.step(), d.result() == data
    (True, True)
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, Optional, TypeVar, Union

import brotli
import lz4.frame
import zstandard

from ..errors import CompressionError, ConfigurationError
from .frames import DEFAULT_MAX_FRAME_SIZE, TP_CODEC_MASK, TP_GZIP

__all__ = [
    "Codec",
    "CODECS",
    "LEVELS",
    "ContextPool",
    "get_codec",
    "codec_for_bits",
    "decompress_body",
    "body_decoder",
    "try_decompress",
    "BodyDecoder",
    "PlainDecoder",
    "GzipDecoder",
    "Lz4Decoder",
    "ZstdDecoder",
    "BrotliDecoder",
    "DECODE_CHUNK",
]

T = TypeVar("T")
Buffer = Union[bytes, bytearray, memoryview]

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
    """A compression algorithm and the Tp bits that announce it on the wire.

    Example::

        >>> gz = get_codec("gzip")
        >>> gz.tp_bits, gz.decompress(gz.compress(b"abc")), gz.decoder(gz.compress(b"abc"), 10).run()
        (32, b'abc', b'abc')
    """

    name: str
    tp_bits: int
    _compress: Callable[[bytes, int], bytes]
    _decoder: Callable[[Buffer, int], BodyDecoder]
    _quick: Callable[[Buffer, int], Optional[bytes]]

    def level(self, level: str) -> int:
        """This codec's numeric level for a named level (fastest, balanced, best)."""
        try:
            return _LEVEL_TABLE[self.name][level]
        except KeyError:
            raise ConfigurationError(f"unknown compression level {level!r}; use fastest, balanced or best") from None

    def compress(self, data: bytes, level: str = "balanced") -> bytes:
        """Compress ``data`` at a named level."""
        return self._compress(bytes(data), self.level(level))

    def decoder(self, data: Buffer, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> BodyDecoder:
        """An incremental decoder of ``data`` (see :class:`BodyDecoder`), refusing output above ``max_size``.

        ``data`` is not copied: keep it unchanged until the decoder is done.

        Example::

            >>> lz = get_codec("lz4")
            >>> d = lz.decoder(lz.compress(b"x" * 50_000))
            >>> d.step(max_output=20_000), d.produced, len(d.run())
            (False, 20000, 50000)
        """
        return self._decoder(data, max_size)

    def decompress(self, data: Buffer, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> bytes:
        """Decompress in one go (on the caller's thread), refusing output above ``max_size`` bytes.

        Example::

            >>> br = get_codec("brotli")
            >>> br.decompress(br.compress(b"abc" * 10)), len(br.decompress(br.compress(b"z" * 5000), 5000))
            (b'abcabcabcabcabcabcabcabcabcabc', 5000)
        """
        out = _quick(self._quick, data, max_size, max_size)
        return self._decoder(data, max_size).run() if out is None else out


def _gzip_c(data: bytes, level: int) -> bytes:
    co = zlib.compressobj(level, zlib.DEFLATED, 31)
    return co.compress(data) + co.flush()


def _gzip_q(data: Buffer, cap: int) -> Optional[bytes]:
    d = zlib.decompressobj(47)
    out = d.decompress(data, cap)
    return out if d.eof and not d.unused_data else None  # several members: the decoder's job


def _lz4_c(data: bytes, level: int) -> bytes:
    # The content checksum (4 bytes, xxHash32) lets the receiver tell a
    # corrupted body from a valid one; without it lz4 can decode damage into
    # wrong bytes. Any lz4 frame decoder accepts it.
    return lz4.frame.compress(data, compression_level=level, content_checksum=True)


def _lz4_q(data: Buffer, cap: int) -> Optional[bytes]:
    d = lz4.frame.LZ4FrameDecompressor()
    out = d.decompress(data, max_length=cap)
    return out if d.eof else None


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


def _zstd_q(
    data: Buffer, cap: int, contexts: Optional[ContextPool[zstandard.ZstdDecompressor]] = None
) -> Optional[bytes]:
    if zstandard.frame_content_size(data) > cap:
        return None
    pool = _ZSTD_DECOMPRESSORS if contexts is None else contexts
    dctx = pool.take()
    out = dctx.decompress(data, max_output_size=cap)  # an undeclared size decodes into a buffer of cap bytes
    pool.give(dctx, size=len(out))  # after an error the context is dropped
    return out


def _brotli_c(data: bytes, level: int) -> bytes:
    return bytes(brotli.compress(data, quality=level))


def _brotli_one_block(data: Buffer, cap: int) -> bool:
    """Whether a brotli stream is a single last meta-block of at most ``cap`` bytes (or empty).

    brotli's output limit does not bound its work: a call fills the decoder's
    ring buffer, up to the window (4 MiB by default, 16 MiB at most), before
    it looks at the limit -- 7 to 11 ms for a 1.6 KB bomb, whatever the limit.
    The ring buffer starts at the first meta-block's length, and a meta-block
    marked last ends the stream, so a stream that is one last meta-block of
    ``cap`` bytes costs about ``cap`` bytes of work. That is what brotli
    quality 2 and up writes for bodies up to megabytes; quality 0 and 1 and
    incompressible data start with a meta-block that is not the last. The
    headers are the first few bits (RFC 7932, 9.1 and 9.2).
    """
    bits = int.from_bytes(data[:8], "little")
    if not bits & 1:
        pos = 1  # WBITS 16
    elif (bits >> 1) & 7:
        pos = 4  # WBITS 18..24
    elif (bits >> 4) & 7 == 1:
        return False  # large-window brotli: not for us
    else:
        pos = 7  # WBITS 10..15 or 17
    if not (bits >> pos) & 1:
        return False  # ISLAST 0: more meta-blocks follow
    if (bits >> (pos + 1)) & 1:
        return True  # ISLASTEMPTY: an empty stream
    nibbles = (bits >> (pos + 2)) & 3
    if nibbles == 3:
        return False  # a metadata block
    return ((bits >> (pos + 4)) & ((1 << (4 * nibbles + 16)) - 1)) + 1 <= cap  # MLEN


def _brotli_q(data: Buffer, cap: int) -> Optional[bytes]:
    if not _brotli_one_block(data, cap):
        return None
    d = brotli.Decompressor()
    out = d.process(data, output_buffer_limit=cap)
    return out if d.is_finished() else None


def _quick(
    fn: Callable[[Buffer, int], Optional[bytes]], data: Buffer, max_size: int, max_output: int
) -> Optional[bytes]:
    """One library call, at most about ``max_output`` bytes out: the body, or None when it takes more.

    None also for anything unusual (several gzip members, trailing bytes, a
    corrupt or truncated body): the codec's :class:`BodyDecoder` tells what.
    """
    cap = max_output if max_output < max_size else max_size
    try:
        out = fn(data, cap if cap > 0 else 1)
    except Exception:  # each library raises its own error type; the decoder will name it
        return None
    return out if out is not None and len(out) <= max_size else None


# --- incremental decoding --------------------------------------------------------------------------------

DECODE_CHUNK = 1024 * 1024
"""Output bytes (and input bytes) one :meth:`BodyDecoder.step` decodes by default: a few ms for any codec."""

_FEED = 64 * 1024  # input handed to a library per call: what it copies into unconsumed_tail/unused_data is at most this
_MEMBER_FEED = 128  # first input slice of each later gzip member: its unused_data copy stays small
_MEMBER_COST = 1024  # a gzip member costs about what decoding a KiB does (a decompressobj, a call): counted as input
_ZSTD_WRITE = 128 * 1024  # zstd output per iteration: one block


class BodyDecoder:
    """Decodes one compressed body a bounded chunk at a time (sans-IO; one subclass per codec).

    :meth:`step` does at most about ``max_output`` bytes of output and
    ``max_input`` bytes of input, plus one library call's worth (64 KiB in;
    out, 128 KiB for a zstd stream and up to the window, 4-16 MiB, for a
    brotli bomb; a zstd frame that declares its size decodes in one call),
    and returns True once the body is decoded; :meth:`result` is
    the body then, and :meth:`run` does every step at once. Work is linear in
    the input for every codec, and output beyond ``max_size`` bytes is a
    :class:`CompressionError` that names the bound, raised as soon as the
    output passes it (a bomb never expands further than one call's worth).
    A corrupt or truncated body is a :class:`CompressionError` naming the codec.

    Between steps the decoder holds only its position and the output so far,
    so whoever drives it may stop after any step (the budget ran out, the
    caller went away) and drop it, or hand it to another thread (never two
    at once). The input is not copied: keep it unchanged until the decoder
    is done.

    Counters: ``produced`` (output bytes so far), ``consumed`` (input bytes
    handed to the library so far; zstd tells it only at the end), ``steps``.

    Example::

        >>> import gzip
        >>> d = body_decoder(0x20, gzip.compress(b"ab" * 1000) * 3, max_size=6000)
        >>> while not d.step(max_output=2000):
        ...     pass
        >>> d.steps, d.produced, d.result() == b"ab" * 3000
        (3, 6000, True)
        >>> body_decoder(0x20, gzip.compress(b"ab" * 1000), max_size=1999).run()
        Traceback (most recent call last):
        ...
        nexus_green.errors.CompressionError: gzip body expands beyond max_size 1999 bytes
    """

    __slots__ = ("name", "max_size", "size", "produced", "consumed", "steps", "done", "_view", "_parts", "_result")

    def __init__(self, name: str, data: Buffer, max_size: int) -> None:
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")
        self.name = name
        self.max_size = max_size
        self.size = len(view)
        self.produced = 0
        self.consumed = 0
        self.steps = 0
        self.done = False
        self._view = view
        self._parts: list[bytes] = []
        self._result = b""

    def step(self, max_output: int = DECODE_CHUNK, max_input: int = DECODE_CHUNK) -> bool:
        """Decode about ``max_output`` more bytes (reading about ``max_input`` more); True once done.

        Example::

            >>> d = get_codec("brotli").decoder(get_codec("brotli").compress(b"x" * 300_000))
            >>> d.step(max_output=100_000), 100_000 <= d.produced < 300_000   # about 100 KB
            (False, True)
            >>> d.run() == b"x" * 300_000
            True
        """
        if self.done:
            return True
        if max_output < 1 or max_input < 1:
            raise ValueError(f"a step needs max_output and max_input of at least 1, got {max_output}, {max_input}")
        try:
            self._step(max_output, max_input)
        except (CompressionError, NotImplementedError):
            raise
        except Exception as exc:  # each library raises its own error type
            raise CompressionError(f"corrupt {self.name} body ({self.size} bytes){self._about()}: {exc}") from exc
        self.steps += 1
        return self.done

    def run(self) -> bytes:
        """Every remaining step at once, on the caller's thread; the body.

        Example::

            >>> body_decoder(0x40, get_codec("lz4").compress(b"hello")).run()
            b'hello'
        """
        while not self.step():
            pass
        return self._result

    def result(self) -> bytes:
        """The decoded body, once :meth:`step` returned True (a ``ValueError`` before).

        Example::

            >>> d = body_decoder(0, b"plain")   # no codec bits: done from the start
            >>> d.done, d.result()
            (True, b'plain')
        """
        if not self.done:
            raise ValueError(f"{self!r} is not done: call step() until it returns True")
        return self._result

    def _step(self, max_output: int, max_input: int) -> None:
        raise NotImplementedError

    def _about(self) -> str:
        return ""

    def _finish(self, out: Optional[bytes] = None) -> None:
        self._result = b"".join(self._parts) if out is None else out
        self._parts = []
        self._view = _EMPTY_VIEW  # a bytearray under a live view cannot be resized
        self.done = True

    def _too_big(self) -> CompressionError:
        return CompressionError(f"{self.name} body expands beyond max_size {self.max_size} bytes")

    def _truncated(self) -> CompressionError:
        return CompressionError(f"truncated {self.name} body ({self.size} bytes)")

    def __repr__(self) -> str:
        state = "done" if self.done else f"step {self.steps}"
        return f"<{type(self).__name__} {self.size} bytes in, {self.produced} out of at most {self.max_size}, {state}>"


_EMPTY_VIEW = memoryview(b"")


class PlainDecoder(BodyDecoder):
    """The "decoder" of a body without codec bits: done from the start, the body itself.

    Example::

        >>> PlainDecoder(b"as is").result()
        b'as is'
    """

    __slots__ = ()

    def __init__(self, data: Buffer, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__("plain", b"", max_size)
        self.size = self.produced = self.consumed = len(data)
        self._finish(data if isinstance(data, bytes) else bytes(data))


class GzipDecoder(BodyDecoder):
    """gzip (RFC 1952, any number of members) or zlib, auto-detected.

    One ``zlib.decompressobj`` per member, fed slices of a memoryview: the
    rest of the input is never re-sliced or copied per member. A member's
    first slice is small (128 bytes) and doubles while the member needs more,
    so the ``unused_data`` zlib copies at a member's end is at most 128 bytes
    or twice what the member consumed: 400 000 empty members (8 MB) cost
    about 0.5 s in all, and each member counts as 1 KiB of ``max_input``.

    Example::

        >>> import gzip
        >>> d = GzipDecoder(gzip.compress(b"") * 10_000)      # 200 KB of empty members
        >>> d.step(max_input=64 * 1024), d.consumed < 200_000   # about 64 members for 64 KiB of work
        (False, True)
        >>> d.run(), d.consumed
        (b'', 200000)
    """

    __slots__ = ("_d", "_feed", "_members")

    def __init__(self, data: Buffer, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__("gzip", data, max_size)
        self._d: Any = None
        self._feed = _FEED  # the first member (usually the only one) gets large slices at once
        self._members = 0

    def _step(self, max_output: int, max_input: int) -> None:
        view, size, parts = self._view, self.size, self._parts
        limit = self.max_size + 1
        out_left, in_left = max_output, max_input
        d = self._d
        while True:
            if d is None:
                if self.consumed >= size:  # only an empty body gets here: a member that ends the body finishes it
                    raise self._truncated()
                d = self._d = zlib.decompressobj(47)  # gzip or zlib header, auto-detected
                if self._members:
                    self._feed = _MEMBER_FEED
                    in_left -= _MEMBER_COST
            off = self.consumed
            feed = view[off : off + self._feed]
            cap = min(out_left, limit - self.produced)  # >= 1: 0 would mean "no limit" to zlib
            out = d.decompress(feed, cap)
            # At the member's end the rest of the slice is in unused_data (unconsumed_tail may be stale then).
            used = len(feed) - len(d.unused_data if d.eof else d.unconsumed_tail)
            self.consumed = off + used
            in_left -= used
            if out:
                self.produced += len(out)
                if self.produced > self.max_size:
                    raise self._too_big()
                out_left -= len(out)
                parts.append(out)
            if d.eof:
                d = self._d = None
                self._members += 1
                if self.consumed >= size:
                    self._finish()
                    return
            elif len(out) < cap:  # zlib stopped for want of input
                if self.consumed >= size:
                    raise self._truncated()
                if not used:  # pragma: no cover - zlib consumes what it is given or raises
                    raise CompressionError(f"corrupt gzip body ({size} bytes): no progress at byte {off}")
                if self._feed < _FEED:
                    self._feed *= 2
            if out_left <= 0 or in_left <= 0:
                return


class Lz4Decoder(BodyDecoder):
    """lz4 frame format: the first frame (what follows it is ignored, as lz4 tools do).

    Example::

        >>> blob = get_codec("lz4").compress(b"z" * 100_000)
        >>> d = Lz4Decoder(blob)
        >>> d.step(max_output=10_000), d.produced
        (False, 10000)
        >>> len(d.run())
        100000
    """

    __slots__ = ("_d",)

    def __init__(self, data: Buffer, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__("lz4", data, max_size)
        self._d = lz4.frame.LZ4FrameDecompressor()

    def _step(self, max_output: int, max_input: int) -> None:
        d, view, size, parts = self._d, self._view, self.size, self._parts
        limit = self.max_size + 1
        out_left, in_left = max_output, max_input
        while True:
            if d.needs_input:
                off = self.consumed
                if off >= size:
                    raise self._truncated()
                feed: Buffer = view[off : off + _FEED]
                self.consumed = off + len(feed)
                in_left -= len(feed)
            else:  # output is pending from what it already holds
                feed = b""
            cap = min(out_left, limit - self.produced)
            out = d.decompress(feed, max_length=cap)
            if out:
                self.produced += len(out)
                if self.produced > self.max_size:
                    raise self._too_big()
                out_left -= len(out)
                parts.append(out)
            if d.eof:
                self._finish()
                return
            if out_left <= 0 or in_left <= 0:
                return


class BrotliDecoder(BodyDecoder):
    """brotli: the output buffer stops growing at each call's limit, so a bomb never expands in memory.

    Example::

        >>> blob = get_codec("brotli").compress(b"\\0" * 5_000_000)   # a 5 MB "bomb" of a few bytes
        >>> len(blob) < 100
        True
        >>> BrotliDecoder(blob, max_size=1_000_000).run()
        Traceback (most recent call last):
        ...
        nexus_green.errors.CompressionError: brotli body expands beyond max_size 1000000 bytes
    """

    __slots__ = ("_d",)

    def __init__(self, data: Buffer, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        super().__init__("brotli", data, max_size)
        self._d = brotli.Decompressor()

    def _step(self, max_output: int, max_input: int) -> None:
        d, view, size, parts = self._d, self._view, self.size, self._parts
        limit = self.max_size + 1
        out_left, in_left = max_output, max_input
        while True:
            off = self.consumed
            if off < size and d.can_accept_more_data():
                feed: Buffer = view[off : off + _FEED]
                self.consumed = off + len(feed)
                in_left -= len(feed)
            else:  # output may be pending from what it already holds
                feed = b""
            cap = min(out_left, limit - self.produced)
            out = d.process(feed, output_buffer_limit=cap)
            if out:
                self.produced += len(out)
                if self.produced > self.max_size:
                    raise self._too_big()
                out_left -= len(out)
                parts.append(bytes(out))
            if d.is_finished():
                if self.consumed < size:
                    raise CompressionError(
                        f"corrupt brotli body ({size} bytes): {size - self.consumed} bytes after the end of the stream"
                    )
                self._finish()
                return
            if not out and not feed:  # nothing left in it, nothing more to give it
                if self.consumed >= size:
                    raise self._truncated()
                raise CompressionError(  # pragma: no cover - it takes input whenever it has no output pending
                    f"corrupt brotli body ({size} bytes): no progress at byte {self.consumed}"
                )
            if out_left <= 0 or in_left <= 0:
                return


class ZstdDecoder(BodyDecoder):
    """zstd: the first frame, with a context from ``contexts`` (one with a dictionary, say).

    A frame that declares its content size is refused at once when the size
    is above ``max_size``; otherwise it is decoded in one call, bounded by
    that size, in the first step whose ``max_output`` covers it (a step with
    less room does nothing), or in the next step whatever its room: libzstd
    checks the declared size, so the call cannot expand further, and zstd
    decodes about 1 GB/s.

    A frame that does not declare its size (a streaming compressor's) may be
    a bomb of a few bytes. Unless one step can hold it, it streams through
    ``read_to_iter`` 128 KiB of output at a time, counted and dropped, until
    it ends or passes ``max_size``; then one call bounded by the count decodes
    it for real. The stream alone cannot tell a truncated frame from a
    finished one, and that call can: a frame that the stream decoded in
    full and the call refuses is truncated. Memory stays at one copy of the
    body; such frames cost two decodes.

    ``contexts`` lends the decompression context; it goes back after a
    success only.

    Example::

        >>> import zstandard
        >>> streamed = zstandard.ZstdCompressor(write_content_size=False).compress(b"q" * 100_000)
        >>> d = ZstdDecoder(streamed)
        >>> d.step(max_output=30_000), d.produced     # streamed: counted, not kept
        (False, 100000)
        >>> d.run() == b"q" * 100_000, d.steps
        (True, 2)
        >>> ZstdDecoder(streamed[:-3]).run()
        Traceback (most recent call last):
        ...
        nexus_green.errors.CompressionError: truncated zstd body (16 bytes)
    """

    __slots__ = ("_contexts", "_dctx", "_declared", "_stream", "_dict_id")

    def __init__(
        self,
        data: Buffer,
        max_size: int = DEFAULT_MAX_FRAME_SIZE,
        *,
        contexts: Optional[ContextPool[zstandard.ZstdDecompressor]] = None,
        dict_id: int = 0,
    ) -> None:
        super().__init__("zstd", data, max_size)
        self._contexts = _ZSTD_DECOMPRESSORS if contexts is None else contexts
        self._dict_id = dict_id
        try:
            declared = zstandard.frame_content_size(self._view)
        except zstandard.ZstdError as exc:
            raise CompressionError(f"corrupt zstd body ({self.size} bytes){self._about()}: {exc}") from exc
        if declared > max_size:
            raise self._too_big()
        self._declared = declared  # -1: not declared
        self._dctx: Any = None
        self._stream: Optional[Iterator[bytes]] = None

    def _about(self) -> str:
        return f" for dictionary {self._dict_id}" if self._dict_id else ""

    def _step(self, max_output: int, max_input: int) -> None:
        if self._dctx is None:
            self._dctx = self._contexts.take()
        declared = self._declared
        if declared >= 0:
            if declared <= max_output or self.steps:
                self._one_call(declared)
            return
        stream = self._stream
        if stream is None:
            if self.size <= max_input:
                try:  # the common case: a small frame that fits this step
                    self._one_call(min(max_output, self.max_size))
                    return
                except CompressionError:
                    pass  # larger than this step, truncated or corrupt: the stream tells which
            stream = self._stream = self._dctx.read_to_iter(self._view, read_size=_FEED, write_size=_ZSTD_WRITE)
        out_left = max_output
        while out_left > 0:
            chunk = next(stream, None)
            if chunk is None:  # the stream ended: decode it for real, bounded by what it produced
                self._stream = None
                self._one_call(self.produced)
                return
            self.produced += len(chunk)
            if self.produced > self.max_size:
                raise self._too_big()
            out_left -= len(chunk)

    def _one_call(self, cap: int) -> None:
        try:
            out = self._dctx.decompress(self._view, max_output_size=max(1, cap))
        except zstandard.ZstdError as exc:
            if "full frame" in str(exc):  # "did not decompress full frame": the input (or the room) ended first
                raise self._truncated() from exc
            raise
        if len(out) > self.max_size:
            raise self._too_big()
        self.consumed = self.size
        self.produced = len(out)
        self._contexts.give(self._dctx, size=len(out))  # after an error the context is dropped
        self._dctx = None
        self._finish(out)


CODECS: dict[str, Codec] = {
    "gzip": Codec(name="gzip", tp_bits=TP_GZIP, _compress=_gzip_c, _decoder=GzipDecoder, _quick=_gzip_q),
    "lz4": Codec(name="lz4", tp_bits=0x40, _compress=_lz4_c, _decoder=Lz4Decoder, _quick=_lz4_q),
    "zstd": Codec(name="zstd", tp_bits=0x80, _compress=_zstd_c, _decoder=ZstdDecoder, _quick=_zstd_q),
    "brotli": Codec(name="brotli", tp_bits=0xC0, _compress=_brotli_c, _decoder=BrotliDecoder, _quick=_brotli_q),
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
    """Undo whatever codec ``tp`` names (identity for a plain body), in one go on the caller's thread.

    Example::

        >>> decompress_body(0x40, get_codec("lz4").compress(b"abc")), decompress_body(0, b"abc")
        (b'abc', b'abc')
    """
    codec = codec_for_bits(tp)
    return body if codec is None else codec.decompress(body, max_size)


def try_decompress(
    tp: int,
    body: Buffer,
    max_size: int,
    max_output: int,
    *,
    zstd_contexts: Optional[ContextPool[zstandard.ZstdDecompressor]] = None,
) -> Optional[bytes]:
    """The body, if one library call of at most about ``max_output`` bytes of output decodes it; else None.

    The cheap first look for the hot path: an ordinary small body costs what
    one call of its codec costs (no decoder object), and a body that expands
    beyond ``max_output`` -- a bomb of a few bytes, say -- costs at most
    that much output before the answer is None. None is also the answer
    for anything unusual (several gzip members, a corrupt or truncated
    body): hand those to :func:`body_decoder`, which tells what is wrong.
    A plain body (no codec bits) comes back as it is. ``zstd_contexts``
    lends zstd contexts (ones with a dictionary, say).

    Example::

        >>> blob = get_codec("zstd").compress(b"a" * 10_000)
        >>> len(try_decompress(0x80, blob, 1 << 20, 64 * 1024)), try_decompress(0x80, blob, 1 << 20, 4096)
        (10000, None)
        >>> try_decompress(0x80, b"junk", 1 << 20, 4096) is None   # body_decoder() will say why
        True
    """
    codec = codec_for_bits(tp)
    if codec is None:
        return body if isinstance(body, bytes) else bytes(body)
    if zstd_contexts is not None and codec.name == "zstd":
        return _quick(lambda data, cap: _zstd_q(data, cap, zstd_contexts), body, max_size, max_output)
    return _quick(codec._quick, body, max_size, max_output)


def body_decoder(tp: int, body: Buffer, max_size: int = DEFAULT_MAX_FRAME_SIZE) -> BodyDecoder:
    """An incremental decoder for a body whose codec ``tp`` names (:class:`PlainDecoder` for a plain one).

    Example::

        >>> d = body_decoder(0x80, get_codec("zstd").compress(b"abc" * 100))
        >>> type(d).__name__, d.step(), d.result()[:6]
        ('ZstdDecoder', True, b'abcabc')
    """
    codec = codec_for_bits(tp)
    return PlainDecoder(body, max_size) if codec is None else codec._decoder(body, max_size)
