"""L1 policies, the two-level logic, invalidation, stampede protection, SWR, keys, middleware and @cached."""

from __future__ import annotations

import cachetools
import gevent
import pytest
from gevent.event import Event

from nexus_green.clock import FakeClock
from nexus_green.errors import ConfigurationError
from nexus_green.middleware import (
    CacheEntry,
    CacheMiddleware,
    DiskCache,
    MemoryCache,
    TwoLevelCache,
    cached,
    call_key,
    request_key,
)
from nexus_green.protocol.messages import Request, Response


def entry(clock: FakeClock, value: object, life: float = 60.0) -> CacheEntry:
    return CacheEntry(value=value, expires=clock.wall() + life, stale_until=clock.wall() + life)


# --- L1 -------------------------------------------------------------------------------
def test_l1_defaults() -> None:
    l1 = MemoryCache()
    assert (l1.maxsize, l1.ttl, l1.policy) == (100, 60.0, "lru")
    assert "MemoryCache lru 0/100" in repr(l1)


@pytest.mark.parametrize(
    "policy,survivor",
    [("lru", ["a", "c"]), ("fifo", ["b", "c"]), ("lfu", ["a", "c"]), ("ttl", ["a", "c"])],
)
def test_l1_policies_evict_by_name(policy: str, survivor: list) -> None:
    clock = FakeClock()
    l1 = MemoryCache(maxsize=2, policy=policy, clock=clock)
    l1.set("a", entry(clock, 1))
    l1.set("b", entry(clock, 2))
    l1.get("a")  # a is now recent (lru/ttl) and more frequent (lfu); fifo ignores it
    l1.get("a")
    l1.set("c", entry(clock, 3))
    assert sorted(l1.keys()) == survivor
    assert l1.stats().evictions == 1 and l1.stats().size == 2


def test_l1_ttl_policy_drops_at_expiry_and_custom_policies() -> None:
    clock = FakeClock()
    l1 = MemoryCache(maxsize=10, policy="ttl", clock=clock)
    l1.set("a", entry(clock, 1, life=5))
    clock.advance(5)
    assert len(l1) == 0  # TLRUCache removed it on its own
    rr = MemoryCache(maxsize=3, policy=cachetools.RRCache, clock=clock)
    assert rr.policy == "RRCache"
    inst = MemoryCache(policy=cachetools.LRUCache(5), clock=clock)
    inst.set("x", entry(clock, 1))
    assert inst.get("x") is not None
    with pytest.raises(ConfigurationError, match="unknown L1 policy"):
        MemoryCache(policy="mru")
    with pytest.raises(ConfigurationError, match="custom L1 policy"):
        MemoryCache(policy=lambda n: {})  # type: ignore[arg-type, return-value]
    with pytest.raises(ConfigurationError):
        MemoryCache(maxsize=0)
    with pytest.raises(ConfigurationError):
        MemoryCache(ttl=0)


def test_l1_lazy_expiry_is_counted() -> None:
    clock = FakeClock()
    l1 = MemoryCache(clock=clock)
    l1.set("a", entry(clock, 1, life=1))
    clock.advance(1)
    assert l1.get("a") is None and l1.stats().expirations == 1
    assert not l1.delete("a")
    l1.set("b", entry(clock, 1))
    l1.clear()
    assert len(l1) == 0


# --- two levels -----------------------------------------------------------------------
@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def two(tmp_path, clock):  # type: ignore[no-untyped-def]
    c = TwoLevelCache(
        l1=MemoryCache(maxsize=2, clock=clock), l2=DiskCache(str(tmp_path / "l2"), clock=clock), clock=clock
    )
    yield c
    c.close()


