"""Issue 12, proved at the seams: backoff that holds, a hub no peer can freeze, fork.

Each test drives a real Client over loopback against a peer written on raw
sockets (nexus_green.testing.hostile), with a FakeClock where the assertion
is about time. The whole module runs again after ``gevent.monkey.patch_all()``
(the last test).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import gevent
import pytest

from nexus_green import Client
from nexus_green.clock import FakeClock
from nexus_green.errors import ConnectError, NexusError
from nexus_green.testing import accept_and_close, run_module_patched

pytestmark = pytest.mark.usefixtures("leakcheck")


def _wait(check, limit: float = 5.0) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + limit
    while not check():
        if time.monotonic() > end:
            return False
        gevent.sleep(0)  # never a real sleep: a FakeClock holds still while I/O is ready
    return True


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
        assert any(isinstance(o, ConnectError) for o in outcomes) or any(
            "closed the connection" in str(o) for o in outcomes
        ), outcomes[:3]


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
