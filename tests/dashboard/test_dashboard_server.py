"""DashboardServer over real sockets: every route, auth, SSE (two clients, replay, a client that never reads),
WebSocket frames through a wsproto client, polling; plain and after patch_all()."""

from __future__ import annotations

import base64
import json
import socket
from typing import Any

import gevent
import pytest
from gevent import socket as gsocket
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Ping, Pong, Request, TextMessage

from nexus_green.dashboard import DashboardServer, serve
from nexus_green.errors import ConfigurationError, UsageError
from nexus_green.monitoring import CheckResult, FunctionCheck, HealthChecker, PerformanceMonitor, disable, enable
from nexus_green.testing import run_module_patched


def test_routes_answer(monitor: PerformanceMonitor, http: Any, leakcheck: None) -> None:
    monitor.registry.counter("requests.completed").inc(7)
    monitor.tick()
    with DashboardServer(monitor, interval=60) as dash:
        status, headers, body = http(dash.port, "/")
        assert status == 200 and headers["content-type"].startswith("text/html")
        assert b"<canvas" in body and b"http://" not in body.replace(b"http://www.w3.org", b"")  # nothing external
        assert "default-src 'none'" in headers["content-security-policy"]
        status, headers, body = http(dash.port, "/metrics")
        assert status == 200 and "version=0.0.4" in headers["content-type"]
        assert b"nexus_green_requests_completed_total 7" in body
        status, headers, body = http(dash.port, "/history.csv")
        assert status == 200 and "attachment" in headers["content-disposition"]
        rows = body.decode().splitlines()
        assert rows[0].startswith("time,name,type") and any(
            ",requests.completed,counter,requests,,7," in r for r in rows
        )
        status, _, body = http(dash.port, "/api/snapshot")
        assert json.loads(body)["schema"] == "nexus_green.monitoring/1" and "connections" not in json.loads(body)
        status, _, body = http(dash.port, "/api/snapshot?connections=1")
        assert json.loads(body)["connections"] == []
        status, _, body = http(dash.port, "/health")
        assert status == 200 and json.loads(body)["status"] == "healthy"
        status, _, body = http(dash.port, "/nope")
        assert status == 404 and b"/nope" in body
        status, headers, _ = http(dash.port, "/metrics", method="DELETE")
        assert status == 405 and headers["allow"] == "GET, HEAD"
        status, _, _ = http(dash.port, "/api/interval?seconds=5", method="GET")
        assert status == 405


def test_history_csv_is_streamed_in_chunks(monitor: PerformanceMonitor, http: Any) -> None:
    for _ in range(45):
        monitor.tick()
    with DashboardServer(monitor, interval=60) as dash:
        status, _, body = http(dash.port, "/history.csv")
    lines = body.decode().splitlines()
    assert status == 200 and lines[0].startswith("time,") and sum(1 for line in lines if line.startswith("time,")) == 1
    assert len({line.split(",")[0] for line in lines[1:]}) == 45  # every point, one header


def test_health_is_503_when_unhealthy(monitor: PerformanceMonitor, http: Any) -> None:
    checker = HealthChecker(monitor, [FunctionCheck("disk", lambda m: ("unhealthy", "disk full"))])
    with DashboardServer(monitor, checker=checker, interval=60) as dash:
        status, _, body = http(dash.port, "/health")
    assert status == 503 and json.loads(body)["reasons"] == ["disk: disk full"]
    assert CheckResult(name="x", status="healthy").status == "healthy"


def test_interval_can_be_set_from_1_to_60(monitor: PerformanceMonitor, http: Any) -> None:
    with DashboardServer(monitor, interval=60) as dash:
        status, _, body = http(dash.port, "/api/interval?seconds=5", method="POST")
        assert status == 200 and json.loads(body) == {"interval": 5.0} and dash.stream.interval == 5.0
        for bad in ("0.5", "61", "soon", ""):
            status, _, body = http(dash.port, f"/api/interval?seconds={bad}", method="POST")
            assert status == 400 and b"push interval" in body
        assert dash.stream.interval == 5.0


