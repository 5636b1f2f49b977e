"""ConnectionPool: least-loaded choice, growth, exhaustion, maintenance, fork, figures."""

from __future__ import annotations

import socket as stdsocket
from collections import deque
from collections.abc import Iterator
from typing import Any

import gevent
import pytest

from nexus_green.clock import FakeClock
from nexus_green.connection import ConnectionOptions, ConnectionPool
from nexus_green.errors import ClientClosed, ConfigurationError, ConnectionRefused, PoolExhausted
from nexus_green.events import EventBus
from nexus_green.testing import FID_DELAY, FID_ECHO, FID_SILENT, EmbeddedServer

pytestmark = pytest.mark.usefixtures("leakcheck")

OPTS = ConnectionOptions(heartbeat_interval=None, reconnect=False)


@pytest.fixture
def server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as s:
        yield s


def test_one_connection_serves_many_until_it_is_full(server: EmbeddedServer) -> None:
    with ConnectionPool(server.url, max_size=3, max_in_flight=2, options=OPTS) as pool:

        def call() -> bytes:
            return pool.request(b"0.05", fid=FID_DELAY).body

        gs = [gevent.spawn(call) for _ in range(6)]
        gevent.joinall(gs, timeout=5, raise_error=True)
        assert all(g.value == b"ok" for g in gs)
        assert pool.stats()["size"] == 3
        assert server.connections_accepted == 3


def test_least_in_flight_connection_is_chosen(server: EmbeddedServer) -> None:
    with ConnectionPool(server.url, max_size=2, max_in_flight=1, options=OPTS) as pool:
        a = pool.checkout(None)
        g = gevent.spawn(a.request, b"0.1", FID_DELAY)
        gevent.sleep(0.01)
        b = pool.checkout(None)  # a is full: a second connection opens
        assert b is not a
        assert pool.checkout(None) is b
        g.join(timeout=5)
        assert {a.in_flight, b.in_flight} == {0}


def test_exhausted_pool_raises_after_checkout_timeout(server: EmbeddedServer) -> None:
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(lambda e: seen.append(e.name), prefix="pool.")
    with ConnectionPool(server.url, max_size=1, max_in_flight=1, checkout_timeout=0.05, options=OPTS, bus=bus) as pool:
        conn = pool.checkout(None)
        g = gevent.spawn(conn.request, b"", FID_SILENT, timeout=1)
        gevent.sleep(0.01)
        with pytest.raises(PoolExhausted, match="max_in_flight=1"):
            pool.checkout(None)
        assert pool.stats()["exhausted"] == 1
        g.kill()
    assert "pool.exhausted" in seen and "pool.connection.opened" in seen


def test_waiting_checkout_wakes_when_capacity_frees(server: EmbeddedServer) -> None:
    with ConnectionPool(server.url, max_size=1, max_in_flight=1, checkout_timeout=2, options=OPTS) as pool:
        conn = pool.checkout(None)
        g = gevent.spawn(pool.request, b"0.05", fid=FID_DELAY)
        gevent.sleep(0.01)
        with pool.connection() as again:
            assert again is conn  # waited for the first request to finish
        g.join(timeout=5)
        assert pool.stats()["checkout_wait_max"] > 0


def test_waiters_are_served_in_arrival_order_and_nobody_jumps_the_line(server: EmbeddedServer) -> None:
    """One slot, a caller that loops and five that queue: the slot goes round in arrival order.

    Before, the caller finishing a request took the room it freed again at once
    (it ran first), so the queued callers starved while it looped.
    """
    served: list[str] = []
    with ConnectionPool(server.url, max_size=1, max_in_flight=1, checkout_timeout=5, options=OPTS) as pool:
        pool.checkout(None)  # connected

        def looping() -> None:
            for _ in range(3):
                pool.request(b"0.02", fid=FID_DELAY)
                served.append("loop")

        def once(name: str) -> None:
            pool.request(b"0.02", fid=FID_DELAY)
            served.append(name)

        first = gevent.spawn(looping)
        gevent.sleep(0.005)  # the looping caller holds the slot
        others = [gevent.spawn(once, f"w{i}") for i in range(5)]
        gevent.joinall([first, *others], timeout=10, raise_error=True)
    # The looping caller's second request queued behind the five that were already waiting.
    assert served == ["loop", "w0", "w1", "w2", "w3", "w4", "loop", "loop"]
    assert pool._queue == deque() and pool._waiters == 0