def test_l2_hit_fills_l1_and_stats_per_level(two: TwoLevelCache) -> None:
    loads: list = []

    def loader(k: str):  # type: ignore[no-untyped-def]
        return lambda: loads.append(k) or k.upper()

    assert two.get_or_load("a", loader("a")) == ("A", "")
    assert two.get_or_load("a", loader("a")) == ("A", "l1")
    two.get_or_load("b", loader("b"))
    two.get_or_load("c", loader("c"))  # L1 holds 2: "a" is evicted from L1, still in L2
    assert two.get_or_load("a", loader("a")) == ("A", "l2")
    assert two.get_or_load("a", loader("a")) == ("A", "l1")  # L2 hit filled L1
    assert loads == ["a", "b", "c"]
    assert two.flush(5)  # L2 is written behind: its size counts what reached the disk
    s = two.stats()
    assert (s.l1.hits, s.l1.misses) == (2, 4)
    assert (s.l2.hits, s.l2.misses, s.l2.size) == (1, 3, 3)
    assert s.requests == 6 and s.hits == 3 and s.hit_rate == 0.5 and s.loads == 3
    assert s.l1.evictions >= 1 and s.l2.load_time >= 0


def test_ttl_per_level(two: TwoLevelCache, clock: FakeClock) -> None:
    two.set("k", "v")
    clock.advance(61)  # L1 (60 s) expired, L2 (24 h) not
    assert two.get_or_load("k", lambda: "new") == ("v", "l2")
    clock.advance(86_400)
    assert two.get_or_load("k", lambda: "new") == ("new", "")
    two.set("short", 1, ttl=5)
    clock.advance(5)
    assert two.get("short") is None
    assert two.stats().l2.expirations >= 1


def test_only_accepted_values_are_stored(two: TwoLevelCache) -> None:
    assert two.get_or_load("k", lambda: -1, should_cache=lambda v: v > 0) == (-1, "")
    assert two.get_or_load("k", lambda: 2, should_cache=lambda v: v > 0) == (2, "")
    assert two.get("k") == 2


def test_invalidate_key_tag_fid_and_clear(two: TwoLevelCache) -> None:
    two.set("a", 1, tags=("t1", "fid:3"))
    two.set("b", 2, tags=("t2",))
    two.set("c", 3)
    two.invalidate("c")
    assert two.get("c") is None
    two.invalidate_tag("t2")
    assert two.get("b") is None and two.get("a") == 1
    two.invalidate_fid(3)
    assert two.get("a") is None
    two.set("a", 10, tags=("fid:3",))  # stored after the invalidation: valid
    assert two.get("a") == 10
    two.clear()
    assert two.get("a") is None
    assert two.l2 is not None and two.l2.stats().size == 1  # only the tag generations record


