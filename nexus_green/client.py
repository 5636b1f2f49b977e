"""Client: the front door of nexus_green (layer L5).

A :class:`Client` owns a :class:`~nexus_green.connection.ConnectionPool` for
one endpoint and runs each request through an optional middleware pipeline
down to the pool. Calls look blocking; under the hood they park the calling
greenlet while one socket carries everyone's requests.

Example::

    >>> from nexus_green.testing import EmbeddedServer
    >>> with EmbeddedServer() as server:
    ...     with Client(server.url) as client:
    ...         client.request(b"hello", fid=1, timeout=5).body
    b'hello'
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from time import monotonic as _monotonic
from typing import Any, Optional

from gevent.hub import get_hub
from gevent.queue import Empty, Full, Queue

from .clock import SYSTEM_CLOCK, Clock
from .connection.connection import ConnectionOptions
from .connection.pool import ConnectionPool
from .deadlines import DEFAULT, budget, deadline_var
from .errors import (
    ClientClosed,
    CompressionError,
    ConfigurationError,
    RemoteError,
    UsageError,
)
from .events import EventBus, default_bus
from .logs import RepeatedLog
from .middleware.compression import DictionaryRegistry
from .middleware.offload import decode_off_hub
from .pipeline import Pipeline, bus_of
from .protocol.compression import body_decoder, try_decompress
from .protocol.files import DEFAULT_CHUNK_SIZE
from .protocol.frames import TP_CODEC_MASK, TP_GZIP, Frame
from .protocol.messages import Request, Response
from .transport.endpoint import Endpoint

__all__ = ["Client"]

_DEADLINE = deadline_var()

log = logging.getLogger("nexus_green.client")
_rlog = RepeatedLog(log)  # a push flood that fails the same way writes one line a minute, with a count

_CODEC_BITS = TP_GZIP | TP_CODEC_MASK
_OFFLOAD_BYTES = 64 * 1024  # compressed bodies of this size or more are decoded in gevent's threadpool, off the hub
_INLINE_OUTPUT = 256 * 1024  # below it, one call on the hub decodes a body that expands to at most this much

Handler = Callable[[Request], Response]

_new = object.__new__
_REQUEST_SETTERS = tuple(
    Request.__dict__[n].__set__ for n in ("body", "fid", "headers", "timeout", "idempotent", "endpoint", "context")
)


def _make_request(
    body: bytes, fid: int, headers: Mapping[str, str], timeout: Optional[float], idempotent: bool, endpoint: str
) -> Request:
    # Request's frozen-dataclass __init__ costs about 1.3 us (one object.__setattr__ per field);
    # setting the slots directly costs a third of that, on the path of every call through a pipeline.
    r = _new(Request)
    sb, sf, sh, st, si, se, sc = _REQUEST_SETTERS
    sb(r, body)
    sf(r, fid)
    sh(r, headers)
    st(r, timeout)
    si(r, idempotent)
    se(r, endpoint)
    sc(r, {})
    return r


_POOL_KEYS = (
    "demand_backoff_cap",
    "spread_bytes",
    "min_size",
    "max_size",
    "max_in_flight",
    "checkout_timeout",
    "max_idle_time",
    "max_lifetime",
    "health_check_interval",
)
_CONN_KEYS = (
    "connect_timeout",
    "max_frame_size",
    "strict",
    "heartbeat_interval",
    "heartbeat_timeout",
    "reconnect",
    "fail_fast",
    "recv_buffer_size",
    "tls",
    "proxy",
    "resolver",
    "happy_eyeballs_delay",
    "max_write_buffer",
    "socket_options",
    "io_greenlets",
)


def _pipeline_wrap(
    middlewares: Any, bus: EventBus
) -> tuple[Callable[[Handler], Handler], Optional[Callable[[], bool]]]:
    """The ``wrap`` of ``middlewares`` (a sequence or a ready Pipeline), once their buses are checked.

    Also the ``needed()`` of a lone middleware that has one (see
    :class:`~nexus_green.pipeline.Middleware`), else None.
    """
    wrap = getattr(middlewares, "wrap", None)
    if wrap is None:
        middlewares = Pipeline(list(middlewares))
        wrap = middlewares.wrap
    # One client, one event stream: a middleware emits on the bus it was built with, so one
    # built on another bus would split this client's events silently (docs/middleware.md).
    for mw in getattr(middlewares, "middlewares", ()):
        mw_bus = bus_of(mw)
        if mw_bus is not None and mw_bus is not bus:
            raise ConfigurationError(
                f"middleware {mw.name!r} emits on another EventBus than the client's: "
                "build it with the client's bus= (or give neither a bus)"
            )
    mws = tuple(getattr(middlewares, "middlewares", ()))
    needed = getattr(mws[0], "needed", None) if len(mws) == 1 else None
    return wrap, needed if callable(needed) else None


class Client:
    """A blocking-style client for one NexusKit endpoint (``tcp://`` or ``tls://``).

    Options are keyword-only: ``timeout`` (default request timeout, 30 s;
    None: no limit of its own),
    ``raise_for_code`` (raise :class:`RemoteError` for codes other than 200,
    default True), ``middlewares`` (a sequence, or a ready ``Pipeline``),
    ``push_queue_size`` (1000; the oldest push is dropped when full),
    ``dictionaries`` (a :class:`~nexus_green.middleware.DictionaryRegistry`:
    responses compressed with a registered zstd dictionary decode),
    ``monitor`` (a :class:`~nexus_green.monitoring.PerformanceMonitor` on the
    same ``bus``: it then reports this client's pool figures), every
    :class:`~nexus_green.connection.ConnectionOptions` field (connect_timeout,
    strict, heartbeat_interval, reconnect, fail_fast, tls, proxy, ...) and every
    pool option (min_size, max_size, max_in_flight, checkout_timeout,
    max_idle_time, max_lifetime, health_check_interval).

    Example::

        >>> from nexus_green.testing import EmbeddedServer, FID_ERROR
        >>> with EmbeddedServer() as server, Client(server.url, raise_for_code=False) as c:
        ...     c.request(b"503", fid=FID_ERROR).code
        503
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: Optional[float] = 30.0,
        raise_for_code: bool = True,
        middlewares: Any = (),
        push_queue_size: int = 1000,
        bus: EventBus = default_bus,
        clock: Clock = SYSTEM_CLOCK,
        dictionaries: Optional[DictionaryRegistry] = None,
        monitor: Any = None,
        **options: Any,
    ) -> None:
        self.endpoint = Endpoint.parse(url)
        self._url = str(self.endpoint)  # str(Endpoint) costs ~1 us: not once per request
        self.dictionaries = dictionaries
        unknown = set(options) - set(_POOL_KEYS) - set(_CONN_KEYS)
        if unknown:
            raise ConfigurationError(f"unknown Client option(s): {', '.join(sorted(unknown))}")
        conn_opts = ConnectionOptions(request_timeout=timeout, **{k: v for k, v in options.items() if k in _CONN_KEYS})
        wrap, needed = (
            _pipeline_wrap(middlewares, bus) if middlewares else (None, None)
        )  # checked before the pool opens
        self.timeout = timeout
        self._hub = get_hub()  # calls from another OS thread get a UsageError, not a hang
        self._now = _monotonic if clock is SYSTEM_CLOCK else clock.now  # the budget's start, once per call
        self.raise_for_code = raise_for_code
        self.bus = bus
        self.clock = clock
        self._closed = False
        self._push_callbacks: list[Callable[[Response], None]] = []
        # Made on the first push or the first pushes() call: most clients never see one.
        self._push_q: Optional[Queue[Optional[Response]]] = None
        self._push_queue_size = push_queue_size
        self.pushes_dropped = 0
        self.push_errors = 0
        self.pool = ConnectionPool(
            self.endpoint,
            options=conn_opts,
            bus=bus,
            clock=clock,
            on_push=self._handle_push,
            **{k: v for k, v in options.items() if k in _POOL_KEYS},
        )
        # A PerformanceMonitor (nexus_green.monitoring) on the same bus sees this
        # client's pool figures at every tick.
        self._unwatch: Optional[Callable[[], None]] = None
        if monitor is not None:
            if monitor.bus is not bus:
                raise ConfigurationError("monitor= must listen on the same EventBus as the client (bus=)")
            self._unwatch = monitor.watch_pool(str(self.endpoint), self.pool.stats)
        self.middlewares = middlewares
        self._call: Optional[Handler] = None
        self._needed = needed
        if wrap is not None:
            self._call = wrap(self._terminal)

    # ------------------------------------------------------------------ requests
    def request(
        self,
        body: bytes = b"",
        fid: int = 0,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Any = DEFAULT,
        *,
        idempotent: bool = False,
    ) -> Response:
        """Send ``body`` to function ``fid`` and return the :class:`Response`.

        ``timeout`` is the call's budget in seconds: it defaults
        (:data:`~nexus_green.deadlines.DEFAULT`) to the client's ``timeout``,
        and ``None`` sets no limit of its own. An overall deadline set by an
        outer ``@timeout``/``deadline()`` shortens it. The one budget covers
        every phase: waiting for a connection or a connect attempt (DNS, TCP,
        SOCKS5, TLS), pool checkout, writing and the answer; running out raises
        a NexusTimeout whose ``phase`` names where the time went. Non-200 codes
        raise :class:`RemoteError` unless ``raise_for_code=False``.
        ``idempotent`` tells retry middleware the request may be sent again.
        """
        call = self._call
        try:
            if call is None or (self._needed is not None and not self._needed()):
                return self._roundtrip(body, fid, headers, timeout, 0)
            # Through a pipeline, Request.timeout None still means "the client's default".
            return call(
                _make_request(body, fid, headers or {}, None if timeout is DEFAULT else timeout, idempotent, self._url)
            )
        except BaseException as exc:
            # Every failed call, wherever it failed (pool, connect, policy, wire): a connection
            # reports only the requests that reached it. The failure path only.
            if self.bus.wants("client.request.failed"):
                self.bus.emit(
                    "client.request.failed", endpoint=self._url, fid=fid, phase=getattr(exc, "phase", ""), error=exc
                )
            raise

    def _terminal(self, request: Request) -> Response:
        timeout = request.timeout
        return self._roundtrip(
            request.body,
            request.fid,
            request.headers or None,
            DEFAULT if timeout is None else timeout,
            request.context.get("tp", 0),
        )

    def _check_usable(self) -> None:
        if self._closed:
            raise ClientClosed(f"client for {self.endpoint} is closed")
        if get_hub() is not self._hub:
            raise UsageError(
                f"client for {self.endpoint} was made in another OS thread: gevent objects belong to one thread's "
                "hub; make one Client per thread"
            )

    def _roundtrip(
        self, body: bytes, fid: int, headers: Optional[Mapping[str, str]], timeout: Any, tp: int
    ) -> Response:
        if self._closed or get_hub() is not self._hub:
            self._check_usable()
        limit = self.timeout if timeout is DEFAULT else timeout
        d = _DEADLINE.get()
        if d is None and limit is not None:
            until: Optional[float] = self._now() + limit
            by_deadline = False
        else:
            until, by_deadline = budget(limit, clock=self.clock)
        resp = self.pool.request_until(body, fid, headers, tp, until, by_deadline)
        if resp.tp & _CODEC_BITS:
            resp = self._decompress(resp, until, by_deadline)
        if resp.code != 200 and self.raise_for_code:
            raise RemoteError(
                f"fid={fid} on {self.endpoint} answered code {resp.code}: {resp.body[:200]!r}",
                code=resp.code,
                response=resp,
            )
        return resp

    def _decompress(self, resp: Response, until: Optional[float] = None, by_deadline: bool = False) -> Response:
        # A small body gets one bounded call on the hub (try_decompress: at most _INLINE_OUTPUT bytes out,
        # a few microseconds for an ordinary body). Anything else -- a large body, a bomb, many gzip
        # members, a broken body -- is decoded in gevent's threadpool a chunk at a time, within the
        # call's budget (until, by_deadline), by one of a few process-wide decode slots.
        limit = self.pool.options.max_frame_size
        body, tp = resp.body, resp.tp
        registry = self.dictionaries
        if len(body) < _OFFLOAD_BYTES:
            if registry is None:
                out = try_decompress(tp, body, limit, _INLINE_OUTPUT)
            else:
                out = registry.try_decompress(tp, body, limit, _INLINE_OUTPUT)
            if out is not None:
                return resp.replace(body=out, tp=tp & ~_CODEC_BITS)
        decoder = body_decoder(tp, body, limit) if registry is None else registry.decoder(tp, body, limit)
        out = decode_off_hub(
            decoder, clock=self.clock, until=until, by_deadline=by_deadline, what=f"fid={resp.fid} on {self.endpoint}"
        )
        return resp.replace(body=out, tp=tp & ~_CODEC_BITS)

    def send_file(
        self,
        path: str | os.PathLike[str],
        fid: int,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        name: Optional[str] = None,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Any = DEFAULT,
    ) -> Response:
        """Stream a file to ``fid`` as a run of bounded frames; return the receiver's answer.

        On plain TCP the file's bytes go from disk to the socket by
        ``os.sendfile`` (they never enter this process); over TLS they are read
        and sent in chunks. ``timeout`` (default: the client's) is one budget
        for the whole transfer, connection wait included. Middleware does not
        apply (a file is not a cacheable or compressible request). Refused in
        strict mode. The convention on the wire: :mod:`nexus_green.protocol.files`;
        the receiving side for a test server: :class:`nexus_green.testing.files.FileReceiver`.

        Example::

            >>> import json, pathlib, tempfile
            >>> from nexus_green.testing import EmbeddedServer, FID_FILE
            >>> with tempfile.TemporaryDirectory() as d:
            ...     src = pathlib.Path(d, "report.csv"); _ = src.write_bytes(b"a,b;" * 100_000)
            ...     with EmbeddedServer(files_dir=d) as server, Client(server.url) as client:
            ...         answer = json.loads(client.send_file(src, FID_FILE, name="copy.csv").body)
            ...     answer["size"], pathlib.Path(d, "copy.csv").read_bytes() == src.read_bytes()
            (400000, True)
        """
        self._check_usable()
        if not os.path.isfile(path):
            # Before any connect: a missing file is named as such even while the endpoint is down.
            raise FileNotFoundError(f"send_file: no such file: {os.fspath(path)!r}")
        until, by_deadline = budget(self.timeout if timeout is DEFAULT else timeout, clock=self.clock)
        conn = self.pool.checkout(until, by_deadline)
        resp = conn.send_file_until(path, fid, chunk_size, name, headers, until, by_deadline)
        if resp.code != 200 and self.raise_for_code:
            raise RemoteError(
                f"send_file of {os.fspath(path)!r} to fid={fid} on {self.endpoint} answered code {resp.code}: "
                f"{resp.body[:200]!r}",
                code=resp.code,
                response=resp,
            )
        return resp

    def send(self, body: bytes = b"", fid: int = 0, headers: Optional[Mapping[str, str]] = None) -> int:
        """Fire and forget: queue one frame, return its Qid, never wait for an answer.

        Waiting for a connection is bounded by the client's ``timeout``.
        """
        self._check_usable()
        with self.pool.connection(timeout=self.timeout) as conn:
            return conn.send(body, fid, headers=headers)

    def connect(self, *, timeout: Any = DEFAULT) -> Client:
        """Open the pool's first connection now, so connection errors surface here.

        ``timeout`` (default: the client's) bounds the wait, which includes
        the connect attempt.
        """
        self._check_usable()
        with self.pool.connection(timeout=self.timeout if timeout is DEFAULT else timeout):
            pass
        return self

    # ------------------------------------------------------------------ pushes
    def _handle_push(self, frame: Frame) -> None:
        resp = Response(
            body=frame.body, code=frame.code, fid=frame.fid, qid=frame.qid, headers=frame.headers, tp=frame.tp
        )
        if frame.tp & _CODEC_BITS:
            try:
                resp = self._decompress(resp)
            except CompressionError as exc:
                # A push nobody asked for must not break the link: drop and count it.
                self.push_errors += 1
                _rlog.warning(
                    ("push-dropped", self._url), "dropped a push from %s (fid=%d): %s", self.endpoint, frame.fid, exc
                )
                return
        queue = self._pushes()
        try:
            queue.put_nowait(resp)
        except Full:
            try:
                queue.get_nowait()
            except Empty:  # pragma: no cover - only if a consumer raced us, which cannot happen between yields
                pass
            self.pushes_dropped += 1
            queue.put_nowait(resp)
        for cb in list(self._push_callbacks):
            try:
                cb(resp)
            except Exception:
                _rlog.exception(("push-callback", id(cb)), "push callback %r failed", cb)

    def on_push(self, callback: Callable[[Response], None]) -> Callable[[], None]:
        """Call ``callback(response)`` for every frame the server sends on its own.

        Runs in the hub (plain TCP) or the connection's reader greenlet
        (TLS): it must not block (hand slow work to a greenlet or a queue).
        Returns an unsubscribe function.
        """
        self._push_callbacks.append(callback)

        def off() -> None:
            if callback in self._push_callbacks:
                self._push_callbacks.remove(callback)

        return off

    def pushes(self, timeout: Optional[float] = None) -> Iterator[Response]:
        """Iterate over pushed frames; stops after ``timeout`` seconds without one, or on close.

        Example::

            >>> from nexus_green.testing import EmbeddedServer
            >>> with EmbeddedServer(welcome=b"hi") as server, Client(server.url) as c:
            ...     c.connect()
            ...     next(c.pushes(timeout=5)).body
            <Client ...>
            b'hi'
        """
        queue = self._pushes()
        while True:
            try:
                item = queue.get(timeout=timeout)
            except Empty:
                return
            if item is None:
                return
            yield item

    # ------------------------------------------------------------------ lifecycle
    def stats(self) -> dict[str, Any]:
        """Pool utilisation plus client figures."""
        s = self.pool.stats()
        s["pushes_dropped"] = self.pushes_dropped
        s["push_errors"] = self.push_errors
        s["pushes_queued"] = 0 if self._push_q is None else self._push_q.qsize()
        return s

    def close(self, *, drain: float = 0.0) -> None:
        """Close the pool (idempotent); requests still pending fail with ConnectionClosed.

        With ``drain > 0`` new requests are refused at once while those in
        flight get up to ``drain`` seconds to finish first.
        """
        if self._closed:
            return
        self._closed = True
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        self.pool.close(drain=drain)
        queue = self._push_q
        if queue is None:
            return
        try:
            queue.put_nowait(None)
        except Full:
            queue.get_nowait()
            queue.put_nowait(None)

    def _pushes(self) -> Queue[Optional[Response]]:
        queue = self._push_q
        if queue is None:
            queue = self._push_q = Queue(maxsize=self._push_queue_size)
            if self._closed:
                queue.put_nowait(None)  # pushes() after close ends at once
        return queue

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Client {self.endpoint} {'closed' if self._closed else 'open'} {self.pool!r}>"
