"""Issue 20: the cache's L3 level in Redis (a real redis-server), proven with real Clients in real processes.

Every response cached here came from a real Client over a loopback socket to
an EmbeddedServer (the disk cache once broke on wire responses while every
test with hand-made Response objects passed). Two worker processes share one
L3: the second is served from Redis (the server's call count proves it), a
tag invalidated in one process is a miss in the other, a tampered value is
rejected, and killing Redis mid-run leaves L1/L2 serving, counts the
fallbacks, and L3 resumes after the restart.

The module runs twice: plain, and after ``gevent.monkey.patch_all()`` (last test).
"""

from __future__ import annotations

import json
import pickle
import sys
from typing import Any

import gevent
import pytest
import redis
from gevent import subprocess as gsubprocess

from nexus_green.clock import FakeClock
from nexus_green.errors import ConfigurationError
from nexus_green.middleware import RedisCache
from nexus_green.middleware.cache import CacheEntry, CacheMiddleware, TwoLevelCache
from nexus_green.middleware.cache_redis import _MAGIC
from nexus_green.testing import EmbeddedServer, Reply, run_module_patched
from nexus_green.transport.redis import RedisLink

pytestmark = pytest.mark.usefixtures("leakcheck")

FID = 42
SECRET = "a-test-secret-of-32-bytes-length"


def _plain(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=5)


def _link(url: str, **options: Any) -> RedisLink:
    # A generous per-call limit where the test is not about slowness (a loaded 2-core machine).
    options.setdefault("timeout", 2.0)
    return RedisLink(url, **options)


def _l3(url: str, **options: Any) -> RedisCache:
    link_options = {k: options.pop(k) for k in ("namespace", "backoff") if k in options}
    return RedisCache(_link(url, **link_options), secret=options.pop("secret", SECRET), **options)


def _close(cache: TwoLevelCache) -> None:
    cache.close()
    assert cache.l3 is not None
    cache.l3.link.close()


EXPLODED: list[int] = []


def _explode() -> None:
    EXPLODED.append(1)


class _Bomb:
    def __reduce__(self) -> Any:
        return (_explode, ())


