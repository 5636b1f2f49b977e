"""The two-level cache: L1 in memory (cachetools), L2 on disk (diskcache), the middleware and @cached (layer L4).

* :class:`MemoryCache` (L1): policy by name -- ``lru`` (default), ``lfu``,
  ``fifo``, ``ttl`` (entries leave exactly at expiry, least recently used
  first when full) -- or a custom policy: a ``cachetools.Cache`` instance or a
  factory ``maxsize -> cachetools.Cache``. Defaults: 100 items, 60 s TTL.
* :class:`DiskCache` (L2): diskcache, default 10,000 items and 256 MiB, 24 h
  TTL, least-frequently-used eviction. By default it persists across restarts
  in a per-user directory, ``$XDG_CACHE_HOME/nexus_green/<app>/<name>``
  (``~/.cache`` when ``XDG_CACHE_HOME`` is unset), made with mode 0700; a
  directory that another user could write is refused (values are pickles).
  ``temporary=True`` gives a private directory removed on close. SQLite calls never yield, so *every* disk
  operation runs in one dedicated worker thread that owns the only SQLite
  connection: the hub stays responsive and the descriptors stay bounded (3)
  whatever the number of greenlets -- even after ``monkey.patch_all()``, when
  diskcache's ``threading.local`` would otherwise open one connection per
  greenlet. The SQLite busy timeout is short (50 ms, diskcache's is 60 s), each
  operation is bounded (``op_timeout``), and any fault (locked by another
  process, unreadable or corrupt file, full disk) is logged, counted, and
  makes the level step aside for ``fault_cooldown`` seconds: a broken L2 is a
  miss, never a failed request. Writes are written behind: a bounded queue
  (full: the write is dropped and counted) that one writer greenlet hands to
  the worker in batches, one transaction each; reads see queued writes first,
  a key L2 does not hold costs no disk read (an in-memory set of its keys),
  and ``close()`` flushes (so does interpreter exit, for caches never closed).
* :class:`TwoLevelCache`: L1 then L2 (an L2 hit fills L1), then the loader.
  One loader per key at a time (concurrent callers wait for it: stampede
  protection), optional stale-while-revalidate, invalidation by key, tag,
  Fid, all, and TTL expiry; statistics per level.
* L3 (opt-in): ``TwoLevelCache(l3=RedisCache(...))`` adds a level in Redis
  under L1 and L2, shared by every process, with signed values and tag
  generations shared through Redis (:mod:`.cache_redis`, docs/shared-state.md).
* :class:`CacheMiddleware` (order 200) caches responses for the Fids or the
  predicate it is given (caching is opt-in), keyed by :func:`request_key`;
  :func:`cached` does the same for any function. A hit costs under 2 us
  through ``Client.request`` (bench/bench_cache.py): the key of a small
  request is remembered, and each L1 entry's hit response is made once.

Example::

    >>> with TwoLevelCache(l2=None) as cache:
    ...     calls = []
    ...     load = lambda: calls.append(1) or "value"
    ...     cache.get_or_load("k", load), cache.get_or_load("k", load), len(calls)
    (('value', ''), ('value', 'l1'), 1)
"""

from __future__ import annotations

import atexit
import functools
import gc
import hashlib
import itertools
import logging
import os
import pickle
import re
import shutil
import sqlite3
import stat
import sys
import tempfile
import time
import types
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Optional, TypeVar, Union, cast

import cachetools
import diskcache
import gevent
from gevent.event import Event
from gevent.threadpool import ThreadPool

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import effective_timeout
from ..errors import ConfigurationError
from ..greenlets import spawn
from ..logs import RepeatedLog
from ..protocol.messages import Request, Response, make_response
from .pipeline import ORDER_CACHE, FidsOrPredicate, Handler, request_matcher

if TYPE_CHECKING:
    from .cache_redis import RedisCache

__all__ = [
    "CacheEntry",
    "CacheStats",
    "TwoLevelStats",
    "MemoryCache",
    "DiskCache",
    "TwoLevelCache",
    "CacheMiddleware",
    "cached",
    "request_key",
    "call_key",
    "cache_home",
    "default_cache_dir",
]

log = logging.getLogger("nexus_green.middleware.cache")
_rlog = RepeatedLog(log)  # a failing L2 writes one line a minute per kind of failure, with a count
F = TypeVar("F", bound=Callable[..., Any])

_L2_FAULTS = (sqlite3.Error, diskcache.Timeout, OSError, gevent.Timeout)
_GENS_KEY = "nexus_green:tag-generations"
_CORRUPT = object()
_ORDER_COLUMN = {
    "least-frequently-used": "access_count",
    "least-recently-used": "access_time",
    "least-recently-stored": "store_time",
    "none": "rowid",
}
DEFAULT_SIZE_LIMIT = 256 * 1024 * 1024  # bytes on disk per L2 directory (diskcache's own default is 1 GiB)


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheEntry:
    """A cached value with its life: fresh until ``expires``, servable stale until ``stale_until``.

    Times are wall-clock (``clock.wall()``) because L2 entries outlive the
    process. ``tags`` pairs each tag with its generation when stored.

    Example::

        >>> e = CacheEntry(value=1, expires=10.0, stale_until=15.0)
        >>> e.fresh(9.0), e.fresh(10.0), e.servable(12.0)
        (True, False, True)
    """

    value: Any
    expires: float
    stale_until: float
    tags: tuple[tuple[str, int], ...] = ()

    def fresh(self, now: float) -> bool:
        """Not yet expired."""
        return now < self.expires

    def servable(self, now: float) -> bool:
        """Fresh, or stale within the stale-while-revalidate window."""
        return now < self.stale_until


_new = object.__new__
_ENTRY_SETTERS = tuple(CacheEntry.__dict__[n].__set__ for n in ("value", "expires", "stale_until", "tags"))


def _entry(value: Any, expires: float, stale_until: float, tags: tuple[tuple[str, int], ...]) -> CacheEntry:
    # The frozen dataclass __init__ costs an object.__setattr__ per field; a miss builds two entries.
    e = _new(CacheEntry)
    sv, se, ss, st = _ENTRY_SETTERS
    sv(e, value)
    se(e, expires)
    ss(e, stale_until)
    st(e, tags)
    return e


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheStats:
    """One level's figures. ``load_time`` is the mean seconds per read of this level.

    ``errors`` counts faults (L2: locked, unreadable, full, timed out);
    ``bypassed`` counts operations skipped because the level was cooling down
    after a fault or too busy. L2 writes are written behind: ``queued`` are
    waiting for the disk now, ``written`` reached it, ``dropped`` never will:
    refused because the queue was full, lost with a batch the disk failed,
    still queued when a fault made the level step aside or when ``close()``
    gave up. ``rejected`` (L3) counts values whose signature failed.
    L1 reads are not timed (a timer would cost as much as the read): its
    ``load_time`` is 0; L2's is the mean time of a read that went to the disk.

    Example::

        >>> MemoryCache().stats().hit_rate
        0.0
    """

    level: str
    hits: int
    misses: int
    hit_rate: float
    evictions: int
    expirations: int
    size: int
    errors: int
    bypassed: int
    load_time: float
    queued: int = 0
    dropped: int = 0
    written: int = 0
    rejected: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class TwoLevelStats:
    """Both levels plus the whole cache: ``hit_rate`` counts a hit in either level.

    ``loads`` and ``load_time`` (mean seconds) are the loader calls (misses
    that went to the origin); ``coalesced`` callers waited for another's load;
    ``stale_served`` answers came from stale-while-revalidate. ``l3`` is
    the Redis level's figures when the cache has one (its hits count too).

    Example::

        >>> TwoLevelCache(l2=None).stats().l2 is None
        True
    """

    l1: Optional[CacheStats]
    l2: Optional[CacheStats]
    requests: int
    hits: int
    hit_rate: float
    loads: int
    load_time: float
    coalesced: int
    stale_served: int
    refresh_errors: int
    l3: Optional[CacheStats] = None


class _Counters:
    __slots__ = (
        "hits",
        "misses",
        "evictions",
        "expirations",
        "errors",
        "bypassed",
        "reads",
        "read_time",
        "dropped",
        "written",
    )

    def __init__(self) -> None:
        self.hits = self.misses = self.evictions = self.expirations = self.errors = self.bypassed = self.reads = 0
        self.dropped = self.written = 0
        self.read_time = 0.0

    def snapshot(self, level: str, size: int, queued: int = 0, rejected: int = 0) -> CacheStats:
        total = self.hits + self.misses
        return CacheStats(
            level=level,
            hits=self.hits,
            misses=self.misses,
            hit_rate=self.hits / total if total else 0.0,
            evictions=self.evictions,
            expirations=self.expirations,
            size=size,
            errors=self.errors,
            bypassed=self.bypassed,
            load_time=self.read_time / self.reads if self.reads else 0.0,
            queued=queued,
            dropped=self.dropped,
            written=self.written,
            rejected=rejected,
        )


# --- L1 -----------------------------------------------------------------------------------

PolicyArg = Union[
    str,
    "cachetools.Cache[str, CacheEntry]",
    Callable[[int], "cachetools.Cache[str, CacheEntry]"],
]


