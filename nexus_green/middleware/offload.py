"""Running CPU-heavy C work off the gevent hub (layer L4).

Compression and decompression of large bodies do not yield: zstd level 19 on
3.6 MB froze every greenlet for 3.9 s when it ran inline (GEVENT_NOTES.md).
zlib, zstd, lz4 and brotli release the GIL while they work, so gevent's
threadpool runs them in parallel with the hub. Small bodies stay inline:
the hop to a thread and back costs tens of microseconds, more than
compressing a few kilobytes.

Decoding a body that came from the peer is more than that: its size says
little about its cost (a 1.6 KB brotli bomb expands to 1 GB; 8 MB of empty
gzip members are 400 000 decoder starts), and it must fit the call's time
budget. :func:`decode_off_hub` drives a sans-IO
:class:`~nexus_green.protocol.compression.BodyDecoder` in the threadpool one
bounded chunk at a time, checks the budget between chunks (running out is a
timeout with ``phase="decode"``), stops at its next chunk when its caller
goes away, and takes one of a few process-wide :class:`DecodeSlots` so a
hostile peer cannot occupy every thread of the pool.

Example::

    >>> import zlib
    >>> run_off_hub(zlib.compress, b"x" * 10, size=10, threshold=1024)[:2]   # inline
    b'x\\x9c'
    >>> len(run_off_hub(zlib.compress, b"x" * 4096, size=4096, threshold=1024)) < 4096  # threadpool
    True
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Optional, TypeVar

import gevent
import gevent.lock

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import timeout_error
from ..protocol.compression import DECODE_CHUNK, BodyDecoder
from ..timers import wait_until

__all__ = [
    "run_off_hub",
    "DEFAULT_OFFLOAD_THRESHOLD",
    "DEFAULT_DECODE_SLOTS",
    "DecodeSlots",
    "decode_slots",
    "set_decode_slots",
    "decode_off_hub",
]

T = TypeVar("T")

DEFAULT_OFFLOAD_THRESHOLD = 128 * 1024
"""Bodies of at least this many bytes are (de)compressed in the threadpool."""

DEFAULT_DECODE_SLOTS = max(1, min(os.cpu_count() or 1, 4))
"""Decodes that may run in gevent's threadpool at once, per process: the cores, at most 4.

