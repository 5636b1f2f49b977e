"""A small SOCKS5 proxy server for tests and demos.

:class:`Socks5Proxy` is a gevent ``StreamServer`` on loopback (port 0 by
default) that speaks the server side of RFC 1928 CONNECT with no
authentication or RFC 1929 username/password, connects to IPv4, IPv6 and
domain-name targets, and relays bytes both ways with two greenlets per
tunnel. Tests and chaos experiments can force a reply code
(:attr:`Socks5Proxy.force_reply`), filter targets (``allow``), and read what
happened: :attr:`Socks5Proxy.tunnels_opened`, :attr:`Socks5Proxy.tunnels_active`
and :attr:`Socks5Proxy.requests` (each CONNECT's address type and target, so a
test can tell whether the name was resolved by the proxy).

:meth:`Socks5Proxy.stop` closes the listener and every tunnel and waits for
every greenlet it started: nothing leaks.

Example::

    >>> from gevent import socket
    >>> from nexus_green.transport.socks5 import open_tunnel
    >>> with Socks5Proxy(username="u", password="p") as proxy:
    ...     s = socket.create_connection(proxy.address, timeout=5)
    ...     bound = open_tunnel(s, target_host="127.0.0.1", target_port=proxy.address[1],
    ...                         username="u", password="p", remote_dns=True, proxy_label=proxy.url)
    ...     s.close()
    ...     proxy.requests[0].atyp, proxy.tunnels_opened
    ('ipv4', 1)
"""

from __future__ import annotations

import errno
import ipaddress
import socket as _stdsocket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import gevent
from gevent import socket as gsocket
from gevent.server import StreamServer

from ..greenlets import spawn

__all__ = ["Socks5Proxy", "ProxyRequest"]

_ATYP_NAMES = {0x01: "ipv4", 0x03: "domain", 0x04: "ipv6"}


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyRequest:
    """One CONNECT request the proxy received: ``atyp`` is "ipv4", "domain" or "ipv6".

    ``reply`` is the reply code the proxy answered with (0 = success).

    Example::

        >>> ProxyRequest(atyp="domain", host="localhost", port=80, reply=0).host
        'localhost'
    """

    atyp: str
    host: str
    port: int
    reply: int


class _Closed(Exception):
    """The client went away or spoke garbage: end this connection quietly."""


class _Tunnel:
    __slots__ = ("client", "upstream", "greenlets")

    def __init__(self, client: Any, upstream: Any) -> None:
        self.client = client
        self.upstream = upstream
        self.greenlets: list[gevent.Greenlet] = []

    def close(self) -> None:
        for s in (self.client, self.upstream):
            try:
                s.close()
            except OSError:  # pragma: no cover - close on a gevent socket does not raise in practice
                pass


