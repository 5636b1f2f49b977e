"""Request deadlines: one timer per connection, for the earliest deadline, instead of one per request.

Each request with a budget joins the session's deadline heap; the connection
arms one timer on its clock for the earliest entry and re-arms it when a
request with an earlier deadline arrives or when it fires. These tests drive
real Connections and Clients over loopback against the embedded server (its
silent Fid never answers), with time on a FakeClock where the assertion is
about time, and check what a caller sees: every request fails at its own
deadline, in any order of arrival, the timer count does not grow with the
requests waiting, nothing is left armed once they are gone, and the heap
stays bounded by the requests in flight over a long run. The module runs
again after ``gevent.monkey.patch_all()`` (the last test).
"""

from __future__ import annotations

import time
from typing import Any

import gevent
import pytest

from nexus_green import Client
from nexus_green.clock import FakeClock
from nexus_green.connection import Connection, ConnectionOptions
from nexus_green.errors import ConnectionClosed, ConnectionLost, DeadlineExceeded, NexusTimeout, RequestTimeout
from nexus_green.resilience.timeouts import run_with_timeout
from nexus_green.testing import (
    FID_ECHO,
    FID_SILENT,
    EmbeddedServer,
    RestartableServer,
    SilentPeer,
    run_module_patched,
    silent_peer,
)
from nexus_green.timers import hub_scheduler

pytestmark = pytest.mark.usefixtures("leakcheck")
_NO_HB = ConnectionOptions(heartbeat_interval=None)


def wait_until(check: Any, within: float) -> bool:
    """Poll ``check`` in gevent turns for at most ``within`` seconds."""
    end = time.monotonic() + within
    while not check():
        if time.monotonic() > end:
            return False
        gevent.sleep(0.005)
    return True


def _fail_time(conn: Connection, clock: FakeClock, timeout: float, log: list[tuple[float, float]]) -> None:
    """Send to the silent Fid; record (budget, fake time it failed at) once it times out."""
    t0 = clock.now()
    try:
        conn.request(b"x", FID_SILENT, timeout=timeout)
    except RequestTimeout:
        log.append((timeout, clock.now() - t0))


def test_many_waiting_requests_hold_one_timer_and_each_fails_at_its_own_deadline() -> None:
    clock = FakeClock()
    with EmbeddedServer() as server, Connection(server.endpoint, clock=clock, options=_NO_HB) as conn:
        conn.connect()
        base = clock.armed
        log: list[tuple[float, float]] = []
        # Arrival order is not deadline order: long budgets first, then shorter ones.
        budgets = [5.0, 4.0, 1.0, 3.0, 0.5, 2.0] * 10
        glets = [gevent.spawn(_fail_time, conn, clock, b, log) for b in budgets]
        # Let them all send; sending takes no fake time (autojump waits for an idle hub).
        while conn.in_flight < len(budgets):
            gevent.sleep(0)
        assert clock.armed == base + 1  # one deadline timer for 60 waiting requests
        assert gevent.joinall(glets, timeout=10) and len(log) == len(budgets)
        for budget, waited in log:
            assert waited == pytest.approx(budget, abs=1e-9)  # never early, and on a FakeClock never late
        assert [b for b, _ in log] == sorted(budgets)  # they failed in deadline order
        assert clock.armed == base and conn.in_flight == 0
        assert conn.session.deadlines == []


def test_a_shorter_deadline_arriving_later_rearms_the_timer_earlier() -> None:
    clock = FakeClock()
    with EmbeddedServer() as server, Connection(server.endpoint, clock=clock, options=_NO_HB) as conn:
        conn.connect()
        log: list[tuple[float, float]] = []
        long = gevent.spawn(_fail_time, conn, clock, 10.0, log)
        gevent.sleep(0)
        assert clock.next_timer() == pytest.approx(clock.now() + 10.0)
        short = gevent.spawn(_fail_time, conn, clock, 0.25, log)
        gevent.sleep(0)
        assert clock.next_timer() == pytest.approx(clock.now() + 0.25)
        assert gevent.joinall([long, short], timeout=10)
        assert log == [(0.25, pytest.approx(0.25)), (10.0, pytest.approx(10.0))]


def test_answered_requests_leave_no_timer_behind() -> None:
    clock = FakeClock()
    with EmbeddedServer() as server, Connection(server.endpoint, clock=clock, options=_NO_HB) as conn:
        conn.connect()
        base = clock.armed
        assert conn.request(b"a", FID_ECHO, timeout=30).body == b"a"
        # The answered request's deadline entry is stale; the timer may still be armed for it
        # and fires once, finding nothing to fail: no error, and nothing armed after.
        t0 = clock.now()
        clock.sleep(31)  # the fake clock jumps through the old deadline
        assert clock.now() - t0 == pytest.approx(31) and clock.armed == base
        assert conn.request(b"b", FID_ECHO, timeout=1).body == b"b"


def test_callers_failed_in_one_sweep_can_send_again_from_their_handler() -> None:
    """A sweep fails several callers; each runs and sends again before the next is failed: all are served."""
    clock = FakeClock()
    with EmbeddedServer() as server, Connection(server.endpoint, clock=clock, options=_NO_HB) as conn:
        conn.connect()

        def caller(i: int) -> bytes:
            try:
                conn.request(b"late", FID_SILENT, timeout=1.0)
            except RequestTimeout:
                pass
            # Sent from within the sweep's throw: a new deadline, possibly earlier than the next armed one.
            return conn.request(b"again %d" % i, FID_ECHO, timeout=0.5).body

        glets = [gevent.spawn(caller, i) for i in range(20)]
        assert gevent.joinall(glets, timeout=10)
        assert sorted(g.value for g in glets) == sorted(b"again %d" % i for i in range(20))


