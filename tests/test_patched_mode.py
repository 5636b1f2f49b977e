"""The library behaves the same with and without ``gevent.monkey.patch_all()``.

One representative client workload (50 concurrent greenlets, a timeout, a
RemoteError, server pushes, a deadline, a reconnect after the server dropped
the connection) runs in two fresh interpreters: one
that patches first, as a legacy gevent application does, and one that does
not. Both must print identical results, with no warning (``-W error``) and
nothing on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import gevent
from gevent import subprocess as gsubprocess

WORKLOAD = r"""
import sys

if sys.argv[1] == "patched":
    from gevent import monkey

    monkey.patch_all()

import json
import socket
import threading

import gevent
from gevent import monkey

from nexus_green import Client
from nexus_green.connection.backoff import FixedInterval
from nexus_green.deadlines import deadline
from nexus_green.errors import DeadlineExceeded, RemoteError, RequestTimeout
from nexus_green.testing import FID_DELAY, FID_ECHO, FID_ERROR, FID_PUSH, FID_SILENT, EmbeddedServer

results = {}
with EmbeddedServer(welcome=b"welcome") as server, Client(
    server.url, timeout=10, heartbeat_interval=None, reconnect=FixedInterval(0.02)
) as client:
    client.connect()
    pushes = client.pushes(timeout=5)
    results["welcome"] = next(pushes).body.decode()

    jobs = [gevent.spawn(client.request, b"req-%02d" % i, FID_ECHO) for i in range(50)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    results["echo"] = sorted(j.value.body.decode() for j in jobs)
    results["echo_codes"] = sorted({j.value.code for j in jobs})
    results["echo_qids_unique"] = len({j.value.qid for j in jobs}) == 50

    try:
        client.request(b"", fid=FID_SILENT, timeout=0.1)
    except RequestTimeout as exc:
        results["timeout"] = [type(exc).__name__, exc.retryable]

    try:
        client.request(b"503", fid=FID_ERROR)
    except RemoteError as exc:
        results["remote_error"] = [type(exc).__name__, exc.code, exc.response.body.decode()]

    try:
        with deadline(0.05):
            client.request(b"1", fid=FID_DELAY)
    except DeadlineExceeded as exc:
        results["deadline"] = type(exc).__name__
    except RequestTimeout as exc:
        results["deadline"] = type(exc).__name__

    results["push_reply"] = client.request(b"3", fid=FID_PUSH).body.decode()
    results["pushes"] = [next(pushes).body.decode() for _ in range(3)]
    results["survived"] = client.request(b"still fine").body.decode()

    # While one greenlet blocks in a request, others keep running (the hub is never blocked).
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(5)])
    results["slow_reply"] = client.request(b"0.2", fid=FID_DELAY).body.decode()
    ticker.join(timeout=5)
    results["ticks_during_request"] = len(ticks)
    results["pool"] = {k: client.stats()[k] for k in ("size",)}

    # The server drops the connection; the pool reconnects and the next request goes through.
    conn = client.pool.connections[0]
    results["dropped"] = server.drop_connections()
    with gevent.Timeout(5):
        while conn.state == "connected":
            gevent.sleep(0.01)
    results["after_reconnect"] = client.request(b"back", timeout=5).body.decode()
    results["accepted"] = server.connections_accepted

print(json.dumps({
    "patched": monkey.is_module_patched("socket"),
    "socket_is_gevent": socket.socket.__module__.startswith("gevent"),
    "threading_patched": monkey.is_module_patched("threading"),
    "results": results,
}, sort_keys=True))
"""


def _run(script: Path, mode: str) -> Any:
    return gsubprocess.run(
        [sys.executable, "-W", "error", str(script), mode],
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_patched_and_plain_give_identical_results(tmp_path: Path) -> None:
    script = tmp_path / "workload.py"
    script.write_text(WORKLOAD)
    runs = {mode: gevent.spawn(_run, script, mode) for mode in ("plain", "patched")}
    gevent.joinall(list(runs.values()), timeout=120, raise_error=True)
    outputs = {}
    for mode, job in runs.items():
        proc = job.value
        assert proc.returncode == 0, f"{mode} run failed:\n{proc.stderr}"
        assert proc.stderr == "", f"{mode} run wrote to stderr:\n{proc.stderr}"
        outputs[mode] = json.loads(proc.stdout)

    plain, patched = outputs["plain"], outputs["patched"]
    # the two interpreters really differ in the way that matters
    assert (plain["patched"], plain["socket_is_gevent"], plain["threading_patched"]) == (False, False, False)
    assert (patched["patched"], patched["socket_is_gevent"], patched["threading_patched"]) == (True, True, True)
    # ... and the library does exactly the same in both
    assert plain["results"] == patched["results"]
    results = plain["results"]
    assert results["welcome"] == "welcome"
    assert results["echo"] == [f"req-{i:02d}" for i in range(50)]
    assert results["echo_codes"] == [200] and results["echo_qids_unique"]
    assert results["timeout"] == ["RequestTimeout", True]
    assert results["remote_error"] == ["RemoteError", 503, "error 503"]
    assert results["deadline"] in ("DeadlineExceeded", "RequestTimeout")
    assert results["push_reply"] == "pushed"
    assert results["pushes"] == ["push 0", "push 1", "push 2"]
    assert results["survived"] == "still fine"
    assert results["slow_reply"] == "ok"
    assert results["ticks_during_request"] == 5
    assert results["dropped"] == 1
    assert results["after_reconnect"] == "back"
    assert results["accepted"] == 2
