"""DashboardServer: the dashboard's HTTP server on gevent.pywsgi, in greenlets inside the application.

This module owns the routes, access control and the three transports:

=====================  ==========================================================
``GET /``              the page (one self-contained file shipped in the package)
``GET /api/stream``    Server-Sent Events: ``tick`` events, ``id:`` on each, replay
                       on ``Last-Event-ID`` (header, or ``?lastEventId=``)
``GET /api/ws``        WebSocket (simple-websocket/wsproto): the same events as JSON
``GET /api/view``      polling: the latest ``snapshot``, or ``?after=ID`` the events since
``POST /api/interval`` ``?seconds=N`` sets the push interval (1-60 s)
``GET /api/snapshot``  the monitor's JSON snapshot (``?connections=1`` adds connections)
``GET /metrics``       Prometheus text format
``GET /history.csv``   the monitor's history as CSV (a download)
``GET /health``        the health report: 200 healthy or degraded, 503 unhealthy
=====================  ==========================================================

Access: it binds to 127.0.0.1 unless told otherwise, and any other address
needs ``token=`` or ``basic_auth=``; with either set every route asks for it
(``Authorization: Bearer``, ``X-Dashboard-Token``, ``?token=`` for the
browser's EventSource and WebSocket, or HTTP basic auth).

Streams take their connection over from pywsgi and write to the socket
themselves, each write bounded by ``write_timeout``. A watcher that stops
reading is dropped when its queue fills, and its socket is shut down so its
greenlet ends: it never holds the hub or the other watchers.

Example::

    >>> from nexus_green.events import EventBus
    >>> from nexus_green.monitoring import PerformanceMonitor
    >>> from nexus_green.testing.legacy_app import http_get
    >>> mon = PerformanceMonitor(EventBus())
    >>> with DashboardServer(mon) as dash:
    ...     status, headers, body = http_get(dash.port, "/health", timeout=5)
    >>> status, body
    (200, b'{"status": "healthy", "reasons": [], "checks": [...]}')
    >>> mon.close()
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import logging
import socket as stdsocket
from collections.abc import Callable, Iterable, Iterator
from importlib import resources
from typing import Any, Optional
from urllib.parse import parse_qs

import gevent
from gevent.event import Event as GEvent
from gevent.lock import Semaphore
from gevent.pywsgi import WSGIHandler, WSGIServer

from ..errors import ConfigurationError, UsageError
from ..greenlets import spawn
from ..monitoring.export import to_csv, to_json, to_prometheus
from ..monitoring.health import UNHEALTHY, HealthChecker
from ..monitoring.monitor import PerformanceMonitor
from .aggregator import MetricsAggregator
from .stream import RealtimeStream, StreamClosed, Subscriber, check_interval

__all__ = ["DashboardServer", "serve", "DEFAULT_HOST"]

log = logging.getLogger("nexus_green.dashboard")

DEFAULT_HOST = "127.0.0.1"
_TAKEN = "nexus_green.dashboard.taken"
_SOCKET = "nexus_green.dashboard.socket"
_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
    b"Connection: close\r\nX-Accel-Buffering: no\r\n\r\nretry: 2000\n\n"
)
_CSV_YIELD_EVERY = 20  # history points rendered between two yields to the hub

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


class _WriteTimeout(Exception):
    pass


class _Handler(WSGIHandler):
    """pywsgi's handler, letting a stream take the connection over (pywsgi then writes nothing and closes it)."""

    def get_environ(self) -> Environ:
        env: Environ = super().get_environ()
        env[_SOCKET] = self.socket
        return env

    def run_application(self) -> None:
        try:
            super().run_application()
        finally:
            if self.environ.get(_TAKEN):
                self.close_connection = True


def _shutdown(sock: Any) -> None:
    # Wakes a greenlet blocked writing to (or reading from) this socket: the kernel reports it writable.
    try:
        sock.shutdown(stdsocket.SHUT_RDWR)
    except OSError:
        pass


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _page() -> bytes:
    return resources.files("nexus_green.dashboard").joinpath("static/index.html").read_bytes()