def test_an_outer_timeout_for_the_same_moment_still_fires_first() -> None:
    """A call under ``run_with_timeout(..., 1.0)`` whose request has the same 1 s: the outer limit wins.

    Retry policies retry the outer RequestTimeout; the connection's own expiry
    would say DeadlineExceeded (the deadline in force was the limit). The
    deadline timer was armed earlier, by another request due at the same moment.
    """
    clock = FakeClock()
    with EmbeddedServer() as server, Connection(server.endpoint, clock=clock, options=_NO_HB) as conn:
        conn.connect()
        other = gevent.spawn(conn.request, b"x", FID_SILENT, timeout=1.0)  # arms the timer for now + 1
        gevent.sleep(0)

        def call() -> bytes:
            return conn.request(b"y", FID_SILENT, timeout=1.0).body

        with pytest.raises(RequestTimeout) as caught:
            run_with_timeout(call, 1.0, clock=clock)
        assert not isinstance(caught.value, DeadlineExceeded) and "call timed out" in str(caught.value)
        assert gevent.joinall([other], timeout=5) and isinstance(other.exception, RequestTimeout)
        assert conn.in_flight == 0


def test_close_fails_the_waiters_and_disarms_the_timer() -> None:
    clock = FakeClock()
    with EmbeddedServer() as server:
        conn = Connection(server.endpoint, clock=clock, options=_NO_HB)
        conn.connect()
        base = clock.armed
        glets = [gevent.spawn(conn.request, b"x", FID_SILENT, timeout=60) for _ in range(5)]
        while conn.in_flight < 5:
            gevent.sleep(0)
        assert clock.armed == base + 1
        conn.close()
        assert gevent.joinall(glets, timeout=5)
        assert all(isinstance(g.exception, ConnectionClosed) for g in glets)
        assert clock.armed == base and conn.session.deadlines == []


def test_the_deadline_heap_stays_bounded_by_the_requests_in_flight_on_the_real_clock() -> None:
    """20,000 answered requests at 10 in flight: the heap never holds more than 2 x 10 + 1,024 entries."""
    with EmbeddedServer() as server, Client(server.url, heartbeat_interval=None) as client:
        client.request(b"warm", FID_ECHO, timeout=5)
        conn = client.pool.connections[0]
        most = [0]

        def worker() -> None:
            for _ in range(2000):
                client.request(b"x" * 16, FID_ECHO, timeout=5)
                most[0] = max(most[0], len(conn.session.deadlines))

        assert gevent.joinall([gevent.spawn(worker) for _ in range(10)], timeout=60)
        assert 0 < most[0] <= 2 * 10 + 1024 + 1
        # A short timeout among them still fires on time on the real clock.
        armed = hub_scheduler().armed
        with pytest.raises(NexusTimeout):
            client.request(b"x", FID_SILENT, timeout=0.05)
        assert hub_scheduler().armed <= armed  # the deadline timer went with the last request it covered


def test_mixed_deadlines_against_a_raw_silent_peer_fail_on_time_in_order_with_one_timer() -> None:
    """Real clock, a peer on raw sockets that reads every frame and never answers."""
    with silent_peer() as peer, Client(peer.url, heartbeat_interval=None) as client:
        with client.pool.connection(timeout=5):
            pass  # connected before the timers are counted
        sched = hub_scheduler()
        base = sched.armed
        failed: list[tuple[float, float]] = []

        def call(budget: float) -> None:
            t0 = time.monotonic()
            try:
                client.request(b"x", FID_ECHO, timeout=budget)
            except RequestTimeout:
                failed.append((budget, time.monotonic() - t0))

        budgets = [0.4, 0.1, 0.3, 0.05, 0.2]
        glets = [gevent.spawn(call, b) for b in budgets]
        assert wait_until(lambda: peer.frames_received >= len(budgets), 5)
        assert sched.armed - base == 1  # one deadline timer for five requests waiting on one link
        assert len(gevent.joinall(glets, timeout=10)) == len(glets)
        assert [b for b, _ in failed] == sorted(budgets)
        for budget, waited in failed:
            assert budget <= waited < budget + 0.25, (budget, waited)  # never early; late only by the hub
        assert sched.armed == base


def test_a_killed_server_fails_the_waiters_at_once_and_deadlines_work_again_after_its_restart() -> None:
    with RestartableServer(SilentPeer) as server, Client(server.url, heartbeat_interval=None) as client:
        glets = [gevent.spawn(client.request, b"x", FID_ECHO, timeout=30) for _ in range(5)]
        server.wait_for(lambda s: s.connections >= 1)
        assert wait_until(lambda: sum(c.in_flight for c in client.pool.connections) == 5, 5)
        (conn,) = client.pool.connections
        t0 = time.monotonic()
        server.kill()
        assert len(gevent.joinall(glets, timeout=5)) == len(glets)
        assert all(isinstance(g.exception, ConnectionLost) for g in glets), [g.exception for g in glets]
        assert time.monotonic() - t0 < 2  # failed by the loss, not by their 30 s deadlines
        assert conn.in_flight == 0 and conn.session.deadlines == []  # the dead link kept no deadline behind
        server.restart()
        assert wait_until(lambda: client.pool.stats()["connected"] == 1, 10)  # the pool's refill, after its backoff
        t1 = time.monotonic()
        with pytest.raises(RequestTimeout):
            client.request(b"y", FID_ECHO, timeout=0.3)  # sent on the new link, then times out there
        assert 0.3 <= time.monotonic() - t1 < 2


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
