"""Issue 20: the idempotency guard's key window in Redis (a real redis-server), across worker processes.

The seam test runs two EmbeddedServer *processes* that share one Redis-backed
guard; a real Client sends an idempotency-keyed request to the first, then
retries it (same key) on the second: the handler's side effect, an INCR in
Redis, happens once and the retry gets the first reply back.

The module runs twice: plain, and after ``gevent.monkey.patch_all()`` (last test).
"""

from __future__ import annotations

import sys

import gevent
import pytest
import redis
from gevent import subprocess as gsubprocess

from nexus_green import Client
from nexus_green.errors import ConfigurationError, IdempotencyInProgress
from nexus_green.resilience import IdempotencyMiddleware
from nexus_green.resilience.idempotency import (
    IdempotencyGuard,
    dump_shared_result,
    idempotency_key,
    load_shared_result,
)
from nexus_green.testing import EmbeddedServer, Reply, run_module_patched
from nexus_green.transport.redis import RedisLink

pytestmark = pytest.mark.usefixtures("leakcheck")

FID_APPLY = 7


def _plain(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def _link(url: str, **options: object) -> RedisLink:
    # A generous per-call limit where the test is not about slowness: on a loaded 2-core machine a first
    # connect can take longer than the default 50 ms, and that call would fall back.
    return RedisLink(url, timeout=2.0, **options)  # type: ignore[arg-type]


# --- the stored form -----------------------------------------------------------------------------


def test_shared_results_are_plain_data_and_round_trip_exactly() -> None:
    value = {"body": b"\x00\xff", "pair": (1, 2.5), "list": [None, True, "s"], 3: {"nested": (b"",)}}
    assert load_shared_result(dump_shared_result(value)) == value
    assert type(load_shared_result(dump_shared_result((1,)))) is tuple
    assert type(load_shared_result(dump_shared_result([1]))) is list
    with pytest.raises(TypeError, match="plain data .* got object"):
        dump_shared_result(object())
    with pytest.raises(TypeError, match="got set"):
        dump_shared_result({1, 2})


@pytest.mark.parametrize(
    "data",
    [b"not json", b'{"x":1}', b'{"b":1}', b'{"b":"***"}', b'{"t":1,"d":2}', b"[" * 100_000 + b"]" * 100_000],
)
def test_bytes_that_are_no_stored_result_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a shared idempotency result"):
        load_shared_result(data)


def test_shared_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="pass shared= too"):
        IdempotencyGuard(namespace="shop")
    with pytest.raises(ConfigurationError, match="running_ttl"):
        IdempotencyGuard(running_ttl=0)
    link = RedisLink("redis://127.0.0.1:1/0", namespace="shop")
    try:
        with pytest.raises(ConfigurationError, match="differs from the link's 'shop'"):
            IdempotencyGuard(shared=link, namespace="other")
        guard = IdempotencyGuard(shared=link, namespace="shop")
        assert guard.shared and "shop:idem:*" in repr(guard)
        guard.close()  # a link passed in stays open: its owner closes it
        assert link.client.connection_pool is not None
    finally:
        link.close()
    assert not IdempotencyGuard().shared


# --- two guards on one Redis -----------------------------------------------------------------------


