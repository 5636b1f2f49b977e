"""Redis on gevent sockets, and the link every shared policy talks through (layer L2).

Two things live here:

* :class:`GeventConnection`, a redis-py ``Connection`` whose socket is a
  ``gevent.socket`` (resolved by gevent's resolver, TCP_NODELAY set), so a
  Redis round trip yields to the hub in an application that never
  monkey-patched, exactly as after ``patch_all()``. :func:`gevent_redis`
  builds a ``redis.Redis`` on it with a bounded connection pool (a real
  maximum, a bounded checkout wait on a gevent queue) and no redis-py retry
  (its retry sleeps with ``time.sleep``, which would freeze an unpatched hub).
* :class:`RedisLink`, the one object the shared circuit breaker, the shared
  rate limits, the idempotency key window and the L3 cache level go through.
  It runs each Redis call under a short timeout (50 ms by default) clipped to
  the caller's remaining budget (:mod:`nexus_green.deadlines`: one budget per
  call). When Redis fails or is slow it raises :class:`SharedUnavailable`, the
  caller's cue to use its local, in-process behaviour, and marks the link
  *down* for a jittered backoff (0.5-1 s): while down, calls fail over at once
  without touching the network (no connect attempt per call). After the
  backoff one caller probes; when the probe succeeds the link is *up* again
  (a resumption). Everything is counted on the link and announced on its
  :class:`~nexus_green.events.EventBus`.

Events:

* ``shared.fallback`` [link, reason, error]: one call fell back; reason is
  ``down`` (the link was down, nothing sent), ``error``, ``timeout``,
  ``refused`` (Redis answered this call with an error, WRONGTYPE or a
  script's error say: the link stays up), ``no_budget`` (the caller's
  deadline left no time) or ``busy`` (it waited
  for a free connection so long that Redis had less than half the timeout:
  this process is overloaded); emitted only when someone subscribes to it
* ``shared.down`` [link, error, retry_in]: the link went down (an outage
  begins) or a probe failed
* ``shared.resumed`` [link, down_for, fallbacks]: a probe succeeded after an
  outage; ``fallbacks`` is how many calls fell back during it

Keys: every key a shared policy writes starts with the link's namespace
(``nexus_green`` by default); :meth:`RedisLink.key` builds them.

redis-py is an optional dependency (``pip install nexus_green[redis]``);
only this module imports it, and only when a shared policy is asked for.

Example (no server on port 1, so the call falls back, and the next one does
not even try)::

    >>> link = RedisLink("redis://127.0.0.1:1/0")
    >>> try:
    ...     link.execute("PING")
    ... except SharedUnavailable as e:
    ...     print(e.reason, link.available)
    error False
    >>> try:
    ...     link.execute("PING")
    ... except SharedUnavailable as e:
    ...     print(e.reason, link.fallbacks, link.failures)
    down 2 1
    >>> link.key("breaker", "db")
    'nexus_green:breaker:db'
    >>> link.close()
"""

from __future__ import annotations

import os
import random
import socket as _stdsocket
import weakref
from collections.abc import Callable, Sequence
from typing import Any, Optional, TypeVar, Union
from urllib.parse import urlsplit

import gevent.lock
import gevent.queue
import redis
import redis.exceptions
import redis.utils
from gevent import socket as gsocket
from redis.backoff import NoBackoff
from redis.connection import BlockingConnectionPool, Connection
from redis.retry import Retry

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import current_deadline
from ..errors import ConfigurationError, NexusError
from ..events import EventBus, default_bus
from ..timers import Interrupt, arm

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_BACKOFF",
    "DEFAULT_NAMESPACE",
    "GeventConnection",
    "RedisLink",
    "SharedSource",
    "SharedUnavailable",
    "redis_link",
    "gevent_redis",
]

T = TypeVar("T")

#: Seconds one Redis call may take through a :class:`RedisLink` (before the caller's budget clips it).
DEFAULT_TIMEOUT = 0.05
#: Seconds (low, high) a link stays down after a failure before it probes again; uniform in between.
DEFAULT_BACKOFF = (0.5, 1.0)
#: The first part of every key a shared policy writes.
DEFAULT_NAMESPACE = "nexus_green"

