"""``nexus-green dashboard``: the dashboard next to a demo workload, and the workload itself.

This module owns the command (wired into ``nexus-green`` by
:func:`add_commands`) and :class:`DemoWorkload`: an embedded server, a
Client with a few pooled connections on its own event bus, a monitor, echo
traffic from a few greenlets, and an ``inventory`` call protected by
``@resilient`` (breaker, retry, fallback) whose backend fails for
``fault_for`` seconds every ``fault_every`` seconds, so the breaker opens,
the fallback answers and the breaker closes again, all on the page.

It is an app (it imports :mod:`nexus_green.testing`); library code never
imports it.

Example::

    >>> with DemoWorkload(greenlets=2, interval=1.0) as demo:
    ...     demo.wait_for_requests(20, timeout=10)
    ...     demo.dashboard.url.startswith("http://127.0.0.1:")
    True
    True
"""

from __future__ import annotations

import argparse
import signal
from typing import Any, Optional

import gevent
from gevent.event import Event

from ..client import Client
from ..errors import NexusError
from ..events import EventBus
from ..greenlets import spawn
from ..monitoring import MonitoringConfiguration, PerformanceMonitor
from ..resilience import BreakerConfig, FallbackConfig, RetryConfig, TimeoutConfig, resilient
from .server import DEFAULT_HOST, DashboardServer

__all__ = ["DemoWorkload", "add_commands", "run_dashboard"]

FALLBACK = b"fallback: last known stock"


class DemoWorkload:
    """A Client under load, monitored, with a dashboard on it (see the module docstring).

    ``greenlets`` echo workers (each pausing ``think`` seconds between
    requests) over ``connections`` pooled connections; the inventory backend
    fails for ``fault_for`` of every ``fault_every`` seconds (``fault_every``
    0: only when :meth:`fail` says so). Dashboard options (``host``,
    ``port``, ``token``, ``interval``...) go to :class:`DashboardServer`.
    """

    def __init__(
        self,
        *,
        greenlets: int = 8,
        connections: int = 2,
        think: float = 0.005,
        fault_every: float = 30.0,
        fault_for: float = 8.0,
        **dashboard: Any,
    ) -> None:
        from ..testing import EmbeddedServer

        self.greenlets = greenlets
        self.connections = connections
        self.think = think
        self.fault_every = fault_every
        self.fault_for = fault_for
        self.failing = False
        self.bus = EventBus()
        self.server = EmbeddedServer(welcome=None)
        self.monitor = PerformanceMonitor(self.bus, config=MonitoringConfiguration(sample_rate=1.0))
        self.client: Optional[Client] = None
        self.dashboard_options = dashboard
        self.dashboard: Optional[DashboardServer] = None
        self._stop = Event()
        self._workers: list[gevent.Greenlet] = []
        self.inventory: Any = None
        self.calls = 0
        self.fallbacks = 0

    def fail(self, failing: bool = True) -> None:
        """Make the inventory backend fail (True) or answer (False) from now on."""
        self.failing = failing

    def start(self) -> DemoWorkload:
        """Start the server, the client, the monitor, the dashboard and the load."""
        self.server.start()
        self.client = client = Client(
            self.server.url, bus=self.bus, monitor=self.monitor, max_size=self.connections, min_size=self.connections
        )
        self.monitor.start()

        @resilient(
            name="inventory",
            bus=self.bus,
            breaker=BreakerConfig(name="inventory", minimum_calls=10, window=5.0),
            retry=RetryConfig(max_attempts=2),
            fallback=FallbackConfig(default=FALLBACK),
            timeout=TimeoutConfig(request=1.0, overall=2.0),
            idempotent=True,
        )
        def inventory(item: int) -> bytes:
            from ..testing import FID_ECHO, FID_ERROR

            if self.failing:
                return client.request(b"503", fid=FID_ERROR, timeout=1.0).body
            return client.request(b"stock %d" % item, fid=FID_ECHO, timeout=1.0).body

        self.inventory = inventory
        options = dict(self.dashboard_options)
        options.setdefault("breakers", [inventory])
        self.dashboard = DashboardServer(self.monitor, **options).start()
        self._workers = [spawn(self._echo, n, name="demo-echo") for n in range(self.greenlets)]
        self._workers.append(spawn(self._orders, name="demo-orders"))
        if self.fault_every > 0:
            self._workers.append(spawn(self._faults, name="demo-faults"))
        return self

    def _echo(self, n: int) -> None:
        from ..testing import FID_DELAY, FID_ECHO

        assert self.client is not None
        i = 0
        while not self._stop.is_set():
            i += 1
            try:
                if i % 50 == n % 50:  # now and then a slower answer, for the latency histogram's tail
                    self.client.request(b"0.02", fid=FID_DELAY, timeout=2.0)
                else:
                    self.client.request(b"x" * (16 + (i * 37 + n) % 512), fid=FID_ECHO, timeout=2.0)
            except NexusError:
                pass
            self._stop.wait(self.think)

    def _orders(self) -> None:
        i = 0
        while not self._stop.is_set():
            i += 1
            answer = self.inventory(i)
            self.calls += 1
            if answer == FALLBACK:
                self.fallbacks += 1
            self._stop.wait(0.02)

    def _faults(self) -> None:
        while not self._stop.wait(self.fault_every - self.fault_for):
            self.failing = True
            if self._stop.wait(self.fault_for):
                break
            self.failing = False

    def wait_for_requests(self, n: int, timeout: float) -> bool:
        """Wait until the monitor counted ``n`` answered requests (at most ``timeout`` seconds)."""
        with gevent.Timeout(timeout, False):
            while (self.monitor.value("requests.completed") or 0) < n:
                gevent.sleep(0.05)
            return True
        return False

    def stop(self) -> None:
        """Stop the load, the dashboard, the client, the monitor and the server (idempotent)."""
        self._stop.set()
        gevent.joinall(self._workers, timeout=5)
        gevent.killall([w for w in self._workers if not w.dead], timeout=2)
        if self.dashboard is not None:
            self.dashboard.stop()
        if self.client is not None:
            self.client.close()
        self.monitor.close()
        self.server.stop()

    def __enter__(self) -> DemoWorkload:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_dashboard(args: argparse.Namespace) -> int:
    """``nexus-green dashboard``: serve the dashboard on a demo workload until Ctrl-C (or ``--duration``)."""
    options: dict[str, Any] = {"host": args.host, "port": args.port, "interval": args.interval}
    if args.token:
        options["token"] = args.token
    demo = DemoWorkload(greenlets=args.greenlets, fault_every=args.fault_every, fault_for=args.fault_for, **options)
    stop = Event()
    # Ctrl-C through a libev signal watcher: an idle hub sits in epoll_wait and would not see Python's handler.
    on_sigint = gevent.signal_handler(signal.SIGINT, stop.set)
    try:
        demo.start()
        assert demo.dashboard is not None
        print(
            f"dashboard on {demo.dashboard.url} (a demo workload against {demo.server.url}; Ctrl-C stops)", flush=True
        )
        stop.wait(args.duration or None)
    finally:
        on_sigint.cancel()
        demo.stop()
    print(f"served {demo.monitor.value('requests.completed')} requests; {demo.fallbacks} fallbacks", flush=True)
    return 0


def add_commands(sub: Any) -> None:
    """Add ``dashboard`` to the ``nexus-green`` subcommands (``sub`` is argparse's subparsers object).

    Example::

        >>> ap = argparse.ArgumentParser(); sub = ap.add_subparsers(dest="command")
        >>> add_commands(sub)
        >>> args = ap.parse_args(["dashboard", "--port", "8050"])
        >>> args.port, args.host, args.interval, args.fn is run_dashboard
        (8050, '127.0.0.1', 1.0, True)
    """
    d = sub.add_parser("dashboard", help="the live dashboard on a demo workload (docs/dashboard.md)")
    d.add_argument("--host", default=DEFAULT_HOST, help="address to bind (not loopback: --token is required)")
    d.add_argument("--port", type=int, default=8050, help="port of the dashboard (0: the OS chooses)")
    d.add_argument("--token", default="", help="ask for this token (?token= in the URL)")
    d.add_argument("--interval", type=float, default=1.0, help="seconds between pushes (1-60)")
    d.add_argument("--greenlets", type=int, default=8, help="greenlets of echo traffic")
    d.add_argument("--fault-every", type=float, default=30.0, help="the inventory backend fails once per this period")
    d.add_argument("--fault-for", type=float, default=8.0, help="... for this many seconds")
    d.add_argument("--duration", type=float, default=0.0, help="stop after this many seconds (0: run until Ctrl-C)")
    d.set_defaults(fn=run_dashboard)
