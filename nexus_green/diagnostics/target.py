"""What the checks diagnose (a :class:`Target`: host, port, TLS, proxy) and the raw link they probe it through.

The checks see the endpoint the way a Client does (directly, or through the
SOCKS5 proxy, with TLS when asked), but on a raw socket of their own, so
they can send a heartbeat and read whatever comes back, NexusKit or not.

TLS on a probe link does not verify the certificate: the probe measures
(protocol, latency), it does not trust. Judging the certificate is the TLS
check's job (:mod:`nexus_green.diagnostics.tls`), which reports every problem
it finds; the other checks still run against a server whose certificate is
bad, so one run says both "the certificate expired" and "the latency is fine".

Example::

    >>> t = Target.parse("localhost:7600", tls=True)
    >>> t.host, t.port, t.tls, t.label
    ('localhost', 7600, True, 'tls://localhost:7600')
    >>> Target.parse("[::1]:80").url
    'tcp://[::1]:80'
"""

from __future__ import annotations

import socket as _stdsocket
import time
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import quote

from gevent import socket as gsocket

from ..errors import ConfigurationError, NexusError
from ..transport import map_os_error
from ..transport.socks5 import ProxyConfig, open_tunnel, parse_proxy_url

__all__ = ["Target", "open_link", "parse_hostport"]


def parse_hostport(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as ``(host, port)``; ValueError naming the text if malformed.

    Example::

        >>> parse_hostport("[::1]:7600")
        ('::1', 7600)
        >>> parse_hostport("nowhere")
        Traceback (most recent call last):
        ...
        ValueError: expected HOST:PORT, got 'nowhere'
    """
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"expected HOST:PORT with an IPv6 host in brackets ([::1]:PORT), got {text!r}")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """The endpoint under diagnosis and the way to reach it.

    ``proxy`` is a ``socks5://`` URL or a :class:`~nexus_green.transport.socks5.ProxyConfig`;
    ``server_hostname`` is the name the certificate must carry (default: ``host``);
    ``cafile`` the CAs the TLS check trusts (default: the system's).

    Example::

        >>> Target(host="db", port=7600, proxy="socks5://127.0.0.1:1080").proxy_config.label
        'socks5://127.0.0.1:1080'
    """

    host: str
    port: int
    tls: bool = False
    proxy: Any = None
    server_hostname: Optional[str] = None
    cafile: Optional[str] = None
    client_cert: Optional[str] = None
    client_key: Optional[str] = None
    pins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigurationError("a diagnostics target needs a host")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port <= 65535:
            raise ConfigurationError(f"a diagnostics target needs a port in 1..65535, not {self.port!r}")
        if isinstance(self.proxy, str):
            parse_proxy_url(self.proxy)  # a malformed URL is refused here, saying what is wrong
        elif self.proxy is not None and not isinstance(self.proxy, ProxyConfig):
            raise ConfigurationError(f"proxy must be a socks5:// URL or a ProxyConfig, not {self.proxy!r}")

    @classmethod
    def parse(cls, hostport: str, **options: Any) -> Target:
        """A Target from ``HOST:PORT`` and the keyword options of the class."""
        host, port = parse_hostport(hostport)
        return cls(host=host, port=port, **options)

    @property
    def proxy_config(self) -> Optional[ProxyConfig]:
        """The proxy as a ProxyConfig, or None."""
        return parse_proxy_url(self.proxy) if isinstance(self.proxy, str) else self.proxy

    @property
    def proxy_url(self) -> Optional[str]:
        """The proxy as a ``socks5://`` URL (credentials included), or None.

        Example::

            >>> Target(host="h", port=1, proxy=ProxyConfig(host="p", port=9050)).proxy_url
            'socks5h://p:9050'
        """
        if self.proxy is None or isinstance(self.proxy, str):
            return self.proxy
        p = self.proxy
        login = f"{quote(p.username, safe='')}:{quote(p.password or '', safe='')}@" if p.username else ""
        host = f"[{p.host}]" if ":" in p.host else p.host
        return f"socks5{'h' if p.remote_dns else ''}://{login}{host}:{p.port}"

    @property
    def url(self) -> str:
        """The Client URL of the endpoint (``tcp://`` or ``tls://``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls' if self.tls else 'tcp'}://{host}:{self.port}"

    @property
    def label(self) -> str:
        """How the report names the endpoint: its URL, plus the proxy when there is one."""
        proxy = self.proxy_config
        return self.url if proxy is None else f"{self.url} via {proxy.label}"


def _connect(host: str, port: int, timeout: float) -> Any:
    sock = gsocket.create_connection((host, port), timeout=timeout)
    try:
        sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
    except OSError:  # pragma: no cover - TCP_NODELAY exists on every TCP socket we make
        pass
    return sock


def open_link(target: Target, timeout: float, *, tls: Optional[bool] = None) -> Any:
    """A connected socket to ``target`` (through its proxy; TLS, unverified, when ``tls`` or ``target.tls``).

    Everything (connect, SOCKS5 handshake, TLS handshake) ends within
    ``timeout`` seconds; the socket keeps ``timeout`` as its own. Failures
    raise the :class:`~nexus_green.errors.NexusError` the Client would see
    (ConnectionRefused, ConnectTimeout, DNSError, ProxyError, TLSError...),
    and nothing stays open.

    Example::

        >>> from nexus_green.testing import EmbeddedServer
        >>> with EmbeddedServer() as server:
        ...     s = open_link(Target(host=server.host, port=server.port), 5.0)
        ...     s.getpeername()[1] == server.port
        ...     s.close()
        True
    """
    use_tls = target.tls if tls is None else tls
    end = time.monotonic() + timeout
    proxy = target.proxy_config
    dial_host, dial_port = (target.host, target.port) if proxy is None else (proxy.host, proxy.port)
    what = f"connect to {target.label}"
    try:
        sock = _connect(dial_host, dial_port, timeout)
    except OSError as exc:
        raise map_os_error(exc, what, connecting=True) from exc
    try:
        if proxy is not None:
            open_tunnel(
                sock,
                target_host=target.host,
                target_port=target.port,
                username=proxy.username,
                password=proxy.password,
                remote_dns=proxy.remote_dns,
                proxy_label=proxy.label,
                timeout=max(0.001, end - time.monotonic()),
            )
        if use_tls:
            from ..transport.tls import TLSConfig, wrap

            config = TLSConfig(verify=False, check_hostname=False, server_hostname=target.server_hostname)
            sock = wrap(sock, config, target.host, max(0.001, end - time.monotonic()), port=target.port)
        sock.settimeout(timeout)
        return sock
    except NexusError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise map_os_error(exc, what, connecting=True) from exc
