"""EmbeddedServer: every built-in Fid, handlers, codecs, heartbeats, pushes, TLS, lifecycle, bad clients."""

from __future__ import annotations

import json
import logging
import socket as stdsocket
import struct
from collections.abc import Iterator
from typing import Any

import gevent
import gevent.event
import gevent.ssl
import pytest
import trustme
from gevent import socket as gsocket

from nexus_green import Client
from nexus_green.errors import RemoteError, RemoteProtocolError, RequestTimeout
from nexus_green.protocol.compression import CODECS
from nexus_green.protocol.frames import (
    TP_HEARTBEAT,
    Frame,
    FrameDecoder,
    encode_frame,
    heartbeat_frame,
)
from nexus_green.testing import (
    FID_CLOSE,
    FID_DELAY,
    FID_ECHO,
    FID_ERROR,
    FID_GARBAGE,
    FID_INFO,
    FID_PUSH,
    FID_SILENT,
    EmbeddedServer,
    Reply,
)
from nexus_green.transport.endpoint import Endpoint

pytestmark = pytest.mark.usefixtures("leakcheck")


# --------------------------------------------------------------------- helpers
class Raw:
    """A bare gevent-socket client speaking frames, with bounded reads."""

    def __init__(self, server: EmbeddedServer, sock: Any = None) -> None:
        self.sock = sock if sock is not None else gsocket.create_connection(server.address, timeout=5)
        self.decoder = FrameDecoder()
        self.frames: list[Frame] = []

    def send(self, *frames: Frame | bytes) -> None:
        self.sock.sendall(b"".join(f if isinstance(f, bytes) else encode_frame(f) for f in frames))

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.frames.extend(self.decoder.feed(data))
        return True

    def read(self, n: int = 1) -> list[Frame]:
        """The next ``n`` frames (fails on EOF or after 5 s)."""
        with gevent.Timeout(5):
            while len(self.frames) < n:
                assert self._fill(), f"EOF after {len(self.frames)} of {n} frames"
        out, self.frames = self.frames[:n], self.frames[n:]
        return out

    def until(self, qid: int) -> list[Frame]:
        """Every frame up to and including the response with ``qid``."""
        got: list[Frame] = []
        while True:
            [f] = self.read(1)
            got.append(f)
            if f.res == 1 and f.qid == qid and not f.tp & TP_HEARTBEAT:
                return got

    def expect_eof(self) -> list[Frame]:
        """Read until the server closes; returns frames received meanwhile."""
        with gevent.Timeout(5):
            while self._fill():
                pass
        out, self.frames = self.frames, []
        return out

    def request(self, body: bytes = b"", fid: int = FID_ECHO, qid: int = 1, **kw: Any) -> Frame:
        self.send(Frame(qid=qid, fid=fid, body=body, **kw))
        return self.until(qid)[-1]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def server() -> Iterator[EmbeddedServer]:
    with EmbeddedServer() as srv:
        yield srv


@pytest.fixture
def raw(server: EmbeddedServer) -> Iterator[Raw]:
    r = Raw(server)
    yield r
    r.close()


def settle(check: Any, timeout: float = 5.0) -> bool:
    with gevent.Timeout(timeout, False):
        while not check():
            gevent.sleep(0.005)
        return True
    return False


# --------------------------------------------------------------------- built-in functions
@pytest.mark.parametrize("fid", [0, FID_ECHO])
def test_echo(raw: Raw, fid: int) -> None:
    reply = raw.request(b"hello", fid=fid, qid=7)
    assert (reply.qid, reply.fid, reply.code, reply.res, reply.tp, reply.body) == (7, fid, 200, 1, 0, b"hello")


def test_echo_many_in_one_write_all_answered(raw: Raw) -> None:
    raw.send(*(Frame(qid=q, fid=FID_ECHO, body=b"%d" % q) for q in range(1, 101)))
    frames = raw.read(100)
    assert sorted((f.qid, f.body) for f in frames) == [(q, b"%d" % q) for q in range(1, 101)]


def test_delay(raw: Raw) -> None:
    raw.send(Frame(qid=1, fid=FID_DELAY, body=b"0.05"), Frame(qid=2, fid=FID_ECHO, body=b"fast"))
    first, second = raw.read(2)
    assert (first.qid, first.body) == (2, b"fast")  # the delayed one does not block the echo
    assert (second.qid, second.code, second.body) == (1, 200, b"ok")


