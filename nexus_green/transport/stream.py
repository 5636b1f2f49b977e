"""The stream backend: the only place nexus_green opens and uses sockets.

:func:`open_stream` resolves, connects (racing the addresses, RFC 8305 "Happy
Eyeballs"), optionally tunnels through SOCKS5 and secures with TLS, timing
each phase and emitting ``connect.<phase>.*`` events. The whole connect is
bounded by one timer on the caller's :class:`~nexus_green.clock.Clock`
(:func:`nexus_green.timers.arm`), so a FakeClock drives connect timeouts too.
:class:`Stream` wraps the connected gevent socket; every OS exception is mapped
to a :class:`~nexus_green.errors.NexusError` here and nowhere else, by where it
happened (:func:`map_os_error`'s ``connecting``).

gevent's socket module is imported explicitly, so the stream is cooperative
whether or not the application monkey-patched. TCP_NODELAY is set on every
socket: request/response latency depends on it.

Example::

    >>> from nexus_green.errors import ConnectionRefused
    >>> try:
    ...     open_stream(Endpoint.parse("tcp://127.0.0.1:1"), timeout=2)
    ... except ConnectionRefused as e:
    ...     print("refused:", "127.0.0.1:1" in str(e))
    refused: True
"""

from __future__ import annotations

import _socket
import errno
import fcntl
import os
import socket as _stdsocket
import struct
import sys
import termios
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import gevent
from gevent import socket as gsocket
from gevent.event import Event

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import (
    ConfigurationError,
    ConnectError,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    DNSError,
    NexusError,
    UsageError,
)
from ..events import EventBus, default_bus
from ..greenlets import spawn
from ..timers import Interrupt, arm
from .endpoint import Endpoint

__all__ = [
    "IOV_MAX",
    "Stream",
    "open_stream",
    "ConnectInfo",
    "map_os_error",
    "default_resolver",
    "interleave_families",
    "Resolver",
    "AddrInfo",
]

# Hooks filled in by transport/tls.py and transport/socks5.py (kept as
# callables so this module does not depend on their option types).
TunnelFn = Callable[[Any, Endpoint], None]
SecureFn = Callable[[Any, Endpoint, Optional[float]], Any]
_MAX_SEND = 1 << 20  # at most this much per send() call of send_reporting
try:
    IOV_MAX: int = max(16, min(1024, os.sysconf("SC_IOV_MAX")))  # buffers per sendmsg
except (ValueError, OSError, AttributeError):  # pragma: no cover - every POSIX system we run on has it
    IOV_MAX = 16
_TIOCOUTQ: Optional[int] = getattr(termios, "TIOCOUTQ", None)  # SIOCOUTQ on Linux: bytes not yet acknowledged
_FIONREAD: Optional[int] = getattr(termios, "FIONREAD", None)  # bytes waiting to be read
_INT = struct.Struct("i")

#: One ``getaddrinfo`` result: ``(family, type, proto, canonname, sockaddr)``.
AddrInfo = tuple[Any, ...]
#: ``(host, port) -> getaddrinfo results``; see :func:`default_resolver`.
Resolver = Callable[[str, int], Sequence[AddrInfo]]

# Errors of a connect that mean "no route", as opposed to "refused" or "timed out".
_UNREACHABLE = frozenset({errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL, errno.ENETDOWN, errno.EHOSTDOWN})


@dataclass(slots=True, kw_only=True)
class ConnectInfo:
    """How a connect went (or is going): per-phase durations in seconds and the peer address.

    ``phase`` is the phase in progress (``dns``, ``tcp``, ``socks5``, ``tls``),
    set when each phase starts, so a caller waiting on someone else's attempt
    can name where the time goes; after the connect it names the last phase.
    ``attempts`` lists the addresses a TCP connect was started to, in order;
    ``peer`` is the one that answered (IPv6 in brackets).

    Example::

        >>> info = ConnectInfo(endpoint=Endpoint.parse("tcp://h:1"))
        >>> info.phase, info.phases, info.attempts
        ('', {}, [])
    """

    endpoint: Endpoint
    phases: dict[str, float] = field(default_factory=dict)
    phase: str = ""
    attempts: list[str] = field(default_factory=list)
    peer: str = ""
    total: float = 0.0


