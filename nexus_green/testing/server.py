"""EmbeddedServer: a NexusKit-protocol server for tests, demos and benchmarks.

A gevent ``StreamServer`` that speaks the same framing as the client, with
handlers registered per Fid. Each connection has one reader and one writer
greenlet; replies produced while handling one ``recv`` go out in one
``sendall``, so the server is not the bottleneck of a benchmark.

Built-in functions (Fid constants exported from :mod:`nexus_green.testing`):

=============  ==================================================================
``FID_ECHO``   (0 and 1) reply with the request body
``FID_DELAY``  (2) body is seconds as ASCII (``b"0.2"``): sleep, then reply ``b"ok"``
``FID_ERROR``  (3) body is a status code as ASCII (``b"503"``): reply with that code
``FID_PUSH``   (4) body is a count N: send N push frames (Res 0, Qid 0), then reply
``FID_SILENT`` (5) never reply (for timeouts)
``FID_CLOSE``  (6) close the connection without replying (for "peer closed")
``FID_GARBAGE`` (7) reply with bytes that break the framing
``FID_INFO``   (8) reply with JSON figures about the server
``FID_FILE``   (9) receive a file sent with ``send_file`` into ``files_dir``
               (:class:`~nexus_green.testing.files.FileReceiver`); 501 without one
=============  ==================================================================

Heartbeats (Tp 0x01) are echoed as responses. A compressed request body is
decoded before the handler sees it, and the reply is compressed with the same
codec. ``welcome=b"..."`` pushes a frame to every new connection.
``heartbeat_echo=False`` stops answering heartbeats (a server that hangs).

``idempotency=IdempotencyGuard(...)`` (or ``True`` for a guard with the
defaults: keys remembered 300 s) makes requests that carry the
``idempotency-key`` header run at most once per key: the first request runs
the handler, its reply is remembered, and a duplicate (a client's retry after
a lost response) gets that reply again without running the handler. A
duplicate that arrives while the first is still running is answered 503
(retryable); a request whose handler failed or gave no reply is forgotten, so
its retry runs again. ``replays`` counts the replies sent from the guard.
A guard made with ``shared=`` (a Redis URL, client or link) keeps its keys
in Redis, so several server processes sharing it apply a key once between
them; replies are then stored as plain data (``("nexus.reply", body, code,
headers)``), never pickled.

``tracer=SpanManager(...)`` records a ``nexus.server`` span (kind SERVER) per
request, a child of the client span whose context the frame carried
(:func:`nexus_green.tracing.server_span`), so tests can assert a trace tree
across the wire.

Example::

    >>> from nexus_green import Client
    >>> server = EmbeddedServer()
    >>> server.register(42, lambda req: b"answer:" + req.body)
    >>> with server, Client(server.url) as c:
    ...     c.request(b"x", fid=42).body
    b'answer:x'
"""

from __future__ import annotations

import json
import logging
import socket as _stdsocket
from collections.abc import Callable
from typing import Any, Optional, Union

import gevent
from gevent.event import Event
from gevent.server import StreamServer

from ..errors import CompressionError, RemoteProtocolError
from ..greenlets import spawn
from ..protocol.compression import codec_for_bits
from ..protocol.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    TP_CODEC_MASK,
    TP_GZIP,
    TP_HEARTBEAT,
    Frame,
    FrameDecoder,
    encode_frame,
    heartbeat_frame,
)
from ..resilience.idempotency import HEADER as IDEMPOTENCY_HEADER
from ..resilience.idempotency import IdempotencyGuard

__all__ = [
    "EmbeddedServer",
    "Reply",
    "FID_ECHO",
    "FID_DELAY",
    "FID_ERROR",
    "FID_PUSH",
    "FID_SILENT",
    "FID_CLOSE",
    "FID_GARBAGE",
    "FID_INFO",
    "FID_FILE",
]

log = logging.getLogger("nexus_green.testing.server")

FID_ECHO = 1
FID_DELAY = 2
FID_ERROR = 3
FID_PUSH = 4
FID_SILENT = 5
FID_CLOSE = 6
FID_GARBAGE = 7
FID_INFO = 8
FID_FILE = 9

_CODEC = TP_GZIP | TP_CODEC_MASK
_NO_REPLY = object()
_CLOSE = object()


