"""Monitoring end to end: a real Client and EmbeddedServer, figures read back exactly."""

from __future__ import annotations

import gevent
import pytest

from nexus_green import Client
from nexus_green.errors import ConfigurationError, RemoteError, RequestTimeout
from nexus_green.events import EventBus
from nexus_green.monitoring import MonitoringConfiguration, PerformanceMonitor
from nexus_green.testing import FID_ERROR, FID_SILENT, EmbeddedServer

pytestmark = pytest.mark.usefixtures("leakcheck")


def test_client_traffic_is_counted_exactly() -> None:
    bus = EventBus()
    with EmbeddedServer() as server, PerformanceMonitor(bus, config=MonitoringConfiguration(sample_rate=1.0)) as mon:
        with Client(server.url, bus=bus, monitor=mon, heartbeat_interval=None) as client:
            jobs = [gevent.spawn(client.request, b"x" * 10, 1) for _ in range(200)]
            gevent.joinall(jobs, timeout=10, raise_error=True)
            with pytest.raises(RemoteError):
                client.request(b"503", fid=FID_ERROR)
            with pytest.raises(RequestTimeout):
                client.request(b"", fid=FID_SILENT, timeout=0.05)
            mon.tick()  # flushes every connection's io.stats
            v = mon.value
            assert v("requests.completed") == 201
            assert v("requests.non_ok") == 1
            assert v("errors.timeouts") == 1
            assert v("request.latency", field="count") == 201
            assert 0 < v("request.latency", field="p50") < 1
            assert v("messages.sent") == 202 and v("messages.received") == 201
            assert v("bytes.sent") == 200 * 34 + 27 + 24
            assert v("connections.active") == 1
            assert v("pool.size", {"pool": server.url}) == 1
            assert v("connect.duration", field="count") == 1
            info = mon.tracker.connections()[0]
            assert info.requests == 202 and info.state == "connected"
        gevent.sleep(0.05)
        mon.tick()
        assert mon.value("connections.active") == 0


def test_default_sample_rate_samples_batches_but_counts_exactly() -> None:
    bus = EventBus()
    with EmbeddedServer() as server, PerformanceMonitor(bus) as mon:
        assert bus.latency_sample_every == 10
        with Client(server.url, bus=bus, heartbeat_interval=None) as client:
            for _ in range(400):  # one request per recv: 400 batches
                client.request(b"y", fid=1)
            mon.tick()
            assert mon.value("requests.completed") == 400
            assert mon.value("request.latency", field="count") == 40
    assert bus.latency_sample_every == 1  # the monitor gave the hint back on close


def test_reads_are_exact_without_a_tick() -> None:
    bus = EventBus()
    with EmbeddedServer() as server, PerformanceMonitor(bus, config=MonitoringConfiguration(sample_rate=1.0)) as mon:
        with Client(server.url, bus=bus, monitor=mon, heartbeat_interval=None) as client:
            for _ in range(7):
                client.request(b"z", fid=1)
            assert mon.value("requests.completed") == 7  # value() takes in every connection's traffic first
            snap = {(m["name"], tuple(sorted(m["tags"].items()))): m for m in mon.snapshot()["metrics"]}
            assert snap[("request.latency", ())]["count"] == 7
            client.request(b"z", fid=1)
            assert mon.tracker.connections()[0].requests == 8


def test_a_standalone_tracker_is_exact_when_queried() -> None:
    from nexus_green.monitoring import ConnectionTracker

    bus = EventBus()
    tracker = ConnectionTracker()
    tracker.attach(bus)
    try:
        with EmbeddedServer() as server, Client(server.url, bus=bus, heartbeat_interval=None) as client:
            for _ in range(5):
                client.request(b"abc", fid=1)
            (info,) = tracker.connections()
            assert info.requests == 5 and info.bytes_sent == 5 * 27
            assert tracker.get(info.conn_id).requests == 5
    finally:
        tracker.close()


def test_a_stopped_monitor_keeps_counting_and_a_connection_follows_a_new_bus() -> None:
    silent, watched = EventBus(), EventBus()
    with (
        EmbeddedServer() as server,
        PerformanceMonitor(watched, config=MonitoringConfiguration(sample_rate=1.0)) as mon,
    ):
        mon.start().stop()
        assert not mon.running
        with Client(server.url, bus=silent, heartbeat_interval=None) as client:
            client.request(b"unseen", fid=1)
            assert mon.value("requests.completed") == 0
            (conn,) = client.pool.connections
            conn.bus = watched  # the connection notices the other bus by its version
            for _ in range(3):
                client.request(b"seen", fid=1)
            assert mon.value("requests.completed") == 3
            assert mon.value("request.latency", field="count") == 3
        mon.start()
        assert mon.running


def test_closing_takes_in_the_traffic_since_the_last_tick() -> None:
    bus = EventBus()
    with EmbeddedServer() as server:
        mon = PerformanceMonitor(bus, config=MonitoringConfiguration(sample_rate=1.0))
        with Client(server.url, bus=bus, heartbeat_interval=None) as client:
            for _ in range(6):
                client.request(b"x", fid=1)
            mon.close()  # no tick ever ran
            assert mon.value("requests.completed") == 6
            assert mon.value("request.latency", field="count") == 6
            client.request(b"after", fid=1)
            assert mon.value("requests.completed") == 6  # closed: no longer listening


def test_a_push_callback_that_reads_the_monitor_mid_batch_loses_no_latency() -> None:
    # The callback runs inside the reader's batch, where the latency array's
    # append is bound: the read's flush must not leave the rest of the batch
    # appending to an array already reported.
    from nexus_green.testing import FID_PUSH

    bus = EventBus()
    with EmbeddedServer() as server, PerformanceMonitor(bus, config=MonitoringConfiguration(sample_rate=1.0)) as mon:
        seen: list[int] = []
        with Client(server.url, bus=bus, heartbeat_interval=None) as client:
            client.on_push(lambda frame: seen.append(int(mon.value("requests.completed"))))
            for _ in range(5):
                jobs = [gevent.spawn(client.request, b"x", 1) for _ in range(40)]
                jobs.insert(20, gevent.spawn(client.request, b"3", FID_PUSH))
                gevent.joinall(jobs, timeout=10, raise_error=True)
            (conn,) = client.pool.connections
            assert seen and conn.responses == 5 * 41
            assert mon.value("requests.completed") == conn.responses
            assert mon.value("request.latency", field="count") == conn.responses


def test_a_monitor_loses_nothing_when_another_listener_comes_and_goes() -> None:
    from nexus_green.monitoring import ConnectionTracker

    bus = EventBus()
    with EmbeddedServer() as server, PerformanceMonitor(bus, config=MonitoringConfiguration(sample_rate=1.0)) as mon:
        with Client(server.url, bus=bus, heartbeat_interval=None) as client:
            client.request(b"a", fid=1)
            mon.flush()
            for _ in range(4):
                client.request(b"b", fid=1)
            tracker = ConnectionTracker()
            tracker.attach(bus)  # a second io.stats listener joins ...
            client.request(b"c", fid=1)
            tracker.close()  # ... and leaves, before the monitor read again
            client.request(b"d", fid=1)
            assert mon.value("requests.completed") == 7
            assert mon.value("request.latency", field="count") == 7


def test_monitor_must_share_the_bus() -> None:
    with PerformanceMonitor(EventBus()) as mon:
        with pytest.raises(ConfigurationError, match="same EventBus"):
            Client("tcp://127.0.0.1:9", monitor=mon)