def map_os_error(exc: BaseException, what: str, *, connecting: bool = False) -> NexusError:
    """Translate an OS/socket exception into the NexusError family it belongs to, by where it happened.

    ``connecting=True`` is for errors while a connection is being opened,
    when nothing can have been sent: ``ECONNREFUSED`` is
    :class:`~nexus_green.errors.ConnectionRefused`, ``ETIMEDOUT`` (and a
    socket timeout) is :class:`~nexus_green.errors.ConnectTimeout` with
    phase ``tcp``, a ``gaierror`` is :class:`~nexus_green.errors.DNSError`,
    an unreachable network or host, and anything else, is
    :class:`~nexus_green.errors.ConnectError`.

    ``connecting=False`` (the default, the safe side) is for an established
    link: every error is :class:`~nexus_green.errors.ConnectionLost`,
    ``ETIMEDOUT`` included, because there it means that data we sent went
    unacknowledged (TCP_USER_TIMEOUT, keepalive, retransmissions) and may
    have reached the peer. NexusErrors pass through unchanged.

    One exception on either side: a TLS alert by which the server refuses
    the client (certificate required, unknown CA, ...; TLS 1.3 servers send
    it after the handshake, so it arrives on an established link) is a
    :class:`~nexus_green.errors.ClientCertificateRejected`, not retryable
    (:func:`nexus_green.transport.tls.rejection_error` has the table).

    Example::

        >>> type(map_os_error(ConnectionResetError(104, "reset"), "recv from x")).__name__
        'ConnectionLost'
        >>> e = map_os_error(TimeoutError(110, "Connection timed out"), "connect to x", connecting=True)
        >>> type(e).__name__, e.phase
        ('ConnectTimeout', 'tcp')
        >>> type(map_os_error(TimeoutError(110, "Connection timed out"), "recv from x")).__name__
        'ConnectionLost'
    """
    if isinstance(exc, NexusError):
        return exc
    rejected = _tls_rejection(exc, what)
    if rejected is not None:
        return rejected
    if not connecting:
        if isinstance(exc, TimeoutError):
            return ConnectionLost(f"{what}: timed out, sent data went unacknowledged ({exc})")
        return ConnectionLost(f"{what}: {exc}")
    if isinstance(exc, _stdsocket.gaierror):
        return DNSError(f"{what}: DNS resolution failed: {exc}")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionRefused(f"{what}: connection refused")
    if isinstance(exc, TimeoutError):  # socket.timeout is TimeoutError too
        return ConnectTimeout(f"{what}: timed out", phase="tcp")
    if isinstance(exc, OSError) and exc.errno in _UNREACHABLE:
        return ConnectError(f"{what}: {exc.strerror or exc}")
    return ConnectError(f"{what}: {exc}")


def _tls_rejection(exc: BaseException, what: str) -> Optional[NexusError]:
    """The server's refusal of our client certificate, when ``exc`` is that TLS alert; else None."""
    ssl = sys.modules.get("ssl")
    if ssl is None or not isinstance(exc, ssl.SSLError):
        return None  # no TLS stream can exist before ssl is imported: plain TCP never pays for the import
    from .tls import rejection_error

    return rejection_error(exc, what)


def default_resolver(host: str, port: int) -> list[AddrInfo]:
    """Resolve ``host`` for a TCP connect: gevent's ``getaddrinfo``, except for IP literals.

    An IP literal is parsed in place (``AI_NUMERICHOST``: no network, no
    trip through gevent's resolver thread pool), so a connect to an address
    does not wait for a thread, and a FakeClock's time does not jump while
    it would.

    Example::

        >>> [(family.name, addr) for family, _, _, _, addr in default_resolver("::1", 80)]
        [('AF_INET6', ('::1', 80, 0, 0))]
    """
    try:
        found = _socket.getaddrinfo(
            host, port, 0, _stdsocket.SOCK_STREAM, _stdsocket.IPPROTO_TCP, _stdsocket.AI_NUMERICHOST
        )
    except (OSError, UnicodeError):
        return list(gsocket.getaddrinfo(host, port, 0, _stdsocket.SOCK_STREAM, _stdsocket.IPPROTO_TCP))
    # The C function returns plain ints; give them the enum types socket.getaddrinfo gives.
    return [(_stdsocket.AddressFamily(f), _stdsocket.SocketKind(t), p, c, a) for f, t, p, c, a in found]


