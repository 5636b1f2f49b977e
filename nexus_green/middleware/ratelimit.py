"""Rate limiting: pure policies, the runner that carries out their decisions, a middleware and a decorator (layer L4).

Three policies decide; they never sleep and never raise for a refusal:

* :class:`TokenBucket` -- ``capacity`` tokens (default 100), refilled at
  ``refill_rate`` per second (default 10); a full bucket allows a burst of
  ``capacity`` calls.
* :class:`LeakyBucket` -- a queue of ``capacity`` requests (default 100)
  draining at ``leak_rate`` per second (default 10): admitted requests leave
  evenly spaced (each is told how long to wait for its turn); a full queue
  rejects. It never lets a burst through.
* :class:`SlidingWindow` -- at most ``limit`` requests (default 1000) in any
  ``window`` (default 60 s), counted in buckets of ``granularity`` (default 1 s).

A :class:`RateLimiter` keeps one policy per key (per Fid, per endpoint, or
whatever the key function returns) and carries the decision out: on a
refusal it either waits, bounded by ``max_wait`` and by the deadline in force,
or raises :class:`~nexus_green.errors.RateLimited` whose ``retry_after`` is
the time until the next slot. Time comes from the injected clock only, so
tests with a :class:`~nexus_green.clock.FakeClock` are exact.

Each policy also has a fast path, ``try_acquire(cost) -> bool``: the same
admission, arithmetic only, with no decision object built; it admits only
what needs no waiting. The runner calls it first and builds a
:class:`RateDecision` only for a refusal (or a leaky-bucket delay), and keeps
the last key's policy at hand, so an admitted call costs well under a
microsecond (docs/benchmarks.md, ``bench/bench_ratelimit.py``).

Events on the configured bus: ``ratelimit.rejected`` [limiter, key,
retry_after] and ``ratelimit.delayed`` [limiter, key, waited].

Example::

    >>> from nexus_green.clock import FakeClock
    >>> clock = FakeClock()
    >>> bucket = TokenBucket(capacity=2, refill_rate=1.0, clock=clock)
    >>> [bucket.acquire().allowed for _ in range(3)]
    [True, True, False]
    >>> clock.advance(1.0); bucket.acquire().allowed
    True
"""

from __future__ import annotations

import functools
import math
import operator
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Optional, Protocol, TypeVar, Union, cast

import cachetools

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import effective_timeout
from ..errors import ConfigurationError, RateLimited
from ..events import EventBus, default_bus
from ..pipeline import ORDER_RATE_LIMIT, Handler
from ..protocol.messages import Request, Response

__all__ = [
    "RateDecision",
    "RatePolicy",
    "TokenBucket",
    "LeakyBucket",
    "SlidingWindow",
    "RateLimiter",
    "RateLimitMiddleware",
    "rate_limited",
]

_EPS = 1e-9
F = TypeVar("F", bound=Callable[..., Any])
_UNSET: Any = object()


def _never(cost: float = 1.0) -> bool:
    """The fast path of a policy that has none: always "ask :meth:`acquire`"."""
    return False


@dataclass(frozen=True, slots=True, kw_only=True)
class RateDecision:
    """A policy's answer.

    ``allowed`` with ``delay`` > 0 means "admitted, go after ``delay``
    seconds" (leaky bucket shaping); not ``allowed`` comes with
    ``retry_after``, the seconds until the same request could be admitted.
    ``remaining`` is what is left (tokens, queue room, window slots).

    Example::

        >>> RateDecision(allowed=False, retry_after=0.5)
        RateDecision(allowed=False, delay=0.0, retry_after=0.5, remaining=0.0)
    """

    allowed: bool
    delay: float = 0.0
    retry_after: float = 0.0
    remaining: float = 0.0


class RatePolicy(Protocol):
    """What a rate policy offers: a decision per call and a fresh copy per key.

    ``max_delay`` is how long the caller accepts to be delayed when admitted
    (only the leaky bucket delays admissions). A policy may also offer
    ``try_acquire(cost) -> bool``, the same admission without delay and
    without a decision object (a refusal must leave it unchanged);
    :class:`RateLimiter` uses it first when present.

    Example::

        >>> isinstance(TokenBucket().fresh(), TokenBucket)
        True
    """

    clock: Clock

    def acquire(self, cost: float = 1.0, max_delay: float = 0.0) -> RateDecision: ...

    def fresh(self) -> RatePolicy: ...


