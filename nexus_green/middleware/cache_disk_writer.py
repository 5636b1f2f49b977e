"""How L2 writes its rows, and the writer process that does it outside the application's GIL (layer L4).

Owns the SQL of a write-behind batch (one multi-row upsert per transaction,
then culling and eviction at most once a second) and the program of the L2
writer process. :class:`RowWriter` is used both by the in-process worker
thread (:class:`~nexus_green.middleware.cache.DiskCache`'s fallback) and by
the writer process, so both write exactly the rows ``diskcache.Cache.set``
would.

The writer process is a fresh interpreter (never a fork: it must not inherit
the application's gevent hub) started by :mod:`.cache_writer_process`. It
imports only the standard library and diskcache, loads this file by its path
(so nexus_green and gevent are never imported there), asks the kernel to kill
it when its parent dies (Linux ``PR_SET_PDEATHSIG``) and exits when its input
closes. The pipe protocol: frames of a 4-byte big-endian length and a
``marshal`` payload (never pickle: nothing is unpickled on either side).

* parent to child: first the configuration (a dict), then batches
  ``(batch_id, items)``, each item ``(key, expire, kind, data)``: ``kind`` 0
  is a tuple of builtins pickled here, ``kind`` 1 a pickle made by the parent;
* child to parent, per batch: ``(batch_id, "ok", stored, evicted_keys,
  failures)`` or ``(batch_id, "fault", error_type, message)`` (the transaction
  was rolled back: full disk, locked database, unwritable directory).

Example (the rows a batch writes, in this process)::

    >>> import diskcache, tempfile
    >>> with diskcache.Cache(tempfile.mkdtemp()) as store:
    ...     RowWriter(max_items=10).write(store, [("k", 60.0, 0, ("a", 1))]), store.get("k")
    ((1, [], []), ('a', 1))
"""

from __future__ import annotations

import functools
import io
import marshal
import os
import pickle
import signal
import sqlite3
import struct
import sys
import time
import weakref
from typing import Any, Optional

import diskcache

__all__ = ["RowWriter", "upsert_fits", "read_frame", "write_frame", "GENS_KEY", "ORDER_COLUMN", "main"]

GENS_KEY = "nexus_green:tag-generations"
ORDER_COLUMN = {
    "least-frequently-used": "access_count",
    "least-recently-used": "access_time",
    "least-recently-stored": "store_time",
    "none": "rowid",
}
MODE_PICKLE = diskcache.core.MODE_PICKLE

