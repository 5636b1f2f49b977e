"""The request-path observations of issues 11 and 12, timed in real time, on this code or another checkout.

Each scenario runs in its own interpreter, killed after 20 s (the code before
the fix spun without yielding in the outage scenario, so no in-process timer
could stop it). The same script runs against an older checkout for a
before/after table: ``--code /path/to/checkout`` puts it first on PYTHONPATH.

    outage               server killed: request(timeout=0.2) in a loop for 3 s;
                         longest call, connect attempts/s, log lines/s, CPU
    tls_stall            a peer that accepts and never speaks, tls://, connect_timeout=10,
                         request(timeout=1)
    tls_stall_deadline   the same inside deadline(1)
    checkout_deadline    max_size=1, max_in_flight=1, one request holds the slot;
                         a second one inside deadline(0.5)
    checkout_timeout     the same with timeout=0.5
    reconnect_wait_conn  a standalone Connection reconnecting every 1.5 s;
                         request(timeout=2) to a peer that never answers
    fakeclock            real seconds taken by a 3 s timeout on a FakeClock
    blackhole_first      a host whose first address drops SYNs; request(timeout=3)
    storm                a peer that accepts and closes at once; connects in 10 s with nobody asking
    push_flood           another process floods pushes for 2 s; max lag of a 5 ms ticker
    slow_upload          6 MiB sent to a peer reading 8 MiB/s, heartbeat 0.2 s; did the link survive?

Run: ``python bench/request_path_observations.py [--code PATH]``.
Writes bench/results/request_path_observations.json (or ..._<label>.json).
"""

# ruff: noqa: E401, E402, E701, E702, E722, I001
import json
import logging
import os
import resource
import socket as stdsocket
import sys
import time

if __name__ == "__main__" and (len(sys.argv) < 2 or sys.argv[1].startswith("--")):
    import argparse
    import os
    import subprocess
    from pathlib import Path

    SCENARIOS = [
        "outage",
        "tls_stall",
        "tls_stall_deadline",
        "checkout_deadline",
        "checkout_timeout",
        "reconnect_wait_conn",
        "fakeclock",
        "blackhole_first",
    ]
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", help="a checkout of nexus_green to measure instead of this one")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.code:
        env["PYTHONPATH"] = args.code
    rows = []
    for name in SCENARIOS:
        try:
            p = subprocess.run(
                [sys.executable, __file__, name],
                capture_output=True,
                text=True,
                timeout=20,
                env=env,
                cwd=args.code or None,
            )
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        except (subprocess.TimeoutExpired, IndexError, ValueError):
            rows.append({"scenario": name, "killed_after_s": 20})
    for r in rows:
        print(json.dumps(r))
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    suffix = f"_{args.label}" if args.label else ""
    (out / f"request_path_observations{suffix}.json").write_text(json.dumps(rows, indent=2))
    sys.exit(0)

import gevent
from gevent import socket as gsocket
from gevent.server import StreamServer

from nexus_green import Client
from nexus_green.testing import FID_ECHO, FID_SILENT, EmbeddedServer

scenario = sys.argv[1]
out = {"scenario": scenario}


def timed(fn):
    t0 = time.monotonic()
    try:
        fn()
        err = None
    except BaseException as e:  # noqa
        err = type(e).__name__
    return round(time.monotonic() - t0, 3), err


def stall_server():
    socks = []

    def handle(sock, addr):
        socks.append(sock)
        gevent.sleep(60)

    s = StreamServer(("127.0.0.1", 0), handle)
    s.start()
    return s


