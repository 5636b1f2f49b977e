"""Issue 11, proved at the seams: one budget per call, a pool that owns reconnects and never spins.

Every test drives a real Client over a real loopback socket against a peer
written on raw sockets (nexus_green.testing.hostile), with time on a
FakeClock wherever the assertion is about time: a timeout of 1 s or a
backoff of 10 s takes microseconds of real time, and the figures asserted
are exact. The whole module runs twice: plain, and in a fresh interpreter
after ``gevent.monkey.patch_all()`` (the last test).

Each test names the observation of the issue it reproduces; each failed on
the code before the fix (figures in the closing note of issue 11).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import gevent
import pytest

from nexus_green import Client
from nexus_green.clock import FakeClock
from nexus_green.connection import Connection, ConnectionOptions
from nexus_green.connection.backoff import FixedInterval
from nexus_green.deadlines import deadline
from nexus_green.errors import (
    ConnectError,
    ConnectionClosed,
    ConnectionRefused,
    ConnectTimeout,
    DeadlineExceeded,
    NexusError,
    NexusTimeout,
    RequestTimeout,
    UsageError,
)
from nexus_green.testing import (
    FID_DELAY,
    FID_ECHO,
    EmbeddedServer,
    RestartableServer,
    accept_and_stall,
    blackhole,
    refusing_port,
    run_module_patched,
    scripted_peer,
    settle_io,
)

pytestmark = pytest.mark.usefixtures("leakcheck")


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _elapsed(clock: FakeClock, fn):  # type: ignore[no-untyped-def]
    """Run fn; return (what it raised or returned, fake seconds, real seconds)."""
    t0, r0 = clock.now(), time.monotonic()
    try:
        out: object = fn()
    except NexusError as exc:
        out = exc
    return out, clock.now() - t0, time.monotonic() - r0


# ---------------------------------------------------------------- observation 1: outage with the default pool
def test_outage_each_request_fails_within_its_budget_and_the_pool_does_not_spin(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    with RestartableServer() as server, Client(server.url, clock=clock, heartbeat_interval=None) as client:
        assert client.request(b"up", FID_ECHO, timeout=1).body == b"up"
        _kill(server, client)
        attempts_before = client.pool.connect_attempts
        caplog.set_level(logging.INFO, logger="nexus_green.pool")
        started = clock.now()
        outcomes = []
        for _ in range(50):  # 50 calls of 0.2 s each: 10 s of outage on the fake clock
            out, fake, _real = _elapsed(clock, lambda: client.request(b"x", FID_ECHO, timeout=0.2))
            outcomes.append(out)
            assert isinstance(out, NexusError), out
            assert fake <= 0.2 + 1e-9, f"request took {fake:.3f}s of a 0.2 s budget: {out!r}"
            assert any(isinstance(e, ConnectError) for e in _chain(out)), f"no connect error in the chain: {out!r}"
        outage = clock.now() - started
        attempts = client.pool.connect_attempts - attempts_before
        # One attempt at a time, spaced by the backoff capped at 1 s while callers wait:
        # about one a second, never thousands.
        assert 1 <= attempts <= outage / 0.5 + 2, (attempts, outage)
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "failed" in r.getMessage()]
        assert len(warnings) <= attempts.bit_length() + 1, [r.getMessage() for r in warnings]
        assert any("in a row" in r.getMessage() for r in warnings)
        # Both kinds of answer during an outage: the attempt a caller waited on failed, or its time ran out.
        assert {type(o) for o in outcomes} <= {ConnectionRefused, ConnectTimeout}
        timeouts = [o for o in outcomes if isinstance(o, ConnectTimeout)]
        assert all(o.phase for o in timeouts)

        server.restart()
        restarted = clock.now()
        out, _, _ = _elapsed(clock, lambda: client.request(b"back", FID_ECHO, timeout=5))
        assert getattr(out, "body", None) == b"back", out
        assert clock.now() - restarted <= 1.0 + 0.3, "a restarted server is found within about the demand cap"


def test_outage_with_nobody_asking_backs_off_to_the_cap() -> None:
    clock = FakeClock()
    with RestartableServer() as server, Client(server.url, clock=clock, heartbeat_interval=None) as client:
        client.connect(timeout=1)
        _kill(server, client)
        clock.sleep(600)  # ten minutes with no caller: only the background refill runs
        attempts = client.pool.connect_attempts
        # base 0.5 s doubling to a 30 s cap with full jitter: ~20 attempts in 600 s at most, not 2 million
        assert 2 <= attempts <= 60, attempts
        assert client.pool.stats()["failing"] >= 1


def test_first_connect_to_a_refusing_port_fails_at_once_with_connection_refused() -> None:
    clock = FakeClock()
    with refusing_port() as peer, Client(peer.url, clock=clock) as client:
        out, fake, _ = _elapsed(clock, lambda: client.request(b"x", FID_ECHO, timeout=5))
        assert isinstance(out, ConnectionRefused) and fake < 0.01, (out, fake)
        assert client.pool.connect_attempts == 1


def test_fail_fast_fails_at_once_while_backing_off() -> None:
    clock = FakeClock()
    with refusing_port() as peer, Client(peer.url, clock=clock, fail_fast=True) as client:
        first, _, _ = _elapsed(clock, lambda: client.request(b"x", timeout=5))
        second, fake, _ = _elapsed(clock, lambda: client.request(b"x", timeout=5))
        assert isinstance(first, ConnectionRefused)
        assert isinstance(second, ConnectionRefused) and fake == 0.0
        assert second.__cause__ is not None and "fail_fast" in str(second)


# ---------------------------------------------------------------- observation 2: a timeout is a budget for the whole call
def test_stalled_tls_handshake_is_bounded_by_the_request_timeout_not_connect_timeout() -> None:
    clock = FakeClock()
    with (
        accept_and_stall() as peer,
        Client(f"tls://{peer.host}:{peer.port}", clock=clock, connect_timeout=10) as client,
    ):
        out, fake, real = _elapsed(clock, lambda: client.request(b"x", timeout=1))
        assert isinstance(out, ConnectTimeout), out
        assert out.phase == "tls"
        assert fake == pytest.approx(1.0, abs=0.002)
        assert real < 1.0  # the fake clock drove it: no real second went by


def test_stalled_tls_handshake_under_a_deadline_raises_deadline_exceeded() -> None:
    clock = FakeClock()
    with (
        accept_and_stall() as peer,
        Client(f"tls://{peer.host}:{peer.port}", clock=clock, connect_timeout=10) as client,
    ):

        def call() -> object:
            with deadline(1, clock=clock):
                return client.request(b"x")

        out, fake, _ = _elapsed(clock, call)
        assert isinstance(out, DeadlineExceeded) and out.phase == "tls", out
        assert fake == pytest.approx(1.0, abs=0.002)


def test_standalone_connection_connect_is_bounded_by_its_budget() -> None:
    clock = FakeClock()
    with accept_and_stall() as peer:
        conn = Connection(f"tls://{peer.host}:{peer.port}", clock=clock)
        out, fake, _ = _elapsed(clock, lambda: conn.connect(timeout=0.5))
        assert isinstance(out, ConnectTimeout) and out.phase == "tls", out
        assert fake == pytest.approx(0.5, abs=0.002)
        assert conn.state == "closed"


def _fill_the_pool(client: Client) -> gevent.Greenlet:
    """One request that holds the only slot of a max_size=1, max_in_flight=1 pool."""
    holder = gevent.spawn(client.request, b"30", FID_DELAY, timeout=None)
    assert settle_io(lambda: client.pool.stats()["in_flight"] == 1)
    return holder


def _kill(server: RestartableServer, client: Client) -> None:
    """Kill the server once it has accepted the client's link; wait until the client saw the link die."""
    server.wait_for(lambda s: s.connections >= 1)
    server.kill()
    assert settle_io(lambda: client.pool.stats()["connected"] == 0), client.pool


