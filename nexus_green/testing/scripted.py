"""Where ``scripted_peer`` used to live: it is now one of the hostile peers (:mod:`nexus_green.testing.hostile`).

Kept so that ``from nexus_green.testing.scripted import scripted_peer`` still
works; there is one implementation, :class:`~nexus_green.testing.hostile.ScriptedPeer`.
The peer it yields unpacks as ``(host, port)`` as before, and also has
``.url``, counters and ``errors``.

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

from .hostile import ScriptedPeer, scripted_peer

__all__ = ["scripted_peer", "ScriptedPeer"]
