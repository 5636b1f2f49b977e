"""The Redis link (nexus_green/transport/redis.py) against a real redis-server: gevent sockets, bounded calls, fall back, resume.

Every test runs plain and again after ``patch_all()`` (the last test). Redis
is made slow with ``DEBUG SLEEP`` (sent on a raw socket, so the slow command
does not come from the code under test) and blackholed with a listener that
never answers.
"""

from __future__ import annotations

import os
import random
import socket as stdsocket
import time
from typing import Any

import gevent
import gevent.os as gevent_os
import pytest
import redis
from gevent import socket as gsocket

from nexus_green.clock import FakeClock
from nexus_green.deadlines import deadline
from nexus_green.errors import ConfigurationError
from nexus_green.events import EventBus
from nexus_green.testing import Blackhole, run_module_patched
from nexus_green.testing.redis_server import RedisServer
from nexus_green.timers import Interrupt, arm
from nexus_green.transport.redis import (
    GeventConnection,
    RedisLink,
    SharedUnavailable,
    gevent_redis,
    redis_link,
)

pytestmark = pytest.mark.usefixtures("leakcheck")

FAST_BACKOFF = (0.05, 0.05)
# Calls that must succeed get a generous timeout: a loaded CI machine must not turn them into fallbacks.
# The tests about slowness lower it (link.timeout) once the link is connected.
SURE = 1.0


@pytest.fixture
def slow_redis(redis_server: RedisServer) -> RedisServer:
    """The test's redis-server, restarted to accept DEBUG SLEEP (the tests' way to make Redis slow)."""
    redis_server.extra_args = ("--enable-debug-command", "yes")
    return redis_server.restart()


def _debug_sleep(port: int, seconds: float) -> gevent.Greenlet:
    """Make the server sleep for ``seconds`` (a raw RESP command on a gevent socket, answered after the sleep)."""

    def run() -> bytes:
        with gsocket.create_connection(("127.0.0.1", port), timeout=seconds + 5) as s:
            arg = repr(seconds).encode()
            s.sendall(b"*3\r\n$5\r\nDEBUG\r\n$5\r\nSLEEP\r\n$%d\r\n%s\r\n" % (len(arg), arg))
            return bytes(s.recv(64))

    g = gevent.spawn(run)
    gevent.sleep(0.02)  # the server has read it and is asleep
    return g


class Ticker:
    """A greenlet that wakes every 5 ms and records how late it woke (the hub's responsiveness)."""

    def __init__(self) -> None:
        self.max_lag = 0.0
        self.ticks = 0
        self._g = gevent.spawn(self._run)

    def _run(self) -> None:
        last = time.monotonic()
        while True:
            gevent.sleep(0.005)
            now = time.monotonic()
            self.max_lag = max(self.max_lag, now - last - 0.005)
            self.ticks += 1
            last = now

    def stop(self) -> None:
        self._g.kill()


def _events(bus: EventBus) -> list[Any]:
    seen: list[Any] = []
    bus.subscribe(seen.append, prefix="shared.")
    return seen


# ---------------------------------------------------------------- gevent sockets
def test_connections_are_gevent_sockets_with_nodelay(redis_server: RedisServer) -> None:
    client = gevent_redis(redis_server.url, max_connections=2)
    try:
        assert client.ping() is True
        conn = client.connection_pool.get_connection()
        try:
            assert isinstance(conn, GeventConnection)
            sock = conn._sock
            assert isinstance(sock, gsocket.socket)
            assert sock.getsockopt(stdsocket.IPPROTO_TCP, stdsocket.TCP_NODELAY) != 0
            assert sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_KEEPALIVE) != 0
        finally:
            client.connection_pool.release(conn)
    finally:
        client.close()
        client.connection_pool.disconnect()


def test_pool_has_a_real_maximum_and_a_bounded_wait(redis_server: RedisServer) -> None:
    client = gevent_redis(redis_server.url, max_connections=2, pool_timeout=0.05)
    pool = client.connection_pool
    held = [pool.get_connection(), pool.get_connection()]
    try:
        started = time.monotonic()
        with pytest.raises(redis.ConnectionError, match="No connection available"):
            pool.get_connection()
        assert time.monotonic() - started < 5  # bounded (the wait is 50 ms), never forever
    finally:
        for conn in held:
            pool.release(conn)
        pool.disconnect()


