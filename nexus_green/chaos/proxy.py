"""ChaosProxy: a frame-aware, fault-injecting TCP proxy on gevent, built on the hostile-peer kit.

The proxy is a :class:`~nexus_green.testing.hostile.ListeningPeer` (same
lifecycle, counters, bounded ``wait_for`` and ``with`` block as every hostile
peer): each accepted client connection gets an upstream connection and a
*link* with two pumps. A pump reads bytes, cuts them into NexusKit frames
(:class:`~nexus_green.protocol.frames.FrameDecoder`), asks the
:class:`~nexus_green.chaos.faults.FaultInjector` what to do with each frame,
and hands the frame's original bytes to the writer of the other side. A
writer sends frames when they are due (latency keeps order, like TCP),
and applies the stream faults (throttle, sliced writes) as it sends. Bytes
that break the framing are forwarded untouched from then on (the proxy is
never the one that corrupts a stream unless a fault says so).

What the client really sent is counted at the proxy (``requests_seen`` and
the bounded ``requests`` record), before any fault: a duplicate the proxy
made is never blamed on the client. While a ``service_down`` fault is
active the proxy's port stays bound without listening
(:class:`~nexus_green.testing.hostile.RefusingPort`), so connects are refused
and nobody else takes the port; when it is removed the proxy listens on the
same port again.

Example::

    >>> from nexus_green import Client
    >>> from nexus_green.testing import EmbeddedServer
    >>> from nexus_green.chaos import ChaosProxy, error
    >>> with EmbeddedServer() as server, ChaosProxy(server) as proxy, Client(proxy.url, raise_for_code=False) as c:
    ...     with proxy.injector.injected(error(code=503, fid=1)):
    ...         c.request(b"a", fid=1).code
    ...     c.request(b"b", fid=1).code, proxy.requests_seen, server.frames_received
    503
    (200, 2, 1)
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Optional, Union

import gevent
from gevent import socket as gsocket
from gevent.event import Event

from ..errors import RemoteProtocolError
from ..greenlets import spawn
from ..protocol.frames import DEFAULT_MAX_FRAME_SIZE, TP_HEARTBEAT, Frame, FrameDecoder, encode_frame
from ..testing.hostile import ListeningPeer, RefusingPort
from .faults import Action, FaultInjector

__all__ = ["ChaosProxy", "UPSTREAM", "DOWNSTREAM"]

log = logging.getLogger("nexus_green.chaos.proxy")

UPSTREAM = "upstream"
DOWNSTREAM = "downstream"
_RECV = 65536
_LINGER_RESET = struct.pack("ii", 1, 0)
_FLUSH_ON_EOF = 1.0  # seconds a writer may take to send what it holds when its source closed
_ERROR_BODY = b"chaos proxy: injected error"


def _close(sock: Any, reset: bool = False) -> None:
    try:
        if reset:
            sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, _LINGER_RESET)
        sock.close()
    except OSError:  # pragma: no cover - close() of a socket object does not fail on Linux
        pass


class _Writer:
    """Sends one side's frames when due, applying throttle and sliced writes; a greenlet of its own."""

    def __init__(self, link: _Link, sock: Any, direction: str) -> None:
        self.link = link
        self.sock = sock
        self.direction = direction
        self.queue: deque[tuple[float, bytes]] = deque()
        self.last_due = 0.0
        self.wake = Event()
        self.eof = False
        self.greenlet = spawn(self.run, name=f"chaos.writer.{direction}")

    def put(self, data: bytes, delay: float = 0.0) -> None:
        due = max(time.monotonic() + delay, self.last_due)
        self.last_due = due
        self.queue.append((due, data))
        self.wake.set()

    def run(self) -> None:
        try:
            while True:
                while not self.queue:
                    if self.eof:  # the source closed and everything it sent is out: pass the EOF on
                        self.sock.shutdown(gsocket.SHUT_WR)
                        return
                    self.wake.clear()
                    self.wake.wait()
                due, data = self.queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    gevent.sleep(wait)
                    continue
                self.queue.popleft()
                if not self.link.frozen:
                    self.send(data)
        except OSError as exc:
            log.debug("chaos writer %s: %s", self.direction, exc)
            self.link.close()

    def send(self, data: bytes) -> None:
        proxy = self.link.proxy
        injector = proxy.injector
        throttles = injector.active("throttle", self.direction)
        slices = injector.active("slice", self.direction)
        proxy.bytes_forwarded[self.direction] += len(data)
        if not throttles and not slices:
            self.sock.sendall(data)
            return
        rate = min(t.rate for t in throttles) if throttles else 0.0
        chunk = min(s.chunk for s in slices) if slices else len(data)
        gap = max(s.chunk_delay for s in slices) if slices else 0.0
        if rate:
            chunk = min(chunk, max(1, int(rate / 50)))  # about 20 ms of bytes per write
        for start in range(0, len(data), chunk):
            piece = data[start : start + chunk]
            self.sock.sendall(piece)
            pause = max(gap, len(piece) / rate if rate else 0.0)
            if pause:
                gevent.sleep(pause)


