"""ConnectionOptions: every option of a connection, its default and its validation.

This module owns the option set a :class:`~nexus_green.connection.Connection`
is built with. It is also importable as ``nexus_green.connection.ConnectionOptions``
and from ``nexus_green.connection.connection``.

Example::

    >>> ConnectionOptions(heartbeat_interval=None, request_timeout=5).request_timeout
    5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..errors import ConfigurationError
from ..protocol.frames import DEFAULT_MAX_FRAME_SIZE

__all__ = ["ConnectionOptions"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionOptions:
    """Every option of a connection, with its default.

    * ``connect_timeout`` -- seconds for DNS + TCP + SOCKS5 + TLS together (10).
    * ``request_timeout`` -- default per-request timeout in seconds (30); None waits forever.
    * ``max_frame_size`` -- largest frame accepted from the peer (16 MiB).
    * ``strict`` -- send nothing a plain NexusKit peer would not understand
      (no header block, no codec bits beyond gzip).
    * ``heartbeat_interval`` -- idle seconds before a heartbeat is sent (15); None disables.
    * ``heartbeat_timeout`` -- seconds to wait for any frame after a heartbeat
      before declaring the link dead (default: the interval, at most 10 s).
    * ``reconnect`` -- a strategy from :mod:`nexus_green.connection.backoff`
      (default exponential backoff with full jitter, base 0.5 s, cap 30 s);
      ``False`` disables reconnection: a lost link closes the connection.
    * ``fail_fast`` -- while reconnecting, fail requests at once instead of waiting.
    * ``recv_buffer_size`` -- the largest ``recv`` of small frames (256 KiB); on
      plain TCP reads shrink (to 16 KiB) while they bring over a thousand frames
      each, so a flood of tiny pushes is dispatched in slices and the hub is not
      held. A big frame is received into a buffer of its own size regardless.
    * ``tls`` -- a ``nexus_green.transport.tls.TLSConfig`` (implied default for tls:// URLs).
    * ``proxy`` -- a ``socks5://`` URL or ``ProxyConfig``.
    * ``resolver`` -- ``(host, port) -> getaddrinfo-style list`` (default: gevent's resolver).
    * ``happy_eyeballs_delay`` -- seconds before the next address of a host is
      tried in parallel with a slow one (RFC 8305; 0.25).
    * ``max_write_buffer`` -- bytes of frames queued for the writer before a
      caller waits (within its budget) for room (4 MiB); one frame larger
      than this is accepted when the queue is empty.
    * ``socket_options`` -- ``(level, option, value)`` triples set on every
      socket of the connection (for example ``TCP_USER_TIMEOUT``, keepalive).
    * ``io_greenlets`` -- drive a plain TCP link with a reader and a writer
      greenlet, as TLS links are, instead of hub callbacks (False; the
      callbacks are faster and hold no greenlet per idle connection; the
      option exists to compare the two and to rule one out when debugging).

    Example::

        >>> ConnectionOptions(heartbeat_interval=None).request_timeout
        30.0
    """

    connect_timeout: Optional[float] = 10.0
    request_timeout: Optional[float] = 30.0
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    strict: bool = False
    heartbeat_interval: Optional[float] = 15.0
    heartbeat_timeout: Optional[float] = None
    reconnect: Any = None
    fail_fast: bool = False
    recv_buffer_size: int = 256 * 1024
    tls: Any = None
    proxy: Any = None
    resolver: Any = None
    happy_eyeballs_delay: float = 0.25
    max_write_buffer: int = 4 * 1024 * 1024
    socket_options: tuple[tuple[int, int, Any], ...] = ()
    io_greenlets: bool = False

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "request_timeout", "heartbeat_interval", "heartbeat_timeout"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigurationError(f"{name} must be positive or None, got {value!r}")
        if self.max_frame_size < 20:
            raise ConfigurationError(f"max_frame_size must be at least 20, got {self.max_frame_size}")
        if not self.happy_eyeballs_delay > 0:
            raise ConfigurationError(f"happy_eyeballs_delay must be positive, got {self.happy_eyeballs_delay!r}")
        if self.max_write_buffer < 1024:
            raise ConfigurationError(f"max_write_buffer must be at least 1024 bytes, got {self.max_write_buffer}")
        if not all(isinstance(o, tuple) and len(o) == 3 for o in self.socket_options):
            raise ConfigurationError(
                f"socket_options must be (level, option, value) triples, got {self.socket_options!r}"
            )
        if self.recv_buffer_size < 1024:
            raise ConfigurationError(f"recv_buffer_size must be at least 1024, got {self.recv_buffer_size}")
