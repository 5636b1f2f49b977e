"""The live dashboard (above monitoring): a page, its streams and an export API, served from the application.

An operator opens one URL and watches the client live: overview, connections,
throughput, latency, memory, health and the resilience layer (each breaker's
state and error rate, retries, fallbacks served, rejections). docs/dashboard.md
shows it.

* :class:`DashboardServer` -- gevent.pywsgi in this process's greenlets; the
  page, SSE / WebSocket / polling streams, /metrics, /history.csv, /health.
* :func:`serve` -- start one for a monitor (``serve(monitor, port=8050)``).
* :class:`MetricsAggregator` -- the monitor's figures as the view model.
* :class:`RealtimeStream` -- the producer, the replay ring and the bounded
  per-watcher queues.

Library code never imports this package; it imports the client, monitoring
and resilience layers.

Example::

    >>> from nexus_green.monitoring import enable, disable
    >>> dash = serve(enable().monitor)          # 127.0.0.1, a port the OS chose
    >>> dash.url.startswith("http://127.0.0.1:"), dash.stream.interval
    (True, 1.0)
    >>> dash.stop(); disable()
"""

from .aggregator import LATENCY_BINS_MS, VIEW_SCHEMA, MetricsAggregator
from .server import DEFAULT_HOST, DashboardServer, serve
from .stream import MAX_INTERVAL, MIN_INTERVAL, RealtimeStream, StreamClosed, StreamEvent, Subscriber

__all__ = [
    "DashboardServer",
    "serve",
    "DEFAULT_HOST",
    "MetricsAggregator",
    "VIEW_SCHEMA",
    "LATENCY_BINS_MS",
    "RealtimeStream",
    "Subscriber",
    "StreamEvent",
    "StreamClosed",
    "MIN_INTERVAL",
    "MAX_INTERVAL",
]