@pytest.mark.parametrize("limit", ["timeout", "deadline"])
def test_pool_checkout_waits_at_most_the_call_budget(limit: str) -> None:
    clock = FakeClock()
    with (
        EmbeddedServer() as server,
        Client(
            server.url, clock=clock, max_size=1, max_in_flight=1, checkout_timeout=5, heartbeat_interval=None
        ) as client,
    ):
        client.connect(timeout=1)
        holder = _fill_the_pool(client)

        def call() -> object:
            if limit == "timeout":
                return client.request(b"x", timeout=0.5)
            with deadline(0.5, clock=clock):
                return client.request(b"x")

        out, fake, _ = _elapsed(clock, call)
        expected = RequestTimeout if limit == "timeout" else DeadlineExceeded
        assert type(out) is expected and out.phase == "checkout", out
        assert fake == pytest.approx(0.5, abs=0.002)
        holder.kill()


def test_checkout_timeout_shortens_the_wait_and_says_pool_exhausted() -> None:
    from nexus_green.errors import PoolExhausted

    clock = FakeClock()
    with (
        EmbeddedServer() as server,
        Client(
            server.url, clock=clock, max_size=1, max_in_flight=1, checkout_timeout=0.3, heartbeat_interval=None
        ) as client,
    ):
        client.connect(timeout=1)
        holder = _fill_the_pool(client)
        out, fake, _ = _elapsed(clock, lambda: client.request(b"x", timeout=10))
        assert isinstance(out, PoolExhausted), out
        assert fake == pytest.approx(0.3, abs=0.002)
        assert client.pool.stats()["exhausted"] == 1
        holder.kill()


