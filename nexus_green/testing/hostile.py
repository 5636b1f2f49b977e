"""Hostile peers on raw sockets: the servers a client meets on a bad day.

One kit, used by the request-path tests and meant as the base of a chaos
proxy. Every peer listens (or refuses) on an OS-chosen loopback port, stands
for its address (``.host``, ``.port``, ``.url``, and it unpacks as
``(host, port)``), keeps counters that its ``repr`` states, waits with a
bound (:meth:`HostilePeer.wait_for`), and is a context manager whose exit
stops every greenlet and closes every socket it started. Sockets come from
``gevent.socket`` explicitly, so the kit behaves the same with or without
``gevent.monkey.patch_all()``.

======================  ====================================================================
peer                    what a client sees
======================  ====================================================================
``refusing_port``       connect refused (RST): a port bound but never listening
``blackhole``           connect hangs: the listener's accept queue is full, SYNs are dropped
``accept_and_close``    connected, then EOF (or RST) at once or after N bytes were read
``accept_and_stall``    connected, then nothing: no byte read or sent (a TLS handshake stalls)
``silent_peer``         frames are read and recorded, never answered
``slow_reader``         frames are read at a given byte rate: writes back up
``frame_peer``          each frame is answered with what ``handler(frame)`` returns
``scripted_peer``       ``script(sock)`` runs for each connection
``echo_peer``           every byte is sent back
``RestartableServer``   an EmbeddedServer (or any peer above) that can be killed and restarted
======================  ====================================================================

The lowercase names are the classes themselves (``silent_peer is SilentPeer``),
spelled the way a ``with`` statement reads. A ``frame_peer`` handler answers
with :class:`Frame` objects (:func:`response_to` builds the usual answer), raw
bytes, ``Pause(seconds)``, ``CLOSE`` or ``RESET``. A new peer subclasses
:class:`ListeningPeer` and overrides :meth:`ListeningPeer.serve`; every
listening peer takes ``host`` and ``port``, so :class:`RestartableServer` can
restart any of them. The chaos proxy (:class:`nexus_green.chaos.ChaosProxy`,
docs/chaos.md) is such a peer: it forwards frames to a real server through
run-time faults, and holds its port with a :class:`RefusingPort` while "down".

What was verified about the blackhole on Linux 6.18 (loopback, IPv4 and IPv6,
``tcp_syncookies=1``, ``tcp_abort_on_overflow=0``): ``listen(n)`` queues
``n + 1`` connections that are never accepted; the next SYN is dropped (the
kernel's ListenOverflows and ListenDrops counters rise once per SYN and per
retransmission, which this kernel sends at 1 s intervals,
``tcp_syn_linear_timeouts=4``); a connect with an 8 s timeout was still
pending when it expired, and one with no timeout failed with ETIMEDOUT after
134 s (``tcp_syn_retries=6``). The queue length is read from ``TCP_INFO`` on the
listener, so filling it takes no guessing and no waiting; where ``TCP_INFO``
is missing, a connect that does not complete within ``fill_timeout`` marks
the queue as full.

Example::

    >>> from gevent import socket
    >>> with silent_peer() as peer:
    ...     c = socket.create_connection(peer.address, timeout=5)
    ...     c.sendall(encode_frame(Frame(qid=7, fid=1, body=b"hi")))
    ...     peer.wait_for(lambda p: p.frames_received == 1, timeout=5)
    ...     c.close()
    ...     [f.qid for f in peer.frames]
    [7]
"""

from __future__ import annotations

import logging
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, Union

import gevent
from gevent import socket as gsocket
from gevent.event import Event

from ..errors import RemoteProtocolError
from ..greenlets import spawn
from ..protocol.frames import DEFAULT_MAX_FRAME_SIZE, Frame, FrameDecoder, encode_frame, make_frame
from .server import EmbeddedServer

__all__ = [
    "HostilePeer",
    "ListeningPeer",
    "RefusingPort",
    "Blackhole",
    "AcceptAndClose",
    "AcceptAndStall",
    "SilentPeer",
    "SlowReader",
    "FramePeer",
    "ScriptedPeer",
    "EchoPeer",
    "RestartableServer",
    "refusing_port",
    "blackhole",
    "accept_and_close",
    "accept_and_stall",
    "silent_peer",
    "slow_reader",
    "frame_peer",
    "scripted_peer",
    "echo_peer",
    "Pause",
    "CLOSE",
    "RESET",
    "response_to",
    "settle_io",
]

log = logging.getLogger("nexus_green.testing.hostile")