def test_delay_empty_body_means_no_delay(raw: Raw) -> None:
    assert raw.request(b"", fid=FID_DELAY).body == b"ok"


def test_error_code(raw: Raw) -> None:
    reply = raw.request(b"503", fid=FID_ERROR)
    assert (reply.code, reply.body) == (503, b"error 503")
    reply = raw.request(b"", fid=FID_ERROR, qid=2)
    assert (reply.code, reply.body) == (500, b"error ")


def test_push_frames_come_before_the_reply(raw: Raw) -> None:
    raw.send(Frame(qid=9, fid=FID_PUSH, body=b"3"))
    frames = raw.until(9)
    pushes, reply = frames[:-1], frames[-1]
    assert [(p.qid, p.fid, p.res, p.body) for p in pushes] == [(0, FID_PUSH, 0, b"push %d" % i) for i in range(3)]
    assert (reply.code, reply.body) == (200, b"pushed")


def test_push_default_count_is_one(raw: Raw) -> None:
    raw.send(Frame(qid=2, fid=FID_PUSH))
    frames = raw.until(2)
    assert [f.body for f in frames] == [b"push 0", b"pushed"]


def test_silent_never_replies(raw: Raw, server: EmbeddedServer) -> None:
    raw.send(Frame(qid=1, fid=FID_SILENT, body=b"x"), Frame(qid=2, fid=FID_DELAY, body=b"0.05"))
    frames = raw.until(2)
    assert [f.qid for f in frames] == [2]  # the silent handler ran first and sent nothing
    assert server.applied[FID_SILENT] == 1


def test_close_without_reply_and_ignores_the_rest_of_the_batch(raw: Raw, server: EmbeddedServer) -> None:
    raw.send(Frame(qid=1, fid=FID_CLOSE), Frame(qid=2, fid=FID_ECHO, body=b"after close"))
    assert raw.expect_eof() == []
    assert settle(lambda: server.info()["connections_active"] == 0)
    # the listener is unaffected
    other = Raw(server)
    assert other.request(b"still serving").body == b"still serving"
    other.close()


def test_garbage_breaks_the_framing(raw: Raw) -> None:
    raw.send(Frame(qid=1, fid=FID_GARBAGE))
    with gevent.Timeout(5):
        data = b""
        while len(data) < 27:
            chunk = raw.sock.recv(100)
            assert chunk
            data += chunk
    assert data == b"\x00\x00\x00\x30GARBAGE-GARBAGE-GARBAGE"
    with pytest.raises(RemoteProtocolError, match="bad tag"):
        FrameDecoder().feed(data)


def test_info(raw: Raw, server: EmbeddedServer) -> None:
    raw.request(b"a")
    raw.send(heartbeat_frame())
    raw.read(1)
    reply = raw.request(fid=FID_INFO, qid=2)
    figures = json.loads(reply.body)
    assert figures == {
        "connections_accepted": 1,
        "connections_active": 1,
        "frames_received": 3,
        "heartbeats_received": 1,
        "protocol_errors": 0,
    }
    assert server.info() == figures
    assert server.applied == {FID_ECHO: 1, FID_INFO: 1}


def test_unknown_fid_is_404(raw: Raw, server: EmbeddedServer) -> None:
    reply = raw.request(b"?", fid=999)
    assert (reply.code, reply.body) == (404, b"unknown fid 999")
    assert server.applied[999] == 1


# --------------------------------------------------------------------- registered handlers
def test_register_bytes_reply_and_request_headers(server: EmbeddedServer, raw: Raw) -> None:
    seen: list[Frame] = []

    def handler(frame: Frame) -> bytes:
        seen.append(frame)
        return b"answer:" + frame.body

    server.register(42, handler)
    reply = raw.request(b"x", fid=42, qid=5, headers={"trace-id": "t1"})
    assert (reply.code, reply.body, reply.qid, reply.fid) == (200, b"answer:x", 5, 42)
    assert dict(seen[0].headers) == {"trace-id": "t1"}


