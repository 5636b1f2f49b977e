"""Client: the front door (requests, codes, deadlines, pushes, middlewares, close)."""

from __future__ import annotations

import os
import socket as stdsocket
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import gevent
import pytest

from nexus_green import Client, Request, Response, deadline
from nexus_green.errors import (
    ClientClosed,
    ConfigurationError,
    ConnectionRefused,
    DeadlineExceeded,
    InvalidURL,
    RemoteError,
    RequestTimeout,
)
from nexus_green.protocol.compression import get_codec
from nexus_green.testing import FID_DELAY, FID_ERROR, FID_PUSH, FID_SILENT, EmbeddedServer

pytestmark = pytest.mark.usefixtures("leakcheck")


@pytest.fixture
def server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as s:
        yield s


def client_for(server: EmbeddedServer, **kw: Any) -> Client:
    kw.setdefault("heartbeat_interval", None)
    return Client(server.url, **kw)


def test_request_response(server: EmbeddedServer) -> None:
    with client_for(server) as c:
        r = c.request(b"hello", fid=1, timeout=5)
        assert (r.body, r.code, r.fid, r.ok) == (b"hello", 200, 1, True)
        assert r.qid > 0 and r.latency > 0 and r.conn_id.startswith("conn-")


def test_many_greenlets_one_connection(server: EmbeddedServer) -> None:
    with client_for(server) as c:
        gs = [gevent.spawn(c.request, b"%d" % i, 1) for i in range(200)]
        gevent.joinall(gs, timeout=10, raise_error=True)
        assert sorted(int(g.value.body) for g in gs) == list(range(200))
        assert c.stats()["size"] == 1


def test_non_200_raises_remote_error_unless_disabled(server: EmbeddedServer) -> None:
    with client_for(server) as c:
        with pytest.raises(RemoteError, match="answered code 503") as info:
            c.request(b"503", fid=FID_ERROR)
        assert info.value.code == 503 and isinstance(info.value.response, Response)
    with client_for(server, raise_for_code=False) as c:
        assert c.request(b"404", fid=FID_ERROR).code == 404


def test_timeout_then_connection_still_serves(server: EmbeddedServer) -> None:
    with client_for(server, timeout=0.05) as c:
        with pytest.raises(RequestTimeout):
            c.request(b"", fid=FID_SILENT)
        assert c.request(b"ok", fid=1, timeout=5).body == b"ok"


def test_overall_deadline_caps_the_request_timeout(server: EmbeddedServer) -> None:
    with client_for(server, timeout=30) as c:
        with deadline(0.05):
            with pytest.raises(DeadlineExceeded) as caught:
                c.request(b"", fid=FID_SILENT)
        assert caught.value.phase == "response"
        with deadline(0.01):
            gevent.sleep(0.02)
            with pytest.raises(DeadlineExceeded, match="no time left to send it"):
                c.request(b"", fid=1)


def test_pushes_iterator_and_callbacks(server: EmbeddedServer) -> None:
    seen: list[bytes] = []
    with client_for(server) as c:
        off = c.on_push(lambda r: seen.append(r.body))
        assert c.request(b"3", fid=FID_PUSH).body == b"pushed"
        got = [p.body for p in c.pushes(timeout=1)]
        assert got == [b"push 0", b"push 1", b"push 2"]
        assert seen == got
        off()
        off()  # idempotent
        c.request(b"1", fid=FID_PUSH)
        assert [p.body for p in c.pushes(timeout=0.5)] == [b"push 0"]
        assert len(seen) == 3


def test_push_callback_errors_do_not_break_the_client(server: EmbeddedServer) -> None:
    with client_for(server) as c:
        c.on_push(lambda r: 1 / 0)
        c.request(b"1", fid=FID_PUSH)
        assert c.request(b"x", fid=1).body == b"x"


def test_push_queue_drops_the_oldest_when_full(server: EmbeddedServer) -> None:
    with client_for(server, push_queue_size=2) as c:
        c.request(b"5", fid=FID_PUSH)
        gevent.sleep(0.05)
        assert [p.body for p in c.pushes(timeout=0.2)] == [b"push 3", b"push 4"]
        assert c.stats()["pushes_dropped"] == 3


def test_welcome_push_and_pushes_end_on_close() -> None:
    with EmbeddedServer(welcome=b"welcome") as server:
        c = client_for(server).connect()
        assert next(c.pushes(timeout=2)).body == b"welcome"
        g = gevent.spawn(lambda: list(c.pushes()))
        gevent.sleep(0.02)
        c.close()
        assert g.get(timeout=2) == []


