"""Foundation benchmark: nexus_green Client vs raw gevent, threads and asyncio.

Every workload runs in its own process, one after the other, against the same
echo peer (``nexus-green serve``) in yet another process. Each workload sends
the same 64-byte NexusKit frames from 50 concurrent workers for a fixed time
and records per-request latency. The peer's CPU use during each run is
reported, to show it was not the bottleneck.

    (a) client   nexus_green.Client.request from 50 greenlets, each call with timeout=5
    (a0) client-nt  the same without a per-call timeout (to show timeouts cost nothing)
    (b) gevent   hand-written raw gevent sockets, one socket per greenlet
    (c) threads  50 threads with blocking sockets
    (d) asyncio  50 tasks over asyncio streams, one connection each

Run: ``make bench`` or ``python bench/bench_foundation.py [--seconds 5]``.
Writes bench/results/foundation.json.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
from socket import IPPROTO_TCP, TCP_NODELAY
from typing import Any

# Shared helpers live in bench/common.py; the names other scripts import from here stay importable.
from common import PREFIX as PREFIX
from common import RESULTS as RESULTS
from common import cpu_seconds as cpu_seconds
from common import percentile as percentile
from common import recv_exact as recv_exact
from common import run_rounds as run_rounds

CONCURRENCY = 50
BODY = b"x" * 64


def frame(qid: int) -> bytes:
    return PREFIX.pack(20 + len(BODY), 0x7A5A, 1, 0, 0, qid, 1, 0, 0) + BODY


# ---------------------------------------------------------------- workloads (child processes)


def run_client(port: int, seconds: float, with_timeout: bool) -> dict[str, Any]:
    import gevent

    from nexus_green import Client

    lat: list[float] = []
    stop = time.perf_counter() + seconds
    client = Client(f"tcp://127.0.0.1:{port}", heartbeat_interval=None)
    client.connect()
    timeout = 5.0 if with_timeout else None

    def worker() -> None:
        pc = time.perf_counter
        req = client.request
        while True:
            t0 = pc()
            if t0 >= stop:
                return
            if timeout is None:
                req(BODY, 1)
            else:
                req(BODY, 1, None, timeout)
            lat.append(pc() - t0)

    t0 = time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(CONCURRENCY)], raise_error=True)
    elapsed = time.perf_counter() - t0
    client.close()
    return {"requests": len(lat), "elapsed": elapsed, "latencies": lat}


def pingpong(sock: Any, stop: float, lat: list[float]) -> None:
    """One worker of the raw baselines: frame ping-pong on its own socket until ``stop``."""
    sock.setsockopt(IPPROTO_TCP, TCP_NODELAY, 1)
    qid = 0
    pc = time.perf_counter
    try:
        while True:
            t0 = pc()
            if t0 >= stop:
                return
            qid += 1
            sock.sendall(frame(qid))
            head = recv_exact(sock, 24)
            (length,) = struct.unpack_from(">I", head)
            recv_exact(sock, length - 20)
            lat.append(pc() - t0)
    finally:
        sock.close()


def run_gevent(port: int, seconds: float) -> dict[str, Any]:
    import gevent
    from gevent import socket

    lat: list[float] = []
    stop = time.perf_counter() + seconds
    t0 = time.perf_counter()
    workers = [
        gevent.spawn(pingpong, socket.create_connection(("127.0.0.1", port)), stop, lat) for _ in range(CONCURRENCY)
    ]
    gevent.joinall(workers, raise_error=True)
    return {"requests": len(lat), "elapsed": time.perf_counter() - t0, "latencies": lat}


def run_threads(port: int, seconds: float) -> dict[str, Any]:
    import socket
    import threading

    lat: list[float] = []
    stop = time.perf_counter() + seconds
    threads = [
        threading.Thread(target=pingpong, args=(socket.create_connection(("127.0.0.1", port)), stop, lat))
        for _ in range(CONCURRENCY)
    ]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"requests": len(lat), "elapsed": time.perf_counter() - t0, "latencies": lat}


def run_asyncio(port: int, seconds: float) -> dict[str, Any]:
    import asyncio

    lat: list[float] = []
    stop = time.perf_counter() + seconds

    async def worker() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        qid = 0
        pc = time.perf_counter
        try:
            while True:
                t0 = pc()
                if t0 >= stop:
                    return
                qid += 1
                writer.write(frame(qid))
                head = await reader.readexactly(24)
                (length,) = struct.unpack_from(">I", head)
                await reader.readexactly(length - 20)
                lat.append(pc() - t0)
        finally:
            writer.close()
            await writer.wait_closed()

    async def main() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    return {"requests": len(lat), "elapsed": elapsed, "latencies": lat}


WORKLOADS = {
    "client": lambda p, s: run_client(p, s, True),
    "client-nt": lambda p, s: run_client(p, s, False),
    "gevent": run_gevent,
    "threads": run_threads,
    "asyncio": run_asyncio,
}
LABELS = {
    "client": "(a) nexus_green Client, timeout per call",
    "client-nt": "(a0) nexus_green Client, no timeout",
    "gevent": "(b) raw gevent, socket per greenlet",
    "threads": "(c) threads, blocking sockets",
    "asyncio": "(d) asyncio streams",
}


def child(name: str, port: int, seconds: float) -> None:
    res = WORKLOADS[name](port, seconds)
    lat = res.pop("latencies")
    res.update(
        rps=res["requests"] / res["elapsed"],
        p50=percentile(lat, 0.50) * 1000,
        p95=percentile(lat, 0.95) * 1000,
        p99=percentile(lat, 0.99) * 1000,
    )
    print(json.dumps(res))


# ---------------------------------------------------------------- orchestration: common.run_rounds
def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=1, help="repeat the whole set and keep each run")
    ap.add_argument("--child", choices=sorted(WORKLOADS))
    ap.add_argument("--port", type=int)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.port, args.seconds)
        return 0

    runs = run_rounds(__file__, list(WORKLOADS), args.seconds, args.rounds)
    best = {k: max(v, key=lambda r: r["rps"]) for k, v in runs.items()}
    print(f"\nFoundation benchmark: {CONCURRENCY} concurrent workers, 64-byte echo, {args.seconds:.0f}s per run\n")
    print(f"{'workload':44} {'req/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'peer CPU':>9}")
    for name, r in best.items():
        print(
            f"{LABELS[name]:44} {r['rps']:>10,.0f} {r['p50']:>8.3f} {r['p95']:>8.3f} {r['p99']:>8.3f} {r['server_cpu']:>8.0%}"
        )
    ratio = best["client"]["rps"] / best["gevent"]["rps"]
    p95_ratio = best["client"]["p95"] / best["gevent"]["p95"]
    timeout_cost = 1 - best["client"]["rps"] / best["client-nt"]["rps"]
    print(f"\nratio a/b throughput: {ratio:.2f}x (target >= 2.0x)")
    print(f"ratio a/b p95 latency: {p95_ratio:.2f} (target <= 1.0)")
    print(f"cost of a timeout on every call: {timeout_cost:+.1%} of throughput")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "foundation.json").write_text(
        json.dumps(
            {
                "seconds": args.seconds,
                "concurrency": CONCURRENCY,
                "runs": runs,
                "ratio_a_b": ratio,
                "p95_ratio_a_b": p95_ratio,
                "timeout_cost": timeout_cost,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
