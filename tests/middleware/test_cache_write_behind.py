"""L2 written behind: a bounded queue drained by one writer greenlet into the worker thread, in batches.

What is proven here: a write never waits for the disk (even a stalled one) and
never grows the queue past its bounds; reads see queued writes and writes in
flight; a disk that fails (read-only, full) is counted and logged, drops what
was queued and never fails a request; close() flushes and is bounded when the
disk is stuck; a forked child forgets the parent's queue and worker and works
on its own; the batch upsert leaves a database diskcache itself finds
consistent; the key index spares the disk a read for keys L2 does not hold and
sees what another connection stores. Through a real Client in
test_cache_through_client.py. The module runs twice: plain, and after
``gevent.monkey.patch_all()`` (last test).
"""

from __future__ import annotations

import glob
import itertools
import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import diskcache
import gevent
import pytest
from gevent.monkey import get_original

from nexus_green.clock import FakeClock
from nexus_green.errors import ConfigurationError
from nexus_green.greenlets import live_greenlets
from nexus_green.middleware import cache as cache_module
from nexus_green.middleware.cache import CacheEntry, CacheMiddleware, DiskCache, TwoLevelCache
from nexus_green.protocol.messages import Request, Response
from nexus_green.testing import run_module_patched

pytestmark = pytest.mark.usefixtures("leakcheck")


@pytest.fixture(autouse=True)
def warm_hub() -> None:
    # The loop's async pipe opens on first threadpool use and stays: open it before leak checks count.
    gevent.get_hub().threadpool.apply(len, ("",))


def entry(value: object, life: float = 60.0) -> CacheEntry:
    now = time.time()
    return CacheEntry(value=value, expires=now + life, stale_until=now + life)


@contextmanager
def _reopen(directory: Path) -> Iterator[DiskCache]:
    l2 = DiskCache(str(directory))
    try:
        yield l2
    finally:
        l2.close()


_thread_sleep = get_original("time", "sleep")  # after patch_all time.sleep would make the worker a hub of its own


def hold_worker(l2: DiskCache, seconds: float) -> gevent.Greenlet:
    """Keep the L2 worker thread busy for ``seconds`` (a disk that stalls), from another greenlet."""
    return gevent.spawn(l2._run, lambda cache: _thread_sleep(seconds))


def test_a_write_returns_at_once_even_while_the_disk_stalls_and_reads_see_it(tmp_path: Path) -> None:
    l2 = DiskCache(str(tmp_path / "l2"), op_timeout=5)
    busy = hold_worker(l2, 0.3)
    gevent.sleep(0.01)  # the worker is now inside the stall
    t0 = time.perf_counter()
    accepted = [l2.set(f"k{i}", entry(i)) for i in range(100)]
    took = time.perf_counter() - t0
    assert all(accepted) and took < 0.1, took  # 100 writes, none waited for the 0.3 s stall
    assert [l2.get(f"k{i}").value for i in range(100)] == list(range(100))  # type: ignore[union-attr]
    s = l2.stats()
    assert s.queued == 100 and s.written == 0 and s.size == 0  # stats waits for the worker: still nothing on disk
    assert l2.flush(5)
    busy.join(5)
    s = l2.stats()
    assert (s.queued, s.written, s.size, s.errors, s.dropped) == (0, 100, 100, 0, 0)
    assert l2.counters.reads == 0  # every read above came from the queue, none from the disk
    l2.close()


def test_reads_see_the_batch_in_flight_and_a_delete_wins_over_it(tmp_path: Path) -> None:
    l2 = DiskCache(str(tmp_path / "l2"), op_timeout=5, write_delay=0)
    busy = hold_worker(l2, 0.2)
    gevent.sleep(0.01)
    l2.set("a", entry("A"))
    l2.set("b", entry("B"))
    gevent.sleep(0.01)  # the writer took both into its batch; the worker has not run it yet
    assert l2._writing and not l2._queued
    assert l2.get("a").value == "A"  # type: ignore[union-attr]
    assert l2.delete("b") is True  # runs in the worker after the batch
    assert l2.get("b") is None
    assert l2.flush(5)
    busy.join(5)
    assert l2.get("a").value == "A" and l2.get("b") is None and len(l2) == 1  # type: ignore[union-attr]
    l2.close()