def test_register_reply_with_code_and_headers(server: EmbeddedServer, raw: Raw) -> None:
    server.register(43, lambda f: Reply(b"created", code=201, headers={"k": "v"}))
    reply = raw.request(fid=43)
    assert (reply.code, reply.body, dict(reply.headers)) == (201, b"created", {"k": "v"})


def test_reply_defaults() -> None:
    r = Reply()
    assert (r.body, r.code, r.headers) == (b"", 200, {})


def test_register_none_means_no_reply(server: EmbeddedServer, raw: Raw) -> None:
    calls: list[int] = []
    server.register(44, lambda f: calls.append(f.qid))  # returns None
    raw.send(Frame(qid=1, fid=44), Frame(qid=2, fid=FID_DELAY, body=b"0.05"))
    assert [f.qid for f in raw.until(2)] == [2]
    assert calls == [1]


def test_handler_overrides_a_builtin(server: EmbeddedServer, raw: Raw) -> None:
    server.register(FID_ECHO, lambda f: b"mine")
    assert raw.request(b"x", fid=FID_ECHO).body == b"mine"
    server.register(FID_CLOSE, lambda f: b"not closing")
    assert raw.request(fid=FID_CLOSE, qid=2).body == b"not closing"


def test_handlers_given_to_the_constructor() -> None:
    with EmbeddedServer(handlers={50: lambda f: b"fifty", 51: lambda f: Reply(code=204)}) as srv:
        r = Raw(srv)
        assert r.request(fid=50).body == b"fifty"
        assert r.request(fid=51, qid=2).code == 204
        r.close()


def test_handler_exception_is_500_and_logged(server: EmbeddedServer, raw: Raw, caplog: Any) -> None:
    def broken(frame: Frame) -> bytes:
        raise ValueError("boom")

    server.register(45, broken)
    with caplog.at_level(logging.ERROR, logger="nexus_green.testing.server"):
        reply = raw.request(fid=45)
    assert (reply.code, reply.body) == (500, b"ValueError: boom")
    assert "handler for fid=45 failed" in caplog.text
    # the connection survives
    assert raw.request(b"ok?", qid=2).body == b"ok?"


@pytest.mark.parametrize(
    "fid,body,text",
    [
        (FID_DELAY, b"soon", b"ValueError: could not convert string to float"),
        (FID_ERROR, b"abc", b"ValueError: invalid literal for int()"),
        (FID_PUSH, b"many", b"ValueError: invalid literal for int()"),
    ],
)
def test_malformed_builtin_bodies_are_500(raw: Raw, fid: int, body: bytes, text: bytes, caplog: Any) -> None:
    with caplog.at_level(logging.CRITICAL, logger="nexus_green.testing.server"):
        reply = raw.request(body, fid=fid)
    assert reply.code == 500
    assert reply.body.startswith(text)


@pytest.mark.parametrize(
    "result,text",
    [
        ("a str, not bytes", b"TypeError"),
        (Reply(b"x", code=2**32), b"LocalProtocolError: code=4294967296 does not fit"),
        (Reply(b"x", code=-1), b"LocalProtocolError: code=-1"),
    ],
)
def test_unencodable_reply_is_500_not_silence(
    server: EmbeddedServer, raw: Raw, result: Any, text: bytes, caplog: Any
) -> None:
    server.register(47, lambda f: result)
    with caplog.at_level(logging.ERROR, logger="nexus_green.testing.server"):
        reply = raw.request(fid=47)
    assert (reply.code, reply.tp) == (500, 0)
    assert reply.body.startswith(text)
    assert "reply for fid=47 cannot be encoded" in caplog.text
    assert raw.request(b"next", qid=2).body == b"next"


def test_unencodable_reply_to_a_compressed_request(server: EmbeddedServer, raw: Raw, caplog: Any) -> None:
    server.register(48, lambda f: "text")
    gz = CODECS["gzip"]
    with caplog.at_level(logging.CRITICAL, logger="nexus_green.testing.server"):
        reply = raw.request(gz.compress(b"hi"), fid=48, tp=gz.tp_bits)
    assert (reply.code, reply.tp) == (500, 0)  # the error itself goes out plain