def test_the_line_ends_with_the_shortage(server: EmbeddedServer) -> None:
    """Once there is room for everyone, nobody queues: no convoy.

    Thirty callers loop on a pool that starts with room for eight: the rest queue
    while more connections open, up to room for thirty-two. Before, each answer then
    handed one slot to the first in line and its caller lined up again, so the
    line never emptied and every request took the slow way (at 500 callers: 39k
    req/s instead of 120k).
    """
    slow: list[int] = []
    with ConnectionPool(server.url, max_size=4, max_in_flight=8, checkout_timeout=5, options=OPTS) as pool:
        pool.checkout(None)
        original = pool._checkout_slow

        def counting(*args: Any) -> Any:
            slow.append(1)
            return original(*args)

        pool._checkout_slow = counting  # type: ignore[method-assign]
        done: list[int] = []

        def looping() -> None:
            for _ in range(100):
                pool.request(b"x", fid=FID_ECHO)
                done.append(1)

        gs = [gevent.spawn(looping) for _ in range(30)]
        assert _settle(lambda: pool.stats()["connected"] == 4 and len(done) >= 300, timeout=5)
        before = len(slow)
        gevent.joinall(gs, timeout=10, raise_error=True)
    assert len(done) == 3000
    assert len(slow) - before <= 30  # the rest went the fast way: room for all thirty
    assert pool._queue == deque() and pool._waiters == 0 and pool._granted == 0


def test_a_waiter_that_gives_up_passes_its_turn_on(server: EmbeddedServer) -> None:
    """A queued caller whose budget runs out leaves the line; the room it was due goes to the next."""
    with ConnectionPool(server.url, max_size=1, max_in_flight=1, checkout_timeout=5, options=OPTS) as pool:
        pool.checkout(None)
        busy = gevent.spawn(pool.request, b"0.1", fid=FID_DELAY)
        gevent.sleep(0.01)
        impatient = gevent.spawn(pool.request, b"", fid=1, timeout=0.03)
        patient = gevent.spawn(pool.request, b"hi", fid=1, timeout=5)
        gevent.joinall([busy, impatient, patient], timeout=10)
        assert isinstance(impatient.exception, Exception) and "checkout" in repr(impatient.exception.phase)
        assert patient.value is not None and patient.value.body == b"hi"
        assert pool._queue == deque() and pool._waiters == 0


def test_first_connect_error_propagates() -> None:
    s = stdsocket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with ConnectionPool(f"tcp://127.0.0.1:{port}", options=OPTS) as pool:
        with pytest.raises(ConnectionRefused):
            pool.checkout(None)
        assert pool.stats()["size"] == 0 and pool.stats()["opening"] == 0


def test_maintenance_closes_idle_extras_and_refills_min_size(server: EmbeddedServer) -> None:
    clock = FakeClock(start=1000.0, autojump=False)
    pool = ConnectionPool(
        server.url, min_size=1, max_size=3, max_in_flight=1, max_idle_time=10, options=OPTS, clock=clock
    )
    with pool:
        a = pool.checkout(None)
        g = gevent.spawn(a.request, b"0.05", FID_DELAY)
        gevent.sleep(0.01)
        b = pool.checkout(None)
        g.join(timeout=5)
        assert pool.stats()["size"] == 2
        pool.maintain()  # records last use
        clock.advance(11)
        pool.maintain()
        assert pool.stats()["size"] == 1  # one idle extra closed, min_size kept
        assert pool.discarded == 1
        survivor = pool.connections[0]
        survivor.close()
        pool.maintain()  # the closed one is discarded and the dialer refills min_size
        assert _settle(lambda: pool.stats()["size"] == 1 and pool.connections[0] is not survivor)
        assert b.state == "closed" or a.state == "closed"


def test_max_lifetime_retires_old_connections(server: EmbeddedServer) -> None:
    clock = FakeClock(start=0.0, autojump=False)
    with ConnectionPool(server.url, max_lifetime=60, options=OPTS, clock=clock) as pool:
        old = pool.checkout(None)
        clock.advance(61)
        pool.maintain()
        assert old.state == "closed"
        assert _settle(lambda: pool.stats()["size"] == 1 and pool.connections[0] is not old)


def test_background_maintainer_runs_and_stops(server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch) -> None:
    passes: list[int] = []
    with ConnectionPool(server.url, min_size=2, health_check_interval=0.02, options=OPTS) as pool:
        real = pool.maintain
        monkeypatch.setattr(pool, "maintain", lambda: (passes.append(1), real())[1])
        pool.checkout(None)
        assert _settle(lambda: pool.stats()["size"] == 2)
        assert _settle(lambda: len(passes) >= 3)  # the timer re-arms itself after each pass
        assert pool._maintainer is not None
    assert pool._maintainer is None
    before = len(passes)
    gevent.sleep(0.1)
    assert len(passes) == before  # closed: no pass after close