def test_a_newer_write_of_a_queued_key_replaces_it(tmp_path: Path) -> None:
    l2 = DiskCache(str(tmp_path / "l2"), write_delay=60)
    l2.set("k", entry("old"))
    l2.set("k", entry("new"))
    assert l2.stats().queued == 1 and l2.get("k").value == "new"  # type: ignore[union-attr]
    assert l2.flush(5) and l2.stats().written == 1
    l2.close()
    with _reopen(tmp_path / "l2") as again:
        assert again.get("k").value == "new"  # type: ignore[union-attr]


def test_a_full_queue_drops_the_write_and_counts_it(tmp_path: Path) -> None:
    l2 = DiskCache(str(tmp_path / "l2"), max_queued=3, max_queued_bytes=1000, write_delay=60)
    assert [l2.set(f"k{i}", entry(b"x")) for i in range(5)] == [True, True, True, False, False]
    assert l2.set("k1", entry(b"y")) is True  # replacing a queued key does not grow the queue
    assert l2.stats().dropped == 2 and l2.stats().queued == 3
    assert l2.flush(5)
    big = DiskCache(str(tmp_path / "big"), max_queued_bytes=1000, write_delay=60)
    assert big.set("r1", entry(Response(body=b"x" * 600))) is True
    assert big.set("r2", entry(Response(body=b"x" * 600))) is False  # 1200 bytes of bodies > 1000
    assert big.set("s", entry("y" * 300)) is True and big.stats().dropped == 1
    assert big.set("r1", entry(b"z" * 10)) is True  # replacing frees what the old value held
    assert big._queued_bytes == 310
    big.close()
    l2.close()
    assert l2.set("late", entry(1)) is False and l2.counters.bypassed == 1  # closed: refused, not queued


def test_bad_queue_bounds_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="max_queued must"):
        DiskCache(temporary=True, max_queued=0)
    with pytest.raises(ConfigurationError, match="max_queued_bytes"):
        DiskCache(temporary=True, max_queued_bytes=0)


@contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """Make an L2 directory and its files read-only, for root too (chattr +i), and check it took."""
    paths = [str(directory), *glob.glob(str(directory / "*"))]
    for p in paths:
        os.chmod(p, 0o500 if os.path.isdir(p) else 0o400)
    immutable = os.geteuid() == 0
    if immutable:
        subprocess.run(["chattr", "+i", *paths], check=True, capture_output=True)
    try:
        with pytest.raises(OSError):
            open(directory / "probe", "w").close()  # the premise: nothing can be written there now
        yield
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", *paths], check=True, capture_output=True)
        for p in paths:
            os.chmod(p, 0o700 if os.path.isdir(p) else 0o600)


def test_a_disk_that_turns_read_only_is_counted_and_requests_still_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = FakeClock(autojump=False)
    d = tmp_path / "l2"
    l2 = DiskCache(str(d), clock=clock, fault_cooldown=10)
    cache = TwoLevelCache(l1=None, l2=l2, clock=clock)
    mw = CacheMiddleware(cache, when={1})
    calls: list[bytes] = []

    def wire(r: Request) -> Response:
        calls.append(r.body)
        return Response(body=b"origin:" + r.body, fid=r.fid)

    assert mw(Request(fid=1, body=b"before"), wire).cached == ""
    assert cache.flush(5) and l2.stats().written == 1
    with read_only(d), caplog.at_level(logging.WARNING, logger="nexus_green.middleware.cache"):
        answers = [mw(Request(fid=1, body=b"q%d" % i), wire) for i in range(20)]
        assert [a.body for a in answers] == [b"origin:q%d" % i for i in range(20)]  # every request answered
        cache.flush(5)
        s = l2.stats()
        assert s.errors == 1 and not l2.available  # one fault, then the level steps aside
        assert s.written == 1 and s.dropped == 20  # the failed batch: counted, not retried forever
        assert mw(Request(fid=1, body=b"during"), wire).cached == ""  # bypassed while cooling down
        assert l2.counters.bypassed >= 1
    faults = [r for r in caplog.records if "bypassing L2" in r.getMessage()]
    assert len(faults) == 1, caplog.text  # one line, not one per request
    clock.advance(10)  # cooldown over, disk writable again: L2 works
    assert mw(Request(fid=1, body=b"after"), wire).cached == ""
    assert cache.flush(5) and l2.stats().written == 2
    assert mw(Request(fid=1, body=b"before"), wire).cached == "l2"
    cache.close()