def interleave_families(addrs: Sequence[AddrInfo]) -> list[AddrInfo]:
    """Order addresses for Happy Eyeballs (RFC 8305 section 4): alternate the address families.

    The family of the first result goes first; within a family the
    resolver's order is kept; exact duplicates are dropped.

    Example::

        >>> v6, v4 = _stdsocket.AF_INET6, _stdsocket.AF_INET
        >>> addrs = [(v6, 1, 6, "", ("::1", 1)), (v6, 1, 6, "", ("::2", 1)), (v4, 1, 6, "", ("10.0.0.1", 1))]
        >>> [a[4][0] for a in interleave_families(addrs + addrs[:1])]
        ['::1', '10.0.0.1', '::2']
    """
    families: dict[Any, list[AddrInfo]] = {}
    seen: set[tuple[Any, Any]] = set()
    for a in addrs:
        key = (a[0], a[4])
        if key not in seen:
            seen.add(key)
            families.setdefault(a[0], []).append(a)
    queues = list(families.values())
    out: list[AddrInfo] = []
    for i in range(max((len(q) for q in queues), default=0)):
        out.extend(q[i] for q in queues if i < len(q))
    return out


class Stream:
    """A connected, cooperative byte stream (plain TCP or TLS).

    Example::

        >>> s = Stream(None, "test")   # wraps a socket; None only for this doc
        >>> s.closed
        True
    """

    __slots__ = ("_sock", "_raw", "label", "bytes_sent", "bytes_received", "_watchers")

    def __init__(self, sock: Any, label: str) -> None:
        self._sock = sock
        # The OS socket under a plain gevent socket, for try_send(); None for
        # TLS, where a partial non-blocking write must be retried with the
        # same buffer and is left to sendall.
        self._raw = getattr(sock, "_sock", None) if type(sock) is gsocket.socket else None
        self.label = label
        self.bytes_sent = 0
        self.bytes_received = 0
        self._watchers: list[Any] = []

    @property
    def nonblocking(self) -> bool:
        """True for plain TCP: :meth:`recv_into_nowait`, :meth:`sendmsg_nowait` and :meth:`watch` work.

        TLS streams say False: an SSL read can need a write and the reverse,
        so they are driven by greenlets through :meth:`recv` and :meth:`sendall`.
        """
        return self._raw is not None

    def _not_nonblocking(self, what: str) -> NexusError:
        if self._sock is None:
            return ConnectionLost(f"{what} on closed stream to {self.label}")
        return UsageError(f"{what} without waiting needs a plain TCP stream; {self.label} is TLS (use recv/sendall)")

    def watch(self, *, write: bool = False) -> Any:
        """A hub I/O watcher for readability (or writability) of this stream, closed with it.

        The connection starts it with a callback that runs in the hub: the
        callback must not block. Example::

            >>> import gevent.socket
            >>> a, b = gevent.socket.socketpair()
            >>> s = Stream(a, "pair"); w = s.watch()
            >>> w.active
            False
            >>> s.close(); b.close()
        """
        if self._sock is None:
            raise ConnectionLost(f"watch on closed stream to {self.label}")
        watcher = gevent.get_hub().loop.io(self._sock.fileno(), 2 if write else 1)
        self._watchers.append(watcher)
        return watcher

    def recv_into_nowait(self, buf: memoryview) -> int:
        """Read what the kernel holds into ``buf``, never blocking: the byte count, 0 at EOF, -1 if nothing is there.

        Plain TCP only (:attr:`nonblocking`). Example::

            >>> import gevent.socket
            >>> a, b = gevent.socket.socketpair()
            >>> s, buf = Stream(a, "pair"), memoryview(bytearray(8))
            >>> s.recv_into_nowait(buf)
            -1
            >>> b.sendall(b"hi"); s.recv_into_nowait(buf), bytes(buf[:2])
            (2, b'hi')
            >>> b.close(); s.recv_into_nowait(buf)
            0
            >>> s.close()
        """
        raw = self._raw
        if raw is None:
            raise self._not_nonblocking("recv")
        try:
            n: int = raw.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return -1
        except OSError as exc:
            raise map_os_error(exc, f"recv from {self.label}") from exc
        self.bytes_received += n
        return n

    def recv_bytes_nowait(self, n: int) -> Optional[bytes]:
        """Read up to ``n`` bytes into a new ``bytes`` (the kernel copies straight into it), never blocking.

        None when nothing is there, ``b""`` at EOF. Plain TCP only
        (:attr:`nonblocking`). With :meth:`available` it lets a reader take a
        large body whole without a copy in this process. Example::

            >>> import gevent.socket
            >>> a, b = gevent.socket.socketpair()
            >>> s = Stream(a, "pair")
            >>> s.recv_bytes_nowait(8) is None
            True
            >>> b.sendall(b"hello"); s.available(), s.recv_bytes_nowait(8)
            (5, b'hello')
            >>> b.close(); s.recv_bytes_nowait(8)
            b''
            >>> s.close()
        """
        raw = self._raw
        if raw is None:
            raise self._not_nonblocking("recv")
        try:
            data: bytes = raw.recv(n)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            raise map_os_error(exc, f"recv from {self.label}") from exc
        self.bytes_received += len(data)
        return data

    def available(self) -> int:
        """Bytes the kernel holds for reading now (``FIONREAD``); 0 when closed or unknown on this platform.

        Example::

            >>> import gevent.socket
            >>> a, b = gevent.socket.socketpair()
            >>> s = Stream(a, "pair"); b.sendall(b"abc")
            >>> s.available()
            3
            >>> s.close(); b.close(); s.available()
            0
        """
        sock = self._sock
        if sock is None or _FIONREAD is None:
            return 0
        try:
            return _INT.unpack(fcntl.ioctl(sock.fileno(), _FIONREAD, b"\0\0\0\0"))[0]
        except (OSError, ValueError):
            return 0

    def sendmsg_nowait(self, buffers: Sequence[Any]) -> int:
        """Write the buffers in order, as one scatter/gather ``sendmsg``, never blocking; the byte count the kernel took.

        Nothing is joined or copied here. Plain TCP only (:attr:`nonblocking`);
        at most ``IOV_MAX`` buffers per call. Example::

            >>> import gevent.socket
            >>> a, b = gevent.socket.socketpair()
            >>> s = Stream(a, "pair")
            >>> s.sendmsg_nowait([b"he", memoryview(b"llo")]), b.recv(5)
            (5, b'hello')
            >>> s.close(); b.close()
        """
        raw = self._raw
        if raw is None:
            raise self._not_nonblocking("send")
        try:
            n: int = raw.sendmsg(buffers)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            raise map_os_error(exc, f"send to {self.label}") from exc
        self.bytes_sent += n
        return n

    def sendfile_nowait(self, fd: int, offset: int, count: int) -> int:
        """Copy up to ``count`` bytes of file ``fd`` from ``offset`` to the socket in the kernel, never blocking.

        ``os.sendfile``: the bytes never enter this process. Returns the byte
        count the kernel took, -1 when the socket buffer is full, 0 when the
        file ends before ``offset`` (it shrank). Plain TCP only
        (:attr:`nonblocking`). Example::

            >>> import gevent.socket, tempfile
            >>> a, b = gevent.socket.socketpair()
            >>> with tempfile.TemporaryFile() as f:
            ...     _ = f.write(b"hello world"); f.flush()
            ...     Stream(a, "pair").sendfile_nowait(f.fileno(), 6, 5), b.recv(5)
            (5, b'world')
            >>> a.close(); b.close()
        """
        raw = self._raw
        if raw is None:
            raise self._not_nonblocking("sendfile")
        try:
            n: int = os.sendfile(raw.fileno(), fd, offset, count)
        except (BlockingIOError, InterruptedError):
            return -1
        except OSError as exc:
            raise map_os_error(exc, f"sendfile to {self.label}") from exc
        self.bytes_sent += n
        return n

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran (or the socket was never there)."""
        return self._sock is None

    def fileno(self) -> int:
        """The OS descriptor, -1 when closed."""
        return -1 if self._sock is None else self._sock.fileno()

    def recv(self, bufsize: int) -> bytes:
        """Read up to ``bufsize`` bytes; ``b""`` means the peer closed."""
        sock = self._sock
        if sock is None:
            raise ConnectionLost(f"recv on closed stream to {self.label}")
        try:
            data: bytes = sock.recv(bufsize)
        except OSError as exc:
            raise map_os_error(exc, f"recv from {self.label}") from exc
        self.bytes_received += len(data)
        return data

    def try_send(self, data: bytes) -> int:
        """Write what the kernel takes right now, never blocking; returns the byte count.

        0 when the socket buffer is full, and always 0 for TLS streams. It
        cannot yield, so no timeout can interrupt it half-way.
        """
        raw = self._raw
        if raw is None or self._sock is None:
            return 0
        try:
            n: int = raw.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            raise map_os_error(exc, f"send to {self.label}") from exc
        self.bytes_sent += n
        return n

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Write all of ``data`` (cooperatively)."""
        sock = self._sock
        if sock is None:
            raise ConnectionLost(f"send on closed stream to {self.label}")
        try:
            sock.sendall(data)
        except OSError as exc:
            raise map_os_error(exc, f"send to {self.label}") from exc
        self.bytes_sent += len(data)

    def send_progress(self) -> Optional[tuple[int, int]]:
        """``(acknowledged, queued)``: bytes written so far that the peer's TCP acknowledged, and bytes the kernel still holds.

        From SIOCOUTQ (unsent plus unacknowledged); None where the OS cannot
        tell. ``acknowledged`` grows while the peer reads, even when our own
        sends are blocked on a full buffer: the heartbeat counts that as
        liveness when ``queued`` showed a backlog (bytes into an empty buffer
        are acknowledged by the peer's kernel whether its application lives or not).

        Example::

            >>> from gevent import socket
            >>> listener = socket.socket(); listener.bind(("127.0.0.1", 0)); listener.listen(1)
            >>> s = Stream(socket.create_connection(listener.getsockname()), "tcp"); s.sendall(b"abc")
            >>> sum(s.send_progress())  # acknowledged + queued: every byte written
            3
            >>> s.close(); listener.close()
        """
        sock = self._sock
        if sock is None or _TIOCOUTQ is None or sock.family not in (_stdsocket.AF_INET, _stdsocket.AF_INET6):
            return None  # SIOCOUTQ counts bytes only for TCP
        try:
            queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0"))[0]
        except OSError:
            return None
        return (self.bytes_sent - queued, queued)

    def send_reporting(self, data: bytes | bytearray | memoryview, progress: Callable[[int], None]) -> None:
        """Write all of ``data`` (cooperatively), calling ``progress(n)`` each time the kernel takes ``n`` bytes.

        For large writes to a peer that reads slowly: every partial send is
        progress the caller can count as liveness. Slices of the caller's
        buffer are memoryviews: nothing is copied.

        Example::

            >>> import gevent.socket
            >>> a, b = gevent.socket.socketpair()
            >>> taken = []
            >>> Stream(a, "pair").send_reporting(b"x" * 10, taken.append); sum(taken), len(b.recv(10))
            (10, 10)
            >>> a.close(); b.close()
        """
        sock = self._sock
        if sock is None:
            raise ConnectionLost(f"send on closed stream to {self.label}")
        view = memoryview(data)
        total, off = len(view), 0
        while off < total:
            try:
                n: int = sock.send(view[off : off + _MAX_SEND])
            except OSError as exc:
                raise map_os_error(exc, f"send to {self.label}") from exc
            if not n:  # pragma: no cover - a blocking send returns at least one byte or raises
                raise ConnectionLost(f"send to {self.label}: the socket took nothing")
            off += n
            self.bytes_sent += n
            progress(n)

    def _close_watchers(self) -> None:
        watchers, self._watchers = self._watchers, []
        for w in watchers:
            w.stop()
            w.close()

    def close(self) -> None:
        """Close the socket (idempotent). Any greenlet blocked in recv wakes up; watchers stop."""
        sock, self._sock = self._sock, None
        self._raw = None
        self._close_watchers()
        if sock is not None:
            try:
                sock.shutdown(_stdsocket.SHUT_RDWR)
            except OSError:
                pass  # already disconnected: closing is all that is left
            sock.close()

    def detach(self) -> None:
        """Forget the socket without shutting it down (a forked child must not
        disturb the parent's connection); the descriptor is closed."""
        sock, self._sock = self._sock, None
        self._raw = None
        self._close_watchers()
        if sock is not None:
            sock.close()

    def __repr__(self) -> str:
        return f"<Stream {self.label} fd={self.fileno()} sent={self.bytes_sent} received={self.bytes_received}>"


