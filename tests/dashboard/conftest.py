"""Helpers for the dashboard tests: raw-socket HTTP, SSE and WebSocket clients (peers the dashboard did not write)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Optional

import gevent
import pytest
from gevent import socket as gsocket

from nexus_green.events import EventBus
from nexus_green.monitoring import PerformanceMonitor


def request(
    port: int, path: str, *, method: str = "GET", headers: Optional[dict[str, str]] = None, timeout: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.0 request over a raw socket: (status, lower-cased headers, body)."""
    lines = [f"{method} {path} HTTP/1.0", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    with gsocket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *rest = head.decode("latin-1").split("\r\n")
    hdrs = {}
    for line in rest:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return int(status_line.split()[1]), hdrs, body


class SSEClient:
    """A Server-Sent Events reader on a raw socket; ``events()`` parses what arrived."""

    def __init__(self, port: int, path: str = "/api/stream", headers: Optional[dict[str, str]] = None) -> None:
        self.sock = gsocket.create_connection(("127.0.0.1", port), timeout=10)
        lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Accept: text/event-stream"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buf = b""
        self.head = b""
        self.parsed: list[dict[str, Any]] = []

    def read_until(self, n_events: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Read until ``n_events`` events were parsed (bounded by ``timeout``)."""
        with gevent.Timeout(timeout, AssertionError(f"fewer than {n_events} events in {timeout}s: {self.parsed!r}")):
            while len(self.parsed) < n_events:
                data = self.sock.recv(65536)
                if not data:
                    raise AssertionError(f"the server closed after {len(self.parsed)} events")
                self.buf += data
                self._parse()
        return self.parsed

    def _parse(self) -> None:
        if not self.head:
            if b"\r\n\r\n" not in self.buf:
                return
            self.head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        while b"\n\n" in self.buf:
            block, _, self.buf = self.buf.partition(b"\n\n")
            event: dict[str, Any] = {}
            for line in block.decode().split("\n"):
                key, _, value = line.partition(": ")
                if key in ("id", "event", "data", "retry"):
                    event[key] = value
            if "data" in event:
                event["data"] = json.loads(event["data"])
                event["id"] = int(event["id"])
                self.parsed.append(event)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def monitor() -> Iterator[PerformanceMonitor]:
    mon = PerformanceMonitor(EventBus())
    yield mon
    mon.close()


@pytest.fixture
def http() -> Any:
    """The raw-socket HTTP request function."""
    return request


@pytest.fixture
def sse() -> Iterator[Any]:
    """Open SSE clients with ``sse(port, ...)``; every one is closed after the test."""
    opened: list[SSEClient] = []

    def open_client(port: int, path: str = "/api/stream", headers: Optional[dict[str, str]] = None) -> SSEClient:
        client = SSEClient(port, path, headers)
        opened.append(client)
        return client

    yield open_client
    for client in opened:
        client.close()