class MemoryCache:
    """L1: entries in a cachetools cache chosen by ``policy`` (see the module docstring).

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> clock = FakeClock()
        >>> l1 = MemoryCache(maxsize=2, policy="fifo", clock=clock)
        >>> for k in "abc":
        ...     l1.set(k, CacheEntry(value=k, expires=clock.wall() + 60, stale_until=clock.wall() + 60))
        >>> sorted(l1.keys()), l1.stats().evictions
        (['b', 'c'], 1)
    """

    level = "l1"

    def __init__(
        self,
        maxsize: int = 100,
        ttl: float = 60.0,
        policy: PolicyArg = "lru",
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if not isinstance(maxsize, int) or maxsize < 1:
            raise ConfigurationError(f"L1 maxsize must be an int >= 1, got {maxsize!r}")
        if not ttl > 0:
            raise ConfigurationError(f"L1 ttl must be positive, got {ttl!r}")
        self.maxsize = maxsize
        self.ttl = float(ttl)
        self.clock = clock
        self.counters = _Counters()
        self._data = self._make(policy, maxsize)
        self.policy = policy if isinstance(policy, str) else type(self._data).__name__
        evict = self._data.popitem
        counters = self.counters

        def popitem() -> tuple[str, CacheEntry]:
            counters.evictions += 1
            return evict()

        self._data.popitem = popitem  # type: ignore[method-assign]

    def _make(self, policy: PolicyArg, maxsize: int) -> cachetools.Cache[str, CacheEntry]:
        if isinstance(policy, str):
            name = policy.lower()
            if name == "lru":
                return cachetools.LRUCache(maxsize)
            if name == "lfu":
                return cachetools.LFUCache(maxsize)
            if name == "fifo":
                return cachetools.FIFOCache(maxsize)
            if name == "ttl":
                return cachetools.TLRUCache(maxsize, lambda k, e, now: e.stale_until, timer=self.clock.wall)
            raise ConfigurationError(f"unknown L1 policy {policy!r}; use lru, lfu, fifo, ttl or a cachetools.Cache")
        made = policy if isinstance(policy, cachetools.Cache) else policy(maxsize)
        if not isinstance(made, cachetools.Cache):
            raise ConfigurationError(f"custom L1 policy must be or make a cachetools.Cache, got {made!r}")
        return made

    def get(self, key: str) -> Optional[CacheEntry]:
        """The entry if still servable (expired ones are dropped and counted)."""
        entry = self._data.get(key)
        if entry is not None and not entry.servable(self.clock.wall()):
            self._data.pop(key, None)
            self.counters.expirations += 1
            return None
        return entry

    def set(self, key: str, entry: CacheEntry) -> None:
        """Store an entry (evicting by policy when full)."""
        self._data[key] = entry

    def delete(self, key: str) -> bool:
        """Drop ``key``; True if it was there."""
        return self._data.pop(key, None) is not None

    def clear(self) -> None:
        """Drop everything."""
        self._data.clear()

    def keys(self) -> list[str]:
        """The keys held now."""
        return list(self._data.keys())

    def __len__(self) -> int:
        return len(self._data)

    def stats(self) -> CacheStats:
        """This level's figures."""
        return self.counters.snapshot(self.level, len(self._data))

    def __repr__(self) -> str:
        return f"<MemoryCache {self.policy} {len(self._data)}/{self.maxsize} ttl={self.ttl:g}s>"


# --- where L2 lives -------------------------------------------------------------------------

_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


def cache_home() -> str:
    """The per-user cache base: ``$XDG_CACHE_HOME`` if set to an absolute path, else ``~/.cache``.

    The XDG Base Directory convention (a relative ``XDG_CACHE_HOME`` is
    ignored, as the specification says).

    Example::

        >>> import os
        >>> os.environ["XDG_CACHE_HOME"] = "/srv/cache"
        >>> cache_home()
        '/srv/cache'
        >>> del os.environ["XDG_CACHE_HOME"]
    """
    home = os.environ.get("XDG_CACHE_HOME", "")
    if os.path.isabs(home):
        return home
    return os.path.join(os.path.expanduser("~"), ".cache")


def _safe_name(name: str) -> str:
    cleaned = _UNSAFE_NAME.sub("_", name).strip("._") or "default"
    if len(cleaned) > 100:  # a path component is at most 255 bytes: keep it short and still unique
        # the end names the function (module.qualname): keep it, and a hash of the whole for uniqueness
        cleaned = hashlib.blake2b(name.encode(), digest_size=8).hexdigest() + "-" + cleaned[-80:].lstrip("._")
    return cleaned


def _default_app() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:  # python -m package: the package's name
        return spec.name.removesuffix(".__main__")
    argv0 = sys.argv[0] if sys.argv else ""
    return os.path.splitext(os.path.basename(argv0))[0]


def default_cache_dir(app: Optional[str] = None, name: str = "cache") -> str:
    """Where a persistent L2 lives by default: ``<cache_home()>/nexus_green/<app>/<name>``.

    ``app`` defaults to the running program's name (the script, or the
    package of ``python -m``); pass it to get a namespace that does not
    depend on how the process was started. Names are reduced to
    ``[A-Za-z0-9._-]``. Nothing is created here (:class:`DiskCache` does it).

    Example::

        >>> import os
        >>> os.environ["XDG_CACHE_HOME"] = "/srv/cache"
        >>> default_cache_dir("billing", "users")
        '/srv/cache/nexus_green/billing/users'
        >>> del os.environ["XDG_CACHE_HOME"]
    """
    return os.path.join(cache_home(), "nexus_green", _safe_name(app or _default_app()), _safe_name(name))


def _refuse_if_unsafe(path: str, st: os.stat_result) -> None:
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid != os.geteuid():
        raise ConfigurationError(
            f"L2 cache directory {path} belongs to uid {st.st_uid}, not to this process's user ({os.geteuid()}): "
            "its values are pickles, so its owner could make this process run code; use a directory of your own"
        )
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigurationError(
            f"L2 cache directory {path} is writable by group or others (mode {mode:#o}): its values are pickles, "
            f"so another user could make this process run code; run chmod 700 {path} or use another directory"
        )


def _private_dir(path: str, *, owned_from: str) -> None:
    """Make ``path`` with mode 0700 (missing parents too) and refuse any directory from ``owned_from`` down
    that another user owns or that group or others can write. Other OS errors are left to the first L2
    operation, which treats them as a fault (a miss, never a failed request).
    """
    path = os.path.abspath(path)
    top = os.path.abspath(owned_from)
    chain = [path]
    while chain[-1] != top and os.path.dirname(chain[-1]) != chain[-1]:
        chain.append(os.path.dirname(chain[-1]))
    try:
        os.makedirs(os.path.dirname(chain[-1]), 0o700, exist_ok=True)
        for d in reversed(chain):
            try:
                os.mkdir(d, 0o700)
            except FileExistsError:
                pass
            else:
                os.chmod(d, 0o700)  # whatever the umask
            st = os.stat(d)
            if not stat.S_ISDIR(st.st_mode):
                return
            _refuse_if_unsafe(d, st)
    except OSError as exc:
        log.warning(
            "cannot prepare L2 cache directory %s: %s: %s",
            path,
            type(exc).__name__,
            exc,
        )


# --- L2 -----------------------------------------------------------------------------------


class _Failure:
    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


_BATCH = 64  # writes per SQLite transaction: one commit for many; a read waits behind one batch at most
_INDEX_SLACK = 2.0  # seconds of store_time looked back when refreshing the key index (clock steps, slow commits)


_HUB_PICKLE_BYTES = 16 * 1024  # values known to be smaller are pickled by the writer greenlet, larger in the worker
_PICKLES_PER_TURN = 32  # small values pickled per turn of the hub (a few tens of microseconds)
_IDLE_WAIT = 0.005  # longest wait for an idle hub before a turn anyway: under full load L2 still gets <1% of it
_MODE_PICKLE = diskcache.core.MODE_PICKLE


def _approx_size(value: Any) -> int:
    """Bytes a queued value holds, where that is cheap to tell (bytes, str, a Response's body); else 0."""
    if isinstance(value, (bytes, bytearray, str)):
        return len(value) or 1
    body = getattr(value, "body", None)
    return len(body) + 1 if isinstance(body, (bytes, bytearray)) else 0


_LIVE_DISK_CACHES: weakref.WeakSet[DiskCache] = weakref.WeakSet()

# How an entry is stored: a tuple of builtins. Pickle spends most of its time naming classes and
# functions (CacheEntry, Response, their rebuild functions): a tuple pickles in a fifth of the time.
# Entries an earlier version stored (pickled CacheEntry objects) still read.
_STORED = "nexus_green.cache/1"


def _pack(entry: CacheEntry) -> tuple[Any, ...]:
    v = entry.value
    if type(v) is Response and not v.cached:
        h = v.headers
        read_only = type(h) is MappingProxyType
        response = (v.body, v.code, v.fid, v.qid, dict(h), read_only, v.latency, v.conn_id, v.tp)
        return (_STORED, "response", response, entry.expires, entry.stale_until, entry.tags)
    return (_STORED, "value", v, entry.expires, entry.stale_until, entry.tags)


def _unpack(stored: Any) -> Optional[CacheEntry]:
    """The entry a stored value holds; None when the value is not one of ours."""
    if isinstance(stored, CacheEntry):
        return stored
    if type(stored) is not tuple or len(stored) != 6 or stored[0] != _STORED:
        return None
    _, kind, v, expires, stale_until, tags = stored
    if kind == "response":
        body, code, fid, qid, headers, read_only, latency, conn_id, tp = v
        headers = MappingProxyType(headers) if read_only else headers
        v = make_response(body, code, fid, qid, headers, latency, conn_id, tp)
    return _entry(v, expires, stale_until, tags)


# diskcache 5's Cache table and the row its set() writes, as one upsert (SQLite >= 3.24).
_CACHE_COLUMNS = (
    "rowid",
    "key",
    "raw",
    "store_time",
    "expire_time",
    "access_time",
    "access_count",
    "tag",
    "size",
    "mode",
    "filename",
    "value",
)


_UPSERT_ROWS = 32  # rows per statement: few distinct statements to prepare, few GIL hand-overs


@functools.lru_cache(maxsize=_UPSERT_ROWS)
def _upsert(rows: int) -> str:
    """One statement for ``rows`` rows: one SQLite step, so the worker lets go of the GIL once, not per row."""
    return (
        "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, filename,"
        " value) VALUES "
        + ",".join(["(?, ?, ?, ?, ?, 0, NULL, ?, ?, ?, ?)"] * rows)
        + " ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time, expire_time = excluded.expire_time,"
        " access_time = excluded.access_time, access_count = 0, tag = NULL, size = excluded.size,"
        " mode = excluded.mode, filename = excluded.filename, value = excluded.value"
    )


_UPSERT_FITS: weakref.WeakKeyDictionary[diskcache.Cache, bool] = weakref.WeakKeyDictionary()


def _upsert_fits(cache: diskcache.Cache) -> bool:
    """True when the batch upsert writes exactly what ``cache.set`` would (checked once per database)."""
    fits = _UPSERT_FITS.get(cache)
    if fits is None:
        columns = tuple(row[1] for row in cache._sql("PRAGMA table_info(Cache)").fetchall())
        unique = {row[1] for row in cache._sql("PRAGMA index_list(Cache)").fetchall() if row[2]}
        fits = columns == _CACHE_COLUMNS and "Cache_key_raw" in unique and sqlite3.sqlite_version_info >= (3, 24)
        _UPSERT_FITS[cache] = fits
    return fits


class DiskCache:
    """L2: a diskcache directory driven from one worker thread (see the module docstring).

    Where it lives:

    * by default, in the per-user cache directory
      :func:`default_cache_dir` ``(app, name)``:
      ``$XDG_CACHE_HOME/nexus_green/<app>/<name>`` (``~/.cache/...`` when
      ``XDG_CACHE_HOME`` is unset), kept across restarts;
    * ``directory=...``: that directory, kept;
    * ``temporary=True``: a private temporary directory, removed on
      :meth:`close` (what the default was before).

    Directories it creates get mode 0700. Values are pickles, and unpickling
    runs code: a directory that another user owns or that group or others
    can write (for the default location: any of ``nexus_green/<app>/<name>``)
    is refused with a :class:`~nexus_green.errors.ConfigurationError` that
    names it. ``size_limit`` caps the bytes on disk (diskcache culls past it),
    ``max_items`` the entries. Extra keyword ``settings`` go to
    ``diskcache.Cache`` (e.g. ``sqlite_*`` pragmas).

    Writes are written behind (``write_behind=True``, the default):
    :meth:`set` puts the entry in a bounded queue and returns at once; one
    writer greenlet hands the queue to the worker thread in batches (one
    SQLite transaction each), so neither the caller nor the hub waits for the
    disk. The queue holds at most ``max_queued`` entries and
    ``max_queued_bytes`` of values (bytes, str and response bodies are
    counted); a write that does not fit is dropped and counted
    (``stats().dropped``), never waited for. :meth:`get` sees queued writes
    first (read-your-writes in this process). A failing disk is counted,
    logged and bypassed as before; the batch it failed and the writes still
    queued then are dropped (counted in ``dropped``). :meth:`flush` waits for the queue, :meth:`close`
    flushes before it closes (bounded: each batch by ``op_timeout``); SQLite
    commits a batch whole or not at all. ``write_behind=False`` writes in the
    caller's call, as before.

    A read for a key this level does not hold costs no disk read: the level
    keeps the set of its keys in memory (loaded from the disk in the worker at
    first use, about 100 bytes a key, at most about ``2 * max_items``), and
    picks up what other processes store in the same directory within a second
    (SQLite's ``data_version``).

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> clock = FakeClock()
        >>> l2 = DiskCache(temporary=True, clock=clock)
        >>> l2.set("k", CacheEntry(value=b"v", expires=clock.wall() + 5, stale_until=clock.wall() + 5))
        True
        >>> l2.get("k").value                   # from the queue: read-your-writes
        b'v'
        >>> l2.flush(), l2.stats().size, l2.stats().written
        (True, 1, 1)
        >>> l2.close()
    """

    level = "l2"

    def __init__(
        self,
        directory: Optional[str] = None,
        *,
        temporary: bool = False,
        app: Optional[str] = None,
        name: str = "cache",
        max_items: int = 10_000,
        size_limit: int = DEFAULT_SIZE_LIMIT,
        ttl: float = 86_400.0,
        eviction_policy: str = "least-frequently-used",
        busy_timeout: float = 0.05,
        op_timeout: float = 2.0,
        fault_cooldown: float = 5.0,
        max_pending: int = 1024,
        write_behind: bool = True,
        max_queued: int = 1024,
        max_queued_bytes: int = 64 * 1024 * 1024,
        write_delay: float = 0.01,
        clock: Clock = SYSTEM_CLOCK,
        **settings: Any,
    ) -> None:
        if eviction_policy not in _ORDER_COLUMN:
            raise ConfigurationError(
                f"unknown L2 eviction policy {eviction_policy!r}; use one of {', '.join(_ORDER_COLUMN)}"
            )
        if not isinstance(max_items, int) or max_items < 1:
            raise ConfigurationError(f"L2 max_items must be an int >= 1, got {max_items!r}")
        if not ttl > 0:
            raise ConfigurationError(f"L2 ttl must be positive, got {ttl!r}")
        if not isinstance(size_limit, int) or size_limit < 1:
            raise ConfigurationError(f"L2 size_limit must be an int >= 1 (bytes), got {size_limit!r}")
        if not isinstance(max_queued, int) or max_queued < 1:
            raise ConfigurationError(f"L2 max_queued must be an int >= 1, got {max_queued!r}")
        if not isinstance(max_queued_bytes, int) or max_queued_bytes < 1:
            raise ConfigurationError(f"L2 max_queued_bytes must be an int >= 1, got {max_queued_bytes!r}")
        if temporary and directory is not None:
            raise ConfigurationError("pass either directory= or temporary=True to DiskCache, not both")
        self._own_dir = temporary
        if temporary:
            self.directory = tempfile.mkdtemp(prefix="nexus_green-cache-")  # mode 0700, ours
        elif directory is None:
            self.directory = default_cache_dir(app, name)
            _private_dir(self.directory, owned_from=os.path.join(cache_home(), "nexus_green"))
        else:
            self.directory = os.fspath(directory)
            _private_dir(self.directory, owned_from=self.directory)
        if self._own_dir:
            self._finalizer: Optional[weakref.finalize] = weakref.finalize(self, shutil.rmtree, self.directory, True)
        else:
            self._finalizer = None
        self.max_items = max_items
        self.size_limit = size_limit
        self.ttl = float(ttl)
        self.eviction_policy = eviction_policy
        self.busy_timeout = busy_timeout
        self.op_timeout = op_timeout
        self.fault_cooldown = fault_cooldown
        self.max_pending = max_pending
        self.write_behind = write_behind
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.write_delay = write_delay
        self.clock = clock
        self.settings = settings
        self.counters = _Counters()
        self.last_error: Optional[BaseException] = None
        self._cache: Optional[diskcache.Cache] = None
        self._pool: Optional[ThreadPool] = None
        self._pending = 0
        self._broken_until = float("-inf")
        self._closing = False
        self._closed = False
        # Write-behind: key -> (entry, bytes), oldest first; the batch the worker is writing now.
        self._queued: dict[str, tuple[CacheEntry, int]] = {}
        self._queued_bytes = 0
        self._writing: dict[str, CacheEntry] = {}
        self._writer: Optional[gevent.Greenlet] = None
        self._wake = Event()  # a full batch, or someone flushing: stop lingering
        self._hub_pickle: Optional[tuple[int, int]] = None  # (protocol, largest inline pickle), once known
        self._flushers = 0
        # The keys on disk (a superset: a stale key costs one disk read, then leaves); None until loaded.
        self._index: Optional[set[str]] = None
        self._index_adds: Optional[set[str]] = None  # keys queued while the index loads
        self._index_wanted = False
        self._index_since = 0.0  # store_time (wall clock of the writers) already seen
        self._index_version: Optional[int] = None  # SQLite data_version when last looked
        self._index_next = float("-inf")  # clock.now() of the next look for other processes' writes
        self._epoch = 0  # bumped in a forked child: the parent's writer greenlet must not touch the child's state
        self._w_unculled = 0  # the worker's: rows written since it last culled and evicted, and when that was
        self._w_culled_at = float("-inf")
        _LIVE_DISK_CACHES.add(self)

    # The worker side: runs in the dedicated thread, owns the only connection.
    def _open(self) -> diskcache.Cache:
        cache = self._cache
        if cache is None:
            # Built in two steps so a failed __init__ (corrupt file, full disk) can close the
            # connection it had already opened instead of leaking its descriptors.
            cache = diskcache.Cache.__new__(diskcache.Cache)
            try:
                cache.__init__(
                    self.directory,
                    timeout=self.busy_timeout,
                    eviction_policy=self.eviction_policy,
                    size_limit=self.size_limit,
                    **self.settings,
                )
            except BaseException:
                try:
                    cache.close()
                except Exception:  # pragma: no cover - failed before diskcache set up its thread-local
                    pass
                raise
            # diskcache keeps its connection in a threading.local; only this worker thread ever uses this
            # Cache, so a plain namespace holds it instead. Then the connection lives exactly as long as
            # the Cache object: a forked child that drops the parent's Cache closes the descriptors it
            # inherited (a thread-local of a thread the child does not have is never freed), and SQLite
            # does not keep the child's own descriptors open behind it at close.
            cache._local = types.SimpleNamespace(**vars(cache._local))
            self._cache = cache
            if type(cache.disk) is diskcache.Disk and _upsert_fits(cache):
                self._hub_pickle = (cache.disk.pickle_protocol, cache.disk.min_file_size)
        return cache

    def _in_worker(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        # Errors travel back as values: raised in the worker, gevent would also print them.
        if self._closed:  # close() stopped waiting for this worker (a stalled disk): leave the disk alone
            self._w_shutdown()
            return _Failure(ConfigurationError(f"L2 cache at {self.directory} is closed"))
        try:
            return fn(self._open(), *args)
        except Exception as exc:
            cause = exc.__context__
            if isinstance(exc, sqlite3.OperationalError) and isinstance(cause, sqlite3.Error):
                # SQLite already rolled back (a full disk does that): diskcache's ROLLBACK then fails
                # and would hide what went wrong.
                if "no transaction is active" in str(exc):
                    return _Failure(cause)
            return _Failure(exc)
        finally:
            if self._closed:  # close() gave up on this call: the connection closes as soon as it ends
                self._w_shutdown()

    @staticmethod
    def _w_get(cache: diskcache.Cache, key: str) -> Any:
        try:
            return cache.get(key, default=None, retry=False)
        except _L2_FAULTS:
            raise
        except Exception:  # a value that no longer unpickles: drop it, it is a miss
            cache.delete(key, retry=False)
            return _CORRUPT

    def _w_evict(self, cache: diskcache.Cache) -> list[str]:
        excess = len(cache) - self.max_items
        if excess <= 0:
            return []
        column = _ORDER_COLUMN[self.eviction_policy]
        # diskcache culls by bytes only; count-based eviction reads its table. One DELETE for all of
        # them (its triggers keep count and size), not a delete() -- a page of Python -- per key.
        with cache.transact(retry=False):
            rows = cache._sql(
                f"SELECT rowid, key, filename FROM Cache WHERE raw = 1 AND key != ? ORDER BY {column} LIMIT ?",
                (_GENS_KEY, excess),
            ).fetchall()
            for at in range(0, len(rows), 500):
                chunk = rows[at : at + 500]
                cache._sql(f"DELETE FROM Cache WHERE rowid IN ({','.join('?' * len(chunk))})", [r[0] for r in chunk])
        for _, _, filename in rows:
            if filename is not None:
                cache.disk.remove(filename)
        return [k for _, k, _ in rows]

    def _w_set(self, cache: diskcache.Cache, key: str, value: Any, expire: Optional[float]) -> int:
        cache.set(key, value, expire=expire, retry=False)
        return len(self._w_evict(cache))

    def _w_write(
        self, cache: diskcache.Cache, items: list[tuple[str, Any, float, Optional[memoryview]]]
    ) -> tuple[int, list[str], list[tuple[str, Exception]]]:
        """Write a batch in one transaction: all of it is committed, or (on a fault) none of it.

        diskcache's ``set`` runs five statements and a page of Python per entry (about 35 us, most of
        it holding the GIL the hub needs); when the table is the one diskcache 5 makes, the batch is
        one multi-row upsert (rows pickled by the writer greenlet, or made by diskcache's own
        ``Disk.store``); culling and eviction follow at most once a second (:meth:`_w_maintain`).
        The row is the one ``set`` writes, and diskcache's triggers keep its count and size.
        """
        failures: list[tuple[str, Exception]] = []
        if not _upsert_fits(cache):
            stored = 0
            with cache.transact(retry=False):
                for key, value, expire, _ in items:
                    try:
                        cache.set(key, _pack(value), expire=expire, retry=False)
                    except _L2_FAULTS:
                        raise
                    except Exception as exc:  # e.g. a value that cannot be pickled: that entry only
                        failures.append((key, exc))
                    else:
                        stored += 1
                evicted = self._w_evict(cache)
            return stored, evicted, failures
        disk = cache.disk
        now = time.time()
        rows = []
        written: list[str] = []
        for key, value, expire, blob in items:
            if blob is not None:  # pickled on the hub, small enough for the row (what Disk.store would do)
                rows.append((key, True, now, now + expire, now, 0, _MODE_PICKLE, None, blob))
                continue
            try:
                db_key, raw = disk.put(key)
                size, mode, filename, db_value = disk.store(_pack(value), False, key=key)
            except Exception as exc:  # e.g. a value that cannot be pickled: that entry only
                failures.append((key, exc))
                continue
            if filename is not None:
                written.append(filename)
            rows.append((db_key, raw, now, now + expire, now, size, mode, filename, db_value))
        old_files: list[str] = []
        try:
            with cache.transact(retry=False):
                sql = cache._sql
                if rows:
                    marks = ",".join("?" * len(rows))
                    old_files = [
                        f
                        for (f,) in sql(
                            f"SELECT filename FROM Cache WHERE filename IS NOT NULL AND key IN ({marks})",
                            [r[0] for r in rows],
                        ).fetchall()
                    ]
                    for at in range(0, len(rows), _UPSERT_ROWS):
                        chunk = rows[at : at + _UPSERT_ROWS]
                        sql(_upsert(len(chunk)), [field for row in chunk for field in row])
                evicted = self._w_maintain(cache, len(rows))
        except BaseException:
            for f in written:  # the rows that named them were rolled back
                disk.remove(f)
            raise
        for f in old_files:
            if f not in written:
                disk.remove(f)
        return len(rows), evicted, failures

    def _w_maintain(self, cache: diskcache.Cache, rows: int) -> list[str]:
        """Cull by expiry and size (diskcache) and evict by count, once a second or every max_items/10 rows.

        Each is a few statements and a page of Python holding the GIL; per batch they cost the hub
        more than the batch itself. Between two passes L2 may hold up to a tenth more than its bounds.
        """
        self._w_unculled += rows
        now = time.monotonic()
        if self._w_unculled < max(1, self.max_items // 10) and now - self._w_culled_at < 1.0:
            return []
        self._w_unculled = 0
        self._w_culled_at = now
        cache.cull(retry=False)
        return self._w_evict(cache)

    @staticmethod
    def _w_index(
        cache: diskcache.Cache, since: float, version: Optional[int]
    ) -> tuple[Optional[list[str]], float, int]:
        """Keys stored since ``since`` (all when 0), unless no other connection wrote since ``version``."""
        now = time.time()  # diskcache's store_time is the writer's time.time()
        (current,) = cache._sql("PRAGMA data_version").fetchone()
        if since and current == version:
            return None, since, current
        rows = cache._sql("SELECT key FROM Cache WHERE raw = 1 AND store_time >= ?", (since,)).fetchall()
        return [k for (k,) in rows if isinstance(k, str)], now - _INDEX_SLACK, current

    # The hub side.
    def _run(self, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """Run ``fn(cache, *args)`` in the worker; ``(False, None)`` when bypassed or failed."""
        c = self.counters
        if self._closed or self.clock.now() < self._broken_until or self._pending >= self.max_pending:
            c.bypassed += 1
            return False, None
        epoch = self._epoch
        self._pending += 1
        timer = gevent.Timeout(self.op_timeout)
        timer.start()
        try:
            pool = self._pool
            if pool is None:
                pool = self._pool = ThreadPool(1)
            result = pool.apply(self._in_worker, (fn, args))
            if isinstance(result, _Failure):
                raise result.error
            return True, result
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self._fault(
                f"L2 operation did not finish within {self.op_timeout}s (disk stalled or database locked)",
                exc,
            )
        except _L2_FAULTS as exc:
            self._fault(f"L2 cache at {self.directory} failed: {type(exc).__name__}: {exc}", exc)
        except Exception as exc:  # e.g. a value that cannot be pickled: this call fails, the level is fine
            self._op_failed(exc)
        finally:
            timer.close()
            if self._epoch == epoch:
                self._pending -= 1
        return False, None

    def _op_failed(self, exc: Exception) -> None:
        self.counters.errors += 1
        self.last_error = exc
        _rlog.warning(("l2-op", type(exc)), "L2 cache operation failed: %s: %s", type(exc).__name__, exc)

    def _fault(self, message: str, exc: BaseException) -> None:
        self.counters.errors += 1
        self.last_error = exc
        self._broken_until = self.clock.now() + self.fault_cooldown
        _rlog.warning(("l2-fault", self.directory), "%s; bypassing L2 for %.1fs", message, self.fault_cooldown)

    @property
    def available(self) -> bool:
        """False while the level is closed or cooling down after a fault."""
        return not self._closed and self.clock.now() >= self._broken_until

    def get(self, key: str) -> Optional[CacheEntry]:
        """The entry if present and servable; None on a miss, a bypass or a fault.

        A write still queued is seen first; a key the level does not hold is
        a miss without a disk read.
        """
        now = self.clock.now()
        if self._closed or now < self._broken_until:
            self.counters.bypassed += 1
            return None
        queued = self._queued.get(key)
        entry = queued[0] if queued is not None else self._writing.get(key)
        if entry is not None:
            if entry.servable(self.clock.wall()):
                return entry
            self.counters.expirations += 1
            return None
        index = self._index
        if index is None:
            self._want_index()
        elif key not in index:
            if now >= self._index_next:  # look for other processes' writes, once a second
                self._want_index()
            return None
        ok, value = self._run(self._w_get, key)
        if not ok:
            return None
        c = self.counters
        c.reads += 1
        c.read_time += self.clock.now() - now
        if value is _CORRUPT:
            c.errors += 1
            value = None
        entry = _unpack(value)
        if entry is None:  # a miss, or something that is not ours
            if value is None and self._index is not None:
                self._index.discard(key)
            return None
        if not entry.servable(self.clock.wall()):
            c.expirations += 1
            self.delete(key)
            return None
        return entry

    def accepts(self, key: str) -> bool:
        """Whether :meth:`set` may take a write of ``key`` now; False (counted as dropped) when the queue is full.

        Lets a caller skip building an entry that would be dropped.

        Example::

            >>> l2 = DiskCache(temporary=True, max_queued=1, write_delay=60)
            >>> l2.accepts("k"), l2.set("k", CacheEntry(value=1, expires=2e9, stale_until=2e9)), l2.accepts("j")
            (True, True, False)
            >>> l2.stats().dropped, l2.close()
            (1, None)
        """
        queue = self._queued
        if len(queue) < self.max_queued or key in queue or not self.write_behind:
            return True
        self.counters.dropped += 1
        return False

    def set(self, key: str, entry: CacheEntry) -> bool:
        """Store an entry (queue it, with write-behind); False if it was bypassed, dropped or failed."""
        if not self.write_behind:
            expire = max(1.0, entry.stale_until - self.clock.wall())
            ok, evicted = self._run(self._w_set, key, _pack(entry), expire)
            if ok:
                self.counters.evictions += evicted
                self.counters.written += 1
            return bool(ok)
        if self._closing or self._closed or self.clock.now() < self._broken_until:
            self.counters.bypassed += 1
            return False
        queue = self._queued
        value = entry.value
        size = len(value.body) + 1 if type(value) is Response else _approx_size(value)
        old = queue.get(key)
        total = self._queued_bytes + size - (old[1] if old is not None else 0)
        if (old is None and len(queue) >= self.max_queued) or total > self.max_queued_bytes:
            self.counters.dropped += 1  # never wait, never grow: a cache may forget
            return False
        queue[key] = (entry, size)
        self._queued_bytes = total
        if len(queue) == _BATCH:
            self._wake.set()
        if self._index is not None:
            self._index.add(key)
        elif self._index_adds is not None:
            self._index_adds.add(key)
        if self._writer is None:
            self._writer = spawn(self._drain, self._epoch, name="l2-writer")
        return True

    def _want_index(self) -> None:
        self._index_wanted = True
        self._index_next = self.clock.now() + 1.0
        if self._writer is None and not self._closing:
            self._writer = spawn(self._drain, self._epoch, name="l2-writer")

    def _drain(self, epoch: int) -> None:
        """The writer greenlet: the key index when asked, then the queue in batches, until both are done."""
        lingered = False
        try:
            while self._epoch == epoch:
                if self._index_wanted:
                    self._index_wanted = False
                    self._sync_index(epoch)
                    continue
                queue = self._queued
                if not queue:
                    return
                hurry = self._flushers or self._closing
                if not lingered and len(queue) < _BATCH and not hurry:
                    # Let a batch gather: one worker round trip and one commit for many misses.
                    lingered = True
                    self._wake.clear()
                    self._wake.wait(self.write_delay)
                    continue
                lingered = False
                if self._closed or self.clock.now() < self._broken_until:
                    self.counters.dropped += len(queue)  # the disk is failing: these writes are skipped
                    queue.clear()
                    self._queued_bytes = 0
                    return
                writing = {}
                for key in list(itertools.islice(queue, _BATCH)):
                    entry, size = queue.pop(key)
                    self._queued_bytes -= size
                    writing[key] = (entry, size)
                self._writing = {key: entry for key, (entry, _) in writing.items()}  # still seen by get()
                items = self._prepare(writing, hurry)
                if self._epoch != epoch:
                    return
                # A delete or clear() while the batch was prepared took its key out of _writing: skip it.
                current = self._writing
                items = [item for item in items if current.get(item[0]) is item[1]]
                ok, result = self._run(self._w_write, items)
                if self._epoch != epoch:
                    return
                self._writing = {}
                if not ok:
                    self.counters.dropped += len(items)  # a fault (counted in errors) or a bypass: not written
                else:
                    stored, evicted, failures = result
                    c = self.counters
                    c.written += stored
                    c.evictions += len(evicted)
                    index = self._index
                    if index is not None:
                        index.difference_update(evicted)
                    for key, exc in failures:
                        self._op_failed(exc)
                        if index is not None:
                            index.discard(key)
        finally:
            if self._epoch == epoch:
                self._writer = None
                self._writing = {}

    def _prepare(
        self, writing: dict[str, tuple[CacheEntry, int]], hurry: int
    ) -> list[tuple[str, CacheEntry, float, Optional[memoryview]]]:
        """The batch's rows: small values pickled here, on the hub, a few at a time in its idle time.

        Pickling in the worker would hold the GIL while the hub needs it (Python work in a thread is
        not parallel), so small values are pickled by this greenlet (as tuples of builtins, about
        1 us each), 32 per turn, when the hub has nothing else to do (``gevent.idle()``): requests
        first. A hub that is never idle still gives the writer a turn every 5 ms (under 1% of it);
        past that the queue fills and the cache forgets (``dropped``). Flushing does not wait.
        """
        pickling = self._hub_pickle
        wall = self.clock.wall()
        items = []
        turn = 0
        for key, (entry, size) in writing.items():
            blob = None
            if pickling is not None and 0 < size < _HUB_PICKLE_BYTES:
                if not hurry and turn % _PICKLES_PER_TURN == 0:
                    with gevent.Timeout(_IDLE_WAIT, False):  # a hub never idle still gets a few written
                        gevent.idle()
                turn += 1
                try:
                    data = pickle.dumps(_pack(entry), protocol=pickling[0])
                except Exception as exc:  # e.g. a value that cannot be pickled: that entry only
                    self._op_failed(exc)
                    continue
                if len(data) < pickling[1]:  # what Disk.store keeps in the row (larger: a file, by the worker)
                    blob = sqlite3.Binary(data)
            items.append((key, entry, max(1.0, entry.stale_until - wall), blob))
        return items

    def _sync_index(self, epoch: int) -> None:
        full = self._index is None
        if full:
            self._index_adds = set()
        ok, result = self._run(self._w_index, 0.0 if full else self._index_since, self._index_version)
        if self._epoch != epoch:
            return
        adds, self._index_adds = self._index_adds, None
        if not ok:
            return
        keys, self._index_since, self._index_version = result
        if full:
            self._index = set(keys)
            self._index.update(adds or ())
        elif keys:
            assert self._index is not None
            self._index.update(keys)
        if self._index is not None and len(self._index) > 2 * self.max_items + self.max_queued:
            self._index = None  # too many stale keys (culled by size, deleted elsewhere): load afresh next time

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait (at most ``timeout`` seconds; None: until done) for the queued writes to reach the disk.

        True when nothing is left queued. A write that failed counts as done
        (it is in ``errors`` or ``bypassed``).
        """
        writer = self._writer
        if writer is not None and writer is not gevent.getcurrent():
            self._flushers += 1
            self._wake.set()
            try:
                writer.join(timeout)
            finally:
                self._flushers -= 1
        return not self._queued and not self._writing

    def get_meta(self, key: str) -> tuple[bool, Any]:
        """Read an internal record (not an entry); ``(ok, value)``."""
        ok, value = self._run(self._w_get, key)
        return ok, (None if value is _CORRUPT else value)

    def set_meta(self, key: str, value: Any) -> bool:
        """Write an internal record that never expires (now, not behind)."""
        return self._run(self._w_set, key, value, None)[0]

    @staticmethod
    def _w_delete(cache: diskcache.Cache, key: str) -> bool:
        return bool(cache.delete(key, retry=False))

    @staticmethod
    def _w_clear(cache: diskcache.Cache) -> int:
        return int(cache.clear(retry=False))

    @staticmethod
    def _w_len(cache: diskcache.Cache) -> int:
        return len(cache)

    def delete(self, key: str) -> bool:
        """Drop ``key`` (queued or on disk); True if it was there."""
        queued = self._queued.pop(key, None)
        if queued is not None:
            self._queued_bytes -= queued[1]
        writing = self._writing.pop(key, None)  # the worker runs the delete after that batch
        if self._index is not None:
            self._index.discard(key)
        on_disk = bool(self._run(self._w_delete, key)[1])
        return on_disk or queued is not None or writing is not None

    def clear(self) -> bool:
        """Drop everything (queued writes too); False if the level was bypassed or failed."""
        self._queued.clear()
        self._queued_bytes = 0
        self._writing = {}
        ok = self._run(self._w_clear)[0]
        if ok:
            self._index = set() if self._index is not None else None
        return ok

    def __len__(self) -> int:
        ok, n = self._run(self._w_len)
        return int(n) if ok else 0

    def stats(self) -> CacheStats:
        """This level's figures (``size`` is on disk, -1 when the level cannot be read)."""
        ok, n = self._run(self._w_len)
        return self.counters.snapshot(self.level, int(n) if ok else -1, len(self._queued) + len(self._writing))

    def _w_shutdown(self) -> None:
        cache, self._cache = self._cache, None
        if cache is not None:
            try:
                cache.close()
            except Exception as exc:  # pragma: no cover - sqlite3 close failing is not something to act on
                log.warning("closing L2 cache at %s failed: %s", self.directory, exc)

    def close(self) -> None:
        """Flush the queued writes, close the connection in the worker, stop it, remove a private directory.

        Bounded: each batch of the flush and the close itself wait at most
        ``op_timeout`` (a stalled disk is a fault: what is still queued is
        dropped and counted). If the worker is stuck, its connection closes
        when the thread ends after the stuck call.
        """
        if self._closing:
            return
        self._closing = True  # no new writes from here
        writer = self._writer
        if writer is not None:
            self._wake.set()
            batches = 2 + (len(self._queued) + _BATCH - 1) // _BATCH
            if not self.flush(self.op_timeout * batches):  # each batch is bounded by op_timeout: a safety net
                in_flight = len(self._writing)  # the worker may still commit it, whole or not at all
                writer.kill(block=True, timeout=self.op_timeout)
                self.counters.dropped += in_flight
        left = len(self._queued)
        if left:
            self.counters.dropped += left
            log.warning("L2 cache at %s closed with %d writes not written (disk stalled)", self.directory, left)
            self._queued.clear()
            self._queued_bytes = 0
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            stuck = False
            timer = gevent.Timeout(self.op_timeout)
            timer.start()
            try:
                pool.apply(self._w_shutdown)
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                stuck = True
                log.warning("L2 worker busy at close; its connection closes when the stuck call ends")
            finally:
                timer.close()
            if stuck:
                # ThreadPool.kill() waits for its threads unless the hub runs it: the stuck thread then
                # ends after its call (closing the connection, see _in_worker), and close() does not hang.
                gevent.get_hub().loop.run_callback(pool.kill)
            else:
                pool.kill()
        if self._finalizer is not None:
            self._finalizer()

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's worker, connection, writer and queue (the parent writes it)."""
        self._epoch += 1
        writer, self._writer = self._writer, None
        self._pool = None  # its thread did not survive the fork: a new one on first use
        self._cache = None  # diskcache reconnects per process; the parent's connection stays the parent's
        self._pending = 0
        self._queued = {}
        self._queued_bytes = 0
        self._writing = {}
        self._index = self._index_adds = None
        self._index_wanted = False
        self._index_version = None
        self._wake = Event()
        self._flushers = 0
        if writer is not None:
            writer.kill(block=False)  # parked on the parent's worker forever otherwise

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("available" if self.available else "bypassed")
        kind = " temporary" if self._own_dir else ""
        queued = f" queued={len(self._queued) + len(self._writing)}" if self._queued or self._writing else ""
        return f"<DiskCache{kind} {self.directory} {state}{queued} max_items={self.max_items} ttl={self.ttl:g}s>"


def _disk_caches_after_fork() -> None:
    inherited = False
    for disk in list(_LIVE_DISK_CACHES):
        inherited = disk._cache is not None or inherited
        disk._after_fork_in_child()
    if inherited:
        # An sqlite3 connection sits in a reference cycle (its statement cache refers back to it):
        # collect now so the parent's descriptors close in the child at once, not at some later gc.
        gc.collect()


os.register_at_fork(after_in_child=_disk_caches_after_fork)


def _flush_at_exit() -> None:
    """At interpreter exit, write what is still queued (a script that never closes its cache still persists)."""
    for disk in list(_LIVE_DISK_CACHES):
        writer = disk._writer
        if writer is None or disk._closing:
            continue
        try:
            if writer.parent is not gevent.get_hub():  # another thread's hub: not ours to drive
                continue
            disk.flush(disk.op_timeout * (2 + len(disk._queued) // _BATCH))
        except Exception as exc:  # pragma: no cover - exit must go on whatever happens
            log.warning("flushing L2 cache at %s at exit failed: %s", disk.directory, exc)


atexit.register(_flush_at_exit)


# --- both levels ----------------------------------------------------------------------------


L = TypeVar("L")


def _level(value: Any, kind: type[L]) -> Optional[L]:
    if value is None or value is False:
        return None
    if not isinstance(value, kind):
        raise ConfigurationError(f"expected a {kind.__name__}, True or None, got {value!r}")
    return value


def _l2_level(l2: Any, *, app: Optional[str], name: str, clock: Clock) -> Optional[DiskCache]:
    if l2 is True:
        return DiskCache(app=app, name=name, clock=clock)
    if l2 == "temporary":
        return DiskCache(temporary=True, clock=clock)
    if isinstance(l2, str):
        raise ConfigurationError(f"l2 takes a DiskCache, True, 'temporary' or None, got {l2!r}")
    return _level(l2, DiskCache)


class _Flight:
    __slots__ = ("event", "done", "value", "error")

    def __init__(self) -> None:
        self.event: Optional[Event] = None  # made by the first caller that waits (most loads have none)
        self.done = False
        self.value: Any = None
        self.error: Optional[Exception] = None


class TwoLevelCache:
    """L1 + L2 + loader, with stampede protection and invalidation.

    ``l1``/``l2`` take a level, ``True`` for the default one, or ``None`` to
    turn it off. The default L2 persists in the per-user cache directory
    ``$XDG_CACHE_HOME/nexus_green/<app>/<name>`` (see :class:`DiskCache`);
    ``l2="temporary"`` gives a private one removed on :meth:`close`. ``stale_while_revalidate`` (seconds, default 0 = off) serves
    an expired entry for that long while one background greenlet reloads it.
    Callers waiting for another caller's load wait at most ``load_wait``
    seconds (and never past the deadline in force), then load themselves.

    Tag and Fid invalidation bump a generation: entries stored under an older
    generation are ignored (and dropped when met). Generations are kept in
    L2 too, so a restart sees them; another process sharing the directory
    sees them when it starts.

    ``l3`` takes a :class:`~nexus_green.middleware.cache_redis.RedisCache`:
    a level in Redis under L1 and L2, shared by every process (see
    docs/shared-state.md). Lookups go L1, L2, L3, then the loader; an L3 hit
    fills L1; stores go to every level (L3 inline, bounded by its link);
    invalidation by key, tag and Fid reaches L3, and tag generations are
    shared through Redis, so an invalidation in one process reaches all.

    Example::

        >>> cache = TwoLevelCache(l2=None)
        >>> cache.set("a", 1, tags=("user:1",)); cache.set("b", 2, tags=("user:2",))
        >>> cache.invalidate_tag("user:1")
        >>> cache.get("a"), cache.get("b")
        (None, 2)
    """

    def __init__(
        self,
        l1: Union[MemoryCache, bool, None] = True,
        l2: Union[DiskCache, bool, str, None] = True,
        *,
        stale_while_revalidate: float = 0.0,
        load_wait: float = 30.0,
        clock: Clock = SYSTEM_CLOCK,
        name: str = "cache",
        app: Optional[str] = None,
        l3: Optional[RedisCache] = None,
    ) -> None:
        self.clock = clock
        # Levels define __len__, so test their type, never their truth.
        self.l1: Optional[MemoryCache] = MemoryCache(clock=clock) if l1 is True else _level(l1, MemoryCache)
        self.l2: Optional[DiskCache] = _l2_level(l2, app=app, name=name, clock=clock)
        if stale_while_revalidate < 0:
            raise ConfigurationError(f"stale_while_revalidate must be >= 0, got {stale_while_revalidate!r}")
        self.stale_while_revalidate = float(stale_while_revalidate)
        self.load_wait = load_wait
        self.name = name
        self._gens: dict[str, int] = {}
        self._gens_loaded = False
        self._inflight: dict[str, _Flight] = {}
        self.requests = 0
        self.loads = 0
        self.load_time = 0.0
        self.coalesced = 0
        self.stale_served = 0
        self.refresh_errors = 0
        self.l3: Optional[RedisCache] = l3
        if l3 is not None:
            if not hasattr(l3, "attach"):
                raise ConfigurationError(f"l3 takes a RedisCache, got {l3!r}")
            l3.attach(self._gens, self._gens_changed)

    # -- tags
    def _gens_changed(self) -> None:
        """Another process raised a generation (L3): keep it in L2 too, for a restart while Redis is down."""
        if self.l2 is not None:
            self.l2.set_meta(_GENS_KEY, dict(self._gens))

    def _load_gens(self) -> None:
        if self._gens_loaded or self.l2 is None:
            return
        ok, stored = self.l2.get_meta(_GENS_KEY)
        if ok:
            self._gens_loaded = True
            if isinstance(stored, dict):
                for tag, gen in stored.items():
                    if gen > self._gens.get(tag, 0):
                        self._gens[tag] = gen

    def _current(self, entry: CacheEntry) -> bool:
        gens = self._gens
        for tag, gen in entry.tags:
            if gens.get(tag, 0) != gen:
                return False
        return True

    # -- lookups
    def lookup(self, key: str) -> tuple[Optional[CacheEntry], Optional[CacheEntry], str]:
        """``(fresh entry, stale entry, level)``: at most one is set; level names where it was found."""
        now = self.clock.wall()
        stale: Optional[CacheEntry] = None
        stale_level = ""
        self.requests += 1
        l1, l2, l3 = self.l1, self.l2, self.l3
        if l3 is not None and not l3.listening:
            l3.sync_if_due()  # not listening for invalidations: re-read the generations (bounded, rate-limited)
        if l1 is not None:
            # The hit path: one cachetools read, no timer, the generations only once a tag was invalidated.
            c = l1.counters
            c.reads += 1
            entry = l1._data.get(key)
            if entry is not None:
                if now >= entry.stale_until:
                    l1._data.pop(key, None)
                    c.expirations += 1
                    entry = None
                elif self._gens and not self._current(entry):
                    l1.delete(key)
                    entry = None
                elif now < entry.expires:
                    c.hits += 1
                    return entry, None, "l1"
            c.misses += 1
            if entry is not None:
                stale, stale_level = entry, "l1"
        if l2 is not None:
            self._load_gens()
            entry = l2.get(key)
            if entry is not None and not self._current(entry):
                l2.delete(key)
                entry = None
            if entry is not None and entry.fresh(now):
                l2.counters.hits += 1
                if l1 is not None:
                    self._fill_l1(l1, key, entry, now)
                return entry, None, "l2"
            l2.counters.misses += 1
            if stale is None and entry is not None:
                stale, stale_level = entry, "l2"
        if l3 is not None:
            entry = l3.get(key)
            if entry is not None and not l3.adopt_entry_tags(entry):
                entry = None  # stored before an invalidation: a miss (a newer value will replace it)
            if entry is not None and entry.fresh(now):
                l3.counters.hits += 1
                if l1 is not None:
                    self._fill_l1(l1, key, entry, now)
                return entry, None, "l3"
            l3.counters.misses += 1
            if stale is None and entry is not None:
                stale, stale_level = entry, "l3"
        return None, stale, stale_level

    def _fill_l1(self, l1: MemoryCache, key: str, entry: CacheEntry, now: float) -> None:
        """A lower level's hit goes into L1 for at most L1's ttl (and its stale window after that)."""
        expires = min(entry.expires, now + l1.ttl)
        stale_until = min(entry.stale_until, expires + self.stale_while_revalidate)
        l1.set(key, _entry(entry.value, expires, stale_until, entry.tags))

    def get(self, key: str, default: Any = None) -> Any:
        """The fresh cached value for ``key`` (from either level), else ``default``."""
        fresh, _, _ = self.lookup(key)
        return default if fresh is None else fresh.value

    def set(
        self,
        key: str,
        value: Any,
        *,
        ttl: Optional[float] = None,
        tags: Iterable[str] = (),
    ) -> None:
        """Store in every level; each keeps it for ``min(ttl, its own ttl)`` (its own ttl if None)."""
        now = self.clock.wall()
        l1, l2 = self.l1, self.l2
        if l2 is not None and not self._gens_loaded:
            self._load_gens()
        gens = self._gens
        tagged = tuple([(t, gens.get(t, 0)) for t in tags]) if tags else ()
        swr = self.stale_while_revalidate
        if l1 is not None:
            life = l1.ttl if ttl is None else min(ttl, l1.ttl)
            l1._data[key] = _entry(value, now + life, now + life + swr, tagged)
        if l2 is not None and l2.accepts(key):
            life = l2.ttl if ttl is None else min(ttl, l2.ttl)
            l2.set(key, _entry(value, now + life, now + life + swr, tagged))
        l3 = self.l3
        if l3 is not None:
            life = l3.ttl if ttl is None else min(ttl, l3.ttl)
            l3.set(key, _entry(value, now + life, now + life + swr, tagged))

    def get_or_load(
        self,
        key: str,
        loader: Callable[[], Any],
        *,
        ttl: Optional[float] = None,
        tags: Iterable[str] = (),
        should_cache: Optional[Callable[[Any], bool]] = None,
    ) -> tuple[Any, str]:
        """``(value, level)``: level is ``"l1"``/``"l2"``/``"l3"`` for a hit, ``"l1:stale"``/``"l2:stale"``
        for a stale-while-revalidate answer, ``""`` when loaded (by us or by the caller we waited for).

        Only values ``should_cache(value)`` accepts are stored (default: all).
        """
        fresh, stale, level = self.lookup(key)
        if fresh is not None:
            return fresh.value, level
        return self._after_miss(key, stale, level, loader, ttl, tuple(tags), should_cache)

    def _after_miss(
        self,
        key: str,
        stale: Optional[CacheEntry],
        level: str,
        loader: Callable[[], Any],
        ttl: Optional[float],
        tags: tuple[str, ...],
        should_cache: Optional[Callable[[Any], bool]],
    ) -> tuple[Any, str]:
        """What :meth:`get_or_load` does after a :meth:`lookup` found nothing fresh."""
        if stale is not None and self.stale_while_revalidate > 0:
            self.stale_served += 1
            if key not in self._inflight:
                spawn(
                    self._refresh,
                    key,
                    loader,
                    ttl,
                    tags,
                    should_cache,
                    name="cache-refresh",
                )
            return stale.value, level + ":stale"
        return self._load(key, loader, ttl, tags, should_cache), ""

    def _refresh(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: Optional[float],
        tags: tuple[str, ...],
        should_cache: Optional[Callable[[Any], bool]],
    ) -> None:
        try:
            self._load(key, loader, ttl, tags, should_cache)
        except Exception as exc:
            self.refresh_errors += 1
            _rlog.warning(
                ("refresh", type(exc)), "background refresh of %s failed: %s: %s", key, type(exc).__name__, exc
            )

    def _load(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: Optional[float],
        tags: tuple[str, ...],
        should_cache: Optional[Callable[[Any], bool]],
    ) -> Any:
        flight = self._inflight.get(key)
        if flight is not None:
            self.coalesced += 1
            if flight.event is None:
                flight.event = Event()
            flight.event.wait(
                max(
                    0.0,
                    cast(float, effective_timeout(self.load_wait, clock=self.clock)),
                )
            )
            if flight.done:
                if flight.error is not None:
                    raise flight.error
                return flight.value
            # The loader was killed or is too slow: load without it.
            return self._call(key, loader, ttl, tags, should_cache)
        flight = self._inflight[key] = _Flight()
        try:
            flight.value = self._call(key, loader, ttl, tags, should_cache)
        except Exception as exc:
            flight.error = exc
            flight.done = True
            raise
        else:
            flight.done = True
            return flight.value
        finally:
            if self._inflight.get(key) is flight:
                del self._inflight[key]
            if flight.event is not None:
                flight.event.set()

    def _call(
        self,
        key: str,
        loader: Callable[[], Any],
        ttl: Optional[float],
        tags: tuple[str, ...],
        should_cache: Optional[Callable[[Any], bool]],
    ) -> Any:
        t0 = self.clock.now()
        value = loader()
        self.loads += 1
        self.load_time += self.clock.now() - t0
        if should_cache is None or should_cache(value):
            self.set(key, value, ttl=ttl, tags=tags)
        return value

    # -- invalidation
    def invalidate(self, key: str) -> None:
        """Drop ``key`` from both levels."""
        if self.l1 is not None:
            self.l1.delete(key)
        if self.l2 is not None:
            self.l2.delete(key)
        if self.l3 is not None:
            self.l3.delete(key)

    def invalidate_tag(self, tag: str) -> None:
        """Make every entry stored with ``tag`` a miss (every level; with L3, in every process)."""
        self._load_gens()
        self._gens[tag] = self._gens.get(tag, 0) + 1
        if self.l3 is not None:
            self.l3.bump(tag, self._gens[tag])  # Redis's generation may be higher: it is adopted
        if self.l2 is not None:
            self.l2.set_meta(_GENS_KEY, dict(self._gens))

    def invalidate_fid(self, fid: int) -> None:
        """Make every cached response of ``fid`` a miss (the middleware tags entries ``fid:<n>``)."""
        self.invalidate_tag(f"fid:{fid}")

    def clear(self) -> None:
        """Drop everything in every level (tag generations are kept)."""
        if self.l3 is not None:
            self.l3.clear()
        if self.l1 is not None:
            self.l1.clear()
        if self.l2 is not None:
            self.l2.clear()
            if self._gens:
                self.l2.set_meta(_GENS_KEY, dict(self._gens))

    # -- figures and life
    def stats(self) -> TwoLevelStats:
        """Figures of both levels and of the whole cache."""
        s1 = self.l1.stats() if self.l1 is not None else None
        s2 = self.l2.stats() if self.l2 is not None else None
        s3 = self.l3.stats() if self.l3 is not None else None
        hits = (s1.hits if s1 else 0) + (s2.hits if s2 else 0) + (s3.hits if s3 else 0)
        return TwoLevelStats(
            l1=s1,
            l2=s2,
            requests=self.requests,
            hits=hits,
            hit_rate=hits / self.requests if self.requests else 0.0,
            loads=self.loads,
            load_time=self.load_time / self.loads if self.loads else 0.0,
            coalesced=self.coalesced,
            stale_served=self.stale_served,
            refresh_errors=self.refresh_errors,
            l3=s3,
        )

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait (at most ``timeout`` seconds) until L2's queued writes are on disk; True when none is left."""
        return self.l2.flush(timeout) if self.l2 is not None else True

    def close(self) -> None:
        """Close L3 (its listener, which may write generations to L2), then L2 (flush its queued writes,
        then its worker thread and connection)."""
        if self.l3 is not None:
            self.l3.close()
        if self.l2 is not None:
            self.l2.close()

    def __enter__(self) -> TwoLevelCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        l3 = f" l3={self.l3!r}" if self.l3 is not None else ""
        return f"<TwoLevelCache {self.name} l1={self.l1!r} l2={self.l2!r}{l3}>"


# --- keys ----------------------------------------------------------------------------------


def _part(h: Any, data: bytes) -> None:
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)


def request_key(request: Request, headers: Iterable[str] = ()) -> str:
    """A stable hash of endpoint, Fid, the selected headers and the body.

    Stable across processes and runs (blake2b, not ``hash()``), so L2 entries
    stay valid after a restart.

    Example::

        >>> a = Request(endpoint="svc", fid=1, body=b"q", headers={"lang": "en", "trace": "1"})
        >>> b = a.with_headers({"trace": "2"})
        >>> request_key(a) == request_key(b), request_key(a, ["lang"]) == request_key(b, ["lang"])
        (True, True)
        >>> request_key(a, ["trace"]) == request_key(b, ["trace"])
        False
    """
    h = hashlib.blake2b(digest_size=16)
    _part(h, request.endpoint.encode())
    _part(h, str(request.fid).encode())
    for name in sorted(set(headers)):
        value = request.headers.get(name)
        _part(
            h,
            name.encode() + (b"\x00-" if value is None else b"\x00=" + value.encode()),
        )
    _part(h, bytes(request.body))
    return "req:" + h.hexdigest()


def _canon(x: Any) -> str:
    if x is None or isinstance(x, (bool, int, float, str, bytes)):
        return f"{type(x).__name__}:{x!r}"
    if isinstance(x, (list, tuple)):
        return f"{type(x).__name__}(" + ",".join(_canon(v) for v in x) + ")"
    if isinstance(x, dict):
        return "dict(" + ",".join(sorted(f"{_canon(k)}={_canon(v)}" for k, v in x.items())) + ")"
    if isinstance(x, (set, frozenset)):
        return f"{type(x).__name__}(" + ",".join(sorted(_canon(v) for v in x)) + ")"
    return f"{type(x).__qualname__}:{x!r}"


def call_key(prefix: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """A stable key for a function call: built-in values by content (dicts and sets order-free).

    Other objects are keyed by ``repr``: give :func:`cached` a ``key=``
    function when that repr is not stable (e.g. it shows an id).

    Example::

        >>> call_key("f", (1, {"b": 2, "a": 1}), {}) == call_key("f", (1, {"a": 1, "b": 2}), {})
        True
        >>> call_key("f", (1,), {}) == call_key("f", ("1",), {})
        False
    """
    h = hashlib.blake2b(digest_size=16)
    _part(h, prefix.encode())
    _part(h, _canon(args).encode())
    _part(h, _canon(kwargs).encode())
    return "call:" + h.hexdigest()


# --- the middleware and the decorator ---------------------------------------------------------


def _ok(response: Any) -> bool:
    return isinstance(response, Response) and response.ok


_RESPONSE_FIELDS = ("body", "code", "fid", "qid", "headers", "latency", "conn_id", "cached", "tp")
_RESPONSE_SLOTS = tuple((Response.__dict__[n].__get__, Response.__dict__[n].__set__) for n in _RESPONSE_FIELDS)
_MEMO_BODY = 1024  # request bodies up to this size have their key remembered
_MEMO_KEYS = 4096  # remembered keys per middleware (oldest forgotten first)


def _as_hit(response: Any, level: str) -> Any:
    """A copy of a cached response that says where it came from (``cached``) and took no time (``latency``)."""
    if type(response) is not Response:
        return response.replace(cached=level, latency=0.0)
    r = _new(Response)  # dataclasses.replace costs ~2 us; copying the slots a fifth of that
    for get, put in _RESPONSE_SLOTS:
        put(r, get(response))
    _RESPONSE_SLOTS[7][1](r, level)
    _RESPONSE_SLOTS[5][1](r, 0.0)
    return r


class CacheMiddleware:
    """Caches responses of the selected requests (order 200). Caching is opt-in.

    ``when`` selects the requests: a Fid, Fids, or a predicate (required).
    ``headers`` names the headers that enter the key (:func:`request_key`),
    or pass a ``key`` function. Only successful responses are cached unless
    ``cache_errors=True`` or a ``should_cache`` predicate says otherwise.
    Entries are tagged ``fid:<n>`` plus ``tags(request)``. A request with
    ``context["cache"] = False`` skips the cache. Hits come back with
    ``response.cached`` set to the level (``"l1"``, ``"l2"``, or
    ``"l1:stale"``/``"l2:stale"``) and ``latency`` 0.

    Without ``cache`` it makes a :class:`TwoLevelCache` whose L2 persists in
    ``$XDG_CACHE_HOME/nexus_green/<app>/<name>``; pass ``l2="temporary"``
    for a private one removed on close, or ``l2=None`` for memory only.
    ``l3=RedisCache(...)`` adds the shared level in Redis (hits say
    ``"l3"``; docs/shared-state.md).

    Example::

        >>> mw = CacheMiddleware(TwoLevelCache(l2=None), when={1})
        >>> wire = lambda r: Response(body=b"fresh", fid=r.fid)
        >>> mw(Request(fid=1), wire).cached, mw(Request(fid=1), wire).cached, mw(Request(fid=2), wire).cached
        ('', 'l1', '')
    """

    order = ORDER_CACHE

    def __init__(
        self,
        cache: Optional[TwoLevelCache] = None,
        *,
        when: Optional[FidsOrPredicate] = None,
        headers: Iterable[str] = (),
        key: Optional[Callable[[Request], str]] = None,
        ttl: Optional[float] = None,
        tags: Optional[Callable[[Request], Iterable[str]]] = None,
        cache_errors: bool = False,
        should_cache: Optional[Callable[[Response], bool]] = None,
        name: str = "cache",
        app: Optional[str] = None,
        l2: Union[DiskCache, bool, str, None] = True,
        l3: Optional[RedisCache] = None,
    ) -> None:
        if when is None:
            raise ConfigurationError("caching is opt-in: pass when= a Fid, Fids or a predicate")
        if cache is not None and l3 is not None:
            raise ConfigurationError("pass l3= to the TwoLevelCache you give as cache=, not to the middleware")
        self.cache = cache if cache is not None else TwoLevelCache(l2=l2, name=name, app=app, l3=l3)
        self._match = request_matcher(when)
        self._header_names = tuple(sorted(set(headers)))
        self._key: Callable[[Request], str] = key if key is not None else self._request_key
        self.ttl = ttl
        self._tags = tags
        self._should_cache = should_cache if should_cache is not None else (None if cache_errors else _ok)
        self.name = name
        # The hit path's two shortcuts, both bounded: the key of a small request, remembered (blake2b
        # over its parts costs more than the rest of a hit), and the hit response of each L1 entry,
        # made once and handed out while that entry is the one in L1 (responses are frozen).
        self._keys: dict[tuple[Any, ...], str] = {}
        self._hits: dict[str, tuple[CacheEntry, Response]] = {}
        l1 = self.cache.l1
        self._max_hits = l1.maxsize if l1 is not None else 0

    def _request_key(self, request: Request) -> str:
        body = request.body
        names = self._header_names
        if type(body) is not bytes or len(body) > _MEMO_BODY:
            return request_key(request, names)
        if names:
            headers = request.headers
            memo: tuple[Any, ...] = (request.endpoint, request.fid, body, tuple([headers.get(n) for n in names]))
        else:
            memo = (request.endpoint, request.fid, body)
        keys = self._keys
        key = keys.get(memo)
        if key is None:
            key = request_key(request, names)
            if len(keys) >= _MEMO_KEYS:
                # Start afresh: popping the oldest (next(iter(dict))) walks the holes that earlier pops
                # left at the front of the dict, microseconds per miss; hot keys come back at once.
                keys.clear()
            keys[memo] = key
        return key

    def __call__(self, request: Request, call_next: Handler) -> Response:
        if not self._match(request) or request.context.get("cache") is False:
            return call_next(request)
        key = self._key(request)
        cache = self.cache
        fresh, stale, level = cache.lookup(key)
        if fresh is not None:
            if level == "l1":
                hits = self._hits
                made = hits.get(key)
                if made is not None and made[0] is fresh:
                    return made[1]
                hit = _as_hit(fresh.value, level)
                if len(hits) >= self._max_hits:
                    hits.clear()  # as for the keys: afresh, never a walk over the dict's holes
                hits[key] = (fresh, hit)
                return cast(Response, hit)
            return cast(Response, _as_hit(fresh.value, level))
        tags = (f"fid:{request.fid}",) + (tuple(self._tags(request)) if self._tags is not None else ())
        response, level = cache._after_miss(
            key, stale, level, lambda: call_next(request), self.ttl, tags, self._should_cache
        )
        if level:
            return cast(Response, _as_hit(response, level))
        return cast(Response, response)

    def __repr__(self) -> str:
        return f"<CacheMiddleware {self.cache!r}>"


def cached(
    cache: Optional[TwoLevelCache] = None,
    *,
    ttl: Optional[float] = None,
    key: Optional[Callable[..., str]] = None,
    tags: Iterable[str] = (),
    should_cache: Optional[Callable[[Any], bool]] = None,
    l1: Union[MemoryCache, bool, None] = True,
    l2: Union[DiskCache, bool, str, None] = True,
    directory: Optional[str] = None,
    app: Optional[str] = None,
    stale_while_revalidate: float = 0.0,
) -> Callable[[F], F]:
    """Cache any function's results in two levels; the arguments form the key (:func:`call_key`).

    Without ``cache`` it builds a :class:`TwoLevelCache` from ``l1``, ``l2``
    and ``directory``. L2 persists: in ``directory`` if given, else in
    ``$XDG_CACHE_HOME/nexus_green/<app>/<module.function>`` (one namespace
    per function); ``l2="temporary"`` gives a private directory removed when
    ``wrapper.cache.close()`` runs or the cache is collected.
    The wrapper has ``cache``, ``cache_key(*args, **kwargs)`` and
    ``invalidate(*args, **kwargs)``; exceptions are never cached. Bare
    ``@cached`` uses every default.

    Example::

        >>> calls = []
        >>> @cached(l2=None, ttl=30)
        ... def square(x):
        ...     calls.append(x)
        ...     return x * x
        >>> square(4), square(4), calls
        (16, 16, [4])
        >>> square.invalidate(4); square(4), calls
        (16, [4, 4])
    """

    if callable(cache) and not isinstance(cache, TwoLevelCache):  # bare @cached: the function itself
        fn, cache = cache, None
        return cached()(fn)

    def decorate(fn: F) -> F:
        prefix = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', repr(fn))}"
        if cache is not None:
            store = cache
        else:
            level2: Union[DiskCache, bool, str, None] = DiskCache(directory) if l2 is True and directory else l2
            store = TwoLevelCache(
                l1=l1,
                l2=level2,
                stale_while_revalidate=stale_while_revalidate,
                name=prefix,
                app=app,
            )
        fixed_tags = tuple(tags)

        def make_key(*args: Any, **kwargs: Any) -> str:
            return key(*args, **kwargs) if key is not None else call_key(prefix, args, kwargs)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value, _ = store.get_or_load(
                make_key(*args, **kwargs),
                lambda: fn(*args, **kwargs),
                ttl=ttl,
                tags=fixed_tags,
                should_cache=should_cache,
            )
            return value

        wrapper.cache = store  # type: ignore[attr-defined]
        wrapper.cache_key = make_key  # type: ignore[attr-defined]
        wrapper.invalidate = lambda *a, **kw: store.invalidate(make_key(*a, **kw))  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate
