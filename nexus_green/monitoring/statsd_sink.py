"""StatsDSink: ships the aggregated registry to StatsD on an interval, as pipelined UDP packets.

This module owns the StatsD delivery. Nothing is sent until the flusher
runs: :meth:`StatsDSink.start` (or the ``with`` block, or
:func:`nexus_green.monitoring.enable`, which does both for you) starts it, and
:meth:`StatsDSink.flush` sends at once. Every ``statsd_interval`` (default
10 s) the background greenlet takes one snapshot, turns it into stats with
:func:`~nexus_green.monitoring.export.statsd_stats` (counter deltas since the
previous flush, gauges) and sends them through the ``statsd`` package's
``StatsClient.pipeline()``, which packs many lines into each datagram of at
most ``statsd_max_udp_size`` bytes. Nothing is sent per request.

Histograms (latencies, durations) go out in StatsD's own timer form when the
source is a monitor: while the sink runs, each histogram keeps a uniform
sample of the raw values it recorded since the previous flush
(:class:`~nexus_green.monitoring.samples.TimerSamples`), and each flush sends
at most ``statsd_timer_samples`` of them per histogram, and
``statsd_max_timer_lines`` in all, as ``name:12.500000|ms|@0.25`` (the rate
is values sent / values recorded, so StatsD's counts are right). A bare
snapshot callable has no raw values; its histograms go out as summaries
(``.count`` and ``.p99``-style gauges), as does ``timers=False``.

Why it cannot break or slow the application:

* The host name is resolved once, in the flusher greenlet, through the gevent
  hub's resolver (a thread, not the hub), so ``StatsClient`` only ever sees an
  IP literal. A name that does not resolve is logged and retried at the next
  flush; ``errors`` counts it.
* The UDP socket is switched to non-blocking: a full send buffer drops the
  datagram instead of waiting, and an unreachable host (ICMP refusals) is
  swallowed by the ``statsd`` client.
* A failing snapshot or send is logged and counted; the greenlet keeps going.
  A failure that repeats is logged once a minute with a count
  (:class:`~nexus_green.logs.RepeatedLog`).

Stop it with :meth:`StatsDSink.close` (or use it as a context manager): the
greenlet stops, a last flush goes out, and the socket is closed.

Example::

    >>> from nexus_green.events import EventBus
    >>> from nexus_green.monitoring.monitor import PerformanceMonitor
    >>> from nexus_green.monitoring.config import MonitoringConfiguration
    >>> cfg = MonitoringConfiguration(statsd_port=9, statsd_interval=60)   # nothing listens on 9
    >>> with PerformanceMonitor(EventBus(), config=cfg) as mon, StatsDSink(mon, config=cfg) as sink:
    ...     sent = sink.flush()
    >>> sent > 0, sink.errors
    (True, 0)
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from typing import Any, Optional, Union

import gevent
from statsd import StatsClient

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import UsageError
from ..greenlets import spawn
from ..logs import RepeatedLog
from .config import MonitoringConfiguration
from .export import counter_state, statsd_name, statsd_stats
from .registry import Histogram, MetricsRegistry

__all__ = ["StatsDSink", "hub_resolve"]

log = logging.getLogger("nexus_green.monitoring.statsd")

SnapshotSource = Callable[[], Mapping[str, Any]]


def hub_resolve(host: str, port: int, ipv6: bool = False) -> str:
    """The IP address of ``host``, resolved by the gevent hub's resolver (never blocks the hub).

    IP literals are returned unchanged without a lookup.

    Example::

        >>> hub_resolve("127.0.0.1", 8125)
        '127.0.0.1'
        >>> hub_resolve("localhost", 8125)
        '127.0.0.1'
    """
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    resolver = gevent.get_hub().resolver
    if not ipv6:
        return str(resolver.gethostbyname(host))
    for _family, _type, _proto, _name, sockaddr in resolver.getaddrinfo(host, port):
        if len(sockaddr) == 4:  # (host, port, flowinfo, scope_id): an IPv6 address
            return str(sockaddr[0])
    raise OSError(f"{host!r} has no IPv6 address")


class StatsDSink:
    """Flush a monitor's snapshot to StatsD every ``config.statsd_interval`` seconds.

    ``source`` is a :class:`~nexus_green.monitoring.monitor.PerformanceMonitor`
    (its ``snapshot``) or any callable returning a snapshot dict. Options come
    from ``config`` (host, port, prefix, sample rate, interval, max UDP size,
    IPv6, timer samples); ``resolve`` is injectable for tests. ``timers``
    (default: True for a monitor, False for a callable) sends histograms as
    StatsD timers from raw samples instead of summaries. Nothing is sent
    before :meth:`start` or :meth:`flush`.

    Example::

        >>> sink = StatsDSink(lambda: {"metrics": []}, config=MonitoringConfiguration())
        >>> sink.flush(), sink.flushes
        (0, 1)
        >>> sink.close()
    """

    def __init__(
        self,
        source: Union[SnapshotSource, Any],
        *,
        config: Optional[MonitoringConfiguration] = None,
        clock: Clock = SYSTEM_CLOCK,
        resolve: Callable[[str, int, bool], str] = hub_resolve,
        timers: Optional[bool] = None,
    ) -> None:
        self.config = config or MonitoringConfiguration()
        snapshot = getattr(source, "snapshot", None)
        self._source: SnapshotSource = snapshot if callable(snapshot) else source
        if not callable(self._source):
            raise UsageError(f"StatsDSink needs a monitor or a callable returning a snapshot, got {source!r}")
        registry = getattr(source, "registry", None)
        self.registry: Optional[MetricsRegistry] = registry if isinstance(registry, MetricsRegistry) else None
        if timers and self.registry is None:
            raise UsageError("StatsDSink(timers=True) needs a monitor (raw values come from its registry)")
        self.timers = self.registry is not None if timers is None else timers
        if self.timers:
            assert self.registry is not None
            self.registry.keep_samples(self.config.statsd_timer_samples)
        self._log = RepeatedLog(log, clock=clock)
        self.clock = clock
        self._resolve = resolve
        self._client: Optional[StatsClient] = None
        self._previous: dict[str, float] = {}
        self._greenlet: Optional[gevent.Greenlet] = None
        self._closed = False
        self.flushes = 0
        self.lines_sent = 0
        self.errors = 0
        self.address: Optional[str] = None

    # ------------------------------------------------------------------ client
    def _connect(self) -> Optional[StatsClient]:
        if self._client is not None:
            return self._client
        cfg = self.config
        try:
            self.address = self._resolve(cfg.statsd_host, cfg.statsd_port, cfg.statsd_ipv6)
            client = StatsClient(
                host=self.address,
                port=cfg.statsd_port,
                prefix=cfg.statsd_prefix or None,
                maxudpsize=cfg.statsd_max_udp_size,
                ipv6=cfg.statsd_ipv6,
            )
        except Exception as exc:
            self.errors += 1
            self._log.warning(
                "connect", "statsd: cannot use %s:%s (%s); will retry", cfg.statsd_host, cfg.statsd_port, exc
            )
            return None
        sock = getattr(client, "_sock", None)
        if sock is not None:
            # A full send buffer must drop a datagram, never wait.
            sock.setblocking(False)
        self._client = client
        return client

    # ------------------------------------------------------------------ flushing
    def flush(self) -> int:
        """Send the current figures now; returns how many stat lines were queued for sending."""
        if self._closed and self._client is None:
            return 0
        client = self._connect()
        if client is None:
            return 0
        try:
            snap = self._source()
            stats = statsd_stats(snap, self._previous, histograms=not self.timers)
            rate = self.config.statsd_sample_rate
            with client.pipeline() as pipe:
                for stat, value, kind in stats:
                    if kind == "c":
                        pipe.incr(stat, value, rate)
                    else:
                        pipe.gauge(stat, value)
                lines = len(stats)
                for line in self.timer_lines():
                    # Pre-formatted with its own rate: the client's rate argument would drop lines at random.
                    pipe._send_stat(*line, 1)
                    lines += 1
            self._previous = counter_state(snap)
        except Exception:
            self.errors += 1
            self._log.exception("flush", "statsd: flush failed")
            return 0
        self.flushes += 1
        self.lines_sent += lines
        return lines

    def timer_lines(self) -> list[tuple[str, str]]:
        """``(stat, "12.500000|ms|@0.25")`` for the raw values every histogram kept since the last call.

        Takes the samples (the next call starts a new interval). At most
        ``statsd_timer_samples`` per histogram and ``statsd_max_timer_lines``
        in all; a histogram cut short by the total sends its values with the
        lower rate they then stand for. Seconds go out as milliseconds
        (``|ms``), other units as they are (``|h``).
        """
        if not self.timers or self.registry is None:
            return []
        room = self.config.statsd_max_timer_lines
        out: list[tuple[str, str]] = []
        for m in self.registry.series():
            samples = m.samples if isinstance(m, Histogram) else None
            if samples is None or not samples.seen:
                continue
            values, rate = samples.drain()
            if len(values) > room:
                rate *= room / len(values)
                values = values[:room]
            room -= len(values)
            stat = statsd_name(m.name, dict(m.tags))
            if m.unit == "seconds":
                out.extend((stat, f"{v * 1000.0:0.6f}|ms|@{rate:.6g}") for v in values)
            else:
                out.extend((stat, f"{v:.6g}|h|@{rate:.6g}") for v in values)
        return out

    def mark(self) -> StatsDSink:
        """Take the counters as they are now as the baseline: the next flush sends only what happens after.

        For a sink on a registry that counted before it (``enable()`` after
        ``disable()``): without it the first flush sends every count so far.
        """
        self._previous = counter_state(self._source())
        if self.registry is not None and self.timers:
            self.registry.keep_samples(self.config.statsd_timer_samples)
        return self

    def start(self) -> StatsDSink:
        """Start the background flusher greenlet (idempotent)."""
        if self._closed:
            raise UsageError("StatsDSink was closed; create a new one")
        if self._greenlet is None:
            self._greenlet = spawn(self._run, name="statsd")
        return self

    def _run(self) -> None:
        while True:
            self.clock.sleep(self.config.statsd_interval)
            self.flush()

    @property
    def running(self) -> bool:
        """True while the flusher greenlet runs."""
        return self._greenlet is not None and not self._greenlet.dead

    def close(self) -> None:
        """Stop the flusher, send a last flush if connected, close the socket (idempotent)."""
        if self._closed:
            return
        g, self._greenlet = self._greenlet, None
        if g is not None:
            g.kill(block=True, timeout=5)
        if self._client is not None:
            self.flush()
            self._client.close()
        self._closed = True
        self._client = None
        if self.timers and self.registry is not None:
            self.registry.keep_samples(None)  # histograms stop keeping raw values

    def __enter__(self) -> StatsDSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        cfg = self.config
        return (
            f"<StatsDSink {cfg.statsd_host}:{cfg.statsd_port} prefix={cfg.statsd_prefix!r} flushes={self.flushes}"
            f" lines={self.lines_sent} errors={self.errors} running={self.running}>"
        )
