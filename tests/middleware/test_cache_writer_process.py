"""Issue 14: L2's writes leave the application's process: a writer process commits the batches.

What is proven here, through a real Client over a loopback socket where the
cache sits on the request path: every miss's write reaches the disk, written
by another process (not by a thread of this one), and reads see writes still
queued or in that process; a writer killed with SIGKILL mid-run is counted,
the requests keep their answers and a new writer takes over; a writer that
stalls (SIGSTOP) is a fault bounded by ``op_timeout``; a writer that cannot
start leaves the level writing from its worker thread; a full disk is a
counted fault and the writer survives it; a delete wins over the batch in
flight; close() flushes what is queued and reaps the writer; a forked child of
the application never writes into the parent's pipe; the writer dies with its
parent. No test leaves a process, a descriptor or a greenlet behind. The module
runs twice: plain, and after ``gevent.monkey.patch_all()`` (last test).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import diskcache
import gevent
import pytest

from nexus_green import Client
from nexus_green.errors import ConfigurationError
from nexus_green.middleware import cache_writer_process
from nexus_green.middleware.cache import CacheEntry, CacheMiddleware, DiskCache, TwoLevelCache, cached
from nexus_green.middleware.cache_writer_process import WriterProcess
from nexus_green.protocol.messages import Response
from nexus_green.testing import EmbeddedServer, Reply, run_module_patched

pytestmark = pytest.mark.usefixtures("leakcheck", "no_leaked_processes")

FID = 7


def children() -> set[int]:
    """Pids of this process's children, zombies included (a zombie is a process nobody reaped)."""
    me = str(os.getpid())
    out = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                out.add(int(name))
    return out