def _recv_exactly(sock: Any, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise _Closed("client closed during the handshake")
        buf += chunk
    return buf


def _reply_for(exc: OSError) -> int:
    if isinstance(exc, _stdsocket.gaierror):
        return 0x04
    if isinstance(exc, ConnectionRefusedError):
        return 0x05
    if isinstance(exc, (TimeoutError, _stdsocket.timeout)):
        return 0x06
    if exc.errno == errno.ENETUNREACH:
        return 0x03
    if exc.errno in (errno.EHOSTUNREACH, errno.EADDRNOTAVAIL):
        return 0x04
    return 0x01


class Socks5Proxy:
    """A SOCKS5 proxy on ``host:port`` (default 127.0.0.1, a free port) for tests.

    Options:

    * ``username``/``password`` -- require RFC 1929 login (otherwise no-auth).
    * ``force_reply`` -- answer every CONNECT with this reply code instead of
      connecting (e.g. ``0x05`` connection refused); settable at run time.
    * ``allow(host, port) -> bool`` -- targets it refuses get reply 0x02
      (not allowed).
    * ``connect_timeout`` -- for connecting to targets (5 s).

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.

    Example::

        >>> p = Socks5Proxy(force_reply=0x02).start()
        >>> p.url.startswith("socks5://127.0.0.1:"), p.tunnels_active
        (True, 0)
        >>> p.stop()
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        username: Optional[str] = None,
        password: Optional[str] = None,
        force_reply: Optional[int] = None,
        allow: Optional[Callable[[str, int], bool]] = None,
        connect_timeout: float = 5.0,
    ) -> None:
        if (username is None) != (password is None):
            raise ValueError("Socks5Proxy needs both username and password, or neither")
        self.username = username
        self.password = password
        self.force_reply = force_reply
        self.allow = allow
        self.connect_timeout = connect_timeout
        self.requests: list[ProxyRequest] = []
        self.tunnels_opened = 0
        self.auth_failures = 0
        self._tunnels: set[_Tunnel] = set()
        self._clients: set[Any] = set()
        self._handlers: set[gevent.Greenlet] = set()
        self._server = StreamServer((host, port), self._handle)
        self._started = False

    # -- lifecycle -----------------------------------------------------------
    def start(self) -> Socks5Proxy:
        """Start listening; returns self.

        Example::

            >>> with Socks5Proxy() as p:
            ...     p.address[0]
            '127.0.0.1'
        """
        self._server.start()
        self._started = True
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop listening, close every client and tunnel, wait for the greenlets (idempotent).

        Example::

            >>> p = Socks5Proxy().start(); p.stop(); p.stop()
        """
        if not self._started:
            return
        self._started = False
        self._server.close()
        for sock in list(self._clients):
            sock.close()
        for tunnel in list(self._tunnels):
            tunnel.close()
        # StreamServer without a pool does not track its handlers: wait for them here.
        handlers = list(self._handlers)
        gevent.joinall(handlers, timeout=timeout)
        gevent.killall(handlers, timeout=timeout)
        self._server.stop(timeout=timeout)

    def __enter__(self) -> Socks5Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- figures -------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the proxy listens on (after :meth:`start`)."""
        addr = self._server.address
        return (str(addr[0]), int(addr[1]))

    @property
    def url(self) -> str:
        """``socks5://[user:password@]host:port`` for this proxy.

        Example::

            >>> with Socks5Proxy(username="u", password="p") as p:
            ...     p.url.startswith("socks5://u:p@127.0.0.1:")
            True
        """
        host, port = self.address
        creds = f"{self.username}:{self.password}@" if self.username is not None else ""
        where = f"[{host}]" if ":" in host else host
        return f"socks5://{creds}{where}:{port}"

    @property
    def tunnels_active(self) -> int:
        """Tunnels currently relaying."""
        return len(self._tunnels)

    def __repr__(self) -> str:
        state = "listening" if self._started else "stopped"
        return f"<Socks5Proxy {state} opened={self.tunnels_opened} active={self.tunnels_active}>"

    # -- server side of the handshake ------------------------------------------
    def _handle(self, client: Any, addr: Any) -> None:
        me = gevent.getcurrent()
        self._handlers.add(me)
        self._clients.add(client)
        try:
            try:
                upstream = self._handshake(client)
            except (_Closed, OSError, UnicodeError):
                upstream = None
            finally:
                self._clients.discard(client)
            if upstream is None:
                client.close()
                return
            self._relay(client, upstream)
        finally:
            self._handlers.discard(me)

    def _handshake(self, client: Any) -> Optional[Any]:
        ver, nmethods = _recv_exactly(client, 2)
        if ver != 0x05:
            raise _Closed(f"greeting version {ver}")
        methods = _recv_exactly(client, nmethods)
        wanted = 0x02 if self.username is not None else 0x00
        if wanted not in methods:
            client.sendall(b"\x05\xff")
            return None
        client.sendall(bytes([0x05, wanted]))
        if wanted == 0x02 and not self._authenticate(client):
            return None
        ver, cmd, _rsv, atyp = _recv_exactly(client, 4)
        if ver != 0x05:
            raise _Closed(f"request version {ver}")
        if atyp == 0x01:
            host = str(ipaddress.IPv4Address(_recv_exactly(client, 4)))
        elif atyp == 0x04:
            host = str(ipaddress.IPv6Address(_recv_exactly(client, 16)))
        elif atyp == 0x03:
            host = _recv_exactly(client, _recv_exactly(client, 1)[0]).decode("idna")
        else:
            self._reply(client, 0x08)
            return None
        port = int.from_bytes(_recv_exactly(client, 2), "big")
        kind = _ATYP_NAMES[atyp]
        if cmd != 0x01:
            code = 0x07
        elif self.force_reply is not None:
            code = self.force_reply
        elif self.allow is not None and not self.allow(host, port):
            code = 0x02
        else:
            try:
                upstream = gsocket.create_connection((host, port), timeout=self.connect_timeout)
            except OSError as e:
                code = _reply_for(e)
            else:
                upstream.settimeout(None)
                self.requests.append(ProxyRequest(atyp=kind, host=host, port=port, reply=0))
                bound = upstream.getsockname()
                self._reply(client, 0x00, bound[0], bound[1])
                return upstream
        self.requests.append(ProxyRequest(atyp=kind, host=host, port=port, reply=code))
        self._reply(client, code)
        return None

    def _authenticate(self, client: Any) -> bool:
        ver, ulen = _recv_exactly(client, 2)
        user = _recv_exactly(client, ulen)
        plen = _recv_exactly(client, 1)[0]
        password = _recv_exactly(client, plen)
        ok = ver == 0x01 and user == (self.username or "").encode() and password == (self.password or "").encode()
        client.sendall(b"\x01\x00" if ok else b"\x01\x01")
        if not ok:
            self.auth_failures += 1
        return ok

    @staticmethod
    def _reply(client: Any, code: int, host: str = "0.0.0.0", port: int = 0) -> None:
        ip = ipaddress.ip_address(host)
        atyp = 0x01 if ip.version == 4 else 0x04
        client.sendall(bytes([0x05, code, 0x00, atyp]) + ip.packed + port.to_bytes(2, "big"))

    # -- relaying ----------------------------------------------------------------
    def _relay(self, client: Any, upstream: Any) -> None:
        tunnel = _Tunnel(client, upstream)
        self._tunnels.add(tunnel)
        self.tunnels_opened += 1
        try:
            tunnel.greenlets = [
                spawn(self._pipe, client, upstream, name="socks5-proxy:up"),
                spawn(self._pipe, upstream, client, name="socks5-proxy:down"),
            ]
            gevent.joinall(tunnel.greenlets)
        finally:
            # Also runs when stop() kills this handler: the pipes must not outlive it.
            gevent.killall(tunnel.greenlets)
            tunnel.close()
            self._tunnels.discard(tunnel)

    @staticmethod
    def _pipe(src: Any, dst: Any) -> None:
        """Copy ``src`` to ``dst``.

        On EOF half-close ``dst`` so its peer sees EOF too and the other
        direction can finish; on a reset close both sockets, which wakes the
        other direction's greenlet.
        """
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
            dst.shutdown(_stdsocket.SHUT_WR)
        except OSError:
            src.close()
            dst.close()
