"""The ``nexus-green`` command line: ``serve``, ``demo`` and ``workload``.

* ``nexus-green serve --port N`` runs the embedded NexusKit server (port 0:
  the OS chooses; the chosen port is printed as ``listening on HOST:PORT``).
* ``nexus-green demo`` (``make demo``) runs the legacy app of
  docs/legacy-apps.md: a monkey-patched pywsgi app whose decorated call sites
  ride out a backend killed for 4 s and restarted, and prints the story
  (:mod:`nexus_green.testing.legacy_app`).
* ``nexus-green workload`` starts an embedded server, runs a short concurrent
  workload through a Client and prints what it did.

Example::

    >>> main(["workload", "--requests", "200", "--concurrency", "10"])  # doctest: +ELLIPSIS
    nexus_green demo against tcp://127.0.0.1:...
    ...
    0
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from typing import Optional

import gevent
from gevent.event import Event
from gevent.pool import Pool

__all__ = ["main", "percentile"]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest-rank.

    Example::

        >>> percentile([1.0, 2.0, 3.0, 4.0], 0.5)
        2.0
    """
    if not sorted_values:
        return 0.0
    idx = max(0, min(len(sorted_values) - 1, int(q * len(sorted_values) + 0.5) - 1))
    return sorted_values[idx]


def _serve(args: argparse.Namespace) -> int:
    from .testing import EmbeddedServer

    server = EmbeddedServer(args.host, args.port, welcome=args.welcome.encode() if args.welcome else None)
    server.start()
    stop = Event()
    # Ctrl-C through a libev signal watcher: a KeyboardInterrupt raised by
    # Python's own handler waits for bytecode to run, and an idle hub sits in
    # epoll_wait, so the process could ignore SIGINT. SIGTERM keeps its default.
    on_sigint = gevent.signal_handler(signal.SIGINT, stop.set)
    print(f"listening on {server.host}:{server.port}", flush=True)
    try:
        # Not gevent.wait(): that only works from the main greenlet, and main() may run in any.
        stop.wait(args.duration or None)
    finally:
        on_sigint.cancel()
        server.stop()
    return 0


def _demo(args: argparse.Namespace) -> int:
    # The demo's own process is not patched: the scenario starts the patched
    # app, and the backend, as child processes (see nexus_green.testing.legacy_app).
    from .testing.legacy_app import run_scenario, story

    print(
        f"nexus_green legacy app demo: {args.greenlets} greenlets; "
        f"the backend is killed after {args.warmup:g}s, for {args.outage:g}s",
        flush=True,
    )
    result = run_scenario(
        greenlets=args.greenlets,
        warmup=args.warmup,
        outage=args.outage,
        recovery=args.recovery,
        log=lambda line: print(f"  {line}", flush=True),
    )
    for line in story(result):
        print(line)
    return 0


def _workload(args: argparse.Namespace) -> int:
    from .client import Client
    from .errors import RemoteError, RequestTimeout
    from .testing import FID_DELAY, FID_ERROR, FID_SILENT, EmbeddedServer

    with EmbeddedServer(welcome=b"welcome to nexus_green") as server, Client(server.url, timeout=5.0) as client:
        print(f"nexus_green demo against {server.url}")
        client.connect()
        welcome = next(client.pushes(timeout=2.0), None)
        print(f"  welcome push: {welcome.body.decode() if welcome else '(none)'}")
        latencies: list[float] = []
        payload = b"x" * args.size

        def one(_: int) -> None:
            t0 = time.perf_counter()
            client.request(payload, fid=1, timeout=5.0)
            latencies.append(time.perf_counter() - t0)

        pool = Pool(args.concurrency)
        t0 = time.perf_counter()
        for _ in pool.imap_unordered(one, range(args.requests)):
            pass
        elapsed = time.perf_counter() - t0
        latencies.sort()
        print(
            f"  {args.requests} echo requests of {args.size} bytes from {args.concurrency} greenlets in {elapsed:.3f}s"
        )
        print(f"  throughput: {args.requests / elapsed:,.0f} req/s over {client.stats()['size']} connection(s)")
        print(
            "  latency ms: p50 {:.3f}  p95 {:.3f}  p99 {:.3f}  max {:.3f}".format(
                *(1000 * percentile(latencies, q) for q in (0.5, 0.95, 0.99, 1.0))
            )
        )
        try:
            client.request(b"0.2", fid=FID_SILENT, timeout=0.2)
        except RequestTimeout as exc:
            print(f"  a silent function timed out as asked: {exc}")
        try:
            client.request(b"503", fid=FID_ERROR)
        except RemoteError as exc:
            print(f"  an error code became RemoteError(code={exc.code})")
        r = client.request(b"0.05", fid=FID_DELAY)
        print(f"  the connection survived both: delayed reply {r.body!r} in {r.latency * 1000:.1f} ms")
        print(f"  pool: {client.pool!r}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """Entry point of the ``nexus-green`` console script."""
    ap = argparse.ArgumentParser(prog="nexus-green", description="nexus_green command line")
    sub = ap.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the embedded NexusKit server")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7600)
    s.add_argument("--welcome", default="", help="push this text to every new connection")
    s.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run until killed)")
    s.set_defaults(fn=_serve)
    d = sub.add_parser("demo", help="the legacy app through a backend outage (docs/legacy-apps.md)")
    d.add_argument("--greenlets", type=int, default=50)
    d.add_argument("--warmup", type=float, default=3.0, help="seconds of load before the backend is killed")
    d.add_argument("--outage", type=float, default=4.0, help="seconds the backend stays down")
    d.add_argument("--recovery", type=float, default=12.0, help="at most this long to wait for recovery")
    d.set_defaults(fn=_demo)
    w = sub.add_parser("workload", help="run a short workload against an embedded server")
    w.add_argument("--requests", type=int, default=20000)
    w.add_argument("--concurrency", type=int, default=50)
    w.add_argument("--size", type=int, default=64)
    w.set_defaults(fn=_workload)
    from .chaos.cli import add_commands as add_chaos_commands  # nexus-green chaos proxy|scenarios (docs/chaos.md)

    add_chaos_commands(sub)
    from .dashboard.cli import add_commands as add_dashboard_commands

    add_dashboard_commands(sub)
    from .profiling.cli import add_commands as add_profiling_commands  # nexus-green profile (docs/profiling.md)

    add_profiling_commands(sub)
    from .tracing.cli import add_commands as add_tracing_commands  # nexus-green trace view (docs/tracing.md)

    add_tracing_commands(sub)
    from .diagnostics.cli import add_commands as add_diagnostics_commands  # nexus-green diagnose (docs/diagnostics.md)

    add_diagnostics_commands(sub)
    args = ap.parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
