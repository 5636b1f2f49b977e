"""RedisServer: start, stop, kill, restart on the same port; it dies with the process that started it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from nexus_green.testing.redis_server import RedisServer, RedisServerUnavailable


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_stop_kill_and_restart_on_the_same_port(redis_server: RedisServer) -> None:
    port = redis_server.port
    assert redis_server.running and redis_server.ping() and f":{port}/0" in redis_server.url
    redis_server.kill()
    assert not redis_server.running and not redis_server.ping()
    redis_server.restart()
    assert redis_server.port == port and redis_server.ping() and "running" in repr(redis_server)
    redis_server.stop()
    redis_server.stop()  # twice: a no-op
    assert "stopped" in repr(redis_server)


def test_a_server_that_cannot_start_is_named(redis_server: RedisServer) -> None:
    clash = RedisServer(port=redis_server.port, ready_timeout=5)  # the port is taken
    with pytest.raises(RedisServerUnavailable, match=f"exited at start on port {redis_server.port}"):
        clash.start()
    clash.close()


def test_the_server_dies_with_the_process_that_started_it(redis_server: RedisServer) -> None:
    code = (
        "import sys, time; from nexus_green.testing.redis_server import RedisServer; "
        "s = RedisServer().start(); print(s._proc.pid, flush=True); time.sleep(60)"
    )
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        pid = int(parent.stdout.readline())
        assert _alive(pid)
        parent.send_signal(signal.SIGKILL)  # no finalizer runs
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not _alive(pid), "redis-server outlived the process that started it"
    finally:
        parent.kill()
        parent.wait(10)
        if parent.stdout is not None:
            parent.stdout.close()