def settle_io(check: Callable[[], Any], timeout: float = 5.0) -> bool:
    """Yield until ``check()`` is true or ``timeout`` real seconds pass; True if it became true.

    For tests on a :class:`~nexus_green.clock.FakeClock`: it yields with
    ``gevent.sleep(0)``, never a real sleep, so the hub never idles and the
    FakeClock holds still while loopback I/O (a peer closing, a reader
    noticing) takes effect. A real sleep would let the clock jump.

    Example::

        >>> import gevent
        >>> done = []
        >>> _ = gevent.spawn(done.append, 1)
        >>> settle_io(lambda: done == [1], timeout=1), settle_io(lambda: False, timeout=0.01)
        (True, False)
    """
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            return False
        gevent.sleep(0)
    return True


_P = TypeVar("_P", bound="HostilePeer")
_LOOPBACK = "127.0.0.1"
_RECV = 65536
_SO_LINGER_RESET = struct.pack("ii", 1, 0)  # close() sends RST instead of FIN
_ERRORS_KEPT = 100


def _family(host: str) -> int:
    return gsocket.AF_INET6 if ":" in host else gsocket.AF_INET


def _close_quietly(sock: Any) -> None:
    try:
        sock.close()
    except OSError:  # pragma: no cover - close() of a socket object does not fail on Linux
        pass