def test_a_full_disk_drops_the_batch_and_what_was_queued(tmp_path: Path) -> None:
    # SQLite's max_page_count makes the database "full" exactly like a full disk (SQLITE_FULL).
    l2 = DiskCache(str(tmp_path / "l2"), sqlite_max_page_count=40, disk_min_file_size=1 << 20, write_delay=0)
    busy = hold_worker(l2, 0.1)
    gevent.sleep(0.01)
    for i in range(300):  # more than one batch, all queued behind the stall
        l2.set(f"k{i}", entry(b"x" * 4000))
    assert l2.flush(5)
    busy.join(5)
    s = l2.stats()
    assert s.errors == 1 and "full" in str(l2.last_error)
    assert s.written + s.dropped == 300 and s.dropped >= 300 - cache_module._BATCH
    l2.close()


def test_close_flushes_what_is_queued(tmp_path: Path) -> None:
    l2 = DiskCache(str(tmp_path / "l2"), write_delay=60)  # would linger a minute: close must not wait for that
    for i in range(300):
        l2.set(f"k{i}", entry(i))
    t0 = time.perf_counter()
    l2.close()
    assert time.perf_counter() - t0 < 5
    assert l2.counters.written == 300 and l2.counters.dropped == 0
    with _reopen(tmp_path / "l2") as again:
        assert len(again) == 300 and again.get("k299").value == 299  # type: ignore[union-attr]


def test_close_with_a_stalled_disk_is_bounded_and_leaks_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    l2 = DiskCache(str(tmp_path / "l2"), op_timeout=0.2)
    l2.set("warm", entry(0))
    assert l2.flush(5)
    busy = hold_worker(l2, 1.0)  # longer than op_timeout: the stall is a fault
    gevent.sleep(0.01)
    for i in range(10):
        l2.set(f"k{i}", entry(i))
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="nexus_green.middleware.cache"):
        l2.close()
    took = time.perf_counter() - t0
    busy.join(5)
    assert took < 1.5, took  # the flush's batch and the shutdown each waited op_timeout at most
    assert l2.counters.written == 1 and l2.counters.dropped == 10 and l2.counters.errors >= 1
    assert "not finish within" in caplog.text
    assert l2._writer is None and l2._pool is None
    assert not [g for g in live_greenlets() if "l2-writer" in (g.name or "")]


EXIT_WITHOUT_CLOSE = textwrap.dedent(
    """
    import sys
    from nexus_green.middleware.cache import cached

    @cached(directory=sys.argv[1], ttl=300)
    def square(x):
        print("computed", x)
        return x * x

    print([square(i) for i in range(int(sys.argv[2]))])
    # no close(): the script just ends, with its writes still queued (the writer lingers 10 ms)
    """
)


