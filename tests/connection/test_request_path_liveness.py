"""Issue 12, proved at the seams: backoff that holds, a hub no peer can freeze, fork.

Each test drives a real Client over loopback against a peer written on raw
sockets (nexus_green.testing.hostile), with a FakeClock where the assertion
is about time. The whole module runs again after ``gevent.monkey.patch_all()``
(the last test).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import gevent
import pytest

from nexus_green import Client
from nexus_green.clock import FakeClock
from nexus_green.connection import Connection, ConnectionOptions
from nexus_green.errors import ConnectError, ConnectionLost, ConnectTimeout, HeartbeatTimeout, NexusError, NexusTimeout
from nexus_green.resilience.retrying import retry
from nexus_green.testing import (
    accept_and_close,
    accept_and_stall,
    run_module_patched,
    scripted_peer,
    slow_reader,
)

pytestmark = pytest.mark.usefixtures("leakcheck")


# ---------------------------------------------------------------- observation 2: reconnect storms
def test_a_peer_that_accepts_then_closes_does_not_reset_the_backoff() -> None:
    """Before: each TCP accept reset the backoff, 3.5 reconnects a second forever."""
    clock = FakeClock()
    with accept_and_close() as peer, Client(peer.url, clock=clock, heartbeat_interval=None) as client:
        try:
            client.connect(timeout=1)
        except NexusError:
            pass
        clock.sleep(600)  # ten minutes with nobody asking: only the background refill to min_size
        attempts = client.pool.connect_attempts
        # Exponential backoff from 0.5 s to the 30 s cap with full jitter: a few dozen at most, not ~2,100.
        assert 3 <= attempts <= 60, (attempts, client.pool)
        assert client.pool.stats()["failing"] >= 3
        assert peer.accepted == attempts  # every attempt reached TCP: the accept itself proved nothing


def test_callers_during_a_storm_fail_within_their_budget_with_a_connect_error() -> None:
    clock = FakeClock()
    with accept_and_close() as peer, Client(peer.url, clock=clock, heartbeat_interval=None) as client:
        started = clock.now()
        outcomes = []
        while clock.now() - started < 30:
            t0 = clock.now()
            try:
                client.request(b"x", timeout=0.5)
            except NexusError as exc:
                outcomes.append(exc)
            assert clock.now() - t0 <= 0.5 + 1e-9
        attempts = client.pool.connect_attempts
        # While callers wait, attempts are spaced by at most demand_backoff_cap (1 s), never back to back.
        assert attempts <= 30 / 0.5 + 2, attempts
        # Requests that went out on a link that then died may have been sent (ConnectionLost);
        # callers that only waited for a link got a ConnectError: nothing was sent.
        # (A request written to a link the peer had already closed meets a reset, not an EOF.)
        assert all(isinstance(o, (ConnectError, ConnectionLost, ConnectTimeout)) for o in outcomes), outcomes[:3]
        assert any(isinstance(o, ConnectError) for o in outcomes) or any(
            "closed the connection" in str(o) or "reset by peer" in str(o) for o in outcomes
        ), outcomes[:3]


def test_a_standalone_connection_does_not_reset_its_backoff_on_each_accept() -> None:
    from nexus_green.connection.backoff import ExponentialBackoff

    clock = FakeClock()
    with accept_and_close() as peer:
        options = ConnectionOptions(heartbeat_interval=None, reconnect=ExponentialBackoff(jitter="none"))
        conn = Connection(peer.url, clock=clock, options=options)
        try:
            conn.connect(timeout=1)
            clock.sleep(120)
        finally:
            conn.close()
        # 0.5, 1, 2, 4, 8, 16, 30, 30, 30: about 9 reconnects in 120 s, where resetting on each accept made ~240.
        assert 5 <= peer.accepted <= 14, peer.accepted


# ---------------------------------------------------------------- observation 1: nothing applied twice
def test_etimedout_on_an_established_link_is_maybe_sent_so_a_payment_is_not_repeated() -> None:
    """Before: ETIMEDOUT (TCP_USER_TIMEOUT) on the link was a ConnectTimeout, "never sent", and PAY ran twice."""
    pays: list[bytes] = []

    def bank(sock) -> None:  # type: ignore[no-untyped-def]
        head = b""
        while len(head) < 64:
            chunk = sock.recv(64 - len(head))
            if not chunk:
                return
            head += chunk
        pays.append(head[24:35])  # the body starts after the 24-byte header
        gevent.sleep(30)  # then it stops reading: the client's data goes unacknowledged

    user_timeout = (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 18), 300)
    small_sndbuf = (socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    with (
        scripted_peer(bank) as (host, port),
        Client(f"tcp://{host}:{port}", heartbeat_interval=None, socket_options=(user_timeout, small_sndbuf)) as client,
    ):

        @retry(idempotent=False, max_attempts=3, base_delay=0.01)
        def pay() -> object:
            return client.request(b"PAY 100 EUR" + b"." * (8 << 20), fid=9, timeout=20)

        with pytest.raises(ConnectionLost):
            pay()
        assert pays == [b"PAY 100 EUR"], "a request that may have been applied was never sent again"


# ---------------------------------------------------------------- observation 3: nobody freezes the hub
FLOOD_PEER = r"""
import socket, struct, sys, time
HDR = struct.Struct(">IHHBBIIIH")
push = b"".join(HDR.pack(20 + 16, 0x7A5A, 1, 0, 0, 0, 4, 200, 0) + b"p" * 16 for _ in range(4096))
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
print(ls.getsockname()[1], flush=True)
conn, _ = ls.accept()
end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < end:
    conn.sendall(push)
