"""A TCP peer that follows a script: for testing how a client meets a misbehaving server.

Each accepted connection runs ``script(sock)`` in its own greenlet, and the
socket is closed when the script returns or raises. The peer listens on an
OS-chosen loopback port and stops when the ``with`` block ends.

Example::

    >>> from gevent import socket
    >>> def greet(sock):
    ...     sock.sendall(b"hello")
    >>> with scripted_peer(greet) as (host, port):
    ...     with socket.create_connection((host, port), timeout=5) as c:
    ...         c.recv(5)
    b'hello'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gevent.server import StreamServer

__all__ = ["scripted_peer"]


@contextmanager
def scripted_peer(script: Callable[[Any], None]) -> Iterator[tuple[str, int]]:
    """Listen on 127.0.0.1 (an OS-chosen port) and run ``script(sock)`` for every connection; yield the address.

    Example: ``with scripted_peer(lambda sock: sock.sendall(b"junk")) as (host, port): ...``
    """

    def handle(sock: Any, addr: Any) -> None:
        try:
            script(sock)
        finally:
            sock.close()

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    try:
        yield server.address
    finally:
        server.stop(timeout=1)
