"""The shared circuit breaker (CircuitBreaker(shared=...)) against a real redis-server.

Two breakers in one process with their own links behave like two processes
(each has its own view and syncs on its own); the fleet test runs four real
worker processes. Redis is stopped and restarted mid-run; pybreaker's own
Redis storage reads and writes the same state key.
"""

from __future__ import annotations

import textwrap
import time
from typing import Any

import gevent
import pybreaker
import pytest
import redis

from nexus_green.errors import ConfigurationError
from nexus_green.events import EventBus
from nexus_green.resilience import CircuitBreaker, CircuitBreakerError, circuit_breaker
from nexus_green.resilience.breaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN
from nexus_green.resilience.shared_breaker import SharedBreakerStorage
from nexus_green.testing import run_module_patched
from nexus_green.testing.redis_server import RedisServer
from nexus_green.testing.workers import run_workers
from nexus_green.transport.redis import RedisLink, gevent_redis

pytestmark = pytest.mark.usefixtures("leakcheck")

# Generous link timeouts: these tests are about sharing, not about a slow Redis (tests/transport has those),
# and a loaded CI machine must not turn a sync into a fallback.
LINK = {"timeout": 1.0, "backoff": (0.05, 0.05)}


def _boom() -> None:
    raise ConnectionError("backend down")