def test_a_script_that_never_closes_its_cache_still_persists_it(tmp_path: Path) -> None:
    directory, script = str(tmp_path / "l2"), tmp_path / "script.py"
    script.write_text(EXIT_WITHOUT_CLOSE)
    runs = [
        subprocess.run(
            [sys.executable, "-W", "error", str(script), directory, "5"], capture_output=True, text=True, timeout=60
        )
        for _ in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    assert runs[0].stdout.count("computed") == 5
    assert runs[1].stdout.count("computed") == 0 and "[0, 1, 4, 9, 16]" in runs[1].stdout  # all from L2


def test_after_fork_the_child_forgets_the_parent_writer_queue_and_worker(tmp_path: Path) -> None:
    l2 = DiskCache(str(tmp_path / "l2"), write_delay=60)
    l2.set("parent", entry("P"))
    writer = l2._writer
    assert writer is not None and l2._pool is None  # lingering: not yet in the worker
    l2.get("absent")  # starts the worker (the key index loads)
    parent_pool = l2._pool
    assert parent_pool is not None
    parent_pool.apply(lambda: None)  # the index load has run: the worker has its connection
    parent_cache = l2._cache
    l2._after_fork_in_child()  # what os.register_at_fork runs in a child
    gevent.sleep(0.01)
    assert writer.dead and l2._writer is None and l2._pool is None and l2._cache is None
    assert l2.get("parent") is None and l2.stats().queued == 0  # the parent writes its own queue
    assert l2.set("child", entry("C")) and l2.flush(5) and l2.get("child").value == "C"  # type: ignore[union-attr]
    l2.close()
    # In one process the "parent's" worker and connection are still alive: close them as the parent would.
    parent_pool.apply(parent_cache.close)  # type: ignore[union-attr]
    parent_pool.kill()


FORK = textwrap.dedent(
    """
    import json, os, sys, time
    import gevent
    from nexus_green.middleware.cache import CacheEntry, DiskCache

    def fds():
        return len(os.listdir("/proc/self/fd"))

    def entry(v):
        return CacheEntry(value=v, expires=time.time() + 60, stale_until=time.time() + 60)

    l2 = DiskCache(sys.argv[1], write_delay=60)
    l2.set("warm", entry(0))
    l2.flush(5)
    l2.set("parent", entry("P"))  # queued, lingering, when the process forks
    assert l2.get("missing") is None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        at_fork = fds()
        out = {"queued": l2.stats().queued, "parent_seen": l2.get("parent") is not None}
        l2.set("child", entry("C"))
        out["flushed"] = l2.flush(5)
        out["child"] = l2.get("child").value
        l2.close()
        after_close = fds()
        for i in range(3):  # more caches on the same directory in the child: no descriptor stays behind
            more = DiskCache(sys.argv[1])
            more.set("more%d" % i, entry(i))
            more.flush(5)
            more.get("child")
            more.close()
        out["fds"] = [at_fork, after_close, fds()]
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    child = b""
    while True:
        gevent.get_hub().threadpool.apply(lambda: None)
        chunk = os.read(r, 65536)
        if not chunk:
            break
        child += chunk
    _, status = os.waitpid(pid, 0)
    l2.close()
    again = DiskCache(sys.argv[1])
    print(json.dumps({"child": json.loads(child), "status": status,
                      "keys": sorted(k for k in ("warm", "parent", "child") if again.get(k) is not None)}))
    again.close()
    """
)


@pytest.mark.parametrize("patched", [False, True])
def test_a_real_fork_with_writes_queued(tmp_path: Path, patched: bool) -> None:
    script = tmp_path / "fork.py"
    script.write_text(("from gevent import monkey\nmonkey.patch_all()\n" if patched else "") + FORK)
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script), str(tmp_path / "l2")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    child = seen["child"]
    assert seen["status"] == 0
    assert child["queued"] == 0 and child["parent_seen"] is False  # the parent's queue is the parent's to write
    assert child["flushed"] is True and child["child"] == "C"  # the child has a worker of its own, no hang
    at_fork, after_close, after_more = child["fds"]
    # SQLite's lock bookkeeping, copied from the parent, makes it keep one descriptor of the database open
    # after the child's close (it would reuse it): one, whatever the child does next.
    assert after_close <= at_fork + 1 and after_more == after_close, child
    assert seen["keys"] == ["child", "parent", "warm"]  # both processes' writes reached the disk