def test_a_failing_health_pass_is_logged_and_the_next_one_still_runs(
    server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def broken() -> None:
        calls.append(1)
        raise RuntimeError("bug in maintain")

    with ConnectionPool(server.url, health_check_interval=0.01, options=OPTS) as pool:
        monkeypatch.setattr(pool, "maintain", broken)
        pool.checkout(None)
        assert _settle(lambda: len(calls) >= 2)
    assert "health pass failed" in caplog.text


def test_after_fork_the_child_forgets_parent_connections(server: EmbeddedServer) -> None:
    from nexus_green.connection import pool as pool_module

    with ConnectionPool(server.url, options=OPTS) as pool:
        conn = pool.checkout(None)
        conn.request(b"x", fid=1)
        pool_module._after_fork_in_child()  # what os.register_at_fork runs in a child
        assert pool.stats()["size"] == 0
        fresh = pool.checkout(None)
        assert fresh is not conn and fresh.request(b"y", fid=1).body == b"y"
        assert conn._stream is None and conn.state == "closed"


def test_stats_repr_and_close(server: EmbeddedServer) -> None:
    pool = ConnectionPool(server.url, options=OPTS, name="svc")
    with pool.connection():
        pass
    stats = pool.stats()
    assert stats["size"] == 1 and stats["connected"] == 1 and stats["checkouts"] == 1
    assert 0 <= stats["utilisation"] <= 1
    assert "open size=1/4 connected=1" in repr(pool)
    pool.close()
    pool.close()
    assert pool.closed and "closed size=0/4" in repr(pool)
    with pytest.raises(ClientClosed):
        pool.checkout(None)


def test_invalid_pool_options() -> None:
    with pytest.raises(ConfigurationError):
        ConnectionPool("tcp://127.0.0.1:9", min_size=5, max_size=2)
    with pytest.raises(ConfigurationError):
        ConnectionPool("tcp://127.0.0.1:9", max_in_flight=0)
    with pytest.raises(ConfigurationError):
        ConnectionPool("tcp://127.0.0.1:9", health_check_interval=0)


def _settle(check: Any, timeout: float = 3.0) -> bool:
    with gevent.Timeout(timeout, False):
        while not check():
            gevent.sleep(0.01)
        return True
    return False


# ---------------------------------------------------------------- large bodies spread over links
def test_large_bodies_in_flight_spread_over_more_connections(server: EmbeddedServer) -> None:
    """A link carrying spread_bytes of requests is passed over; when all do, the pool opens another."""
    body = b"x" * 300_000
    with ConnectionPool(server.url, max_size=3, spread_bytes=500_000, options=OPTS) as pool:
        pool.checkout(None)

        def caller() -> bool:
            return all(pool.request(body, 1, timeout=10).body == body for _ in range(5))

        callers = gevent.joinall([gevent.spawn(caller) for _ in range(12)], timeout=30, raise_error=True)
        assert len(callers) == 12 and all(g.value for g in callers)
        assert pool.stats()["size"] == 3  # grew to max_size, no further
        assert all(c.bytes_in_flight == 0 for c in pool.connections)  # every answered byte was counted out


def test_small_bodies_stay_on_one_connection(server: EmbeddedServer) -> None:
    with ConnectionPool(server.url, max_size=3, spread_bytes=500_000, options=OPTS) as pool:
        pool.checkout(None)
        gevent.joinall([gevent.spawn(pool.request, b"x" * 100, 1, timeout=10) for _ in range(100)], timeout=20)
        assert pool.stats()["size"] == 1


def test_bytes_in_flight_are_counted_out_when_a_request_fails(server: EmbeddedServer) -> None:
    from nexus_green.errors import RequestTimeout

    with ConnectionPool(server.url, options=OPTS) as pool:
        conn = pool.checkout(None)
        with pytest.raises(RequestTimeout):
            conn.request(b"y" * 70_000, FID_SILENT, timeout=0.05)
        assert conn.bytes_in_flight == 0


def test_spread_bytes_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="spread_bytes must be at least 1"):
        ConnectionPool("tcp://127.0.0.1:9", spread_bytes=0)


def test_a_failed_extra_link_is_not_retried_once_the_heavy_load_is_gone(
    server: EmbeddedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nexus_green.connection import Connection

    with ConnectionPool(server.url, max_size=2, spread_bytes=100_000, options=OPTS) as pool:
        pool.checkout(None)
        attempts = pool.connect_attempts

        def refuse(self: Connection, *, timeout: Any = None) -> Connection:
            raise ConnectionRefused("test: no second link")

        monkeypatch.setattr(Connection, "connect", refuse)
        heavy = [gevent.spawn(pool.request, b"x" * 300_000, 1, timeout=10) for _ in range(3)]
        gevent.joinall(heavy, timeout=10, raise_error=True)
        assert all(g.value.body == b"x" * 300_000 for g in heavy)  # served by the one link
        assert _settle(lambda: pool.connect_attempts > attempts)  # it tried to open a second link
        tried = pool.connect_attempts
        gevent.sleep(1.5)  # several backoff steps: nobody is heavy any more, so no new attempt
        assert pool.connect_attempts == tried
        assert pool.stats()["size"] == 1
