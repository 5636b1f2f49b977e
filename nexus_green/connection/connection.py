"""Connection: one multiplexed NexusKit link carrying many concurrent requests.

How the hot path works (and why it beats one socket per greenlet):

* A caller encodes its frame, appends it to the write buffer, parks on a
  ``gevent.hub.Waiter`` keyed by its Qid, and switches away. One writer
  greenlet wakes once per batch and sends every buffered frame with a single
  ``sendall``: concurrent callers' frames are coalesced.
* One reader greenlet decodes every whole frame a ``recv`` returns and hands
  the batch to a single hub callback that switches each waiting caller in
  turn (``Waiter.switch`` must run in the hub).
* Per-request timeouts cost no hub timer of their own: each is a
  :class:`~nexus_green.timers.Timer` on the clock's scheduler (millisecond
  buckets under one hub timer on the real clock; a FakeClock drives them in
  tests). An expired request abandons only its own Qid (a late response is
  discarded and counted); the socket stays usable. Each call has one budget
  (:func:`nexus_green.deadlines.budget`): waiting for the link, writing and
  the answer all draw on it. Because callers never write to the socket, a
  timeout (ours or a ``gevent.Timeout`` around the call) can never leave a
  frame half-written.

The lifecycle (connect, lose, reconnect with a backoff strategy, close) is
the transition table in :mod:`nexus_green.connection.state`. Requests that
were in flight when the link died fail with :class:`ConnectionLost`; requests
made while reconnecting wait for the link up to their timeout, or fail at
once with ``fail_fast=True``.

This module owns that lifecycle and the I/O greenlets (reader, writer,
heartbeat, reconnect), connect and close, and the request path (``request``,
``request_until``, ``send``). What it delegates:

* :mod:`~nexus_green.connection.session` (sans-IO): the Qid table, the
  pending requests, the memory of abandoned Qids, and what each incoming
  frame is (an answer, a late reply, a push, a heartbeat to answer or an ack);
* :mod:`~nexus_green.connection.iostats`: the traffic counters and ``io.stats``;
* :mod:`~nexus_green.connection.options`: :class:`ConnectionOptions`.

Example::

    >>> from nexus_green.testing import EmbeddedServer
    >>> with EmbeddedServer() as server:
    ...     with Connection(server.endpoint) as conn:
    ...         conn.request(b"ping", fid=1, timeout=5).body
    b'ping'
"""

from __future__ import annotations

import itertools
import logging
import os
import struct
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from heapq import heappush as _heappush
from time import monotonic as _monotonic
from typing import Any, Optional

import gevent
from gevent.event import Event
from gevent.hub import Waiter, get_hub

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import DEFAULT, budget, deadline_var, timeout_error
from ..errors import (
    ConnectionClosed,
    ConnectionLost,
    ConnectTimeout,
    HeartbeatTimeout,
    LocalProtocolError,
    NexusError,
    RemoteProtocolError,
    UsageError,
    restate,
)
from ..events import EventBus, default_bus
from ..greenlets import spawn
from ..logs import RepeatedLog
from ..protocol.files import (
    DEFAULT_CHUNK_SIZE,
    FILE_CHUNKS,
    FILE_ID,
    FILE_LAST,
    FILE_NAME,
    FILE_OFFSET,
    FILE_SIZE,
    chunk_offsets,
)
from ..protocol.frames import (
    HEADER_SIZE,
    SEPARATE_BODY,
    TAG,
    VERSION,
    Frame,
    FrameDecoder,
    RawFrame,
    encode_request,
    encode_request_parts,
    heartbeat_frame,
)
from ..protocol.headers import encode_header_block
from ..protocol.heartbeat import HeartbeatMonitor
from ..protocol.messages import Response, make_response
from ..timers import hub_scheduler, wait_until
from ..transport.endpoint import Endpoint
from ..transport.stream import IOV_MAX, ConnectInfo, Stream, open_stream
from .backoff import ExponentialBackoff, ReconnectStrategy
from .iostats import STATS_MAX_LATENCIES, IOStats
from .options import ConnectionOptions
from .session import HeartbeatRequest, LateReply, Push, Session, SessionEvent
from .state import CLOSED, CLOSING, CONNECTED, CONNECTING, IDLE, RECONNECTING, Lifecycle

__all__ = ["Connection", "ConnectionOptions", "live_connections", "STATS_MAX_LATENCIES"]

log = logging.getLogger("nexus_green.connection")
_rlog = RepeatedLog(log)

_ids = itertools.count(1)
_DEADLINE = deadline_var()
_READER_SLICE = 0.005  # seconds of reading and dispatching before the reader yields to the hub
_YIELD = 1e-6  # a real timer: the hub runs a whole loop iteration (timers and I/O) before the reader resumes
_WRITE_SLICE = 256 * 1024  # larger writes report their progress as they go (liveness, room in the queue)
_EAGER_FLUSH = 16  # fewest queued frames a caller hands to the kernel itself (see _flush_eagerly)
_FRAMES_PER_READ = 1024  # a read that brings more frames makes the next one smaller (hub fairness)
_MIN_READ = 16 * 1024
_INF = float("inf")

_LIVE: weakref.WeakSet[Connection] = weakref.WeakSet()
_PREFIX_PACK = struct.Struct(">IHHBBIIIH").pack  # the frame prefix (protocol/frames.py), packed inline per request
# One receive scratch buffer per hub serves every plain-TCP connection of that
# thread: reads run in the hub one at a time and copy each body out before the
# next, so an idle connection holds no receive buffer of its own.
_FILE_FRAME_ROOM = 64 * 1024  # frame header + a chunk's header block (user headers, file id, name, offset)
_TRACEPARENT = "traceparent"  # a request carrying a trace context (docs/protocol.md) may get a request.traced
_SCRATCH_SIZE = 256 * 1024
_scratch: weakref.WeakKeyDictionary[Any, bytearray] = weakref.WeakKeyDictionary()

# A queued frame is bytes (a small frame, whole), a tuple (prefix, body) of a
# frame whose body is sent from the caller's object, or a list of memoryviews:
# what is left of a frame the kernel took part of (it can no longer be taken back).
QueuedFrame = Any


class _SharedFile:
    """A descriptor of a file being sent, closed when the transfer and its last queued chunk let go of it."""

    __slots__ = ("fd", "refs")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.refs = 1

    def release(self) -> None:
        self.refs -= 1
        if not self.refs:
            os.close(self.fd)


class _FileChunk:
    """A queued frame whose body the kernel copies from a file (``os.sendfile``): bytes never enter the process."""

    __slots__ = ("prefix", "file", "offset", "count", "done")

    def __init__(self, prefix: bytes, file: _SharedFile, offset: int, count: int) -> None:
        self.prefix = prefix
        self.file = file
        self.offset = offset
        self.count = count
        self.done = 0  # bytes of prefix + body sent; once above 0 the chunk can no longer be taken back
        file.refs += 1

    def __len__(self) -> int:
        return len(self.prefix) + self.count - self.done


def _entry_len(entry: QueuedFrame) -> int:
    if type(entry) is bytes or type(entry) is _FileChunk:
        return len(entry)
    return sum(map(len, entry))


def _flatten(entries: list[QueuedFrame], limit: int) -> list[Any]:
    """The buffers of ``entries``, in order, at most ``limit`` of them, up to the first file chunk."""
    bufs: list[Any] = []
    for e in entries:
        if type(e) is bytes:
            bufs.append(e)
        elif type(e) is _FileChunk:
            break
        else:
            bufs.extend(e)
        if len(bufs) >= limit:
            return bufs[:limit]
    return bufs


def _consume(wbuf: list[QueuedFrame], n: int) -> int:
    """Take ``n`` sent bytes off the front of ``wbuf``; return how many frames left whole."""
    i = frames = 0
    while n:
        e = wbuf[i]
        size = _entry_len(e)
        if n >= size:
            n -= size
            i += 1
            frames += 1
            continue
        rest: list[Any] = []
        for b in e if type(e) is not bytes else (e,):
            if n >= len(b):
                n -= len(b)
            else:
                rest.append(memoryview(b)[n:] if n else b)
                n = 0
        wbuf[i] = rest
        break
    del wbuf[:i]
    return frames


def live_connections(bus: Optional[EventBus] = None) -> list[Connection]:
    """Connections of this process not yet garbage-collected (on ``bus``, if given).

    Monitoring uses it to flush every connection's ``io.stats`` at each tick.
    """
    return [c for c in list(_LIVE) if bus is None or c.bus is bus]


