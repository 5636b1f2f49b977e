"""ConnectionPool: a bounded set of multiplexed connections to one endpoint, and the owner of its connects.

Connections are multiplexed, so a checkout does not take a connection away
from others: the pool picks the connected connection with the fewest requests
in flight, and opens another (up to ``max_size``) only when every connection
carries ``max_in_flight`` requests, like HTTP/2 pools do with
SETTINGS_MAX_CONCURRENT_STREAMS. Use it as ``pool.request(...)`` or
``with pool.connection() as conn:``.

**The pool owns every connect attempt to its endpoint.** Its connections do
not reconnect by themselves: a link that dies is dropped, and one *dialer*
greenlet opens replacements, at most one attempt at a time, spaced by the
reconnect strategy (exponential backoff with full jitter by default). While
callers wait, the wait before the next attempt is capped at
``demand_backoff_cap`` (1 s), so a restarted server is found again within
about a second of a caller asking; with nobody waiting, the backoff grows to
the strategy's cap (30 s) while the dialer refills to ``min_size``. A run of
failures is logged once per doubling of its length (1, 2, 4, 8, ...), with the
count, and once more when the endpoint answers again.

**One budget per call.** A caller waits for a connection, for a connect
attempt in progress (which runs under ``connect_timeout`` and may serve many
callers) and for room in the pool for at most its own budget: the smaller of
its timeout and the deadline in force. ``checkout_timeout`` only shortens the
wait. A caller that waited on an attempt that failed gets that failure (a
ConnectError: nothing was sent, so retry layers may resend); one whose time
ran out first gets a ConnectTimeout (or DeadlineExceeded) whose ``phase``
names the connect phase in progress, chained from the last connect error.

State changes happen in code with no yield point (atomic under gevent's
cooperative scheduling; the per-request path takes no lock); connecting and
closing happen outside those sections. ``repr`` states the pool's figures and
doubles as a test oracle.

Example::

    >>> from nexus_green.testing import EmbeddedServer
    >>> with EmbeddedServer() as server:
    ...     with ConnectionPool(server.endpoint, max_size=2) as pool:
    ...         r = pool.request(b"hi", fid=1, timeout=5)
    ...         print(r.body, pool.stats()["size"])
    b'hi' 1
"""

from __future__ import annotations

import dataclasses
import logging
import os
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Optional

import gevent
from gevent.event import Event

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import DEFAULT, budget, deadline_var, timeout_error
from ..errors import (
    ClientClosed,
    ConfigurationError,
    ConnectError,
    ConnectTimeout,
    NexusError,
    PoolExhausted,
    restate,
)
from ..events import EventBus, default_bus
from ..greenlets import spawn
from ..logs import RepeatedLog
from ..protocol.frames import Frame
from ..protocol.messages import Response
from ..timers import wait_until
from ..transport.endpoint import Endpoint
from .backoff import ExponentialBackoff, ReconnectStrategy
from .connection import Connection, ConnectionOptions
from .state import CLOSED, CONNECTED

__all__ = ["ConnectionPool"]

log = logging.getLogger("nexus_green.pool")
_rlog = RepeatedLog(log)

_POOLS: weakref.WeakSet[ConnectionPool] = weakref.WeakSet()
_DEADLINE = deadline_var()


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._forget_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


class _Turn:
    """A caller's place in the pool's line: woken (``event``) with room granted, or to look again."""

    __slots__ = ("event", "queued", "granted")

    def __init__(self) -> None:
        self.event = Event()
        self.queued = False  # in the line
        self.granted = False  # taken off the line with room freed for it