def test_time_spent_waiting_for_a_reconnect_comes_out_of_the_same_budget() -> None:
    """The peer drops the first link at once; later links are accepted and never answered."""
    clock = FakeClock()
    links = []

    def script(sock) -> None:  # type: ignore[no-untyped-def]
        links.append(sock)
        if len(links) == 1:
            return  # closes the first link
        while sock.recv(65536):
            pass

    with scripted_peer(script) as (host, port):
        options = ConnectionOptions(reconnect=FixedInterval(1.5), heartbeat_interval=None)
        conn = Connection(f"tcp://{host}:{port}", clock=clock, options=options)
        conn.connect(timeout=1)
        assert settle_io(lambda: conn.state != "connected")
        out, fake, _ = _elapsed(clock, lambda: conn.request(b"x", fid=1, timeout=2))
        assert isinstance(out, RequestTimeout) and out.phase == "response", out
        assert fake == pytest.approx(2.0, abs=0.002), "the wait for the reconnect (1.5 s) came out of the 2 s budget"
        conn.close()


def test_pool_reconnect_wait_comes_out_of_the_same_budget() -> None:
    clock = FakeClock()
    with (
        RestartableServer() as server,
        Client(server.url, clock=clock, heartbeat_interval=None, reconnect=FixedInterval(1.5)) as client,
    ):
        client.connect(timeout=1)
        _kill(server, client)
        first, _, _ = _elapsed(clock, lambda: client.request(b"x", timeout=0.1))  # sees the attempt fail
        assert isinstance(first, NexusError)
        server.restart()

        def call() -> object:
            return client.request(b"60", FID_DELAY, timeout=2)  # the restarted server answers after 60 s

        out, fake, _ = _elapsed(clock, call)
        assert isinstance(out, RequestTimeout) and out.phase == "response", out
        assert fake == pytest.approx(2.0, abs=0.002)