class HostilePeer:
    """What every peer of the kit has: an address, counters, bounded waits, a ``with`` block.

    ``start()`` binds (and returns the peer), ``close()`` releases everything
    and is idempotent; ``with`` does both. The peer stands for its address:
    ``host, port = peer`` and ``socket.create_connection(peer)`` work, so code
    written for an address tuple takes a peer unchanged.

    Example::

        >>> with refusing_port() as peer:
        ...     host, port = peer
        ...     peer.url == f"tcp://{host}:{port}" and peer.address == (host, port)
        True
    """

    def __init__(self, host: str = _LOOPBACK, port: int = 0) -> None:
        self.host = host
        self.port = port
        self._state = "new"
        self._changed = Event()

    # ------------------------------------------------------------------ address
    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``: what ``socket.connect`` takes."""
        return self.host, self.port

    @property
    def url(self) -> str:
        """``tcp://host:port`` (IPv6 hosts in brackets), what ``Client`` takes."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"

    def __iter__(self) -> Iterator[Any]:
        return iter(self.address)

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> Any:
        return self.address[index]

    # ------------------------------------------------------------------ counters and waits
    def counters(self) -> dict[str, int]:
        """The peer's counters by name (what ``repr`` shows)."""
        return {}

    def notify_changed(self) -> None:
        """Wake every :meth:`wait_for`: a peer written on this class calls it after its counters move.

        Example::

            >>> peer = HostilePeer()
            >>> peer.notify_changed()  # nobody waits: nothing happens
        """
        changed, self._changed = self._changed, Event()  # swap in a fresh event, set the old one
        changed.set()

    def wait_for(self, condition: Callable[[Any], bool], timeout: float = 5.0) -> None:
        """Block (cooperatively) until ``condition(peer)`` is true; ``TimeoutError`` after ``timeout`` seconds.

        The condition is checked whenever a counter moves, and at least every
        50 ms. The error message carries the peer's ``repr``. Example::

            >>> with accept_and_stall() as peer:
            ...     peer.wait_for(lambda p: p.accepted == 1, timeout=0.1)
            Traceback (most recent call last):
            ...
            TimeoutError: condition not met within 0.1 s: <AcceptAndStall tcp://127.0.0.1:... open accepted=0 connections=0 closed=0 errors=0>
        """
        deadline = time.monotonic() + timeout
        while not condition(self):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"condition not met within {timeout} s: {self!r}")
            self._changed.wait(min(remaining, 0.05))

    # ------------------------------------------------------------------ lifecycle
    def start(self: _P) -> _P:
        """Bind (and listen, and serve); returns the peer. Idempotent."""
        if self._state == "new":
            self._start()
            self._state = "open"
        return self

    def _start(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Stop every greenlet and close every socket the peer started (idempotent)."""
        if self._state == "closed":
            return
        was_open, self._state = self._state == "open", "closed"
        if was_open:
            self._close()
        self.notify_changed()

    def _close(self) -> None:
        raise NotImplementedError

    def __enter__(self: _P) -> _P:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        figures = "".join(f" {name}={value}" for name, value in self.counters().items())
        return f"<{type(self).__name__} {self.url} {self._state}{figures}>"


class RefusingPort(HostilePeer):
    """A port where nothing listens: every connect is refused (the kernel answers RST).

    The port is bound and never listened on, and it stays bound until the
    peer closes, so no other program can take it in the meantime (a port that
    was merely bound and released could be reused by anyone at once). A
    given ``port`` is bound with ``SO_REUSEADDR`` (it may hold connections in
    TIME_WAIT): :class:`RestartableServer` holds its port this way while down.

    Example::

        >>> from gevent import socket
        >>> with refusing_port() as peer:
        ...     socket.create_connection(peer.address, timeout=5)
        Traceback (most recent call last):
        ...
        ConnectionRefusedError: [Errno 111] Connection refused
    """

    def __init__(self, *, host: str = _LOOPBACK, port: int = 0) -> None:
        super().__init__(host, port)
        self._sock: Any = None

    def _start(self) -> None:
        sock = gsocket.socket(_family(self.host), gsocket.SOCK_STREAM)
        try:
            if self.port:
                sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self.port = sock.getsockname()[1]

    def _close(self) -> None:
        _close_quietly(self._sock)


class ListeningPeer(HostilePeer):
    """Base of the peers that listen: an accept loop, one greenlet per connection running :meth:`serve`.

    Subclasses override ``serve(sock)``; the socket is closed when it returns
    or raises. ``close()`` kills the accept loop and every ``serve`` greenlet
    (with ``GreenletExit``, so a ``serve`` must release what it opens in a
    ``finally``), then closes every socket. An exception from ``serve`` is
    kept in ``errors`` (the last 100) and logged; it never reaches the hub.

    Counters: ``accepted``, ``connections`` (open now), ``closed``, ``errors``.
    ``rcvbuf`` sets ``SO_RCVBUF`` on the listener, which accepted sockets
    inherit (a small window makes a slow reader push back at once).

    Example::

        >>> from gevent import socket
        >>> class Greeter(ListeningPeer):
        ...     def serve(self, sock):
        ...         sock.sendall(b"hello")
        >>> with Greeter() as peer, socket.create_connection(peer.address, timeout=5) as c:
        ...     c.recv(5)
        b'hello'
    """

    accepts = True  # False: listen but never accept (Blackhole)

    def __init__(
        self, *, host: str = _LOOPBACK, port: int = 0, backlog: int = 128, rcvbuf: Optional[int] = None
    ) -> None:
        super().__init__(host, port)
        self.backlog = backlog
        self.rcvbuf = rcvbuf
        self.accepted = 0
        self.closed = 0
        self.errors: deque[BaseException] = deque(maxlen=_ERRORS_KEPT)
        self._listener: Any = None
        self._acceptor: Optional[gevent.Greenlet] = None
        self._tasks: set[gevent.Greenlet] = set()
        self._conns: set[Any] = set()

    @property
    def connections(self) -> int:
        """Accepted connections that are still open."""
        return len(self._conns)

    def counters(self) -> dict[str, int]:
        """``accepted``, ``connections``, ``closed``, ``errors`` (subclasses add theirs)."""
        return {
            "accepted": self.accepted,
            "connections": self.connections,
            "closed": self.closed,
            "errors": len(self.errors),
        }

    def _start(self) -> None:
        sock = gsocket.socket(_family(self.host), gsocket.SOCK_STREAM)
        try:
            # A restarted server binds the port its predecessor left in TIME_WAIT.
            sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
            if self.rcvbuf is not None:
                sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_RCVBUF, self.rcvbuf)
            sock.bind((self.host, self.port))
            sock.listen(self.backlog)
            self.port = sock.getsockname()[1]
        except OSError:
            sock.close()
            raise
        self._listener = sock
        if self.accepts:
            self._acceptor = spawn(self._accept_loop, name=f"testing.{type(self).__name__}.accept")

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError as exc:  # the listener was closed under us: stop accepting
                log.debug("%r stops accepting: %s", self, exc)
                return
            self.accepted += 1
            self._conns.add(sock)
            self._tasks.add(spawn(self._run, sock, name=f"testing.{type(self).__name__}.serve"))
            self.notify_changed()

    def _run(self, sock: Any) -> None:
        try:
            sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
            self.serve(sock)
        except Exception as exc:
            self.errors.append(exc)
            if isinstance(exc, OSError):  # the client went away: routine for a hostile peer
                log.debug("%r: %r", self, exc)
            else:
                log.warning("%r: serve() failed", self, exc_info=True)
        finally:
            self._conns.discard(sock)
            _close_quietly(sock)
            self.closed += 1
            self._tasks.discard(gevent.getcurrent())
            self.notify_changed()

    def serve(self, sock: Any) -> None:
        """Handle one accepted connection (override); the socket is closed when this returns."""
        raise NotImplementedError

    def _close(self) -> None:
        # The accept loop first, so that no serve greenlet starts after the snapshot below.
        if self._acceptor is not None:
            self._acceptor.kill(block=True, timeout=2)
        current = gevent.getcurrent()  # close() may be called from a serve greenlet
        gevent.killall([g for g in self._tasks if g is not current], block=True, timeout=2)
        # Greenlets killed before they ran never closed their socket.
        for sock in list(self._conns):
            _close_quietly(sock)
        self._conns.clear()
        _close_quietly(self._listener)

    def wait_accepted(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``n`` connections were accepted (``TimeoutError`` after ``timeout``).

        Example::

            >>> from gevent import socket
            >>> with accept_and_stall() as peer, socket.create_connection(peer.address, timeout=5):
            ...     peer.wait_accepted(1)
            ...     peer.connections
            1
        """
        self.wait_for(lambda p: p.accepted >= n, timeout)


def _accept_queue(listener: Any) -> Optional[tuple[int, int]]:
    """``(queued, limit)`` of a listening socket from Linux ``TCP_INFO``; None where it is not available.

    For a listener the kernel reports the accept queue's length in
    ``tcpi_unacked`` and its limit (the ``listen`` backlog) in ``tcpi_sacked``;
    the queue is full when ``queued > limit``.
    """
    option = getattr(gsocket, "TCP_INFO", None)
    if option is None:  # pragma: no cover - every Linux has TCP_INFO
        return None
    try:
        info = listener.getsockopt(gsocket.IPPROTO_TCP, option, 104)
    except OSError:  # pragma: no cover - a kernel without TCP_INFO on listeners
        return None
    queued, limit = struct.unpack_from("=II", info, 24)
    return queued, limit


class Blackhole(ListeningPeer):
    """A listener whose accept queue is full: SYNs are dropped, so a connect hangs until its own timeout.

    It listens with a tiny ``backlog`` and fills the queue with connections it
    never accepts (``filled`` of them, ``backlog + 1`` on Linux). A client's
    connect then gets no answer at all, the way a firewalled or overloaded
    host behaves: the kernel keeps retransmitting the SYN, and a connect with
    no timeout of its own fails with ETIMEDOUT only when the kernel gives up
    (134 s on Linux with ``tcp_syn_retries=6``). When the blackhole closes, a
    connect still pending gets a RST at its next retransmission (refused).

    ``start()`` raises ``RuntimeError`` if ``max_fill`` connections did not
    fill the queue (a system that ignores the backlog).

    Example::

        >>> from gevent import socket
        >>> with blackhole() as hole:
        ...     socket.create_connection(hole.address, timeout=0.2)
        Traceback (most recent call last):
        ...
        TimeoutError: timed out
        >>> hole.accepted
        0
    """

    accepts = False

    def __init__(
        self,
        *,
        host: str = _LOOPBACK,
        port: int = 0,
        backlog: int = 0,
        fill_timeout: float = 0.25,
        max_fill: int = 64,
    ) -> None:
        super().__init__(host=host, port=port, backlog=backlog)
        self.fill_timeout = fill_timeout
        self.max_fill = max_fill
        self._fillers: list[Any] = []

    @property
    def filled(self) -> int:
        """Connections sitting in the accept queue (opened by the blackhole itself)."""
        return len(self._fillers)

    def counters(self) -> dict[str, int]:
        """``accepted`` (always 0), ``backlog``, ``filled``."""
        return {"accepted": self.accepted, "backlog": self.backlog, "filled": self.filled}

    def _start(self) -> None:
        super()._start()
        try:
            self._fill()
        except BaseException:
            self._close()
            raise

    def _full(self) -> Optional[bool]:
        state = _accept_queue(self._listener)
        return None if state is None else state[0] > state[1]

    def _fill(self) -> None:
        for _ in range(self.max_fill):
            if self._full():
                return
            sock = gsocket.socket(_family(self.host), gsocket.SOCK_STREAM)
            sock.settimeout(self.fill_timeout)
            try:
                sock.connect(self.address)
            except gsocket.timeout:
                # The SYN got no answer: the queue is full. With TCP_INFO we
                # ask the kernel instead (a slow connect on a busy machine
                # proves nothing).
                sock.close()
                if self._full() is not False:
                    return
                continue
            except OSError:
                sock.close()
                raise
            self._fillers.append(sock)
        raise RuntimeError(f"{self!r}: {self.max_fill} connections did not fill a backlog of {self.backlog}")

    def _close(self) -> None:
        for sock in self._fillers:
            _close_quietly(sock)
        self._fillers.clear()
        super()._close()


class AcceptAndClose(ListeningPeer):
    """Accepts each connection and closes it at once, or after reading ``read_bytes`` bytes.

    The client reads EOF. ``reset=True`` closes with ``SO_LINGER`` 0, so the
    client gets a RST (``ConnectionResetError``) instead. Note that Linux also
    resets, rather than sending FIN, when the peer closes with unread data in
    its receive buffer: read the bytes the client sends (``read_bytes``) for a
    clean EOF. Reading waits at most ``read_timeout`` seconds.

    Counters: ``accepted``, ``closed``, ``bytes_received``.

    Example::

        >>> from gevent import socket
        >>> with accept_and_close(read_bytes=4) as peer, socket.create_connection(peer.address, timeout=5) as c:
        ...     c.sendall(b"ping")
        ...     c.recv(10), peer.wait_for(lambda p: p.closed == 1), peer.bytes_received
        (b'', None, 4)
    """

    def __init__(
        self,
        read_bytes: int = 0,
        *,
        reset: bool = False,
        read_timeout: float = 5.0,
        host: str = _LOOPBACK,
        port: int = 0,
    ) -> None:
        super().__init__(host=host, port=port)
        self.read_bytes = read_bytes
        self.reset = reset
        self.read_timeout = read_timeout
        self.bytes_received = 0

    def counters(self) -> dict[str, int]:
        """``accepted``, ``connections``, ``closed``, ``errors``, ``bytes_received``."""
        return {**super().counters(), "bytes_received": self.bytes_received}

    def serve(self, sock: Any) -> None:
        """Read up to ``read_bytes`` bytes, then close (with RST when ``reset``)."""
        sock.settimeout(self.read_timeout)
        left = self.read_bytes
        while left > 0:
            data = sock.recv(min(left, _RECV))
            if not data:
                break
            left -= len(data)
            self.bytes_received += len(data)
        if self.reset:
            sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, _SO_LINGER_RESET)