def _fail(cb: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(ConnectionError):
            cb.call(_boom)


def _pair(server: RedisServer, name: str = "db", **options: Any) -> tuple[CircuitBreaker, CircuitBreaker]:
    options.setdefault("reset_jitter", 0)
    a = CircuitBreaker(name=name, shared=RedisLink(server.url, **LINK), **options)
    b = CircuitBreaker(name=name, shared=RedisLink(server.url, **LINK), **options)
    return a, b


def _close(*breakers: CircuitBreaker) -> None:
    for cb in breakers:
        cb.shared.link.close()


def _client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


# ---------------------------------------------------------------- options
def test_shared_options_are_checked(redis_server: RedisServer) -> None:
    link = RedisLink(redis_server.url)
    try:
        with pytest.raises(ConfigurationError, match="state_storage= or shared="):
            CircuitBreaker(name="x", shared=link, state_storage=pybreaker.CircuitMemoryStorage(STATE_CLOSED))
        with pytest.raises(ConfigurationError, match="shared_sync= applies to a shared breaker only"):
            CircuitBreaker(name="x", shared_sync=0.5)
        with pytest.raises(ConfigurationError, match="shared_sync must be > 0"):
            CircuitBreaker(name="x", shared=link, shared_sync=0)
        with pytest.raises(ConfigurationError, match="needs a name"):
            CircuitBreaker(name="", shared=link)
        with pytest.raises(ConfigurationError, match="shared must be a redis:// URL"):
            CircuitBreaker(name="x", shared=3.5)
        assert CircuitBreaker(name="x").shared is None
    finally:
        link.close()


def test_the_decorator_takes_shared(redis_server: RedisServer) -> None:
    @circuit_breaker(shared=redis_server.url, shared_sync=0.5, max_consecutive_failures=0)
    def fetch() -> None:
        raise ConnectionError("down")

    try:
        with pytest.raises(ConnectionError):
            fetch()
        assert fetch.breaker.current_state == STATE_OPEN
        assert isinstance(fetch.breaker.shared, SharedBreakerStorage)
        assert fetch.breaker.shared.sync_interval == 0.5
        r = _client(redis_server)
        assert fetch.breaker.name.endswith("fetch")
        assert r.get(f"nexus_green:breaker:{fetch.breaker.name}:pybreaker:state") == b"open"
        r.close()
    finally:
        fetch.breaker.shared.link.close()


# ---------------------------------------------------------------- one state, one window
def test_an_opening_in_one_process_is_adopted_by_the_other(redis_server: RedisServer) -> None:
    bus = EventBus()
    seen: list[Any] = []
    bus.subscribe(seen.append, prefix="breaker.state")
    a, b = _pair(redis_server, max_consecutive_failures=2, reset_timeout=3.0)
    b._bus = bus
    try:
        assert b.call(lambda: "ok") == "ok"  # b has synced: closed
        _fail(a, 3)
        assert a.current_state == STATE_OPEN and a.shared.publishes == 1
        gevent.sleep(b.shared.sync_interval)
        with pytest.raises(CircuitBreakerError) as caught:
            b.call(lambda: "never runs")
        assert 2.5 < caught.value.retry_after <= 3.0  # a's open duration, not a fresh one
        assert b.current_state == STATE_OPEN and b.shared.adoptions == 1
        assert [(e.attrs["old"], e.attrs["new"], e.attrs["reason"]) for e in seen] == [
            (STATE_CLOSED, STATE_OPEN, "storage")
        ]
        r = _client(redis_server)
        assert r.get(a.shared.key("state")) == b"open"
        assert r.hget(a.shared.key("meta"), "open_for_ms") == b"3000"
        assert int(r.get(a.shared.key("opened_at"))) == pytest.approx(time.time(), abs=5)  # pybreaker's seconds
        r.close()
    finally:
        _close(a, b)


def test_the_window_is_the_fleets(redis_server: RedisServer) -> None:
    a, b = _pair(redis_server, max_consecutive_failures=None, minimum_calls=10, failure_rate_threshold=0.5)
    try:
        _fail(a, 6)
        for _ in range(6):
            b.call(lambda: None)
        assert a.figures().calls == 6 and b.figures().failures == 0  # nobody has pushed yet
        gevent.sleep(0.11)
        assert a.current_state == STATE_CLOSED  # a pushes its 6 failures
        gevent.sleep(0.11)
        assert b.current_state == STATE_CLOSED  # b pushes its 6 successes and reads the 12
        figures = b.figures()
        assert (figures.calls, figures.failures) == (12, 6)
        assert b.current_state == STATE_CLOSED  # 50% is not above 50%
        _fail(b, 1)  # 13 calls, 7 failures: b trips on the fleet's figures although 6 of its 7 calls passed
        assert b.current_state == STATE_OPEN
        gevent.sleep(0.11)
        assert a.current_state == STATE_OPEN
        r = _client(redis_server)
        keys = r.keys(a.shared.key("w") + "*")
        assert keys and all(0 < r.pttl(k) <= 11_000 for k in keys)  # each bucket expires after the window
        r.close()
    finally:
        _close(a, b)


def test_sub_second_open_durations_are_kept(redis_server: RedisServer) -> None:
    a, b = _pair(redis_server, max_consecutive_failures=0, reset_timeout=0.3)
    try:
        b.call(lambda: None)
        _fail(a, 1)
        gevent.sleep(0.12)
        with pytest.raises(CircuitBreakerError) as caught:
            b.call(lambda: None)
        assert 0 < caught.value.retry_after < 0.3
        assert b.shared.open_until is not None
        gevent.sleep(caught.value.retry_after + 0.02)
        assert b.current_state == STATE_HALF_OPEN  # pybreaker's whole seconds would say open for up to 1 s more
        assert b.call(lambda: "trial") == "trial"
    finally:
        _close(a, b)


def test_half_open_then_closed_propagates_and_clears_the_window(redis_server: RedisServer) -> None:
    a, b = _pair(redis_server, max_consecutive_failures=0, reset_timeout=0.2, half_open_successes=1)
    try:
        b.call(lambda: None)
        _fail(a, 1)
        gevent.sleep(0.25)
        assert a.call(lambda: "trial") == "trial"  # a: half-open, then closed by its trial
        assert a.current_state == STATE_CLOSED
        r = _client(redis_server)
        assert r.get(a.shared.key("state")) == b"closed"
        assert r.keys(a.shared.key("w") + "*") == []  # a closed breaker starts with an empty window
        r.close()
        gevent.sleep(0.11)
        assert b.current_state == STATE_CLOSED
        assert b.call(lambda: "ok") == "ok"
    finally:
        _close(a, b)


def test_a_transition_that_loses_the_race_adopts_the_winner(redis_server: RedisServer) -> None:
    a, b = _pair(redis_server, max_consecutive_failures=0, reset_timeout=2.0)
    try:
        a.call(lambda: None)
        b.call(lambda: None)
        _fail(a, 1)  # a opens first (epoch 1)
        b_before = b.shared.epoch
        b.shared._next_sync = float("inf")  # b has not synced since: its trip is a compare-and-set on an old epoch
        _fail(b, 1)
        assert b_before == 0 and b.shared.conflicts == 1
        assert b.current_state == STATE_OPEN
        assert b.shared.epoch == a.shared.epoch == 1  # one opening in Redis, not two
        assert 1.5 < b._open_deadline() - b._clock.now() <= 2.0  # a's deadline
    finally:
        _close(a, b)


def test_pybreaker_reads_and_writes_the_same_state(redis_server: RedisServer) -> None:
    a = CircuitBreaker(
        name="db", shared=RedisLink(redis_server.url, **LINK), max_consecutive_failures=0, reset_timeout=1
    )
    r = _client(redis_server)
    theirs = pybreaker.CircuitBreaker(
        fail_max=1,
        reset_timeout=60,
        state_storage=pybreaker.CircuitRedisStorage(STATE_CLOSED, r, namespace=a.shared._namespace_name),
    )
    try:
        a.call(lambda: None)
        _fail(a, 1)
        assert theirs.current_state == STATE_OPEN  # pybreaker sees ours
        a.close()
        assert theirs.current_state == STATE_CLOSED
        with pytest.raises(pybreaker.CircuitBreakerError):
            theirs.call(_boom)  # pybreaker opens it (fail_max=1)
        gevent.sleep(0.11)
        with pytest.raises(CircuitBreakerError) as caught:
            a.call(lambda: None)
        assert caught.value.retry_after <= 1.0  # its whole-second opened_at + our reset_timeout
        assert a.shared.adoptions == 1
    finally:
        a.shared.link.close()
        r.close()


# ---------------------------------------------------------------- at the seam: real Clients, a real backend
def test_two_clients_behind_one_shared_breaker_over_real_sockets(redis_server: RedisServer) -> None:
    from nexus_green.client import Client
    from nexus_green.errors import CircuitOpen, NexusError
    from nexus_green.resilience import CircuitBreakerMiddleware
    from nexus_green.testing import FID_ECHO, EmbeddedServer, RestartableServer

    options = {"max_consecutive_failures": 1, "reset_timeout": 5.0, "max_reset_timeout": 5.0, "reset_jitter": 0}
    cb_a = CircuitBreaker(name="backend", shared=RedisLink(redis_server.url, **LINK), **options)
    cb_b = CircuitBreaker(name="backend", shared=RedisLink(redis_server.url, **LINK), **options)
    b_bus = EventBus()
    b_requests: list[Any] = []
    b_bus.subscribe(b_requests.append, prefix="request.")
    try:
        with RestartableServer(EmbeddedServer()) as backend:
            a = Client(backend.url, middlewares=[CircuitBreakerMiddleware(cb_a)], heartbeat_interval=None, timeout=2)
            b = Client(
                backend.url, middlewares=[CircuitBreakerMiddleware(cb_b)], bus=b_bus, heartbeat_interval=None, timeout=2
            )
            with a, b:
                assert a.request(b"hello", FID_ECHO).body == b"hello"
                assert b.request(b"hello", FID_ECHO).body == b"hello"
                backend.kill()
                for _ in range(5):  # a's requests fail on the dead backend until a's breaker opens
                    if cb_a.current_state == STATE_OPEN:
                        break
                    with pytest.raises(NexusError):
                        a.request(b"x", FID_ECHO)
                assert cb_a.current_state == STATE_OPEN
                gevent.sleep(0.15)  # one sync interval of b's breaker
                sent = len(b_requests)
                assert sent >= 1  # b's first request was seen on its bus
                with pytest.raises(CircuitOpen):
                    b.request(b"x", FID_ECHO)  # b never saw a failure: it rejects because a's breaker opened
                assert len(b_requests) == sent  # the request never reached b's connection
    finally:
        _close(cb_a, cb_b)


# ---------------------------------------------------------------- Redis down and back
def test_redis_stopped_mid_run_the_breaker_works_locally_then_publishes(redis_server: RedisServer) -> None:
    a, b = _pair(redis_server, max_consecutive_failures=2, reset_timeout=3.0)
    try:
        assert a.call(lambda: 1) == 1 and b.call(lambda: 2) == 2
        redis_server.kill()
        for _ in range(50):  # calls go on, on the local state
            assert a.call(lambda: 1) == 1
            gevent.sleep(0.002)
        assert a.shared.fallbacks >= 1 and not a.shared.fresh
        fallbacks = a.shared.fallbacks
        assert fallbacks <= 2 + 0.1 / 0.05  # per sync interval / link backoff, not per call
        _fail(a, 3)  # a opens locally; the transition cannot be written
        assert a.current_state == STATE_OPEN and a.shared.publishes == 0
        assert a.shared.fallbacks > fallbacks
        redis_server.start()
        end = time.monotonic() + 5
        while a.shared.publishes == 0 and time.monotonic() < end:
            gevent.sleep(0.05)
            assert (
                a.current_state == STATE_OPEN
            )  # a syncs: nobody changed the shared state meanwhile, so a's opening is written
        assert a.shared.publishes == 1
        end = time.monotonic() + 5
        while b.current_state != STATE_OPEN and time.monotonic() < end:
            gevent.sleep(0.05)
        assert b.current_state == STATE_OPEN  # the other process learns it once Redis is back
        assert a.shared.link.resumptions == 1
    finally:
        _close(a, b)


def test_a_redis_that_comes_back_empty_does_not_close_an_open_breaker(redis_server: RedisServer) -> None:
    a, b = _pair(redis_server, max_consecutive_failures=0, reset_timeout=3.0)
    try:
        a.call(lambda: None)
        _fail(a, 1)
        assert a.shared.publishes == 1
        redis_server.restart()  # no persistence: the shared state is gone
        end = time.monotonic() + 5
        while a.shared.resets == 0 and time.monotonic() < end:
            gevent.sleep(0.05)
            assert a.current_state == STATE_OPEN
        assert a.shared.resets == 1 and a.shared.publishes == 2  # a wrote its state again
        gevent.sleep(0.11)
        with pytest.raises(CircuitBreakerError) as caught:
            b.call(lambda: None)  # a fresh process learns it from Redis
        assert 2.0 < caught.value.retry_after <= 3.0  # with what was left of a's open duration
    finally:
        _close(a, b)


def test_slow_redis_costs_one_bounded_sync_then_nothing(redis_server: RedisServer) -> None:
    redis_server.extra_args = ("--enable-debug-command", "yes")
    redis_server.restart()
    cb = CircuitBreaker(name="db", shared=RedisLink(redis_server.url, timeout=1.0, backoff=(5, 5)))
    try:
        cb.call(lambda: None)  # connected and synced
        cb.shared.link.timeout = 0.05
        cb.shared._next_sync = 0.0  # due now

        def sleep_redis() -> None:
            r = gevent_redis(redis_server.url, socket_timeout=5)  # gevent sockets: the test's hub keeps running
            try:
                r.execute_command("DEBUG", "SLEEP", "0.5")
            finally:
                r.close()
                r.connection_pool.disconnect()

        sleeper = gevent.spawn(sleep_redis)
        gevent.sleep(0.05)
        started = time.monotonic()
        for _ in range(100):
            assert cb.call(lambda: "local") == "local"
            cb.shared._next_sync = 0.0  # a sync is due on every call: the link answers at once while down
        assert time.monotonic() - started < 0.45  # one 50 ms timeout, then no waiting on the sleeping Redis
        assert cb.shared.fallbacks == 100 and cb.shared.link.failures == 1
        sleeper.get(timeout=5)
    finally:
        cb.shared.link.close()


# ---------------------------------------------------------------- four processes
_WORKER = textwrap.dedent(
    """
    import sys
    if sys.argv[-1] == "patched":
        from gevent import monkey
        monkey.patch_all()
    import json, time
    import gevent
    from nexus_green.events import EventBus
    from nexus_green.resilience import CircuitBreaker, CircuitBreakerError
    from nexus_green.transport.redis import RedisLink

    url, name, index = sys.argv[1], sys.argv[2], int(sys.argv[3])
    bus = EventBus()
    opened = []
    bus.subscribe(lambda e: opened.append(time.time()) if e.attrs["new"] == "open" else None, prefix="breaker.state")
    cb = CircuitBreaker(name=name, shared=RedisLink(url, timeout=1.0), bus=bus, max_consecutive_failures=2,
                        reset_timeout=5.0, max_reset_timeout=5.0, reset_jitter=0, bucket_width=1.0)
    def boom():
        raise ConnectionError("backend down")
    print("ready", flush=True)
    start_at, stop_at = map(float, sys.stdin.readline().split())
    while time.time() < start_at:
        gevent.sleep(0.005)
    admitted, first_rejection = [], None
    while time.time() < stop_at:
        fn = boom if index == 0 and time.time() >= start_at + 0.5 else (lambda: None)
        try:
            cb.call(fn)
            admitted.append(time.time())
        except CircuitBreakerError:
            if first_rejection is None:
                first_rejection = time.time()
        except ConnectionError:
            pass
        gevent.sleep(0.005)
    print(json.dumps({"index": index, "start_at": start_at, "opened": opened, "admitted": admitted, "first_rejection": first_rejection,
                      "adoptions": cb.shared.adoptions, "fallbacks": cb.shared.fallbacks}))
    cb.shared.link.close()
    """
)


def test_four_processes_behind_one_breaker_reject_within_one_bucket(redis_server: RedisServer) -> None:
    results = run_workers(_WORKER, [redis_server.url, "fleet"], duration=2.0)
    opener = results[0]
    assert len(opener["opened"]) == 1, opener
    opened_at = opener["opened"][0]
    assert opened_at >= opener["start_at"] + 0.5
    for other in results[1:]:
        before = [t for t in other["admitted"] if t < opened_at]
        assert len(before) > 20  # it was working before the opening
        assert other["first_rejection"] is not None, other
        # The bucket width is 1 s: each other process rejects within one bucket of the opening...
        assert other["first_rejection"] - opened_at < 1.0, (other["first_rejection"] - opened_at, other)
        # ... and admits nothing after its first rejection (the breaker stays open for 5 s).
        assert not [t for t in other["admitted"] if t > other["first_rejection"]]
        assert other["adoptions"] == 1 and other["fallbacks"] == 0


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