# ---------------------------------------------------------------- observation 4: several addresses are raced
def test_a_blackholed_first_address_does_not_use_up_the_budget() -> None:
    clock = FakeClock()
    with blackhole() as hole, EmbeddedServer() as server:
        import socket

        addrs = [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (hole.host, hole.port)),
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", server.port)),
        ]
        with Client(f"tcp://example.invalid:{server.port}", clock=clock, resolver=lambda host, port: addrs) as client:
            out, fake, _ = _elapsed(clock, lambda: client.request(b"he", FID_ECHO, timeout=2))
            assert getattr(out, "body", None) == b"he", out
            assert fake == pytest.approx(0.25, abs=0.01), "the second address starts after happy_eyeballs_delay"


# ---------------------------------------------------------------- closing, threads
def test_close_with_drain_lets_requests_in_flight_finish_and_fails_the_rest() -> None:
    with EmbeddedServer() as server:
        client = Client(server.url, heartbeat_interval=None)
        client.connect(timeout=5)
        quick = gevent.spawn(client.request, b"0.05", FID_DELAY, timeout=5)
        slow = gevent.spawn(client.request, b"30", FID_DELAY, timeout=60)
        assert settle_io(lambda: client.pool.stats()["in_flight"] == 2)
        t0 = time.monotonic()
        client.close(drain=0.5)
        assert time.monotonic() - t0 < 2.0
        assert quick.get(timeout=5).body == b"ok"
        with pytest.raises(ConnectionClosed):
            slow.get(timeout=5)
        with pytest.raises(NexusError):
            client.request(b"after close")


def test_a_client_used_from_another_os_thread_says_so() -> None:
    with EmbeddedServer() as server, Client(server.url, heartbeat_interval=None) as client:
        client.connect(timeout=5)
        result = gevent.get_hub().threadpool.spawn(_call_in_thread, client).get(timeout=10)
        assert result[0] is UsageError and "thread" in result[1], result
        assert client.request(b"still", FID_ECHO, timeout=5).body == b"still"


def _call_in_thread(client: Client) -> tuple[type, str]:
    try:
        client.request(b"x", timeout=1)
    except BaseException as exc:  # noqa: BLE001 - the test inspects whatever came out
        return type(exc), str(exc)
    finally:
        gevent.get_hub().destroy(destroy_loop=True)  # this thread's hub, made by the call: leave no fd behind
    return type(None), "no error"


def test_every_timeout_names_its_phase() -> None:
    clock = FakeClock()
    with EmbeddedServer() as server, Client(server.url, clock=clock, heartbeat_interval=None) as client:
        out, fake, _ = _elapsed(clock, lambda: client.request(b"60", FID_DELAY, timeout=0.25))
        assert isinstance(out, RequestTimeout) and out.phase == "response"
        assert isinstance(out, NexusTimeout) and fake == pytest.approx(0.25, abs=0.002)
        assert client.request(b"alive", FID_ECHO, timeout=1).body == b"alive"


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()


def test_heartbeats_run_on_the_fake_clock() -> None:
    """A server that stops answering heartbeats is declared dead at interval + timeout of fake time."""
    from nexus_green.errors import HeartbeatTimeout

    clock = FakeClock()
    with EmbeddedServer(heartbeat_echo=False) as server:
        options = ConnectionOptions(heartbeat_interval=15, heartbeat_timeout=10, reconnect=False)
        conn = Connection(server.url, clock=clock, options=options)
        conn.connect(timeout=5)
        closed_at: list[float] = []
        conn.lifecycle.add_listener(lambda old, ev, new: closed_at.append(clock.now()) if new == "closed" else None)
        t0, r0 = clock.now(), time.monotonic()
        clock.sleep(60)  # every greenlet waits: the fake clock jumps from timer to timer
        assert conn.state == "closed" and isinstance(conn.last_error, HeartbeatTimeout), conn.last_error
        assert closed_at[0] - t0 == pytest.approx(25.0, abs=0.01)  # 15 s idle, then 10 s without an answer
        assert time.monotonic() - r0 < 5
        assert conn.heartbeat.heartbeats_sent == 1
