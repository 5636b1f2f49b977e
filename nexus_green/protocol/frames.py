"""NexusKit BinaryProtocol frames: the dataclass, the encoder and the decoder.

Sans-IO (layer L1): bytes in, :class:`Frame` objects out, and back. No socket,
gevent or time import may appear here (import-linter enforces it).

Wire layout, big-endian::

    [Len u32 = 20 + body length]
    [Tag u16 = 0x7A5A][Ver u16 = 1][Tp u8][Res u8][Qid u32][Fid u32][Code u32][Dh u16]
    [body]

Extensions use only what NexusKit leaves unused (docs/protocol.md is the exact
reference): ``Dh`` (reserved, always 0 in NexusKit) carries the length of a
key/value header block at the start of the body, and Tp bits ``0xC0`` name a
compression codec other than NexusKit's gzip flag ``0x20``. A decoder built
with ``strict=True`` reads frames exactly as NexusKit does (no header block, no
codec bits); an encoder never emits extensions for a strict connection because
:func:`encode_frame` refuses them (``LocalProtocolError``).

Example::

    >>> data = encode_frame(Frame(qid=7, fid=3, body=b"hi", headers={"trace-id": "ab"}))
    >>> dec = FrameDecoder()
    >>> [f] = dec.feed(data[:5]) + dec.feed(data[5:])
    >>> f.qid, f.fid, f.body, dict(f.headers)
    (7, 3, b'hi', {'trace-id': 'ab'})
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..errors import FrameTooLarge, LocalProtocolError, RemoteProtocolError
from .headers import decode_header_block, encode_header_block

__all__ = [
    "TAG",
    "VERSION",
    "HEADER_SIZE",
    "TP_HEARTBEAT",
    "TP_GZIP",
    "TP_CODEC_MASK",
    "HEARTBEAT_FID",
    "CODE_OK",
    "DEFAULT_MAX_FRAME_SIZE",
    "Frame",
    "encode_frame",
    "encode_request",
    "encode_request_parts",
    "SEPARATE_BODY",
    "heartbeat_frame",
    "FrameDecoder",
    "make_frame",
    "NO_HEADERS",
]

TAG = 0x7A5A
VERSION = 1
HEADER_SIZE = 20  # bytes after the length prefix and before the body
TP_HEARTBEAT = 0x01
TP_GZIP = 0x20
TP_CODEC_MASK = 0xC0  # extension: 0x40 lz4, 0x80 zstd, 0xC0 brotli
TP_EXTENSION_BITS = TP_CODEC_MASK
HEARTBEAT_FID = 0xFFFF
CODE_OK = 200
DEFAULT_MAX_FRAME_SIZE = 16 * 1024 * 1024
U32_MAX = 0xFFFFFFFF

_PREFIX = struct.Struct(">IHHBBIIIH")  # Len + the 20-byte header
_LEN = struct.Struct(">I")
_TAG = struct.Struct(">H")


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One protocol frame.

    ``body`` is the payload as it travels (still compressed when ``tp`` has a
    codec bit); ``headers`` is the extension header block, empty for plain
    NexusKit frames.

    Example::

        >>> Frame(qid=1, fid=2, body=b"x").is_response
        False
    """

    qid: int = 0
    fid: int = 0
    code: int = 0
    tp: int = 0
    res: int = 0
    ver: int = VERSION
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_heartbeat(self) -> bool:
        """True for a heartbeat (Tp bit 0x01)."""
        return bool(self.tp & TP_HEARTBEAT)

    @property
    def is_response(self) -> bool:
        """True when Res is 1 (an answer to a request)."""
        return self.res == 1

    @property
    def codec_bits(self) -> int:
        """The compression bits of Tp (``0x20`` gzip or one of ``0xC0``), 0 if plain."""
        return self.tp & (TP_GZIP | TP_CODEC_MASK)


NO_HEADERS: Mapping[str, str] = MappingProxyType({})
RawFrame = tuple[int, int, int, int, int, int, bytes, Mapping[str, str]]

