"""SOCKS5 proxy support on a socket: proxy URLs and the handshake driver (layer L2).

This module owns :class:`ProxyConfig` (what a ``socks5://`` URL says),
:func:`parse_proxy_url`, and :func:`open_tunnel`, which drives the sans-IO
:class:`~nexus_green.protocol.socks5.Socks5Handshake` over an already
connected gevent socket. OS errors during the handshake are mapped here:
a timeout is :class:`~nexus_green.errors.HandshakeTimeout`, a reset or broken
pipe is :class:`~nexus_green.errors.ConnectionLost`, and a proxy that closes
mid-handshake is ``ProxyError(reason="malformed_reply")``. Every error names
the proxy.

URL syntax: ``socks5://[user:password@]host[:port]`` or ``socks5h://...``.
The port defaults to 1080; user and password are percent-decoded; an IPv6
proxy goes in brackets (``socks5://[::1]:1080``). Both schemes resolve the
target's name on the proxy (``remote_dns=True``) unless ``remote_dns=False``
is passed for ``socks5://``, in which case :func:`open_tunnel` resolves it
locally and sends the IP address.

Example::

    >>> cfg = parse_proxy_url("socks5://alice:s%40cret@127.0.0.1:1080")
    >>> cfg.host, cfg.port, cfg.username, cfg.password, cfg.remote_dns
    ('127.0.0.1', 1080, 'alice', 's@cret', True)
    >>> cfg.label, cfg
    ('socks5://127.0.0.1:1080', ProxyConfig(url='socks5://alice:***@127.0.0.1:1080', remote_dns=True))
"""

from __future__ import annotations

import ipaddress
import socket as _stdsocket
from dataclasses import dataclass
from typing import Any, Optional
from urllib.parse import unquote, urlsplit

import gevent
from gevent import socket as gsocket

from ..errors import ConfigurationError, ConnectionLost, DNSError, HandshakeTimeout, InvalidURL, ProxyError
from ..protocol.socks5 import Socks5Handshake, Socks5State

__all__ = ["ProxyConfig", "parse_proxy_url", "open_tunnel", "DEFAULT_SOCKS5_PORT"]

DEFAULT_SOCKS5_PORT = 1080


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyConfig:
    """A SOCKS5 proxy: where it is, how to log in, who resolves names.

    ``remote_dns=True`` (default) sends host names to the proxy, which
    resolves them; ``False`` resolves them locally and sends the IP address.
    The repr never shows the password.

    Example::

        >>> p = ProxyConfig(host="::1", port=9050, username="u", password="p")
        >>> p.label, "p" in repr(p).split("@")[0].split(":")[-1]
        ('socks5://[::1]:9050', False)
    """

    host: str
    port: int = DEFAULT_SOCKS5_PORT
    username: Optional[str] = None
    password: Optional[str] = None
    remote_dns: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigurationError(f"SOCKS5 proxy host must be a non-empty string, not {self.host!r}")
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 0 < self.port <= 0xFFFF:
            raise ConfigurationError(f"SOCKS5 proxy port must be an integer in 1..65535, not {self.port!r}")
        if (self.username is None) != (self.password is None):
            raise ConfigurationError("SOCKS5 proxy username and password must be given together")
        if self.username is not None and not 0 < len(self.username.encode("utf-8")) <= 255:
            raise ConfigurationError("SOCKS5 proxy username must be 1..255 bytes in UTF-8")
        if self.password is not None and len(self.password.encode("utf-8")) > 255:
            raise ConfigurationError("SOCKS5 proxy password must be at most 255 bytes in UTF-8")

    @property
    def label(self) -> str:
        """``socks5://host:port`` without credentials: safe for logs and error messages."""
        return f"socks5://{_host_port(self.host, self.port)}"

    def __repr__(self) -> str:
        creds = f"{self.username}:***@" if self.username is not None else ""
        return f"ProxyConfig(url='socks5://{creds}{_host_port(self.host, self.port)}', remote_dns={self.remote_dns})"


