"""Shared rate limits (RateLimiter(shared=...)) against a real redis-server: GCRA and sliding window in Lua.

Two limiters with their own links in one process stand for two processes;
the fleet tests run four real worker processes and count what they admitted
together. Redis is killed and restarted mid-run.
"""

from __future__ import annotations

import textwrap
import time
from typing import Any

import gevent
import pytest
import redis

from nexus_green.deadlines import deadline
from nexus_green.errors import ConfigurationError, RateLimited
from nexus_green.middleware.ratelimit import (
    LeakyBucket,
    RateLimiter,
    RateLimitMiddleware,
    SlidingWindow,
    TokenBucket,
    rate_limited,
)
from nexus_green.middleware.shared_ratelimit import SharedLimits, SharedRate
from nexus_green.protocol.messages import Request, Response
from nexus_green.testing import run_module_patched
from nexus_green.testing.redis_server import RedisServer
from nexus_green.testing.workers import run_workers
from nexus_green.transport.redis import RedisLink

pytestmark = pytest.mark.usefixtures("leakcheck")

LINK = {"timeout": 1.0, "backoff": (0.05, 0.05)}


def _limiter(server: RedisServer, policy: Any, **options: Any) -> RateLimiter:
    options.setdefault("name", "api")
    return RateLimiter(policy, shared=RedisLink(server.url, **LINK), **options)


def _close(*limiters: RateLimiter) -> None:
    for limiter in limiters:
        limiter.shared.link.close()


def _admitted(limiter: RateLimiter, key: Any, n: int) -> int:
    count = 0
    for _ in range(n):
        try:
            limiter.acquire(key)
            count += 1
        except RateLimited:
            pass
    return count


# ---------------------------------------------------------------- options
def test_shared_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="LeakyBucket"):
        RateLimiter(LeakyBucket(), shared="redis://127.0.0.1:1/0")
    with pytest.raises(ConfigurationError, match="shared_processes= applies to a shared limiter only"):
        RateLimiter(TokenBucket(), shared_processes=4)
    with pytest.raises(ConfigurationError, match="shared_processes must be an int >= 1"):
        RateLimiter(TokenBucket(), shared="redis://127.0.0.1:1/0", shared_processes=0)
    with pytest.raises(ConfigurationError, match="shared must be a redis:// URL"):
        RateLimiter(TokenBucket(), shared=object())
    link = RedisLink("redis://127.0.0.1:1/0")
    try:
        with pytest.raises(ConfigurationError, match="not <object"):
            SharedRate(object(), SharedLimits(link), "k")
    finally:
        link.close()
    assert RateLimiter().shared is None


# ---------------------------------------------------------------- one limit for everyone
def test_a_token_bucket_is_one_bucket_for_every_process(redis_server: RedisServer) -> None:
    a = _limiter(redis_server, TokenBucket(capacity=5, refill_rate=0.5))
    b = _limiter(redis_server, TokenBucket(capacity=5, refill_rate=0.5))
    try:
        assert _admitted(a, "ann", 3) == 3
        assert _admitted(b, "ann", 5) == 2  # the bucket's 5 tokens, not 5 each
        with pytest.raises(RateLimited) as caught:
            a.acquire("ann")
        assert 1.5 < caught.value.retry_after <= 2.0  # one token every 2 s
        assert _admitted(b, "bob", 5) == 5  # another key, another bucket
        assert a.shared.decisions + b.shared.decisions == 14 and a.shared.fallbacks == b.shared.fallbacks == 0
        r = redis.Redis.from_url(redis_server.url)
        assert r.exists("nexus_green:rate:api:ann") and 0 < r.pttl("nexus_green:rate:api:ann") <= 12_001
        r.close()
    finally:
        _close(a, b)


def test_a_sliding_window_is_one_window_for_every_process(redis_server: RedisServer) -> None:
    a = _limiter(redis_server, SlidingWindow(limit=4, window=10.0, granularity=1.0), name="w")
    b = _limiter(redis_server, SlidingWindow(limit=4, window=10.0, granularity=1.0), name="w")
    try:
        assert _admitted(a, None, 2) == 2
        assert _admitted(b, None, 5) == 2
        with pytest.raises(RateLimited) as caught:
            a.acquire()
        assert 8.9 < caught.value.retry_after <= 10.0
        r = redis.Redis.from_url(redis_server.url)
        assert sum(float(v) for v in r.hvals("nexus_green:rate:w:*")) == 4
        r.close()
    finally:
        _close(a, b)