class AcceptAndStall(ListeningPeer):
    """Accepts each connection and then does nothing: never reads, never sends, never closes.

    The client's connect succeeds; its reads wait forever, its writes fill
    the socket buffers, and a TLS handshake never gets a ServerHello. The
    connections close when the peer closes.

    Example::

        >>> from gevent import socket
        >>> with accept_and_stall() as peer, socket.create_connection(peer.address, timeout=5) as c:
        ...     c.settimeout(0.05)
        ...     c.recv(1)
        Traceback (most recent call last):
        ...
        TimeoutError: timed out
    """

    def __init__(self, *, host: str = _LOOPBACK, port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self._never = Event()

    def serve(self, sock: Any) -> None:
        """Hold the connection until the peer closes."""
        self._never.wait()


class SilentPeer(ListeningPeer):
    """Reads and parses NexusKit frames, records them, and never answers.

    ``frames`` keeps the last ``record`` frames received (all connections, in
    arrival order). Bytes that break the framing count one ``protocol_errors``
    per connection; the peer keeps reading that connection (and counting
    ``bytes_received``) but stops parsing it.

    Counters: ``accepted``, ``frames_received``, ``bytes_received``, ``protocol_errors``.

    Example::

        >>> from gevent import socket
        >>> with silent_peer() as peer, socket.create_connection(peer.address, timeout=5) as c:
        ...     c.sendall(encode_frame(Frame(qid=1, fid=2)) + encode_frame(Frame(qid=2, fid=2)))
        ...     peer.wait_frames(2)
        ...     [f.qid for f in peer.frames], peer.bytes_received
        ([1, 2], 48)
    """

    def __init__(
        self,
        *,
        host: str = _LOOPBACK,
        port: int = 0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        record: int = 10_000,
        rcvbuf: Optional[int] = None,
    ) -> None:
        super().__init__(host=host, port=port, rcvbuf=rcvbuf)
        self.max_frame_size = max_frame_size
        self.frames: deque[Frame] = deque(maxlen=record)
        self.frames_received = 0
        self.bytes_received = 0
        self.protocol_errors = 0

    def counters(self) -> dict[str, int]:
        """Base counters plus ``frames_received``, ``bytes_received``, ``protocol_errors``."""
        return {
            **super().counters(),
            "frames_received": self.frames_received,
            "bytes_received": self.bytes_received,
            "protocol_errors": self.protocol_errors,
        }

    def _recv_size(self) -> int:
        return _RECV

    def _pace(self, n: int) -> None:
        # Give the hub a turn after each read: a flooding client must not starve it.
        gevent.sleep(0)

    def _parse(self, decoder: Optional[FrameDecoder], data: bytes) -> tuple[Optional[FrameDecoder], list[Frame]]:
        """Feed ``data``; returns the decoder (None once the stream broke) and the frames completed."""
        if decoder is None:
            return None, []
        try:
            frames = decoder.feed(data)
        except RemoteProtocolError as exc:
            self.protocol_errors += 1
            log.debug("%r: %s", self, exc)
            # The frames completed before the bad bytes still count.
            frames, decoder = [make_frame(*raw) for raw in decoder.salvaged], None
        self.frames.extend(frames)
        self.frames_received += len(frames)
        return decoder, frames

    def serve(self, sock: Any) -> None:
        """Read until EOF; parse and record frames; answer nothing."""
        decoder: Optional[FrameDecoder] = FrameDecoder(max_frame_size=self.max_frame_size)
        while True:
            data = sock.recv(self._recv_size())
            if not data:
                return
            self.bytes_received += len(data)
            decoder, _ = self._parse(decoder, data)
            self.notify_changed()
            self._pace(len(data))

    def wait_frames(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until ``n`` frames were received (``TimeoutError`` after ``timeout``).

        Example::

            >>> with silent_peer() as peer:
            ...     peer.wait_frames(1, timeout=0.05)
            Traceback (most recent call last):
            ...
            TimeoutError: condition not met within 0.05 s: <SilentPeer ... frames_received=0 ...>
        """
        self.wait_for(lambda p: p.frames_received >= n, timeout)


class SlowReader(SilentPeer):
    """Reads (and parses, like :class:`SilentPeer`) at about ``rate_bytes_per_s``, so a fast writer backs up.

    Each read takes at most 1/20 s worth of bytes and is followed by a sleep
    of ``n / rate``. The listener's receive buffer is ``rcvbuf`` bytes (the
    kernel doubles it), so the client's writes block after little more than
    its own send buffer.

    Example::

        >>> from gevent import socket
        >>> with slow_reader(1000) as peer, socket.create_connection(peer.address, timeout=5) as c:
        ...     c.sendall(b"x" * 100)
        ...     peer.wait_for(lambda p: p.bytes_received == 100)
        ...     peer.rate
        1000.0
    """

    def __init__(
        self,
        rate_bytes_per_s: float,
        *,
        host: str = _LOOPBACK,
        port: int = 0,
        rcvbuf: int = 4096,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        record: int = 10_000,
    ) -> None:
        if not rate_bytes_per_s > 0:
            raise ValueError(f"rate_bytes_per_s must be positive, got {rate_bytes_per_s!r}")
        super().__init__(host=host, port=port, max_frame_size=max_frame_size, record=record, rcvbuf=rcvbuf)
        self.rate = float(rate_bytes_per_s)
        self._chunk = max(1, min(_RECV, int(self.rate / 20)))

    def _recv_size(self) -> int:
        return self._chunk

    def _pace(self, n: int) -> None:
        gevent.sleep(n / self.rate)


@dataclass(frozen=True, slots=True)
class Pause:
    """A :class:`FramePeer` item: wait ``seconds`` before sending the next item.

    Example: ``lambda f: [b"\\x00\\x00", Pause(0.5), b"\\x00\\x18..."]`` sends half a length prefix, then the rest.

        >>> Pause(0.5).seconds
        0.5
    """

    seconds: float


class _Action:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


CLOSE = _Action("CLOSE")
"""A :class:`FramePeer` item: close the connection (FIN) after the items before it."""
RESET = _Action("RESET")
"""A :class:`FramePeer` item: close the connection with a RST (``SO_LINGER`` 0)."""

Item = Union[Frame, bytes, bytearray, Pause, _Action]


def response_to(frame: Frame, body: bytes = b"", *, code: int = 200, **fields: Any) -> Frame:
    """The response :class:`Frame` to ``frame`` (same Qid and Fid, Res 1), for :class:`FramePeer` handlers.

    Example::

        >>> response_to(Frame(qid=9, fid=3), b"ok", code=503)
        Frame(qid=9, fid=3, code=503, tp=0, res=1, ver=1, body=b'ok', headers={})
    """
    return Frame(qid=frame.qid, fid=frame.fid, code=code, res=1, body=body, **fields)


class FramePeer(SilentPeer):
    """Parses frames and answers each with what ``handler(frame)`` returns: scripted protocol misbehaviour.

    The handler returns an iterable of items (or None for no answer):

    - a :class:`Frame`: encoded and sent (:func:`response_to` builds the usual answer);
    - ``bytes``: sent as they are (half a frame, garbage, a frame for another Qid);
    - ``Pause(seconds)``: what came before is sent, then the peer waits;
    - ``CLOSE`` / ``RESET``: what came before is sent, then the connection closes with FIN / RST.

    ``greeting`` items are sent to every new connection before anything is
    read. The handler sees every frame, heartbeats too. A handler that raises
    closes that connection (the exception is kept in ``errors``); bytes from
    the client that break the framing close it too (``protocol_errors``).

    Counters: those of :class:`SilentPeer` plus ``frames_sent`` and ``bytes_sent``.

    Example::

        >>> from gevent import socket
        >>> def handler(frame):
        ...     return [response_to(frame, b"late"), b"GARBAGE!" * 3]
        >>> with frame_peer(handler) as peer, socket.create_connection(peer.address, timeout=5) as c:
        ...     c.sendall(encode_frame(Frame(qid=5, fid=1)))
        ...     dec = FrameDecoder()
        ...     dec.feed(c.recv(24 + 4))
        [Frame(qid=5, fid=1, code=200, tp=0, res=1, ver=1, body=b'late', headers=...)]
    """

    def __init__(
        self,
        handler: Callable[[Frame], Optional[Iterable[Item]]],
        *,
        greeting: Iterable[Item] = (),
        host: str = _LOOPBACK,
        port: int = 0,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        record: int = 10_000,
    ) -> None:
        super().__init__(host=host, port=port, max_frame_size=max_frame_size, record=record)
        self.handler = handler
        self.greeting = list(greeting)
        self.frames_sent = 0
        self.bytes_sent = 0

    def counters(self) -> dict[str, int]:
        """:class:`SilentPeer`'s counters plus ``frames_sent`` and ``bytes_sent``."""
        return {**super().counters(), "frames_sent": self.frames_sent, "bytes_sent": self.bytes_sent}

    def _send(self, sock: Any, items: Iterable[Item]) -> bool:
        """Send the items; False when one of them closed the connection."""
        pending: list[bytes] = []

        def flush() -> None:
            if pending:
                data = b"".join(pending)
                pending.clear()
                sock.sendall(data)
                self.bytes_sent += len(data)

        for item in items:
            if isinstance(item, Frame):
                pending.append(encode_frame(item))
                self.frames_sent += 1
            elif isinstance(item, (bytes, bytearray)):
                pending.append(bytes(item))
            elif isinstance(item, Pause):
                flush()
                gevent.sleep(item.seconds)
            elif item is CLOSE or item is RESET:
                flush()
                if item is RESET:
                    sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_LINGER, _SO_LINGER_RESET)
                return False
            else:
                raise TypeError(f"a FramePeer handler returned {item!r}; expected Frame, bytes, Pause, CLOSE or RESET")
        flush()
        return True

    def serve(self, sock: Any) -> None:
        """Send the greeting, then answer every frame with the handler's items until EOF, CLOSE or RESET."""
        if not self._send(sock, self.greeting):
            return
        decoder: Optional[FrameDecoder] = FrameDecoder(max_frame_size=self.max_frame_size)
        while decoder is not None:
            data = sock.recv(_RECV)
            if not data:
                return
            self.bytes_received += len(data)
            decoder, frames = self._parse(decoder, data)
            self.notify_changed()
            for frame in frames:
                if not self._send(sock, self.handler(frame) or ()):
                    return
            self.notify_changed()
            self._pace(len(data))


