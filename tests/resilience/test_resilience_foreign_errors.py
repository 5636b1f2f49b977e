"""Issue 13, item 4: @retry understands errors from other libraries by their chain, and keeps DESIGN principle 12.

A real ``requests`` call against a refused loopback port is "not sent" (urllib3's NewConnectionError in its
chain) and is retried even when the call is not idempotent; a server that resets the connection mid-response
leaves the request "maybe sent": retried only when idempotent. A real nexus_green Client's refused request,
wrapped by the application in its own error, is still recognised as not sent.
"""

from __future__ import annotations

import http.client
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent
import pytest
import requests

from nexus_green import Client
from nexus_green.clock import FakeClock
from nexus_green.errors import ConnectionLost, ConnectionRefused, RemoteError, RequestTimeout
from nexus_green.events import EventBus
from nexus_green.resilience import retry
from nexus_green.resilience.retrying import (
    MAYBE_SENT,
    NOT_SENT,
    RetryConfig,
    error_chain,
    is_retryable,
    transport_kind,
    was_not_sent,
)
from nexus_green.testing import FID_ECHO, RefusingPort, RestartableServer, run_module_patched


def _retrying(**options: Any) -> Any:
    return retry(clock=FakeClock(), bus=EventBus(), **options)


def _raised(fn: Any) -> BaseException:
    try:
        fn()
    except Exception as exc:
        return exc
    raise AssertionError("did not raise")


@contextmanager
def _serving(handle: Callable[[Any], None], port: int = 0) -> Iterator[int]:
    """A loopback TCP server in a thread (a greenlet once patched): it serves while an unpatched ``requests``
    call blocks the hub. Yields its port."""

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            handle(self.request)

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True

    server = Server(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _read_request(sock: Any) -> bool:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            return False
        data += chunk
    return True


@contextmanager
def _http_peer(mode: str) -> Iterator[tuple[str, list[int]]]:
    """A loopback HTTP peer that reads each request, then resets the connection ('reset') or sends half
    a response and resets ('mid-response'). Yields its URL and a list counting the requests it read."""
    seen: list[int] = []

    def handle(sock: Any) -> None:
        if not _read_request(sock):
            return
        seen.append(1)
        if mode == "mid-response":
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: text/plain\r\n\r\npartial")
            time.sleep(0.01)
        # SO_LINGER 0: close() sends RST, as a crashed peer would
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    with _serving(handle) as port:
        yield f"http://127.0.0.1:{port}/", seen


# --- requests, for real --------------------------------------------------------------------------------------
def test_refused_requests_call_is_not_sent_and_is_retried_even_when_not_idempotent() -> None:
    attempts: list[int] = []
    with RefusingPort() as peer:
        url = f"http://127.0.0.1:{peer.port}/"

        @_retrying()  # not declared idempotent: resent only because nothing was sent
        def post() -> Any:
            attempts.append(1)
            return requests.post(url, data=b"charge", timeout=2)

        err = _raised(post)
    assert isinstance(err, requests.ConnectionError)
    assert len(attempts) == 3
    assert was_not_sent(err) and is_retryable(err)
    assert any(type(link).__name__ == "NewConnectionError" for link in error_chain(err))


def test_refused_requests_call_is_retried_when_idempotent_and_succeeds_once_the_port_answers() -> None:
    with RefusingPort() as peer:  # a port nobody else takes while we hold it
        port = peer.port
    url = f"http://127.0.0.1:{port}/"
    attempts: list[int] = []
    backend: list[Any] = []

    def ok_app(sock: Any) -> None:
        if _read_request(sock):
            sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")

    @_retrying(idempotent=True)
    def get() -> str:
        attempts.append(1)
        if len(attempts) == 3:  # the backend is back for the third attempt
            backend.append(_serving(ok_app, port))
            backend[0].__enter__()
        return requests.get(url, timeout=2).text

    try:
        assert get() == "ok"
    finally:
        if backend:
            backend[0].__exit__(None, None, None)
    assert len(attempts) == 3


@pytest.mark.parametrize("mode", ["reset", "mid-response"])
def test_reset_after_the_request_is_maybe_sent(mode: str) -> None:
    with _http_peer(mode) as (url, seen):

        @_retrying(idempotent=True)
        def get() -> Any:
            r = requests.get(url, timeout=2)
            return r.content

        @_retrying()
        def post() -> Any:
            return requests.post(url, data=b"charge", timeout=2).content

        err = _raised(get)
        assert isinstance(err, requests.RequestException), repr(err)
        assert not was_not_sent(err) and is_retryable(err), [repr(x) for x in error_chain(err)]
        assert len(seen) == 3  # idempotent: retried
        seen.clear()
        err = _raised(post)
        assert not was_not_sent(err)
        assert len(seen) == 1  # maybe applied: never sent again


def test_http_client_refused_and_reset() -> None:
    with RefusingPort() as peer:
        conn = http.client.HTTPConnection("127.0.0.1", peer.port, timeout=2)
        err = _raised(lambda: conn.request("GET", "/"))
    assert isinstance(err, ConnectionRefusedError) and was_not_sent(err)
    with _http_peer("reset") as (url, _):
        port = int(url.rsplit(":", 1)[1].strip("/"))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)

        def roundtrip() -> None:
            conn.request("GET", "/")
            conn.getresponse().read()

        err = _raised(roundtrip)
        conn.close()
    assert transport_kind(err) == MAYBE_SENT and not was_not_sent(err) and is_retryable(err)


