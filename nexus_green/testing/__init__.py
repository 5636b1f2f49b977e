"""The public testing kit: an embedded NexusKit server, a SOCKS5 test proxy,
a scripted misbehaving peer, test certificates and a FakeClock, for testing
code built on nexus_green.

Example::

    >>> from nexus_green.testing import EmbeddedServer, FakeClock
    >>> with EmbeddedServer() as server:
    ...     server.url.startswith("tcp://127.0.0.1:")
    True
"""

from ..clock import FakeClock
from .scripted import scripted_peer
from .server import (
    FID_CLOSE,
    FID_DELAY,
    FID_ECHO,
    FID_ERROR,
    FID_GARBAGE,
    FID_INFO,
    FID_PUSH,
    FID_SILENT,
    EmbeddedServer,
    Reply,
)
from .socks5_proxy import ProxyRequest, Socks5Proxy
from .tls import CertificateKit, TLSEchoServer, make_test_certificates

__all__ = [
    "Socks5Proxy",
    "ProxyRequest",
    "make_test_certificates",
    "CertificateKit",
    "TLSEchoServer",
    "EmbeddedServer",
    "Reply",
    "scripted_peer",
    "FakeClock",
    "FID_ECHO",
    "FID_DELAY",
    "FID_ERROR",
    "FID_PUSH",
    "FID_SILENT",
    "FID_CLOSE",
    "FID_GARBAGE",
    "FID_INFO",
]