conn.close()
"""


def test_a_push_flood_does_not_freeze_the_hub() -> None:
    """Before: the reader never yielded while data kept arriving; other greenlets stalled 1.2-5.5 s."""
    peer = subprocess.Popen([sys.executable, "-c", FLOOD_PEER, "2.0"], stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout is not None
        port = int(peer.stdout.readline())
        pushes = [0]
        with Client(f"tcp://127.0.0.1:{port}", heartbeat_interval=None, push_queue_size=10) as client:
            client.on_push(lambda _r: pushes.__setitem__(0, pushes[0] + 1))
            client.connect(timeout=5)
            lags = []
            last = time.monotonic()
            end = last + 1.5
            while time.monotonic() < end:
                gevent.sleep(0.005)
                now = time.monotonic()
                lags.append(now - last)
                last = now
        assert pushes[0] > 10_000, pushes  # the flood really flowed
        assert max(lags) < 0.5, f"a 5 ms ticker waited {max(lags):.3f}s"
    finally:
        peer.kill()
        peer.wait(timeout=10)
        assert peer.stdout is not None
        peer.stdout.close()


# ---------------------------------------------------------------- observation 4: memory bounded by work in flight
def test_the_write_queue_is_bounded_and_callers_past_it_wait_within_their_budget() -> None:
    """Before: 1 MiB requests to a peer that stopped reading piled up in the write buffer (1 GB in 21 s)."""
    bound = 2 << 20
    with accept_and_stall() as peer, Client(peer.url, heartbeat_interval=None, max_write_buffer=bound) as client:
        client.connect(timeout=5)
        conn = client.pool.connections[0]
        jobs = [gevent.spawn(client.request, b"z" * (1 << 20), 1, timeout=1.0) for _ in range(20)]
        peak = 0
        while not all(j.ready() for j in jobs):
            peak = max(peak, conn.buffered()[1])
            gevent.sleep(0.01)
        outcomes = [j.exception for j in jobs]
        assert all(isinstance(o, NexusTimeout) for o in outcomes), outcomes
        assert peak <= bound + (1 << 20), peak
        not_sent = [o for o in outcomes if o.phase == "write"]
        assert len(not_sent) >= 10, [o.phase for o in outcomes]  # waited for room, or taken back: never written
        assert conn.buffered()[1] <= bound


def test_a_slow_but_healthy_upload_is_not_killed_by_the_heartbeat() -> None:
    """Before: a 12 MB upload to a slow reader failed with HeartbeatTimeout (heartbeat 1 s): the ping waited behind it."""
    size = 6 << 20
    with (
        slow_reader(8 << 20) as peer,
        Client(
            peer.url,
            heartbeat_interval=0.2,
            heartbeat_timeout=0.2,
            socket_options=((socket.SOL_SOCKET, socket.SO_SNDBUF, 65536),),
        ) as client,
    ):
        t0 = time.monotonic()
        client.send(b"u" * size, fid=1)
        peer.wait_for(lambda p: p.bytes_received >= size, timeout=20)
        took = time.monotonic() - t0
        conn = client.pool.connections[0]
        assert conn.state == "connected" and not isinstance(conn.last_error, HeartbeatTimeout), conn.last_error
        assert conn.reconnects == 0 and client.pool.opened == 1
        # The premise: nothing was received for longer than interval + timeout, which killed the link before.
        assert took > 0.4 and conn.bytes_received == 0, (took, conn.bytes_received)


# ---------------------------------------------------------------- observation 6: fork in an unpatched app
FORK_CHILD = r"""
import os, sys, time
import gevent
from gevent import socket as gsocket
from nexus_green import Client
from nexus_green.testing import EmbeddedServer

with EmbeddedServer() as server:
    gsocket.getaddrinfo("localhost", server.port)  # the resolver's threads start in the parent
    with Client(f"tcp://localhost:{server.port}", heartbeat_interval=None) as parent_client:
        parent_client.request(b"parent", 1, timeout=5)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                t0 = time.monotonic()
                with Client(f"tcp://localhost:{server.port}", heartbeat_interval=None) as c:
                    body = c.request(b"child", 1, timeout=3).body
                print("child", body.decode(), round(time.monotonic() - t0, 3), flush=True)
                code = 0
            finally:
                os._exit(code)
        while True:  # serve the child from the parent's hub until it exits
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            gevent.sleep(0.01)
        print("parent", parent_client.request(b"after", 1, timeout=5).body.decode(), os.waitstatus_to_exitcode(status))
"""


def test_the_child_of_a_plain_fork_connects_at_once() -> None:
    """Before: the child's first connect hung 10 s in DNS (inherited resolver threads) and failed."""
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(FORK_CHILD)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    child_body, child_seconds = lines["child"].split()
    assert child_body == "child" and float(child_seconds) < 3.0
    assert lines["parent"] == "after 0"


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