def test_gevent_redis_refuses_what_it_cannot_make_cooperative() -> None:
    with pytest.raises(ConfigurationError, match="only redis:// URLs"):
        gevent_redis("unix:///tmp/redis.sock")
    with pytest.raises(ConfigurationError, match="a redis:// URL or a redis.Redis client"):
        gevent_redis(b"redis://127.0.0.1")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="max_connections must be >= 1"):
        gevent_redis("redis://127.0.0.1:1/0", max_connections=0)
    with pytest.raises(ConfigurationError, match="pool_timeout must be > 0"):
        gevent_redis("redis://127.0.0.1:1/0", pool_timeout=0)


def test_link_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="timeout must be > 0"):
        RedisLink("redis://127.0.0.1:1/0", timeout=0)
    with pytest.raises(ConfigurationError, match="backoff must be"):
        RedisLink("redis://127.0.0.1:1/0", backoff=(1.0, 0.5))
    with pytest.raises(ConfigurationError, match="namespace must be"):
        RedisLink("redis://127.0.0.1:1/0", namespace="my app")
    with pytest.raises(ConfigurationError, match="namespace must be"):
        RedisLink("redis://127.0.0.1:1/0", namespace="")


def test_the_link_name_never_shows_the_password() -> None:
    bus = EventBus()
    seen = _events(bus)
    with RedisLink("redis://app:s3cret@127.0.0.1:1/0", bus=bus) as link:
        with pytest.raises(SharedUnavailable) as caught:
            link.execute("PING")
        assert link.name == "redis://app:***@127.0.0.1:1/0"
        shown = [repr(link), str(caught.value), *(repr(e.attrs) for e in seen)]
        assert not [text for text in shown if "s3cret" in text]
    with RedisLink("redis://127.0.0.1:1/0", name="sessions") as link:
        assert link.name == "sessions" and "sessions" in repr(link)


# ---------------------------------------------------------------- calls
def test_commands_pipelines_and_scripts_run_through_the_link(redis_server: RedisServer) -> None:
    with RedisLink(redis_server.url, namespace="t", timeout=SURE) as link:
        key = link.key("n")
        assert key == "t:n"
        assert link.execute("SET", key, 5) is True
        assert link.pipeline(lambda p: (p.incr(key), p.expire(key, 10))) == [6, True]
        script = link.script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        assert link.run_script(script, [key], [4]) == 10
        assert link.calls == 3 and link.fallbacks == 0 and link.up
        assert link.stats()["calls"] == 3


def test_a_script_survives_a_restart_that_forgot_it(redis_server: RedisServer) -> None:
    with RedisLink(redis_server.url, backoff=FAST_BACKOFF, timeout=SURE) as link:
        script = link.script("return 7")
        assert link.run_script(script) == 7
        redis_server.restart()
        outcome = []
        for _ in range(20):  # the pooled connection died with the old server: a fall back at most, then back
            try:
                outcome.append(link.run_script(script))  # NOSCRIPT answered by loading it again
                break
            except SharedUnavailable:
                gevent.sleep(0.03)
        assert outcome == [7]


def test_an_existing_client_is_used_as_is_and_left_open(redis_server: RedisServer) -> None:
    client = redis.Redis(
        connection_pool=redis.ConnectionPool.from_url(redis_server.url, connection_class=GeventConnection)
    )
    try:
        link = redis_link(client, timeout=SURE)
        assert link.client is client
        assert link.execute("PING") is True
        link.close()
        assert client.ping() is True  # still usable: the link did not own it
    finally:
        client.close()
        client.connection_pool.disconnect()


def test_an_error_reply_about_one_call_falls_back_and_leaves_the_link_up(redis_server: RedisServer) -> None:
    with RedisLink(redis_server.url, timeout=SURE) as link:
        link.execute("HSET", "h", "f", "v")
        with pytest.raises(SharedUnavailable) as caught:
            link.execute("INCR", "h")  # WRONGTYPE
        assert caught.value.reason == "refused" and isinstance(caught.value.__cause__, redis.ResponseError)
        with pytest.raises(SharedUnavailable, match="refused"):
            link.run_script(link.script("return redis.call('NO_SUCH_COMMAND')"))
        assert link.up and link.outages == 0 and link.fallbacks == 2
        assert link.execute("PING") is True
        link.backoff = FAST_BACKOFF
        link.mark_down(ConnectionError("told so"))
        gevent.sleep(0.06)
        with pytest.raises(SharedUnavailable, match="refused"):
            link.execute("INCR", "h")  # the probe: an error reply, but an answer: Redis is back
        assert link.up and link.resumptions == 1