def test_options_are_checked(monitor: PerformanceMonitor) -> None:
    with pytest.raises(ConfigurationError, match="not loopback: pass token= or basic_auth="):
        DashboardServer(monitor, host="0.0.0.0")
    with pytest.raises(ConfigurationError, match="push interval"):
        DashboardServer(monitor, interval=0)
    with pytest.raises(ConfigurationError, match="token must not be empty"):
        DashboardServer(monitor, token="")
    with pytest.raises(ConfigurationError, match="basic_auth"):
        DashboardServer(monitor, basic_auth=("user", ""))
    with pytest.raises(ConfigurationError, match="write_timeout must be positive"):
        DashboardServer(monitor, write_timeout=0)
    with pytest.raises(ConfigurationError, match="max_watchers"):
        DashboardServer(monitor, max_watchers=0)
    with pytest.raises(ConfigurationError, match="needs a PerformanceMonitor"):
        DashboardServer("monitor")  # type: ignore[arg-type]
    dash = DashboardServer(monitor, host="::1")  # loopback in IPv6: no token needed
    with pytest.raises(UsageError, match="not started"):
        _ = dash.port
    assert "not started" in repr(dash)
    dash.stop()
    with pytest.raises(UsageError, match="stopped"):
        dash.start()


def test_any_address_with_a_token(monitor: PerformanceMonitor, http: Any) -> None:
    with DashboardServer(monitor, host="0.0.0.0", token="s3cret", interval=60) as dash:
        assert dash.url.endswith(f":{dash.port}/?token=s3cret") and "auth=token" in repr(dash)
        status, headers, body = http(dash.port, "/health")
        assert status == 401 and headers["www-authenticate"].startswith("Bearer") and b"token" in body
        assert http(dash.port, "/")[0] == 401
        assert http(dash.port, "/api/stream")[0] == 401
        assert http(dash.port, "/health?token=wrong")[0] == 401
        assert http(dash.port, "/health?token=s3cret")[0] == 200
        assert http(dash.port, "/metrics", headers={"Authorization": "Bearer s3cret"})[0] == 200
        assert http(dash.port, "/metrics", headers={"X-Dashboard-Token": "s3cret"})[0] == 200
        assert http(dash.port, "/metrics", headers={"Authorization": "Bearer nope"})[0] == 401