def _positive(name: str, value: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or math.isinf(value):
        raise ConfigurationError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def _check_cost(cost: float, capacity: float, what: str) -> None:
    if not cost > 0:
        raise ConfigurationError(f"cost must be positive, got {cost!r}")
    if cost > capacity:
        raise ConfigurationError(f"cost {cost} exceeds the {what} {capacity}: it could never be admitted")


class TokenBucket:
    """Token bucket: bursts up to ``capacity``, sustained ``refill_rate`` per second.

    Starts full. Example::

        >>> from nexus_green.clock import FakeClock
        >>> clock = FakeClock()
        >>> b = TokenBucket(capacity=1, refill_rate=4.0, clock=clock)
        >>> b.acquire().allowed, b.acquire().retry_after
        (True, 0.25)
    """

    __slots__ = ("capacity", "refill_rate", "clock", "_tokens", "_last")

    def __init__(self, capacity: float = 100, refill_rate: float = 10.0, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.capacity = _positive("capacity", capacity)
        self.refill_rate = _positive("refill_rate", refill_rate)
        self.clock = clock
        self._tokens = self.capacity
        self._last = clock.now()

    def fresh(self) -> TokenBucket:
        """A full bucket with the same settings and clock."""
        return TokenBucket(self.capacity, self.refill_rate, clock=self.clock)

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        self._refill()
        return self._tokens

    def _refill(self) -> None:
        now = self.clock.now()
        if now > self._last:
            self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.refill_rate)
        self._last = now

    def try_acquire(self, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are enough: :meth:`acquire` without the decision object.

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> b = TokenBucket(capacity=2, refill_rate=1.0, clock=FakeClock())
            >>> b.try_acquire(), b.try_acquire(), b.try_acquire()
            (True, True, False)
        """
        if not 0 < cost <= self.capacity:
            _check_cost(cost, self.capacity, "bucket capacity")
        now = self.clock.now()
        tokens = self._tokens
        if now > self._last:
            tokens += (now - self._last) * self.refill_rate
            if tokens > self.capacity:
                tokens = self.capacity
        self._last = now
        if tokens + _EPS >= cost:
            self._tokens = tokens - cost if tokens > cost else 0.0
            return True
        self._tokens = tokens
        return False

    def acquire(self, cost: float = 1.0, max_delay: float = 0.0) -> RateDecision:
        """Take ``cost`` tokens if there are enough; never reserves future tokens."""
        if self.try_acquire(cost):
            return RateDecision(allowed=True, remaining=self._tokens)
        return RateDecision(allowed=False, retry_after=(cost - self._tokens) / self.refill_rate, remaining=self._tokens)

    def __repr__(self) -> str:
        return f"<TokenBucket {self.tokens:.2f}/{self.capacity:g} refill={self.refill_rate:g}/s>"


class LeakyBucket:
    """Leaky bucket as a queue: ``capacity`` places, drained at ``leak_rate`` per second.

    An admitted request is told to wait (``delay``) until the requests ahead
    of it have drained, so admissions leave evenly spaced. It is refused when
    the queue is full or when its wait would exceed ``max_delay``; with
    ``max_delay=0`` the bucket polices (admits only when nothing is queued).

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> b = LeakyBucket(capacity=3, leak_rate=10.0, clock=FakeClock())
        >>> [b.acquire(max_delay=1.0).delay for _ in range(3)]
        [0.0, 0.1, 0.2]
        >>> b.acquire(max_delay=1.0).allowed
        False
    """

    __slots__ = ("capacity", "leak_rate", "clock", "_level", "_last")

    def __init__(self, capacity: float = 100, leak_rate: float = 10.0, *, clock: Clock = SYSTEM_CLOCK) -> None:
        self.capacity = _positive("capacity", capacity)
        self.leak_rate = _positive("leak_rate", leak_rate)
        self.clock = clock
        self._level = 0.0
        self._last = clock.now()

    def fresh(self) -> LeakyBucket:
        """An empty bucket with the same settings and clock."""
        return LeakyBucket(self.capacity, self.leak_rate, clock=self.clock)

    @property
    def level(self) -> float:
        """Requests still queued (not yet drained)."""
        self._drain()
        return self._level

    def _drain(self) -> None:
        now = self.clock.now()
        if now > self._last:
            self._level = max(0.0, self._level - (now - self._last) * self.leak_rate)
        self._last = now

    def try_acquire(self, cost: float = 1.0) -> bool:
        """Admit the request only if it can go at once (nothing queued ahead, room for it).

        What :meth:`acquire` with ``max_delay=0`` admits, without the decision object.

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> b = LeakyBucket(capacity=10, leak_rate=10.0, clock=FakeClock())
            >>> b.try_acquire(), b.try_acquire()    # the second would have to wait 0.1 s
            (True, False)
        """
        if not 0 < cost <= self.capacity:
            _check_cost(cost, self.capacity, "bucket capacity")
        now = self.clock.now()
        level = self._level
        if now > self._last:
            level -= (now - self._last) * self.leak_rate
            if level < 0.0:
                level = 0.0
            self._level = level
        self._last = now
        if level + cost > self.capacity + _EPS or level > _EPS * self.leak_rate:
            return False
        self._level = level + cost
        return True

    def acquire(self, cost: float = 1.0, max_delay: float = 0.0) -> RateDecision:
        """Queue the request if there is room and its turn comes within ``max_delay``."""
        _check_cost(cost, self.capacity, "bucket capacity")
        self._drain()
        if self._level + cost > self.capacity + _EPS:
            over = self._level + cost - self.capacity
            return RateDecision(allowed=False, retry_after=over / self.leak_rate, remaining=self.capacity - self._level)
        delay = self._level / self.leak_rate
        if delay > max_delay + _EPS:
            return RateDecision(allowed=False, retry_after=delay - max_delay, remaining=self.capacity - self._level)
        self._level += cost
        return RateDecision(allowed=True, delay=delay, remaining=self.capacity - self._level)

    def __repr__(self) -> str:
        return f"<LeakyBucket {self.level:.2f}/{self.capacity:g} leak={self.leak_rate:g}/s>"


class SlidingWindow:
    """At most ``limit`` requests in any ``window`` seconds, counted per ``granularity`` bucket.

    A request counted in the bucket starting at ``s`` stops counting at
    ``s + window``. Example::

        >>> from nexus_green.clock import FakeClock
        >>> clock = FakeClock()
        >>> w = SlidingWindow(limit=2, window=10.0, granularity=1.0, clock=clock)
        >>> w.acquire().allowed, w.acquire().allowed, w.acquire().retry_after
        (True, True, 10.0)
    """

    __slots__ = ("limit", "window", "granularity", "clock", "_buckets", "_count")

    def __init__(
        self, limit: float = 1000, window: float = 60.0, granularity: float = 1.0, *, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.limit = _positive("limit", limit)
        self.window = _positive("window", window)
        self.granularity = _positive("granularity", granularity)
        if self.granularity > self.window:
            raise ConfigurationError(f"granularity {granularity} is larger than the window {window}")
        self.clock = clock
        self._buckets: deque[list[float]] = deque()  # [start, count]
        self._count = 0.0

    def fresh(self) -> SlidingWindow:
        """An empty window with the same settings and clock."""
        return SlidingWindow(self.limit, self.window, self.granularity, clock=self.clock)

    @property
    def count(self) -> float:
        """Requests counted in the window now."""
        self._expire(self.clock.now())
        return self._count

    def _expire(self, now: float) -> None:
        buckets = self._buckets
        while buckets and buckets[0][0] + self.window <= now + _EPS:
            self._count -= buckets.popleft()[1]

    def try_acquire(self, cost: float = 1.0) -> bool:
        """Count the request if the window has room: :meth:`acquire` without the decision object.

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> w = SlidingWindow(limit=1, window=5.0, clock=FakeClock())
            >>> w.try_acquire(), w.try_acquire()
            (True, False)
        """
        if not 0 < cost <= self.limit:
            _check_cost(cost, self.limit, "window limit")
        now = self.clock.now()
        buckets = self._buckets
        if buckets and buckets[0][0] + self.window <= now + _EPS:
            self._expire(now)
        if self._count + cost > self.limit + _EPS:
            return False
        start = now // self.granularity * self.granularity
        if buckets and buckets[-1][0] == start:
            buckets[-1][1] += cost
        else:
            buckets.append([start, cost])
        self._count += cost
        return True

    def acquire(self, cost: float = 1.0, max_delay: float = 0.0) -> RateDecision:
        """Count the request if the window has room; otherwise say when it will."""
        if self.try_acquire(cost):
            return RateDecision(allowed=True, remaining=self.limit - self._count)
        now = self.clock.now()
        need = self._count + cost - self.limit
        freed = 0.0
        retry_after = self.window
        for start, n in self._buckets:
            freed += n
            if freed + _EPS >= need:
                retry_after = start + self.window - now
                break
        return RateDecision(allowed=False, retry_after=max(0.0, retry_after), remaining=self.limit - self._count)

    def __repr__(self) -> str:
        return f"<SlidingWindow {self.count:g}/{self.limit:g} per {self.window:g}s>"


class RateLimiter:
    """Carries out a policy's decisions, one policy per key.

    ``policy`` is a template: key ``None`` uses it directly, any other key
    gets ``policy.fresh()`` (at most ``max_keys`` keys are remembered, least
    recently used dropped first). ``on_limit="raise"`` raises
    :class:`~nexus_green.errors.RateLimited`; ``on_limit="wait"`` sleeps on
    the policy's clock until admitted, for at most ``max_wait`` seconds (and
    never past the deadline in force), then raises.

    ``shared=`` (a ``redis://`` URL, a ``redis.Redis`` client or a
    :class:`~nexus_green.transport.redis.RedisLink`) makes every process with
    a limiter of the same ``name`` share each key's limit, decided by an
    atomic Lua script in Redis (a TokenBucket as GCRA, or a SlidingWindow):
    see :mod:`nexus_green.middleware.shared_ratelimit`. While Redis is away
    each process falls back to a local policy with the full limit, or the
    limit divided by ``shared_processes`` when given. :attr:`shared` holds
    the link and the counters (None for a local limiter).

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> clock = FakeClock()
        >>> limiter = RateLimiter(TokenBucket(capacity=1, refill_rate=2.0, clock=clock), on_limit="wait")
        >>> limiter.acquire("a"), limiter.acquire("a")   # second waits 0.5 s
        (0.0, 0.5)
    """

    def __init__(
        self,
        policy: Optional[RatePolicy] = None,
        *,
        on_limit: str = "raise",
        max_wait: float = 1.0,
        max_keys: int = 10_000,
        name: str = "rate_limit",
        bus: Optional[EventBus] = None,
        shared: Any = None,
        shared_processes: Optional[int] = None,
    ) -> None:
        if on_limit not in ("raise", "wait"):
            raise ConfigurationError(f"on_limit must be 'raise' or 'wait', got {on_limit!r}")
        if not max_wait >= 0:
            raise ConfigurationError(f"max_wait must be >= 0, got {max_wait!r}")
        self.policy: RatePolicy = policy if policy is not None else TokenBucket()
        self.shared: Any = None
        if shared is not None:
            # redis-py is an optional extra: imported only when a shared limit is asked for.
            from ..transport.redis import redis_link
            from .shared_ratelimit import SharedLimits

            self.shared = SharedLimits(redis_link(shared, clock=self.policy.clock), processes=shared_processes)
            self._template = self.policy
            self.policy = self.shared.policy(self.policy, name, None)
        elif shared_processes is not None:
            raise ConfigurationError("shared_processes= applies to a shared limiter only: give shared= too")
        self.clock = self.policy.clock
        self.on_limit = on_limit
        self.max_wait = float(max_wait)
        self.name = name
        self.bus = bus if bus is not None else default_bus
        self._keyed: cachetools.LRUCache[Hashable, RatePolicy] = cachetools.LRUCache(maxsize=max_keys)
        # The last key and its policy's fast path, swapped as one tuple (consistent even across threads):
        # a run of calls for one key skips the LRU lookup. The last key is the most recently used one,
        # so the LRU never evicts it while it is cached here.
        self._last: tuple[Hashable, Callable[[float], bool]] = (_UNSET, _never)
        self.admitted = 0
        self.rejected = 0
        self.delayed = 0

    def policy_for(self, key: Hashable) -> RatePolicy:
        """The policy instance that decides for ``key``.

        Example::

            >>> r = RateLimiter()
            >>> r.policy_for(None) is r.policy, r.policy_for(1) is r.policy_for(1)
            (True, True)
        """
        if key is None:
            return self.policy
        policy = self._keyed.get(key)
        if policy is None:
            if self.shared is not None:
                policy = self._keyed[key] = self.shared.policy(self._template, self.name, key)
            else:
                policy = self._keyed[key] = self.policy.fresh()
        return policy

    def acquire(self, key: Hashable = None, cost: float = 1.0) -> float:
        """Admit one call for ``key`` (or raise RateLimited); returns the seconds waited.

        The policy's ``try_acquire`` is asked first (no object built); only a
        refusal goes the full way: a decision, then waiting or raising.

        Example::

            >>> from nexus_green.clock import FakeClock
            >>> r = RateLimiter(SlidingWindow(limit=1, window=5.0, clock=FakeClock()))
            >>> r.acquire()
            0.0
            >>> try:
            ...     r.acquire()
            ... except RateLimited as e:
            ...     print(e.retry_after)
            5.0
        """
        last = self._last
        if key == last[0]:
            try_acquire = last[1]
        else:
            try_acquire = getattr(self.policy_for(key), "try_acquire", _never)
            self._last = (key, try_acquire)
        if try_acquire(cost):
            self.admitted += 1
            return 0.0
        return self._acquire_slow(key, cost)

    def _acquire_slow(self, key: Hashable, cost: float) -> float:
        policy = self.policy_for(key)
        waiting = self.on_limit == "wait"
        budget = 0.0
        if waiting:
            budget = max(0.0, cast(float, effective_timeout(self.max_wait, clock=self.clock)))
        waited = 0.0
        while True:
            decision = policy.acquire(cost, budget - waited)
            if decision.allowed:
                if decision.delay > 0:
                    self.clock.sleep(decision.delay)
                    waited += decision.delay
                self.admitted += 1
                if waited > 0:
                    self.delayed += 1
                    if self.bus.wants("ratelimit.delayed"):
                        self.bus.emit("ratelimit.delayed", limiter=self.name, key=key, waited=waited)
                return waited
            if waiting and waited + decision.retry_after <= budget + _EPS:
                # Sleep at least a little so float dust cannot spin this loop.
                pause = max(decision.retry_after, 1e-6)
                self.clock.sleep(pause)
                waited += pause
                continue
            self.rejected += 1
            if self.bus.wants("ratelimit.rejected"):
                self.bus.emit("ratelimit.rejected", limiter=self.name, key=key, retry_after=decision.retry_after)
            raise RateLimited(
                f"rate limit {self.name!r} reached for key {key!r}; next slot in {decision.retry_after:.3f}s",
                retry_after=decision.retry_after,
            )

    def __repr__(self) -> str:
        return (
            f"<RateLimiter {self.name} {self.policy!r} on_limit={self.on_limit} keys={len(self._keyed)}"
            f" admitted={self.admitted} rejected={self.rejected}>"
        )


KeyFn = Callable[[Request], Hashable]
_PER: dict[str, KeyFn] = {
    "fid": operator.attrgetter("fid"),
    "endpoint": operator.attrgetter("endpoint"),
    "fid+endpoint": operator.attrgetter("endpoint", "fid"),
    "global": lambda r: None,
}


class RateLimitMiddleware:
    """A rate limiter in the request pipeline (order 300: after the cache, before backpressure).

    ``per`` picks the key: ``"fid"`` (default), ``"endpoint"``,
    ``"fid+endpoint"``, ``"global"`` or a function of the request.

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> clock = FakeClock()
        >>> mw = RateLimitMiddleware(RateLimiter(TokenBucket(capacity=1, refill_rate=1.0, clock=clock)))
        >>> ok = lambda r: Response()
        >>> mw(Request(fid=1), ok).code, mw(Request(fid=2), ok).code   # one bucket per Fid
        (200, 200)
        >>> mw(Request(fid=1), ok)
        Traceback (most recent call last):
        ...
        nexus_green.errors.RateLimited: rate limit 'rate_limit' reached for key 1; next slot in 1.000s
    """

    order = ORDER_RATE_LIMIT

    def __init__(
        self,
        limiter: Optional[RateLimiter] = None,
        *,
        per: Union[str, KeyFn] = "fid",
        cost: Union[float, Callable[[Request], float]] = 1.0,
        name: str = "rate_limit",
    ) -> None:
        self.limiter = limiter if limiter is not None else RateLimiter()
        if callable(per):
            self._key: KeyFn = per
        elif per in _PER:
            self._key = _PER[per]
        else:
            raise ConfigurationError(f"per must be one of {', '.join(_PER)} or a function, got {per!r}")
        self._cost_fn: Optional[Callable[[Request], float]] = cost if callable(cost) else None
        self._fixed_cost = 1.0 if callable(cost) else cost
        self.name = name

    def __call__(self, request: Request, call_next: Handler) -> Response:
        cost_fn = self._cost_fn
        self.limiter.acquire(self._key(request), self._fixed_cost if cost_fn is None else cost_fn(request))
        return call_next(request)

    @property
    def bus(self) -> EventBus:
        """The bus its limiter emits on (see :func:`nexus_green.pipeline.bus_of`)."""
        return self.limiter.bus

    def __repr__(self) -> str:
        return f"<RateLimitMiddleware {self.limiter!r}>"


def rate_limited(
    policy: Union[RatePolicy, RateLimiter, None] = None,
    *,
    key: Optional[Callable[..., Hashable]] = None,
    cost: float = 1.0,
    on_limit: str = "raise",
    max_wait: float = 1.0,
    name: str = "",
    shared: Any = None,
    shared_processes: Optional[int] = None,
) -> Callable[[F], F]:
    """Decorate any callable with a rate limit; ``key(*args, **kwargs)`` picks the bucket.

    The wrapper's ``limiter`` attribute is the :class:`RateLimiter` used.
    Bare ``@rate_limited`` uses the default policy (a :class:`TokenBucket`).
    ``shared=`` / ``shared_processes=`` share the limit across processes
    through Redis (see :class:`RateLimiter`); the limiter's name (the
    function's name unless ``name=``) names the shared keys.

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> @rate_limited(TokenBucket(capacity=2, refill_rate=1.0, clock=FakeClock()), key=lambda user: user)
        ... def fetch(user):
        ...     return f"data for {user}"
        >>> fetch("ann"), fetch("ann"), fetch("bob")
        ('data for ann', 'data for ann', 'data for bob')
        >>> fetch("ann")
        Traceback (most recent call last):
        ...
        nexus_green.errors.RateLimited: rate limit 'fetch' reached for key 'ann'; next slot in 1.000s
    """

    if callable(policy) and not isinstance(policy, RateLimiter) and not hasattr(policy, "fresh"):  # bare: the function
        return rate_limited()(policy)

    def decorate(fn: F) -> F:
        if isinstance(policy, RateLimiter):
            limiter = policy
        else:
            limiter = RateLimiter(
                policy,
                on_limit=on_limit,
                max_wait=max_wait,
                name=name or getattr(fn, "__name__", "rate_limited"),
                shared=shared,
                shared_processes=shared_processes,
            )

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            limiter.acquire(key(*args, **kwargs) if key is not None else None, cost)
            return fn(*args, **kwargs)

        wrapper.limiter = limiter  # type: ignore[attr-defined]
        return cast(F, wrapper)

    return decorate