def test_batch_writes_leave_a_database_diskcache_finds_consistent(tmp_path: Path) -> None:
    d = str(tmp_path / "l2")
    l2 = DiskCache(d, disk_min_file_size=1024)  # values over 1 KiB go to files, as diskcache does it
    small, large = entry(b"s"), entry(b"L" * 5000)
    for i in range(50):
        l2.set(f"k{i}", large if i % 2 else small)
    assert l2.flush(5)
    for i in range(0, 50, 3):  # overwrite: a large value replaced by a small one, and the other way round
        l2.set(f"k{i}", small if i % 2 else large)
    assert l2.flush(5) and l2.counters.written == 67 and l2.counters.errors == 0
    l2.close()
    raw = diskcache.Cache(d)
    try:
        assert raw.check() == []  # diskcache's own consistency check: count, size, files
        assert len(raw) == 50
        stored = [cache_module._unpack(raw.get(k)) for k in ("k3", "k1")]  # what L2 stores: tuples of builtins
        assert [e.value for e in stored] == [b"s", b"L" * 5000]  # type: ignore[union-attr]
        files = [f for f in glob.glob(os.path.join(d, "*", "*", "*.val"))]
        assert len(files) == sum(1 for i in range(50) if (i % 3 == 0) != (i % 2 == 1))
    finally:
        raw.close()
    # Eviction by count (one DELETE) removes the files of the rows it evicts too.
    l2 = DiskCache(d, disk_min_file_size=1024, max_items=20)
    for i in range(50, 60):
        l2.set(f"k{i}", large)
    assert l2.flush(5) and l2.counters.evictions == 40 and len(l2) == 20
    l2.close()
    raw = diskcache.Cache(d)
    try:
        assert raw.check() == [] and len(raw) == 20
        files = glob.glob(os.path.join(d, "*", "*", "*.val"))
        assert len(files) == sum(1 for k in raw.iterkeys() if len(cache_module._unpack(raw.get(k)).value) > 1)  # type: ignore[union-attr]
    finally:
        raw.close()


def test_entries_stored_by_the_previous_version_still_read(tmp_path: Path) -> None:
    l2 = DiskCache(str(tmp_path / "l2"))
    old = entry(Response(body=b"old", headers={"etag": "1"}))
    l2._run(lambda cache: cache.set("old", old, retry=False))  # how the previous version stored an entry
    l2.set("new", entry(Response(body=b"new", headers={"etag": "2"})))
    l2.set("plain", entry({"a": [1, 2]}))
    assert l2.flush(5)
    l2._index = None  # read from the disk, not from the queue
    got = {k: l2.get(k) for k in ("old", "new", "plain")}
    assert got["old"] == old and got["new"].value.body == b"new" and got["plain"].value == {"a": [1, 2]}  # type: ignore[union-attr]
    assert dict(got["new"].value.headers) == {"etag": "2"}  # type: ignore[union-attr]
    assert cache_module._unpack(("something", "else")) is None and cache_module._unpack(b"bytes") is None
    l2.close()


def test_without_the_expected_table_batches_fall_back_to_diskcache_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cache_module, "_upsert_fits", lambda cache: False)
    l2 = DiskCache(str(tmp_path / "l2"), max_items=3)
    l2.set("lock", entry(gevent.lock.Semaphore()))  # cannot be pickled: that entry only
    for k in "abcd":
        l2.set(k, entry(k))
    assert l2.flush(5)
    assert l2.counters.written == 4 and l2.counters.errors == 1 and l2.counters.evictions == 1 and len(l2) == 3
    l2.close()