class Reply:
    """What a handler may return instead of plain bytes: a body with a status code.

    Example::

        >>> Reply(b"busy", code=503).code
        503
    """

    __slots__ = ("body", "code", "headers")

    def __init__(self, body: bytes = b"", *, code: int = 200, headers: Optional[dict[str, str]] = None) -> None:
        self.body = body
        self.code = code
        self.headers = headers or {}


_SHARED_REPLY = "nexus.reply"


def _to_shared(result: Union[bytes, Reply]) -> Any:
    # A shared guard stores plain data only: a Reply travels as a tagged tuple.
    if isinstance(result, Reply):
        return (_SHARED_REPLY, bytes(result.body), result.code, dict(result.headers))
    return bytes(result)


def _from_shared(stored: Any) -> Any:
    if isinstance(stored, tuple) and len(stored) == 4 and stored[0] == _SHARED_REPLY:
        return Reply(stored[1], code=stored[2], headers=stored[3])
    return stored


HandlerResult = Union[bytes, Reply, None]
Handler = Callable[[Frame], HandlerResult]


class _Conn:
    """One accepted client connection: reader (the StreamServer greenlet) plus writer."""

    def __init__(self, server: EmbeddedServer, sock: Any, addr: Any) -> None:
        self.server = server
        self.sock = sock
        self.addr = addr
        self.out: list[bytes] = []
        self.wake = Event()
        self.closed = False
        self.tasks: list[gevent.Greenlet] = []

    def queue(self, data: bytes) -> None:
        if self.closed:
            return
        self.out.append(data)
        self.wake.set()

    def write_loop(self) -> None:
        try:
            while not self.closed:
                self.wake.wait()
                self.wake.clear()
                while self.out and not self.closed:
                    chunks, self.out = self.out, []
                    self.sock.sendall(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        except OSError:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.wake.set()
        try:
            self.sock.shutdown(_stdsocket.SHUT_RDWR)
        except OSError:
            pass  # the peer is already gone
        self.sock.close()
        for task in self.tasks:
            task.kill(block=False)


class EmbeddedServer:
    """The NexusKit test server; start()/stop() or use it as a context manager.

    ``endpoint``/``url`` name where it listens (port 0 = chosen by the OS).
    ``tls`` is an ``ssl.SSLContext`` for the server side (see
    :func:`nexus_green.testing.tls.make_test_certificates`).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        welcome: Optional[bytes] = None,
        heartbeat_echo: bool = True,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        tls: Any = None,
        handlers: Optional[dict[int, Handler]] = None,
        idempotency: Union[IdempotencyGuard, bool, None] = None,
        files_dir: Optional[str] = None,
        tracer: Any = None,
    ) -> None:
        self.host = host
        self.tracer = tracer
        self.port = port
        self.welcome = welcome
        self.heartbeat_echo = heartbeat_echo
        self.max_frame_size = max_frame_size
        self.tls = tls
        self._handlers: dict[int, Handler] = {}
        self._conns: list[_Conn] = []
        self._server: Optional[StreamServer] = None
        self.connections_accepted = 0
        self.frames_received = 0
        self.heartbeats_received = 0
        self.protocol_errors = 0
        self.applied: dict[int, int] = {}
        if idempotency is True:
            idempotency = IdempotencyGuard()
        self.guard: Optional[IdempotencyGuard] = idempotency if isinstance(idempotency, IdempotencyGuard) else None
        self.replays = 0
        self.files: Any = None
        if files_dir is not None:
            from .files import FileReceiver

            self.files = FileReceiver(files_dir)
        for fid, handler in (handlers or {}).items():
            self.register(fid, handler)

    # ------------------------------------------------------------------ handlers
    def register(self, fid: int, handler: Handler) -> None:
        """Answer requests for ``fid`` with ``handler(frame)``.

        The handler returns bytes (code 200), a :class:`Reply`, or None for no
        reply. It runs in its own greenlet, so it may block (sleep, do I/O).
        """
        self._handlers[fid] = handler

    def _builtin(self, conn: _Conn, frame: Frame, body: bytes) -> Any:
        fid = frame.fid
        if fid in (0, FID_ECHO):
            return body
        if fid == FID_DELAY:
            gevent.sleep(float(body or b"0"))
            return b"ok"
        if fid == FID_ERROR:
            return Reply(b"error " + body, code=int(body or b"500"))
        if fid == FID_PUSH:
            for i in range(int(body or b"1")):
                conn.queue(encode_frame(Frame(qid=0, fid=FID_PUSH, body=b"push %d" % i)))
            return b"pushed"
        if fid == FID_SILENT:
            return _NO_REPLY
        if fid == FID_CLOSE:
            return _CLOSE
        if fid == FID_GARBAGE:
            conn.queue(b"\x00\x00\x00\x30GARBAGE-GARBAGE-GARBAGE")
            return _NO_REPLY
        if fid == FID_INFO:
            return json.dumps(self.info()).encode()
        if fid == FID_FILE:
            if self.files is None:
                return Reply(b"this server was started without files_dir: it takes no files", code=501)
            return self.files.handle(frame)
        return Reply(b"unknown fid %d" % fid, code=404)

    # ------------------------------------------------------------------ serving
    def _handle(self, sock: Any, addr: Any) -> None:
        sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
        conn = _Conn(self, sock, addr)
        self._conns.append(conn)
        self.connections_accepted += 1
        writer = spawn(conn.write_loop, name="server-writer")
        if self.welcome is not None:
            conn.queue(encode_frame(Frame(qid=0, fid=0, body=self.welcome)))
        decoder = FrameDecoder(max_frame_size=self.max_frame_size)
        try:
            while not conn.closed:
                try:
                    data = sock.recv(262144)
                except OSError:
                    break
                if not data:
                    break
                try:
                    frames = decoder.feed(data)
                except RemoteProtocolError:
                    self.protocol_errors += 1
                    break
                for frame in frames:
                    self.frames_received += 1
                    if self._dispatch(conn, frame) is _CLOSE:
                        conn.close()
                        break
        finally:
            conn.close()
            writer.kill(block=False)
            if conn in self._conns:
                self._conns.remove(conn)

    def _dispatch(self, conn: _Conn, frame: Frame) -> Any:
        if frame.tp & TP_HEARTBEAT:
            self.heartbeats_received += 1
            if self.heartbeat_echo and frame.res == 0:
                conn.queue(heartbeat_frame(response=True))
            return None
        if frame.res == 1:
            return None  # a response to one of our pushes: nothing to do
        self.applied[frame.fid] = self.applied.get(frame.fid, 0) + 1
        handler = self._handlers.get(frame.fid)
        if (
            handler is None
            and frame.fid in (0, FID_ECHO)
            and not frame.tp & _CODEC
            and self._unguarded(frame)
            and self.tracer is None
        ):
            # Fast path for the benchmark peer: echo inline, no greenlet.
            conn.queue(encode_frame(Frame(qid=frame.qid, fid=frame.fid, code=200, res=1, body=frame.body)))
            return None
        if handler is None and frame.fid == FID_CLOSE:
            return _CLOSE
        task = spawn(self._run_handler, conn, frame, handler, name="server-handler")
        conn.tasks.append(task)
        task.link(lambda g: conn.tasks.remove(g) if g in conn.tasks else None)
        return None

    def _unguarded(self, frame: Frame) -> bool:
        return self.guard is None or IDEMPOTENCY_HEADER not in frame.headers

    def _run_handler(self, conn: _Conn, frame: Frame, handler: Optional[Handler]) -> None:
        if self.tracer is None:
            self._run_guarded(conn, frame, handler)
            return
        from ..tracing.server import server_span

        with server_span(self.tracer, frame.headers, "nexus.server", {"rpc.system": "nexus", "nexus.fid": frame.fid}):
            self._run_guarded(conn, frame, handler)

    def _run_guarded(self, conn: _Conn, frame: Frame, handler: Optional[Handler]) -> None:
        key = frame.headers.get(IDEMPOTENCY_HEADER) if self.guard is not None else None
        if key is None:
            self._respond(conn, frame, self._result(conn, frame, handler))
            return
        guard = self.guard
        assert guard is not None
        decision = guard.begin(key)
        if decision.action == "replay":
            self.replays += 1
            self._respond(conn, frame, _from_shared(decision.result) if guard.shared else decision.result)
            return
        if decision.action == "in_progress":
            self._respond(conn, frame, Reply(b"request with this idempotency key is in progress", code=503))
            return
        result: Any = None
        try:
            result = self._result(conn, frame, handler)
        finally:
            if isinstance(result, bytes) or (isinstance(result, Reply) and result.code < 500):
                guard.complete(key, _to_shared(result) if guard.shared else result)
            else:
                # No reply to replay (none given, the handler was killed, or
                # it failed with a 5xx): forget the key, so a retry runs again.
                guard.abandon(key)
        self._respond(conn, frame, result)

    def _result(self, conn: _Conn, frame: Frame, handler: Optional[Handler]) -> Any:
        # Run the handler (or a built-in): its result, or a Reply for an error.
        codec_bits = frame.tp & _CODEC
        body = frame.body
        try:
            if codec_bits:
                codec = codec_for_bits(frame.tp)
                assert codec is not None
                body = codec.decompress(body, self.max_frame_size)
                frame = Frame(qid=frame.qid, fid=frame.fid, tp=frame.tp & ~_CODEC, body=body, headers=frame.headers)
            result = handler(frame) if handler is not None else self._builtin(conn, frame, body)
        except CompressionError as exc:
            result = Reply(str(exc).encode(), code=400)
        except Exception as exc:  # a handler bug becomes a 500, as a real server would answer
            log.exception("handler for fid=%d failed", frame.fid)
            result = Reply(f"{type(exc).__name__}: {exc}".encode(), code=500)
        return result

    def _respond(self, conn: _Conn, frame: Frame, result: Any) -> None:
        codec_bits = frame.tp & _CODEC
        if result is None or result is _NO_REPLY:
            return
        if result is _CLOSE:
            conn.close()
            return
        reply = result if isinstance(result, Reply) else Reply(result)
        try:
            out_body, tp = reply.body, 0
            if codec_bits:
                codec = codec_for_bits(codec_bits)
                assert codec is not None
                out_body, tp = codec.compress(out_body), codec_bits
            data = encode_frame(
                Frame(qid=frame.qid, fid=frame.fid, code=reply.code, res=1, tp=tp, body=out_body, headers=reply.headers)
            )
        except Exception as exc:  # a reply the protocol cannot carry (str body, code > u32): 500, never silence
            log.exception("reply for fid=%d cannot be encoded", frame.fid)
            data = encode_frame(
                Frame(qid=frame.qid, fid=frame.fid, code=500, res=1, body=f"{type(exc).__name__}: {exc}".encode())
            )
        conn.queue(data)

    # ------------------------------------------------------------------ control
    def start(self) -> EmbeddedServer:
        """Listen and serve in the background (returns self)."""
        if self._server is not None:
            return self
        kwargs: dict[str, Any] = {}
        if self.tls is not None:
            kwargs["ssl_context"] = self.tls
        self._server = StreamServer((self.host, self.port), self._handle, **kwargs)
        self._server.start()
        self.port = self._server.server_port
        return self

    def drop_connections(self) -> int:
        """Close every client connection now (the listener stays up); returns how many."""
        conns = list(self._conns)
        for conn in conns:
            conn.close()
        return len(conns)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop listening and close every connection (idempotent)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self.drop_connections()
        server.stop(timeout=timeout)
        if self.files is not None:
            self.files.close()

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._server is not None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` it listens on."""
        return self.host, self.port

    @property
    def url(self) -> str:
        """``tcp://host:port`` (or ``tls://`` when serving TLS)."""
        scheme = "tls" if self.tls is not None else "tcp"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """Same as :attr:`url`."""
        return self.url

    def info(self) -> dict[str, Any]:
        """Figures: connections, frames, heartbeats, protocol errors (and replays, with a guard)."""
        figures: dict[str, Any] = {
            "connections_accepted": self.connections_accepted,
            "connections_active": len(self._conns),
            "frames_received": self.frames_received,
            "heartbeats_received": self.heartbeats_received,
            "protocol_errors": self.protocol_errors,
        }
        if self.guard is not None:
            figures["idempotent_replays"] = self.replays
        return figures

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<EmbeddedServer {self.url} running={self.running} connections={len(self._conns)}>"