def _phase(bus: EventBus, clock: Clock, info: ConnectInfo, name: str, conn_id: str, fn: Callable[[], Any]) -> Any:
    info.phase = name
    bus.emit(f"connect.{name}.started", conn_id=conn_id, endpoint=str(info.endpoint))
    t0 = clock.now()
    try:
        result = fn()
    except BaseException as exc:
        info.phases[name] = clock.now() - t0
        if isinstance(exc, ConnectTimeout) and not exc.phase:
            exc.phase = name  # a hook's own limit (tls.wrap's HandshakeTimeout): say where it struck
        bus.emit(
            f"connect.{name}.failed",
            conn_id=conn_id,
            endpoint=str(info.endpoint),
            duration=info.phases[name],
            error=exc,
        )
        raise
    info.phases[name] = clock.now() - t0
    bus.emit(f"connect.{name}.complete", conn_id=conn_id, endpoint=str(info.endpoint), duration=info.phases[name])
    return result


def open_stream(
    endpoint: Endpoint,
    *,
    timeout: Optional[float] = 10.0,
    until: Optional[float] = None,
    conn_id: str = "",
    bus: EventBus = default_bus,
    clock: Clock = SYSTEM_CLOCK,
    resolver: Optional[Resolver] = None,
    attempt_delay: float = 0.25,
    proxy: Any = None,
    tunnel: Optional[TunnelFn] = None,
    secure: Optional[SecureFn] = None,
    info: Optional[ConnectInfo] = None,
    socket_options: tuple[tuple[int, int, Any], ...] = (),
) -> Stream:
    """Open a stream to ``endpoint``, ending by ``timeout`` seconds from now or at ``until``, whichever is first.

    * ``timeout`` is the connect timeout (None: no limit of its own);
      ``until`` is the end of the caller's whole budget, an absolute time on
      ``clock`` (None: none). The limit is one timer on ``clock``
      (:func:`nexus_green.timers.arm`), so a FakeClock drives it. When it
      strikes, :class:`~nexus_green.errors.ConnectTimeout` is raised with
      ``phase`` naming the phase in progress and a message naming the limit
      and the phases so far; a budget already spent raises it at once, with
      phase ``connect``.
    * Phases: ``dns`` (of the endpoint, or of the proxy when ``proxy`` is
      given), ``tcp``, ``socks5`` (when ``tunnel`` is given), ``tls`` (when
      ``secure`` is given; it gets the seconds left, at least 0.001, or None).
      Durations land in ``info.phases``; ``info.phase`` is the phase in
      progress.
    * ``resolver(host, port)`` returns ``getaddrinfo`` tuples
      (default :func:`default_resolver`).
    * ``socket_options`` are ``(level, option, value)`` triples set on the
      connected socket before any handshake; one the OS refuses is a
      :class:`~nexus_green.errors.ConfigurationError`.
    * Several addresses are raced (RFC 8305 "Happy Eyeballs", section 5):
      ordered by :func:`interleave_families`, the first attempt starts at once
      and each next one when the previous has neither succeeded nor failed
      within ``attempt_delay`` seconds (on ``clock``), or at once when one
      fails. The first success wins; every other socket is closed and every
      racing greenlet finished before this returns or raises. When all fail,
      the last failure is raised (mapped, chained) with the addresses tried.
      A single address is connected in the calling greenlet.

    Every socket this opened is closed when it raises, including when the
    caller is killed or someone else's timeout strikes (which propagates as
    itself).

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> from nexus_green.errors import ConnectTimeout
        >>> clock = FakeClock()
        >>> slow = lambda host, port: clock.sleep(60)   # a resolver that never answers
        >>> try:
        ...     open_stream(Endpoint.parse("tcp://db.internal:7600"), until=5.0, clock=clock, resolver=slow)
        ... except ConnectTimeout as e:
        ...     print(e.phase, clock.now())
        dns 5.0
    """
    info = info if info is not None else ConnectInfo(endpoint=endpoint)
    dial = proxy if proxy is not None else endpoint
    label = endpoint.address if proxy is None else f"{endpoint.address} via proxy {dial.address}"
    resolve = resolver if resolver is not None else default_resolver
    delay = max(0.0, attempt_delay)
    t0 = clock.now()
    end = None if timeout is None else t0 + timeout
    by_timeout = True
    if until is not None and (end is None or until < end):
        end, by_timeout = until, False
    if end is not None and end <= t0:
        why = (
            f"a connect timeout of {timeout}s leaves no time"
            if by_timeout
            else f"the call's time budget ended {round(t0 - end, 3)}s ago"
        )
        raise ConnectTimeout(f"connect to {label} not started: {why}", phase="connect")
    mine = arm(clock, end) if end is not None else None
    sock = None
    try:

        def resolve_dial() -> list[AddrInfo]:
            found = list(resolve(dial.host, dial.port))
            if not found:
                raise DNSError(f"cannot resolve {dial.host!r} for {label}: the resolver returned no addresses")
            return found

        try:
            addrs = _phase(bus, clock, info, "dns", conn_id, resolve_dial)
        except OSError as exc:
            raise DNSError(f"cannot resolve {dial.host!r} for {label}: {exc}") from exc

        def connect_tcp() -> Any:
            try:
                return _connect(interleave_families(addrs), clock, delay, info)
            except OSError as exc:
                tried = ", ".join(info.attempts)
                where = f"connect to {label}" if tried == dial.address else f"connect to {label} (tried {tried})"
                raise map_os_error(exc, where, connecting=True) from exc

        sock = _phase(bus, clock, info, "tcp", conn_id, connect_tcp)
        for level, option, value in socket_options:  # the caller's (TCP_USER_TIMEOUT, keepalive, buffers)
            try:
                sock.setsockopt(level, option, value)
            except OSError as exc:
                raise ConfigurationError(f"socket option ({level}, {option}, {value!r}) refused: {exc}") from exc
        if tunnel is not None:
            _phase(bus, clock, info, "socks5", conn_id, lambda: tunnel(sock, endpoint))
        if secure is not None:
            remaining = None if end is None else max(0.001, end - clock.now())
            sock = _phase(bus, clock, info, "tls", conn_id, lambda: secure(sock, endpoint, remaining))
    except Interrupt as i:
        if sock is not None:
            sock.close()
        if i.timer is not mine:
            raise
        raise ConnectTimeout(
            f"connect to {label} timed out after {_limit(timeout, end, t0, by_timeout)} during {info.phase} "
            f"(phases so far: {_fmt(info)})",
            phase=info.phase,
        ) from None
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    finally:
        if mine is not None:
            mine.cancel()
    info.total = clock.now() - t0
    return Stream(sock, label)