class ScriptedPeer(ListeningPeer):
    """Runs ``script(sock)`` for every connection, in its own greenlet; the socket is closed when it returns.

    For anything the other peers do not cover (a SOCKS5 proxy that lies, a
    TLS server that sends plaintext). A script that raises has its exception
    kept in ``errors`` (and logged); set ``SO_LINGER`` 0 on the socket before
    returning for a RST instead of a FIN.

    Example::

        >>> from gevent import socket
        >>> def greet(sock):
        ...     sock.sendall(b"hello")
        >>> with scripted_peer(greet) as (host, port):
        ...     with socket.create_connection((host, port), timeout=5) as c:
        ...         c.recv(5)
        b'hello'
    """

    def __init__(self, script: Callable[[Any], Any], *, host: str = _LOOPBACK, port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.script = script

    def serve(self, sock: Any) -> None:
        """Run the script."""
        self.script(sock)


class EchoPeer(ListeningPeer):
    """Sends every byte back: the simplest well-behaved peer, for :class:`RestartableServer` and as a baseline.

    Counters: ``accepted``, ``bytes_received`` (each one echoed).

    Example::

        >>> from gevent import socket
        >>> with echo_peer() as peer, socket.create_connection(peer.address, timeout=5) as c:
        ...     c.sendall(b"ping")
        ...     c.recv(4)
        b'ping'
    """

    def __init__(self, *, host: str = _LOOPBACK, port: int = 0) -> None:
        super().__init__(host=host, port=port)
        self.bytes_received = 0

    def counters(self) -> dict[str, int]:
        """Base counters plus ``bytes_received``."""
        return {**super().counters(), "bytes_received": self.bytes_received}

    def serve(self, sock: Any) -> None:
        """Echo until EOF."""
        while True:
            data = sock.recv(_RECV)
            if not data:
                return
            self.bytes_received += len(data)
            sock.sendall(data)
            self.notify_changed()
            gevent.sleep(0)


class RestartableServer(HostilePeer):
    """A server on a fixed port that a test can kill and restart: for outage tests.

    It wraps an :class:`~nexus_green.testing.EmbeddedServer` (a new one by
    default), or a factory of any peer of this kit called as
    ``factory(host=..., port=...)`` at each (re)start (``RestartableServer(EchoPeer)``).
    The OS chooses the port once, at the first start.

    ``kill()`` closes the listener and every accepted connection, so clients
    see their link die (EOF); while it is down the port stays bound without
    listening, so connects are refused (as with a dead server process) and
    no other program can take the port. ``restart()`` listens on the same
    port again (``SO_REUSEADDR``). Both are idempotent.

    Counters: ``accepted`` (over all lives), ``connections``, ``kills``, ``restarts``, ``connections_killed``.

    Example::

        >>> from gevent import socket
        >>> with RestartableServer(EchoPeer) as server:
        ...     c = socket.create_connection(server.address, timeout=5)
        ...     server.wait_for(lambda s: s.connections == 1)
        ...     server.kill()
        ...     c.recv(1)
        ...     c.close()
        ...     server.restart()
        ...     with socket.create_connection(server.address, timeout=5) as c:
        ...         c.sendall(b"back"); c.recv(4)
        1
        b''
        b'back'
        >>> server.kills, server.restarts, server.accepted
        (1, 1, 2)
    """

    def __init__(
        self, server: Union[EmbeddedServer, Callable[..., ListeningPeer], None] = None, *, host: str = _LOOPBACK
    ) -> None:
        self._embedded: Optional[EmbeddedServer] = None
        self._factory: Optional[Callable[..., ListeningPeer]] = None
        if server is None:
            server = EmbeddedServer(host=host)
        if isinstance(server, EmbeddedServer):
            self._embedded = server
            host = server.host
        elif callable(server):
            self._factory = server
        else:
            raise TypeError(f"RestartableServer wraps an EmbeddedServer or a peer factory, not {server!r}")
        super().__init__(host, self._embedded.port if self._embedded is not None else 0)
        self._peer: Optional[ListeningPeer] = None
        self._placeholder: Optional[RefusingPort] = None
        self._accepted_before = 0  # by the factory's earlier peers
        self.kills = 0
        self.restarts = 0
        self.connections_killed = 0

    @property
    def server(self) -> Any:
        """The running target: the EmbeddedServer, or the current peer (None while killed)."""
        return self._embedded if self._embedded is not None else self._peer

    @property
    def running(self) -> bool:
        """True while it listens."""
        if self._embedded is not None:
            return self._embedded.running
        return self._peer is not None

    @property
    def url(self) -> str:
        """The wrapped server's URL (``tls://`` for a TLS EmbeddedServer), else ``tcp://host:port``."""
        if self._embedded is not None:
            return self._embedded.url
        return super().url

    @property
    def accepted(self) -> int:
        """Connections accepted over all lives."""
        if self._embedded is not None:
            return self._embedded.connections_accepted
        return self._accepted_before + (self._peer.accepted if self._peer is not None else 0)

    @property
    def connections(self) -> int:
        """Accepted connections open now."""
        if self._embedded is not None:
            return int(self._embedded.info()["connections_active"])
        return self._peer.connections if self._peer is not None else 0

    def counters(self) -> dict[str, int]:
        """``accepted``, ``connections``, ``kills``, ``restarts``, ``connections_killed``."""
        return {
            "accepted": self.accepted,
            "connections": self.connections,
            "kills": self.kills,
            "restarts": self.restarts,
            "connections_killed": self.connections_killed,
        }

    def _listen(self) -> None:
        if self._embedded is not None:
            self._embedded.port = self.port
            self._embedded.start()
            self.port = self._embedded.port
        else:
            assert self._factory is not None
            peer = self._factory(host=self.host, port=self.port)
            self._peer = peer.start()
            self.port = peer.port

    def _start(self) -> None:
        self._listen()

    def kill(self) -> int:
        """Close the listener and every accepted connection; returns how many connections died.

        Example: ``server.kill(); ...; server.restart()`` (see the class example).
        """
        if self._state != "open" or not self.running:
            return 0
        killed = self.connections
        if self._embedded is not None:
            self._embedded.stop(timeout=2)
        else:
            assert self._peer is not None
            peer, self._peer = self._peer, None
            self._accepted_before += peer.accepted
            peer.close()
        try:
            self._placeholder = RefusingPort(host=self.host, port=self.port).start()
        except OSError as exc:  # pragma: no cover - another program bound the port in between
            log.warning("%r: cannot hold port %d while down: %s", self, self.port, exc)
        self.kills += 1
        self.connections_killed += killed
        self.notify_changed()
        return killed

    def _release_port(self) -> None:
        placeholder, self._placeholder = self._placeholder, None
        if placeholder is not None:
            placeholder.close()

    def restart(self) -> None:
        """Listen again on the same port (after :meth:`kill`); a no-op while running.

        Example: see the class example.
        """
        if self._state != "open" or self.running:
            return
        self._release_port()
        self._listen()
        self.restarts += 1
        self.notify_changed()

    def _close(self) -> None:
        self._release_port()
        if self._embedded is not None:
            self._embedded.stop(timeout=2)
        elif self._peer is not None:
            peer, self._peer = self._peer, None
            self._accepted_before += peer.accepted
            peer.close()


# The lowercase names read as what a ``with`` statement opens.
refusing_port = RefusingPort
blackhole = Blackhole
accept_and_close = AcceptAndClose
accept_and_stall = AcceptAndStall
silent_peer = SilentPeer
slow_reader = SlowReader
frame_peer = FramePeer
scripted_peer = ScriptedPeer
echo_peer = EchoPeer