class ConnectionPool:
    """Pool of multiplexed connections to one endpoint; it alone opens connections to it.

    Options (defaults): ``min_size`` 1 connection kept open; ``max_size`` 4
    (a real maximum: the connection being opened counts); ``max_in_flight``
    256 concurrent requests per connection before another is opened;
    ``checkout_timeout`` 5 s (the longest a checkout waits, within the call's
    budget); ``max_idle_time`` 300 s (idle connections above ``min_size``
    are closed); ``max_lifetime`` None (connections older than this are
    retired once idle); ``health_check_interval`` 5 s (the maintainer's
    period); ``demand_backoff_cap`` 1 s (the longest wait before the next
    connect attempt while callers wait). The reconnect strategy is
    ``options.reconnect`` (default, and for ``True``/``False``: exponential
    backoff, base 0.5 s, cap 30 s, full jitter). ``spread_bytes`` 1 MiB: a
    connection carrying this many request bytes in flight is passed over for
    one with fewer, and the pool opens another (up to ``max_size``) when all
    carry that much: one TCP link is a narrow pipe for large bodies (64 KiB
    bodies at 50 callers: 10k req/s on one link, 24k on four). The pool keeps ``min_size``
    connections open in the background; ``min_size=0`` opens them only when
    callers ask.

    Example::

        >>> from nexus_green.testing import EmbeddedServer
        >>> with EmbeddedServer() as server, ConnectionPool(server.endpoint) as pool:
        ...     with pool.connection() as a, pool.connection() as b:
        ...         a is b    # one connection serves many
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
        demand_backoff_cap: float = 1.0,
        spread_bytes: int = 1024 * 1024,
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
        if not demand_backoff_cap > 0:
            raise ConfigurationError(f"demand_backoff_cap must be positive, got {demand_backoff_cap!r}")
        if spread_bytes < 1:
            raise ConfigurationError(f"spread_bytes must be at least 1, got {spread_bytes}")
        if checkout_timeout is not None and checkout_timeout < 0:
            raise ConfigurationError(f"checkout_timeout must be >= 0 or None, got {checkout_timeout!r}")
        self.endpoint = endpoint if isinstance(endpoint, Endpoint) else Endpoint.parse(endpoint)
        self.name = name or str(self.endpoint)
        self.min_size = min_size
        self.max_size = max_size
        self.max_in_flight = max_in_flight
        self.spread_bytes = spread_bytes
        self._spread = False  # every connection carries spread_bytes: the dialer opens another
        self.checkout_timeout = checkout_timeout
        self.max_idle_time = max_idle_time
        self.max_lifetime = max_lifetime
        self.health_check_interval = health_check_interval
        self.demand_backoff_cap = demand_backoff_cap
        self.options = options or ConnectionOptions()
        self.bus = bus
        self.clock = clock
        self.on_push = on_push
        rc = self.options.reconnect
        self._strategy: ReconnectStrategy = ExponentialBackoff() if rc in (None, True, False) else rc
        # The pool's connections never reconnect by themselves: the dialer does.
        self._conn_options = dataclasses.replace(self.options, reconnect=False)
        self._conns: list[Connection] = []
        self._last_used: dict[str, float] = {}
        # Callers waiting for room, first come first served. Each answer hands the room it freed to
        # the first in line (takes it off the queue and wakes it: a grant), so a batch of answers
        # wakes as many waiters as it freed slots, not every waiter (10,000 woken per answer starved
        # the loop) and not one at a time. While anyone waits or holds a grant, a newcomer queues
        # behind them instead of taking the room (it would starve them: p99 of 2 s at 10,000).
        self._queue: deque[_Turn] = deque()
        self._granted = 0  # callers taken off the line with a slot promised, not yet running
        self._closed = False
        # The health pass is a timer on the clock's scheduler, not a greenlet (an idle pool holds none).
        self._maintainer: Any = None
        # the dialer: one connect attempt at a time
        self._dialer: Optional[gevent.Greenlet] = None
        self._dialing: Optional[Connection] = None
        self._wake = Event()
        self._demand = 0  # callers waiting for a new connection
        self._waiters = 0  # callers waiting for anything (connection or room)
        self._failures = 0  # consecutive failed attempts
        self._fail_seq = 0  # failed attempts ever (waiters compare it)
        self._failing_since = 0.0
        self._last_failure_at = 0.0
        self._next_attempt_at = 0.0  # per the strategy; demand shortens the wait
        self._gave_up = False  # the strategy said stop: only demand brings attempts
        self.last_error: Optional[BaseException] = None
        # figures
        self.checkouts = 0
        self.exhausted = 0
        self.opened = 0
        self.discarded = 0
        self.connect_attempts = 0
        self.connect_failures = 0
        self.wait_time_total = 0.0
        self.wait_time_max = 0.0
        _POOLS.add(self)

    # ------------------------------------------------------------------ requests
    def request(
        self,
        body: bytes = b"",
        fid: int = 0,
        *,
        headers: Optional[Mapping[str, str]] = None,
        timeout: Any = DEFAULT,
        tp: int = 0,
    ) -> Response:
        """Send one request on the best connection and wait for its answer, all within one budget.

        ``timeout`` defaults to ``options.request_timeout``; None sets no
        limit of its own (the deadline in force still applies).

        Example::

            >>> from nexus_green.testing import EmbeddedServer
            >>> with EmbeddedServer() as server, ConnectionPool(server.endpoint) as pool:
            ...     pool.request(b"ping", fid=1).body
            b'ping'
        """
        until, by_deadline = budget(
            self.options.request_timeout if timeout is DEFAULT else timeout,
            clock=self.clock,
        )
        return self.request_until(body, fid, headers, tp, until, by_deadline)

    def request_until(
        self,
        body: bytes,
        fid: int,
        headers: Optional[Mapping[str, str]],
        tp: int,
        until: Optional[float],
        by_deadline: bool = False,
    ) -> Response:
        """:meth:`request` with the budget already worked out (``until`` is absolute, on the pool's clock).

        Example::

            >>> from nexus_green.testing import EmbeddedServer
            >>> with EmbeddedServer() as server, ConnectionPool(server.endpoint) as pool:
            ...     pool.request_until(b"x", 1, None, 0, pool.clock.now() + 5).code
            200
        """
        conns = self._conns
        if len(conns) == 1 and not self._closed and not self._waiters:  # checkout's common case, without its call
            conn = conns[0]
            if not (
                conn.connected and conn.in_flight < self.max_in_flight and conn.bytes_in_flight < self.spread_bytes
            ):
                conn = self.checkout(until, by_deadline)
            else:
                self.checkouts += 1
        else:
            conn = self.checkout(until, by_deadline)
        try:
            return conn.request_until(body, fid, headers, tp, until, by_deadline)
        finally:
            if self._queue:
                self._grant_one()  # the room this call freed goes to the first in line

    @contextmanager
    def connection(self, timeout: Any = DEFAULT) -> Iterator[Connection]:
        """Check out the connection that should carry the next request(s), within ``timeout``.

        The connection stays shared (it is multiplexed); leaving the block
        tells waiting checkouts that room may have freed up. ``timeout``
        defaults to ``checkout_timeout``.

        Example::

            >>> from nexus_green.testing import EmbeddedServer
            >>> with EmbeddedServer() as server, ConnectionPool(server.endpoint) as pool:
            ...     with pool.connection(timeout=5) as conn:
            ...         conn.request(b"a", fid=1).body
            b'a'
        """
        until, by_deadline = budget(self.checkout_timeout if timeout is DEFAULT else timeout, clock=self.clock)
        conn = self.checkout(until, by_deadline)
        try:
            yield conn
        finally:
            if self._queue:
                self._grant_one()

    # ------------------------------------------------------------------ checkout
    def checkout(self, until: Optional[float], by_deadline: bool = False) -> Connection:
        """The connection that should carry the next request, waiting until ``until`` at most.

        Prefer :meth:`request` or :meth:`connection`; this is their common
        step. Raises :class:`~nexus_green.errors.PoolExhausted` when every
        connection stayed full for ``checkout_timeout``, a ConnectError when
        the connect attempt this call waited on failed, and a timeout (with
        ``phase``) when the budget ran out.

        Example::

            >>> from nexus_green.testing import EmbeddedServer
            >>> with EmbeddedServer() as server, ConnectionPool(server.endpoint) as pool:
            ...     pool.checkout(None).state
            'connected'
        """
        if self._closed:
            raise ClientClosed(f"pool for {self.endpoint} is closed")
        self.checkouts += 1
        if self._waiters:
            return self._checkout_slow(until, by_deadline)  # behind those already waiting
        conns = self._conns
        if len(conns) == 1:  # the common case, without the loop
            conn = conns[0]
            if conn.connected and conn.in_flight < self.max_in_flight and conn.bytes_in_flight < self.spread_bytes:
                return conn
        best = self._pick()
        if best is not None:
            return best
        return self._checkout_slow(until, by_deadline)

    def _pick(self) -> Optional[Connection]:
        """The connected connection with the fewest requests in flight, preferring those under ``spread_bytes``."""
        best: Optional[Connection] = None
        best_load = self.max_in_flight
        heavy: Optional[Connection] = None  # the best of those carrying spread_bytes or more
        heavy_load = self.max_in_flight
        spread = self.spread_bytes
        for conn in self._conns:
            if conn.connected:
                load = conn.in_flight
                if load < best_load:
                    if conn.bytes_in_flight >= spread:
                        if load < heavy_load:
                            heavy, heavy_load = conn, load
                        continue
                    best, best_load = conn, load
                    if load == 0:
                        break
        if best is None and heavy is not None:
            if len(self._conns) < self.max_size and not self._spread and not self._closed:
                self._spread = True  # every link is heavy: another one shares the bytes
                self._kick()
            return heavy
        return best

    def _checkout_slow(self, until: Optional[float], by_deadline: bool) -> Connection:
        clock = self.clock
        started = clock.now()
        checkout_end = None if self.checkout_timeout is None else started + self.checkout_timeout
        end: Optional[float]
        if until is not None and (checkout_end is None or until <= checkout_end):
            end, end_is_budget = until, True
        else:
            end, end_is_budget = checkout_end, False
        seen_failures = self._fail_seq
        wanting = False
        turn = _Turn()
        queue = self._queue
        # Nobody else waits (in line, or granted room and about to take it), or there is room for
        # them all and this caller too (those in line get theirs first): try at once. Queuing only
        # while demand exceeds room keeps a line from outliving the shortage (a convoy: each answer
        # hands one slot on and its caller lines up again, so every request took the slow way).
        try_now = not self._waiters or (self._grant_room() > 0 and not self._queue)
        if not try_now:
            turn.queued = True
            queue.append(turn)
        took = False
        self._waiters += 1
        try:
            while True:
                if self._closed:
                    raise ClientClosed(f"pool for {self.endpoint} is closed")
                self._drop_closed()
                if try_now or turn.event.is_set():  # granted room, or woken (off the line) to look again
                    granted = turn.granted
                    if granted:
                        turn.granted = False
                        self._granted -= 1
                    best = self._pick()
                    if best is not None:
                        self._record_wait(started)
                        took = True
                        return best
                    if not turn.queued:
                        turn.queued = True
                        if granted:
                            queue.appendleft(turn)  # granted but the room went elsewhere: still first
                        else:
                            queue.append(turn)  # a wake-up for all runs them in line order: same order back
                    try_now = False
                live = sum(1 for c in self._conns if c.connected)
                if live == 0:
                    # Nothing to carry the request: it depends on the dialer.
                    if self._fail_seq != seen_failures and self.last_error is not None:
                        # The attempt we waited on failed: nothing was sent.
                        raise self._connect_error(f"connect to {self.endpoint} failed")
                    if self.options.fail_fast and self._failures and self._dialing is None:
                        raise self._connect_error(
                            f"{self.endpoint} is down ({self._failures} failed connect attempts; fail_fast)"
                        )
                if not wanting and len(self._conns) < self.max_size:
                    wanting = True
                    self._demand += 1
                if wanting and self._want_dial():
                    self._kick()
                now = clock.now()
                if end is not None and now >= end:
                    raise self._checkout_expired(live, now - started, end_is_budget, by_deadline)
                turn.event.clear()
                wait_until(turn.event.wait, clock, end)
        finally:
            self._waiters -= 1
            if wanting:
                self._demand -= 1
            if not took:
                # Leaving without room (an error, the budget): out of the line, and room it was
                # granted and did not use goes to the next in line.
                if turn.queued:
                    queue.remove(turn)
                elif turn.granted:
                    turn.granted = False
                    self._granted -= 1
                if queue and not self._closed:
                    self._grant_room()

    def _checkout_expired(self, live: int, waited: float, end_is_budget: bool, by_deadline: bool) -> NexusError:
        err: NexusError
        if live == 0:
            phase = self._dialing.connect_phase if self._dialing is not None else "connect"
            state = (
                f"connect attempt in phase {phase!r}"
                if self._dialing is not None
                else f"{self._failures} failed connect attempts, backing off"
            )
            msg = f"no connection to {self.endpoint} within {waited:.3f}s ({state}; {self!r})"
            if end_is_budget:
                err = timeout_error(by_deadline, msg, phase=phase, error=ConnectTimeout)
            else:
                err = ConnectTimeout(msg + f" [checkout_timeout={self.checkout_timeout}]", phase=phase)
        elif end_is_budget:
            err = timeout_error(
                by_deadline,
                f"no room on the connections to {self.endpoint} within the call's budget ({waited:.3f}s; {self!r})",
                phase="checkout",
            )
        else:
            self.exhausted += 1
            self.bus.emit("pool.exhausted", pool=self.name, wait=waited)
            err = PoolExhausted(
                f"no connection to {self.endpoint} could take a request within {self.checkout_timeout}s: "
                f"{len(self._conns)}/{self.max_size} connections, each at max_in_flight={self.max_in_flight} ({self!r})"
            )
        err.__cause__ = self.last_error if live == 0 else None
        return err

    def _connect_error(self, message: str) -> NexusError:
        """A fresh error for one waiting caller, chained from the last failure.

        Its class is the failure's when that is a ConnectError (refused, DNS,
        TLS rejection: the caller can act on it); a link lost before it ever
        answered becomes a plain ConnectError. Either way the caller sent
        nothing, so retry layers may resend.
        """
        err = self.last_error
        if isinstance(err, ConnectError):
            return restate(err, f"{message}: {err}")
        new = ConnectError(f"{message}: {err}")
        new.__cause__ = err
        return new

    def _record_wait(self, started: float) -> None:
        waited = self.clock.now() - started
        self.wait_time_total += waited
        if waited > self.wait_time_max:
            self.wait_time_max = waited
        self.bus.emit("pool.checkout", pool=self.name, wait=waited)

    def _free_slots(self) -> int:
        """Requests the connected connections can still take (``max_in_flight`` each)."""
        m = self.max_in_flight
        free = 0
        for conn in self._conns:
            if conn.connected:
                n = m - conn.in_flight
                if n > 0:
                    free += n
        return free

    def _grant_one(self) -> None:
        """The slot one call just freed goes to the first in line (off the line, woken)."""
        turn = self._queue.popleft()
        turn.queued = False
        turn.granted = True
        self._granted += 1
        turn.event.set()

    def _grant_room(self) -> int:
        """Room not yet promised goes to the first in line, one slot each; returns the room left over."""
        queue = self._queue
        spare = self._free_slots() - self._granted
        while queue and spare > 0:
            turn = queue.popleft()
            turn.queued = False
            turn.granted = True
            self._granted += 1
            spare -= 1
            turn.event.set()
        return spare

    def _notify(self) -> None:
        # Something every waiter may care about happened (a connection came or went, an attempt
        # failed, the pool closed): wake them all to look again. They run in line order, so those
        # that find no room line up again in the same order.
        queue = self._queue
        turns = list(queue)
        queue.clear()
        for turn in turns:
            turn.queued = False  # woken, not granted: each looks for room itself
            turn.event.set()

    # ------------------------------------------------------------------ the dialer
    def _want_dial(self) -> bool:
        if self._closed or len(self._conns) >= self.max_size:
            return False
        if self._demand > 0 and (self._queue or self._pick() is None):
            return True  # callers wait in line, or no connection has room for them
        if self._spread:
            return True
        return not self._gave_up and len(self._conns) < self.min_size

    def _kick(self) -> None:
        """Make sure the dialer runs (or re-reads the demand, if it is backing off)."""
        if self._closed:
            return
        if self._dialer is None:
            self._dialer = spawn(self._dial_loop, name=f"pool:{self.name}:dialer")
        else:
            self._wake.set()

    @staticmethod
    def _proven(conn: Connection) -> bool:
        """A link proves healthy by an answer or a heartbeat reply, never by TCP accepting it."""
        return conn.responses > 0 or conn.heartbeat.acks_received > 0

    def _settle_backoff(self) -> None:
        """Forget the run of failures once one of the links it produced proved healthy."""
        if self._failures and any(self._proven(c) for c in self._conns):
            log.warning(
                "pool %s: %s answers again after %d failed attempts over %.1fs",
                self.name,
                self.endpoint,
                self._failures,
                self.clock.now() - self._failing_since,
            )
            self._failures = 0
            self._gave_up = False
            self._strategy.reset()

    def _attempt_at(self) -> float:
        self._settle_backoff()
        if not self._failures:
            return 0.0
        at = self._next_attempt_at
        if self._demand > 0:
            at = min(at, self._last_failure_at + self.demand_backoff_cap)
        return at

    def _dial_loop(self) -> None:
        _DEADLINE.set(None)  # a caller's deadline (copied into this greenlet) must not bound the shared attempt
        clock = self.clock
        try:
            while self._want_dial():
                at = self._attempt_at()
                if clock.now() < at:
                    self._wake.clear()
                    wait_until(self._wake.wait, clock, at)
                    continue  # re-read demand and the time of the next attempt
                self._attempt()
        finally:
            if self._dialer is gevent.getcurrent():
                self._dialer = None

    def _attempt(self) -> None:
        conn = Connection(
            self.endpoint,
            options=self._conn_options,
            bus=self.bus,
            clock=self.clock,
            on_push=self.on_push,
        )
        self._dialing = conn
        self.connect_attempts += 1
        try:
            conn.connect(timeout=None)  # bounded by connect_timeout alone: it serves every waiting caller
        except NexusError as exc:
            self._on_failure(exc)
            return
        finally:
            self._dialing = None
        if self._closed:
            conn.close()
            return
        # The backoff is not reset here: a peer that accepts and then closes, or
        # rejects us after the handshake, would reset it on every TCP connect.
        # It resets once a link proves healthy (see _settle_backoff).
        conn.lifecycle.add_listener(self._on_conn_transition)
        self._conns.append(conn)
        self._spread = False
        self.opened += 1
        self.bus.emit(
            "pool.connection.opened",
            pool=self.name,
            conn_id=conn.conn_id,
            reason="demand",
        )
        self._ensure_maintainer()
        self._notify()

    def _on_failure(self, exc: NexusError) -> None:
        now = self.clock.now()
        self._spread = False  # an extra link for large bodies is a wish, not worth retrying for
        if not self._failures:
            self._failing_since = now
        self._failures += 1
        self._fail_seq += 1
        self.connect_failures += 1
        self.last_error = exc
        self._last_failure_at = now
        delay = self._strategy.next_delay(self._failures)
        if delay is None:
            self._gave_up = True
            delay = self.demand_backoff_cap
        self._next_attempt_at = now + delay
        n = self._failures
        if n & (n - 1) == 0:  # 1, 2, 4, 8, ...: once per doubling of the run
            log.warning(
                "pool %s: connect to %s failed %d time(s) in a row, last: %s; next attempt in %.2fs%s",
                self.name,
                self.endpoint,
                n,
                exc,
                delay,
                " (sooner while callers wait)" if delay > self.demand_backoff_cap else "",
            )
        self.bus.emit("pool.connect.failed", pool=self.name, attempt=n, delay=delay, error=exc)
        self._notify()

    def _on_conn_transition(self, old: str, event: str, new: str) -> None:
        if new == CLOSED and not self._closed:
            for conn in self._conns:
                err = conn.last_error
                if conn.lifecycle.state == CLOSED and isinstance(err, NexusError) and not self._proven(conn):
                    # Lost (not closed by its owner) before it ever answered:
                    # as good as a failed attempt, so the backoff grows.
                    self._on_failure(err)
            self._drop_closed()
            self._notify()
            if self._want_dial():
                self._kick()

    # ------------------------------------------------------------------ maintenance
    def _drop_closed(self) -> None:
        for conn in [c for c in self._conns if c.lifecycle.state == CLOSED]:
            self._conns.remove(conn)
            self._last_used.pop(conn.conn_id, None)
            self.discarded += 1
            self.bus.emit(
                "pool.connection.discarded",
                pool=self.name,
                conn_id=conn.conn_id,
                reason="closed",
            )

    def _ensure_maintainer(self) -> None:
        if self._maintainer is None and not self._closed:
            self._maintainer = self.clock.call_at(
                self.clock.now() + self.health_check_interval, self._maintain_tick, None
            )

    def _maintain_tick(self, _: Any) -> None:
        """Timer function (in the hub): one health pass, then the next one is armed. Never blocks."""
        self._maintainer = None
        if self._closed:
            return
        try:
            self.maintain()
        except Exception:  # a bug must not end the health passes
            _rlog.exception(("maintain", self.name), "pool %s: health pass failed", self.name)
        self._ensure_maintainer()

    def maintain(self) -> None:
        """One health pass: discard closed, retire old, close idle extras, ask the dialer to refill to min_size.

        Example::

            >>> ConnectionPool("tcp://127.0.0.1:9", min_size=0).maintain()
        """
        now = self.clock.now()
        self._drop_closed()
        for conn in list(self._conns):
            if not conn.idle:
                self._last_used[conn.conn_id] = now
                continue
            last = self._last_used.setdefault(conn.conn_id, now)
            too_old = conn.has_expired(now, self.max_lifetime)
            too_idle = (
                self.max_idle_time is not None and now - last >= self.max_idle_time and len(self._conns) > self.min_size
            )
            if too_old or too_idle:
                self._conns.remove(conn)
                self._last_used.pop(conn.conn_id, None)
                self.discarded += 1
                reason = "max_lifetime" if too_old else "max_idle_time"
                self.bus.emit(
                    "pool.connection.discarded",
                    pool=self.name,
                    conn_id=conn.conn_id,
                    reason=reason,
                )
                conn.close()
        if self._want_dial():
            self._kick()
        if self._waiters:
            self._notify()

    def _forget_after_fork(self) -> None:
        """In a forked child: drop the parent's connections without touching their sockets.

        The child inherited copies of the parent's greenlets and descriptors;
        its copies are killed and closed (never shut down, which would cut the
        parent's link), and the next checkout opens the child's own connection.
        """
        if self._dialer is not None:
            self._dialer.kill(block=False)
        if self._maintainer is not None:
            self._maintainer.cancel()
        self._maintainer = self._dialer = self._dialing = None
        self._spread = False
        for conn in self._conns:
            conn.abandon_after_fork()
        self._conns = []
        self._last_used.clear()
        self._waiters = self._demand = self._granted = 0
        self._queue = deque()  # the parent's waiters are not this process's
        self._wake = Event()

    # ------------------------------------------------------------------ figures
    def stats(self) -> dict[str, Any]:
        """Utilisation figures (a plain dict, safe to serialise); ``failing`` is the current run of failed attempts.

        Example::

            >>> sorted(ConnectionPool("tcp://127.0.0.1:9").stats())[:4]
            ['checkout_wait_max', 'checkout_wait_total', 'checkouts', 'connect_attempts']
        """
        self._settle_backoff()
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
            "opening": 1 if self._dialing is not None else 0,
            "in_flight": in_flight,
            "waiters": self._waiters,
            "utilisation": in_flight / (self.max_size * self.max_in_flight),
            "checkouts": self.checkouts,
            "exhausted": self.exhausted,
            "opened": self.opened,
            "discarded": self.discarded,
            "connect_attempts": self.connect_attempts,
            "connect_failures": self.connect_failures,
            "failing": self._failures,
            "checkout_wait_total": self.wait_time_total,
            "checkout_wait_max": self.wait_time_max,
        }

    @property
    def connections(self) -> list[Connection]:
        """A snapshot of the pool's connections."""
        return list(self._conns)

    # ------------------------------------------------------------------ close
    def close(self, *, drain: float = 0.0) -> None:
        """Close every connection and stop the pool's greenlets (idempotent).

        With ``drain > 0`` waits up to that many seconds for requests in
        flight to finish first; the rest fail with ConnectionClosed.

        Example::

            >>> pool = ConnectionPool("tcp://127.0.0.1:9"); pool.close(drain=1.0); pool.closed
            True
        """
        if self._closed:
            return
        if drain > 0:
            until = self.clock.now() + drain
            for conn in list(self._conns):
                conn.drain(until)
        self._closed = True
        current = gevent.getcurrent()
        if self._dialer is not None and self._dialer is not current:
            self._dialer.kill(block=False)
        timer, self._maintainer = self._maintainer, None
        if timer is not None:
            timer.cancel()
        if self._dialing is not None:
            self._dialing.close()
        conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._notify()
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
            f"connected={connected} opening={1 if self._dialing is not None else 0} in_flight={in_flight} "
            f"waiters={self._waiters} failing={self._failures}>"
        )
