"""Rate limits shared by every process through Redis: atomic Lua scripts (layer L4).

``RateLimiter(TokenBucket(...), shared="redis://...")`` (or
``@rate_limited(..., shared=...)``) makes N processes respect one limit
together instead of N limits. Each decision is one Lua script run through a
:class:`~nexus_green.transport.redis.RedisLink` (one round trip, atomic,
on Redis server time so the machines' clocks never matter):

* :class:`~nexus_green.middleware.ratelimit.TokenBucket` becomes **GCRA**
  (the generic cell rate algorithm): one key holds the theoretical arrival
  time of the next call; ``capacity`` is the burst, ``refill_rate`` the
  sustained rate, exactly as the local bucket, and a refusal says how long
  until the next token (``retry_after``).
* :class:`~nexus_green.middleware.ratelimit.SlidingWindow` becomes a hash of
  ``granularity`` buckets (field = bucket start in server ms, value = count);
  buckets older than the window are dropped by the script.
* :class:`~nexus_green.middleware.ratelimit.LeakyBucket` (a queue that
  delays admissions) is not shared: it is refused with a clear error.

Keys: ``NS:rate:LIMITER:KEY`` (``NS`` the link's namespace, ``nexus_green``
by default; ``LIMITER`` the limiter's name; ``KEY`` the limiter key as
text, ``*`` for the global key). They expire once idle for a window (sliding
window) or once the bucket would be full again (GCRA).

Redis down or slow: the call goes to a **local in-process policy** instead,
counted in :attr:`SharedLimits.fallbacks`. By default it is the full limit
per process (N processes may then admit up to N times the limit together
while Redis is away); with ``shared_processes=N`` it is the limit divided by
N (capacity, refill rate or window limit), so the fleet stays near the limit
(never below one call: a cost must stay admissible). The local policy counts
only calls admitted while Redis is away. When Redis answers again, decisions
are shared again.

Example (no Redis on port 1: the local limit decides and the fallback is counted)::

    >>> from nexus_green.middleware.ratelimit import RateLimiter, TokenBucket
    >>> limiter = RateLimiter(TokenBucket(capacity=2, refill_rate=1.0), shared="redis://127.0.0.1:1/0", name="api")
    >>> limiter.acquire("ann"), limiter.acquire("ann")
    (0.0, 0.0)
    >>> limiter.shared.fallbacks, limiter.shared.key("api", "ann")
    (2, 'nexus_green:rate:api:ann')
    >>> limiter.shared.link.close()
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Optional, Union

from ..errors import ConfigurationError
from ..transport.redis import RedisLink, SharedUnavailable
from .ratelimit import LeakyBucket, RateDecision, SlidingWindow, TokenBucket, _check_cost

__all__ = ["SharedLimits", "SharedRate", "GCRA_LUA", "SLIDING_WINDOW_LUA"]

#: GCRA on server time. KEYS[1]: the key; ARGV: emission interval (µs), capacity, cost.
#: Returns {allowed 0/1, retry_after s, remaining tokens} (numbers as text: Redis truncates Lua floats).
GCRA_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, capacity, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now) or now
if tat < now then tat = now end
local new_tat = tat + cost * interval
local allow_at = new_tat - capacity * interval
if allow_at > now + 0.001 then
  return {0, string.format('%.6f', (allow_at - now) / 1e6), string.format('%.6f', capacity - (tat - now) / interval)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, '0', string.format('%.6f', math.max(0, (now - allow_at) / interval))}
"""