class _WebSocketSocket:
    """What simple-websocket writes to: ``send`` is a whole ``sendall`` under the write timeout, one writer at a time.

    simple-websocket calls ``sock.send`` and does not look at the count, which
    a slow reader turns into half-written frames; its reader greenlet answers
    pings while the stream writes events, so writes take a lock.
    """

    def __init__(self, sock: Any, write_timeout: float, on_close: Callable[[], None]) -> None:
        self.sock = sock
        self.write_timeout = write_timeout
        self.on_close = on_close
        self._lock = Semaphore()

    def send(self, data: bytes) -> int:
        with self._lock, gevent.Timeout(self.write_timeout, _WriteTimeout):
            self.sock.sendall(data)
        return len(data)

    def recv(self, n: int) -> bytes:
        data: bytes = self.sock.recv(n)
        return data

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def close(self) -> None:
        # simple-websocket's reader ends: the client went away or closed.
        self.on_close()


class _GreenThread:
    """simple-websocket's ``thread_class``: its reader loop runs in a greenlet, not an OS thread."""

    def __init__(self, target: Callable[[], None]) -> None:
        self.name = "nexus_green:dashboard-ws-reader"
        self._target = target
        self.greenlet: Optional[gevent.Greenlet] = None

    def start(self) -> None:
        self.greenlet = spawn(self._target, name="dashboard-ws-reader")


class _BoundedInbox(list[Any]):
    # Messages a client sends are not used; keep at most a few so a chatty client costs nothing.
    def append(self, item: Any) -> None:
        if len(self) >= 8:
            del self[0]
        super().append(item)


def _ws_server_class() -> type:
    import simple_websocket

    class _Server(simple_websocket.Server):
        def handshake(self) -> None:
            self.input_buffer = _BoundedInbox()
            super().handshake()

    return _Server