def _wait(predicate: Any, what: str, timeout: float = 10.0) -> None:
    with gevent.Timeout(timeout, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(0.01)


# --- configuration ---------------------------------------------------------------------------------


def test_l3_refuses_to_start_without_a_key_and_checks_its_options() -> None:
    with pytest.raises(ConfigurationError, match="L3 needs secret=: the HMAC-SHA256 key"):
        RedisCache("redis://127.0.0.1:1/0")
    with pytest.raises(ConfigurationError, match="at least 16 bytes"):
        RedisCache("redis://127.0.0.1:1/0", secret="short")
    for bad in ({"ttl": 0}, {"max_value_bytes": 0}, {"resync_interval": 0}):
        with pytest.raises(ConfigurationError, match="L3"):
            RedisCache("redis://127.0.0.1:1/0", secret=SECRET, **bad)
    link = RedisLink("redis://127.0.0.1:1/0", namespace="shop")
    try:
        with pytest.raises(ConfigurationError, match="differs from the link's 'shop'"):
            RedisCache(link, secret=SECRET, namespace="other")
        l3 = RedisCache(link, secret=SECRET, namespace="shop", name="users/v2")
        assert l3.vkey("req:ab") == "shop:cache:users_v2:v:req:ab"
        assert (l3.tags_key, l3.channel) == ("shop:cache:users_v2:tags", "shop:cache:users_v2:inval")
        with pytest.raises(ConfigurationError, match="pass l3= to the TwoLevelCache"):
            CacheMiddleware(TwoLevelCache(l2=None), when={FID}, l3=l3)
        with pytest.raises(ConfigurationError, match="l3 takes a RedisCache"):
            TwoLevelCache(l2=None, l3="redis://x")  # type: ignore[arg-type]
        TwoLevelCache(l2=None, l3=l3)
        with pytest.raises(ConfigurationError, match="already serves a cache"):
            TwoLevelCache(l2=None, l3=l3)
        l3.close()  # a link passed in stays open
    finally:
        link.close()


# --- one process, two caches on one Redis ------------------------------------------------------------


def test_values_are_signed_namespaced_and_expire_with_the_entry(redis_server) -> None:  # type: ignore[no-untyped-def]
    a = TwoLevelCache(l2=None, l3=_l3(redis_server.url, namespace="app1"))
    b = TwoLevelCache(l2=None, l3=_l3(redis_server.url, namespace="app1"))
    other_app = TwoLevelCache(l2=None, l3=_l3(redis_server.url, namespace="app2"))
    r = _plain(redis_server.url)
    try:
        a.set("k", {"v": 1}, ttl=30)
        blob = r.get("app1:cache:cache:v:k")
        assert blob is not None and blob.startswith(_MAGIC)
        assert 29_000 < r.pttl("app1:cache:cache:v:k") <= 30_000
        assert b.get_or_load("k", lambda: "loaded") == ({"v": 1}, "l3")
        assert b.get_or_load("k", lambda: "loaded") == ({"v": 1}, "l1")  # an L3 hit filled L1
        assert other_app.get("k") is None  # another namespace, another application
        a.invalidate("k")
        assert r.get("app1:cache:cache:v:k") is None
        a.set("j", 2)
        a.clear()
        assert r.keys("app1:cache:cache:v:*") == []
        stats = b.stats()
        assert stats.l3 is not None and stats.l3.hits == 1 and stats.hits == 2
        assert "l3=<RedisCache app1:cache:cache:*" in repr(a)
    finally:
        r.close()
        for c in (a, b, other_app):
            _close(c)


def test_a_value_whose_signature_fails_is_a_counted_miss_and_never_unpickled(redis_server) -> None:  # type: ignore[no-untyped-def]
    writer = TwoLevelCache(l2=None, l3=_l3(redis_server.url))
    reader = TwoLevelCache(l2=None, l3=_l3(redis_server.url))
    stranger = TwoLevelCache(l2=None, l3=_l3(redis_server.url, secret="another-applications-secret-key!"))
    r = _plain(redis_server.url)
    l3 = reader.l3
    assert l3 is not None
    try:
        writer.set("k", "value")
        key = "nexus_green:cache:cache:v:k"
        blob = r.get(key)
        assert blob is not None
        r.set(key, blob[:-1] + bytes([blob[-1] ^ 1]))  # one bit of the pickle flipped
        assert reader.get("k") is None and l3.rejected == 1
        r.set("nexus_green:cache:cache:v:moved", blob)  # a valid value moved to another key
        assert reader.get("moved") is None and l3.rejected == 2
        r.set(key, b"plain junk")
        assert reader.get("k") is None and l3.rejected == 3
        bomb = pickle.dumps(_Bomb())  # a pickle that runs code when loaded
        r.set(key, _MAGIC + b"\x00" * 32 + bomb)
        assert reader.get("k") is None and l3.rejected == 4 and EXPLODED == []  # never unpickled
        payload = pickle.dumps(("not", "an", "entry"))
        r.set(key, _MAGIC + l3._sign(key, payload) + payload)  # signed but not an entry
        assert reader.get("k") is None and l3.rejected == 5
        r.set(key, _MAGIC + l3._sign(key, b"\x80\x05junk") + b"\x80\x05junk")  # signed but unreadable
        assert reader.get("k") is None and l3.rejected == 6
        stranger.set("k", "theirs")  # another secret: this application never trusts it
        assert reader.get("k") is None and l3.rejected == 7
        assert reader.stats().l3.rejected == 7  # type: ignore[union-attr]
        assert reader.get_or_load("k", lambda: "reloaded") == ("reloaded", "")  # and replaced
    finally:
        r.close()
        for c in (writer, reader, stranger):
            _close(c)


def test_values_l3_cannot_store_stay_in_the_levels_above(redis_server) -> None:  # type: ignore[no-untyped-def]
    cache = TwoLevelCache(l2=None, l3=_l3(redis_server.url, max_value_bytes=1000))
    l3 = cache.l3
    assert l3 is not None
    try:
        cache.set("big", b"x" * 2000)
        cache.set("fn", lambda: None)  # pickle refuses a lambda
        assert cache.get("big") == b"x" * 2000 and callable(cache.get("fn"))
        assert l3.counters.dropped == 2 and l3.counters.written == 0
        assert not l3.set("gone", CacheEntry(value=1, expires=0.0, stale_until=0.0))  # already dead
    finally:
        _close(cache)


def test_tag_invalidation_reaches_a_listening_cache_and_a_polling_one(redis_server) -> None:  # type: ignore[no-untyped-def]
    a = TwoLevelCache(l2=None, l3=_l3(redis_server.url))
    listening = TwoLevelCache(l2=None, l3=_l3(redis_server.url))
    polling = TwoLevelCache(l2=None, l3=_l3(redis_server.url, listen=False, resync_interval=0.05))
    try:
        _wait(lambda: a.l3.listening and listening.l3.listening, "listeners")  # type: ignore[union-attr]
        a.set("u1", "profile", tags=("user:1",))
        a.set("u2", "other", tags=("user:2",))
        assert listening.get("u1") == polling.get("u1") == "profile"  # both hold it in L1 now
        a.invalidate_tag("user:1")
        _wait(lambda: listening._gens.get("user:1") == 1, "the published generation")
        assert listening.get("u1") is None and listening.get("u2") == "other"
        _wait(lambda: polling.get("u1") is None, "the polling cache's re-read")
        assert polling.get("u2") == "other" and polling.l3.resyncs >= 2  # type: ignore[union-attr]
        assert not polling.l3.listening  # type: ignore[union-attr]
        # an entry stored under a newer generation than a cache knows teaches it the newer one
        fresh = TwoLevelCache(l2=None, l3=_l3(redis_server.url, listen=False, resync_interval=3600))
        fresh.l3._synced_at = fresh.clock.now()  # type: ignore[union-attr]  # no re-read: only the entry
        listening.set("u1", "new profile", tags=("user:1",))
        assert fresh.get("u1") == "new profile" and fresh._gens == {"user:1": 1}
        _close(fresh)
    finally:
        for c in (a, listening, polling):
            _close(c)


def test_a_flood_of_invalidations_is_taken_in_order_while_other_greenlets_run(redis_server) -> None:  # type: ignore[no-untyped-def]
    """Buffered pub/sub messages come back without a wait: the listener yields every 64 (principle 14)."""
    listening = TwoLevelCache(l2=None, l3=_l3(redis_server.url))
    try:
        _wait(lambda: listening.l3.listening, "listener")  # type: ignore[union-attr]
        seen: list[int] = []  # the generation the listener had reached, each time the ticker ran

        def ticker() -> None:
            while True:
                seen.append(listening._gens.get("flood", 0))
                gevent.sleep(0)

        raw = redis.Redis.from_url(redis_server.url)
        pipe = raw.pipeline(transaction=False)
        for gen in range(1, 2001):
            pipe.publish(listening.l3.channel, f"flood={gen}")  # type: ignore[union-attr]
        pipe.execute()  # a blocking client: the listener reads nothing until it is done
        raw.close()
        t = gevent.spawn(ticker)
        _wait(lambda: listening._gens.get("flood") == 2000, "the last generation")
        t.kill()
        steps = [b - a for a, b in zip(seen, seen[1:], strict=False)]
        assert max(steps) <= 64, max(steps)  # never more than 64 messages without letting others run
    finally:
        _close(listening)


def test_a_generation_raised_while_redis_was_down_reaches_the_others_when_it_returns(redis_server) -> None:  # type: ignore[no-untyped-def]
    a = TwoLevelCache(l2=None, l3=_l3(redis_server.url, backoff=(0.05, 0.05)))
    b = TwoLevelCache(l2=None, l3=_l3(redis_server.url, backoff=(0.05, 0.05)))
    try:
        _wait(lambda: a.l3.listening and b.l3.listening, "listeners")  # type: ignore[union-attr]
        a.set("k", "v1", tags=("t",))
        assert b.get("k") == "v1"
        redis_server.kill()
        a.invalidate_tag("t")  # Redis is down: raised in a only, and counted
        assert a.l3.counters.errors >= 1 and a.get("k") is None  # type: ignore[union-attr]
        redis_server.restart()  # an empty Redis: the tag hash is gone too
        _wait(lambda: b._gens.get("t") == 1, "the generation pushed up after the restart")
        assert b.get("k") is None  # b's L1 copy is stale now
        assert _plain(redis_server.url).hget("nexus_green:cache:cache:tags", "t") == b"1"
    finally:
        for c in (a, b):
            _close(c)


def test_generations_learned_from_other_processes_are_kept_in_l2_for_a_restart(redis_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from nexus_green.middleware.cache import _GENS_KEY, DiskCache

    a = TwoLevelCache(l2=None, l3=_l3(redis_server.url))
    b = TwoLevelCache(l2=DiskCache(str(tmp_path / "l2")), l3=_l3(redis_server.url))
    try:
        _wait(lambda: b.l3.listening, "the listener")  # type: ignore[union-attr]
        a.invalidate_tag("t")
        _wait(lambda: b._gens.get("t") == 1, "the published generation")
        assert b.l2 is not None
        _wait(lambda: b.l2.get_meta(_GENS_KEY) == (True, {"t": 1}), "the generation in L2")
    finally:
        _close(a)
        _close(b)
    again = TwoLevelCache(l2=DiskCache(str(tmp_path / "l2")))
    try:
        again._load_gens()
        assert again._gens == {"t": 1}  # what this machine knew, even if Redis is away when it restarts
    finally:
        again.close()


def test_a_process_that_was_down_does_not_serve_its_disk_entries_of_a_tag_invalidated_meanwhile(  # type: ignore[no-untyped-def]
    redis_server, tmp_path
) -> None:
    from nexus_green.middleware.cache import DiskCache

    directory = str(tmp_path / "l2")
    before = TwoLevelCache(l2=DiskCache(directory), l3=_l3(redis_server.url))
    before.set("k", "old", tags=("t",))
    _close(before)  # the process stops; its L2 keeps the entry on disk
    other = TwoLevelCache(l2=None, l3=_l3(redis_server.url, listen=False))
    other.invalidate_tag("t")  # meanwhile, another process invalidates the tag
    _close(other)
    restarted = TwoLevelCache(l1=None, l2=DiskCache(directory), l3=_l3(redis_server.url))
    try:
        assert restarted.l2 is not None and restarted.l2.get("k") is not None  # still on disk
        assert restarted.get("k") is None  # the first lookup re-read the generations: not served
    finally:
        _close(restarted)


def test_a_listener_that_lost_its_subscription_catches_up_with_what_it_missed(redis_server) -> None:  # type: ignore[no-untyped-def]
    a = TwoLevelCache(l2=None, l3=_l3(redis_server.url, listen=False))
    b = TwoLevelCache(l2=None, l3=_l3(redis_server.url))
    r = _plain(redis_server.url)
    try:
        _wait(lambda: b.l3.listening, "the listener")  # type: ignore[union-attr]
        a.set("k", "v", tags=("t",))
        assert b.get("k") == "v"
        resyncs = b.l3.resyncs  # type: ignore[union-attr]
        r.execute_command("CLIENT", "KILL", "TYPE", "pubsub")  # b's subscription drops
        a.invalidate_tag("t")  # published while b may not be subscribed: the message can be lost
        _wait(lambda: b.l3.resyncs > resyncs, "a re-read of the generations")  # type: ignore[union-attr]
        assert b._gens == {"t": 1} and b.get("k") is None
        _wait(lambda: b.l3.listening, "the listener to subscribe again")  # type: ignore[union-attr]
    finally:
        r.close()
        _close(a)
        _close(b)


def test_stale_while_revalidate_serves_a_stale_l3_entry(redis_server) -> None:  # type: ignore[no-untyped-def]
    clock = FakeClock()
    writer = TwoLevelCache(l2=None, l3=_l3(redis_server.url, clock=clock), clock=clock, stale_while_revalidate=60)
    reader = TwoLevelCache(l1=None, l2=None, l3=_l3(redis_server.url, clock=clock), clock=clock)
    reader.stale_while_revalidate = 60
    try:
        writer.set("k", "old", ttl=10)
        clock.advance(11)  # expired, still servable for 60 s (Redis keeps it until then: its PX is real time)
        value, level = reader.get_or_load("k", lambda: "new")
        assert (value, level) == ("old", "l3:stale")
        _wait(lambda: reader.get("k") == "new", "the background refresh")
    finally:
        _close(writer)
        _close(reader)


def test_operations_that_cannot_reach_redis_are_counted_and_never_fail(redis_server) -> None:  # type: ignore[no-untyped-def]
    cache = TwoLevelCache(l2=None, l3=_l3(redis_server.url, backoff=(60, 60), listen=False))
    l3 = cache.l3
    assert l3 is not None
    try:
        cache.set("k", "v")
        redis_server.kill()
        assert l3.get("k") is None
        assert not l3.delete("k") and not l3.clear() and l3.bump("t", 1) is None and not l3.resync()
        cache.invalidate_tag("t")
        assert cache.get("k") == "v"  # L1 goes on serving
        assert l3.counters.errors == 6 and l3.link.fallbacks >= 6
        assert "link=down" in repr(l3)
    finally:
        _close(cache)


def test_a_slow_redis_makes_an_l3_lookup_fall_back_while_other_greenlets_run(redis_server) -> None:  # type: ignore[no-untyped-def]
    link = RedisLink(redis_server.url, timeout=0.1, backoff=(60, 60))
    cache = TwoLevelCache(l1=None, l2=None, l3=RedisCache(link, secret=SECRET, listen=False))
    r = _plain(redis_server.url)
    ticks: list[int] = []

    def ticker() -> None:
        while True:
            ticks.append(1)
            gevent.sleep(0.005)

    try:
        cache.set("k", "v")
        assert cache.get("k") == "v"
        r.execute_command("CLIENT", "PAUSE", "1000")  # Redis answers nobody for a second
        running = gevent.spawn(ticker)
        gevent.sleep(0.02)
        before = len(ticks)
        assert cache.get("k") is None  # the lookup gave up at the link's timeout: a miss
        during = len(ticks) - before
        running.kill()
        assert during > 0  # the hub kept running other greenlets while the lookup waited
        assert link.failures == 1 and link.last_error is not None and "longer than" in str(link.last_error)
        assert cache.l3.stats().errors == 1  # type: ignore[union-attr]
    finally:
        r.execute_command("CLIENT", "UNPAUSE")
        r.close()
        _close(cache)


# --- the seam: two worker processes, real Clients, one EmbeddedServer -----------------------------------

WORKER = """
import json, sys
import gevent.select
from nexus_green import Client
from nexus_green.middleware import RedisCache
from nexus_green.middleware.cache import CacheMiddleware, TwoLevelCache
from nexus_green.transport.redis import RedisLink

redis_url, server_url, secret = sys.argv[1:4]
link = RedisLink(redis_url, namespace="fleet", timeout=2.0, backoff=(0.05, 0.1))
l3 = RedisCache(link, secret=secret)
cache = TwoLevelCache(l2="temporary", l3=l3)
middleware = CacheMiddleware(cache, when={FID}, tags=lambda r: [r.body.decode().split(":")[0]])
with Client(server_url, middlewares=[middleware]) as client:
    print(json.dumps("ready"), flush=True)
    while True:
        gevent.select.select([sys.stdin], [], [])  # the hub (and the L3 listener) runs meanwhile
        command, _, arg = sys.stdin.readline().strip().partition(" ")
        if command == "get":
            r = client.request(arg.encode(), fid=FID, timeout=10)
            out = [r.cached, r.body.decode(), dict(r.headers)]
        elif command == "invalidate":
            cache.invalidate_tag(arg)
            out = cache._gens[arg]
        elif command == "generation":
            out = cache._gens.get(arg, 0)
        elif command == "stats":
            s = l3.stats()
            out = {"hits": s.hits, "errors": s.errors, "rejected": s.rejected, "written": s.written,
                   "listening": l3.listening, "fallbacks": link.fallbacks, "resumptions": link.resumptions}
        else:
            break
        print(json.dumps(out), flush=True)
cache.close()
link.close()
""".replace("FID", str(FID))


class Worker:
    def __init__(self, redis_url: str, server_url: str) -> None:
        self.proc = gsubprocess.Popen(
            [sys.executable, "-c", WORKER, redis_url, server_url, SECRET],
            stdin=gsubprocess.PIPE,
            stdout=gsubprocess.PIPE,
            stderr=gsubprocess.PIPE,
        )
        assert self.read() == "ready"

    def read(self) -> Any:
        with gevent.Timeout(30, AssertionError("the worker process did not answer")):
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
        assert line, self.proc.stderr.read().decode()  # type: ignore[union-attr]
        return json.loads(line)

    def __call__(self, command: str) -> Any:
        self.proc.stdin.write(command.encode() + b"\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        return self.read()

    def close(self) -> None:
        _, err = self.proc.communicate(b"quit\n", timeout=30)
        assert self.proc.returncode == 0, err.decode()


class Backend:
    """An embedded server whose handler counts the calls that reached it and answers with headers."""

    def __init__(self) -> None:
        self.calls = 0
        self.server = EmbeddedServer(handlers={FID: self._answer}).start()

    def _answer(self, frame: Any) -> Reply:
        self.calls += 1
        return Reply(b"answer:" + frame.body, headers={"etag": "v1"})


def test_two_worker_processes_share_l3_through_real_clients(redis_server) -> None:  # type: ignore[no-untyped-def]
    backend = Backend()
    a = Worker(redis_server.url, backend.server.url)
    b = Worker(redis_server.url, backend.server.url)
    r = _plain(redis_server.url)
    try:
        _wait(lambda: a("stats")["listening"] and b("stats")["listening"], "both listeners")
        answer = ["", "answer:u1:profile", {"etag": "v1"}]
        assert a("get u1:profile") == answer and backend.calls == 1
        assert b("get u1:profile") == ["l3", *answer[1:]]  # a wire response, from Redis, headers and all
        assert b("get u1:profile") == ["l1", *answer[1:]]
        assert backend.calls == 1  # the second process never reached the server
        assert len(r.keys("fleet:cache:cache:v:req:*")) == 1

        # tag invalidation in one process is a miss in the other
        assert a("invalidate u1") == 1
        _wait(lambda: b("generation u1") == 1, "the invalidation to reach the other process")
        assert b("get u1:profile") == answer and backend.calls == 2
        assert a("get u1:profile") == ["l3", *answer[1:]]  # b's fresh copy
        assert backend.calls == 2

        # a tampered value in Redis is rejected: a miss, counted
        before = set(r.keys("fleet:cache:cache:v:*"))
        assert a("get u2:x")[0] == ""
        (key,) = set(r.keys("fleet:cache:cache:v:*")) - before
        r.set(key, r.get(key)[:-1] + b"\x00")  # type: ignore[index]
        assert b("get u2:x") == ["", "answer:u2:x", {"etag": "v1"}] and backend.calls == 4
        assert b("stats")["rejected"] == 1

        # Redis killed mid-run: L1 and L2 go on serving, the fallbacks are counted
        redis_server.kill()
        assert a("get u1:profile")[0] == "l1"
        assert a("get u3:y")[0] == "" and a("get u3:y")[0] == "l1"
        stats = a("stats")
        assert stats["fallbacks"] >= 1 and stats["errors"] >= 1 and not stats["listening"]
        calls = backend.calls

        # ... and L3 resumes after the restart
        redis_server.restart()
        _wait(lambda: a("stats")["listening"], "the listener to resubscribe")
        assert a("get u4:z")[0] == "" and b("get u4:z") == ["l3", "answer:u4:z", {"etag": "v1"}]
        assert backend.calls == calls + 1
        assert a("stats")["resumptions"] >= 1
    finally:
        r.close()
        a.close()
        b.close()
        backend.server.stop()


def test_module_passes_under_patch_all(redis_server) -> None:  # type: ignore[no-untyped-def]
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