def exists(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        gevent.sleep(0.01)


@pytest.fixture
def no_leaked_processes() -> Iterator[None]:
    before = children()
    yield
    wait_for(lambda: children() <= before, f"children to be reaped: {children() - before}", 5.0)


@pytest.fixture(autouse=True)
def warm_hub() -> None:
    # The loop's async pipe opens on first threadpool use and stays: open it before leak checks count.
    gevent.get_hub().threadpool.apply(len, ("",))


@pytest.fixture
def server() -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer()
    srv.register(FID, lambda frame: Reply(b"answer:" + frame.body, headers={"etag": "1"}))  # type: ignore[attr-defined]
    srv.start()
    yield srv
    srv.stop()


def entry(value: object, life: float = 60.0) -> CacheEntry:
    now = time.time()
    return CacheEntry(value=value, expires=now + life, stale_until=now + life)


def on_disk(directory: str) -> set[str]:
    with diskcache.Cache(directory) as store:
        return {k for k in store.iterkeys() if isinstance(k, str) and k.startswith("req:")}


def writer_pid(l2: DiskCache) -> int:
    proc = l2._proc
    assert proc is not None, "no writer process"
    return proc.pid


def test_misses_through_a_client_are_written_by_another_process_and_all_persist(
    tmp_path: Path, server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    directory = str(tmp_path / "l2")
    l2 = DiskCache(directory, writer="process")
    cache = TwoLevelCache(l1=None, l2=l2)  # no L1: a repeated request is answered by L2
    with caplog.at_level(logging.WARNING, logger="nexus_green.middleware.cache"):
        with Client(server.url, middlewares=[CacheMiddleware(cache, when={FID})]) as client:
            for i in range(300):
                r = client.request(b"q%d" % i, fid=FID, timeout=5)
                assert r.body == b"answer:q%d" % i and r.cached == ""
                again = client.request(b"q%d" % i, fid=FID, timeout=5)  # queued, in flight or on disk
                assert again.cached == "l2" and again.body == r.body and dict(again.headers) == {"etag": "1"}
            pid = writer_pid(l2)
            assert pid != os.getpid() and exists(pid)
            assert cache.flush(10)
    s = l2.stats()
    assert s.written == 300 and s.dropped == 0 and s.errors == 0 and s.writer_restarts == 0
    cache.close()
    assert not exists(pid)  # reaped by close()
    assert len(on_disk(directory)) == 300
    assert not caplog.records, caplog.text


def test_a_writer_killed_mid_run_is_counted_and_replaced_and_requests_keep_answering(
    tmp_path: Path, server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    directory = str(tmp_path / "l2")
    l2 = DiskCache(directory, write_delay=0.001, writer="process")
    cache = TwoLevelCache(l2=l2)
    killed = []

    def killer() -> None:
        wait_for(lambda: l2._proc is not None and l2._proc.answered, "a running writer")
        wait_for(lambda: not l2._proc_idle.is_set(), "a batch in flight")
        killed.append(writer_pid(l2))
        os.kill(killed[0], signal.SIGKILL)

    with caplog.at_level(logging.WARNING, logger="nexus_green.middleware.cache"):
        with Client(server.url, middlewares=[CacheMiddleware(cache, when={FID})]) as client:
            k = gevent.spawn(killer)
            i = 0
            while not k.dead or i < 400:
                assert client.request(b"m%d" % i, fid=FID, timeout=5).body == b"answer:m%d" % i
                i += 1
                assert i < 100_000, "the killer never saw a batch in flight"
            k.get()
            assert cache.flush(10)
            s = l2.stats()
            assert s.writer_restarts == 1 and s.errors == 1
            assert s.written + s.dropped == i and 0 < s.dropped <= 64  # the batch in flight, at most
            assert writer_pid(l2) != killed[0]  # a new writer took over
    lost = [r for r in caplog.records if "writer process" in r.getMessage()]
    assert len(lost) == 1 and "lost" in lost[0].getMessage(), caplog.text
    cache.close()
    assert len(on_disk(directory)) >= s.written  # what was counted written is there (maybe the lost batch too)


def test_a_stalled_writer_is_a_fault_bounded_by_op_timeout(tmp_path: Path) -> None:
    l2 = DiskCache(str(tmp_path / "l2"), op_timeout=0.5, write_delay=0, writer="process")
    l2.set("warm", entry(b"w"))
    assert l2.flush(15)
    pid = writer_pid(l2)
    os.kill(pid, signal.SIGSTOP)  # a disk that hangs, from the writer's side
    try:
        t0 = time.monotonic()
        l2.set("k", entry(b"v"))
        assert l2.get("k") is not None  # in flight: still read
        assert l2.flush(5)
        assert 0.4 < time.monotonic() - t0 < 3.0
        s = l2.stats()
        assert s.errors == 1 and s.dropped == 1 and not l2.available
        assert isinstance(l2.last_error, gevent.Timeout)
        wait_for(lambda: not exists(pid), "the stalled writer killed")
    finally:
        if exists(pid):
            os.kill(pid, signal.SIGCONT)
    l2.close()


def test_a_writer_that_cannot_start_leaves_the_worker_thread_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cache_writer_process, "_BOOT", "import sys; sys.exit(3)")  # e.g. no diskcache there
    directory = str(tmp_path / "l2")
    l2 = DiskCache(directory, write_delay=0, writer="process")
    with caplog.at_level(logging.WARNING, logger="nexus_green.middleware.cache"):
        l2.set("warm", entry(b"w"))
        l2.flush(15)
        for i in range(100):
            l2.set(f"k{i}", entry(b"v%d" % i))
        assert l2.flush(10)
    s = l2.stats()
    assert l2._proc is None and l2._proc_off and s.errors == 1 and s.writer_restarts == 0
    assert s.written == 100  # the first batch was lost with the writer; the rest by the thread
    off = [r for r in caplog.records if "worker thread instead" in r.getMessage()]
    assert len(off) == 1, caplog.text
    l2.close()
    with diskcache.Cache(directory) as store:
        assert len(store) == 100


def test_a_full_disk_is_a_counted_fault_and_the_writer_survives_it(tmp_path: Path) -> None:
    # SQLite's max_page_count makes the database "full" exactly like a full disk (SQLITE_FULL).
    l2 = DiskCache(
        str(tmp_path / "l2"), sqlite_max_page_count=40, disk_min_file_size=1 << 20, write_delay=0, writer="process"
    )
    l2.set("warm", entry(b"w"))
    assert l2.flush(15) and l2.stats().written == 1
    pid = writer_pid(l2)
    for i in range(300):
        l2.set(f"k{i}", entry(b"x" * 4000))
    assert l2.flush(10)
    s = l2.stats()
    assert s.errors == 1 and "full" in str(l2.last_error) and not l2.available
    assert s.written == 1 and s.dropped == 300 and s.writer_restarts == 0
    assert exists(pid) and writer_pid(l2) == pid  # a fault it reported, not a death
    l2.close()


def test_a_delete_wins_over_the_batch_in_the_writer(tmp_path: Path) -> None:
    directory = str(tmp_path / "l2")
    l2 = DiskCache(directory, write_delay=0, writer="process")
    l2.set("warm", entry(b"w"))
    assert l2.flush(15)
    pid = writer_pid(l2)
    os.kill(pid, signal.SIGSTOP)
    try:
        l2.set("k", entry(b"v"))
        wait_for(lambda: not l2._proc_idle.is_set(), "the batch in the writer")
        deleting = gevent.spawn(l2.delete, "k")
        gevent.sleep(0.05)
        assert not deleting.ready()  # it waits for the batch to commit (bounded by op_timeout)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert deleting.get(timeout=5) is True
    assert l2.flush(5) and l2.get("k") is None
    l2.close()
    with diskcache.Cache(directory) as store:
        assert "k" not in store and "warm" in store


def test_close_flushes_what_is_queued_and_reaps_the_writer(tmp_path: Path) -> None:
    directory = str(tmp_path / "l2")
    l2 = DiskCache(directory, write_delay=60, writer="process")
    l2.set("warm", entry(b"w"))
    assert l2.flush(15)
    pid = writer_pid(l2)
    for i in range(500):
        assert l2.set(f"k{i}", entry(Response(body=b"b%d" % i, fid=FID)))
    assert l2.stats().queued > 0  # some batches may already be in the writer
    t0 = time.monotonic()
    l2.close()
    assert time.monotonic() - t0 < l2.op_timeout * 10
    assert not exists(pid) and l2._proc is None
    s = l2.stats()
    assert s.written == 501 and s.dropped == 0
    again = DiskCache(directory, writer="process")
    got = again.get("k499")
    assert got is not None and got.value == Response(body=b"b499", fid=FID)
    again.close()


def test_other_values_large_values_and_unpicklable_ones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = str(tmp_path / "l2")
    l2 = DiskCache(directory, write_delay=0, writer="process")
    l2.set("warm", entry(b"w"))
    assert l2.flush(15) and l2._proc is not None
    big = Response(body=b"z" * 100_000, fid=FID, headers={"a": "b"})
    odd = Response(body=bytearray(b"ba"), fid=FID)  # not plain bytes: pickled, keeps its type
    values = {"dict": {"a": [1, 2]}, "small": b"s", "big": big, "odd": odd, "text": "t" * 50_000}
    for k, v in values.items():
        l2.set(k, entry(v))
    with caplog.at_level(logging.WARNING, logger="nexus_green.middleware.cache"):
        l2.set("bad", entry(lambda: None))
        assert l2.flush(10)
    s = l2.stats()
    assert s.written == 1 + len(values) and s.errors == 1 and l2.available
    l2.close()
    again = DiskCache(directory, writer="process")
    for k, v in values.items():
        got = again.get(k)
        assert got is not None and got.value == v and type(got.value) is type(v), k
    assert type(again.get("odd").value.body) is bytearray  # type: ignore[union-attr]
    assert again.get("bad") is None
    again.close()


def test_cached_functions_persist_through_the_writer(tmp_path: Path) -> None:
    calls = []

    @cached(l2=DiskCache(str(tmp_path / "fn"), writer="process"), l1=None)
    def double(x: int) -> dict[str, int]:
        calls.append(x)
        return {"x": x * 2}

    assert [double(i)["x"] for i in range(50)] == [i * 2 for i in range(50)]
    store = double.cache  # type: ignore[attr-defined]
    assert store.flush(10) and store.stats().l2.written == 50
    assert [double(i)["x"] for i in range(50)] == [i * 2 for i in range(50)] and len(calls) == 50
    store.close()


def test_the_thread_writer_on_request_and_settings_the_process_cannot_take(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="writer"):
        DiskCache(str(tmp_path / "x"), writer="fork")
    for l2 in (
        DiskCache(str(tmp_path / "a"), writer="thread", write_delay=0),
        DiskCache(
            str(tmp_path / "b"), disk=diskcache.Disk, write_delay=0, writer="process"
        ),  # a class: not for another process
    ):
        l2.set("k", entry(b"v"))
        assert l2.flush(10) and l2.stats().written == 1 and l2._proc is None
        l2.close()


def test_a_cache_never_closed_lets_its_writer_go(tmp_path: Path) -> None:
    l2 = DiskCache(str(tmp_path / "l2"), write_delay=0, writer="process")
    l2.set("k", entry(b"v"))
    assert l2.flush(15)
    pid = writer_pid(l2)
    l2._pool.kill()  # type: ignore[union-attr]
    l2._cache = None
    cache_module_live = len(cache_writer_process._ORPHANS)
    del l2
    import gc

    gc.collect()
    assert len(cache_writer_process._ORPHANS) == cache_module_live + 1  # its pipe closed: it ends on its own
    wait_for(lambda: not exists(pid), "the writer to exit at the end of its input")
    assert cache_writer_process.reap_orphans(5.0) and pid not in cache_writer_process._ORPHANS


def test_writer_process_protocol_errors(tmp_path: Path) -> None:
    config = {
        "directory": str(tmp_path / "l2"),
        "busy_timeout": 0.05,
        "size_limit": 1 << 20,
        "eviction_policy": "none",
        "max_items": 10,
        "settings": {},
    }
    proc = WriterProcess(config)
    assert "running" in repr(proc)
    assert proc.write(1, [("a", 60.0, 0, ("v",))]) == (1, "ok", 1, [], [])
    proc.kill()
    with pytest.raises(cache_writer_process.WriterGone):
        proc.write(2, [])
    assert proc.stop(5.0) is not None and "exited" in repr(proc) and not exists(proc.pid)


def test_a_stopped_writer_that_does_not_exit_is_killed_within_the_bound(tmp_path: Path) -> None:
    proc = WriterProcess(
        {
            "directory": str(tmp_path / "l2"),
            "busy_timeout": 0.05,
            "size_limit": 1 << 20,
            "eviction_policy": "none",
            "max_items": 10,
            "settings": {},
        }
    )
    assert proc.write(1, [])[1] == "ok"
    os.kill(proc.pid, signal.SIGSTOP)  # it cannot see its input close
    t0 = time.monotonic()
    assert proc.stop(0.2) is not None  # -SIGKILL (0 after patch_all: gevent's SIGCHLD watcher reaped it)
    assert time.monotonic() - t0 < 2.0 and not exists(proc.pid)


def test_a_writer_that_cannot_be_spawned_leaves_the_thread_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(cache_writer_process.sys, "executable", str(tmp_path / "missing" / "python3"))
    l2 = DiskCache(str(tmp_path / "l2"), write_delay=0, writer="process")
    with caplog.at_level(logging.WARNING, logger="nexus_green.middleware.cache"):
        l2.set("k", entry(b"v"))
        assert l2.flush(10)
    assert l2.stats().written == 1 and l2._proc_off and l2._proc is None
    assert "could not start" in caplog.text
    l2.close()


FORK = textwrap.dedent(
    """
    import json, os, sys, time
    import gevent
    from nexus_green.middleware.cache import CacheEntry, DiskCache

    def entry(v):
        return CacheEntry(value=v, expires=time.time() + 60, stale_until=time.time() + 60)

    def pipes():
        out = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                out.append(os.readlink("/proc/self/fd/" + fd))
            except OSError:  # the listing's own descriptor
                pass
        return sorted(p for p in out if p.startswith("pipe:"))

    l2 = DiskCache(sys.argv[1], write_delay=0, writer="process")
    l2.set("warm", entry(0))
    assert l2.flush(15)
    parent_writer = l2._proc.pid
    writer_pipes = [os.readlink("/proc/self/fd/%d" % fd) for fd in l2._proc._fds]
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        # Closed at fork (after patch_all gevent's os.close finishes a pipe's close in the next loop turn).
        deadline = time.monotonic() + 2.0
        while [p for p in pipes() if p in writer_pipes] and time.monotonic() < deadline:
            gevent.sleep(0.005)
        inherited = [p for p in pipes() if p in writer_pipes]
        l2.set("child", entry("C"))
        flushed = l2.flush(15)
        out = {"inherited": len(inherited), "flushed": flushed, "writer": l2._proc.pid, "written": l2.stats().written}
        l2.close()
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
    os.waitpid(pid, 0)
    l2.set("parent", entry("P"))
    ok = l2.flush(15)
    out = {"child": json.loads(child), "parent_writer": parent_writer, "same_writer": l2._proc.pid == parent_writer,
           "ok": ok, "restarts": l2.stats().writer_restarts}
    l2.close()
    again = DiskCache(sys.argv[1], writer="process")
    out["keys"] = sorted(k for k in ("warm", "parent", "child") if again.get(k) is not None)
    again.close()
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("patched", [False, True])
def test_a_forked_app_never_shares_the_writer_pipe(tmp_path: Path, patched: bool) -> None:
    script = tmp_path / "fork.py"
    script.write_text(("from gevent import monkey\nmonkey.patch_all()\n" if patched else "") + FORK)
    proc = subprocess.run(
        [sys.executable, "-W", "error", str(script), str(tmp_path / "l2")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    child = seen["child"]
    assert child["inherited"] == 0, seen
    assert child["flushed"] is True and child["written"] == 2 and child["writer"] != seen["parent_writer"]
    assert seen["ok"] and seen["same_writer"] and seen["restarts"] == 0  # the parent's writer is untouched
    assert seen["keys"] == ["child", "parent", "warm"]


ORPHAN = textwrap.dedent(
    """
    import sys, time
    from nexus_green.middleware.cache import CacheEntry, DiskCache
    l2 = DiskCache(sys.argv[1], write_delay=0, writer="process")
    l2.set("k", CacheEntry(value=1, expires=time.time() + 60, stale_until=time.time() + 60))
    assert l2.flush(15)
    print(l2._proc.pid, flush=True)
    time.sleep(60)
    """
)


def test_the_writer_dies_with_its_parent(tmp_path: Path) -> None:
    app = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, str(tmp_path / "l2")], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        assert app.stdout is not None
        pid = int(app.stdout.readline())
        assert exists(pid)
        app.kill()  # SIGKILL: no atexit, no close()
        app.wait(10)
        wait_for(lambda: not exists(pid), "the writer to die with its parent")
    finally:
        app.kill()
        app.wait(10)
        assert app.stdout is not None
        app.stdout.close()


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