# Errors that mean "Redis cannot serve this call now": fall back and mark the link down.
_LINK_ERRORS = (redis.exceptions.RedisError, OSError)
# Error replies that mean the server cannot serve anyone now (memory full, a read-only replica, loading,
# a busy script, a cluster without quorum): like a timeout, they put the link down. Any other error reply
# (WRONGTYPE, a script's own error) concerns that call only: Redis answered, the link stays up.
_UNAVAILABLE = tuple(
    getattr(redis.exceptions, name)
    for name in ("OutOfMemoryError", "ReadOnlyError", "ClusterDownError", "TryAgainError")
    if hasattr(redis.exceptions, name)
)
_UNAVAILABLE_PREFIXES = ("BUSY", "LOADING", "MASTERDOWN", "CLUSTERDOWN", "TRYAGAIN", "OOM", "READONLY")


class SharedUnavailable(NexusError):
    """Shared state is unavailable for this call: use the local, in-process behaviour.

    ``reason`` says why: ``down`` (the link is in its backoff; nothing was
    sent), ``error``, ``timeout``, ``refused``, ``no_budget`` or ``busy``. The
    Redis error, if any, is chained as ``__cause__``. Shared policies catch it;
    it reaches an application only when it calls :meth:`RedisLink.call` itself.

    Example::

        >>> e = SharedUnavailable("redis down", reason="down")
        >>> e.reason, e.retryable
        ('down', False)
    """

    def __init__(self, message: str = "", *, reason: str = "error") -> None:
        super().__init__(message)
        self.reason = reason


class GeventConnection(Connection):
    """A redis-py ``Connection`` on a ``gevent.socket``: cooperative whether or not the app patched.

    Only the socket creation changes (redis-py's ``_connect``): the address is
    resolved with ``gevent.socket.getaddrinfo`` (an IP literal is used as
    is) and the socket is gevent's, so
    connecting, sending and reading yield to the hub. TCP_NODELAY is set
    (request/response latency depends on it), and keepalive as redis-py does.

    Example::

        >>> import redis
        >>> pool = redis.ConnectionPool(connection_class=GeventConnection, host="127.0.0.1", port=1)
        >>> try:
        ...     redis.Redis(connection_pool=pool).ping()
        ... except redis.ConnectionError as e:
        ...     print("refused:", "Connection refused" in str(e))
        refused: True
        >>> pool.disconnect()
    """

    def _connect(self) -> Any:
        err: Optional[OSError] = None
        for family, socktype, proto, _canonname, address in _addresses(self.host, self.port, self.socket_type):
            sock = None
            try:
                sock = gsocket.socket(family, socktype, proto)
                sock.setsockopt(_stdsocket.IPPROTO_TCP, _stdsocket.TCP_NODELAY, 1)
                if self.socket_keepalive:
                    sock.setsockopt(_stdsocket.SOL_SOCKET, _stdsocket.SO_KEEPALIVE, 1)
                    for option, value in self.socket_keepalive_options.items():
                        sock.setsockopt(_stdsocket.IPPROTO_TCP, option, value)
                sock.settimeout(self.socket_connect_timeout)
                sock.connect(address)
                sock.settimeout(self.socket_timeout)
                return sock
            except OSError as e:
                err = e
                if sock is not None:
                    sock.close()
            except BaseException:
                # A link timeout or a kill landing mid-connect (gevent.Timeout, GreenletExit): the
                # half-made socket is ours to close, or it leaks (a ResourceWarning under pytest).
                if sock is not None:
                    sock.close()
                raise
        if err is not None:
            try:
                raise err
            finally:
                err = None  # no frame <-> traceback cycle
        raise OSError(f"getaddrinfo returned no address for {self.host}:{self.port}")  # pragma: no cover


def _addresses(host: str, port: int, family: int) -> list[tuple[Any, ...]]:
    # An IP literal needs no resolver: gevent's runs in a thread pool, and on a busy machine the hand-off
    # alone took milliseconds of a 50 ms budget.
    for fam in (_stdsocket.AF_INET, _stdsocket.AF_INET6):
        if family in (0, fam):
            try:
                _stdsocket.inet_pton(fam, host)
            except (OSError, ValueError):
                continue
            address = (host, port) if fam == _stdsocket.AF_INET else (host, port, 0, 0)
            return [(fam, _stdsocket.SOCK_STREAM, _stdsocket.IPPROTO_TCP, "", address)]
    return list(gsocket.getaddrinfo(host, port, family, _stdsocket.SOCK_STREAM))