class DashboardServer:
    """The dashboard for one :class:`~nexus_green.monitoring.PerformanceMonitor` (see the module docstring).

    Options: ``host`` (default 127.0.0.1; another address needs ``token`` or
    ``basic_auth=(user, password)``), ``port`` (0: the OS chooses; read
    :attr:`port`), ``interval`` 1-60 s between pushes, ``max_rows`` connection
    rows, ``series_points`` chart points, ``replay`` events kept for
    ``Last-Event-ID``, ``queue_size`` events a watcher may lag before it is
    dropped, ``write_timeout`` for one write to a watcher, ``keepalive``
    seconds between SSE comments on a quiet stream, ``max_watchers`` streams
    at once (more get 503), ``breakers`` to watch (see
    :meth:`MetricsAggregator.watch`), ``checker`` for /health.

    Example::

        >>> from nexus_green.events import EventBus
        >>> from nexus_green.monitoring import PerformanceMonitor
        >>> DashboardServer(PerformanceMonitor(EventBus()), host="0.0.0.0")
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: the dashboard binds to 0.0.0.0, which is not loopback: pass token= or basic_auth=(user, password) so that not anyone can read it
    """

    def __init__(
        self,
        monitor: PerformanceMonitor,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        token: Optional[str] = None,
        basic_auth: Optional[tuple[str, str]] = None,
        interval: float = 1.0,
        max_rows: int = 100,
        series_points: int = 300,
        replay: int = 300,
        queue_size: int = 32,
        write_timeout: float = 5.0,
        keepalive: float = 15.0,
        max_watchers: int = 1000,
        breakers: Iterable[Any] = (),
        checker: Optional[HealthChecker] = None,
    ) -> None:
        if not isinstance(monitor, PerformanceMonitor):
            raise ConfigurationError(
                f"DashboardServer needs a PerformanceMonitor (e.g. nexus_green.monitoring.enable().monitor), "
                f"not {monitor!r}"
            )
        if token is not None and not token:
            raise ConfigurationError("token must not be empty")
        if basic_auth is not None and (len(basic_auth) != 2 or not basic_auth[0] or not basic_auth[1]):
            raise ConfigurationError("basic_auth must be (user, password), both non-empty")
        if not _is_loopback(host) and token is None and basic_auth is None:
            raise ConfigurationError(
                f"the dashboard binds to {host}, which is not loopback: pass token= or basic_auth=(user, password)"
                " so that not anyone can read it"
            )
        for name, value in (("write_timeout", write_timeout), ("keepalive", keepalive)):
            if not value > 0:
                raise ConfigurationError(f"{name} must be positive, got {value!r}")
        if max_watchers < 1:
            raise ConfigurationError(f"max_watchers must be at least 1, got {max_watchers}")
        check_interval(interval)
        self.monitor = monitor
        self.host = host
        self._port = port
        self.token = token
        self.basic_auth = basic_auth
        self.write_timeout = write_timeout
        self.keepalive = keepalive
        self.max_watchers = max_watchers
        self.aggregator = MetricsAggregator(
            monitor, max_rows=max_rows, series_points=series_points, checker=checker, breakers=breakers
        )
        self.stream = RealtimeStream(self.aggregator, interval=interval, replay=replay, queue_size=queue_size)
        self._server: Optional[WSGIServer] = None
        self._closed = False
        self._ws_class: Optional[type] = None
        self.routes: dict[str, Callable[[Environ, StartResponse, dict[str, list[str]]], Iterable[bytes]]] = {
            "/": self._index,
            "/index.html": self._index,
            "/api/stream": self._sse,
            "/api/ws": self._websocket,
            "/api/view": self._view,
            "/api/interval": self._interval,
            "/api/snapshot": self._snapshot,
            "/metrics": self._metrics,
            "/history.csv": self._history,
            "/health": self._health,
        }

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> DashboardServer:
        """Listen and start pushing (in greenlets of this process); returns self."""
        if self._closed:
            raise UsageError("DashboardServer was stopped; create a new one")
        if self._server is None:
            server = WSGIServer(
                (self.host.strip("[]"), self._port),
                self.app,
                handler_class=_Handler,
                log=None,
                error_log=log,
            )
            server.start()
            self._server = server
            self.stream.start()
        return self

    @property
    def port(self) -> int:
        """The port it listens on (the OS's choice when started with port 0)."""
        if self._server is None:
            raise UsageError("the dashboard is not started: call start() first")
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        """The page's address (with ``?token=`` when a token is set, so the page can pass it on)."""
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        base = f"http://{host}:{self.port}/"
        return f"{base}?token={self.token}" if self.token else base

    def add_breaker(self, obj: Any) -> None:
        """Show a breaker's error rate too (a CircuitBreaker, a Resilient, or a @resilient function)."""
        self.aggregator.watch(obj)

    def stop(self) -> None:
        """Close every stream, stop listening and stop pushing (idempotent)."""
        self._closed = True
        self.stream.close()
        server, self._server = self._server, None
        if server is not None:
            server.stop(timeout=2)
        self.aggregator.close()

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = f"{self.host}:{self._server.server_port}" if self._server is not None else "not started"
        return f"<DashboardServer {where} watchers={self.stream.watchers} auth={self._auth_kind()}>"

    # ------------------------------------------------------------------ access
    def _auth_kind(self) -> str:
        return "token" if self.token else ("basic" if self.basic_auth else "none")

    def _authorized(self, environ: Environ, query: dict[str, list[str]]) -> bool:
        if self.token is None and self.basic_auth is None:
            return True
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = header.partition(" ")
        if self.token is not None:
            offered = [environ.get("HTTP_X_DASHBOARD_TOKEN", ""), *query.get("token", [])]
            if scheme.lower() == "bearer":
                offered.append(value.strip())
            want = self.token.encode()
            if any(hmac.compare_digest(o.encode(), want) for o in offered if o):
                return True
        if self.basic_auth is not None and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            ok_user = hmac.compare_digest(user.encode(), self.basic_auth[0].encode())
            ok_password = hmac.compare_digest(password.encode(), self.basic_auth[1].encode())
            return ok_user and ok_password
        return False

    # ------------------------------------------------------------------ WSGI
    def app(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """The WSGI application (routes in the module docstring)."""
        path = environ.get("PATH_INFO", "/")
        query = parse_qs(environ.get("QUERY_STRING", ""))
        route = self.routes.get(path)
        if route is None:
            return _json(start_response, "404 Not Found", {"error": f"no such page: {path}"})
        if not self._authorized(environ, query):
            challenge = 'Basic realm="nexus_green dashboard"' if self.basic_auth else 'Bearer realm="nexus_green"'
            return _json(
                start_response,
                "401 Unauthorized",
                {"error": "this dashboard needs its token (?token=, Authorization: Bearer) or basic auth"},
                (("WWW-Authenticate", challenge),),
            )
        method = environ.get("REQUEST_METHOD", "GET")
        allowed = ("POST",) if path == "/api/interval" else ("GET", "HEAD")
        if method not in allowed:
            return _json(
                start_response,
                "405 Method Not Allowed",
                {"error": f"{path} takes {' or '.join(allowed)}, not {method}"},
                (("Allow", ", ".join(allowed)),),
            )
        return route(environ, start_response, query)

    def _index(self, environ: Environ, start_response: StartResponse, query: dict[str, list[str]]) -> Iterable[bytes]:
        body = _page()
        host = environ.get("HTTP_HOST", f"{self.host}:{self.port}")
        # Everything the page needs is in it: nothing may load from elsewhere.
        csp = (
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; "
            f"connect-src 'self' ws://{host} wss://{host}; base-uri 'none'; form-action 'none'"
        )
        headers = [
            ("Content-Type", "text/html; charset=utf-8"),
            ("Content-Length", str(len(body))),
            ("Cache-Control", "no-cache"),
            ("Content-Security-Policy", csp),
            ("X-Content-Type-Options", "nosniff"),
        ]
        start_response("200 OK", headers)
        return [body]

    def _health(self, environ: Environ, start_response: StartResponse, query: dict[str, list[str]]) -> Iterable[bytes]:
        report = self.aggregator.health()
        status = "503 Service Unavailable" if report.status == UNHEALTHY else "200 OK"
        return _json(start_response, status, report.to_dict())

    def _metrics(self, environ: Environ, start_response: StartResponse, query: dict[str, list[str]]) -> Iterable[bytes]:
        body = to_prometheus(self.monitor.snapshot()).encode()
        start_response(
            "200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8"), ("Content-Length", str(len(body)))]
        )
        return [body]

    def _snapshot(
        self, environ: Environ, start_response: StartResponse, query: dict[str, list[str]]
    ) -> Iterable[bytes]:
        connections = query.get("connections", ["0"])[-1] not in ("0", "", "false")
        body = to_json(self.monitor.snapshot(connections=connections)).encode()
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
        return [body]

    def _history(self, environ: Environ, start_response: StartResponse, query: dict[str, list[str]]) -> Iterable[bytes]:
        points = self.monitor.history_points()
        start_response(
            "200 OK",
            [
                ("Content-Type", "text/csv; charset=utf-8"),
                ("Content-Disposition", 'attachment; filename="nexus_green-history.csv"'),
            ],
        )
        return _csv_chunks(points)

    def _view(self, environ: Environ, start_response: StartResponse, query: dict[str, list[str]]) -> Iterable[bytes]:
        after = _int(query.get("after", [""])[-1])
        missed = self.stream.since(after) if after is not None else None
        events = missed if missed is not None else [self.stream.snapshot_event()]
        body = ('{"events": [' + ", ".join(e.message() for e in events) + "]}").encode()
        start_response(
            "200 OK",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Cache-Control", "no-cache")],
        )
        return [body]

    def _interval(
        self, environ: Environ, start_response: StartResponse, query: dict[str, list[str]]
    ) -> Iterable[bytes]:
        try:
            self.stream.interval = query.get("seconds", [""])[-1]  # type: ignore[assignment]
        except ConfigurationError as exc:
            return _json(start_response, "400 Bad Request", {"error": str(exc)})
        return _json(start_response, "200 OK", {"interval": self.stream.interval})

    # ------------------------------------------------------------------ streams
    def _refuse_stream(self, start_response: StartResponse) -> Optional[Iterable[bytes]]:
        if self.stream.watchers >= self.max_watchers:
            return _json(
                start_response,
                "503 Service Unavailable",
                {"error": f"{self.max_watchers} watchers already: try polling /api/view"},
                (("Retry-After", "5"),),
            )
        return None

    def _write(self, sock: Any, data: bytes) -> None:
        with gevent.Timeout(self.write_timeout, _WriteTimeout):
            sock.sendall(data)

    def _sse(self, environ: Environ, start_response: StartResponse, query: dict[str, list[str]]) -> Iterable[bytes]:
        refused = self._refuse_stream(start_response)
        if refused is not None:
            return refused
        last = _int(environ.get("HTTP_LAST_EVENT_ID") or query.get("lastEventId", [""])[-1])
        sock = environ[_SOCKET]
        environ[_TAKEN] = True
        sub = self.stream.subscribe(last_event_id=last)
        sub.abort = lambda: _shutdown(sock)
        try:
            self._write(sock, _SSE_HEAD)
            self._pump(sub, lambda data: self._write(sock, data.sse()), lambda: self._write(sock, b": keep-alive\n\n"))
        finally:
            sub.close()
            _shutdown(sock)
        return []

    def _pump(self, sub: Subscriber, send: Callable[[Any], None], idle: Callable[[], None]) -> None:
        try:
            while True:
                event = sub.next(self.keepalive)
                if event is None:
                    idle()
                else:
                    send(event)
        except (StreamClosed, OSError, _WriteTimeout) as exc:
            log.debug("dashboard stream ended: %r", exc)

    def _websocket(
        self, environ: Environ, start_response: StartResponse, query: dict[str, list[str]]
    ) -> Iterable[bytes]:
        if "websocket" not in environ.get("HTTP_UPGRADE", "").lower() or not environ.get("HTTP_SEC_WEBSOCKET_KEY"):
            return _json(
                start_response,
                "400 Bad Request",
                {"error": "/api/ws takes a WebSocket upgrade (Upgrade: websocket, Sec-WebSocket-Key)"},
            )
        refused = self._refuse_stream(start_response)
        if refused is not None:
            return refused
        if self._ws_class is None:
            self._ws_class = _ws_server_class()
        sock = environ[_SOCKET]
        environ[_TAKEN] = True
        sub = self.stream.subscribe(last_event_id=_int(query.get("lastEventId", [""])[-1]))
        sub.abort = lambda: _shutdown(sock)
        wrapped = _WebSocketSocket(sock, self.write_timeout, lambda: sub.close("the client closed"))
        ws_environ = {k: v for k, v in environ.items() if k.startswith("HTTP_")}
        ws_environ["werkzeug.socket"] = wrapped
        ws: Any = None
        try:
            ws = self._ws_class(ws_environ, thread_class=_GreenThread, event_class=GEvent)
            self._pump(sub, lambda e: ws.send(e.message()), lambda: None)
        except Exception as exc:  # a handshake the client botched: nothing to answer on a taken connection
            log.debug("dashboard websocket ended: %r", exc)
        finally:
            sub.close()
            if ws is not None and ws.connected:
                try:
                    ws.close()
                except Exception:  # the peer is gone already
                    pass
            _shutdown(sock)
            reader = getattr(getattr(ws, "thread", None), "greenlet", None)
            if reader is not None:
                reader.join(timeout=self.write_timeout)
        return []