#: Sliding window on server time. KEYS[1]: the hash; ARGV: window ms, granularity ms, limit, cost.
#: Returns {allowed 0/1, retry_after s, remaining}.
SLIDING_WINDOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local window, granularity = tonumber(ARGV[1]), tonumber(ARGV[2])
local limit, cost = tonumber(ARGV[3]), tonumber(ARGV[4])
local fields = redis.call('HGETALL', KEYS[1])
local count, live = 0, {}
for i = 1, #fields, 2 do
  local start, n = tonumber(fields[i]), tonumber(fields[i + 1])
  if start + window <= now then
    redis.call('HDEL', KEYS[1], fields[i])
  else
    count = count + n
    live[#live + 1] = {start, n}
  end
end
if count + cost > limit + 1e-9 then
  table.sort(live, function(a, b) return a[1] < b[1] end)
  local need, freed, retry = count + cost - limit, 0, window
  for _, bucket in ipairs(live) do
    freed = freed + bucket[2]
    if freed + 1e-9 >= need then
      retry = bucket[1] + window - now
      break
    end
  end
  return {0, string.format('%.6f', math.max(0, retry) / 1000), string.format('%.6f', limit - count)}
end
local start = math.floor(now / granularity) * granularity
redis.call('HINCRBYFLOAT', KEYS[1], string.format('%.0f', start), cost)
redis.call('PEXPIRE', KEYS[1], math.ceil(window + granularity))
return {1, '0', string.format('%.6f', limit - count - cost)}
"""

SharedPolicy = Union[TokenBucket, SlidingWindow]


class SharedLimits:
    """What a shared :class:`~nexus_green.middleware.ratelimit.RateLimiter` shares: its link, scripts and counters.

    ``limiter.shared`` is one of these (None for a local limiter).
    ``decisions`` counts calls decided in Redis, ``fallbacks`` calls
    decided by the local policy because Redis did not answer in time.
    ``processes`` (``shared_processes=``) divides the local fallback limit.

    Example::

        >>> from nexus_green.transport.redis import RedisLink
        >>> shared = SharedLimits(RedisLink("redis://127.0.0.1:1/0", namespace="shop"), processes=4)
        >>> shared.key("api", None), shared.key("api", (7, "x"))
        ('shop:rate:api:*', "shop:rate:api:(7, 'x')")
        >>> shared.local_copy(TokenBucket(capacity=100, refill_rate=40.0))
        <TokenBucket 25.00/25 refill=10/s>
        >>> shared.link.close()
    """

    def __init__(self, link: RedisLink, *, processes: Optional[int] = None) -> None:
        if processes is not None and (not isinstance(processes, int) or isinstance(processes, bool) or processes < 1):
            raise ConfigurationError(f"shared_processes must be an int >= 1, got {processes!r}")
        self.link = link
        self.processes = processes
        self._gcra = link.script(GCRA_LUA)
        self._window = link.script(SLIDING_WINDOW_LUA)
        self.decisions = 0
        self.fallbacks = 0

    def key(self, limiter: str, key: Hashable) -> str:
        """The Redis key of one limiter key."""
        return self.link.key("rate", limiter, "*" if key is None else key)

    def local_copy(self, policy: SharedPolicy) -> SharedPolicy:
        """The in-process policy used while Redis is away: ``policy``'s limits divided by :attr:`processes`."""
        n = self.processes or 1
        if isinstance(policy, TokenBucket):
            return TokenBucket(
                max(policy.capacity / n, min(policy.capacity, 1.0)), policy.refill_rate / n, clock=policy.clock
            )
        return SlidingWindow(
            max(policy.limit / n, min(policy.limit, 1.0)), policy.window, policy.granularity, clock=policy.clock
        )

    def policy(self, template: Any, limiter: str, key: Hashable) -> SharedRate:
        """The shared policy deciding for ``key`` of limiter ``limiter``, with ``template``'s settings."""
        return SharedRate(template, self, self.key(limiter, key))

    def __repr__(self) -> str:
        return f"<SharedLimits {self.link.name} decisions={self.decisions} fallbacks={self.fallbacks}>"


class SharedRate:
    """A token bucket (as GCRA) or sliding window whose state is one Redis key shared by every process.

    A :class:`~nexus_green.middleware.ratelimit.RatePolicy`: the
    :class:`~nexus_green.middleware.ratelimit.RateLimiter` builds one per key
    when it is shared. ``local`` is the in-process policy used while Redis is
    away (see :meth:`SharedLimits.local_copy`).

    Example::

        >>> from nexus_green.transport.redis import RedisLink
        >>> shared = SharedLimits(RedisLink("redis://127.0.0.1:1/0"))
        >>> rate = SharedRate(SlidingWindow(limit=1, window=5.0), shared, "k")
        >>> rate.acquire().allowed, rate.acquire().allowed     # Redis away: the local window decides
        (True, False)
        >>> SharedRate(LeakyBucket(), shared, "k")
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: a shared rate limit takes a TokenBucket (shared as GCRA) or a SlidingWindow, not a LeakyBucket: a queue that delays each caller is kept per process
        >>> shared.link.close()
    """

    def __init__(self, template: Any, shared: SharedLimits, key: str) -> None:
        if isinstance(template, LeakyBucket) or not isinstance(template, (TokenBucket, SlidingWindow)):
            raise ConfigurationError(
                "a shared rate limit takes a TokenBucket (shared as GCRA) or a SlidingWindow, "
                f"not a {type(template).__name__}: a queue that delays each caller is kept per process"
                if isinstance(template, LeakyBucket)
                else f"a shared rate limit takes a TokenBucket (shared as GCRA) or a SlidingWindow, not {template!r}"
            )
        self.template: SharedPolicy = template
        self.clock = template.clock
        self.shared = shared
        self.key = key
        self.local: SharedPolicy = shared.local_copy(template)
        if isinstance(template, TokenBucket):
            self._limit = template.capacity
            self._script = shared._gcra
            self._args: list[Any] = [repr(1e6 / template.refill_rate), repr(template.capacity)]
        else:
            self._limit = template.limit
            self._script = shared._window
            self._args = [repr(template.window * 1000), repr(template.granularity * 1000), repr(template.limit)]

    def fresh(self) -> SharedRate:
        """Another handle on the same shared key (the state is in Redis: there is no fresh copy of it)."""
        return SharedRate(self.template, self.shared, self.key)

    def acquire(self, cost: float = 1.0, max_delay: float = 0.0) -> RateDecision:
        """One atomic decision in Redis, or the local policy's when Redis does not answer in time."""
        _check_cost(cost, self._limit, "limit")
        shared = self.shared
        try:
            allowed, retry_after, remaining = shared.link.run_script(
                self._script, (self.key,), (*self._args, repr(float(cost)))
            )
        except SharedUnavailable:
            shared.fallbacks += 1
            return self.local.acquire(cost, max_delay)
        shared.decisions += 1
        if int(allowed):
            return RateDecision(allowed=True, remaining=float(remaining))
        return RateDecision(allowed=False, retry_after=float(retry_after), remaining=float(remaining))

    def __repr__(self) -> str:
        return f"<SharedRate {self.key} {type(self.template).__name__}>"