def _limit(timeout: Optional[float], end: Optional[float], t0: float, by_timeout: bool) -> str:
    if by_timeout:
        return f"{timeout}s (connect timeout)"
    assert end is not None
    own = "" if timeout is None else f"; connect timeout {timeout}s"
    return f"{round(end - t0, 3)}s (the call's time budget{own})"


def _new_socket(family: Any, type_: Any, proto: Any) -> Any:
    s = gsocket.socket(family, type_, proto)
    try:
        # No per-socket timeout: an app's socket.setdefaulttimeout() must not make
        # an idle stream fail; the connect is bounded by open_stream's timer.
        s.settimeout(None)
        s.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
    except BaseException:
        s.close()
        raise
    return s


def _fmt_addr(addr: Any) -> str:
    if not isinstance(addr, tuple):
        return str(addr)  # a resolver may hand back a path (AF_UNIX) or anything else connect() takes
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


def _connect(addrs: list[AddrInfo], clock: Clock, delay: float, info: ConnectInfo) -> Any:
    """Connect to one of ``addrs``: in this greenlet when there is one, else by a race."""
    if len(addrs) > 1:
        return _race(addrs, clock, delay, info)
    family, type_, proto, _, addr = addrs[0]
    info.attempts.append(_fmt_addr(addr))
    s = _new_socket(family, type_, proto)
    try:
        s.connect(addr)
    except BaseException:
        s.close()
        raise
    info.peer = _fmt_addr(addr)
    return s