def _int(text: Optional[str]) -> Optional[int]:
    try:
        return int(text) if text else None
    except ValueError:
        return None


def _json(
    start_response: StartResponse, status: str, body: Any, headers: tuple[tuple[str, str], ...] = ()
) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Cache-Control", "no-cache")]
        + list(headers),
    )
    return [data]


def _csv_chunks(points: list[dict[str, Any]]) -> Iterator[bytes]:
    # The whole history is tens of thousands of rows: rendered a few points at a time, yielding in between.
    if not points:
        yield to_csv([]).encode()
        return
    for i in range(0, len(points), _CSV_YIELD_EVERY):
        text = to_csv(points[i : i + _CSV_YIELD_EVERY])
        if i:
            text = text.split("\n", 1)[1]
        yield text.encode()
        gevent.sleep(1e-6)


def serve(monitor: Optional[PerformanceMonitor] = None, *, port: int = 0, **options: Any) -> DashboardServer:
    """Start a :class:`DashboardServer` in this process's greenlets and return it (call ``stop()`` to end it).

    ``monitor`` defaults to the one :func:`nexus_green.monitoring.enable`
    started. ``options`` are DashboardServer's (``host``, ``token``,
    ``interval``...).

    Example::

        >>> from nexus_green.monitoring import enable, disable
        >>> dash = serve(enable().monitor, port=0)
        >>> dash.url.startswith("http://127.0.0.1:")
        True
        >>> dash.stop(); disable()
    """
    if monitor is None:
        from ..monitoring.enabling import enabled

        running = enabled()
        if running is None:
            raise UsageError("serve() needs a monitor: pass one, or call nexus_green.monitoring.enable() first")
        monitor = running.monitor
    return DashboardServer(monitor, port=port, **options).start()