def test_handlers_run_concurrently(server: EmbeddedServer, raw: Raw) -> None:
    # Every handler waits until all 20 have started: only concurrent handlers can ever finish.
    started: list[int] = []
    all_in = gevent.event.Event()

    def rendezvous(frame: Frame) -> bytes:
        started.append(frame.qid)
        if len(started) == 20:
            all_in.set()
        assert all_in.wait(5)
        return b"done"

    server.register(46, rendezvous)
    raw.send(*(Frame(qid=q, fid=46) for q in range(1, 21)))
    frames = raw.read(20)
    assert sorted(f.qid for f in frames) == list(range(1, 21))
    assert {f.body for f in frames} == {b"done"}


# --------------------------------------------------------------------- compression
@pytest.mark.parametrize("name", sorted(CODECS))
def test_compressed_echo_answered_with_the_same_codec(raw: Raw, name: str) -> None:
    codec = CODECS[name]
    body = b"nexus green " * 300
    reply = raw.request(codec.compress(body), fid=FID_ECHO, tp=codec.tp_bits)
    assert reply.code == 200
    assert reply.tp == codec.tp_bits
    assert codec.decompress(reply.body) == body


@pytest.mark.parametrize("name", sorted(CODECS))
def test_handler_sees_the_decompressed_body(server: EmbeddedServer, raw: Raw, name: str) -> None:
    codec = CODECS[name]
    seen: list[Frame] = []
    server.register(60, lambda f: seen.append(f) or Reply(f.body.upper(), code=202))
    reply = raw.request(codec.compress(b"quiet " * 50), fid=60, tp=codec.tp_bits)
    assert seen[0].body == b"quiet " * 50 and seen[0].tp == 0
    assert (reply.code, reply.tp) == (202, codec.tp_bits)
    assert codec.decompress(reply.body) == b"QUIET " * 50


def test_corrupt_compressed_body_is_400(raw: Raw) -> None:
    zstd = CODECS["zstd"]
    reply = raw.request(b"definitely not zstd", fid=FID_ECHO, tp=zstd.tp_bits)
    assert reply.code == 400
    assert b"corrupt zstd body" in zstd.decompress(reply.body)


def test_compression_bomb_is_refused(raw: Raw) -> None:
    server_limit = EmbeddedServer(max_frame_size=4096)
    with server_limit:
        r = Raw(server_limit)
        gzip = CODECS["gzip"]
        reply = r.request(gzip.compress(b"\0" * 100_000), fid=FID_ECHO, tp=gzip.tp_bits)
        assert reply.code == 400
        assert b"beyond max_size 4096" in gzip.decompress(reply.body)
        r.close()


def test_compressed_builtins(raw: Raw) -> None:
    lz4 = CODECS["lz4"]
    reply = raw.request(lz4.compress(b"418"), fid=FID_ERROR, tp=lz4.tp_bits)
    assert (reply.code, lz4.decompress(reply.body)) == (418, b"error 418")


# --------------------------------------------------------------------- heartbeats, pushes, welcome
def test_heartbeat_is_echoed(raw: Raw, server: EmbeddedServer) -> None:
    raw.send(heartbeat_frame())
    [hb] = raw.read(1)
    assert hb.is_heartbeat and hb.res == 1
    assert server.heartbeats_received == 1
    assert server.applied == {}


def test_heartbeat_echo_off() -> None:
    with EmbeddedServer(heartbeat_echo=False) as srv:
        r = Raw(srv)
        r.send(heartbeat_frame(), Frame(qid=1, fid=FID_ECHO, body=b"x"))
        frames = r.until(1)
        assert [f.is_heartbeat for f in frames] == [False]
        assert srv.heartbeats_received == 1
        r.close()


def test_heartbeat_responses_and_push_acks_from_the_client_are_ignored(raw: Raw, server: EmbeddedServer) -> None:
    raw.send(
        heartbeat_frame(response=True),
        Frame(qid=0, fid=77, res=1, code=200, body=b"ack"),
        Frame(qid=3, fid=FID_ECHO, body=b"x"),
    )
    assert [f.qid for f in raw.until(3)] == [3]
    assert server.heartbeats_received == 1
    assert server.frames_received == 3
    assert 77 not in server.applied


