"""The library behaves the same after gevent.monkey.patch_all() as without it.

The same workload (concurrent requests, a timeout, a RemoteError, a push, a
reconnect) runs in two fresh interpreters, one of which patches first; both
must print identical results.
"""

from __future__ import annotations

import subprocess
import sys

WORKLOAD = r"""
import sys
if sys.argv[1] == "patched":
    from gevent import monkey
    monkey.patch_all()
import gevent
from nexus_green import Client, RemoteError, RequestTimeout
from nexus_green.connection.backoff import FixedInterval
from nexus_green.testing import FID_ERROR, FID_PUSH, FID_SILENT, EmbeddedServer

out = []
with EmbeddedServer() as server, Client(server.url, heartbeat_interval=None, reconnect=FixedInterval(0.02)) as c:
    jobs = [gevent.spawn(c.request, b"%d" % i, 1) for i in range(50)]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    out.append(sorted(int(j.value.body) for j in jobs) == list(range(50)))
    try:
        c.request(b"", fid=FID_SILENT, timeout=0.05)
    except RequestTimeout:
        out.append("timeout")
    try:
        c.request(b"503", fid=FID_ERROR)
    except RemoteError as e:
        out.append(e.code)
    c.request(b"1", fid=FID_PUSH)
    out.append([p.body for p in c.pushes(timeout=0.5)])
    server.drop_connections()
    conn = c.pool.connections[0]
    with gevent.Timeout(5):
        while conn.state == "connected":
            gevent.sleep(0.01)
    out.append(c.request(b"back", fid=1, timeout=5).body)
print(out)
"""


def run(mode: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-W", "error", "-c", WORKLOAD, mode], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_patched_and_plain_processes_behave_the_same() -> None:
    plain = run("plain")
    patched = run("patched")
    assert plain == "[True, 'timeout', 503, [b'push 0'], b'back']"
    assert patched == plain
