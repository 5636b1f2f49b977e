"""Transport (layer L2): sockets, TLS, SOCKS5; OS errors become NexusErrors here.

Example::

    >>> from nexus_green.transport import Endpoint
    >>> Endpoint.parse("tcp://localhost:9").port
    9
"""

from .endpoint import Endpoint
from .stream import ConnectInfo, Stream, default_resolver, interleave_families, map_os_error, open_stream

__all__ = [
    "Endpoint",
    "Stream",
    "open_stream",
    "ConnectInfo",
    "map_os_error",
    "default_resolver",
    "interleave_families",
]