if scenario == "outage":

    class Count(logging.Handler):
        n = 0

        def emit(self, record):
            Count.n += 1

    logging.getLogger("nexus_green").addHandler(Count())
    logging.getLogger("nexus_green").setLevel(logging.INFO)
    server = EmbeddedServer()
    server.start()
    url = server.url
    attempts = []
    from nexus_green.events import default_bus

    default_bus.subscribe(lambda e: attempts.append(1), prefix="connect.started")
    c = Client(url, heartbeat_interval=None)
    c.request(b"x", FID_ECHO, timeout=1)
    server.stop()
    gevent.sleep(0.1)
    attempts.clear()
    Count.n = 0
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    durations = []

    def loop():
        while time.monotonic() - t0 < 3:
            d, e = timed(lambda: c.request(b"x", FID_ECHO, timeout=0.2))
            durations.append((d, e))

    g = gevent.spawn(loop)
    g.join(timeout=6)
    wall = time.monotonic() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / wall
    out.update(
        requests=len(durations),
        max_request_s=max([d for d, _ in durations], default=None),
        errors=sorted({e for _, e in durations if e}),
        returned=g.dead,
        attempts_per_s=round(len(attempts) / wall, 1),
        log_lines_per_s=round(Count.n / wall, 1),
        cpu=round(cpu, 2),
    )
elif scenario in ("tls_stall", "tls_stall_deadline"):
    s = stall_server()
    c = Client(f"tls://127.0.0.1:{s.server_port}", connect_timeout=10, heartbeat_interval=None)
    if scenario == "tls_stall":
        out["seconds"], out["error"] = timed(lambda: c.request(b"x", timeout=1))
    else:
        from nexus_green.deadlines import deadline

        def call():
            with deadline(1):
                c.request(b"x")

        out["seconds"], out["error"] = timed(call)
elif scenario in ("checkout_deadline", "checkout_timeout"):
    server = EmbeddedServer()
    server.start()
    c = Client(server.url, max_size=1, max_in_flight=1, heartbeat_interval=None)
    holder = gevent.spawn(c.request, b"", FID_SILENT, timeout=30)
    gevent.sleep(0.1)
    if scenario == "checkout_deadline":
        from nexus_green.deadlines import deadline

        def call():
            with deadline(0.5):
                c.request(b"x")

        out["seconds"], out["error"] = timed(call)
    else:
        out["seconds"], out["error"] = timed(lambda: c.request(b"x", timeout=0.5))
elif scenario == "reconnect_wait":
    from nexus_green.connection.backoff import FixedInterval

    links = []

    def handle(sock, addr):
        links.append(sock)
        if len(links) == 1:
            sock.close()
            return
        while sock.recv(65536):
            pass

    s = StreamServer(("127.0.0.1", 0), handle)
    s.start()
    c = Client(
        f"tcp://127.0.0.1:{s.server_port}",
        heartbeat_interval=None,
        reconnect=FixedInterval(1.5),
        min_size=1,
    )
    try:
        c.request(b"", timeout=0.3)
    except Exception:
        pass
    gevent.sleep(0.05)
    out["seconds"], out["error"] = timed(lambda: c.request(b"x", timeout=2))
elif scenario == "reconnect_wait_conn":
    from nexus_green.connection import Connection, ConnectionOptions
    from nexus_green.connection.backoff import FixedInterval

    links = []

    def handle(sock, addr):
        links.append(sock)
        if len(links) == 1:
            gevent.sleep(0.05)
            sock.close()
            return
        while sock.recv(65536):
            pass

    s = StreamServer(("127.0.0.1", 0), handle)
    s.start()
    conn = Connection(
        f"tcp://127.0.0.1:{s.server_port}",
        options=ConnectionOptions(reconnect=FixedInterval(1.5), heartbeat_interval=None),
    )
    conn.connect()
    while conn.state == "connected":
        gevent.sleep(0.01)
    out["seconds"], out["error"] = timed(lambda: conn.request(b"x", fid=1, timeout=2))
elif scenario == "fakeclock":
    from nexus_green.clock import FakeClock

    server = EmbeddedServer()
    server.start()
    c = Client(server.url, clock=FakeClock(), heartbeat_interval=None)
    c.request(b"x", FID_ECHO, timeout=5)
    out["real_seconds_for_a_3s_fake_timeout"], out["error"] = timed(lambda: c.request(b"", FID_SILENT, timeout=3))