def _attempt(sock: Any, addr: Any, results: list[tuple[Any, Any, Optional[BaseException]]], wake: Event) -> None:
    """One racing connect: report the outcome and wake the racer (a kill just ends it)."""
    try:
        sock.connect(addr)
    except Exception as exc:  # reported, and re-raised by the racer if it was the last
        results.append((sock, addr, exc))
    else:
        results.append((sock, addr, None))
    wake.set()


def _race(addrs: list[AddrInfo], clock: Clock, delay: float, info: ConnectInfo) -> Any:
    """Happy Eyeballs (RFC 8305 section 5) over ``addrs``, already ordered.

    The racer (the calling greenlet) owns every socket; the attempt greenlets
    only connect them. Whatever ends the race -- a winner, the last failure,
    the overall timer, a kill -- the losing sockets are closed and the attempt
    greenlets finished before it returns or raises.
    """
    results: list[tuple[Any, Any, Optional[BaseException]]] = []
    wake = Event()
    started: list[tuple[Any, gevent.Greenlet]] = []
    winner: Any = None
    last: Optional[BaseException] = None
    outstanding = 0
    pos = 0
    next_at = clock.now()
    try:
        while True:
            if pos < len(addrs) and clock.now() >= next_at:
                family, type_, proto, _, addr = addrs[pos]
                pos += 1
                outstanding += 1
                next_at = clock.now() + delay
                info.attempts.append(_fmt_addr(addr))
                try:
                    s = _new_socket(family, type_, proto)
                except OSError as exc:  # e.g. no IPv6 on this host: that attempt failed at once
                    results.append((None, addr, exc))
                else:
                    started.append((s, spawn(_attempt, s, addr, results, wake, name=f"connect {_fmt_addr(addr)}")))
            while results:
                s, addr, failure = results.pop(0)
                outstanding -= 1
                if failure is None:
                    winner = s
                    info.peer = _fmt_addr(addr)
                    return winner
                last = failure
                if s is not None:
                    s.close()
                next_at = clock.now()  # a failure starts the next attempt at once
            if pos < len(addrs) and clock.now() >= next_at:
                continue
            if not outstanding:
                assert last is not None
                raise last
            _wait(wake, clock, next_at if pos < len(addrs) else None)
    finally:
        for s, _g in started:
            if s is not winner:
                s.close()  # wakes its attempt, if still connecting, with EBADF
        try:
            _finish([g for _s, g in started])
        except BaseException:  # thrown into us while waiting for them: the winner is no one's now
            if winner is not None:
                winner.close()
            raise


def _finish(greenlets: list[gevent.Greenlet]) -> None:
    """Kill the attempt greenlets still running and wait until they are gone."""
    live = [g for g in greenlets if not g.dead]
    if live:
        gevent.killall(live)


def _set_event(event: Event) -> None:
    event.set()


def _wait(wake: Event, clock: Clock, when: Optional[float]) -> None:
    """Wait until ``wake`` is set or ``clock`` reaches ``when``; then clear it."""
    t = clock.call_at(when, _set_event, wake) if when is not None else None
    try:
        wake.wait()
    finally:
        if t is not None:
            t.cancel()
    wake.clear()


def _fmt(info: ConnectInfo) -> str:
    return ", ".join(f"{k}={v * 1000:.1f}ms" for k, v in info.phases.items()) or "none"