# --- chains, as other libraries build them --------------------------------------------------------------------
class RedisConnectionError(Exception):
    """redis-py raises its ConnectionError inside ``except OSError``: the OSError is its __context__."""


def _redis_style(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except OSError as e:
            raise RedisConnectionError(f"Error connecting: {e}")  # noqa: B904 - as redis-py does
    except RedisConnectionError as outer:
        return outer


def test_redis_style_chains() -> None:
    refused = _redis_style(ConnectionRefusedError(111, "Connection refused"))
    reset = _redis_style(ConnectionResetError(104, "reset"))
    assert was_not_sent(refused) and is_retryable(refused)
    assert not was_not_sent(reset) and is_retryable(reset)


def test_the_nearest_transport_error_decides() -> None:
    # A reset raised while handling an earlier refusal (a second host tried): the reset may have been sent.
    try:
        try:
            raise ConnectionRefusedError()
        except OSError:
            raise ConnectionResetError() from None
    except ConnectionResetError as e:
        assert not was_not_sent(e)
    try:
        try:
            raise ConnectionRefusedError()
        except OSError:
            raise ConnectionResetError()  # noqa: B904 - the context is kept, but the reset is nearer
    except ConnectionResetError as e:
        assert not was_not_sent(e)
    assert transport_kind(socket.gaierror(-2, "Name or service not known")) == NOT_SENT
    assert transport_kind(RequestTimeout(phase="checkout")) == NOT_SENT
    assert transport_kind(TimeoutError()) == MAYBE_SENT  # ETIMEDOUT also ends established links
    assert not was_not_sent(ValueError("nothing known")) and not is_retryable(ValueError())


def test_nexus_errors_in_a_foreign_chain_decide_by_their_flags() -> None:
    class AppError(Exception):
        pass

    def wrapped(inner: BaseException) -> BaseException:
        try:
            raise AppError("backend call failed") from inner
        except AppError as e:
            return e

    assert is_retryable(wrapped(RemoteError(code=503))) and not is_retryable(wrapped(RemoteError(code=404)))
    assert not is_retryable(wrapped(ConnectionLost()), never_retry=(AppError,))
    cycle = AppError("cycle")
    cycle.__cause__ = ValueError()
    cycle.__cause__.__cause__ = cycle
    assert not is_retryable(cycle)  # a cyclic chain ends


def test_retry_on_takes_classes_or_a_predicate() -> None:
    attempts: list[int] = []

    @_retrying(idempotent=True, retry_on=lambda e: "429" in str(e))
    def throttled() -> None:
        attempts.append(1)
        raise RuntimeError("HTTP 429 too many requests")

    with pytest.raises(RuntimeError):
        throttled()
    assert len(attempts) == 3
    assert is_retryable(KeyError(), retry_on=(ValueError, KeyError))
    with pytest.raises(ValueError, match="retry_on takes"):
        RetryConfig(retry_on=("ValueError",))  # type: ignore[arg-type]


# --- a real Client ---------------------------------------------------------------------------------------------
def test_client_refusal_wrapped_by_the_app_is_still_not_sent() -> None:
    class BackendDown(Exception):
        pass

    clock = FakeClock()
    attempts: list[str] = []
    with RestartableServer() as server, Client(server.url, clock=clock, heartbeat_interval=None) as client:
        client.request(b"up", FID_ECHO, timeout=1)
        server.wait_for(lambda s: s.connections >= 1)
        server.kill()
        end = time.monotonic() + 5
        while client.pool.stats()["connected"] and time.monotonic() < end:
            gevent.sleep(0)

        @retry(max_attempts=4, clock=clock, bus=EventBus())  # not idempotent
        def charge() -> bytes:
            try:
                attempts.append("try")
                if len(attempts) == 3:
                    server.restart()
                return client.request(b"charge", FID_ECHO, timeout=1).body
            except ConnectionRefused as exc:
                raise BackendDown("payments backend down") from exc

        assert charge() == b"charge"
    assert len(attempts) >= 3


def test_module_passes_under_patch_all() -> None:
    run = run_module_patched(__file__)
    assert run.returncode == 0, run.report()