elif scenario == "blackhole_first":
    hole = stdsocket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(0)
    fill = [stdsocket.socket() for _ in range(3)]
    for f in fill:
        f.setblocking(False)
        try:
            f.connect(hole.getsockname())
        except BlockingIOError:
            pass
    time.sleep(0.2)
    server = EmbeddedServer()
    server.start()
    real = gsocket.getaddrinfo

    def fake(host, port, *a, **k):
        if host == "multi.test":
            return [
                (stdsocket.AF_INET, stdsocket.SOCK_STREAM, 6, "", hole.getsockname()),
                (
                    stdsocket.AF_INET,
                    stdsocket.SOCK_STREAM,
                    6,
                    "",
                    ("127.0.0.1", server.port),
                ),
            ]
        return real(host, port, *a, **k)

    gsocket.getaddrinfo = fake
    c = Client(f"tcp://multi.test:{server.port}", heartbeat_interval=None, connect_timeout=10)
    out["seconds"], out["error"] = timed(lambda: c.request(b"x", FID_ECHO, timeout=3))
elif scenario == "storm":
    accepted = []

    def handle(sock, addr):
        accepted.append(1)
        sock.close()

    s = StreamServer(("127.0.0.1", 0), handle)
    s.start()
    c = Client(f"tcp://127.0.0.1:{s.server_port}", heartbeat_interval=None)
    try:
        c.connect()
    except Exception:
        pass
    gevent.sleep(10)
    out["connects_in_10s"] = len(accepted)
elif scenario == "push_flood":
    import subprocess

    flood = (
        "import socket, struct, time\n"
        "H = struct.Struct('>IHHBBIIIH')\n"
        "p = b''.join(H.pack(36, 0x7A5A, 1, 0, 0, 0, 4, 200, 0) + b'p' * 16 for _ in range(4096))\n"
        "ls = socket.socket(); ls.bind(('127.0.0.1', 0)); ls.listen(1); print(ls.getsockname()[1], flush=True)\n"
        "c, _ = ls.accept(); end = time.monotonic() + 2\n"
        "while time.monotonic() < end: c.sendall(p)\n"
    )
    peer = subprocess.Popen([sys.executable, "-c", flood], stdout=subprocess.PIPE, text=True)
    port = int(peer.stdout.readline())
    c = Client(f"tcp://127.0.0.1:{port}", heartbeat_interval=None, push_queue_size=10)
    c.connect()
    lags, last = [], time.monotonic()
    end = last + 1.5
    while time.monotonic() < end:
        gevent.sleep(0.005)
        now = time.monotonic()
        lags.append(now - last)
        last = now
    out["max_ticker_lag_s"] = round(max(lags), 3)
    peer.kill()
elif scenario == "slow_upload":
    got = [0]

    def handle(sock, addr):
        while True:
            data = sock.recv(65536)
            if not data:
                return
            got[0] += len(data)
            gevent.sleep(len(data) / (8 << 20))

    s = StreamServer(("127.0.0.1", 0), handle)
    s.start()
    c = Client(f"tcp://127.0.0.1:{s.server_port}", heartbeat_interval=0.2, heartbeat_timeout=0.2)
    c.connect()
    conn = c.pool.connections[0]
    c.send(b"u" * (6 << 20), fid=1)
    t0 = time.monotonic()
    while got[0] < (6 << 20) and time.monotonic() - t0 < 10 and conn.state == "connected":
        gevent.sleep(0.01)
    out["received_mb"] = round(got[0] / 1e6, 2)
    out["link"] = conn.state
    out["error"] = type(conn.last_error).__name__ if conn.last_error else None
print(json.dumps(out), flush=True)
os._exit(0)  # skip interpreter teardown: a spinning greenlet of the old code must not hold the exit