def test_a_sliding_window_frees_its_slots_when_they_leave_the_window(redis_server: RedisServer) -> None:
    a = _limiter(redis_server, SlidingWindow(limit=2, window=0.3, granularity=0.1), name="short")
    try:
        assert _admitted(a, "k", 3) == 2
        gevent.sleep(0.35)
        assert _admitted(a, "k", 3) == 2
    finally:
        _close(a)


def test_wait_mode_waits_for_the_shared_slot(redis_server: RedisServer) -> None:
    a = _limiter(redis_server, TokenBucket(capacity=1, refill_rate=20.0), on_limit="wait", max_wait=1.0)
    b = _limiter(redis_server, TokenBucket(capacity=1, refill_rate=20.0), on_limit="wait", max_wait=1.0)
    try:
        assert a.acquire() == 0.0
        waited = b.acquire()  # the token a took comes back after 50 ms
        assert 0.0 < waited <= 0.06
        assert b.delayed == 1
    finally:
        _close(a, b)


def test_costs_are_shared_too(redis_server: RedisServer) -> None:
    a = _limiter(redis_server, TokenBucket(capacity=10, refill_rate=0.1))
    try:
        a.acquire("k", cost=7)
        with pytest.raises(RateLimited):
            a.acquire("k", cost=4)
        a.acquire("k", cost=3)
        with pytest.raises(ConfigurationError, match="exceeds"):
            a.acquire("k", cost=11)
    finally:
        _close(a)


def test_the_decorator_and_the_middleware_take_a_shared_limit(redis_server: RedisServer) -> None:
    @rate_limited(TokenBucket(capacity=2, refill_rate=0.1), shared=redis_server.url, shared_processes=2)
    def fetch() -> str:
        return "data"

    mw = RateLimitMiddleware(_limiter(redis_server, TokenBucket(capacity=1, refill_rate=0.1), name="mw"))
    try:
        assert [fetch(), fetch()] == ["data", "data"]
        with pytest.raises(RateLimited):
            fetch()
        assert fetch.limiter.shared.key("fetch", None) == "nexus_green:rate:fetch:*"
        assert fetch.limiter.shared.processes == 2
        assert mw(Request(fid=1), lambda r: Response()).code == 200
        with pytest.raises(RateLimited):
            mw(Request(fid=1), lambda r: Response())
        assert mw(Request(fid=2), lambda r: Response()).code == 200  # per Fid
    finally:
        fetch.limiter.shared.link.close()
        mw.limiter.shared.link.close()


# ---------------------------------------------------------------- at the seam: real Clients, a real server
def test_two_clients_share_one_limit_over_real_sockets(redis_server: RedisServer) -> None:
    from nexus_green.client import Client
    from nexus_green.testing import EmbeddedServer

    served: list[bytes] = []

    def record(frame: Any) -> bytes:
        served.append(frame.body)
        return b"ok"

    limiters = [_limiter(redis_server, TokenBucket(capacity=3, refill_rate=0.01), name="seam") for _ in range(2)]
    try:
        with EmbeddedServer(handlers={7: record}) as server:
            clients = [
                Client(server.url, middlewares=[RateLimitMiddleware(limiter, per="global")], heartbeat_interval=None)
                for limiter in limiters
            ]
            outcomes = []
            for i in range(8):
                try:
                    outcomes.append(clients[i % 2].request(b"r%d" % i, 7).body)
                except RateLimited:
                    outcomes.append(b"limited")
            for client in clients:
                client.close()
        assert outcomes.count(b"ok") == 3 and len(served) == 3  # one bucket of 3 for both clients, not 3 each
        assert served == [b"r0", b"r1", b"r2"]
    finally:
        _close(*limiters)