def parse_proxy_url(url: str, *, remote_dns: Optional[bool] = None) -> ProxyConfig:
    """Parse ``socks5://[user:pass@]host[:port]`` (or ``socks5h://``) into a :class:`ProxyConfig`.

    ``remote_dns`` defaults to True for both schemes; ``remote_dns=False``
    with ``socks5h://`` (which means "the proxy resolves") is a contradiction
    and raises :class:`~nexus_green.errors.ConfigurationError`. A malformed
    URL raises :class:`~nexus_green.errors.InvalidURL` saying what is wrong.

    Example::

        >>> parse_proxy_url("socks5h://[::1]").port
        1080
        >>> parse_proxy_url("socks5://proxy.local:1080", remote_dns=False).remote_dns
        False
        >>> parse_proxy_url("http://proxy:3128")
        Traceback (most recent call last):
        ...
        nexus_green.errors.InvalidURL: proxy URL 'http://proxy:3128' has scheme 'http'; only socks5:// and socks5h:// are supported
    """
    if not isinstance(url, str):
        raise InvalidURL(f"proxy URL must be a string, not {type(url).__name__}")
    shown = url
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as e:
        raise InvalidURL(f"proxy URL {_redact(shown)!r} is malformed: {e}") from e
    if parts.username is not None:
        shown = _redact(url)
    scheme = parts.scheme.lower()
    if scheme not in ("socks5", "socks5h"):
        what = f"scheme {parts.scheme!r}" if scheme else "no scheme"
        raise InvalidURL(f"proxy URL {shown!r} has {what}; only socks5:// and socks5h:// are supported")
    if not parts.hostname:
        raise InvalidURL(f"proxy URL {shown!r} has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise InvalidURL(f"proxy URL {shown!r} must not have a path, query or fragment")
    if port == 0:
        raise InvalidURL(f"proxy URL {shown!r} has port 0")
    username = password = None
    if parts.username is not None:
        if parts.password is None:
            raise InvalidURL(f"proxy URL {shown!r} has a username but no password (write user:password@)")
        username, password = unquote(parts.username), unquote(parts.password)
        if not username:
            raise InvalidURL(f"proxy URL {shown!r} has an empty username")
    if scheme == "socks5h" and remote_dns is False:
        raise ConfigurationError(
            f"proxy URL {shown!r}: socks5h:// means remote DNS, which remote_dns=False contradicts"
        )
    try:
        return ProxyConfig(
            host=parts.hostname,
            port=DEFAULT_SOCKS5_PORT if port is None else port,
            username=username,
            password=password,
            remote_dns=True if remote_dns is None else remote_dns,
        )
    except ConfigurationError as e:
        raise InvalidURL(f"proxy URL {shown!r}: {e}") from e


def _redact(url: str) -> str:
    """Hide the password of ``scheme://user:pass@host`` for error messages."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, hostpart = rest.rpartition("@")
    if not sep or not at:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{hostpart}"


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _resolve(host: str, port: int, proxy_label: str) -> str:
    """Resolve ``host`` locally (remote_dns=False): the first address getaddrinfo returns."""
    try:
        infos = gsocket.getaddrinfo(host, port, 0, _stdsocket.SOCK_STREAM)
    except OSError as e:
        raise DNSError(f"resolving {host!r} for SOCKS5 proxy {proxy_label} (remote_dns=False) failed: {e}") from e
    return str(infos[0][4][0])


def open_tunnel(
    sock: Any,
    *,
    target_host: str,
    target_port: int,
    username: Optional[str],
    password: Optional[str],
    remote_dns: bool,
    proxy_label: str,
    timeout: Optional[float] = None,
) -> tuple[str, int]:
    """Run the SOCKS5 CONNECT handshake on ``sock`` (connected to the proxy); return the bound address.

    ``sock`` is a connected gevent (or monkey-patched) socket; afterwards it
    carries the tunnelled stream to ``target_host:target_port``, ready for
    TLS or the NexusKit protocol. The socket is read exactly as far as the
    handshake goes, never into tunnel data. ``timeout`` bounds the whole
    handshake (None: only the socket's own timeout applies). The caller
    owns the socket and closes it on failure.

    Errors (each names ``proxy_label`` and the target):
    :class:`~nexus_green.errors.ProxyError` with a ``reason`` for every
    refusal or bad reply (``malformed_reply`` if the proxy closes
    mid-handshake); :class:`~nexus_green.errors.HandshakeTimeout`;
    :class:`~nexus_green.errors.ConnectionLost` for resets;
    :class:`~nexus_green.errors.DNSError` when ``remote_dns=False`` and the
    name does not resolve locally.

    Example (against the test proxy of :mod:`nexus_green.testing`)::

        >>> from gevent import socket
        >>> from nexus_green.testing.socks5_proxy import Socks5Proxy
        >>> with Socks5Proxy() as proxy:
        ...     s = socket.create_connection(proxy.address, timeout=5)
        ...     try:
        ...         open_tunnel(s, target_host="127.0.0.1", target_port=1, username=None, password=None,
        ...                     remote_dns=True, proxy_label=proxy.url)
        ...     except ProxyError as e:
        ...         print(e.reason)
        ...     finally:
        ...         s.close()
        connection_refused
    """
    if not remote_dns and not _is_ip(target_host):
        target_host = _resolve(target_host, target_port, proxy_label)
    hs = Socks5Handshake(
        target_host=target_host,
        target_port=target_port,
        username=username,
        password=password,
        remote_dns=remote_dns,
    )
    where = f"SOCKS5 proxy {proxy_label} (tunnel to {hs.target})"
    timer = gevent.Timeout(timeout) if timeout is not None else None
    if timer is not None:
        timer.start()
    try:
        sock.sendall(hs.initiate())
        while hs.state is not Socks5State.CONNECTED:
            data = sock.recv(hs.bytes_needed())
            if not data:
                raise ProxyError(
                    f"{where} closed the connection in the middle of the handshake (state {hs.state.value})",
                    reason="malformed_reply",
                    retryable=True,
                )
            hs.receive_data(data)
            out = hs.data_to_send()
            if out:
                sock.sendall(out)
    except gevent.Timeout as t:
        if t is not timer:
            raise
        raise HandshakeTimeout(f"{where}: handshake did not finish within {timeout}s") from None
    except ProxyError as e:
        if e is not hs.error:
            raise
        # Raised by the state machine, which does not know the proxy's name: add it.
        msg = str(e)
        prefix = "SOCKS5 proxy "
        msg = f"{prefix}{proxy_label} {msg[len(prefix) :]}" if msg.startswith(prefix) else f"{where}: {msg}"
        raise ProxyError(msg, reason=e.reason, retryable=e.retryable) from e
    except TimeoutError as e:
        raise HandshakeTimeout(f"{where}: handshake timed out ({e})") from e
    except OSError as e:
        raise ConnectionLost(f"{where}: connection lost during the handshake: {e}") from e
    finally:
        if timer is not None:
            timer.close()
    assert hs.bound_address is not None
    return hs.bound_address