Decoding is CPU work, so more decodes than cores only share them; and gevent's
threadpool has 10 threads by default, which DNS lookups and other offloaded
work need too.
"""


def run_off_hub(fn: Callable[..., T], *args: Any, size: int, threshold: int) -> T:
    """``fn(*args)``, in gevent's threadpool when ``size >= threshold``, else inline.

    Only for functions that release the GIL (C compression, hashing): pure
    Python work in a thread still holds the GIL and gains nothing. The calling
    greenlet waits; every other greenlet keeps running. Exceptions raised by
    ``fn`` propagate to the caller unchanged. Called from a threadpool worker
    (no hub to protect), ``fn`` runs inline.

    Example::

        >>> run_off_hub(len, b"abc", size=3, threshold=0)
        3
    """
    if size < threshold:
        return fn(*args)
    result: T = gevent.get_hub().threadpool.apply(fn, args)
    return result


class DecodeSlots:
    """At most ``limit`` decodes in gevent's threadpool at once; callers past it wait within their budget.

    One instance serves the whole process (:func:`decode_slots`). A slot is
    taken before a decode goes to the threadpool and given back when its
    thread is done -- not when its caller gives up, since the thread works
    until its next chunk -- so ``running`` is the threads busy decoding.
    Counters for tests and dashboards: ``running``, ``waiting``,
    ``completed``, ``abandoned`` (the caller went away mid-decode),
    ``timeouts`` (the budget ran out mid-decode or while waiting for a slot);
    the ``repr`` tells them.

    Example::

        >>> slots = DecodeSlots(1)
        >>> slots.acquire(SYSTEM_CLOCK, None), slots.acquire(SYSTEM_CLOCK, SYSTEM_CLOCK.now() + 0.01)
        (True, False)
        >>> slots
        <DecodeSlots running=1/1 waiting=0 completed=0 abandoned=0 timeouts=0>
        >>> slots.release(); slots.running
        0
    """

    def __init__(self, limit: int = DEFAULT_DECODE_SLOTS) -> None:
        if limit < 1:
            raise ValueError(f"DecodeSlots needs a limit of at least 1, got {limit}")
        self.limit = limit
        self._sem = gevent.lock.BoundedSemaphore(limit)
        self.running = 0
        self.waiting = 0
        self.completed = 0
        self.abandoned = 0
        self.timeouts = 0

    def acquire(self, clock: Clock, until: Optional[float]) -> bool:
        """Take a slot, waiting until ``until`` on ``clock`` at most (None: no limit); False if none came.

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> slots, clock = DecodeSlots(1), FakeClock()
            >>> slots.acquire(clock, None), slots.acquire(clock, 2.5), clock.now()   # the FakeClock jumps
            (True, False, 2.5)
        """
        if not self._sem.acquire(blocking=False):
            self.waiting += 1
            try:
                if not wait_until(self._sem.acquire, clock, until):
                    return False
            finally:
                self.waiting -= 1
        self.running += 1
        return True

    def release(self) -> None:
        """Give a slot back (when the thread that held it is done).

        Example::

            >>> slots = DecodeSlots(1)
            >>> slots.acquire(SYSTEM_CLOCK, None) and slots.release() is None, slots.running
            (True, 0)
        """
        self.running -= 1
        self._sem.release()

    def __repr__(self) -> str:
        return (
            f"<DecodeSlots running={self.running}/{self.limit} waiting={self.waiting} "
            f"completed={self.completed} abandoned={self.abandoned} timeouts={self.timeouts}>"
        )


_SLOTS = [DecodeSlots()]


def _fresh_slots_after_fork() -> None:
    # A decode running at fork time holds a slot whose thread the child does not have.
    _SLOTS[0] = DecodeSlots(_SLOTS[0].limit)


os.register_at_fork(after_in_child=_fresh_slots_after_fork)


def decode_slots() -> DecodeSlots:
    """The process-wide :class:`DecodeSlots` that :func:`decode_off_hub` uses by default.

    Example::

        >>> decode_slots().limit == DEFAULT_DECODE_SLOTS
        True
    """
    return _SLOTS[0]


def set_decode_slots(limit: int) -> DecodeSlots:
    """Replace the process-wide slots with ``limit`` fresh ones; returns the old :class:`DecodeSlots`.

    Decodes already running keep (and give back) the slots they hold.

    Example::

        >>> old = set_decode_slots(1)
        >>> decode_slots().limit
        1
        >>> _ = set_decode_slots(old.limit)
    """
    old = _SLOTS[0]
    _SLOTS[0] = DecodeSlots(limit)
    return old


class _DecodeJob:
    """What runs in the worker thread: steps until done, the budget is spent or the caller is gone."""

    __slots__ = ("decoder", "clock", "until", "chunk", "cancelled", "error")

    def __init__(self, decoder: BodyDecoder, clock: Clock, until: Optional[float], chunk: int) -> None:
        self.decoder = decoder
        self.clock = clock
        self.until = until
        self.chunk = chunk
        self.cancelled = False  # set by the caller's greenlet, read here between steps (a bool: no lock needed)
        self.error: Optional[Exception] = None

    def __call__(self) -> Optional[bytes]:
        """The body; None when the budget ran out or the caller left; ``error`` set when the decoder failed."""
        decoder, clock, until, chunk = self.decoder, self.clock, self.until, self.chunk
        try:
            while not self.cancelled:
                if until is not None and clock.now() >= until:
                    return None
                if decoder.step(chunk, chunk):
                    return decoder.result()
        except Exception as exc:  # handed to the caller: raised from the worker, gevent would print it too
            self.error = exc
        return None


def decode_off_hub(
    decoder: BodyDecoder,
    *,
    clock: Clock = SYSTEM_CLOCK,
    until: Optional[float] = None,
    by_deadline: bool = False,
    what: str = "decode",
    slots: Optional[DecodeSlots] = None,
    chunk: int = DECODE_CHUNK,
) -> bytes:
    """Run ``decoder`` to its end in gevent's threadpool, ``chunk`` bytes a step, within the call's budget.

    ``until`` is the call's budget, an absolute time on ``clock`` (what
    :func:`~nexus_green.deadlines.budget` returns, with ``by_deadline``);
    None sets no limit. The worker thread checks it before every step:
    running out while waiting for a slot or while decoding raises
    :class:`~nexus_green.errors.RequestTimeout`, or
    :class:`~nexus_green.errors.DeadlineExceeded` when the deadline in force
    was the limit, with ``phase="decode"``; the decode stops within one step
    of the limit (a step is about a millisecond of work). A caller that goes
    away (killed, or interrupted by an outer ``gevent.Timeout``) leaves a
    flag the thread reads before its next step, so no thread keeps decoding
    for nobody. ``what`` starts the error messages. The decoder's own errors
    (:class:`~nexus_green.errors.CompressionError`) propagate unchanged.

    At most ``slots.limit`` decodes run at once (default: the process-wide
    :func:`decode_slots`); a caller past the limit waits for a slot within
    its budget.

    Example::

        >>> from nexus_green.errors import RequestTimeout
        >>> from nexus_green.protocol.compression import body_decoder, get_codec
        >>> blob = get_codec("gzip").compress(b"nexus " * 100_000)
        >>> len(decode_off_hub(body_decoder(0x20, blob), until=SYSTEM_CLOCK.now() + 5, what="fid=1"))
        600000
        >>> try:
        ...     decode_off_hub(body_decoder(0x20, blob), until=SYSTEM_CLOCK.now() - 1, what="fid=1")
        ... except RequestTimeout as exc:
        ...     print(exc.phase, "|", exc)
        decode | fid=1: no time left to decode 916 bytes of gzip (0 bytes out after 0 steps)
    """
    if slots is None:
        slots = _SLOTS[0]
    if not slots.acquire(clock, until):
        slots.timeouts += 1
        raise timeout_error(
            by_deadline, f"{what}: no decode slot came free within the budget ({slots!r})", phase="decode"
        )
    job = _DecodeJob(decoder, clock, until, chunk)
    try:
        result = gevent.get_hub().threadpool.spawn(job)
    except BaseException:
        slots.release()
        raise

    def done(_: Any) -> None:
        slots.completed += 1
        slots.release()

    result.rawlink(done)
    try:
        out: Optional[bytes] = result.get()
    except BaseException:
        if not result.ready():  # our caller went away: the thread stops before its next step
            job.cancelled = True
            slots.abandoned += 1
        raise
    if job.error is not None:
        raise job.error
    if out is None:
        slots.timeouts += 1
        raise timeout_error(
            by_deadline,
            f"{what}: no time left to decode {decoder.size} bytes of {decoder.name} "
            f"({decoder.produced} bytes out after {decoder.steps} steps)",
            phase="decode",
        )
    return out