def test_welcome_push_is_the_first_frame() -> None:
    with EmbeddedServer(welcome=b"hello there") as srv:
        r = Raw(srv)
        [first] = r.read(1)
        assert (first.qid, first.fid, first.res, first.body) == (0, 0, 0, b"hello there")
        r.close()


def test_client_sees_welcome_and_pushes() -> None:
    with EmbeddedServer(welcome=b"hi") as srv, Client(srv.url, timeout=5) as client:
        client.connect()
        pushes = client.pushes(timeout=5)
        assert next(pushes).body == b"hi"
        assert client.request(b"2", fid=FID_PUSH).body == b"pushed"
        assert [next(pushes).body for _ in range(2)] == [b"push 0", b"push 1"]


def test_client_errors_from_builtins() -> None:
    with EmbeddedServer() as srv, Client(srv.url, timeout=5) as client:
        with pytest.raises(RemoteError) as info:
            client.request(b"503", fid=FID_ERROR)
        assert info.value.code == 503
        with pytest.raises(RequestTimeout):
            client.request(fid=FID_SILENT, timeout=0.05)
        with pytest.raises(RemoteError) as info:
            client.request(fid=12345)
        assert info.value.code == 404
        assert client.request(b"fine", fid=FID_ECHO).body == b"fine"


# --------------------------------------------------------------------- bad clients
def test_garbage_from_a_client_is_counted_and_closes_only_that_connection(server: EmbeddedServer, raw: Raw) -> None:
    raw.request(b"warm up")
    bad = Raw(server)
    bad.sock.sendall(b"\x00\x00\x00\x30GARBAGE-GARBAGE-GARBAGE-GARBAGE-GARBAGE-GARBAGE!!!!")
    assert bad.expect_eof() == []
    bad.close()
    assert server.protocol_errors == 1
    assert raw.request(b"unaffected", qid=2).body == b"unaffected"
    assert server.info()["protocol_errors"] == 1


def test_oversized_frame_is_a_protocol_error() -> None:
    with EmbeddedServer(max_frame_size=1024) as srv:
        r = Raw(srv)
        r.send(Frame(qid=1, fid=FID_ECHO, body=b"x" * 2000))
        assert r.expect_eof() == []
        assert srv.protocol_errors == 1
        r.close()


def test_client_reset_is_survived(server: EmbeddedServer) -> None:
    r = Raw(server)
    r.request(b"x")
    r.sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER, struct.pack("ii", 1, 0))
    r.close()
    assert settle(lambda: server.info()["connections_active"] == 0)
    other = Raw(server)
    assert other.request(b"y").body == b"y"
    other.close()


def test_client_reset_while_server_writes(server: EmbeddedServer) -> None:
    big = b"z" * (8 * 1024 * 1024)
    server.register(70, lambda f: big)
    r = Raw(server)
    r.send(Frame(qid=1, fid=70))
    with gevent.Timeout(5):
        assert r.sock.recv(1024)  # the reply is being written; the rest fills the buffers
    r.sock.setsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_LINGER, struct.pack("ii", 1, 0))
    r.close()
    assert settle(lambda: server.info()["connections_active"] == 0)
    other = Raw(server)
    assert other.request(b"alive").body == b"alive"
    other.close()


def test_client_leaving_mid_handler_kills_the_handler(server: EmbeddedServer) -> None:
    finished: list[int] = []
    started = gevent.event.Event()

    def slow(frame: Frame) -> bytes:
        started.set()
        gevent.sleep(30)
        finished.append(frame.qid)
        return b"late"

    server.register(71, slow)
    r = Raw(server)
    r.send(Frame(qid=1, fid=71))
    assert started.wait(5)
    r.close()
    assert settle(lambda: server.info()["connections_active"] == 0)
    assert finished == []  # leakcheck also proves the handler greenlet is gone


def test_reply_after_the_connection_closed_is_dropped(server: EmbeddedServer) -> None:
    results: list[int] = []

    def closes_then_replies(frame: Frame) -> bytes:
        results.append(server.drop_connections())
        return b"into the void"

    server.register(72, closes_then_replies)
    r = Raw(server)
    r.send(Frame(qid=1, fid=72))
    assert r.expect_eof() == []
    assert results == [1]
    r.close()