class Connection:
    """A multiplexed, self-healing connection to one endpoint.

    Use it through :class:`nexus_green.Client` (which pools connections) or
    directly. ``on_push`` receives frames the server sent on its own (Res 0)
    and responses whose Qid matches no request; it runs in the hub (plain TCP)
    or the reader greenlet (TLS) and must not block.

    ``session`` is its :class:`~nexus_green.connection.session.Session` (Qids,
    pending requests, late replies) and ``iostats`` its
    :class:`~nexus_green.connection.iostats.IOStats` (traffic counters, also
    readable here as ``responses``, ``bytes_sent``, ...).

    Example::

        >>> from nexus_green.testing import EmbeddedServer
        >>> with EmbeddedServer() as server, Connection(server.endpoint) as conn:
        ...     r = conn.request(b"", fid=1)
        ...     conn.state, r.code, conn.in_flight
        ('connected', 200, 0)
    """

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        options: Optional[ConnectionOptions] = None,
        bus: EventBus = default_bus,
        clock: Clock = SYSTEM_CLOCK,
        on_push: Optional[Callable[[Frame], None]] = None,
        conn_id: str = "",
    ) -> None:
        self.endpoint = endpoint if isinstance(endpoint, Endpoint) else Endpoint.parse(endpoint)
        self.options = options or ConnectionOptions()
        self.bus = bus
        self.clock = clock
        self.on_push = on_push
        self.conn_id = conn_id or f"conn-{next(_ids)}"
        self.lifecycle = Lifecycle([self._on_transition])
        self.connected = False  # mirror of state == "connected", kept by _on_transition for the hot path
        self._stream: Optional[Stream] = None
        self._reader: Optional[gevent.Greenlet] = None
        self._writer: Optional[gevent.Greenlet] = None
        self._reconnector: Optional[gevent.Greenlet] = None
        self._ready = Event()
        self._wbuf: list[QueuedFrame] = []
        # Bytes queued for the writer or in its batch, bounded by options.max_write_buffer:
        # callers past the bound wait for room within their budget (_wait_for_room).
        self._wbytes = 0
        self._bytes_in_flight = 0  # request bytes of the calls waiting in request_until
        # Requests carrying a trace context, queued and not yet handed to the kernel: each a one-item list
        # the next write stamps with its time (the ``written`` of its ``request.traced`` event).
        self._unstamped: list[list[float]] = []
        self._hb_mark: list[float] = [0.0]  # the write time of the ping in flight (heartbeat.rtt's ``written``)
        self._sending_files = 0  # send_file calls in progress: their chunks have no pending Qid
        self._max_wbytes = self.options.max_write_buffer
        # Callers waiting for room, first come first served: room wakes the first
        # only (waking all of them cost a switch each, per write, at 1 MiB x 50).
        self._room_q: deque[Event] = deque()
        self._writing = False  # the writer greenlet is inside sendall: no eager flush may interleave
        self._flush_at = 1 << 30  # queued frames that trigger an eager flush; tuned from _peak_in_flight
        self._peak_in_flight = 0
        self._wevent = Event()
        # Plain TCP runs on hub callbacks, not greenlets (see _open): a read
        # watcher, a write watcher started only while the kernel is full, and
        # one flush callback per batch of queued frames.
        self._event_io = False
        self._wwatch: Any = None
        self._flush_pending = False
        self._scratch: bytearray = bytearray()
        self._read_size = self.options.recv_buffer_size  # adapts to the frame size (_on_readable)
        self._hb_timer: Any = None
        self._run_callback: Callable[..., Any] = get_hub().loop.run_callback
        self._hb_progress: Optional[tuple[int, int]] = None
        # The Qid table, pending requests and late-reply memory (sans-IO).
        self.session = Session()
        # Request deadlines: one timer per connection, on the clock's scheduler, for
        # the earliest deadline in the session's heap (_sweep), not a timer per
        # request: a heap push per request, and nothing to cancel per answer.
        self._call_at: Callable[..., Any] = clock.call_at
        self._sweep_timer: Any = None
        self._sweep_at = _INF  # when _sweep_timer fires (inf: not armed)
        self._hub: Any = None  # the hub of the thread that connected; others get a UsageError
        self._connecting: Optional[ConnectInfo] = None  # the attempt in progress (or the last one)
        self._closed_by_user = False
        self._strategy: Optional[ReconnectStrategy] = self._make_strategy()
        self._reconnect_attempt = 0  # attempts since a link last proved healthy
        self._proof_base = (0, 0)
        self._tls_context: Any = None
        interval = self.options.heartbeat_interval
        hb_timeout = self.options.heartbeat_timeout or (min(interval, 10.0) if interval else 10.0)
        self.heartbeat = HeartbeatMonitor(interval=interval, timeout=hb_timeout)
        self._hb_sent_at: Optional[float] = None
        # figures (read by the pool, monitoring and repr)
        self.created_at = clock.now()
        self.connected_at: Optional[float] = None
        self.last_connect: Optional[ConnectInfo] = None
        self.requests = 0
        self.reconnects = 0
        self.last_error: Optional[BaseException] = None
        self._real_clock = clock is SYSTEM_CLOCK  # hot-path cache
        self._decoder: Optional[FrameDecoder] = None  # the current link's, for buffered()
        # Traffic since the connection was made, kept whether or not anyone
        # monitors, and the io.stats that report it.
        self.iostats = IOStats(self.conn_id, clock)
        self.iostats.refresh(bus)
        _LIVE.add(self)

    # ------------------------------------------------------------------ lifecycle
    def _make_strategy(self) -> Optional[ReconnectStrategy]:
        rc = self.options.reconnect
        if rc is False:
            return None
        if rc is None or rc is True:
            return ExponentialBackoff()
        return rc

    @property
    def state(self) -> str:
        """The lifecycle state: idle, connecting, connected, reconnecting, closing or closed."""
        return self.lifecycle.state

    @property
    def in_flight(self) -> int:
        """Requests sent and not yet answered, failed or timed out."""
        return len(self.session.pending)

    @property
    def bytes_in_flight(self) -> int:
        """Bytes of the requests in flight (queued or sent, not yet answered): the pool spreads large bodies by it.

        Example::

            >>> Connection("tcp://127.0.0.1:9").bytes_in_flight
            0
        """
        return self._bytes_in_flight

    # Traffic counters since the connection was made (kept in self.iostats and self.session).
    @property
    def responses(self) -> int:
        """Requests answered (any code).

        Example::

            >>> Connection("tcp://127.0.0.1:9").responses
            0
        """
        return self.iostats.responses

    @property
    def responses_non_ok(self) -> int:
        """Requests answered with a code other than 200.

        Example::

            >>> Connection("tcp://127.0.0.1:9").responses_non_ok
            0
        """
        return self.iostats.responses_non_ok

    @property
    def bytes_sent(self) -> int:
        """Bytes handed to the kernel.

        Example::

            >>> Connection("tcp://127.0.0.1:9").bytes_sent
            0
        """
        return self.iostats.bytes_sent

    @property
    def frames_sent(self) -> int:
        """Frames handed to the kernel.

        Example::

            >>> Connection("tcp://127.0.0.1:9").frames_sent
            0
        """
        return self.iostats.frames_sent

    @property
    def bytes_received(self) -> int:
        """Bytes read from the socket.

        Example::

            >>> Connection("tcp://127.0.0.1:9").bytes_received
            0
        """
        return self.iostats.bytes_received

    @property
    def frames_received(self) -> int:
        """Whole frames decoded from the socket.

        Example::

            >>> Connection("tcp://127.0.0.1:9").frames_received
            0
        """
        return self.iostats.frames_received

    @property
    def late_responses(self) -> int:
        """Answers that came after their caller gave up (or to ``send``), discarded.

        Example::

            >>> Connection("tcp://127.0.0.1:9").late_responses
            0
        """
        return self.session.late_responses

    @property
    def pushes(self) -> int:
        """Frames the server sent on its own, or answers nobody waited for.

        Example::

            >>> Connection("tcp://127.0.0.1:9").pushes
            0
        """
        return self.session.pushes

    def is_available(self) -> bool:
        """True when a request sent now goes straight onto a live link.

        Example::

            >>> Connection("tcp://127.0.0.1:9").is_available()
            False
        """
        return self.connected

    def has_expired(self, now: float, max_lifetime: Optional[float]) -> bool:
        """True when the link is closed, or older than ``max_lifetime`` seconds.

        Example::

            >>> c = Connection("tcp://127.0.0.1:9"); c.has_expired(c.created_at + 10, 5.0)
            True
        """
        return self.lifecycle.state == CLOSED or (max_lifetime is not None and now - self.created_at >= max_lifetime)

    @property
    def connect_phase(self) -> str:
        """The phase of the connect attempt in progress (dns, tcp, socks5, tls), or "connect" before the first.

        Example::

            >>> Connection("tcp://127.0.0.1:9").connect_phase
            'connect'
        """
        info = self._connecting
        return (getattr(info, "phase", "") if info is not None else "") or "connect"

    @property
    def idle(self) -> bool:
        """True when no request is in flight, no frame waits to be written and no file is being sent."""
        return not self.session.pending and not self._wbuf and not self._sending_files

    @property
    def usable(self) -> bool:
        """True while the connection can take requests (now or after reconnecting)."""
        return self.lifecycle.state in (CONNECTED, CONNECTING, RECONNECTING, IDLE)

    def _on_transition(self, old: str, event: str, new: str) -> None:
        self.connected = new == CONNECTED
        if self.connected:
            self._ready.set()
        else:
            self._ready.clear()
        self.bus.emit("connection.state", conn_id=self.conn_id, endpoint=str(self.endpoint), old=old, new=new)

    def connect(self, *, timeout: Any = DEFAULT) -> Connection:
        """Open the link now (idempotent). A first connect that fails raises and closes.

        The attempt is bounded by ``connect_timeout`` and by this call's
        budget (``timeout``, default ``options.request_timeout``, and the
        deadline in force), whichever ends first; running out raises
        :class:`~nexus_green.errors.ConnectTimeout` (or DeadlineExceeded)
        whose ``phase`` names the connect phase that was in progress.
        """
        if self.lifecycle.state != IDLE:
            if self.lifecycle.state in (CLOSING, CLOSED):
                raise ConnectionClosed(f"{self.conn_id} to {self.endpoint} is closed")
            return self
        until, by_deadline = budget(self.options.request_timeout if timeout is DEFAULT else timeout, clock=self.clock)
        self._connect(until, by_deadline)
        return self

    def _connect(self, until: Optional[float], by_deadline: bool) -> None:
        self.lifecycle.fire("connect")
        try:
            self._open(until, by_deadline)
        except BaseException as exc:
            self.last_error = exc
            if self.lifecycle.state == CONNECTING:  # not when closed meanwhile
                self.lifecycle.fire("failed")
                self.lifecycle.fire("give_up")
            self._fail_all(exc)
            raise
        if self.lifecycle.state != CONNECTING:  # closed while the link was being opened
            self._stop_greenlets()
            self._teardown_stream()
            raise ConnectionClosed(f"{self.conn_id} to {self.endpoint} was closed while connecting")
        self.lifecycle.fire("connected")

    def _open(self, until: Optional[float] = None, by_deadline: bool = False) -> None:
        hub = get_hub()
        if self._hub is not None and hub is not self._hub:
            raise UsageError(f"{self.conn_id} belongs to another thread's hub; use one Client per OS thread")
        self._hub = hub
        self._run_callback = hub.loop.run_callback
        if self.clock is SYSTEM_CLOCK:
            self._call_at = hub_scheduler().call_at  # skip the clock's lookup of the hub per request
        info = self._connecting = ConnectInfo(endpoint=self.endpoint)
        self.bus.emit("connect.started", conn_id=self.conn_id, endpoint=str(self.endpoint))
        t0 = self.clock.now()
        tunnel, secure, proxy_ep = self._transport_hooks()
        opts = self.options
        try:
            stream = open_stream(
                self.endpoint,
                timeout=opts.connect_timeout,
                until=until,
                conn_id=self.conn_id,
                bus=self.bus,
                clock=self.clock,
                proxy=proxy_ep,
                tunnel=tunnel,
                secure=secure,
                info=info,
                resolver=opts.resolver,
                attempt_delay=opts.happy_eyeballs_delay,
                socket_options=opts.socket_options,
            )
        except BaseException as exc:
            self.bus.emit(
                "connect.failed",
                conn_id=self.conn_id,
                endpoint=str(self.endpoint),
                duration=self.clock.now() - t0,
                error=exc,
            )
            if by_deadline and isinstance(exc, ConnectTimeout) and until is not None and self.clock.now() >= until:
                raise timeout_error(True, f"connect to {self.endpoint}: {exc}", phase=exc.phase) from exc
            raise
        self.last_connect = info
        self.bus.emit(
            "connect.complete",
            conn_id=self.conn_id,
            endpoint=str(self.endpoint),
            duration=info.total,
            phases=dict(info.phases),
        )
        self._stream = stream
        # What a link must add to these to prove itself healthy (see _proven).
        self._proof_base = (self.iostats.responses, self.heartbeat.acks_received)
        self.connected_at = self.clock.now()
        self.heartbeat.reset(self.clock.now())
        decoder = self._decoder = FrameDecoder(max_frame_size=self.options.max_frame_size, strict=self.options.strict)
        self._wevent.clear()
        self._flush_pending = False
        if stream.nonblocking and not opts.io_greenlets:
            # Plain TCP: reads and writes are hub callbacks. A response reaches
            # its caller in one switch (hub to caller), as a raw gevent recv
            # would, and an idle connection holds no greenlet.
            self._event_io = True
            sc = _scratch.get(hub)
            if sc is None:
                sc = _scratch[hub] = bytearray(_SCRATCH_SIZE)
            self._scratch = sc
            stream.watch().start(self._on_readable, stream, decoder)
            self._wwatch = stream.watch(write=True)
        else:
            # TLS: an SSL read can need a write and the reverse; greenlets wait for either.
            self._event_io = False
            self._reader = spawn(self._read_loop, stream, decoder, name=f"{self.conn_id}:reader")
            self._writer = spawn(self._write_loop, stream, name=f"{self.conn_id}:writer")
        if self.options.heartbeat_interval is not None:
            self._hb_progress = stream.send_progress()
            self._hb_timer = self.clock.call_at(self.clock.now(), self._heartbeat_tick, stream)
        if self._wbuf:
            self._wake_writer()

    def _transport_hooks(self) -> tuple[Any, Any, Optional[Endpoint]]:
        tunnel = secure = proxy_ep = None
        opts = self.options
        if opts.proxy is not None:
            from ..transport import socks5

            proxy = socks5.parse_proxy_url(opts.proxy) if isinstance(opts.proxy, str) else opts.proxy
            proxy_ep = Endpoint("tcp", proxy.host, proxy.port)

            def tunnel(sock: Any, ep: Endpoint) -> None:
                socks5.open_tunnel(
                    sock,
                    target_host=ep.host,
                    target_port=ep.port,
                    username=proxy.username,
                    password=proxy.password,
                    remote_dns=proxy.remote_dns,
                    proxy_label=proxy.label,
                )

        if opts.tls is not None or self.endpoint.tls:
            from ..transport import tls

            config = opts.tls if opts.tls is not None else tls.TLSConfig()
            if self._tls_context is None:
                # Loading CA certificates is ~25 ms of C code that never yields:
                # build the context once per connection, not once per connect.
                self._tls_context = tls.make_context(config)
            context = self._tls_context

            def secure(sock: Any, ep: Endpoint, timeout: Optional[float]) -> Any:
                # No real-time limit of its own: open_stream bounds the whole connect on our clock.
                return tls.wrap(sock, config, ep.host, None, port=ep.port, context=context)

        return tunnel, secure, proxy_ep

    def close(self, *, drain: float = 0.0) -> None:
        """Close the connection (idempotent).

        With ``drain > 0`` waits up to that many seconds for in-flight
        requests to finish first. Requests still pending fail with
        :class:`ConnectionClosed`.
        """
        if self.lifecycle.state in (CLOSING, CLOSED):
            return
        if drain > 0 and self.session.pending:
            self.drain(self.clock.now() + drain)
        self._closed_by_user = True
        self.lifecycle.fire("close")
        self._stop_greenlets()
        self._teardown_stream()
        self._fail_all(ConnectionClosed(f"{self.conn_id} to {self.endpoint} was closed by its owner"))
        self.lifecycle.fire("closed")
        self._emit_closed(None)

    def drain(self, until: float) -> bool:
        """Wait until no request is in flight or ``clock`` reaches ``until``; True when none is left.

        Example::

            >>> Connection("tcp://127.0.0.1:9").drain(0.0)
            True
        """
        session = self.session
        while session.pending and self.clock.now() < until:
            self.clock.sleep(min(0.005, until - self.clock.now()))
        return not session.pending

    def _stop_greenlets(self) -> None:
        """Kill this connection's background greenlets, except the one calling (it is finishing)."""
        current = gevent.getcurrent()
        for g in (self._reconnector, self._writer, self._reader):
            if g is not None and g is not current:
                g.kill(block=False)
        timer, self._hb_timer = self._hb_timer, None
        if timer is not None:
            timer.cancel()

    def _emit_closed(self, error: Optional[BaseException]) -> None:
        self.flush_stats()
        age = self.clock.now() - self.created_at
        self.bus.emit(
            "connection.closed",
            conn_id=self.conn_id,
            endpoint=str(self.endpoint),
            age=age,
            requests=self.requests,
            error=error,
        )

    def abandon_after_fork(self) -> None:
        """In a forked child: stop this copy of the connection without shutting down the parent's socket.

        The socket is detached (not closed: the parent still uses it), the
        copy is closed and its requests fail with ConnectionClosed. The pool
        calls this for each connection it inherited across a fork.

        Example::

            >>> conn = Connection("tcp://127.0.0.1:9")
            >>> conn.abandon_after_fork(); conn.state
            'closed'
        """
        self._stop_greenlets()
        self._teardown_stream(detach=True)
        self._closed_by_user = True
        if self.lifecycle.state not in (CLOSING, CLOSED):
            self.lifecycle.fire("close")
            self.lifecycle.fire("closed")
        self._fail_all(
            ConnectionClosed(f"{self.conn_id} belongs to the parent process; the forked child opens its own")
        )

    def _teardown_stream(self, *, detach: bool = False) -> None:
        stream, self._stream = self._stream, None
        self._decoder = None  # a dead link's partial frame is gone with it
        if stream is not None:
            if detach:
                stream.detach()
            else:
                stream.close()
        for entry in self._wbuf:
            if type(entry) is _FileChunk:
                entry.file.release()
        self._wbuf = []
        self._wbytes = 0
        for ev in self._room_q:
            ev.set()  # callers waiting for room find the link gone

    def _proven(self) -> bool:
        """The current (or last) link answered a request or a heartbeat: it was healthy, not merely accepted."""
        base = self._proof_base
        return self.iostats.responses > base[0] or self.heartbeat.acks_received > base[1]

    def _lost(self, stream: Stream, error: NexusError) -> None:
        """The link ``stream`` died: fail what was in flight, then reconnect or close."""
        if stream is not self._stream or self.lifecycle.state != CONNECTED:
            return  # stale notice from an old stream, or already handled
        self.last_error = error
        if self._proven():
            self._reconnect_attempt = 0  # the backoff resets only after a link proved healthy
        log.info("%s to %s lost: %s", self.conn_id, self.endpoint, error)
        self.lifecycle.fire("lost")
        self._stop_greenlets()
        self._teardown_stream()
        self._fail_all(error)
        if self._strategy is None:
            self.lifecycle.fire("give_up")
            self._emit_closed(error)
            return
        self._reconnector = spawn(self._reconnect_loop, name=f"{self.conn_id}:reconnect")

    def _reconnect_loop(self) -> None:
        strategy = self._strategy
        assert strategy is not None
        if not self._reconnect_attempt:
            strategy.reset()
        # A link that was accepted and then lost before it answered anything
        # (a peer that closes at once, a TLS 1.3 rejection after the
        # handshake) does not reset the backoff: the attempts go on counting.
        while self.lifecycle.state == RECONNECTING:
            self._reconnect_attempt += 1
            attempt = self._reconnect_attempt
            delay = strategy.next_delay(attempt)
            if delay is None:
                self.lifecycle.fire("give_up")
                self.bus.emit("reconnect.gave_up", conn_id=self.conn_id, attempt=attempt)
                self._emit_closed(self.last_error)
                return
            self.bus.emit("reconnect.scheduled", conn_id=self.conn_id, attempt=attempt, delay=delay)
            self.clock.sleep(delay)
            if self.lifecycle.state != RECONNECTING:
                return  # closed while we slept
            self.lifecycle.fire("retry")
            try:
                self._open()
            except Exception as exc:  # NexusError from the network; anything else is a bug, logged
                if not isinstance(exc, NexusError):
                    log.exception("%s: unexpected error while reconnecting", self.conn_id)
                self.last_error = exc
                self.bus.emit("reconnect.failed", conn_id=self.conn_id, attempt=attempt, error=exc)
                if self.lifecycle.state == CONNECTING:
                    self.lifecycle.fire("failed")
                continue
            self.reconnects += 1
            self.lifecycle.fire("connected")
            self.bus.emit("reconnect.succeeded", conn_id=self.conn_id, attempt=attempt)
            return

    def _fail_all(self, error: BaseException) -> None:
        self._disarm_sweep()
        failed = self.session.fail_all()
        if not failed:
            return
        run_callback = get_hub().loop.run_callback
        for p in failed:
            run_callback(p[0].throw, error)

    def wait_ready(self, timeout: Any = DEFAULT) -> None:
        """Block until the link is connected, within ``timeout`` (default ``request_timeout``) and the deadline in force.

        Example::

            >>> from nexus_green.testing import EmbeddedServer
            >>> with EmbeddedServer() as server, Connection(server.endpoint) as conn:
            ...     conn.wait_ready(1.0); conn.state
            'connected'
        """
        until, by_deadline = budget(self.options.request_timeout if timeout is DEFAULT else timeout, clock=self.clock)
        self._wait_ready(until, by_deadline)

    def _wait_ready(self, until: Optional[float], by_deadline: bool) -> None:
        state = self.lifecycle.state
        if state == CONNECTED:
            return
        if state == IDLE:
            self._connect(until, by_deadline)
            return
        if state in (CLOSING, CLOSED):
            if self._closed_by_user:
                raise ConnectionClosed(f"{self.conn_id} to {self.endpoint} was closed by its owner")
            err = self.last_error
            if isinstance(err, NexusError) and not err.retryable:
                raise restate(err, f"{self.conn_id} to {self.endpoint} gave up: {err}")  # a TLS rejection, say
            raise ConnectionLost(f"{self.conn_id} to {self.endpoint} is down and gave up reconnecting") from err
        if self.options.fail_fast:
            raise ConnectionLost(f"{self.conn_id} to {self.endpoint} is reconnecting (fail_fast)") from self.last_error
        if not wait_until(self._ready.wait, self.clock, until):
            raise timeout_error(
                by_deadline,
                f"{self.conn_id} to {self.endpoint} still {self.lifecycle.state} when the call's time ran out",
                phase="connect",
                error=ConnectTimeout,
            ) from self.last_error
        if self.lifecycle.state != CONNECTED:  # closed while we waited
            self._wait_ready(self.clock.now(), by_deadline)

    # ------------------------------------------------------------------ requests
    def request(
        self,
        body: bytes = b"",
        fid: int = 0,
        *,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Any = DEFAULT,
        tp: int = 0,
    ) -> Response:
        """Send one request and block this greenlet until its response arrives.

        ``timeout`` defaults (:data:`~nexus_green.deadlines.DEFAULT`) to
        ``options.request_timeout``; ``None`` sets no limit of its own. The
        deadline in force, if sooner, is the limit. The budget covers waiting
        for the link, writing and the answer. On timeout only this Qid is
        abandoned (:class:`~nexus_green.errors.RequestTimeout`, or
        DeadlineExceeded, with ``phase`` "write" when the frame never left the
        queue and was taken back, "response" when it was written); a late
        answer is discarded and counted.
        """
        if timeout is DEFAULT:
            timeout = self.options.request_timeout
        d = _DEADLINE.get()
        if timeout is None:
            return self.request_until(body, fid, headers, tp, d, d is not None)
        until = (_monotonic() if self._real_clock else self.clock.now()) + timeout
        if d is not None and d <= until:
            return self.request_until(body, fid, headers, tp, d, True)
        return self.request_until(body, fid, headers, tp, until, False)

    def request_until(
        self,
        body: bytes,
        fid: int,
        headers: Optional[Mapping[str, str]],
        tp: int,
        until: Optional[float],
        by_deadline: bool = False,
    ) -> Response:
        """:meth:`request` with its budget already worked out: ``until`` is an absolute time on the clock.

        The pool and the Client call this, so one budget computed at the
        call's entry covers every phase below it (see
        :func:`nexus_green.deadlines.budget`).

        Example::

            >>> from nexus_green.testing import EmbeddedServer
            >>> with EmbeddedServer() as server, Connection(server.endpoint) as conn:
            ...     conn.request_until(b"hi", 1, None, 0, conn.clock.now() + 5).body
            b'hi'
        """
        if not self.connected:
            self._wait_ready(until, by_deadline)
        if type(body) is not bytes:
            # A bytearray could change while queued, and a memoryview of wider items
            # would make len() count items, not bytes: one copy settles both.
            body = bytes(body)
        session = self.session
        traced = False
        if headers:
            traced = _TRACEPARENT in headers
            if self.options.strict:
                raise LocalProtocolError(f"{self.conn_id}: strict mode cannot send headers {sorted(headers)}")
            data = encode_request_parts(
                qid := session.take_qid(), fid, body, tp=tp, header_block=encode_header_block(headers)
            )
        elif len(body) < SEPARATE_BODY:
            # The common case, inline: a small frame without headers is one bytes.
            try:
                data = _PREFIX_PACK(HEADER_SIZE + len(body), TAG, VERSION, tp, 0, qid := session.take_qid(), fid, 0, 0)
            except struct.error as exc:
                raise LocalProtocolError(f"cannot encode request qid={qid} fid={fid}: {exc}") from exc
            data += body
        else:
            data = encode_request_parts(qid := session.take_qid(), fid, body, tp=tp)
        size = len(data) if isinstance(data, bytes) else len(data[0]) + len(body)
        st = self.iostats
        if self.bus.version != st.bus_version:
            st.refresh(self.bus)  # someone (un)subscribed, or this is another bus
        if self._room_q or (self._wbytes and self._wbytes + size > self._max_wbytes):  # _wait_for_room's test, inline
            self._wait_for_room(size, fid, until, by_deadline)  # before it is pending: nothing to undo
        pending = session.pending  # the request joins the session's table by one dict store
        now = _monotonic() if self._real_clock else self.clock.now()
        if until is not None and until <= now:
            raise timeout_error(
                by_deadline,
                f"request fid={fid} to {self.endpoint}: no time left to send it (not sent)",
                phase="write",
            )
        mark: Optional[list[float]] = None
        if traced and st.emit_traced:
            mark = [now]
            self._unstamped.append(mark)
        wbuf = self._wbuf
        sent_now = not wbuf and not pending and self._event_io and not self._flush_pending and not self._wwatch.active
        waiter = Waiter()
        # On the table before the frame is queued: whatever happens to the link from
        # here on (the flush below fails it, an io.sent listener closes it) fails us.
        pending[qid] = (waiter, fid, now, until, data, by_deadline)
        wbuf.append(data)
        self._wbytes += size
        self._bytes_in_flight += size
        if sent_now:
            # Alone on the link: nobody will join a batch, so send now (a non-blocking
            # send, which cannot yield, so no timeout can cut the frame), before the
            # deadline's bookkeeping below: the peer works on it while we do that.
            # Nothing can answer before this greenlet waits.
            self._flush()
        if until is not None:
            deadlines = session.deadlines
            _heappush(deadlines, (until, qid))
            if until < self._sweep_at:
                self._arm_sweep(until)
            if len(deadlines) > session.deadline_room:
                session.compact_deadlines()
        if sent_now:
            pass
        elif len(wbuf) >= self._flush_at and not self._writing:
            self._flush_eagerly()
        elif self._event_io:
            if not self._flush_pending:
                # One flush per batch: it runs once every caller ready in this
                # turn of the loop has queued its frame, so they share a sendmsg.
                self._flush_pending = True
                self._run_callback(self._flush_callback)
        elif not self._wevent.is_set():
            self._wevent.set()
        inflight = len(pending)
        if inflight > self._peak_in_flight:
            self._peak_in_flight = inflight
        self.requests += 1
        if not self.requests & 1023:
            # Retune the eager-flush size to half the recent peak of requests in flight.
            self._flush_at = max(_EAGER_FLUSH, self._peak_in_flight // 2)
            self._peak_in_flight = 0
        try:
            raw = waiter.get()
        except BaseException as exc:
            self._bytes_in_flight -= size
            # Our RequestTimeout, a ConnectionLost, or a gevent.Timeout / kill
            # from outside: abandon this Qid only; the link stays healthy.
            abandoned = session.abandon(qid, waiter)
            if abandoned is not None:
                self._unqueue(data)
            if mark is not None:
                self._drop_mark(mark)
            if self.bus.wants("request.failed"):
                self.bus.emit(
                    "request.failed",
                    conn_id=self.conn_id,
                    qid=qid,
                    fid=fid,
                    latency=self.clock.now() - now,
                    error=exc,
                )
            raise
        self._bytes_in_flight -= size
        latency = (_monotonic() if self._real_clock else self.clock.now()) - now
        if st.emit_complete:
            self.bus.emit(
                "request.complete",
                conn_id=self.conn_id,
                qid=qid,
                fid=fid,
                latency=latency,
                bytes_out=size,
                bytes_in=len(raw[6]) + 24,
                code=raw[2],
            )
        if mark is not None:
            # Only requests with a trace context that a tracer listens for: the phases of a sampled
            # message (queued -> written to the kernel -> answer arrived), without an event per request.
            self.bus.emit(
                "request.traced",
                conn_id=self.conn_id,
                qid=qid,
                fid=fid,
                queued=now,
                written=mark[0],
                latency=latency,
                bytes_out=size,
                bytes_in=len(raw[6]) + 24,
                code=raw[2],
            )
        # raw = (qid, fid, code, tp, res, ver, body, headers)
        return make_response(raw[6], raw[2], raw[1], qid, raw[7], latency, self.conn_id, raw[3])

    def _flush_eagerly(self) -> None:
        """Hand a full batch to the kernel now, from the caller, without blocking.

        With every request of a batch queued before the writer runs, the peer
        would sit idle while this process builds the whole batch, and this
        process idle while the peer answers it. Flushing once half of the
        recent peak of requests in flight is queued (at least _EAGER_FLUSH
        frames; retuned every 1024 requests) keeps two batches in flight, so
        both sides work at once. It is a non-blocking send (it cannot
        yield, so no timeout can cut a frame); whatever the kernel does not
        take stays first in the buffer for the writer greenlet.
        """
        if self._event_io:
            self._flush()
            return
        stream = self._stream
        chunks, self._wbuf = self._wbuf, []
        data = b"".join(_flatten(chunks, len(chunks) * 2))
        try:
            n = stream.try_send(data) if stream is not None else 0
        except NexusError:
            n = 0  # the writer will meet the same error and report the loss
        if n < len(data):
            self._wbuf.insert(0, [memoryview(data)[n:]] if n else data)
            self._wevent.set()
        if n:
            self._sent(n, len(chunks) if n == len(data) else 0)

    def _sent(self, n: int, frames: int) -> None:
        """``n`` bytes (``frames`` whole frames) left the queue for the kernel."""
        self._sent_progress(n)
        st = self.iostats
        st.bytes_sent += n
        st.frames_sent += frames
        if self._unstamped:
            self._stamp_traced()
        if st.emit_io:
            self.bus.emit("io.sent", conn_id=self.conn_id, nbytes=n, frames=frames)

    def _stamp_traced(self) -> None:
        # Writes are coalesced: every traced request queued before this write went out with it (or its
        # first part did), so its "written" time is now. A frame split over writes gets its first one.
        t = _monotonic() if self._real_clock else self.clock.now()
        for mark in self._unstamped:
            mark[0] = t
        self._unstamped.clear()

    def _drop_mark(self, mark: list[float]) -> None:
        # By identity: two marks of the same time are equal lists.
        for i, m in enumerate(self._unstamped):
            if m is mark:
                del self._unstamped[i]
                return

    def _wake_writer(self) -> None:
        if not self._event_io:
            self._wevent.set()
        elif not self._flush_pending:
            self._flush_pending = True
            self._run_callback(self._flush_callback)

    def _flush_callback(self) -> None:
        """Hub callback: the batch queued in this turn of the loop goes out."""
        self._flush_pending = False
        self._flush()

    def _flush(self) -> None:
        """Hand the kernel what it takes of the queue now, in one scatter/gather send, never blocking.

        Runs in the hub (the flush callback, the write watcher) or in a caller
        (an eager flush): it cannot yield, so no timeout can cut a frame. What
        the kernel does not take stays first in the queue and the write
        watcher sends it when the socket can take more.
        """
        stream = self._stream
        wbuf = self._wbuf
        if stream is None or not wbuf or not self._event_io:
            return
        wwatch = self._wwatch
        waiting = wwatch.active  # the kernel was full: what it takes now proves the peer reads
        try:
            if len(wbuf) <= IOV_MAX and type(wbuf[-1]) is bytes and type(wbuf[0]) is bytes and self._wflat():
                n = stream.sendmsg_nowait(wbuf)
                if n == self._wbytes:
                    frames = len(wbuf)
                    wbuf.clear()
                else:
                    frames = _consume(wbuf, n)
            else:
                n, frames = self._send_mixed(stream, wbuf)
        except NexusError as exc:
            self._run_callback(self._lost, stream, exc)
            return
        except Exception as exc:  # a bug must fail the requests, never leave them hanging
            self._run_callback(self._internal_error, stream, "writer", exc)
            return
        if n:
            self._sent(n, frames)
            now = self.clock.now()
            if waiting:
                self.heartbeat.on_progress(now)
            self.heartbeat.on_activity(now)
        if wbuf:
            if not waiting:
                wwatch.start(self._flush)
        elif waiting:
            wwatch.stop()

    def _send_mixed(self, stream: Stream, wbuf: list[QueuedFrame]) -> tuple[int, int]:
        """Send queued frames of every kind in order until the kernel is full or the queue empty: ``(bytes, frames)``."""
        sent = frames = 0
        while wbuf:
            head = wbuf[0]
            if type(head) is _FileChunk:
                n, whole = self._send_file_chunk(stream, head)
                sent += n
                if not whole:
                    break
                del wbuf[0]
                frames += 1
                continue
            bufs = _flatten(wbuf, IOV_MAX)
            n = stream.sendmsg_nowait(bufs)
            sent += n
            frames += _consume(wbuf, n)
            if n < sum(map(len, bufs)):
                break
        return sent, frames

    def _send_file_chunk(self, stream: Stream, chunk: _FileChunk) -> tuple[int, bool]:
        """Send what the kernel takes of a file chunk's prefix and body: ``(bytes, whole)``."""
        sent = 0
        plen = len(chunk.prefix)
        if chunk.done < plen:
            n = stream.sendmsg_nowait([memoryview(chunk.prefix)[chunk.done :]])
            chunk.done += n
            sent += n
            if chunk.done < plen:
                return sent, False
        end = plen + chunk.count
        while chunk.done < end:
            n = stream.sendfile_nowait(chunk.file.fd, chunk.offset + chunk.done - plen, end - chunk.done)
            if n < 0:
                return sent, False
            if n == 0:
                # The frame announced bytes the file no longer has: the link is mid-frame and cannot go on.
                raise ConnectionLost(
                    f"{self.conn_id}: a file being sent shrank to {chunk.offset + chunk.done - plen:,} bytes while "
                    f"send_file was sending it; the link was closed mid-frame"
                )
            chunk.done += n
            sent += n
        chunk.file.release()
        return sent, True

    def _wflat(self) -> bool:
        """True when every queued frame is one ``bytes`` (small frames only): the queue is its own buffer list."""
        for e in self._wbuf:
            if type(e) is not bytes:
                return False
        return True

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
        """Stream a file to ``fid`` as bounded frames (:mod:`nexus_green.protocol.files`) and return the receiver's answer.

        On plain TCP each chunk's body goes from the file to the socket by
        ``os.sendfile``, in the kernel, when the socket can take it; over TLS
        (or ``io_greenlets``) chunks are read and sent. At most
        ``max_write_buffer`` bytes of the file are queued at once. ``timeout``
        (default ``request_timeout``) is one budget for the whole transfer.
        Refused in strict mode (it needs the header block). If the link is lost
        part-way, :class:`~nexus_green.errors.ConnectionLost` says so: the
        receiver holds part of the file at most; send it again.

        Example::

            >>> import pathlib, tempfile
            >>> from nexus_green.testing import EmbeddedServer, FID_FILE
            >>> with tempfile.TemporaryDirectory() as d:
            ...     src = pathlib.Path(d, "data.bin"); _ = src.write_bytes(b"x" * 300_000)
            ...     with EmbeddedServer(files_dir=d) as server, Connection(server.endpoint) as conn:
            ...         r = conn.send_file(src, FID_FILE, chunk_size=100_000, name="copy.bin")
            ...     r.code, pathlib.Path(d, "copy.bin").read_bytes() == b"x" * 300_000
            (200, True)
        """
        until, by_deadline = budget(self.options.request_timeout if timeout is DEFAULT else timeout, clock=self.clock)
        return self.send_file_until(path, fid, chunk_size, name, headers, until, by_deadline)

    def send_file_until(
        self,
        path: str | os.PathLike[str],
        fid: int,
        chunk_size: int,
        name: Optional[str],
        headers: Optional[Mapping[str, str]],
        until: Optional[float],
        by_deadline: bool = False,
    ) -> Response:
        """:meth:`send_file` with its budget already worked out (the Client calls this).

        Example::

            >>> Connection("tcp://127.0.0.1:9", options=ConnectionOptions(strict=True)).send_file_until(
            ...     "f", 9, 1024, None, None, None)
            Traceback (most recent call last):
            ...
            nexus_green.errors.LocalProtocolError: conn-...: strict mode cannot send a file (it needs the header block)
        """
        if self.options.strict:
            raise LocalProtocolError(f"{self.conn_id}: strict mode cannot send a file (it needs the header block)")
        chunk_offsets(0, chunk_size)  # a bad chunk_size is refused before the file is opened
        limit = self.options.max_frame_size
        if chunk_size > limit - _FILE_FRAME_ROOM:
            # A peer with the same frame limit would refuse the first chunk as a protocol error and
            # drop the link (losing every request on it): refuse here, before anything is sent.
            raise ValueError(
                f"chunk_size {chunk_size} leaves no room for a chunk's frame header and file headers within "
                f"max_frame_size {limit} (at most {limit - _FILE_FRAME_ROOM}): use a smaller chunk_size"
            )
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            offsets = chunk_offsets(size, chunk_size)
            base = {
                **(headers or {}),
                FILE_ID: uuid.uuid4().hex,
                FILE_SIZE: str(size),
                FILE_NAME: name if name is not None else os.path.basename(os.fspath(path)),
            }
            if not self.connected:
                self._wait_ready(until, by_deadline)
            stream = self._stream

            def still_linked() -> None:
                if self._stream is not stream:
                    raise ConnectionLost(
                        f"{self.conn_id} to {self.endpoint}: the link was lost while sending {os.fspath(path)!r}; "
                        "the receiver holds part of it at most: send it again"
                    ) from self.last_error

            shared = _SharedFile(os.dup(f.fileno())) if self._event_io else None
            queued: list[QueuedFrame] = []
            counted = 0
            self._sending_files += 1  # the link is busy though no chunk has a pending Qid (see idle)
            try:
                for off, count in offsets:
                    still_linked()
                    block = encode_header_block({**base, FILE_OFFSET: str(off)})
                    qid = self.session.take_qid()
                    self.session.forget(qid)  # nobody waits for a chunk's answer
                    entry: QueuedFrame
                    if shared is not None and self._event_io:
                        entry = _FileChunk(
                            encode_request(qid, fid, b"", header_block=block, body_length=count), shared, off, count
                        )
                    else:
                        data = os.pread(f.fileno(), count, off)
                        if len(data) != count:
                            raise ConnectionLost(
                                f"{os.fspath(path)!r} shrank while send_file was reading it (nothing queued for it was lost)"
                            )
                        entry = encode_request_parts(qid, fid, data, header_block=block)
                    n = _entry_len(entry)
                    try:
                        self._wait_for_room(n, fid, until, by_deadline)
                        still_linked()
                    except BaseException:
                        if type(entry) is _FileChunk:
                            entry.file.release()
                        raise
                    self._wbuf.append(entry)
                    self._wbytes += n
                    self._bytes_in_flight += n  # the pool spreads by it: a link busy with a file is heavy
                    counted += n
                    queued.append(entry)
                    self._wake_writer()
                still_linked()
                last = {**base, FILE_OFFSET: str(size), FILE_LAST: "1", FILE_CHUNKS: str(len(offsets))}
                return self.request_until(b"", fid, last, 0, until, by_deadline)
            except BaseException:
                for entry in queued:
                    self._unqueue(entry)  # chunks never started go back: nothing half-written
                raise
            finally:
                self._sending_files -= 1
                self._bytes_in_flight -= counted
                if shared is not None:
                    shared.release()

    def send(self, body: bytes = b"", fid: int = 0, *, headers: Optional[Mapping[str, str]] = None, tp: int = 0) -> int:
        """Fire and forget: queue one frame and return its Qid without waiting.

        A response to it, should the server send one, is discarded and counted
        in ``late_responses``.
        """
        until, by_deadline = budget(self.options.request_timeout, clock=self.clock)
        if self.lifecycle.state != CONNECTED:
            self._wait_ready(until, by_deadline)
        qid = self.session.take_qid()
        block = encode_header_block(headers) if headers else b""
        data = encode_request_parts(qid, fid, body, tp=tp, header_block=block)
        size = _entry_len(data)
        self._wait_for_room(size, fid, until, by_deadline)
        self._wbuf.append(data)
        self._wbytes += size
        self.session.forget(qid)
        self._wake_writer()
        return qid

    # ------------------------------------------------------------------ deadlines
    def _unqueue(self, data: QueuedFrame) -> bool:
        """Take a frame back out of the write queue if it is still whole there (then it was never sent)."""
        wbuf = self._wbuf
        for i, chunk in enumerate(wbuf):
            if chunk is data:
                if type(chunk) is _FileChunk:
                    if chunk.done:
                        return False
                    chunk.file.release()
                del wbuf[i]
                self._sent_progress(_entry_len(data))
                return True
        return False

    def _queue_control(self, frame: bytes) -> None:
        """Queue a heartbeat or heartbeat reply: tiny, never waits for room."""
        self._wbuf.append(frame)
        self._wbytes += len(frame)
        self._wake_writer()

    def _sent_progress(self, n: int) -> None:
        """``n`` queued bytes left the queue (handed to the kernel, or taken back): room for waiting callers."""
        self._wbytes -= n
        if self._room_q and self._wbytes < self._max_wbytes:
            self._room_q[0].set()

    def _write_progress(self, n: int) -> None:
        self._sent_progress(n)
        self.heartbeat.on_progress(self.clock.now())

    def _wait_for_room(self, size: int, fid: int, until: Optional[float], by_deadline: bool) -> None:
        """Wait, within the budget, until the write queue can take ``size`` more bytes (or is empty)."""
        if not self._room_q and not (self._wbytes and self._wbytes + size > self._max_wbytes):
            return  # room now, and nobody waiting ahead of us
        queue = self._room_q
        ev = Event()
        queue.append(ev)
        try:
            # Our turn (first in line) and room for us: a caller never passes one that waits.
            while queue[0] is not ev or (self._wbytes and self._wbytes + size > self._max_wbytes):
                ev.clear()
                if not wait_until(ev.wait, self.clock, until):
                    raise timeout_error(
                        by_deadline,
                        f"request fid={fid} to {self.endpoint}: the write queue stayed full ({self._wbytes:,} bytes "
                        f"queued, max_write_buffer={self._max_wbytes:,}) until the call's time ran out (not sent)",
                        phase="write",
                    )
                if not self.connected:
                    self._wait_ready(until, by_deadline)
        finally:
            if queue and queue[0] is ev:
                queue.popleft()
            else:
                queue.remove(ev)
            if queue and self._wbytes < self._max_wbytes:
                queue[0].set()  # the room we did not take (or gave up) is the next caller's turn

    def _arm_sweep(self, when: float) -> None:
        """(Re)arm the connection's one deadline timer for ``when`` (earlier than it was armed for)."""
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        self._sweep_timer = self._call_at(when, self._sweep, None)
        self._sweep_at = when

    def _disarm_sweep(self) -> None:
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
            self._sweep_timer = None
        self._sweep_at = _INF

    def _sweep(self, _: Any = None) -> None:
        """Timer function (in the hub): fail the requests whose deadline passed, and re-arm for the next one.

        It fails the requests due by the time it was armed for, not by now: a
        later deadline gets a timer of its own turn, armed after any timer its
        caller armed for the same moment (an outer ``@timeout`` of the call),
        and the failures run as a hub callback after the timers due now. So
        such an outer timer still fires first, as it did when every request
        had a timer of its own.
        """
        armed_for = self._sweep_at
        self._sweep_timer = None
        self._sweep_at = _INF
        session = self.session
        due = session.expired(armed_for)
        upcoming = session.next_deadline()
        if upcoming is not None:
            self._arm_sweep(upcoming)
        if due:
            # After the other timers due now: one its caller armed for the very same
            # moment still fires first (a request that left the table meanwhile is skipped).
            self._run_callback(self._expire_due, due)

    def _expire_due(self, due: list[int]) -> None:
        for qid in due:
            # Each throw runs its caller until it waits again (it may send another
            # request, which re-arms the timer if its deadline is earlier).
            self._expire(qid)

    def _expire(self, qid: int) -> None:
        """The request ``qid`` ran out of its budget (from the deadline timer, in the hub)."""
        p = self.session.abandon(qid)
        if p is None:
            return
        waited = self.clock.now() - p[2]
        if self._unqueue(p[4]):
            msg, phase = f"was still queued after {waited:.3f}s and was taken back (not sent)", "write"
        else:
            msg, phase = f"got no response in {waited:.3f}s", "response"
        p[0].throw(
            timeout_error(
                p[5],
                f"request qid={qid} fid={p[1]} to {self.endpoint} {msg} ({self.conn_id}; only this request was abandoned)",
                phase=phase,
            )
        )

    # ------------------------------------------------------------------ I/O greenlets
    def _write_loop(self, stream: Stream) -> None:
        wevent = self._wevent
        st = self.iostats
        try:
            while True:
                wevent.wait()
                wevent.clear()
                while self._wbuf and stream is self._stream:
                    chunks, self._wbuf = self._wbuf, []
                    first = chunks[0]
                    data = first if len(chunks) == 1 and type(first) is bytes else b"".join(_flatten(chunks, 1 << 30))
                    self._writing = True
                    try:
                        if len(data) <= _WRITE_SLICE:
                            stream.sendall(data)
                            self._sent_progress(len(data))
                        else:
                            # Once the socket buffers are full, every partial send the
                            # kernel takes proves the peer reads: liveness by progress
                            # (a hung peer stops it within a buffer's worth). It also
                            # frees room in the queue as it goes. A small write proves
                            # nothing: the kernel takes it whether the peer lives or not.
                            stream.send_reporting(data, self._write_progress)
                    finally:
                        self._writing = False
                    self.heartbeat.on_activity(self.clock.now())
                    st.bytes_sent += len(data)
                    st.frames_sent += len(chunks)
                    if self._unstamped:
                        self._stamp_traced()
                    if st.emit_io:
                        self.bus.emit("io.sent", conn_id=self.conn_id, nbytes=len(data), frames=len(chunks))
                    # An idle writer must not keep the last batch (a megabyte body, say) alive while it waits.
                    chunks = first = data = None  # type: ignore[assignment]
                if stream is not self._stream:
                    return
        except NexusError as exc:
            self._lost(stream, exc)
        except Exception as exc:  # a bug must fail the requests, never leave them hanging
            self._internal_error(stream, "writer", exc)

    def _internal_error(self, stream: Stream, where: str, exc: Exception) -> None:
        log.exception("%s: unexpected error in the %s greenlet", self.conn_id, where)
        lost = ConnectionLost(f"{self.conn_id} to {self.endpoint}: internal error in the {where}: {exc!r}")
        lost.__cause__ = exc
        self._lost(stream, lost)

    def _read_loop(self, stream: Stream, decoder: FrameDecoder) -> None:
        bufsize = self.options.recv_buffer_size
        run_callback = get_hub().loop.run_callback
        hb = self.heartbeat
        now = self.clock.now
        st = self.iostats
        # recv returns at once while data keeps arriving, so without a yield a
        # flood of pushes would hold the hub for seconds (GEVENT_NOTES).
        yield_at = _monotonic() + _READER_SLICE
        try:
            while True:
                if _monotonic() >= yield_at:
                    # A timer, not sleep(0): sleep(0) runs only the greenlets already
                    # ready, and the hub's timers (a 5 ms ticker) still waited 250 ms.
                    gevent.sleep(_YIELD)
                    yield_at = _monotonic() + _READER_SLICE
                data = stream.recv(bufsize)
                if not data:
                    raise ConnectionLost(
                        f"{self.endpoint} closed the connection ({self.conn_id}, "
                        f"{decoder.buffered} bytes of an incomplete frame pending)"
                    )
                st.bytes_received += len(data)
                frames = decoder.feed_raw(data)
                t = now()
                hb.on_activity(t, received=True)
                st.frames_received += len(frames)
                if st.emit_io:
                    self.bus.emit("io.received", conn_id=self.conn_id, nbytes=len(data), frames=len(frames))
                ready = self._dispatch(frames, t)
                if ready:
                    run_callback(_deliver, ready)
                # An idle reader must not keep the last answers alive while it waits in recv.
                data = frames = ready = None  # type: ignore[assignment]
        except RemoteProtocolError as exc:
            self._protocol_error(stream, decoder, exc)
        except NexusError as exc:
            self._lost(stream, exc)
        except Exception as exc:  # a bug must fail the requests, never leave them hanging
            self._internal_error(stream, "reader", exc)

    def _protocol_error(self, stream: Stream, decoder: FrameDecoder, exc: RemoteProtocolError) -> None:
        """The peer broke the framing: deliver the answers decoded before the bad bytes, then end the link."""
        if decoder.salvaged:
            self.iostats.frames_received += len(decoder.salvaged)
            answered = self._dispatch(decoder.salvaged, self.clock.now())
            if answered:
                self._run_callback(_deliver, answered)
        self.bus.emit("protocol.error", conn_id=self.conn_id, error=exc, offset=exc.offset)
        self._lost(stream, exc)

    def _on_readable(self, stream: Stream, decoder: FrameDecoder) -> None:
        """Read watcher callback (in the hub): receive, decode, and switch each answered caller in.

        Reads until the kernel has no more or ``_READER_SLICE`` has passed
        (the watcher is level-triggered: it runs again on the next turn of the
        loop if bytes are left), so a flood of pushes cannot hold the hub.
        Never blocks; errors end the link as the reader greenlet's do.
        """
        if stream is not self._stream:
            return
        scratch = self._scratch
        st = self.iostats
        hb = self.heartbeat
        now = _monotonic if self._real_clock else self.clock.now
        stop_at = _monotonic() + _READER_SLICE
        try:
            while True:
                wanted = decoder.payload_wanted
                if wanted and stream.available() >= wanted:
                    # A big frame's whole payload is in the kernel: one recv into a new
                    # bytes object, which becomes the body without a copy here (a raw
                    # socket's recv(n) gets that too; a buffer of our own costs a copy).
                    data = stream.recv_bytes_nowait(wanted)
                    small = False
                    more = True  # the kernel may hold more: go round again (within the slice)
                    if data is not None and len(data) == wanted:
                        n = wanted
                        st.bytes_received += n
                        frames = decoder.take_payload(data)
                    else:
                        # Never seen on TCP once FIONREAD counted the bytes; taken the usual way.
                        if data is None:
                            return  # nothing there after all: the next readable event comes back
                        if not data:
                            raise ConnectionLost(
                                f"{self.endpoint} closed the connection ({self.conn_id}, "
                                f"{decoder.buffered} bytes of an incomplete frame pending)"
                            )
                        n = len(data)
                        decoder.get_buffer(scratch)[:n] = data
                        st.bytes_received += n
                        frames = decoder.buffer_updated(n, scratch)
                else:
                    buf = decoder.get_buffer(scratch)
                    small = buf.obj is scratch  # else a big frame's own buffer: read all the kernel has of it
                    if small:
                        if decoder.last_big and decoder.buffered < 24:
                            # Big frames come in a row: read only the next prefix, so the
                            # body goes to its own buffer without a detour through the scratch.
                            buf = buf[: 24 - decoder.buffered]
                        elif len(buf) > self._read_size:
                            buf = buf[: self._read_size]
                    n = stream.recv_into_nowait(buf)
                    if n <= 0:
                        if n < 0:
                            return
                        raise ConnectionLost(
                            f"{self.endpoint} closed the connection ({self.conn_id}, "
                            f"{decoder.buffered} bytes of an incomplete frame pending)"
                        )
                    st.bytes_received += n
                    more = n == len(buf)  # a full read: the kernel may hold more
                    frames = decoder.buffer_updated(n, scratch)
                t = now()
                if frames:
                    st.frames_received += len(frames)
                    if st.emit_io:
                        self.bus.emit("io.received", conn_id=self.conn_id, nbytes=n, frames=len(frames))
                    ready = self._dispatch(frames, t)
                    if ready:
                        # We are the hub: switch each caller in now. The bookkeeping
                        # below waits: a lone caller sends its next request first.
                        _deliver(ready)
                        if stream is not self._stream:
                            return  # a caller closed the connection
                elif st.emit_io:
                    self.bus.emit("io.received", conn_id=self.conn_id, nbytes=n, frames=0)
                hb.on_received(t)
                if small:
                    # Reads sized to about a thousand frames: one read of tiny pushes
                    # (6,000 in 256 KiB) would hold the hub for its whole dispatch.
                    if len(frames) > _FRAMES_PER_READ:
                        if self._read_size > _MIN_READ:
                            self._read_size //= 2
                    elif len(frames) < _FRAMES_PER_READ // 4 and self._read_size < self.options.recv_buffer_size:
                        self._read_size *= 2
                if not more or _monotonic() >= stop_at:
                    return
        except RemoteProtocolError as exc:
            self._protocol_error(stream, decoder, exc)
        except NexusError as exc:
            self._lost(stream, exc)
        except Exception as exc:  # a bug must fail the requests, never leave them hanging
            self._internal_error(stream, "reader", exc)

    def _dispatch(self, frames: list[RawFrame], now: float) -> list[tuple[Waiter, RawFrame]]:
        """Hand one recv batch to the session; count its answers, act on the rest; return the answers to deliver."""
        st = self.iostats
        # Monitoring's cheap path: latencies (send to arrival) are gathered
        # here and reported in one io.stats event when the monitor asks (or
        # when STATS_MAX_LATENCIES are gathered), so the per-request path stays bare.
        record = st.sampler(self.bus) if st.emit_stats else None
        ready, non_ok, events = self.session.dispatch(frames, now, record)
        st.responses += len(ready)
        if non_ok:
            st.responses_non_ok += non_ok
        if events:
            self._on_events(events)
        if record is not None and st.full():
            self.flush_stats(now)
        return ready

    def _on_events(self, events: list[SessionEvent]) -> None:
        """Act on what the session found besides answers, in arrival order (in the reader greenlet)."""
        for ev in events:
            if isinstance(ev, Push):
                self._push(ev.frame)
            elif isinstance(ev, LateReply):
                self.bus.emit("request.late", conn_id=self.conn_id, qid=ev.qid)
            elif isinstance(ev, HeartbeatRequest):
                self._queue_control(heartbeat_frame(response=True))
            elif self._hb_sent_at is not None:  # a HeartbeatAck, and we sent a heartbeat
                rtt = self.heartbeat.on_ack(self.clock.now())
                self._hb_sent_at = None
                mark, self._hb_mark = self._hb_mark, [0.0]
                self.bus.emit("heartbeat.rtt", conn_id=self.conn_id, rtt=rtt, written=mark[0] or None)

    def flush_stats(self, now: Optional[float] = None) -> None:
        """Emit one ``io.stats``: the traffic since the last one (if anyone listens and anything moved).

        The monitor calls this at each tick and flush, the connection on close
        and whenever ``STATS_MAX_LATENCIES`` latencies are gathered; the
        counters themselves (``responses``, ``bytes_sent``, ...) are kept
        always and are exact at any moment. Example::

            >>> from nexus_green.events import EventBus
            >>> bus = EventBus()
            >>> off = bus.subscribe(lambda e: print(e.name, e.attrs["completed"]), prefix="io.stats")
            >>> conn = Connection("tcp://127.0.0.1:9", bus=bus)
            >>> conn.flush_stats()  # nothing moved: no event
            >>> conn.responses, conn.bytes_sent, conn.bytes_received
            (0, 0, 0)
        """
        self.iostats.flush(self.bus, now)

    def _push(self, frame: Frame) -> None:
        self.bus.emit("push.received", conn_id=self.conn_id, fid=frame.fid, qid=frame.qid)
        if self.on_push is not None:
            try:
                self.on_push(frame)
            except Exception:
                _rlog.exception(("push-callback", self.conn_id), "%s: push callback failed", self.conn_id)

    def _heartbeat_tick(self, stream: Stream) -> None:
        """Timer function (in the hub): send a heartbeat when the link was idle, declare it dead when one went unanswered.

        A timer on the clock's scheduler, not a greenlet: an idle connection
        holds none, and it must not block.
        """
        self._hb_timer = None
        if stream is not self._stream:
            return
        hb = self.heartbeat
        now = self.clock.now()
        if hb.awaiting_answer:
            # Liveness by progress: the peer acknowledging bytes that were
            # waiting in our kernel queue (it reads a big upload, slowly) is
            # an answer too, even while the ping waits behind that upload.
            moved = stream.send_progress()
            progress = self._hb_progress
            if moved is not None and progress is not None and progress[1] and moved[0] > progress[0]:
                hb.on_progress(now)
            self._hb_progress = moved
        decision = hb.poll(now)
        if decision.action == "send":
            hb.on_sent(now)
            self._hb_sent_at = now
            self._hb_progress = stream.send_progress()
            self._hb_mark[0] = 0.0
            self._drop_mark(self._hb_mark)
            self._unstamped.append(self._hb_mark)  # the write that takes the ping stamps it
            self._queue_control(heartbeat_frame())
            self.bus.emit("heartbeat.sent", conn_id=self.conn_id)
        elif decision.action == "dead":
            self.bus.emit("heartbeat.timeout", conn_id=self.conn_id)
            self._lost(
                stream,
                HeartbeatTimeout(f"{self.endpoint} did not answer a heartbeat within {hb.timeout}s ({self.conn_id})"),
            )
            return
        self._hb_timer = self.clock.call_at(
            now + max(0.001, decision.next_check_at - now), self._heartbeat_tick, stream
        )

    # ------------------------------------------------------------------ misc
    def __enter__(self) -> Connection:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def buffered(self) -> tuple[int, int]:
        """Bytes held in this connection's buffers now: ``(read, write)``.

        ``read`` is an incomplete frame waiting for the rest of its bytes;
        ``write`` is frames queued and not yet handed to the kernel. Monitoring
        sums them over connections (``buffers.read.bytes``,
        ``buffers.write.bytes``) once per tick.

        Example::

            >>> Connection("tcp://127.0.0.1:9").buffered()
            (0, 0)
        """
        decoder = self._decoder
        return (decoder.buffered if decoder is not None else 0, sum(map(_entry_len, self._wbuf)))

    def __repr__(self) -> str:
        return (
            f"<Connection {self.conn_id} {self.endpoint} state={self.lifecycle.state} "
            f"in_flight={len(self.session.pending)} requests={self.requests} reconnects={self.reconnects}>"
        )


def _deliver(batch: list[tuple[Waiter, RawFrame]]) -> None:
    """Hub callback: wake each waiting caller with its frame, in arrival order."""
    if len(batch) == 1:
        waiter, frame = batch[0]
        waiter.switch(frame)
        return
    for waiter, frame in batch:
        waiter.switch(frame)