def test_send_fire_and_forget(server: EmbeddedServer) -> None:
    with client_for(server) as c:
        assert c.send(b"one-way", fid=1) > 0
        assert c.request(b"x", fid=1).body == b"x"


def _compressing(codec_name: str) -> Callable[[Request, Callable[[Request], Response]], Response]:
    codec = get_codec(codec_name)

    class Compress:
        name = "test-compress"

        def __call__(self, request: Request, call_next: Callable[[Request], Response]) -> Response:
            ctx = dict(request.context, tp=codec.tp_bits)
            return call_next(request.replace(body=codec.compress(request.body), context=ctx))

    return Compress()


@pytest.mark.parametrize("codec", ["gzip", "lz4", "zstd", "brotli"])
def test_compressed_bodies_are_decoded(server: EmbeddedServer, codec: str) -> None:
    with client_for(server, middlewares=[_compressing(codec)]) as c:
        body = b'{"k": "value"}' * 200
        r = c.request(body, fid=1)
        assert r.body == body and r.tp == 0


def test_large_compressed_body_is_decoded_off_the_hub(server: EmbeddedServer) -> None:
    body = os.urandom(300_000)  # incompressible: the compressed body stays above 64 KiB
    with client_for(server, middlewares=[_compressing("gzip")]) as c:
        assert len(zlib.compress(body)) > 64 * 1024
        assert c.request(body, fid=1).body == body


def test_pipeline_object_is_accepted(server: EmbeddedServer) -> None:
    calls: list[int] = []

    class Pipe:
        def wrap(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
            def call(req: Request) -> Response:
                calls.append(req.fid)
                return handler(req)

            return call

    with client_for(server, middlewares=Pipe()) as c:
        assert c.request(b"p", fid=1, idempotent=True).body == b"p"
    assert calls == [1]


def test_bad_options_and_urls() -> None:
    with pytest.raises(ConfigurationError, match="unknown Client option"):
        Client("tcp://127.0.0.1:9", bogus=1)
    with pytest.raises(InvalidURL):
        Client("127.0.0.1:9")


def test_connection_refused_surfaces_on_connect() -> None:
    s = stdsocket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with Client(f"tcp://127.0.0.1:{port}") as c:
        with pytest.raises(ConnectionRefused):
            c.connect()
        with pytest.raises(ConnectionRefused):
            c.request(b"x")


def test_calls_after_close(server: EmbeddedServer) -> None:
    c = client_for(server)
    pending = gevent.spawn(c.request, b"", FID_SILENT)
    gevent.sleep(0.02)
    c.close()
    c.close()
    pending.join(timeout=5)
    assert pending.exception is not None
    assert c.closed and "closed" in repr(c)
    with pytest.raises(ClientClosed):
        c.request(b"x")
    with pytest.raises(ClientClosed):
        c.send(b"x")


def test_close_with_a_full_push_queue(server: EmbeddedServer) -> None:
    c = client_for(server, push_queue_size=1)
    c.request(b"2", fid=FID_PUSH)
    gevent.sleep(0.05)
    c.close()
    assert list(c.pushes(timeout=0.1)) == []


def test_delay_and_concurrency_with_pool_growth(server: EmbeddedServer) -> None:
    with client_for(server, max_in_flight=2, max_size=3) as c:
        gs = [gevent.spawn(c.request, b"0.05", FID_DELAY) for _ in range(6)]
        gevent.joinall(gs, timeout=5, raise_error=True)
        assert c.stats()["size"] == 3


def test_compressed_and_corrupt_pushes() -> None:
    from nexus_green.protocol.frames import Frame, encode_frame

    server = EmbeddedServer()

    def push_two(frame: Any) -> bytes:
        codec = get_codec("zstd")
        conn = server._conns[0]
        conn.queue(encode_frame(Frame(qid=0, fid=9, tp=codec.tp_bits, body=codec.compress(b"zipped push"))))
        conn.queue(encode_frame(Frame(qid=0, fid=9, tp=codec.tp_bits, body=b"not zstd at all")))
        return b"sent"

    server.register(70, push_two)
    with server, client_for(server) as c:
        assert c.request(b"", fid=70).body == b"sent"
        assert [p.body for p in c.pushes(timeout=0.3)] == [b"zipped push"]
        assert c.stats()["push_errors"] == 1
        assert c.request(b"still", fid=1).body == b"still"
