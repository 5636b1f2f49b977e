"""Memory under sustained load: bounded by the work in flight, not by rate x timeout.

A Client sends 64-byte requests from 50 greenlets, each with a long timeout
(300 s by default), to the epoll echo peer (bench/echo_peer.py, another
process) for ``--seconds`` at full rate. RSS is read from /proc every second,
measured from after imports and a warm-up. Before issue 12, every request's
deadline left a millisecond bucket behind until its timeout passed, so RSS
grew with rate x timeout (60 MB in 20 s with a 300 s timeout); the timers of
nexus_green.timers drop a bucket when its last timer is cancelled.

The second part stops the peer from reading while requests with 1 MiB bodies
time out: their frames must leave the write queue (taken back when never
written), so the client's memory stays bounded by what is in flight.

Run: ``python bench/bench_memory_inflight.py [--seconds 30] [--timeout 300]``.
Writes bench/results/memory_inflight.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import gevent

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONCURRENCY = 50
PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 1e6


def start_peer() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "echo_peer.py")],
        stdout=subprocess.PIPE,
        text=True,
        cwd=HERE.parent,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, int(line.rsplit(":", 1)[1])


def sustained(port: int, seconds: float, timeout: float) -> dict[str, object]:
    from nexus_green import Client

    try:
        from nexus_green.timers import hub_scheduler
    except ImportError:  # the code before issue 11/12, for a before/after run
        hub_scheduler = None  # type: ignore[assignment]

    body = b"x" * 64
    done = [0]
    stop = [False]
    with Client(f"tcp://127.0.0.1:{port}", timeout=timeout, heartbeat_interval=None) as client:

        def worker() -> None:
            while not stop[0]:
                client.request(body, 1)
                done[0] += 1

        workers = [gevent.spawn(worker) for _ in range(CONCURRENCY)]
        gevent.sleep(3.0)  # warm-up: pools, buffers, caches
        gc.collect()
        base = rss_mb()
        start_done, t0 = done[0], time.monotonic()
        samples = []
        while time.monotonic() - t0 < seconds:
            gevent.sleep(1.0)
            samples.append(round(rss_mb() - base, 2))
        rate = (done[0] - start_done) / (time.monotonic() - t0)
        if hub_scheduler is not None:
            sched = hub_scheduler()
            armed, buckets = sched.armed, sched.buckets
        else:
            armed = buckets = -1
        stop[0] = True
        gevent.joinall(workers, timeout=10)
    return {
        "seconds": seconds,
        "timeout": timeout,
        "req_per_s": round(rate),
        "requests": done[0] - start_done,
        "rss_growth_mb_max": max(samples),
        "rss_growth_mb_end": samples[-1],
        "timers_armed_at_end": armed,
        "buckets_at_end": buckets,
        "samples": samples,
    }


def stalled_writes(seconds: float) -> dict[str, object]:
    """Requests with 1 MiB bodies time out against a peer that never reads: the write queue must not keep them."""
    from gevent.server import StreamServer

    from nexus_green import Client

    held = []

    def never_read(sock, addr):  # type: ignore[no-untyped-def]
        held.append(sock)
        gevent.sleep(seconds + 30)

    server = StreamServer(("127.0.0.1", 0), never_read)
    server.start()
    body = b"y" * (1 << 20)
    timeouts = [0]
    stop = [False]
    try:
        with Client(
            f"tcp://127.0.0.1:{server.server_port}",
            timeout=0.2,
            heartbeat_interval=None,
        ) as client:

            def worker() -> None:
                while not stop[0]:
                    try:
                        client.request(body, 1)
                    except Exception:
                        timeouts[0] += 1

            workers = [gevent.spawn(worker) for _ in range(10)]
            gevent.sleep(1.0)
            gc.collect()
            base = rss_mb()
            t0 = time.monotonic()
            samples = []
            while time.monotonic() - t0 < seconds:
                gevent.sleep(1.0)
                samples.append(round(rss_mb() - base, 2))
            queued = sum(c.buffered()[1] for c in client.pool.connections)
            stop[0] = True
            gevent.joinall(workers, timeout=10)
    finally:
        server.stop(timeout=1)
    return {
        "seconds": seconds,
        "timeouts": timeouts[0],
        "rss_growth_mb_max": max(samples),
        "rss_growth_mb_end": samples[-1],
        "write_queue_bytes_at_end": queued,
        "samples": samples,
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--stall-seconds", type=float, default=10.0)
    args = ap.parse_args()
    peer, port = start_peer()
    try:
        a = sustained(port, args.seconds, args.timeout)
    finally:
        peer.kill()
        peer.wait()
    b = stalled_writes(args.stall_seconds)
    print(f"\nMemory bounded by work in flight ({CONCURRENCY} greenlets, timeout {args.timeout:g}s)\n")
    print(f"{'scenario':<44}{'req/s':>9}{'RSS growth max':>16}{'at end':>9}")
    print(
        f"{'sustained load, ' + str(int(args.seconds)) + ' s':<44}{a['req_per_s']:>9,}"
        f"{a['rss_growth_mb_max']:>13.1f} MB{a['rss_growth_mb_end']:>6.1f} MB"
    )
    print(
        f"{'1 MiB bodies timing out, peer never reads':<44}{'-':>9}"
        f"{b['rss_growth_mb_max']:>13.1f} MB{b['rss_growth_mb_end']:>6.1f} MB"
    )
    print(
        f"\ntimers armed / ms buckets held at the end of the sustained run: "
        f"{a['timers_armed_at_end']} / {a['buckets_at_end']} (bounded by requests in flight)"
    )
    print(
        f"write queue at the end of the stalled run: {b['write_queue_bytes_at_end']:,} bytes, "
        f"{b['timeouts']} requests timed out"
    )
    print("target: RSS growth <= 20 MB over the sustained run")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "memory_inflight.json").write_text(json.dumps({"sustained": a, "stalled_writes": b}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