def test_an_error_reply_saying_the_server_cannot_serve_puts_the_link_down(redis_server: RedisServer) -> None:
    with RedisLink(redis_server.url, timeout=SURE, backoff=FAST_BACKOFF) as link:
        link.execute("CONFIG", "SET", "maxmemory", "1")  # every write is now refused with OOM
        try:
            with pytest.raises(SharedUnavailable, match="error"):
                link.execute("SET", "k", "x" * 1000)
            assert not link.up and link.outages == 1
        finally:
            gevent.sleep(0.06)
            link.execute("CONFIG", "SET", "maxmemory", "0")  # the probe, a command Redis still takes
        assert link.up and link.resumptions == 1


def test_a_bug_in_the_callable_propagates_and_leaves_the_link_up(redis_server: RedisServer) -> None:
    with RedisLink(redis_server.url) as link:
        with pytest.raises(ZeroDivisionError):
            link.call(lambda client: 1 / 0)
        assert link.up and link.fallbacks == 0 and link.failures == 0


def test_someone_elses_interrupt_passes_through(redis_server: RedisServer) -> None:
    with RedisLink(redis_server.url, timeout=5) as link:
        from nexus_green.clock import SYSTEM_CLOCK

        outer = arm(SYSTEM_CLOCK, SYSTEM_CLOCK.now() + 0.02)
        try:
            with pytest.raises(Interrupt) as caught:
                link.call(lambda client: gevent.sleep(1))
            assert caught.value.timer is outer
        finally:
            outer.cancel()
        assert link.up and link.fallbacks == 0


def test_a_forked_child_gets_its_own_slots_and_connections(redis_server: RedisServer) -> None:
    with RedisLink(redis_server.url, timeout=SURE, max_connections=1) as link:
        assert link.execute("PING") is True
        holder = gevent.spawn(link.call, lambda client: gevent.sleep(0.5))  # the only slot, taken at fork time
        gevent.sleep(0.01)
        pid = gevent.fork()
        if pid == 0:  # the child: the slot belongs to the parent's holder; here it must be free at once
            link.timeout = 0.2  # (the holder's copy in the child would free it only after 0.5 s: too late)
            try:
                ok = link.execute("PING") is True and link.client.connection_pool.pid == os.getpid()
            except BaseException:
                ok = False
            os._exit(0 if ok else 1)
        try:
            with gevent.Timeout(10):
                _, status = gevent_os.waitpid(pid, 0)  # gevent.fork's child watcher reaps it: ask gevent
        except gevent.Timeout:
            os.kill(pid, 9)
            pytest.fail("the forked child did not finish within 10 s")
        holder.get(timeout=5)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# ---------------------------------------------------------------- slow Redis
def test_slow_redis_falls_back_within_the_timeout_then_costs_nothing_until_the_probe(slow_redis: RedisServer) -> None:
    bus = EventBus()
    seen = _events(bus)
    with RedisLink(slow_redis.url, timeout=SURE, backoff=(0.3, 0.3), bus=bus) as link:
        assert link.execute("SET", "k", "before") is True
        link.timeout = 0.05
        sleeper = _debug_sleep(slow_redis.port, 0.2)
        started = time.monotonic()
        with pytest.raises(SharedUnavailable) as caught:
            link.execute("GET", "k")
        assert caught.value.reason == "timeout"
        assert time.monotonic() - started < 0.2  # gave up before Redis woke up
        assert not link.up and link.outages == 1 and link.failures == 1
        calls = link.calls
        for _ in range(100):  # down: answered at once, nothing sent
            with pytest.raises(SharedUnavailable, match="down"):
                link.execute("GET", "k")
        assert link.calls == calls and link.fallbacks == 101
        assert sleeper.get(timeout=5).startswith(b"+OK")
        assert not link.available
        gevent.sleep(0.31)
        assert link.available
        link.timeout = SURE  # the probe reconnects: the abandoned GET's connection was closed
        assert link.execute("SET", "k", "after") is True  # the probe
        assert link.execute("GET", "k") == b"after"  # no stale reply from the abandoned GET
        assert link.up and link.resumptions == 1
    outage = [e for e in seen if e.name != "shared.fallback"]
    assert [e.name for e in outage] == ["shared.down", "shared.resumed"]
    assert outage[1].attrs["fallbacks"] == 101