def test_two_guards_on_one_redis_apply_a_key_once(redis_server) -> None:  # type: ignore[no-untyped-def]
    a = IdempotencyGuard(shared=_link(redis_server.url, namespace="t1"))
    b = IdempotencyGuard(shared=_link(redis_server.url, namespace="t1"))
    other = IdempotencyGuard(shared=_link(redis_server.url, namespace="t2"))
    try:
        assert a.begin("k").action == "run"
        assert b.begin("k").action == "in_progress"
        with pytest.raises(IdempotencyInProgress):
            b.call("k", lambda: "never")
        assert other.begin("k").action == "run"  # another namespace is another application
        a.complete("k", (b"applied", 1))
        decision = b.begin("k")
        assert (decision.action, decision.result) == ("replay", (b"applied", 1))
        assert b.call("k", lambda: "never") == (b"applied", 1)
        # the value in Redis is the JSON form under <namespace>:idem:<key>, with the window's TTL
        r = _plain(redis_server.url)
        assert r.get("t1:idem:k") == b"d" + dump_shared_result((b"applied", 1))
        assert 299_000 < r.pttl("t1:idem:k") <= 300_000
        r.close()
        # a failed request is forgotten everywhere, so its retry runs again (on any worker)
        with pytest.raises(ZeroDivisionError):
            a.call("f", lambda: 1 // 0)
        assert b.call("f", lambda: "second try") == "second try"
        assert a.stats().fallbacks == b.stats().fallbacks == 0
        assert a.stats().shared == 2 and b.stats().shared == 5  # every begin decided in Redis
    finally:
        for g in (a, b, other):
            g.link.close()


def test_a_dead_workers_marker_expires_and_a_late_owner_cannot_clobber_the_next(redis_server) -> None:  # type: ignore[no-untyped-def]
    a = IdempotencyGuard(shared=_link(redis_server.url), running_ttl=0.05)
    b = IdempotencyGuard(shared=_link(redis_server.url), running_ttl=5)
    try:
        assert a.begin("k").action == "run"  # a's worker stalls past running_ttl
        with gevent.Timeout(5):
            while b.begin("k").action == "in_progress":
                gevent.sleep(0.02)
        a.abandon("k")  # not a's any more: b's marker stays
        assert a.begin("k").action == "in_progress"
        a._own("k", b"r-stale-token")
        a.complete("k", "late")  # a's late result does not replace b's run
        b.complete("k", "b's result")
        assert a.begin("k").result == "b's result"
    finally:
        a.link.close()
        b.link.close()


def test_values_that_are_not_ours_are_never_replayed_and_unshareable_results_stay_local(redis_server) -> None:  # type: ignore[no-untyped-def]
    guard = IdempotencyGuard(shared=_link(redis_server.url))
    r = _plain(redis_server.url)
    try:
        r.set("nexus_green:idem:bad", b"d{not json")
        r.set("nexus_green:idem:alien", b"something else")
        assert guard.begin("bad").action == "in_progress"  # never run twice, never trusted
        assert guard.begin("alien").action == "in_progress"
        assert guard.stats().corrupt == 2
        assert guard.begin("obj").action == "run"
        marker = object()
        guard.complete("obj", marker)
        assert guard.stats().unshareable == 1
        assert r.get("nexus_green:idem:obj") is None  # the marker is gone: other workers may run it
        assert guard._local_begin("obj").result is marker  # this worker still replays it
    finally:
        r.close()
        guard.link.close()


def test_redis_down_falls_back_to_the_local_window_and_shared_mode_resumes(redis_server) -> None:  # type: ignore[no-untyped-def]
    link = _link(redis_server.url, backoff=(0.05, 0.05))
    guard = IdempotencyGuard(shared=link)
    runs: list[str] = []
    try:
        assert guard.call("before", lambda: runs.append("before") or "b") == "b"
        redis_server.kill()
        # completed before the outage: still replayed by this worker from its local copy
        assert guard.call("before", lambda: runs.append("again") or "x") == "b"
        assert guard.call("during", lambda: runs.append("during") or "d") == "d"
        assert guard.call("during", lambda: runs.append("dup") or "x") == "d"
        assert guard.begin("mid").action == "run"
        assert runs == ["before", "during"]
        fallbacks = guard.stats().fallbacks
        assert fallbacks == 4 and link.fallbacks >= 4
        shared = guard.stats().shared
        redis_server.restart()
        with gevent.Timeout(10):
            while guard.stats().shared == shared:  # local decisions until the link's backoff lets a probe through
                guard.abandon("probe")
                assert guard.begin("probe").action == "run"
                gevent.sleep(0.02)
        assert link.resumptions == 1 and guard.stats().fallbacks >= fallbacks
        assert guard.begin("after").action == "run"
        guard.complete("after", "a")
        guard.abandon("mid")  # begun locally: only the local window knew it
        assert _plain(redis_server.url).get("nexus_green:idem:after") == b"d" + dump_shared_result("a")
    finally:
        guard.close()
        link.close()


def test_a_duplicate_of_a_shared_run_while_redis_is_away_waits_for_it_on_the_same_worker(redis_server) -> None:  # type: ignore[no-untyped-def]
    link = _link(redis_server.url, backoff=(5, 5))
    guard = IdempotencyGuard(shared=link)
    try:
        assert guard.begin("k").action == "run"  # decided in Redis
        redis_server.kill()
        assert guard.begin("k").action == "in_progress"  # decided locally: this worker runs it already
        assert guard.stats().fallbacks == 1
        guard.complete("k", "done")
        assert guard.begin("k").result == "done"
    finally:
        guard.close()
        link.close()


def test_complete_and_abandon_that_cannot_reach_redis_are_counted(redis_server) -> None:  # type: ignore[no-untyped-def]
    link = _link(redis_server.url, backoff=(5, 5))
    guard = IdempotencyGuard(shared=link)
    try:
        assert guard.begin("c").action == "run"
        assert guard.begin("a").action == "run"
        assert guard.begin("u").action == "run"
        redis_server.kill()
        guard.complete("c", "done")
        guard.abandon("a")
        guard.complete("u", object())
        assert guard.stats().lost == 3 and guard.stats().unshareable == 1
        guard.abandon("never-begun")
        guard.complete("never-begun", "x")
        assert guard.stats().lost == 3
    finally:
        guard.close()
        link.close()


def test_owner_bookkeeping_is_bounded(redis_server) -> None:  # type: ignore[no-untyped-def]
    guard = IdempotencyGuard(shared=redis_server.url, max_keys=3)  # a guard that makes (and closes) its link
    try:
        guard.link.timeout = 2.0
        for i in range(10):
            assert guard.begin(f"k{i}").action == "run"
        assert len(guard._owned) == 3
    finally:
        guard.close()  # the leakcheck fixture fails the test if the link's sockets stayed open


# --- the seam: two server processes, one client retrying across them ------------------------------

SERVER_PROCESS = """
import sys
import gevent.select
from nexus_green.resilience.idempotency import IdempotencyGuard
from nexus_green.testing import EmbeddedServer, Reply
from nexus_green.transport.redis import RedisLink, gevent_redis

url = sys.argv[1]
counter = gevent_redis(url)
# A generous per-call limit: on a loaded test machine the first call (connect, script load) can take longer
# than the default 50 ms, and a fallback would decide locally (the weaker guarantee, tested elsewhere).
link = RedisLink(url, namespace="fleet", timeout=2.0)
guard = IdempotencyGuard(shared=link)

def apply(frame):
    n = counter.incr("fleet:test:applied")  # the side effect, counted where every process sees it
    return Reply(b"applied #%d by %s" % (n, sys.argv[2].encode()), headers={"worker": sys.argv[2]})

with EmbeddedServer(handlers={FID: apply}, idempotency=guard) as server:
    print(server.url, flush=True)
    gevent.select.select([sys.stdin], [], [])  # serve (the hub runs) until the test writes to our stdin
    sys.stdin.readline()
    print(guard.stats().fallbacks, server.replays, flush=True)
link.close()
counter.close()
""".replace("FID", str(FID_APPLY))


class ServerProcess:
    def __init__(self, redis_url: str, name: str) -> None:
        self.proc = gsubprocess.Popen(
            [sys.executable, "-c", SERVER_PROCESS, redis_url, name],
            stdin=gsubprocess.PIPE,
            stdout=gsubprocess.PIPE,
            stderr=gsubprocess.PIPE,
        )
        with gevent.Timeout(30, RuntimeError(f"server process {name} did not start")):
            self.url = self.proc.stdout.readline().decode().strip()  # type: ignore[union-attr]
        assert self.url.startswith("tcp://"), self.proc.stderr.read().decode()  # type: ignore[union-attr]

    def stop(self) -> int:
        """Close the process; the replies it sent from the guard."""
        out, err = self.proc.communicate(b"\n", timeout=30)
        assert self.proc.returncode == 0, err.decode()
        fallbacks, replays = map(int, out.decode().split()[-2:])
        assert fallbacks == 0, "every decision was made in Redis"
        return replays


def test_a_retry_that_lands_on_another_worker_process_is_applied_once(redis_server) -> None:  # type: ignore[no-untyped-def]
    first = ServerProcess(redis_server.url, "w1")
    second = ServerProcess(redis_server.url, "w2")
    try:
        with (
            Client(first.url, middlewares=[IdempotencyMiddleware()]) as c1,
            Client(second.url, middlewares=[IdempotencyMiddleware()]) as c2,
        ):
            with idempotency_key("order-42"):
                original = c1.request(b"charge", fid=FID_APPLY, timeout=10)
                retried = c2.request(b"charge", fid=FID_APPLY, timeout=10)  # the retry reaches another process
            with idempotency_key("order-43"):
                other = c2.request(b"charge", fid=FID_APPLY, timeout=10)
    finally:
        replays = [first.stop(), second.stop()]
    assert original.body == retried.body == b"applied #1 by w1"
    assert dict(retried.headers) == {"worker": "w1"}  # the first reply, headers and all
    assert other.body == b"applied #2 by w2"
    assert replays == [0, 1]
    r = _plain(redis_server.url)
    assert r.get("fleet:test:applied") == b"2"  # two keys, two applications: the retry ran nothing
    r.close()


def test_shared_guard_in_one_embedded_server_replays_replies_with_code_and_headers(redis_server) -> None:  # type: ignore[no-untyped-def]
    guard = IdempotencyGuard(shared=_link(redis_server.url))
    calls: list[bytes] = []

    def apply(frame: object) -> Reply:
        calls.append(frame.body)  # type: ignore[attr-defined]
        return Reply(b"created", code=201, headers={"id": "9"})

    try:
        with (
            EmbeddedServer(handlers={FID_APPLY: apply}, idempotency=guard) as server,
            Client(server.url, middlewares=[IdempotencyMiddleware()], raise_for_code=False) as client,
        ):
            with idempotency_key("k"):
                a = client.request(b"x", fid=FID_APPLY, timeout=10)
                b = client.request(b"x", fid=FID_APPLY, timeout=10)
            assert server.replays == 1
    finally:
        guard.link.close()
    assert (a.code, a.body, dict(a.headers)) == (b.code, b.body, dict(b.headers)) == (201, b"created", {"id": "9"})
    assert calls == [b"x"]


def test_module_passes_under_patch_all(redis_server) -> None:  # type: ignore[no-untyped-def]
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