def test_tag_invalidation_survives_restart(tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    d = str(tmp_path / "l2")
    with TwoLevelCache(l1=None, l2=DiskCache(d, clock=clock), clock=clock) as c:
        c.set("old", 1, tags=("user:1",))
        c.invalidate_tag("user:1")
        c.set("new", 2, tags=("user:1",))
    with TwoLevelCache(l1=None, l2=DiskCache(d, clock=clock), clock=clock) as c:
        assert c.get("old") is None and c.get("new") == 2


def test_levels_can_be_turned_off(clock: FakeClock) -> None:
    c = TwoLevelCache(l1=None, l2=None, clock=clock)
    assert c.get_or_load("k", lambda: 1) == (1, "")
    assert c.get_or_load("k", lambda: 2) == (2, "")
    assert c.stats().l1 is None and c.stats().hit_rate == 0
    c.clear()
    c.invalidate("k")
    c.invalidate_tag("x")
    with pytest.raises(ConfigurationError):
        TwoLevelCache(l1="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        TwoLevelCache(l2=None, stale_while_revalidate=-1)
    default = TwoLevelCache()
    assert isinstance(default.l1, MemoryCache) and isinstance(default.l2, DiskCache)
    default.close()
    assert "TwoLevelCache" in repr(default)


def test_stampede_one_loader_per_key(clock: FakeClock) -> None:
    c = TwoLevelCache(l2=None, clock=clock)
    release = Event()
    calls: list = []

    def slow() -> str:
        calls.append(1)
        release.wait(5)
        return "v"

    gs = [gevent.spawn(c.get_or_load, "k", slow) for _ in range(20)]
    gevent.sleep(0.01)
    release.set()
    gevent.joinall(gs, timeout=5)
    assert calls == [1]
    assert sorted(g.value for g in gs) == [("v", "")] * 20
    assert c.coalesced == 19 and c.stats().loads == 1


def test_stampede_error_reaches_waiters_and_is_not_cached(clock: FakeClock) -> None:
    c = TwoLevelCache(l2=None, clock=clock)
    release = Event()

    def failing() -> str:
        release.wait(5)
        raise ValueError("origin down")

    gs = [gevent.spawn(c.get_or_load, "k", failing) for _ in range(3)]
    gevent.sleep(0.01)
    release.set()
    gevent.joinall(gs, timeout=5)
    assert all(isinstance(g.exception, ValueError) for g in gs)
    assert c.get_or_load("k", lambda: "ok") == ("ok", "")


def test_waiter_loads_itself_when_leader_dies_or_is_too_slow(clock: FakeClock) -> None:
    c = TwoLevelCache(l2=None, clock=clock, load_wait=0.05)
    block = Event()
    leader = gevent.spawn(c.get_or_load, "k", lambda: block.wait(5) or "leader")
    gevent.sleep(0.01)
    assert c.get_or_load("k", lambda: "mine") == ("mine", "")  # leader too slow: bounded wait
    leader.kill()
    assert "k" not in c._inflight
    c.invalidate("k")
    leader = gevent.spawn(c.get_or_load, "k", lambda: block.wait(5) or "leader")
    gevent.sleep(0.01)
    waiter = gevent.spawn(c.get_or_load, "k", lambda: "waiter")
    gevent.sleep(0.01)
    leader.kill()  # killed leader: the waiter loads
    assert waiter.get(timeout=2) == ("waiter", "")


def test_stale_while_revalidate(clock: FakeClock, leakcheck: None) -> None:
    c = TwoLevelCache(l1=MemoryCache(ttl=10, clock=clock), l2=None, clock=clock, stale_while_revalidate=5)
    c.set("k", "v1")
    clock.advance(11)
    assert c.get_or_load("k", lambda: "v2") == ("v1", "l1:stale")
    gevent.sleep(0.01)  # the background refresh ran
    assert c.get_or_load("k", lambda: "v3") == ("v2", "l1")
    clock.advance(16)  # past the stale window: a plain miss
    assert c.get_or_load("k", lambda: "v4") == ("v4", "")
    clock.advance(11)

    def broken() -> str:
        raise RuntimeError("refresh failed")

    assert c.get_or_load("k", broken) == ("v4", "l1:stale")
    gevent.sleep(0.01)
    assert c.refresh_errors == 1 and c.stats().stale_served == 2


def test_stale_from_l2(tmp_path, clock) -> None:  # type: ignore[no-untyped-def]
    with TwoLevelCache(
        l1=None, l2=DiskCache(str(tmp_path / "d"), ttl=10, clock=clock), clock=clock, stale_while_revalidate=5
    ) as c:
        c.set("k", "v1")
        clock.advance(12)
        assert c.get_or_load("k", lambda: "v2") == ("v1", "l2:stale")
        gevent.sleep(0.05)
        assert c.get("k") == "v2"


# --- keys -----------------------------------------------------------------------------
def test_request_key_is_stable_and_selective() -> None:
    r = Request(endpoint="e", fid=1, body=b"b", headers={"a": "1"})
    assert request_key(r) == request_key(Request(endpoint="e", fid=1, body=b"b"))
    assert request_key(r, ["a"]) != request_key(Request(endpoint="e", fid=1, body=b"b"), ["a"])  # missing != present
    assert request_key(r, ["a"]) != request_key(r.with_headers({"a": ""}), ["a"])
    for other in (r.replace(endpoint="f"), r.replace(fid=2), r.replace(body=b"c")):
        assert request_key(other) != request_key(r)
    assert request_key(r) == "req:" + request_key(r)[4:] and len(request_key(r)) == 36


def test_call_key_canonical_forms() -> None:
    class Obj:
        def __repr__(self) -> str:
            return "Obj()"

    assert call_key("f", ({1, 2},), {}) == call_key("f", ({2, 1},), {})
    assert call_key("f", ([1],), {}) != call_key("f", ((1,),), {})
    assert call_key("f", (), {"a": 1, "b": None}) == call_key("f", (), {"b": None, "a": 1})
    assert call_key("f", (Obj(),), {}) == call_key("f", (Obj(),), {})
    assert call_key("f", (1,), {}) != call_key("g", (1,), {})


# --- the middleware -------------------------------------------------------------------
def test_middleware_opt_in_success_only_and_fid_invalidation(clock: FakeClock) -> None:
    with pytest.raises(ConfigurationError, match="opt-in"):
        CacheMiddleware(TwoLevelCache(l2=None))
    cache = TwoLevelCache(l2=None, clock=clock)
    mw = CacheMiddleware(cache, when=[1, 2], headers=["lang"])
    sent: list = []

    def wire(r: Request) -> Response:
        sent.append(r.fid)
        return Response(body=b"x", fid=r.fid, code=200 if r.fid != 2 else 500, latency=0.01)

    first = mw(Request(fid=1), wire)
    hit = mw(Request(fid=1), wire)
    assert (first.cached, hit.cached, hit.latency) == ("", "l1", 0.0)
    mw(Request(fid=1, headers={"lang": "fr"}), wire)  # selected header: a different key
    mw(Request(fid=2), wire)
    mw(Request(fid=2), wire)  # 500 is not cached
    mw(Request(fid=3), wire)
    mw(Request(fid=3), wire)  # not selected
    mw(Request(fid=1, context={"cache": False}), wire)
    assert sent == [1, 1, 2, 2, 3, 3, 1]
    cache.invalidate_fid(1)
    assert mw(Request(fid=1), wire).cached == ""
    assert "CacheMiddleware" in repr(mw)


def test_middleware_cache_errors_custom_key_and_tags(clock: FakeClock) -> None:
    cache = TwoLevelCache(l2=None, clock=clock)
    mw = CacheMiddleware(
        cache,
        when=lambda r: True,
        cache_errors=True,
        key=lambda r: r.endpoint,
        tags=lambda r: [r.headers.get("user", "")],
    )

    def wire(r: Request) -> Response:
        return Response(code=503)

    mw(Request(endpoint="a", headers={"user": "u1"}), wire)
    assert mw(Request(endpoint="a", fid=9), wire).cached == "l1"  # key ignores fid
    cache.invalidate_tag("u1")
    assert mw(Request(endpoint="a"), wire).cached == ""


# --- the decorator --------------------------------------------------------------------
def test_cached_decorator_two_levels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    calls: list = []

    @cached(directory=str(tmp_path / "fn"), ttl=100, tags=("users",))
    def user(uid: int, *, full: bool = False) -> dict:
        calls.append(uid)
        return {"uid": uid, "full": full}

    assert user(1) == {"uid": 1, "full": False}
    assert user(1) == {"uid": 1, "full": False}
    assert user(1, full=True)["full"] is True
    assert calls == [1, 1]
    user.cache.l1.clear()  # type: ignore[attr-defined]
    assert user(1) == {"uid": 1, "full": False} and calls == [1, 1]  # from L2
    assert user.cache.stats().l2.hits == 1  # type: ignore[attr-defined]
    user.cache.invalidate_tag("users")  # type: ignore[attr-defined]
    user(1)
    assert calls == [1, 1, 1]
    assert user.cache_key(1) != user.cache_key(2)  # type: ignore[attr-defined]
    user.cache.close()  # type: ignore[attr-defined]


def test_cached_never_caches_exceptions_and_accepts_shared_cache(clock: FakeClock) -> None:
    shared = TwoLevelCache(l2=None, clock=clock)
    n = [0]

    @cached(shared, key=lambda x: f"k{x}")
    def f(x: int) -> int:
        n[0] += 1
        if n[0] == 1:
            raise KeyError("first call fails")
        return x

    with pytest.raises(KeyError):
        f(1)
    assert f(1) == 1 and f(1) == 1 and n[0] == 2
    assert shared.get("k1") == 1


def test_cached_temporary_l2_is_private_and_removed() -> None:
    @cached(l2="temporary")
    def g(x: int) -> int:
        return x * 2

    assert g(2) == 4 and g(2) == 4
    l2 = g.cache.l2  # type: ignore[attr-defined]
    import os

    assert os.path.isdir(l2.directory) and "temporary" in repr(l2)
    g.cache.close()  # type: ignore[attr-defined]
    assert not os.path.exists(l2.directory)