class _Link:
    """One proxied connection: client socket, upstream socket, a writer each way, and its fault state."""

    def __init__(self, proxy: ChaosProxy, client: Any, server: Any) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.frozen = False
        self.closed = False
        self.writers = {UPSTREAM: _Writer(self, server, UPSTREAM), DOWNSTREAM: _Writer(self, client, DOWNSTREAM)}
        self.held: dict[str, Optional[tuple[bytes, float]]] = {UPSTREAM: None, DOWNSTREAM: None}
        self.timers: list[gevent.Greenlet] = []

    def freeze(self) -> None:
        if not self.frozen and not self.closed:
            self.frozen = True
            self.proxy.links_frozen += 1
            for writer in self.writers.values():
                writer.queue.clear()

    def close(self, *, reset: bool = False, flush: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        current = gevent.getcurrent()
        if flush:
            for writer in self.writers.values():
                writer.eof = True
                writer.wake.set()
                if writer.greenlet is not current:
                    writer.greenlet.join(timeout=_FLUSH_ON_EOF)
        for g in [w.greenlet for w in self.writers.values()] + self.timers:
            if g is not current:
                g.kill(block=False)
        _close(self.server, reset)
        _close(self.client, reset)
        self.proxy.notify_changed()

    # ------------------------------------------------------------------ reading
    def pump(self, direction: str) -> bool:
        """Read one side until EOF (True) or an error or the link's close (False), deciding each frame's fate."""
        proxy = self.proxy
        injector = proxy.injector
        src = self.client if direction == UPSTREAM else self.server
        decoder = FrameDecoder(max_frame_size=proxy.max_frame_size)
        buf = bytearray()
        passthrough = False
        while not self.closed:
            while self.frozen or injector.active("stop_reading", direction):
                injector.changed.wait(0.25)
                if self.closed:
                    return False
            try:
                data = src.recv(_RECV)
            except OSError as exc:
                log.debug("chaos pump %s: %s", direction, exc)
                self.close()
                return False
            if not data:
                held, self.held[direction] = self.held[direction], None
                writer = self.writers[direction]
                if held is not None:
                    writer.put(*held)
                writer.eof = True
                writer.wake.set()
                return True
            if self.frozen:
                continue
            proxy.bytes_received[direction] += len(data)
            if passthrough:
                self.writers[direction].put(data)
                continue
            try:
                frames = decoder.feed(data)
            except RemoteProtocolError as exc:
                proxy.protocol_errors += 1
                log.debug("chaos pump %s: the stream broke (%s); forwarding bytes as they are", direction, exc)
                passthrough = True
                self.writers[direction].put(bytes(buf) + data)
                continue
            buf += data
            pos = 0
            for frame in frames:
                size = 4 + int.from_bytes(buf[pos : pos + 4], "big")
                self.handle(direction, frame, bytes(buf[pos : pos + size]))
                pos += size
                if self.closed:
                    return False
            del buf[:pos]
            if len(data) == _RECV:
                gevent.sleep(1e-6)  # more is waiting: give the hub a turn (nobody holds the hub)
        return False

    def handle(self, direction: str, frame: Frame, raw: bytes) -> None:
        """Apply the injector's decision to one frame."""
        proxy = self.proxy
        proxy.frames_received[direction] += 1
        if direction == UPSTREAM and not frame.res and not frame.tp & TP_HEARTBEAT:
            proxy.requests_seen += 1
            proxy.requests.append(frame)
        actions = proxy.injector.decide(direction, frame)
        if not actions:
            self._forward(direction, raw, 0.0)
            return
        delay, copies, hold = 0.0, 1, -1.0
        for action in actions:
            kind = action.kind
            if kind == "blackhole" or kind == "drop":
                proxy.frames_dropped += 1
                return
            if kind in ("close", "reset"):
                proxy.links_cut[kind] += 1
                self.close(reset=kind == "reset")
                return
            if kind == "error":
                proxy.errors_injected += 1
                answer = Frame(qid=frame.qid, fid=frame.fid, code=action.code, res=1, body=_ERROR_BODY)
                self.writers[DOWNSTREAM].put(encode_frame(answer))
                return
            self._apply(action, direction, frame)
            if kind in ("latency", "slow_response"):
                delay += action.delay
                proxy.frames_delayed += 1
            elif kind == "duplicate":
                copies += 1
                proxy.frames_duplicated += 1
            elif kind == "reorder":
                hold = action.hold
        if hold >= 0 and self.held[direction] is None:
            proxy.frames_reordered += 1
            self.held[direction] = (raw * copies, delay)
            self.timers.append(spawn(self._release_later, direction, hold, name="chaos.reorder"))
            return
        self._forward(direction, raw * copies, delay)

    def _apply(self, action: Action, direction: str, frame: Frame) -> None:
        if action.kind == "push_flood" and action.count:
            proxy = self.proxy
            push = encode_frame(Frame(qid=0, fid=frame.fid, body=b"chaos push"))
            self.writers[DOWNSTREAM].put(push * action.count)
            proxy.pushes_injected += action.count

    def _forward(self, direction: str, data: bytes, delay: float) -> None:
        writer = self.writers[direction]
        writer.put(data, delay)
        held, self.held[direction] = self.held[direction], None
        if held is not None:
            writer.put(held[0], held[1])

    def _release_later(self, direction: str, hold: float) -> None:
        gevent.sleep(hold)
        self.timers.remove(gevent.getcurrent())
        held, self.held[direction] = self.held[direction], None
        if held is not None and not self.closed:
            self.writers[direction].put(held[0], held[1])


Address = Union[tuple[str, int], Any]


class ChaosProxy(ListeningPeer):
    """A fault-injecting proxy in front of ``upstream`` (an address, or anything with ``.address``).

    ``injector`` (a :class:`~nexus_green.chaos.faults.FaultInjector`, a new
    one by default) decides what happens to each frame; change it at any
    time. ``upstream`` is resolved at each connect, so a
    :class:`~nexus_green.testing.RestartableServer` may restart behind it.
    ``connect_timeout`` bounds the upstream connect; when it fails the
    client's connection is reset (``upstream_failures`` counts it).

    Counters (``repr`` and :meth:`counters`): ``accepted``, ``connections``,
    ``requests_seen`` (requests as the client sent them), ``frames_dropped``,
    ``frames_delayed``, ``frames_duplicated``, ``frames_reordered``,
    ``errors_injected``, ``pushes_injected``, ``links_frozen``, ``closes``,
    ``resets``, ``refusals`` (times the service went down),
    ``upstream_failures``, ``protocol_errors``; per direction
    ``frames_received``, ``bytes_received`` and ``bytes_forwarded``.

    Example::

        >>> from nexus_green.testing import EmbeddedServer
        >>> from nexus_green.chaos import drop
        >>> with EmbeddedServer() as server, ChaosProxy(server.address) as proxy:
        ...     _ = proxy.injector.add(drop(direction="downstream", probability=0.5, seed=4))
        ...     proxy.counters()["frames_dropped"]
        0
    """

    def __init__(
        self,
        upstream: Address,
        *,
        injector: Optional[FaultInjector] = None,
        host: str = "127.0.0.1",
        port: int = 0,
        connect_timeout: float = 5.0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        record: int = 10_000,
    ) -> None:
        super().__init__(host=host, port=port)
        self._upstream = upstream
        self.injector = injector if injector is not None else FaultInjector()
        self.connect_timeout = connect_timeout
        self.max_frame_size = max_frame_size
        self.links: set[_Link] = set()
        self.requests: deque[Frame] = deque(maxlen=record)
        self.requests_seen = 0
        self.frames_received = {UPSTREAM: 0, DOWNSTREAM: 0}
        self.bytes_received = {UPSTREAM: 0, DOWNSTREAM: 0}
        self.bytes_forwarded = {UPSTREAM: 0, DOWNSTREAM: 0}
        self.frames_dropped = 0
        self.frames_delayed = 0
        self.frames_duplicated = 0
        self.frames_reordered = 0
        self.errors_injected = 0
        self.pushes_injected = 0
        self.links_frozen = 0
        self.links_cut = {"close": 0, "reset": 0}
        self.refusals = 0
        self.upstream_failures = 0
        self.protocol_errors = 0
        self._placeholder: Optional[RefusingPort] = None
        self._down = False
        self._unsubscribe: Optional[Callable[[], None]] = None

    @property
    def upstream(self) -> tuple[str, int]:
        """The upstream ``(host, port)`` now.

        >>> ChaosProxy(("127.0.0.1", 7600)).upstream
        ('127.0.0.1', 7600)
        """
        address = getattr(self._upstream, "address", self._upstream)
        return (str(address[0]), int(address[1]))

    @property
    def down(self) -> bool:
        """True while a service-down fault keeps the port refusing.

        >>> ChaosProxy(("127.0.0.1", 7600)).down
        False
        """
        return self._down

    def counters(self) -> dict[str, int]:
        """Every counter by name (see the class docstring)."""
        return {
            **super().counters(),
            "requests_seen": self.requests_seen,
            "frames_dropped": self.frames_dropped,
            "frames_delayed": self.frames_delayed,
            "frames_duplicated": self.frames_duplicated,
            "frames_reordered": self.frames_reordered,
            "errors_injected": self.errors_injected,
            "pushes_injected": self.pushes_injected,
            "links_frozen": self.links_frozen,
            "closes": self.links_cut["close"],
            "resets": self.links_cut["reset"],
            "refusals": self.refusals,
            "upstream_failures": self.upstream_failures,
            "protocol_errors": self.protocol_errors,
            **{f"frames_{d}": n for d, n in self.frames_received.items()},
            **{f"bytes_{d}": n for d, n in self.bytes_forwarded.items()},
        }

    def count_requests(self, predicate: Callable[[Frame], bool]) -> int:
        """How many recorded client requests satisfy ``predicate`` (what the client sent, before any fault).

        ``proxy.count_requests(lambda f: f.body == b"charge-42") == 1`` proves
        the client sent that request once, whatever the proxy then duplicated.

            >>> ChaosProxy(("127.0.0.1", 1)).count_requests(lambda f: True)
            0
        """
        return sum(1 for frame in self.requests if predicate(frame))

    # ------------------------------------------------------------------ lifecycle
    def _start(self) -> None:
        super()._start()
        self._unsubscribe = self.injector.on_change(self._sync)
        self._sync()

    def _sync(self) -> None:
        """Bring the link faults in line with the injector: service down/up, freeze links."""
        if self._state == "closed":
            return
        if self.injector.down() and not self._down:
            self._go_down()
        elif not self.injector.down() and self._down:
            self._come_up()
        if self.injector.link_frozen():
            for link in list(self.links):
                link.freeze()

    def _go_down(self) -> None:
        self.refusals += 1
        self._down = True
        if self._acceptor is not None:
            self._acceptor.kill(block=True, timeout=2)
            self._acceptor = None
        for link in list(self.links):
            link.close()
        for sock in list(self._conns):  # accepted, not linked yet
            _close(sock, reset=True)
        self._listener.close()
        try:
            self._placeholder = RefusingPort(host=self.host, port=self.port).start()
        except OSError as exc:  # pragma: no cover - the port is still refused (nothing listens), just not held
            log.warning("%r: cannot hold port %d while down: %s", self, self.port, exc)
        self.notify_changed()

    def _come_up(self) -> None:
        self._down = False
        placeholder, self._placeholder = self._placeholder, None
        if placeholder is not None:
            placeholder.close()
        super()._start()
        self.notify_changed()

    def _close(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
        if self._placeholder is not None:
            self._placeholder.close()
            self._placeholder = None
        for link in list(self.links):
            link.close()
        super()._close()

    # ------------------------------------------------------------------ serving
    def serve(self, sock: Any) -> None:
        """Connect upstream and pump both ways through the injector until either side closes."""
        if self.injector.down():  # accepted just before the listener closed
            _close(sock, reset=True)
            return
        try:
            server = gsocket.create_connection(self.upstream, timeout=self.connect_timeout)
        except OSError as exc:
            self.upstream_failures += 1
            log.debug("%r: upstream %s: %s", self, self.upstream, exc)
            _close(sock, reset=True)
            return
        server.settimeout(None)
        server.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        link = _Link(self, sock, server)
        self.links.add(link)
        if self.injector.link_frozen():
            link.freeze()
        downstream = spawn(link.pump, DOWNSTREAM, name="chaos.pump.downstream")
        try:
            if link.pump(UPSTREAM):  # the client half-closed: the server may still answer
                downstream.join()
        finally:
            downstream.kill(block=True, timeout=2)
            link.close(flush=True)
            self.links.discard(link)
