"""Running CPU-heavy C work off the gevent hub (layer L4).

Compression and decompression of large bodies do not yield: zstd level 19 on
3.6 MB froze every greenlet for 3.9 s when it ran inline (GEVENT_NOTES.md).
zlib, zstd, lz4 and brotli release the GIL while they work, so gevent's
threadpool runs them in parallel with the hub. Small bodies stay inline:
the hop to a thread and back costs tens of microseconds, more than
compressing a few kilobytes.

Example::

    >>> import zlib
    >>> run_off_hub(zlib.compress, b"x" * 10, size=10, threshold=1024)[:2]   # inline
    b'x\\x9c'
    >>> len(run_off_hub(zlib.compress, b"x" * 4096, size=4096, threshold=1024)) < 4096  # threadpool
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import gevent

__all__ = ["run_off_hub", "DEFAULT_OFFLOAD_THRESHOLD"]

T = TypeVar("T")

DEFAULT_OFFLOAD_THRESHOLD = 128 * 1024
"""Bodies of at least this many bytes are (de)compressed in the threadpool."""


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
