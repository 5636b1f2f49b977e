"""ConnectionPool: a bounded set of multiplexed connections to one endpoint.

Connections are multiplexed, so "checking out" a connection does not take it
away from others: :meth:`ConnectionPool.acquire` picks the connected
connection with the fewest requests in flight, and opens another (up to
``max_size``) only when every connection carries ``max_in_flight`` requests,
like HTTP/2 pools do with SETTINGS_MAX_CONCURRENT_STREAMS. When all are full,
callers wait at most ``checkout_timeout`` and then get :class:`PoolExhausted`.

What the pool fixes that users of redis-py, urllib3 and geventhttpclient
trip over: checkouts never wait forever; ``max_size`` is a real maximum
(connections being opened count); stale connections are found in the
background (every connection reads continuously, and idle ones send
heartbeats), not on use; a forked child never reuses the parent's sockets.

State changes happen in code with no yield point (atomic under gevent's
cooperative scheduling, the per-request path takes no lock); connecting and
closing happen outside those sections. ``repr`` states the pool's figures and
doubles as a test oracle.

Example::

    >>> from nexus_green.testing import EmbeddedServer
    >>> with EmbeddedServer() as server:
    ...     with ConnectionPool(server.endpoint, max_size=2) as pool:
    ...         conn = pool.acquire()
    ...         r = conn.request(b"hi", fid=1, timeout=5)
    ...         pool.release(conn)
    ...         print(r.body, pool.stats()["size"])
    b'hi' 1
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable
from typing import Any, Optional

import gevent
from gevent.event import Event

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ClientClosed, ConfigurationError, NexusError, PoolExhausted
from ..events import EventBus, default_bus
from ..greenlets import spawn
from ..protocol.frames import Frame
from ..transport.endpoint import Endpoint
from .connection import Connection, ConnectionOptions
from .state import CLOSED, CONNECTED

__all__ = ["ConnectionPool"]

log = logging.getLogger("nexus_green.pool")

_POOLS: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class ConnectionPool:
    """Pool of multiplexed connections to one endpoint.

    Options (defaults): ``min_size`` 1 connection kept open; ``max_size`` 4;
    ``max_in_flight`` 256 concurrent requests per connection before another
    is opened; ``checkout_timeout`` 5 s; ``max_idle_time`` 300 s (idle
    connections above ``min_size`` are closed); ``max_lifetime`` None
    (connections older than this are retired once idle); ``health_check_interval``
    5 s (the background maintainer's period).

    Example::

        >>> from nexus_green.testing import EmbeddedServer
        >>> with EmbeddedServer() as server, ConnectionPool(server.endpoint) as pool:
        ...     pool.acquire() is pool.acquire()    # one connection serves many
        True
    """

    def __init__(
        self,
        endpoint: Endpoint | str,
        *,
        min_size: int = 1,
        max_size: int = 4,
        max_in_flight: int = 256,
        checkout_timeout: Optional[float] = 5.0,
        max_idle_time: Optional[float] = 300.0,
        max_lifetime: Optional[float] = None,
        health_check_interval: float = 5.0,
        options: Optional[ConnectionOptions] = None,
        bus: EventBus = default_bus,
        clock: Clock = SYSTEM_CLOCK,
        on_push: Optional[Callable[[Frame], None]] = None,
        name: str = "",
    ) -> None:
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ConfigurationError(f"need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}")
        if max_in_flight < 1:
            raise ConfigurationError(f"max_in_flight must be at least 1, got {max_in_flight}")
        if health_check_interval <= 0:
            raise ConfigurationError(f"health_check_interval must be positive, got {health_check_interval}")
        self.endpoint = endpoint if isinstance(endpoint, Endpoint) else Endpoint.parse(endpoint)
        self.name = name or str(self.endpoint)
        self.min_size = min_size
        self.max_size = max_size
        self.max_in_flight = max_in_flight
        self.checkout_timeout = checkout_timeout
        self.max_idle_time = max_idle_time
        self.max_lifetime = max_lifetime
        self.health_check_interval = health_check_interval
        self.options = options or ConnectionOptions()
        self.bus = bus
        self.clock = clock
        self.on_push = on_push
        self._conns: list[Connection] = []
        self._last_used: dict[str, float] = {}
        self._retiring: list[Connection] = []
        self._opening = 0
        self._waiters = 0
        self._capacity = Event()
        self._closed = False
        self._maintainer: Optional[gevent.Greenlet] = None
        # figures
        self.checkouts = 0
        self.exhausted = 0
        self.opened = 0
        self.discarded = 0
        self.wait_time_total = 0.0
        self.wait_time_max = 0.0
        _POOLS.add(self)

    # ------------------------------------------------------------------ checkout
    def acquire(self, timeout: Optional[float] = -1.0) -> Connection:
        """The connection that should carry the next request.

        Waits at most ``timeout`` (default ``checkout_timeout``) when every
        connection is full, then raises :class:`PoolExhausted`.
        """
        if self._closed:
            raise ClientClosed(f"pool for {self.endpoint} is closed")
        self.checkouts += 1
        conns = self._conns
        if len(conns) == 1:  # the common case, without the loop
            conn = conns[0]
            if conn.connected and len(conn._pending) < self.max_in_flight:
                return conn
        best = self._pick()
        if best is not None:
            return best
        return self._acquire_slow(self.checkout_timeout if timeout is not None and timeout < 0 else timeout)

    def _pick(self) -> Optional[Connection]:
        best: Optional[Connection] = None
        best_load = self.max_in_flight
        for conn in self._conns:
            if conn.connected:
                load = len(conn._pending)
                if load < best_load:
                    best, best_load = conn, load
                    if load == 0:
                        break
        return best

    def _acquire_slow(self, timeout: Optional[float]) -> Connection:
        started = self.clock.now()
        while True:
            self._drop_closed()
            if self._closed:
                raise ClientClosed(f"pool for {self.endpoint} is closed")
            best = self._pick()
            if best is not None:
                self._record_wait(started)
                return best
            # Open one connection at a time: a cold-start burst of callers waits
            # for the first link instead of opening max_size of them at once.
            if not self._opening and len(self._conns) < self.max_size:
                conn = self._open_one()
                if conn is not None:
                    self._record_wait(started)
                    return conn
                continue
            # A connection that is (re)connecting can take the request: it waits
            # for the link (bounded by the request timeout) or fails fast.
            for conn in self._conns:
                if conn.usable and conn.lifecycle.state != CONNECTED:
                    self._record_wait(started)
                    return conn
            waited = self.clock.now() - started
            left = None if timeout is None else timeout - waited
            if left is not None and left <= 0:
                self.exhausted += 1
                self.bus.emit("pool.exhausted", pool=self.name, wait=waited)
                raise PoolExhausted(
                    f"no connection to {self.endpoint} could take a request within {timeout}s: "
                    f"{len(self._conns)}/{self.max_size} connections, each at max_in_flight={self.max_in_flight} ({self!r})"
                )
            self._waiters += 1
            self._capacity.clear()
            try:
                self._capacity.wait(left)
            finally:
                self._waiters -= 1

    def _record_wait(self, started: float) -> None:
        waited = self.clock.now() - started
        self.wait_time_total += waited
        if waited > self.wait_time_max:
            self.wait_time_max = waited
        self.bus.emit("pool.checkout", pool=self.name, wait=waited)

    def _open_one(self) -> Optional[Connection]:
        """Open a connection (I/O outside any state change); None if it failed but others exist."""
        self._opening += 1
        conn = Connection(self.endpoint, options=self.options, bus=self.bus, clock=self.clock, on_push=self.on_push)
        try:
            conn.connect()
        except NexusError:
            if not self._conns:
                raise
            log.warning("pool %s: opening another connection failed; using the existing ones", self.name)
            return None
        finally:
            self._opening -= 1
            if self._waiters:
                self._capacity.set()
        if self._closed:
            conn.close()
            raise ClientClosed(f"pool for {self.endpoint} was closed while connecting")
        self._conns.append(conn)
        self.opened += 1
        self.bus.emit("pool.connection.opened", pool=self.name, conn_id=conn.conn_id, reason="demand")
        self._ensure_maintainer()
        return conn

    def release(self, conn: Connection) -> None:
        """Tell the pool a request on ``conn`` finished (wakes waiting checkouts)."""
        if self._waiters:
            self._capacity.set()

    # ------------------------------------------------------------------ maintenance
    def _drop_closed(self) -> None:
        for conn in [c for c in self._conns if c.lifecycle.state == CLOSED]:
            self._conns.remove(conn)
            self._last_used.pop(conn.conn_id, None)
            self.discarded += 1
            self.bus.emit("pool.connection.discarded", pool=self.name, conn_id=conn.conn_id, reason="closed")

    def _ensure_maintainer(self) -> None:
        if self._maintainer is None or self._maintainer.dead:
            self._maintainer = spawn(self._maintain_loop, name=f"pool:{self.name}")

    def _maintain_loop(self) -> None:
        while not self._closed:
            self.clock.sleep(self.health_check_interval)
            if self._closed:
                return
            try:
                self.maintain()
            except NexusError as exc:
                log.info("pool %s: maintenance could not open a connection: %s", self.name, exc)

    def maintain(self) -> None:
        """One health pass: discard closed, retire old, close idle extras, refill to min_size."""
        now = self.clock.now()
        self._drop_closed()
        for conn in list(self._conns):
            if conn.in_flight:
                self._last_used[conn.conn_id] = now
                continue
            last = self._last_used.setdefault(conn.conn_id, now)
            too_old = self.max_lifetime is not None and now - conn.created_at >= self.max_lifetime
            too_idle = (
                self.max_idle_time is not None and now - last >= self.max_idle_time and len(self._conns) > self.min_size
            )
            if too_old or too_idle:
                self._conns.remove(conn)
                self._last_used.pop(conn.conn_id, None)
                self.discarded += 1
                reason = "max_lifetime" if too_old else "max_idle_time"
                self.bus.emit("pool.connection.discarded", pool=self.name, conn_id=conn.conn_id, reason=reason)
                conn.close()
        while len(self._conns) + self._opening < self.min_size and not self._closed:
            if self._open_one() is None:
                break
        if self._waiters:
            self._capacity.set()

    def _forget_after_fork(self) -> None:
        """In a forked child: drop the parent's connections without touching their sockets.

        The child inherited copies of the parent's greenlets and descriptors;
        its copies are killed and closed (never shut down, which would cut the
        parent's link), and the next acquire opens the child's own connection.
        """
        if self._maintainer is not None:
            self._maintainer.kill(block=False)
        self._maintainer = None
        for conn in self._conns:
            conn._abandon_after_fork()
        self._conns = []
        self._last_used.clear()
        self._opening = 0
        self._waiters = 0

    # ------------------------------------------------------------------ figures
    def stats(self) -> dict[str, Any]:
        """Utilisation figures (a plain dict, safe to serialise).

        Example::

            >>> sorted(ConnectionPool("tcp://127.0.0.1:9").stats())[:4]
            ['checkout_wait_max', 'checkout_wait_total', 'checkouts', 'connected']
        """
        in_flight = sum(c.in_flight for c in self._conns)
        in_use = sum(1 for c in self._conns if c.in_flight)
        size = len(self._conns)
        return {
            "endpoint": str(self.endpoint),
            "size": size,
            "max_size": self.max_size,
            "connected": sum(1 for c in self._conns if c.lifecycle.state == CONNECTED),
            "in_use": in_use,
            "idle": size - in_use,
            "opening": self._opening,
            "in_flight": in_flight,
            "waiters": self._waiters,
            "utilisation": in_flight / (self.max_size * self.max_in_flight),
            "checkouts": self.checkouts,
            "exhausted": self.exhausted,
            "opened": self.opened,
            "discarded": self.discarded,
            "checkout_wait_total": self.wait_time_total,
            "checkout_wait_max": self.wait_time_max,
        }

    @property
    def connections(self) -> list[Connection]:
        """A snapshot of the pool's connections."""
        return list(self._conns)

    # ------------------------------------------------------------------ close
    def close(self) -> None:
        """Close every connection and stop the maintainer (idempotent)."""
        if self._closed:
            return
        self._closed = True
        if self._maintainer is not None and self._maintainer is not gevent.getcurrent():
            self._maintainer.kill(block=False)
        conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._capacity.set()
        _POOLS.discard(self)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def __enter__(self) -> ConnectionPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        in_flight = sum(c.in_flight for c in self._conns)
        connected = sum(1 for c in self._conns if c.lifecycle.state == CONNECTED)
        state = "closed" if self._closed else "open"
        return (
            f"<ConnectionPool {self.endpoint} {state} size={len(self._conns)}/{self.max_size} "
            f"connected={connected} opening={self._opening} in_flight={in_flight} waiters={self._waiters}>"
        )
