"""Endpoints: parsing ``tcp://host:port`` and ``tls://host:port`` URLs.

Example::

    >>> Endpoint.parse("tcp://127.0.0.1:7600")
    Endpoint(scheme='tcp', host='127.0.0.1', port=7600)
    >>> Endpoint.parse("tls://[::1]:443").address
    '[::1]:443'
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import InvalidURL

__all__ = ["Endpoint", "SCHEMES"]

SCHEMES = ("tcp", "tls")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a connection goes: scheme (tcp or tls), host and port."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        """True for ``tls://`` endpoints."""
        return self.scheme == "tls"

    @property
    def address(self) -> str:
        """``host:port`` with IPv6 literals bracketed."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}"

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Parse a URL; anything malformed raises :class:`InvalidURL` naming the problem.

        Example::

            >>> Endpoint.parse("http://x:1")
            Traceback (most recent call last):
            ...
            nexus_green.errors.InvalidURL: unsupported scheme 'http' in 'http://x:1'; use tcp:// or tls://
        """
        if not isinstance(url, str) or "://" not in url:
            raise InvalidURL(f"{url!r} is not a URL like tcp://host:port")
        try:
            parts = urlsplit(url)
        except ValueError as exc:  # e.g. an unclosed IPv6 bracket
            raise InvalidURL(f"malformed URL {url!r}: {exc}") from None
        if parts.scheme not in SCHEMES:
            raise InvalidURL(f"unsupported scheme {parts.scheme!r} in {url!r}; use tcp:// or tls://")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username or parts.password:
            raise InvalidURL(f"{url!r} must be only scheme://host:port")
        try:
            port = parts.port
        except ValueError as exc:
            raise InvalidURL(f"bad port in {url!r}: {exc}") from None
        host = parts.hostname
        if not host:
            raise InvalidURL(f"no host in {url!r}")
        netloc = parts.netloc
        if netloc.startswith("["):
            # urlsplit takes "[::1]x:80" for host ::1, port 80; only ":port" may follow the bracket.
            # (urlsplit itself refuses stray brackets, and brackets around anything but IPv6.)
            tail = netloc[netloc.index("]") + 1 :]
            if tail and not tail.startswith(":"):
                raise InvalidURL(f"{tail!r} after the IPv6 address in {url!r}; write tcp://[addr]:port")
        if port is None:
            raise InvalidURL(f"no port in {url!r}; the NexusKit protocol has no default port")
        if port == 0:
            raise InvalidURL(f"port 0 in {url!r} cannot be connected to; name the server's port")
        return cls(parts.scheme, host, port)