def test_fallback_events_name_their_reason(slow_redis: RedisServer) -> None:
    bus = EventBus()
    seen = _events(bus)
    with RedisLink(slow_redis.url, timeout=SURE, backoff=(5, 5), bus=bus) as link:
        link.execute("PING")
        link.timeout = 0.05
        sleeper = _debug_sleep(slow_redis.port, 0.15)
        for _ in range(2):
            with pytest.raises(SharedUnavailable):
                link.execute("PING")
        sleeper.get(timeout=5)
    reasons = [e.attrs["reason"] for e in seen if e.name == "shared.fallback"]
    assert reasons == ["timeout", "down"]


def test_a_deadline_clips_the_call_without_blaming_redis(slow_redis: RedisServer) -> None:
    with RedisLink(slow_redis.url, timeout=1.0) as link:
        link.execute("PING")
        sleeper = _debug_sleep(slow_redis.port, 0.2)
        started = time.monotonic()
        with deadline(0.03), pytest.raises(SharedUnavailable) as caught:
            link.execute("PING")
        assert caught.value.reason == "no_budget"
        assert time.monotonic() - started < 0.2
        assert link.up and link.failures == 0  # the caller's budget ran out, not the link's timeout
        sleeper.get(timeout=5)
        calls = link.calls
        with deadline(0.0), pytest.raises(SharedUnavailable, match="no_budget"):
            link.execute("PING")
        assert link.calls == calls  # no time left: nothing sent


def test_waiting_for_a_slot_is_busy_not_an_outage(redis_server: RedisServer) -> None:
    with RedisLink(redis_server.url, timeout=0.5, max_connections=1) as link:
        first = gevent.spawn(link.call, lambda client: gevent.sleep(0.3) or "first")
        gevent.sleep(0)
        with pytest.raises(SharedUnavailable) as caught:  # gets the slot after 0.3 s: less than half its 0.5
            link.call(lambda client: gevent.sleep(0.3))
        assert caught.value.reason == "busy"
        assert first.get(timeout=5) == "first"
        assert link.up and link.failures == 0


def test_only_one_probe_at_a_time(slow_redis: RedisServer) -> None:
    with RedisLink(slow_redis.url, timeout=SURE, backoff=FAST_BACKOFF) as link:
        link.mark_down(ConnectionError("told so"))
        assert not link.up
        gevent.sleep(0.06)
        sleeper = _debug_sleep(slow_redis.port, 0.1)
        probe = gevent.spawn(link.execute, "PING")
        gevent.sleep(0.01)
        assert not link.available  # the probe is in flight
        with pytest.raises(SharedUnavailable, match="down"):
            link.execute("PING")
        assert probe.get(timeout=5) is True
        sleeper.get(timeout=5)
        assert link.up and link.resumptions == 1


# ---------------------------------------------------------------- Redis down and back
def test_redis_killed_then_restarted(redis_server: RedisServer) -> None:
    bus = EventBus()
    seen = _events(bus)
    with RedisLink(redis_server.url, timeout=SURE, backoff=(0.1, 0.2), rng=random.Random(7), bus=bus) as link:
        assert link.execute("PING") is True
        redis_server.kill()
        outcomes = []
        for _ in range(20):
            try:
                link.execute("PING")
                outcomes.append("ok")
            except SharedUnavailable as e:
                outcomes.append(e.reason)
            gevent.sleep(0.02)
        assert outcomes[0] == "error" and "ok" not in outcomes
        assert outcomes.count("error") <= 4  # one per backoff (0.1-0.2 s) in 0.4 s, not one per call
        assert link.outages == 1 and not link.up
        assert isinstance(link.last_error, redis.ConnectionError)
        redis_server.start()
        deadline_at = time.monotonic() + 5
        while time.monotonic() < deadline_at:
            try:
                assert link.execute("PING") is True
                break
            except SharedUnavailable:
                gevent.sleep(0.02)
        assert link.up and link.resumptions == 1
    assert [e.name for e in seen if e.name != "shared.fallback"][0] == "shared.down"
    assert [e.name for e in seen][-1] == "shared.resumed"