# diskcache 5's Cache table and the row its set() writes, as one upsert (SQLite >= 3.24).
CACHE_COLUMNS = (
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
UPSERT_ROWS = 32  # rows per statement: few distinct statements to prepare, few GIL hand-overs


@functools.lru_cache(maxsize=UPSERT_ROWS)
def upsert(rows: int) -> str:
    """One statement for ``rows`` rows: one SQLite step, so a thread lets go of the GIL once, not per row."""
    return (
        "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count, tag, size, mode, filename,"
        " value) VALUES "
        + ",".join(["(?, ?, ?, ?, ?, 0, NULL, ?, ?, ?, ?)"] * rows)
        + " ON CONFLICT(key, raw) DO UPDATE SET store_time = excluded.store_time, expire_time = excluded.expire_time,"
        " access_time = excluded.access_time, access_count = 0, tag = NULL, size = excluded.size,"
        " mode = excluded.mode, filename = excluded.filename, value = excluded.value"
    )


_UPSERT_FITS: weakref.WeakKeyDictionary[diskcache.Cache, bool] = weakref.WeakKeyDictionary()


def upsert_fits(cache: diskcache.Cache) -> bool:
    """True when the batch upsert writes exactly what ``cache.set`` would (checked once per database).

    Example::

        >>> import tempfile
        >>> with diskcache.Cache(tempfile.mkdtemp()) as store:
        ...     upsert_fits(store)
        True
    """
    fits = _UPSERT_FITS.get(cache)
    if fits is None:
        columns = tuple(row[1] for row in cache._sql("PRAGMA table_info(Cache)").fetchall())
        unique = {row[1] for row in cache._sql("PRAGMA index_list(Cache)").fetchall() if row[2]}
        fits = columns == CACHE_COLUMNS and "Cache_key_raw" in unique and sqlite3.sqlite_version_info >= (3, 24)
        _UPSERT_FITS[cache] = fits
    return fits


class RowWriter:
    """Writes batches of rows into a diskcache ``Cache`` and keeps it within ``max_items`` (by ``eviction_policy``).

    Used by one thread or one process at a time (it remembers when it last culled).

    Example::

        >>> import tempfile
        >>> with diskcache.Cache(tempfile.mkdtemp()) as store:
        ...     w = RowWriter(max_items=1)
        ...     w.write(store, [("a", 60.0, 0, 1)]), w.evict(store), w.write(store, [("b", 60.0, 1, pickle.dumps(2))])
        ((1, [], []), [], (1, ['a'], []))
    """

    def __init__(self, *, max_items: int, eviction_policy: str = "least-frequently-used") -> None:
        self.max_items = max_items
        self.eviction_policy = eviction_policy
        self._unculled = 0  # rows written since the last cull and eviction, and when that was
        self._culled_at = float("-inf")

    def evict(self, cache: diskcache.Cache) -> list[str]:
        """Delete the entries past ``max_items`` (never the tag generations); their keys."""
        excess = len(cache) - self.max_items
        if excess <= 0:
            return []
        column = ORDER_COLUMN[self.eviction_policy]
        # diskcache culls by bytes only; count-based eviction reads its table. One DELETE for all of
        # them (its triggers keep count and size), not a delete() -- a page of Python -- per key.
        with cache.transact(retry=False):
            rows = cache._sql(
                f"SELECT rowid, key, filename FROM Cache WHERE raw = 1 AND key != ? ORDER BY {column} LIMIT ?",
                (GENS_KEY, excess),
            ).fetchall()
            for at in range(0, len(rows), 500):
                chunk = rows[at : at + 500]
                cache._sql(f"DELETE FROM Cache WHERE rowid IN ({','.join('?' * len(chunk))})", [r[0] for r in chunk])
        for _, _, filename in rows:
            if filename is not None:
                cache.disk.remove(filename)
        return [k for _, k, _ in rows]

    def maintain(self, cache: diskcache.Cache, rows: int) -> list[str]:
        """Cull by expiry and size (diskcache) and evict by count, once a second or every max_items/10 rows.

        Each is a few statements and a page of Python; per batch they would cost more than the batch
        itself. Between two passes L2 may hold up to a tenth more than its bounds.
        """
        self._unculled += rows
        now = time.monotonic()
        if self._unculled < max(1, self.max_items // 10) and now - self._culled_at < 1.0:
            return []
        self._unculled = 0
        self._culled_at = now
        cache.cull(retry=False)
        return self.evict(cache)

    def write(
        self, cache: diskcache.Cache, items: list[tuple[str, float, int, Any]]
    ) -> tuple[int, list[str], list[tuple[str, Exception]]]:
        """Write a batch in one transaction, all or (on a fault, raised) nothing: ``(stored, evicted, failures)``.

        ``items`` are ``(key, expire seconds, kind, data)``: kind 0 data is pickled here, kind 1 data is
        a pickle already. The table must be diskcache 5's (:func:`upsert_fits`). An entry that cannot be
        stored (its value does not pickle) is a failure of that entry only.
        """
        disk = cache.disk
        protocol, min_file_size = disk.pickle_protocol, disk.min_file_size
        now = time.time()
        rows = []
        written: list[str] = []
        failures: list[tuple[str, Exception]] = []
        old_files: list[str] = []
        try:
            for key, expire, kind, data in items:
                try:
                    db_key, raw = disk.put(key)
                    blob = data if kind else pickle.dumps(data, protocol=protocol)
                except Exception as exc:  # e.g. a value that cannot be pickled: that entry only
                    failures.append((key, exc))
                    continue
                if len(blob) < min_file_size:  # what Disk.store keeps in the row; larger: a file
                    size, filename, value = 0, None, sqlite3.Binary(blob)
                else:
                    filename, full_path = disk.filename(key, None)
                    disk._write(full_path, io.BytesIO(blob), "xb")  # an OSError (full disk) fails the batch
                    written.append(filename)
                    size, value = len(blob), None
                rows.append((db_key, raw, now, now + expire, now, size, MODE_PICKLE, filename, value))
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
                    for at in range(0, len(rows), UPSERT_ROWS):
                        chunk = rows[at : at + UPSERT_ROWS]
                        sql(upsert(len(chunk)), [field for row in chunk for field in row])
                evicted = self.maintain(cache, len(rows))
        except BaseException:
            for f in written:  # the rows that named them were rolled back, or never written
                disk.remove(f)
            raise
        for f in old_files:
            if f not in written:
                disk.remove(f)
        return len(rows), evicted, failures


# --- the frames on the pipe ------------------------------------------------------------------

_LEN = struct.Struct(">I")
MAX_FRAME = 1 << 30  # a length past this is a broken stream, not a frame


def write_frame(fd: int, payload: Any) -> None:
    """Write one frame to a blocking ``fd`` (the writer process's side)."""
    data = marshal.dumps(payload)
    view = memoryview(_LEN.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def read_frame(fd: int) -> Optional[Any]:
    """Read one frame from a blocking ``fd``; None at end of input."""
    head = _read_exactly(fd, 4)
    if head is None:
        return None
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes")
    data = _read_exactly(fd, size)
    if data is None:
        return None
    return marshal.loads(data)


def _read_exactly(fd: int, n: int) -> Optional[bytes]:
    parts = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)


# --- the writer process ----------------------------------------------------------------------


def _die_with_parent(parent: int) -> bool:
    """Ask for SIGKILL when the parent dies (Linux); False when it already has (we were re-parented)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except Exception:  # pragma: no cover - no libc prctl: the parent closing the pipe still ends us
            pass
    return os.getppid() == parent


def _open(config: dict[str, Any]) -> diskcache.Cache:
    return diskcache.Cache(
        config["directory"],
        timeout=config["busy_timeout"],
        eviction_policy=config["eviction_policy"],
        size_limit=config["size_limit"],
        **config["settings"],
    )


def serve(rfd: int, wfd: int) -> int:
    """Answer batches from ``rfd`` on ``wfd`` until ``rfd`` closes; the exit status."""
    config = read_frame(rfd)
    if config is None:
        return 0
    writer = RowWriter(max_items=config["max_items"], eviction_policy=config["eviction_policy"])
    cache: Optional[diskcache.Cache] = None
    try:
        while True:
            frame = read_frame(rfd)
            if frame is None:
                return 0
            batch_id, items = frame
            try:
                if cache is None:
                    cache = _open(config)  # here, so that a fault opening it is a fault of this batch
                stored, evicted, failures = writer.write(cache, items)
            except Exception as exc:
                cause = exc.__context__
                if isinstance(exc, sqlite3.OperationalError) and isinstance(cause, sqlite3.Error):
                    # SQLite already rolled back (a full disk does that): diskcache's ROLLBACK then fails
                    # and would hide what went wrong.
                    if "no transaction is active" in str(exc):
                        exc = cause
                reply: tuple[Any, ...] = (batch_id, "fault", type(exc).__name__, str(exc))
                if cache is not None and not isinstance(exc, (sqlite3.Error, diskcache.Timeout, OSError)):
                    cache.close()  # something unexpected: start afresh with the next batch
                    cache = None
            else:
                reply = (batch_id, "ok", stored, evicted, [(k, f"{type(e).__name__}: {e}") for k, e in failures])
            write_frame(wfd, reply)
    finally:
        if cache is not None:
            cache.close()


def main(argv: list[str]) -> int:
    """The writer process: ``argv`` is ``[parent pid]``; frames on stdin, answers on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the application, which flushes through us
    if not _die_with_parent(int(argv[0])):
        return 0
    out = os.dup(1)
    os.dup2(2, 1)  # a stray print (a warning) goes to stderr, never into the answers
    try:
        return serve(0, out)
    except BrokenPipeError:  # the parent is gone
        return 0


if __name__ == "__main__":  # pragma: no cover - started by cache_writer_process with this file's path
    sys.exit(main(sys.argv[1:]))