_new = object.__new__
_FRAME_SETTERS = tuple(Frame.__dict__[n].__set__ for n in ("qid", "fid", "code", "tp", "res", "ver", "body", "headers"))


def make_frame(
    qid: int, fid: int, code: int, tp: int, res: int, ver: int, body: bytes, headers: Mapping[str, str]
) -> Frame:
    """Build a :class:`Frame` without the frozen-dataclass ``__init__`` (about 3x cheaper).

    Values are trusted (they come from the decoder). Example::

        >>> make_frame(1, 2, 200, 0, 1, 1, b"x", {}) == Frame(qid=1, fid=2, code=200, res=1, body=b"x")
        True
    """
    f = _new(Frame)
    sq, sf, sc, st, sr, sv, sb, sh = _FRAME_SETTERS
    sq(f, qid)
    sf(f, fid)
    sc(f, code)
    st(f, tp)
    sr(f, res)
    sv(f, ver)
    sb(f, body)
    sh(f, headers)
    return f


def _check_u32(name: str, value: int) -> None:
    if not 0 <= value <= U32_MAX:
        raise LocalProtocolError(f"{name}={value} does not fit in an unsigned 32-bit field")


def encode_frame(frame: Frame, *, strict: bool = False) -> bytes:
    """Serialise a frame to bytes (validated).

    With ``strict=True`` a frame that needs an extension (headers, codec bits
    other than gzip) raises :class:`LocalProtocolError` instead of being sent to
    a peer that would misread it.

    Example::

        >>> encode_frame(Frame(qid=1, fid=2, body=b"ok")).hex()
        '000000167a5a0001000000000001000000020000000000006f6b'
    """
    for name in ("qid", "fid", "code"):
        _check_u32(name, getattr(frame, name))
    if not 0 <= frame.tp <= 0xFF or frame.res not in (0, 1) or not 0 <= frame.ver <= 0xFFFF:
        raise LocalProtocolError(f"invalid header field in {frame!r}: tp, res or ver out of range")
    if frame.tp & TP_GZIP and frame.tp & TP_CODEC_MASK:
        raise LocalProtocolError(f"tp=0x{frame.tp:02x} sets both gzip and an extension codec")
    block = encode_header_block(frame.headers) if frame.headers else b""
    if strict and (block or frame.tp & TP_EXTENSION_BITS):
        raise LocalProtocolError("strict mode: frame needs a header block or codec bits NexusKit does not understand")
    length = HEADER_SIZE + len(block) + len(frame.body)
    if length > U32_MAX:
        raise LocalProtocolError(f"frame body of {len(frame.body)} bytes is too large for the u32 length")
    try:
        prefix = _PREFIX.pack(length, TAG, frame.ver, frame.tp, frame.res, frame.qid, frame.fid, frame.code, len(block))
    except struct.error as exc:  # a field that is not an int (e.g. qid=1.5)
        raise LocalProtocolError(f"cannot encode {frame!r}: {exc}") from exc
    return prefix + block + frame.body


def encode_request(
    qid: int, fid: int, body: bytes, *, tp: int = 0, header_block: bytes = b"", body_length: int = 0
) -> bytes:
    """Fast path for the per-request hot loop: no dataclass, values pre-validated.

    ``header_block`` must come from :func:`encode_header_block`. With
    ``body_length`` the length field counts that many body bytes that the
    caller sends after the returned prefix (see :func:`encode_request_parts`).

    Example::

        >>> encode_request(1, 2, b"ok") == encode_frame(Frame(qid=1, fid=2, body=b"ok"))
        True
    """
    try:
        if not header_block:
            return _PREFIX.pack(HEADER_SIZE + len(body) + body_length, TAG, VERSION, tp, 0, qid, fid, 0, 0) + body
        return (
            _PREFIX.pack(
                HEADER_SIZE + len(header_block) + len(body) + body_length,
                TAG,
                VERSION,
                tp,
                0,
                qid,
                fid,
                0,
                len(header_block),
            )
            + header_block
            + body
        )
    except struct.error as exc:
        raise LocalProtocolError(f"cannot encode request qid={qid} fid={fid}: {exc}") from exc


SEPARATE_BODY = 16 * 1024  # bodies at least this large are sent from the caller's object, not copied


def encode_request_parts(
    qid: int, fid: int, body: bytes | bytearray | memoryview, *, tp: int = 0, header_block: bytes = b""
) -> bytes | tuple[bytes, bytes]:
    """:func:`encode_request` for a scatter/gather writer: a large body is not copied.

    A body of ``SEPARATE_BODY`` bytes or more comes back as ``(prefix, body)``,
    the two pieces a ``sendmsg`` writes without joining them; a smaller one as
    one ``bytes``, where a copy costs less than a second buffer. A mutable
    body (bytearray, memoryview) is copied once: it could change while queued.

    Example::

        >>> encode_request_parts(1, 2, b"ok") == encode_request(1, 2, b"ok")
        True
        >>> big = b"x" * 20_000
        >>> prefix, body = encode_request_parts(1, 2, big)
        >>> body is big, prefix + body == encode_request(1, 2, big)
        (True, True)
    """
    if type(body) is not bytes:
        # A bytearray (or a view of one) can change after the call returns, while
        # the frame still waits in the queue, and len() of a view of wide items
        # counts items: only an immutable bytes body is measured and sent in place.
        body = bytes(body)
    if len(body) < SEPARATE_BODY:
        return encode_request(qid, fid, body, tp=tp, header_block=header_block)
    return encode_request(qid, fid, b"", tp=tp, header_block=header_block, body_length=len(body)), body


def heartbeat_frame(*, response: bool = False) -> bytes:
    """The bytes of a heartbeat (Tp 0x01, Fid 0xFFFF, header only).

    Example::

        >>> len(heartbeat_frame())
        24
    """
    return _PREFIX.pack(HEADER_SIZE, TAG, VERSION, TP_HEARTBEAT, 1 if response else 0, 0, HEARTBEAT_FID, 0, 0)


# Big-frame buffers are reused, a few per thread: allocating (and zeroing, and
# page-faulting) a fresh megabyte for every big answer cost more system time
# than receiving it. A reused buffer is always overwritten up to the frame's
# length before any of it is read, so nothing of an earlier frame leaks.
_BIG_KEEP = 4 * 1024 * 1024  # larger buffers are not kept
_BIG_POOL = 2  # buffers kept for the process
_big_free: list[bytearray] = []


_allocator_warmed = False


def _warm_allocator() -> None:
    """Once per process: allocate and free one 4 MiB block, so glibc keeps freed big bodies for reuse.

    glibc returns freed memory at the top of its heap to the OS once more than
    ``M_TRIM_THRESHOLD`` (128 KiB) is free there, unless a freed mmap'd block
    has raised that threshold (to twice its size). A process whose only big
    allocations are answer bodies of a megabyte, made and freed in turn, then
    gives the pages back and faults them in again for every answer: measured,
    45-130 minor page faults and about 200 us of system time per 1 MiB answer.
    Freeing one 4 MiB block raises the threshold as any program that once
    freed such a buffer has it (it is how the reader greenlets' 256 KiB reads
    kept it up before); nothing stays allocated.
    """
    global _allocator_warmed
    _allocator_warmed = True
    block = bytearray(_BIG_KEEP)
    del block


def _take_big(n: int) -> bytearray:
    # Only atomic list operations (the GIL makes pop and append atomic): the
    # pool is shared by every thread and greenlet without a lock, and after
    # patch_all() a threading.local would be one pool per greenlet.
    if not _allocator_warmed:
        _warm_allocator()
    try:
        b = _big_free.pop()
    except IndexError:
        return bytearray(n)
    if len(b) >= n:
        return b
    _big_free.append(b)
    return bytearray(n)


def _give_big(b: bytearray) -> None:
    if len(b) <= _BIG_KEEP and len(_big_free) < _BIG_POOL:
        _big_free.append(b)


class FrameDecoder:
    """Incremental decoder: feed any chunking of bytes, get whole frames.

    Bounded: a frame announcing more than ``max_frame_size`` bytes is refused
    as soon as its length prefix arrives, so garbage can never make the buffer
    grow without limit. After an error the decoder stays failed and raises the
    same error again (the stream cannot be resynchronised).

    Two ways in, one parser:

    * :meth:`feed` / :meth:`feed_raw` take bytes a ``recv`` returned;
    * :meth:`get_buffer` / :meth:`buffer_updated` let the reader ``recv_into``
      memory the decoder chooses (as asyncio's BufferedProtocol does). Small
      frames land in a scratch buffer the caller owns (one per thread serves
      every connection, so an idle decoder holds no receive buffer), and a frame
      whose payload is ``BIG_FRAME`` bytes or more gets a buffer of exactly its
      size, so its body is copied once, from that buffer into the ``bytes``
      handed to the caller.

    Bodies are always ``bytes`` of their own: no memoryview or receive buffer
    escapes the decoder.

    Example::

        >>> dec = FrameDecoder(max_frame_size=64)
        >>> dec.feed(b"\\x00\\x00\\x10\\x00")
        Traceback (most recent call last):
        ...
        nexus_green.errors.FrameTooLarge: frame length 4096 exceeds max_frame_size 64 (at byte offset 0)
    """

    BIG_FRAME = 64 * 1024  # payloads at least this large are received into a buffer of their own size

    def __init__(self, *, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE, strict: bool = False) -> None:
        if max_frame_size < HEADER_SIZE:
            raise ValueError(f"max_frame_size must be at least {HEADER_SIZE}, got {max_frame_size}")
        self.max_frame_size = max_frame_size
        self.strict = strict
        # The bytes of an incomplete small frame (a prefix, or less than BIG_FRAME of payload).
        self._buf = bytearray()
        self._offset = 0  # stream offset of the first byte not yet consumed
        # A big frame in progress: its payload buffer, bytes filled, and its header fields.
        self._big: bytearray | None = None  # a reused buffer: only its first _big_len bytes are this frame's
        self._big_len = 0
        self._big_fill = 0
        self._big_hdr: tuple[int, int, int, int, int, int, int, int] = (0, 0, 0, 0, 0, 0, 0, 0)
        self._scratch_used = 0  # bytes of _buf copied to the front of the scratch by get_buffer
        # The error that failed this decoder, None while it is healthy (see feed_raw).
        self.error: RemoteProtocolError | None = None
        # Frames completed by the failing feed before its malformed bytes.
        self.salvaged: list[RawFrame] = []
        self.frames_decoded = 0
        # True when the last frame completed was a big one: a reader can then read
        # just the next prefix, so the next big body lands in its own buffer at once
        # instead of being copied there from the scratch (see Connection._on_readable).
        self.last_big = False
        # The payload size of the big frame in progress while none of its payload has
        # arrived (0 otherwise): a reader that finds that much in the kernel can take it
        # whole with one recv into a new bytes object, which becomes the body without a
        # copy (take_payload); else it receives into get_buffer's buffer as before.
        self.payload_wanted = 0
        self.payloads_taken = 0  # big frames whose payload came whole through take_payload

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole frame."""
        if self._big is not None:
            return 24 + self._big_fill
        return len(self._buf)

    @property
    def offset(self) -> int:
        """Stream offset of the first byte not yet consumed."""
        return self._offset

    def _fail(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        self.error = exc
        self._buf = bytearray()
        self._big = None
        self.payload_wanted = 0
        return exc

    def feed(self, data: bytes | bytearray | memoryview) -> list[Frame]:
        """Add bytes; return every frame they complete, in order."""
        return [make_frame(*t) for t in self.feed_raw(data)]

    def feed_raw(self, data: bytes | bytearray | memoryview) -> list[RawFrame]:
        """Like :meth:`feed` but returns plain tuples ``(qid, fid, code, tp, res, ver, body, headers)``.

        One ``unpack_from`` and one copy per body, no object built until a
        caller needs it.

        When the bytes hold complete frames and then something malformed, the
        feed raises, ``error`` keeps the error (every later feed raises it
        too) and ``salvaged`` holds the frames that came before it. Example::

            >>> dec = FrameDecoder()
            >>> data = encode_request(1, 1, b"ok") + b"\\x00\\x00\\x00\\x20GARBAGE-GARBAGE-GARBAGE-GARB"
            >>> try:
            ...     dec.feed_raw(data)
            ... except RemoteProtocolError as exc:
            ...     print(exc.offset, [f[6] for f in dec.salvaged], dec.error is exc)
            30 [b'ok'] True
        """
        if self.error is not None:
            raise self.error
        out: list[RawFrame] = []
        mv = memoryview(data).cast("B") if not isinstance(data, bytes) else None
        if self._big is not None:
            view = mv if mv is not None else memoryview(data)
            take = min(self._big_len - self._big_fill, len(view))
            self._big[self._big_fill : self._big_fill + take] = view[:take]
            if not self._fill_big(take, out):
                return out
            if take == len(view):
                return out
            data = bytes(view[take:])  # the rest after a big frame: rare (a big frame ends mid-read)
            mv = None
        if self._buf:
            self._buf += data
            src: bytes | bytearray | memoryview = self._buf
        else:
            src = data if mv is None else mv
        self._parse(src, len(src), out)
        return out

    def get_buffer(self, scratch: bytearray) -> memoryview:
        """Where the next ``recv_into`` should write: the scratch (after any partial frame), or a big frame's own buffer.

        ``scratch`` is the caller's: it must be larger than ``BIG_FRAME`` + 24
        and must not be touched between this call and :meth:`buffer_updated`.
        Example::

            >>> dec, scratch = FrameDecoder(), bytearray(256 * 1024)
            >>> wire = encode_request(1, 2, b"x" * 100_000)
            >>> buf = dec.get_buffer(scratch); buf[:30] = wire[:30]; dec.buffer_updated(30, scratch)
            []
            >>> buf = dec.get_buffer(scratch); len(buf)  # the rest of that frame's payload, exactly
            99994
            >>> buf[:] = wire[30:]; [f[6] == b"x" * 100_000 for f in dec.buffer_updated(len(buf), scratch)]
            [True]
        """
        if self.error is not None:
            raise self.error
        if self._big is not None:
            return memoryview(self._big)[self._big_fill : self._big_len]
        k = len(self._buf)
        if k:
            # A copy: the partial frame stays in _buf until buffer_updated, so a
            # read that finds nothing (and never calls it) loses nothing.
            scratch[:k] = self._buf
        self._scratch_used = k
        return memoryview(scratch)[k:]

    def buffer_updated(self, nbytes: int, scratch: bytearray) -> list[RawFrame]:
        """``nbytes`` were written into the buffer :meth:`get_buffer` returned; return the frames they complete."""
        out: list[RawFrame] = []
        if self._big is not None:
            self._fill_big(nbytes, out)
            return out
        n = self._scratch_used + nbytes
        self._scratch_used = 0
        if n >= 24:
            length, tag, ver, tp, res, qid, fid, code, dh = _PREFIX.unpack_from(scratch, 0)
            if (
                length + 4 == n
                and tag == TAG
                and not dh
                and res <= 1
                and HEADER_SIZE <= length <= self.max_frame_size
                and not (tp & TP_GZIP and tp & TP_CODEC_MASK)
            ):
                # Exactly one whole, well-formed frame without a header block: the common
                # read at low concurrency, without the general loop (what _parse would do).
                if self._buf:
                    self._buf = bytearray()  # the partial frame get_buffer copied out is now whole
                self._offset += n
                self.frames_decoded += 1
                self.last_big = False
                view = memoryview(scratch)
                body = bytes(view[24:n])
                view.release()
                return [(qid, fid, code, tp, res, ver, body, NO_HEADERS)]
        self._parse(memoryview(scratch)[:n], n, out)
        return out

    def _fill_big(self, nbytes: int, out: list[RawFrame]) -> bool:
        """Count ``nbytes`` more of the big frame; True (and the frame appended to ``out``) when it is whole."""
        big = self._big
        assert big is not None
        self.payload_wanted = 0
        self._big_fill += nbytes
        if self._big_fill < self._big_len:
            return False
        self._big = None
        length, tp, res, qid, fid, code, dh, ver = self._big_hdr
        headers: Mapping[str, str] = NO_HEADERS
        view = memoryview(big)
        try:
            if dh:
                headers = self._headers(view[:dh], self._offset)
            body = bytes(view[dh : self._big_len])
        finally:
            view.release()
            _give_big(big)
        out.append((qid, fid, code, tp, res, ver, body, headers))
        self._offset += 4 + length
        self.frames_decoded += 1
        self.last_big = True
        return True

    def take_payload(self, data: bytes) -> list[RawFrame]:
        """The whole payload of the big frame in progress, received as one ``bytes``: return that frame.

        ``data`` must be exactly :attr:`payload_wanted` bytes. Without a header
        block it becomes the frame's body as it is: no copy in this process
        (a header block is decoded from its front and the body sliced after it).
        Example::

            >>> dec, scratch = FrameDecoder(), bytearray(256 * 1024)
            >>> wire = encode_request(1, 2, b"x" * 100_000)
            >>> buf = dec.get_buffer(scratch)[:24]; buf[:] = wire[:24]; dec.buffer_updated(24, scratch)
            []
            >>> dec.payload_wanted
            100000
            >>> payload = wire[24:]
            >>> (frame,) = dec.take_payload(payload); frame[6] is payload, dec.payload_wanted
            (True, 0)
        """
        if self.error is not None:
            raise self.error
        big = self._big
        if big is None or not self.payload_wanted or len(data) != self.payload_wanted:
            raise ValueError(
                f"take_payload wants the whole payload of a big frame in progress ({self.payload_wanted} bytes), "
                f"got {len(data)}"
            )
        self._big = None
        self.payload_wanted = 0
        _give_big(big)
        length, tp, res, qid, fid, code, dh, ver = self._big_hdr
        headers: Mapping[str, str] = NO_HEADERS
        body = data
        if dh:
            headers = self._headers(memoryview(data)[:dh], self._offset)
            body = data[dh:]
        self._offset += 4 + length
        self.frames_decoded += 1
        self.payloads_taken += 1
        self.last_big = True
        return [(qid, fid, code, tp, res, ver, body, headers)]

    def _parse(self, src: bytes | bytearray | memoryview, n: int, out: list[RawFrame]) -> None:
        """Decode every whole frame of ``src[:n]`` into ``out``; keep the partial rest (or start a big frame)."""
        pos = 0
        first = len(out)  # out may already hold a big frame this feed completed (counted then)
        unpack = _PREFIX.unpack_from
        maxsize = self.max_frame_size
        strict = self.strict
        # Slicing a memoryview copies nothing; bytes(view) is then the body's one copy.
        view = src if isinstance(src, memoryview) else memoryview(src)
        try:
            while n - pos >= 24:
                length, tag, ver, tp, res, qid, fid, code, dh = unpack(src, pos)
                if tag != TAG or length < HEADER_SIZE or length > maxsize or res > 1:
                    self._check_prefix(src, pos, n)
                    at = self._offset + pos
                    raise self._fail(
                        RemoteProtocolError(
                            f"res={res} is neither request (0) nor response (1) (at byte offset {at})", offset=at
                        )
                    )
                start = pos + 24
                if not strict:
                    if dh and dh > length - HEADER_SIZE:
                        at = self._offset + pos
                        raise self._fail(
                            RemoteProtocolError(
                                f"header block of {dh} bytes is longer than the {length - HEADER_SIZE}-byte body "
                                f"(at byte offset {at})",
                                offset=at,
                            )
                        )
                    if tp & TP_GZIP and tp & TP_CODEC_MASK:
                        at = self._offset + pos
                        raise self._fail(
                            RemoteProtocolError(
                                f"tp=0x{tp:02x} sets both gzip and an extension codec (at byte offset {at})", offset=at
                            )
                        )
                else:
                    dh = 0
                end = pos + 4 + length
                if end > n:
                    if length - HEADER_SIZE >= self.BIG_FRAME:
                        # A big frame: from here on its payload is received into a buffer of its own.
                        big = self._big = _take_big(length - HEADER_SIZE)
                        self._big_len = length - HEADER_SIZE
                        have = n - start
                        big[:have] = view[start:n]
                        self._big_fill = have
                        self.payload_wanted = 0 if have else self._big_len
                        self._big_hdr = (length, tp, res, qid, fid, code, dh, ver)
                        self._offset += pos
                        self.frames_decoded += len(out) - first
                        view.release()
                        self._buf = bytearray()
                        return
                    break
                headers: Mapping[str, str] = NO_HEADERS
                if dh:
                    headers = self._headers(view[start : start + dh], self._offset + pos)
                    start += dh
                out.append((qid, fid, code, tp, res, ver, bytes(view[start:end]), headers))
                pos = end
            if n - pos >= 4:
                self._check_prefix(src, pos, n)
            if len(out) > first:
                self.last_big = False
        except RemoteProtocolError:
            # The frames complete before the malformed bytes are not lost: a
            # caller that still wants them (the connection delivers them
            # before it closes the link) takes them from ``salvaged``.
            self.salvaged = out
            raise
        if src is self._buf:
            view.release()  # a bytearray with an exported view cannot be resized
            if pos:
                del self._buf[:pos]
        elif pos < n:
            self._buf = bytearray(view[pos:n])
        elif self._buf:
            self._buf = bytearray()  # the partial frame get_buffer copied out is now whole
        self._offset += pos
        self.frames_decoded += len(out) - first

    def _check_prefix(self, src: bytes | bytearray | memoryview, pos: int, n: int) -> None:
        """Validate the length prefix and tag of a (possibly partial) frame at ``pos``."""
        (length,) = _LEN.unpack_from(src, pos)
        at = self._offset + pos
        if length < HEADER_SIZE:
            raise self._fail(
                RemoteProtocolError(
                    f"frame length {length} is below the {HEADER_SIZE}-byte header (at byte offset {at})", offset=at
                )
            )
        if length > self.max_frame_size:
            raise self._fail(
                FrameTooLarge(
                    f"frame length {length} exceeds max_frame_size {self.max_frame_size} (at byte offset {at})",
                    offset=at,
                )
            )
        if n - pos >= 6:
            (tag,) = _TAG.unpack_from(src, pos + 4)
            if tag != TAG:
                raise self._fail(
                    RemoteProtocolError(
                        f"bad tag 0x{tag:04x}, expected 0x{TAG:04x} (at byte offset {at + 4})", offset=at + 4
                    )
                )

    def _headers(self, block: memoryview, at: int) -> Mapping[str, str]:
        try:
            return decode_header_block(bytes(block))
        except RemoteProtocolError as exc:
            raise self._fail(RemoteProtocolError(f"{exc} (in frame at byte offset {at})", offset=at)) from exc

    def __repr__(self) -> str:
        state = "failed" if self.error is not None else "ok"
        return f"<FrameDecoder {state} offset={self._offset} buffered={self.buffered} frames={self.frames_decoded}>"