# ---------------------------------------------------------------- Redis down and back
def test_redis_stopped_mid_run_falls_back_to_the_local_share_then_resumes(redis_server: RedisServer) -> None:
    a = _limiter(redis_server, TokenBucket(capacity=8, refill_rate=0.01), shared_processes=4)
    try:
        assert _admitted(a, "k", 3) == 3
        redis_server.kill()
        # Redis away: the local bucket, 8 / 4 = 2 tokens for this process.
        assert _admitted(a, "k", 10) == 2
        assert a.shared.fallbacks == 10 and a.shared.link.outages == 1
        redis_server.start()  # empty: the shared bucket starts full again
        end = time.monotonic() + 5
        while a.shared.link.resumptions == 0 and time.monotonic() < end:
            gevent.sleep(0.06)
            _admitted(a, "other", 1)
        decisions = a.shared.decisions
        assert _admitted(a, "k", 10) == 8
        assert a.shared.decisions == decisions + 10
    finally:
        _close(a)


def test_without_shared_processes_the_local_fallback_is_the_full_limit() -> None:
    limiter = RateLimiter(TokenBucket(capacity=3, refill_rate=0.01), shared="redis://127.0.0.1:1/0")
    try:
        assert _admitted(limiter, "k", 5) == 3
        assert limiter.shared.fallbacks == 5
    finally:
        limiter.shared.link.close()


def test_an_expired_deadline_decides_locally_without_waiting_for_redis(redis_server: RedisServer) -> None:
    a = _limiter(redis_server, SlidingWindow(limit=5, window=10.0))
    try:
        a.acquire()
        calls = a.shared.link.calls
        with deadline(0.0):
            assert a.acquire() == 0.0
        assert a.shared.link.calls == calls and a.shared.fallbacks == 1
        assert a.shared.link.up  # the caller's budget ran out, not Redis
    finally:
        _close(a)


# ---------------------------------------------------------------- four processes
_WORKER = textwrap.dedent(
    """
    import sys
    if sys.argv[-1] == "patched":
        from gevent import monkey
        monkey.patch_all()
    import json, time
    import gevent
    from nexus_green.errors import RateLimited
    from nexus_green.middleware.ratelimit import RateLimiter, SlidingWindow, TokenBucket
    from nexus_green.transport.redis import RedisLink

    url, kind, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if kind == "bucket":
        policy = TokenBucket(capacity=10, refill_rate=100.0)
    else:
        policy = SlidingWindow(limit=100, window=30.0)
    limiter = RateLimiter(policy, shared=RedisLink(url, timeout=1.0), name="fleet-" + kind, on_limit="wait", max_wait=0.2)
    print("ready", flush=True)
    start_at, stop_at = map(float, sys.stdin.readline().split())
    admitted = []
    while time.time() < stop_at:
        try:
            limiter.acquire()
            admitted.append(time.time())
        except RateLimited:
            if kind == "window":
                gevent.sleep(0.01)
    print(json.dumps({"index": index, "start_at": start_at, "admitted": admitted,
                      "decisions": limiter.shared.decisions, "fallbacks": limiter.shared.fallbacks}))
    limiter.shared.link.close()
    """
)


def test_four_processes_sharing_100_per_second_get_100_per_second_together(redis_server: RedisServer) -> None:
    duration = 3.5
    results = run_workers(_WORKER, [redis_server.url, "bucket"], duration=duration, warmup=0.0)
    start_at = results[0]["start_at"]
    # Count from 0.5 s in: by then the bucket's burst of 10 is spent and the fleet runs at the refill rate.
    window = (start_at + 0.5, start_at + duration)
    together = sum(1 for r in results for t in r["admitted"] if window[0] <= t < window[1])
    rate = together / (window[1] - window[0])
    assert 95 <= rate <= 105, (rate, [len(r["admitted"]) for r in results])
    assert all(r["admitted"] for r in results)  # everybody got a share
    assert all(r["fallbacks"] == 0 for r in results)


def test_four_processes_sharing_a_window_admit_its_limit_once(redis_server: RedisServer) -> None:
    results = run_workers(_WORKER, [redis_server.url, "window"], duration=1.0, warmup=0.0)
    assert sum(len(r["admitted"]) for r in results) == 100  # not 400
    assert all(r["fallbacks"] == 0 for r in results)


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
