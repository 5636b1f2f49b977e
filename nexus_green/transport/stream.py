"""The stream backend: the only place nexus_green opens and uses sockets.

:func:`open_stream` resolves, connects, optionally tunnels through SOCKS5 and
secures with TLS, timing each phase and emitting ``connect.<phase>.*`` events.
:class:`Stream` wraps the connected gevent socket; every OS exception is mapped
to a :class:`~nexus_green.errors.NexusError` here and nowhere else.

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

import errno
import socket as _stdsocket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

import gevent
from gevent import socket as gsocket

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import (
    ConnectError,
    ConnectionLost,
    ConnectionRefused,
    ConnectTimeout,
    DNSError,
    NexusError,
)
from ..events import EventBus, default_bus
from .endpoint import Endpoint

__all__ = ["Stream", "open_stream", "ConnectInfo", "map_os_error"]

# Hooks filled in by transport/tls.py and transport/socks5.py (kept as
# callables so this module does not depend on their option types).
TunnelFn = Callable[[Any, Endpoint], None]
SecureFn = Callable[[Any, Endpoint, Optional[float]], Any]


@dataclass(slots=True, kw_only=True)
class ConnectInfo:
    """How a connect went: per-phase durations in seconds and the peer address."""

    endpoint: Endpoint
    phases: dict[str, float] = field(default_factory=dict)
    peer: str = ""
    total: float = 0.0


def map_os_error(exc: BaseException, what: str) -> NexusError:
    """Translate an OS/socket exception into the NexusError family it belongs to.

    Example::

        >>> type(map_os_error(ConnectionResetError(104, "reset"), "recv from x")).__name__
        'ConnectionLost'
    """
    if isinstance(exc, NexusError):
        return exc
    if isinstance(exc, _stdsocket.gaierror):
        return DNSError(f"{what}: DNS resolution failed: {exc}")
    if isinstance(exc, ConnectionRefusedError):
        return ConnectionRefused(f"{what}: connection refused")
    if isinstance(exc, (TimeoutError, _stdsocket.timeout)):
        return ConnectTimeout(f"{what}: timed out")
    if isinstance(exc, OSError) and exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return ConnectError(f"{what}: {exc.strerror or exc}")
    return ConnectionLost(f"{what}: {exc}")


class Stream:
    """A connected, cooperative byte stream (plain TCP or TLS).

    Example::

        >>> s = Stream(None, "test")   # wraps a socket; None only for this doc
        >>> s.closed
        True
    """

    __slots__ = ("_sock", "_raw", "label", "bytes_sent", "bytes_received")

    def __init__(self, sock: Any, label: str) -> None:
        self._sock = sock
        # The OS socket under a plain gevent socket, for try_send(); None for
        # TLS, where a partial non-blocking write must be retried with the
        # same buffer and is left to sendall.
        self._raw = getattr(sock, "_sock", None) if type(sock) is gsocket.socket else None
        self.label = label
        self.bytes_sent = 0
        self.bytes_received = 0

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

    def close(self) -> None:
        """Close the socket (idempotent). Any greenlet blocked in recv wakes up."""
        sock, self._sock = self._sock, None
        self._raw = None
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
        if sock is not None:
            sock.close()

    def __repr__(self) -> str:
        return f"<Stream {self.label} fd={self.fileno()} sent={self.bytes_sent} received={self.bytes_received}>"


def _phase(bus: EventBus, clock: Clock, info: ConnectInfo, name: str, conn_id: str, fn: Callable[[], Any]) -> Any:
    bus.emit(f"connect.{name}.started", conn_id=conn_id, endpoint=str(info.endpoint))
    t0 = clock.now()
    try:
        result = fn()
    except BaseException as exc:
        info.phases[name] = clock.now() - t0
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
    conn_id: str = "",
    bus: EventBus = default_bus,
    clock: Clock = SYSTEM_CLOCK,
    proxy: Any = None,
    tunnel: Optional[TunnelFn] = None,
    secure: Optional[SecureFn] = None,
    info: Optional[ConnectInfo] = None,
) -> Stream:
    """Open a stream to ``endpoint`` within ``timeout`` seconds overall.

    Phases: ``dns`` (of the endpoint, or of the proxy when ``proxy`` is given),
    ``tcp``, ``socks5`` (when ``tunnel`` is given), ``tls`` (when ``secure``
    is given). Durations land in ``info.phases``. The whole connect is bounded
    by one gevent.Timeout, caught only as our own instance.
    """
    info = info if info is not None else ConnectInfo(endpoint=endpoint)
    dial = proxy if proxy is not None else endpoint
    label = endpoint.address if proxy is None else f"{endpoint.address} via proxy {dial.address}"
    timer = gevent.Timeout(timeout) if timeout is not None else None
    sock = None
    t0 = clock.now()
    if timer is not None:
        timer.start()
    try:
        try:
            addrs = _phase(
                bus,
                clock,
                info,
                "dns",
                conn_id,
                lambda: gsocket.getaddrinfo(dial.host, dial.port, 0, _stdsocket.SOCK_STREAM, _stdsocket.IPPROTO_TCP),
            )
        except OSError as exc:
            raise DNSError(f"cannot resolve {dial.host!r} for {label}: {exc}") from exc

        def connect_tcp() -> Any:
            last: Optional[OSError] = None
            for family, type_, proto, _, addr in addrs:
                s = gsocket.socket(family, type_, proto)
                try:
                    # No per-socket timeout: an app's socket.setdefaulttimeout() must not make
                    # an idle stream fail; the connect is bounded by our own gevent.Timeout.
                    s.settimeout(None)
                    s.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
                    s.connect(addr)
                except OSError as exc:
                    s.close()
                    last = exc
                    continue
                except BaseException:
                    s.close()
                    raise
                info.peer = f"{addr[0]}:{addr[1]}"
                return s
            assert last is not None
            raise map_os_error(last, f"connect to {label}") from last

        sock = _phase(bus, clock, info, "tcp", conn_id, connect_tcp)
        if tunnel is not None:
            _phase(bus, clock, info, "socks5", conn_id, lambda: tunnel(sock, endpoint))
        if secure is not None:
            remaining = None if timeout is None else max(0.001, timeout - (clock.now() - t0))
            sock = _phase(bus, clock, info, "tls", conn_id, lambda: secure(sock, endpoint, remaining))
    except gevent.Timeout as t:
        if sock is not None:
            sock.close()
        if t is not timer:
            raise
        raise ConnectTimeout(f"connect to {label} timed out after {timeout}s (phases so far: {_fmt(info)})") from None
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    finally:
        if timer is not None:
            timer.close()
    info.total = clock.now() - t0
    return Stream(sock, label)


def _fmt(info: ConnectInfo) -> str:
    return ", ".join(f"{k}={v * 1000:.1f}ms" for k, v in info.phases.items()) or "none"
