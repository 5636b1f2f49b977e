"""L2 under gevent: hub responsiveness and bounded descriptors with 500 greenlets (also after
monkey.patch_all() in a subprocess), and every way the disk can fail: locked by another process,
corrupt or unreadable file, full disk, stalled worker, unpicklable or undecodable values."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
import subprocess
import sys
import textwrap

import gevent
import pytest

from nexus_green.clock import FakeClock
from nexus_green.middleware import CacheEntry, CacheMiddleware, DiskCache, TwoLevelCache
from nexus_green.protocol.messages import Request, Response


@pytest.fixture(autouse=True)
def warm_hub() -> None:
    # The loop's async pipe opens on first threadpool use and stays: open it before leak checks count.
    gevent.get_hub().threadpool.apply(len, ("",))


HAMMER = textwrap.dedent(
    """
    import os
    import gevent
    from nexus_green.middleware import DiskCache, TwoLevelCache

    def fds():
        return len(os.listdir("/proc/self/fd"))

    def hammer(directory, n=500):
        cache = TwoLevelCache(l1=None, l2=DiskCache(directory))
        cache.set("warm", b"x")  # opens the database once
        before = fds()
        state = {"lag": 0.0, "peak": before, "running": True}

        def heartbeat():
            loop = gevent.get_hub().loop
            last = loop.now()
            while state["running"]:
                gevent.sleep(0.005)
                loop.update_now()
                now = loop.now()
                state["lag"] = max(state["lag"], now - last - 0.005)
                state["peak"] = max(state["peak"], fds())
                last = now

        def worker(i):
            for j in range(4):
                key = "k%d" % ((i * 7 + j * 131) % 300)
                value, _ = cache.get_or_load(key, lambda: b"v" * 200)
                assert value == b"v" * 200

        hb = gevent.spawn(heartbeat)
        gevent.joinall([gevent.spawn(worker, i) for i in range(n)], timeout=100, raise_error=True)
        state["running"] = False
        hb.join(timeout=5)
        stats = cache.stats()
        cache.close()
        return {"lag": state["lag"], "before": before, "peak": state["peak"], "after": fds(),
                "l2_hits": stats.l2.hits, "l2_errors": stats.l2.errors, "l2_bypassed": stats.l2.bypassed,
                "loads": stats.loads}
    """
)


def check_hammer(result: dict) -> None:
    assert result["lag"] < 0.5, result  # responsiveness check, not a benchmark
    assert result["peak"] <= result["before"] + 8, result  # one connection, whatever the greenlets
    assert result["after"] <= result["before"], result
    assert result["l2_errors"] == 0 and result["l2_bypassed"] == 0 and result["l2_hits"] > 0, result


def test_500_greenlets_hub_responsive_fds_bounded(tmp_path, leakcheck) -> None:  # type: ignore[no-untyped-def]
    ns: dict = {}
    exec(compile(HAMMER, "hammer", "exec"), ns)
    check_hammer(ns["hammer"](str(tmp_path / "l2")))


def test_500_greenlets_after_monkey_patch_all(tmp_path) -> None:  # type: ignore[no-untyped-def]
    script = tmp_path / "patched.py"
    script.write_text(
        "from gevent import monkey\nmonkey.patch_all()\nimport json, sys\n"
        + HAMMER
        + "\nprint(json.dumps(hammer(sys.argv[1])))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script), str(tmp_path / "l2")],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr
    check_hammer(json.loads(proc.stdout.strip().splitlines()[-1]))


LOCKER = textwrap.dedent(
    """
    import sqlite3, sys
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    sys.stdin.read()
    con.execute("ROLLBACK")
    """
)


def test_database_locked_by_another_process_degrades_to_bypass(tmp_path, leakcheck) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    d = str(tmp_path / "l2")
    cache = TwoLevelCache(l1=None, l2=DiskCache(d, clock=clock, fault_cooldown=10), clock=clock)
    cache.set("before", "x")
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, os.path.join(d, "cache.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        lag = [0.0]
        running = [True]

        def heartbeat() -> None:
            loop = gevent.get_hub().loop
            last = loop.now()
            while running[0]:
                gevent.sleep(0.005)
                loop.update_now()
                lag[0] = max(lag[0], loop.now() - last - 0.005)
                last = loop.now()

        hb = gevent.spawn(heartbeat)
        mw = CacheMiddleware(cache, when=1)
        for _ in range(3):  # every request still answers
            assert mw(Request(fid=1), lambda r: Response(body=b"origin")).body == b"origin"
        running[0] = False
        hb.join(2)
        l2 = cache.l2
        assert l2 is not None
        s = l2.counters
        assert s.errors == 1 and s.bypassed >= 2  # one fault, then bypassed during the cooldown
        assert not l2.available and "bypassed" in repr(l2)
        assert lag[0] < 0.5
    finally:
        assert locker.stdin is not None
        locker.stdin.close()
        locker.wait(10)
        assert locker.stdout is not None
        locker.stdout.close()
    clock.advance(10)  # cooldown over, lock gone: L2 works again
    cache.set("after", "y")
    assert cache.get("after") == "y" and cache.l2 is not None and cache.l2.available
    cache.close()


def test_corrupt_database_file_is_a_counted_bypass(tmp_path, caplog, leakcheck) -> None:  # type: ignore[no-untyped-def]
    d = tmp_path / "l2"
    d.mkdir()
    (d / "cache.db").write_bytes(b"this is not a sqlite database" * 100)
    cache = TwoLevelCache(l1=None, l2=DiskCache(str(d)))
    assert cache.get_or_load("k", lambda: "origin") == ("origin", "")
    l2 = cache.l2
    assert l2 is not None and l2.counters.errors == 1 and isinstance(l2.last_error, sqlite3.DatabaseError)
    assert "bypassing L2" in caplog.text
    assert l2.stats().size == -1
    cache.close()


def test_unwritable_directory_is_a_counted_bypass(tmp_path, leakcheck) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = TwoLevelCache(l1=None, l2=DiskCache(str(blocker / "sub")))
    assert cache.get_or_load("k", lambda: 1) == (1, "")
    assert cache.l2 is not None and cache.l2.counters.errors == 1
    assert isinstance(cache.l2.last_error, OSError)
    cache.close()


def test_full_disk_is_a_counted_fault(tmp_path, leakcheck) -> None:  # type: ignore[no-untyped-def]
    # SQLite's max_page_count makes the database "full" exactly like a full disk (SQLITE_FULL).
    l2 = DiskCache(str(tmp_path / "l2"), sqlite_max_page_count=40, disk_min_file_size=1 << 20)
    cache = TwoLevelCache(l1=None, l2=l2)
    for i in range(40):
        cache.set(f"k{i}", b"x" * 4000)
    cache.flush(5)
    assert l2.counters.errors == 1
    assert "full" in str(l2.last_error)
    assert cache.get_or_load("new", lambda: "origin") == ("origin", "")  # requests unaffected
    cache.close()


def test_stalled_worker_times_out_and_bypasses(tmp_path, leakcheck) -> None:  # type: ignore[no-untyped-def]
    import time

    l2 = DiskCache(str(tmp_path / "l2"), fault_cooldown=60)
    l2.set("k", CacheEntry(value=1, expires=time.time() + 60, stale_until=time.time() + 60))
    assert l2.flush(5)
    l2.op_timeout = 0.05
    l2._run(lambda cache: time.sleep(0.3))  # a disk that hangs (runs in the worker thread)
    assert l2.counters.errors == 1 and isinstance(l2.last_error, gevent.Timeout)
    assert l2.get("k") is None and l2.counters.bypassed == 1
    l2.close()
    l2.close()  # idempotent
    assert l2.get("k") is None and "closed" in repr(l2)


def test_unpicklable_value_fails_that_call_only(tmp_path, leakcheck) -> None:  # type: ignore[no-untyped-def]
    cache = TwoLevelCache(l1=None, l2=DiskCache(str(tmp_path / "l2")))
    cache.set("lock", gevent.lock.Semaphore())  # cannot be pickled
    cache.set("fine", 2)  # in the same batch: written
    l2 = cache.l2
    assert l2 is not None and l2.flush(5)
    assert l2.counters.errors == 1 and l2.counters.written == 1 and l2.available
    assert isinstance(l2.last_error, TypeError)
    cache.set("ok", 1)
    assert cache.get("ok") == 1
    cache.close()


def test_undecodable_entry_is_dropped_as_a_miss(tmp_path, leakcheck) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path / "l2")
    cache = TwoLevelCache(l1=None, l2=DiskCache(d))
    cache.set("k", "v")
    l2 = cache.l2
    assert l2 is not None and l2.flush(5)
    l2._run(lambda c: c.set("raw", b"not an entry", retry=False))
    assert l2.get("raw") is None  # something else wrote there: not ours, a miss
    l2._run(lambda c: c._sql("UPDATE Cache SET mode = 4, value = ? WHERE key = 'k'", (b"\x80\x04garbage",)))
    assert cache.get_or_load("k", lambda: "origin") == ("origin", "")
    assert cache.l2 is not None and cache.l2.counters.errors == 1 and cache.l2.available
    assert cache.get("k") == "origin"
    cache.close()


def test_count_based_eviction_by_policy(tmp_path, leakcheck) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    l2 = DiskCache(str(tmp_path / "l2"), max_items=3, clock=clock)
    cache = TwoLevelCache(l1=None, l2=l2, clock=clock)
    for k in "abc":
        cache.set(k, k)
    assert l2.flush(5)  # on disk, so the reads below count
    for _ in range(3):
        cache.get("a")
        cache.get("c")
    cache.set("d", "d")  # b is least frequently used
    assert l2.flush(5)
    assert [cache.get(k) for k in "abcd"] == ["a", None, "c", "d"]
    assert l2.stats().evictions == 1 and len(l2) == 3
    cache.close()
    with pytest.raises(Exception, match="eviction policy"):
        DiskCache(eviction_policy="random")
    with pytest.raises(Exception, match="max_items"):
        DiskCache(max_items=0)
    with pytest.raises(Exception, match="ttl"):
        DiskCache(ttl=0)


def test_too_many_pending_operations_bypass(tmp_path, leakcheck) -> None:  # type: ignore[no-untyped-def]
    l2 = DiskCache(str(tmp_path / "l2"), max_pending=1)
    l2.set("warm", CacheEntry(value=1, expires=1e12, stale_until=1e12))
    assert l2.flush(5)  # on disk: the reads below go to the worker, not to the queue
    results = [gevent.spawn(l2.get, "warm") for _ in range(5)]
    gevent.joinall(results, timeout=5)
    assert l2.counters.bypassed >= 1
    assert any(g.value is not None for g in results)
    l2.close()


def test_entry_pickles() -> None:
    e = CacheEntry(value=Response(body=b"x"), expires=1.0, stale_until=2.0, tags=(("a", 1),))
    assert pickle.loads(pickle.dumps(e)) == e