def _redacted(url: str) -> str:
    """The URL without its password (the link's name shows in reprs, events and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return parts._replace(netloc=f"{user}:***@{netloc}").geturl()


def gevent_redis(
    source: Union[str, redis.Redis],
    *,
    max_connections: int = 32,
    pool_timeout: float = 1.0,
    socket_timeout: Optional[float] = 1.0,
    connect_timeout: Optional[float] = 1.0,
    **kwargs: Any,
) -> redis.Redis:
    """A ``redis.Redis`` on :class:`GeventConnection` sockets with a bounded pool, from a URL.

    An existing ``redis.Redis`` is returned as is (its own connection class,
    pool and retry policy apply: build it with
    ``connection_class=GeventConnection`` to keep it cooperative in an
    unpatched app). A URL must be ``redis://host:port/db`` (``rediss://`` and
    ``unix://`` need a client of your own). The pool holds at most
    ``max_connections`` connections; a caller waits at most ``pool_timeout``
    for one (on a gevent queue: other greenlets run meanwhile).
    ``socket_timeout`` / ``connect_timeout`` bound each socket operation for
    direct use of the client; calls through a :class:`RedisLink` are bounded
    by the link's much shorter timeout anyway. Other keyword arguments go to
    the connections (``password``, ``decode_responses``, ...). redis-py's own
    retry is off: its back-off sleeps with ``time.sleep``.

    Example::

        >>> r = gevent_redis("redis://127.0.0.1:6379/0", max_connections=4)
        >>> r.connection_pool.connection_class.__name__, r.connection_pool.max_connections
        ('GeventConnection', 4)
        >>> gevent_redis(r) is r
        True
        >>> r.close()
        >>> gevent_redis("rediss://example.com")
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: only redis:// URLs get gevent sockets, got 'rediss://example.com': pass a redis.Redis client of your own for rediss:// or unix://
    """
    if isinstance(source, redis.Redis):
        return source
    if not isinstance(source, str):
        raise ConfigurationError(f"expected a redis:// URL or a redis.Redis client, got {source!r}")
    if urlsplit(source).scheme != "redis":
        raise ConfigurationError(
            f"only redis:// URLs get gevent sockets, got {source!r}: "
            "pass a redis.Redis client of your own for rediss:// or unix://"
        )
    if max_connections < 1:
        raise ConfigurationError(f"max_connections must be >= 1, got {max_connections}")
    if not pool_timeout > 0:
        raise ConfigurationError(f"pool_timeout must be > 0, got {pool_timeout}")
    # redis-py reads its own version (importlib.metadata: 50 ms of CPU) when it makes its first connection;
    # read it now, so that the first call through a link does not spend its budget on it.
    lib_version = getattr(redis.utils, "get_lib_version", None)
    if lib_version is not None:
        lib_version()
    pool = BlockingConnectionPool.from_url(
        source,
        connection_class=GeventConnection,
        max_connections=max_connections,
        timeout=pool_timeout,
        queue_class=gevent.queue.LifoQueue,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(NoBackoff(), 0),
        **kwargs,
    )
    return redis.Redis(connection_pool=pool)


#: What a shared policy accepts as ``shared=``: a URL, a client or a link.
SharedSource = Union[str, "redis.Redis", "RedisLink"]


class RedisLink:
    """One Redis client plus the fall-back rules every shared policy follows.

    ``client`` is a ``redis://`` URL (a :func:`gevent_redis` client is built
    and owned: :meth:`close` disconnects it) or a ``redis.Redis`` used as is.
    ``name`` (default: the URL, its password masked) names the link in its
    repr and events.

    * :meth:`call` runs ``fn(client, ...)`` within ``timeout`` seconds
      (default 50 ms), or less when the caller's deadline is nearer; on a
      Redis error or timeout it raises :class:`SharedUnavailable` and marks the
      link down for a backoff drawn uniformly from ``backoff`` (0.5-1 s) with
      ``rng``. A timeout clipped by the caller's deadline is not the
      server's fault: that call falls back but the link stays up. So does an
      error reply about that call only (WRONGTYPE, a script's error: reason
      ``refused``); a reply saying the server cannot serve (OOM, READONLY,
      LOADING, BUSY, cluster down) puts the link down like a timeout.
    * At most ``max_connections`` calls are in flight; a call that waits for
      a slot so long that Redis gets less than half the timeout falls back
      with reason ``busy`` (this process is overloaded, Redis is not at
      fault: the link stays up).
    * While down, :meth:`call` raises at once (reason ``down``): no connect,
      no timer. :attr:`available` tells a caller beforehand.
    * After the backoff, the next caller probes (one at a time; the others
      keep falling back meanwhile). Success: the link is up (``resumptions``
      += 1). Failure: a new backoff.

    Fork: redis-py gives a forked child new connections; the link gives it
    its own free slots (:meth:`after_fork`, registered with
    ``os.register_at_fork``), so calls the parent had in flight at the fork
    hold nothing in the child.

    Counters: ``calls`` (sent to Redis), ``fallbacks`` (calls answered with
    SharedUnavailable, for any reason), ``failures`` (calls that reached
    Redis and failed or timed out), ``outages`` and ``resumptions``.

    Times are on ``clock`` (a FakeClock in tests; keep the system clock with
    a real server, since the timeout is a timer on it).

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> clock = FakeClock(autojump=False)
        >>> link = RedisLink("redis://127.0.0.1:1/0", clock=clock, rng=random.Random(1), backoff=(0.5, 0.5))
        >>> try:
        ...     link.execute("PING")
        ... except SharedUnavailable:
        ...     pass
        >>> link.available, link.retry_in()
        (False, 0.5)
        >>> clock.advance(0.5); link.available     # the next call probes
        True
        >>> link.close()
    """

    def __init__(
        self,
        client: Union[str, redis.Redis],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        backoff: tuple[float, float] = DEFAULT_BACKOFF,
        namespace: str = DEFAULT_NAMESPACE,
        name: str = "",
        max_connections: int = 32,
        clock: Clock = SYSTEM_CLOCK,
        rng: Optional[random.Random] = None,
        bus: Optional[EventBus] = None,
    ) -> None:
        if not timeout > 0:
            raise ConfigurationError(f"timeout must be > 0, got {timeout!r}")
        low, high = backoff
        if not 0 < low <= high:
            raise ConfigurationError(f"backoff must be (low, high) with 0 < low <= high, got {backoff!r}")
        if not namespace or not isinstance(namespace, str) or any(c.isspace() for c in namespace):
            raise ConfigurationError(f"namespace must be a non-empty string without spaces, got {namespace!r}")
        self._owned = not isinstance(client, redis.Redis)
        self.client: redis.Redis = gevent_redis(
            client, max_connections=max_connections, pool_timeout=max(timeout, 0.001)
        )
        self.timeout = float(timeout)
        self.backoff = (float(low), float(high))
        self.namespace = namespace
        self.name = name or (_redacted(client) if isinstance(client, str) else repr(client))
        self.clock = clock
        self.rng = rng if rng is not None else random.Random()
        self.bus = bus if bus is not None else default_bus
        self._max_connections = max_connections
        self._gate = gevent.lock.BoundedSemaphore(max_connections)
        self._down = False
        self._probing = False
        self._retry_at = 0.0
        self._down_since = 0.0
        self._outage_fallbacks = 0
        self.last_error: Optional[BaseException] = None
        self.calls = 0
        self.fallbacks = 0
        self.failures = 0
        self.outages = 0
        self.resumptions = 0
        _LINKS.add(self)

    # ------------------------------------------------------------------ state
    @property
    def up(self) -> bool:
        """True unless the link is down (in its backoff, or waiting for a probe to succeed)."""
        return not self._down

    @property
    def available(self) -> bool:
        """True when a :meth:`call` now would be sent to Redis (up, or due for a probe nobody is running)."""
        if not self._down:
            return True
        return not self._probing and self.clock.now() >= self._retry_at

    def retry_in(self) -> float:
        """Seconds until the link probes again (0 when up or due)."""
        if not self._down:
            return 0.0
        return max(0.0, self._retry_at - self.clock.now())

    def key(self, *parts: Any) -> str:
        """A key in the link's namespace: ``namespace:part:part``.

        Example::

            >>> link = RedisLink("redis://127.0.0.1:1/0", namespace="shop")
            >>> link.key("rate", "api", 7)
            'shop:rate:api:7'
            >>> link.close()
        """
        return ":".join((self.namespace, *map(str, parts)))

    # ------------------------------------------------------------------ calls
    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(client, *args, **kwargs)`` within the link's timeout, or :class:`SharedUnavailable`.

        Exceptions other than Redis errors, OS errors and the link's own
        timeout (a bug in ``fn``, say) propagate unchanged and leave the link
        up.
        """
        probe = False
        if self._down:
            if self._probing or self.clock.now() < self._retry_at:
                self._outage_fallbacks += 1
                raise self._fallback("down", None)
            self._probing = probe = True
        clock = self.clock
        now = clock.now()
        until = now + self.timeout
        own_limit = True
        d = current_deadline()
        if d is not None and d < until:
            until, own_limit = d, False
        if until <= now:
            if probe:
                self._probing = False
            raise self._fallback("no_budget", None)
        gate = self._gate
        sent_at = None
        mine = arm(clock, until)
        try:
            gate.acquire()
            try:
                sent_at = clock.now()
                self.calls += 1
                result = fn(self.client, *args, **kwargs)
            finally:
                gate.release()
        except Interrupt as caught:
            if probe:
                self._probing = False
            if caught.timer is not mine:
                raise
            if sent_at is None:  # every slot stayed taken: this process is busy, Redis is not at fault
                raise self._fallback("busy", None) from None
            error: BaseException = TimeoutError(f"redis call took longer than {until - now:.3f}s")
            if not own_limit:  # the caller's deadline, not the link's timeout, ran out
                raise self._fallback("no_budget", error) from None
            if until - sent_at < self.timeout / 2:  # it waited for a slot so long that Redis had too little time
                raise self._fallback("busy", error) from None
            raise self._failed("timeout", error, probe) from None
        except _LINK_ERRORS as e:
            if probe:
                self._probing = False
            if isinstance(e, redis.exceptions.ConnectionError) and str(e).startswith("No connection available"):
                raise self._fallback("busy", e) from e
            if isinstance(e, redis.exceptions.ResponseError) and not (
                isinstance(e, _UNAVAILABLE) or str(e).startswith(_UNAVAILABLE_PREFIXES)
            ):
                self.last_error = e
                if self._down:  # it answered: the link works
                    self._resumed()
                raise self._fallback("refused", e) from e
            raise self._failed("error", e, probe) from e
        except BaseException:
            if probe:
                self._probing = False
            raise
        finally:
            mine.cancel()
        if self._down:
            self._resumed()
        return result

    def execute(self, *command: Any) -> Any:
        """One Redis command through :meth:`call`: ``link.execute("INCR", key)``."""
        return self.call(_execute, command)

    def pipeline(self, build: Callable[[Any], Any]) -> list[Any]:
        """Commands queued by ``build(pipe)`` sent in one round trip (no MULTI); their results in order.

        Example (where Redis answers)::

            link.pipeline(lambda p: (p.incr(k), p.expire(k, 5)))   # -> [1, True]
        """
        return self.call(_pipeline, build)

    def script(self, source: str) -> Any:
        """A Lua script registered on the client (redis-py's Script: EVALSHA, reloaded on NOSCRIPT).

        Run it with :meth:`run_script`; a restarted Redis forgets scripts and
        the first run loads it again.
        """
        return self.client.register_script(source)

    def run_script(self, script: Any, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        """Run a :meth:`script` through :meth:`call`."""
        return self.call(_run_script, script, keys, args)

    # ------------------------------------------------------------------ fall back
    def _fallback(self, reason: str, error: Optional[BaseException]) -> SharedUnavailable:
        self.fallbacks += 1
        if self.bus.wants("shared.fallback"):
            self.bus.emit("shared.fallback", link=self.name, reason=reason, error=error)
        return SharedUnavailable(f"redis link {self.name}: {reason}" + (f": {error}" if error else ""), reason=reason)

    def _failed(self, reason: str, error: BaseException, probe: bool) -> SharedUnavailable:
        self.failures += 1
        self.last_error = error
        now = self.clock.now()
        if not self._down:  # an outage begins
            self._down = True
            self._down_since = now
            self._outage_fallbacks = 0
            self.outages += 1
        elif not probe:  # a call sent before the outage began: its backoff is already running
            self._outage_fallbacks += 1
            return self._fallback(reason, error)
        self._outage_fallbacks += 1
        low, high = self.backoff
        retry_in = low + (high - low) * self.rng.random()
        self._retry_at = now + retry_in
        self.bus.emit("shared.down", link=self.name, error=error, retry_in=retry_in)
        return self._fallback(reason, error)

    def _resumed(self) -> None:
        self._down = False
        self._probing = False
        self.resumptions += 1
        down_for = self.clock.now() - self._down_since
        self.bus.emit("shared.resumed", link=self.name, down_for=down_for, fallbacks=self._outage_fallbacks)

    def mark_down(self, error: BaseException) -> None:
        """Treat the link as failed now (a caller saw Redis misbehave outside :meth:`call`)."""
        self._failed("error", error, True)

    def stats(self) -> dict[str, Any]:
        """The counters and state as a dict (for diagnostics and dashboards).

        Example::

            >>> link = RedisLink("redis://127.0.0.1:1/0")
            >>> sorted(link.stats())
            ['calls', 'failures', 'fallbacks', 'last_error', 'name', 'outages', 'resumptions', 'retry_in', 'up']
            >>> link.close()
        """
        return {
            "name": self.name,
            "up": self.up,
            "retry_in": self.retry_in(),
            "calls": self.calls,
            "fallbacks": self.fallbacks,
            "failures": self.failures,
            "outages": self.outages,
            "resumptions": self.resumptions,
            "last_error": repr(self.last_error) if self.last_error is not None else None,
        }

    def after_fork(self) -> None:
        """Forget this process's calls in flight: called in a forked child (redis-py renews the pool itself).

        The slots and the probe of greenlets that stayed in the parent would
        otherwise stay taken in the child for good.
        """
        self._gate = gevent.lock.BoundedSemaphore(self._max_connections)
        self._probing = False

    def close(self) -> None:
        """Disconnect the client's pool when the link built it (a client passed in stays open)."""
        if self._owned:
            self.client.close()
            self.client.connection_pool.disconnect()

    def __enter__(self) -> RedisLink:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "up" if not self._down else f"down retry_in={self.retry_in():.3f}"
        return (
            f"<RedisLink {self.name} {state} calls={self.calls} fallbacks={self.fallbacks}"
            f" failures={self.failures} outages={self.outages} resumptions={self.resumptions}>"
        )


_LINKS: weakref.WeakSet[RedisLink] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for link in list(_LINKS):
        link.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _execute(client: Any, command: tuple[Any, ...]) -> Any:
    return client.execute_command(*command)


def _pipeline(client: Any, build: Callable[[Any], Any]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    build(pipe)
    return list(pipe.execute())


def _run_script(client: Any, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
    return script(keys=list(keys), args=list(args), client=client)


def redis_link(shared: SharedSource, **options: Any) -> RedisLink:
    """The :class:`RedisLink` for a policy's ``shared=``: a link as is, else a new one on the URL or client.

    ``options`` go to :class:`RedisLink` when one is built. To share one pool
    between several policies, build one link and pass it to each.

    Example::

        >>> link = redis_link("redis://127.0.0.1:1/0", timeout=0.02)
        >>> redis_link(link) is link, link.timeout
        (True, 0.02)
        >>> link.close()
        >>> redis_link(42)
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: shared must be a redis:// URL, a redis.Redis client or a RedisLink, got 42
    """
    if isinstance(shared, RedisLink):
        return shared
    if isinstance(shared, (str, redis.Redis)):
        return RedisLink(shared, **options)
    raise ConfigurationError(f"shared must be a redis:// URL, a redis.Redis client or a RedisLink, got {shared!r}")