def test_backoff_is_jittered_by_the_injected_rng() -> None:
    clock = FakeClock(autojump=False)
    waits = []
    for seed in (1, 2):
        link = RedisLink("redis://127.0.0.1:1/0", clock=clock, rng=random.Random(seed), backoff=(0.5, 1.0))
        with pytest.raises(SharedUnavailable):
            link.execute("PING")
        waits.append(link.retry_in())
        link.close()
    expected = [0.5 + 0.5 * random.Random(seed).random() for seed in (1, 2)]
    assert waits == pytest.approx(expected)


def test_a_failed_probe_starts_a_new_backoff() -> None:
    clock = FakeClock(autojump=False)
    bus = EventBus()
    seen = _events(bus)
    link = RedisLink("redis://127.0.0.1:1/0", clock=clock, backoff=(0.5, 0.5), bus=bus)
    try:
        for _ in range(3):
            with pytest.raises(SharedUnavailable, match="error"):
                link.execute("PING")
            assert link.retry_in() == 0.5
            with pytest.raises(SharedUnavailable, match="down"):
                link.execute("PING")
            clock.advance(0.5)
        assert link.outages == 1 and link.failures == 3 and link.fallbacks == 6
        assert [e.name for e in seen if e.name == "shared.down"] == ["shared.down"] * 3
        assert "down retry_in" in repr(link) or link.available
    finally:
        link.close()


# ---------------------------------------------------------------- the hub stays responsive
def test_hub_stays_responsive_while_redis_is_slow(slow_redis: RedisServer) -> None:
    with RedisLink(slow_redis.url, timeout=SURE, backoff=(0.05, 0.1)) as link:
        link.execute("PING")
        link.timeout = 0.05
        ticker = Ticker()
        sleeper = _debug_sleep(slow_redis.port, 1.5)
        outcomes: list[str] = []

        def worker() -> None:
            end = time.monotonic() + 1.2
            while time.monotonic() < end:
                try:
                    link.execute("PING")
                    outcomes.append("ok")
                except SharedUnavailable as e:
                    outcomes.append(e.reason)
                gevent.sleep(0.01)

        workers = [gevent.spawn(worker) for _ in range(10)]
        gevent.joinall(workers, timeout=10, raise_error=True)
        ticker.stop()
        assert sleeper.get(timeout=5).startswith(b"+OK")
        # Redis froze for 1.5 s; a client on blocking sockets would have frozen the hub with it.
        assert ticker.max_lag < 0.75, ticker.max_lag
        assert ticker.ticks > 50
        assert "timeout" in outcomes and "down" in outcomes and "ok" not in outcomes


def test_hub_stays_responsive_when_redis_is_blackholed() -> None:
    listener = gsocket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)  # never accepts: connects complete in the kernel, commands are never answered
    port = listener.getsockname()[1]
    try:
        with RedisLink(f"redis://127.0.0.1:{port}/0", timeout=0.05, backoff=(0.05, 0.1)) as link:
            ticker = Ticker()
            reasons = []
            end = time.monotonic() + 0.5
            while time.monotonic() < end:
                started = time.monotonic()
                try:
                    link.execute("PING")
                except SharedUnavailable as e:
                    reasons.append(e.reason)
                assert time.monotonic() - started < 0.5  # bounded by the link's timeout
                gevent.sleep(0.01)
            ticker.stop()
            assert ticker.max_lag < 0.5, ticker.max_lag
            assert reasons[0] == "timeout" and "down" in reasons and link.outages == 1
    finally:
        listener.close()


def test_a_connect_cut_short_closes_its_half_made_socket() -> None:
    """A kill (or a link timeout) landing mid-connect: the socket being made is closed, not leaked."""
    with Blackhole() as hole:  # SYNs dropped: the connect waits
        conn = GeventConnection(host=hole.host, port=hole.port, socket_connect_timeout=10)
        g = gevent.spawn(conn._connect)
        gevent.sleep(0.05)
        assert not g.dead  # still connecting
        g.kill(timeout=5)
    assert g.dead and isinstance(g.value, gevent.GreenletExit)
    # The leakcheck fixture fails the test if the socket stayed open.


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