def test_basic_auth(monitor: PerformanceMonitor, http: Any) -> None:
    def basic(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    with DashboardServer(monitor, host="[::1]", basic_auth=("ops", "pw"), interval=60) as dash:
        assert dash.url.startswith("http://[::1]:")
        port = dash.port
        with gsocket.create_connection(("::1", port), timeout=5) as s:
            s.sendall(b"GET /health HTTP/1.0\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 401")

    with DashboardServer(monitor, basic_auth=("ops", "pw"), interval=60) as dash:
        status, headers, _ = http(dash.port, "/health")
        assert status == 401 and headers["www-authenticate"].startswith("Basic")
        assert http(dash.port, "/health", headers=basic("ops", "pw"))[0] == 200
        assert http(dash.port, "/health", headers=basic("ops", "bad"))[0] == 401
        assert http(dash.port, "/health", headers={"Authorization": "Basic !!!"})[0] == 401
        assert http(dash.port, "/health", headers={"Authorization": "Bearer pw"})[0] == 401


def test_two_sse_clients_see_the_same_events(leakcheck: None, monitor: PerformanceMonitor, sse: Any) -> None:
    with DashboardServer(monitor, interval=60) as dash:
        a, b = sse(dash.port), sse(dash.port)
        first_a, first_b = a.read_until(1)[0], b.read_until(1)[0]
        assert first_a["event"] == first_b["event"] == "snapshot" and "series" in first_a["data"]
        assert b"text/event-stream" in a.head and b"retry: 2000" not in a.head
        for _ in range(3):
            dash.stream.publish()
        ids_a = [e["id"] for e in a.read_until(4)[1:]]
        ids_b = [e["id"] for e in b.read_until(4)[1:]]
        assert ids_a == ids_b == [first_a["id"] + 1, first_a["id"] + 2, first_a["id"] + 3]
        assert all(e["event"] == "tick" and "series" not in e["data"] for e in a.parsed[1:])
        assert dash.stream.watchers == 2


def test_last_event_id_replays_what_was_missed(leakcheck: None, monitor: PerformanceMonitor, sse: Any) -> None:
    with DashboardServer(monitor, interval=60, replay=5) as dash:
        first = sse(dash.port)
        first.read_until(1)
        dash.stream.publish()
        last = first.read_until(2)[-1]["id"]
        missed = [dash.stream.publish().id for _ in range(3)]
        back = sse(dash.port, headers={"Last-Event-ID": str(last)})
        replay = back.read_until(3)
        assert [e["id"] for e in replay] == missed and {e["event"] for e in replay} == {"tick"}
        # Through the query string too (what the page's WebSocket and polling use).
        again = sse(dash.port, path=f"/api/stream?lastEventId={missed[0]}").read_until(2)
        assert [e["id"] for e in again] == missed[1:]
        # Too old for the ring (5 events): a fresh snapshot instead.
        for _ in range(6):
            dash.stream.publish()
        late = sse(dash.port, headers={"Last-Event-ID": str(last)}).read_until(1)
        assert late[0]["event"] == "snapshot" and late[0]["id"] == dash.stream.latest.id  # type: ignore[union-attr]
        # An id this server never gave (a restart): a snapshot too; garbage is ignored.
        assert sse(dash.port, headers={"Last-Event-ID": "999999"}).read_until(1)[0]["event"] == "snapshot"
        assert sse(dash.port, headers={"Last-Event-ID": "x"}).read_until(1)[0]["event"] == "snapshot"


def test_a_client_that_never_reads_does_not_stall_the_others(
    leakcheck: None, monitor: PerformanceMonitor, sse: Any
) -> None:
    # A big view model (many connection rows) fills the socket buffers quickly.
    for i in range(400):
        monitor.bus.emit("connect.complete", conn_id=f"c{i:04d}", endpoint=f"tcp://10.0.0.1:{i}", duration=0.001)
    with DashboardServer(monitor, interval=60, queue_size=4, write_timeout=60, max_rows=400) as dash:
        stuck = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", dash.port))
        stuck.sendall(b"GET /api/stream HTTP/1.1\r\nHost: x\r\n\r\n")  # ...and never reads
        good = sse(dash.port)
        good.read_until(1)
        assert dash.stream.watchers == 2
        slow = next(s for s in dash.stream._subs if s is not dash.stream._subs[-1])
        published = 0
        with gevent.Timeout(30, AssertionError("the silent client was never dropped")):
            while not slow.dropped:
                dash.stream.publish()
                published += 1
                good.read_until(1 + published)  # the reading client gets every event, in time
        assert slow.reason.startswith("too slow") and dash.stream.dropped == 1
        # The dropped watcher's greenlet ended (its socket was shut down): only the good one is left.
        with gevent.Timeout(5, AssertionError("the dropped watcher is still attached")):
            while dash.stream.watchers != 1:
                gevent.sleep(0.01)
        for _ in range(3):
            dash.stream.publish()
        events = good.read_until(4 + published)
        ids = [e["id"] for e in events]
        assert ids == list(range(ids[0], ids[0] + len(ids)))  # nothing lost, nothing out of order
        stuck.close()


def test_too_many_watchers_are_refused(monitor: PerformanceMonitor, http: Any, sse: Any) -> None:
    with DashboardServer(monitor, interval=60, max_watchers=1) as dash:
        sse(dash.port).read_until(1)
        status, headers, body = http(dash.port, "/api/stream")
        assert status == 503 and headers["retry-after"] == "5" and b"/api/view" in body


def test_polling(monitor: PerformanceMonitor, http: Any) -> None:
    with DashboardServer(monitor, interval=60, replay=3) as dash:
        status, headers, body = http(dash.port, "/api/view")
        first = json.loads(body)["events"]
        assert status == 200 and [e["event"] for e in first] == ["snapshot"] and "series" in first[0]["data"]
        ids = [dash.stream.publish().id for _ in range(2)]
        after = json.loads(http(dash.port, f"/api/view?after={first[0]['id']}")[2])["events"]
        assert [e["id"] for e in after] == ids and after[0]["data"]["seq"] == ids[0]
        for _ in range(5):
            dash.stream.publish()
        stale = json.loads(http(dash.port, f"/api/view?after={ids[0]}")[2])["events"]
        assert [e["event"] for e in stale] == ["snapshot"]


class WSClient:
    """A WebSocket client on a raw socket and wsproto (not simple-websocket, which the server uses)."""

    def __init__(self, port: int, target: str = "/api/ws") -> None:
        self.sock = gsocket.create_connection(("127.0.0.1", port), timeout=10)
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.sock.sendall(self.ws.send(Request(host="127.0.0.1", target=target)))
        self.accepted = False
        self.messages: list[dict[str, Any]] = []
        self.pongs: list[bytes] = []
        self.closed: Any = None
        self.partial = ""

    def pump(self, until: Any, timeout: float = 10.0) -> None:
        with gevent.Timeout(timeout, AssertionError(f"websocket: gave up waiting; got {self.messages!r}")):
            while not until():
                data = self.sock.recv(65536)
                self.ws.receive_data(data or None)
                for ev in self.ws.events():
                    if isinstance(ev, AcceptConnection):
                        self.accepted = True
                    elif isinstance(ev, TextMessage):  # a big message may come in fragments
                        self.partial += ev.data
                        if ev.message_finished:
                            self.messages.append(json.loads(self.partial))
                            self.partial = ""
                    elif isinstance(ev, Pong):
                        self.pongs.append(bytes(ev.payload))
                    elif isinstance(ev, CloseConnection):
                        self.closed = ev
                        return
                if not data:
                    return


def test_websocket_round_trip(monitor: PerformanceMonitor, leakcheck: None) -> None:
    with DashboardServer(monitor, interval=60) as dash:
        client = WSClient(dash.port)
        client.pump(lambda: len(client.messages) >= 1)
        assert client.accepted and client.messages[0]["event"] == "snapshot"
        assert "series" in client.messages[0]["data"]
        client.sock.sendall(client.ws.send(Ping(b"are you there")))
        client.sock.sendall(client.ws.send(TextMessage(data="hello")))  # ignored, costs nothing
        event = dash.stream.publish()
        client.pump(lambda: len(client.messages) >= 2 and bool(client.pongs))
        assert client.messages[1]["id"] == event.id and client.messages[1]["event"] == "tick"
        assert client.pongs == [b"are you there"]
        # Resume after an id, through the query string.
        later = WSClient(dash.port, f"/api/ws?lastEventId={client.messages[0]['id']}")
        later.pump(lambda: len(later.messages) >= 1)
        assert [m["id"] for m in later.messages] == [event.id]
        # The client closes: the server answers the close and lets go of the watcher.
        client.sock.sendall(client.ws.send(CloseConnection(code=1000)))
        client.pump(lambda: client.closed is not None)
        assert client.closed.code == 1000
        client.sock.close()
        with gevent.Timeout(5, AssertionError("the websocket watcher was not released")):
            while dash.stream.watchers != 1:
                gevent.sleep(0.01)
        # The server stops: the other client is closed too.
        dash.stop()
        later.pump(lambda: later.closed is not None)
        later.sock.close()


def test_a_websocket_client_that_never_reads_is_dropped(leakcheck: None, monitor: PerformanceMonitor) -> None:
    for i in range(400):
        monitor.bus.emit("connect.complete", conn_id=f"c{i:04d}", endpoint=f"tcp://10.0.0.1:{i}", duration=0.001)
    with DashboardServer(monitor, interval=60, queue_size=4, write_timeout=60, max_rows=400) as dash:
        stuck = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_STREAM)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.connect(("127.0.0.1", dash.port))
        ws = WSConnection(ConnectionType.CLIENT)
        stuck.sendall(ws.send(Request(host="127.0.0.1", target="/api/ws")))  # ...and never reads
        good = WSClient(dash.port)
        good.pump(lambda: len(good.messages) >= 1)
        with gevent.Timeout(5, AssertionError("the silent websocket never subscribed")):
            while dash.stream.watchers != 2:
                gevent.sleep(0.01)
        slow = dash.stream._subs[0]
        published = 0
        with gevent.Timeout(30, AssertionError("the silent websocket client was never dropped")):
            while not slow.dropped:
                dash.stream.publish()
                published += 1
                good.pump(lambda n=published: len(good.messages) >= 1 + n)
        with gevent.Timeout(5, AssertionError("the dropped websocket watcher is still attached")):
            while dash.stream.watchers != 1:
                gevent.sleep(0.01)
        ids = [m["id"] for m in good.messages]
        assert ids == list(range(ids[0], ids[0] + len(ids))) and slow.reason.startswith("too slow")
        stuck.close()
        good.sock.close()


def test_websocket_needs_an_upgrade(monitor: PerformanceMonitor, http: Any) -> None:
    with DashboardServer(monitor, interval=60) as dash:
        status, _, body = http(dash.port, "/api/ws")
        assert status == 400 and b"WebSocket upgrade" in body
        # An upgrade wsproto refuses (no version): the connection is closed, nothing leaks.
        status_line = b""
        with gsocket.create_connection(("127.0.0.1", dash.port), timeout=5) as s:
            s.sendall(b"GET /api/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nSec-WebSocket-Key: abc\r\n\r\n")
            status_line = s.recv(100)
        assert not status_line.startswith(b"HTTP/1.1 101")
        assert dash.stream.watchers == 0


def test_serve_uses_the_enabled_monitor(http: Any) -> None:
    disable()
    with pytest.raises(UsageError, match="enable"):
        serve()
    running = enable()
    try:
        dash = serve(port=0, interval=2)
        try:
            assert dash.monitor is running.monitor and dash.stream.running and dash.stream.interval == 2.0
            assert http(dash.port, "/health")[0] == 200
        finally:
            dash.stop()
        assert not dash.stream.running
    finally:
        disable()


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
