"""The chaos proxy's local HTTP control API: list, add and remove faults, read counters, run scenarios.

A ``gevent.pywsgi`` server on loopback (port 0 by default: the OS chooses).
Bodies are JSON.

=========================  =================================================================
``GET /faults``            the active faults: ``[{"id", "describe", "applied", "fault"}]``
``POST /faults``           add a fault (a JSON object of :class:`~nexus_green.chaos.faults.Fault`
                           fields, ``kind`` required) -> ``201 {"id": N}``
``DELETE /faults/<id>``    remove one -> ``200`` (``404`` if no such fault)
``DELETE /faults``         remove all -> ``{"removed": N}``
``GET /stats``             the proxy's counters
``GET /scenarios``         the scenario library
``POST /scenarios/<name>`` start a scenario -> ``202 {"duration": s}`` (``?scale=0.5`` scales it)
=========================  =================================================================

A bad request gets ``400 {"error": "..."}`` naming what was wrong.

Example::

    >>> from nexus_green.testing import EmbeddedServer
    >>> from nexus_green.chaos import ChaosProxy
    >>> with EmbeddedServer() as server, ChaosProxy(server) as proxy, ControlServer(proxy) as api:
    ...     status, body = api.call("POST", "/faults", {"kind": "latency", "delay": 0.01})
    ...     status, body, [f["describe"] for f in api.call("GET", "/faults")[1]]
    (201, {'id': 1}, ['latency both p=1 seed=0 delay=0.01 jitter=0'])
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any, Optional
from urllib.parse import parse_qs

from gevent import socket as gsocket
from gevent.pywsgi import WSGIServer

from .faults import fault_from_dict
from .proxy import ChaosProxy
from .scenarios import SCENARIOS, ScenarioRun, describe_all

__all__ = ["ControlServer"]

_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_MAX_BODY = 64 * 1024


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ControlServer:
    """Serves the control API of ``proxy`` on ``host:port`` (see the module docstring); a context manager.

    Scenarios started through the API are stopped when the server stops.
    ``call(method, path, body)`` is a small blocking client for tests and scripts.
    """

    def __init__(self, proxy: ChaosProxy, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.proxy = proxy
        self.host = host
        self.port = port
        self.runs: list[ScenarioRun] = []
        self._server: Optional[WSGIServer] = None

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> ControlServer:
        """Listen (idempotent); returns self."""
        if self._server is None:
            self._server = WSGIServer((self.host, self.port), self._app, log=None, error_log=None)
            self._server.start()
            self.port = self._server.server_port
        return self

    def stop(self) -> None:
        """Stop listening and stop the scenarios it started (idempotent)."""
        server, self._server = self._server, None
        for run in self.runs:
            run.stop()
        self.runs.clear()
        if server is not None:
            server.stop(timeout=1)

    def __enter__(self) -> ControlServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ the app
    def _app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        try:
            status, payload = self._route(environ)
        except _HTTPError as exc:
            status, payload = exc.status, {"error": str(exc)}
        except ValueError as exc:  # a fault the Fault class refused
            status, payload = 400, {"error": str(exc)}
        body = json.dumps(payload).encode()
        start_response(
            f"{status} {_REASONS[status]}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    def _route(self, environ: dict[str, Any]) -> tuple[int, Any]:
        method = environ["REQUEST_METHOD"]
        parts = [p for p in environ.get("PATH_INFO", "").split("/") if p]
        injector = self.proxy.injector
        if parts == ["faults"]:
            if method == "GET":
                return 200, injector.figures()
            if method == "POST":
                return 201, {"id": injector.add(fault_from_dict(self._json(environ)))}
            if method == "DELETE":
                return 200, {"removed": injector.clear()}
        elif len(parts) == 2 and parts[0] == "faults":
            if method == "DELETE":
                try:
                    fault_id = int(parts[1])
                except ValueError:
                    raise _HTTPError(400, f"a fault id is an integer, not {parts[1]!r}") from None
                if not injector.remove(fault_id):
                    raise _HTTPError(404, f"no active fault with id {fault_id}")
                return 200, {"removed": fault_id}
        elif parts == ["stats"] and method == "GET":
            return 200, self.proxy.counters()
        elif parts == ["scenarios"] and method == "GET":
            return 200, describe_all()
        elif len(parts) == 2 and parts[0] == "scenarios" and method == "POST":
            chosen = SCENARIOS.get(parts[1])
            if chosen is None:
                raise _HTTPError(404, f"no scenario named {parts[1]!r}; see GET /scenarios")
            query = parse_qs(environ.get("QUERY_STRING", ""))
            try:
                scale = float(query.get("scale", ["1"])[0])
            except ValueError:
                raise _HTTPError(400, "scale must be a number") from None
            chosen = chosen.scaled(scale)
            self.runs.append(chosen.start(injector))
            return 202, {"scenario": chosen.name, "duration": chosen.duration}
        else:
            raise _HTTPError(404, f"no such resource: {environ.get('PATH_INFO')}")
        raise _HTTPError(405, f"{method} is not allowed on {environ.get('PATH_INFO')}")

    @staticmethod
    def _json(environ: dict[str, Any]) -> Any:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise _HTTPError(400, "bad Content-Length") from None
        if length > _MAX_BODY:
            raise _HTTPError(400, f"body larger than {_MAX_BODY} bytes")
        raw = environ["wsgi.input"].read(length)
        try:
            return json.loads(raw or b"null")
        except ValueError:
            raise _HTTPError(400, f"body is not JSON: {raw[:80]!r}") from None

    # ------------------------------------------------------------------ a tiny client
    def call(self, method: str, path: str, body: Any = None, *, timeout: float = 5.0) -> tuple[int, Any]:
        """Send one request to this API (HTTP/1.0 over a gevent socket); returns ``(status, JSON body)``."""
        data = b"" if body is None else json.dumps(body).encode()
        head = f"{method} {path} HTTP/1.0\r\nHost: {self.host}\r\nContent-Length: {len(data)}\r\n\r\n"
        with gsocket.create_connection((self.host, self.port), timeout=timeout) as sock:
            sock.sendall(head.encode() + data)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        response = b"".join(chunks)
        header, _, payload = response.partition(b"\r\n\r\n")
        status = int(header.split(b" ", 2)[1])
        return status, json.loads(payload)