# --------------------------------------------------------------------- lifecycle and properties
def test_drop_connections(server: EmbeddedServer) -> None:
    clients = [Raw(server) for _ in range(3)]
    for c in clients:
        c.request(b"x")
    assert server.info()["connections_active"] == 3
    assert server.drop_connections() == 3
    for c in clients:
        assert c.expect_eof() == []
        c.close()
    assert settle(lambda: server.info()["connections_active"] == 0)
    assert server.drop_connections() == 0
    assert server.running
    again = Raw(server)
    assert again.request(b"back").body == b"back"
    again.close()
    assert server.connections_accepted == 4


def test_start_stop_idempotent_and_properties() -> None:
    srv = EmbeddedServer()
    assert not srv.running
    srv.stop()  # stop before start: nothing to do
    assert srv.start() is srv
    port = srv.port
    assert port != 0
    assert srv.start() is srv and srv.port == port
    assert srv.running
    assert srv.address == ("127.0.0.1", port)
    assert srv.url == f"tcp://127.0.0.1:{port}" == srv.endpoint
    assert Endpoint.parse(srv.url).port == port
    assert repr(srv) == f"<EmbeddedServer tcp://127.0.0.1:{port} running=True connections=0>"
    r = Raw(srv)
    r.request(b"x")
    srv.stop()
    assert r.expect_eof() == []
    r.close()
    srv.stop()
    assert not srv.running
    assert "running=False" in repr(srv)
    with pytest.raises(ConnectionRefusedError):
        stdsocket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_context_manager_stops() -> None:
    with EmbeddedServer() as srv:
        assert srv.running
    assert not srv.running


def test_ipv6_server_url() -> None:
    with EmbeddedServer("::1") as srv:
        assert srv.url == f"tcp://[::1]:{srv.port}"
        assert Endpoint.parse(srv.url).host == "::1"
        sock = gsocket.create_connection(("::1", srv.port), timeout=5)
        r = Raw(srv, sock)
        assert r.request(b"six").body == b"six"
        r.close()


def test_many_clients_through_the_public_client() -> None:
    with EmbeddedServer() as srv, Client(srv.url, timeout=5) as client:
        jobs = [gevent.spawn(client.request, b"%d" % i, FID_ECHO) for i in range(50)]
        gevent.joinall(jobs, timeout=10, raise_error=True)
        assert sorted(int(j.value.body) for j in jobs) == list(range(50))


# --------------------------------------------------------------------- TLS
@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def server_tls(ca: trustme.CA) -> Any:
    ctx = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


def client_tls(ca: trustme.CA) -> Any:
    ctx = gevent.ssl.SSLContext(gevent.ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    return ctx


def test_tls_server(ca: trustme.CA) -> None:
    with EmbeddedServer(tls=server_tls(ca), welcome=b"secure hello") as srv:
        assert srv.url == f"tls://127.0.0.1:{srv.port}"
        raw_sock = gsocket.create_connection(srv.address, timeout=5)
        tls_sock = client_tls(ca).wrap_socket(raw_sock, server_hostname="127.0.0.1")
        r = Raw(srv, tls_sock)
        assert r.read(1)[0].body == b"secure hello"
        assert r.request(b"over tls").body == b"over tls"
        gz = CODECS["gzip"]
        reply = r.request(gz.compress(b"squeezed"), tp=gz.tp_bits, qid=2)
        assert gz.decompress(reply.body) == b"squeezed"
        r.close()


def test_tls_server_rejects_a_plain_client_and_keeps_serving(ca: trustme.CA) -> None:
    with EmbeddedServer(tls=server_tls(ca)) as srv:
        plain = Raw(srv)
        plain.send(Frame(qid=1, fid=FID_ECHO, body=b"cleartext"))
        with gevent.Timeout(5):
            leftovers = b""
            try:
                while chunk := plain.sock.recv(4096):
                    leftovers += chunk
            except ConnectionResetError:
                pass
        assert b"cleartext" not in leftovers  # never echoed in the clear
        plain.close()
        tls_sock = client_tls(ca).wrap_socket(
            gsocket.create_connection(srv.address, timeout=5), server_hostname="localhost"
        )
        r = Raw(srv, tls_sock)
        assert r.request(b"fine").body == b"fine"
        r.close()