def test_a_key_l2_does_not_hold_costs_no_disk_read_and_other_writers_are_seen(tmp_path: Path) -> None:
    clock = FakeClock(autojump=False)
    d = str(tmp_path / "l2")
    mine = DiskCache(d, clock=clock)
    mine.set("k", entry("v"))
    assert mine.flush(5)
    mine.get("k")  # loads the key index
    assert mine.flush(5) and mine._index == {"k"}
    reads = mine.counters.reads
    assert [mine.get(f"absent{i}") for i in range(50)] == [None] * 50
    assert mine.counters.reads == reads  # not one disk read
    assert mine.get("k").value == "v" and mine.counters.reads == reads + 1  # type: ignore[union-attr]

    other = DiskCache(d)  # another connection (as another process would be)
    other.set("theirs", entry("T"))
    assert other.flush(5)
    assert mine.get("theirs") is None  # not yet looked
    clock.advance(1.0)
    assert mine.get("theirs") is None  # this look starts the refresh ...
    assert mine.flush(5)
    assert mine.get("theirs").value == "T"  # type: ignore[union-attr]  # ... which found it
    other.close()
    mine.close()


def test_a_stale_index_entry_costs_one_read_then_leaves(tmp_path: Path) -> None:
    l2 = DiskCache(str(tmp_path / "l2"))
    l2.set("k", entry("v"))
    assert l2.flush(5)
    l2.get("k")
    assert l2.flush(5) and l2._index == {"k"}
    l2._run(l2._w_delete, "k")  # gone behind the index's back (culled, or deleted by another process)
    assert l2.get("k") is None and l2._index == set()
    l2._index = {f"stale{i}" for i in range(2 * l2.max_items + l2.max_queued + 1)}
    l2._index_next = float("-inf")
    l2.get("x")
    assert l2.flush(5)
    assert l2._index is None  # too many stale keys: loaded afresh on the next read
    l2.get("x")
    assert l2.flush(5) and l2._index == set()
    l2.close()


def test_hits_share_one_response_per_l1_entry_and_the_memos_stay_bounded() -> None:
    cache = TwoLevelCache(l2=None)
    mw = CacheMiddleware(cache, when={1})
    wire = lambda r: Response(body=b"v:" + r.body, fid=1, latency=0.5)  # noqa: E731
    first = mw(Request(fid=1, body=b"a"), wire)
    hit1, hit2 = mw(Request(fid=1, body=b"a"), wire), mw(Request(fid=1, body=b"a"), wire)
    assert first.cached == "" and first.latency == 0.5
    assert hit1 is hit2 and hit1.cached == "l1" and hit1.latency == 0.0 and hit1.body == b"v:a"
    assert hit1 == first.replace(cached="l1", latency=0.0)
    cache.invalidate(mw._key(Request(fid=1, body=b"a")))
    assert mw(Request(fid=1, body=b"a"), wire).cached == ""
    assert mw(Request(fid=1, body=b"a"), wire) is not hit1  # a new entry: a new hit response
    most = 0
    for i in range(cache_module._MEMO_KEYS + 50):
        mw(Request(fid=1, body=b"%d" % i), wire)
        most = max(most, len(mw._keys))
    assert most == cache_module._MEMO_KEYS and 0 < len(mw._keys) <= 51  # full: started afresh
    for i in range(150):
        mw(Request(fid=1, body=b"h%d" % i), wire)  # L1 (100 items) keeps h50 .. h149
    sizes = []
    for _ in range(2):
        for i in range(50, 150):
            assert mw(Request(fid=1, body=b"h%d" % i), wire).cached == "l1"
            sizes.append(len(mw._hits))
    assert max(sizes) == cache.l1.maxsize  # type: ignore[union-attr]  # never more than L1 holds ...
    assert any(b < a for a, b in itertools.pairwise(sizes))  # ... because a full memo starts afresh
    remembered = len(mw._keys)
    big = Request(fid=1, body=b"x" * (cache_module._MEMO_BODY + 1))
    mw(big, wire)
    assert mw(big, wire).cached == "l1" and len(mw._keys) == remembered  # a large body: not remembered
    headed = CacheMiddleware(TwoLevelCache(l2=None), when={1}, headers=["lang"])
    en, de = Request(fid=1, headers={"lang": "en"}), Request(fid=1, headers={"lang": "de"})
    assert headed(en, wire).cached == "" and headed(de, wire).cached == "" and headed(en, wire).cached == "l1"


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
