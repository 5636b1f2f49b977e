"""A circuit breaker's state and sliding window shared through Redis (layer L4).

``CircuitBreaker(name="db", shared="redis://...")`` gives the breaker a
:class:`SharedBreakerStorage`: every process that names the same breaker (in
the same namespace) then sees one state and one sliding window. It builds on
pybreaker's :class:`~pybreaker.CircuitRedisStorage` (its keys, its ``state``
and whole-second ``opened_at``, so pybreaker code reading them sees the
state) and extends it where it falls short:

* **Sub-second open durations.** pybreaker keeps ``opened_at`` in whole
  seconds; here the opener also writes ``opened_at_ms`` and ``open_for_ms``
  (Redis server time, so clocks of different machines never matter), and
  every process maps the remaining time onto its own clock.
* **The sliding window** is per-bucket hashes (``calls``/``failures``/``slow``
  as fields ``c``/``f``/``s``) with an expiry of one window, written with
  HINCRBY + PEXPIRE and summed by one Lua script.
* **Compare-and-set transitions.** A state change is written only if nobody
  changed the state since this process last saw it (an ``epoch`` counter);
  the loser of a race adopts the winner's state instead of overwriting it.
* **Few round trips.** Admission and recording stay local and in memory:
  calls are counted locally and pushed, together with a read of the shared
  state and window, by one script at most every ``sync_interval`` seconds
  (0.1 s by default; a sync happens only when a call or a state read asks).
  A transition is written at once. So a breaker that opens in one process is
  seen as open by the others within ``sync_interval`` (well within one
  window bucket), and a busy process pays one Redis round trip per interval,
  not per call.
* **Consecutive failures and half-open trials stay per process** (an
  interleaving of processes has no meaningful "consecutive"); the failure
  and slow-call rates and ``minimum_calls`` are fleet-wide.

Redis down or slow: every Redis call goes through a
:class:`~nexus_green.transport.redis.RedisLink` (50 ms timeout clipped to the
caller's deadline, then a backoff during which nothing is sent). A sync or a
transition that falls back is counted (``fallbacks``), the breaker keeps
deciding from its local window and state, and a transition made meanwhile is
written when Redis answers again, unless another process changed the shared
state in between (then that one is adopted). A Redis that comes back empty
(no persistence) does not close an open breaker: its processes write their
state again. A transition's write happens under the breaker's lock, so other
greenlets wait for it (at most the link's timeout, and only at transitions).

Keys (``NS`` is the link's namespace, ``nexus_green`` by default; ``NAME`` the
breaker's name):

* ``NS:breaker:NAME:pybreaker:state`` -- pybreaker's state key (``closed``,
  ``open``, ``half-open``)
* ``NS:breaker:NAME:pybreaker:opened_at`` -- pybreaker's, whole Unix seconds
* ``NS:breaker:NAME:meta`` -- hash: ``epoch``, ``opened_at_ms``, ``open_for_ms``
* ``NS:breaker:NAME:w:BUCKET`` -- hash ``c``/``f``/``s`` per bucket (BUCKET =
  server milliseconds // bucket width), expiring one window after its bucket

Example (without a server the breaker works locally and counts the fallback)::

    >>> from nexus_green.resilience import CircuitBreaker
    >>> cb = CircuitBreaker(name="db", shared="redis://127.0.0.1:1/0", max_consecutive_failures=0, reset_jitter=0)
    >>> try:
    ...     cb.call(lambda: 1 / 0)
    ... except ZeroDivisionError:
    ...     pass
    >>> cb.current_state, cb.shared.fallbacks >= 1, cb.shared.key("state")
    ('open', True, 'nexus_green:breaker:db:pybreaker:state')
    >>> cb.shared.link.close()
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Optional

from pybreaker import STATE_CLOSED, STATE_HALF_OPEN, STATE_OPEN, CircuitBreakerStorage, CircuitRedisStorage

from ..clock import Clock
from ..errors import ConfigurationError
from ..transport.redis import RedisLink, SharedUnavailable

__all__ = ["DEFAULT_SYNC_INTERVAL", "SharedBreakerStorage"]

#: Seconds between two syncs of a shared breaker with Redis (at most; a sync happens only when a call asks).
DEFAULT_SYNC_INTERVAL = 0.1

_STATES = (STATE_CLOSED, STATE_OPEN, STATE_HALF_OPEN)

# Server time in ms; the current bucket; the shared state (created closed when missing).
_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local state = redis.call('GET', KEYS[1])
if not state then
  state = 'closed'
  redis.call('SET', KEYS[1], state)
end
local m = redis.call('HMGET', KEYS[2], 'epoch', 'opened_at_ms', 'open_for_ms')
local epoch = tonumber(m[1]) or 0
local function open_until()
  if state ~= 'open' then return -1 end
  if m[2] then return tonumber(m[2]) + (tonumber(m[3]) or 0) end
  local sec = redis.call('GET', KEYS[3])  -- opened by pybreaker itself: whole seconds + the reset timeout
  if sec then return tonumber(sec) * 1000 + tonumber(ARGV[1]) end
  return now + tonumber(ARGV[1])
end
"""

# ARGV: reset_ms, prefix, width_ms, buckets, ttl_ms, calls, failures, slow
_SYNC_LUA = (
    _PRELUDE
    + """
local prefix, width, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local b = math.floor(now / width)
local dc, df, ds = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
if state == 'closed' and dc > 0 then
  local k = prefix .. b
  redis.call('HINCRBY', k, 'c', dc)
  if df > 0 then redis.call('HINCRBY', k, 'f', df) end
  if ds > 0 then redis.call('HINCRBY', k, 's', ds) end
  redis.call('PEXPIRE', k, ARGV[5])
end
local c, f, s = 0, 0, 0
for i = b - n + 1, b do
  local v = redis.call('HMGET', prefix .. i, 'c', 'f', 's')
  c = c + (tonumber(v[1]) or 0)
  f = f + (tonumber(v[2]) or 0)
  s = s + (tonumber(v[3]) or 0)
end
return {state, epoch, open_until(), now, c, f, s}
"""
)

# ARGV: reset_ms, prefix, width_ms, buckets, expected epoch, expected state, new state, open_for_ms
_PUBLISH_LUA = (
    _PRELUDE
    + """
if epoch ~= tonumber(ARGV[5]) or state ~= ARGV[6] then
  return {0, state, epoch, open_until(), now}
end
epoch = epoch + 1
state = ARGV[7]
redis.call('SET', KEYS[1], state)
redis.call('HSET', KEYS[2], 'epoch', epoch)
if state == 'open' then
  redis.call('HSET', KEYS[2], 'opened_at_ms', now, 'open_for_ms', ARGV[8])
  m[2], m[3] = now, ARGV[8]
  redis.call('SET', KEYS[3], math.floor(now / 1000))
elseif state == 'closed' then
  local width, n = tonumber(ARGV[3]), tonumber(ARGV[4])
  local b = math.floor(now / width)
  for i = b - n + 1, b do redis.call('DEL', ARGV[2] .. i) end
end
return {1, state, epoch, open_until(), now}
"""
)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class SharedBreakerStorage(CircuitRedisStorage):
    """pybreaker's Redis storage, extended for a fleet: the breaker's :attr:`CircuitBreaker.shared`.

    Built by ``CircuitBreaker(shared=...)``; rarely made by hand. It never
    touches Redis in its constructor (pybreaker's does, blocking). The
    pybreaker interface (``state``, ``counter``, ``success_counter``,
    ``opened_at`` and their setters) is kept in memory for this process:
    the shared part is :meth:`sync` and :meth:`publish`, which the breaker
    calls.

    Counters: ``syncs`` (successful), ``publishes`` (transitions written),
    ``fallbacks`` (syncs or transitions Redis did not answer in time),
    ``adoptions`` (state changes made by another process and taken over),
    ``conflicts`` (transitions that lost a race), ``corrupt`` (unreadable
    values ignored), ``resets`` (syncs that found Redis had lost the shared
    state, restarted empty say: an open or half-open breaker writes its state
    again instead of closing).

    Example::

        >>> from nexus_green.transport.redis import RedisLink
        >>> link = RedisLink("redis://127.0.0.1:1/0", namespace="shop")
        >>> s = SharedBreakerStorage(link, "db", window=10.0, bucket_width=1.0, reset_timeout=1.0)
        >>> s.key("meta"), s.key("state"), s.state
        ('shop:breaker:db:meta', 'shop:breaker:db:pybreaker:state', 'closed')
        >>> link.close()
    """

    def __init__(
        self,
        link: RedisLink,
        name: str,
        *,
        window: float,
        bucket_width: float,
        reset_timeout: float,
        sync_interval: float = DEFAULT_SYNC_INTERVAL,
        clock: Optional[Clock] = None,
    ) -> None:
        if not name:
            raise ConfigurationError("a shared circuit breaker needs a name (the processes that share it use it)")
        if not sync_interval > 0:
            raise ConfigurationError(f"shared_sync must be > 0 s, got {sync_interval!r}")
        # Not CircuitRedisStorage.__init__: its SETNXs would block on the raw client. Its attributes, though,
        # so that its key naming (_namespace) works: NS:breaker:NAME:pybreaker:KEY.
        CircuitBreakerStorage.__init__(self, "redis")
        self._redis = link.client
        self._prefix = self._namespace_name = link.key("breaker", name)
        self._fallback_circuit_state = STATE_CLOSED
        self._initial_state = STATE_CLOSED
        self._cluster_mode = False
        self.link = link
        self.clock = clock if clock is not None else link.clock
        self.sync_interval = float(sync_interval)
        width_ms = max(1, int(round(bucket_width * 1000)))
        self._keys = [self._namespace("state"), link.key("breaker", name, "meta"), self._namespace("opened_at")]
        self._window_args = [
            max(1, int(round(reset_timeout * 1000))),
            link.key("breaker", name, "w") + ":",
            width_ms,
            int(math.ceil(window / bucket_width)),
        ]
        self._ttl_ms = int(math.ceil(window * 1000)) + width_ms
        self._sync_script = link.script(_SYNC_LUA)
        self._publish_script = link.script(_PUBLISH_LUA)
        # This process's pybreaker-facing values.
        self._state = STATE_CLOSED
        self._fail_counter = 0
        self._success_counter = 0
        self._opened_at: Optional[datetime] = None
        # The shared view: state and epoch as last read from Redis, the open deadline on our clock.
        self.seen_state = STATE_CLOSED
        self.epoch = 0
        self.open_until: Optional[float] = None
        self.fresh = False  # the last exchange with Redis succeeded: the shared figures are usable
        self.foreign = False  # another process changed the state: the breaker adopts it under its lock
        self.figures_changed = False  # a sync brought new figures: the breaker checks its trip conditions
        self._totals = (0, 0, 0)
        self._pending = [0, 0, 0]
        self._inflight = (0, 0, 0)
        self._next_sync = -math.inf
        self._syncing = False
        self._unpublished: Optional[tuple[str, Optional[float]]] = None
        self._open_hint: Optional[float] = None  # the end of the open duration this process last wrote or saw
        self.syncs = self.publishes = self.fallbacks = self.adoptions = self.conflicts = self.corrupt = 0
        self.resets = 0

    # --- pybreaker's storage interface, in memory for this process --------------------------------
    @property
    def state(self) -> str:
        """The state this process is in (pybreaker interface)."""
        return self._state

    @state.setter
    def state(self, state: str) -> None:
        self._state = state

    def increment_counter(self) -> None:
        """Count a consecutive failure (per process)."""
        self._fail_counter += 1

    def reset_counter(self) -> None:
        """Forget the consecutive failures."""
        self._fail_counter = 0

    def increment_success_counter(self) -> None:
        """Count a half-open trial success (per process)."""
        self._success_counter += 1

    def reset_success_counter(self) -> None:
        """Forget the trial successes."""
        self._success_counter = 0

    @property
    def counter(self) -> int:
        """Consecutive failures in this process."""
        return self._fail_counter

    @property
    def success_counter(self) -> int:
        """Half-open trial successes in this process."""
        return self._success_counter

    @property
    def opened_at(self) -> Optional[datetime]:
        """When this process last opened or saw the breaker open (the shared time is :attr:`open_until`)."""
        return self._opened_at

    @opened_at.setter
    def opened_at(self, now: datetime) -> None:
        self._opened_at = now

    def key(self, part: str) -> str:
        """The Redis key of ``part``: ``state`` / ``opened_at`` (pybreaker's), ``meta``, or ``w`` (window buckets: ``w:BUCKET``)."""
        if part in ("state", "opened_at"):
            return self._namespace(part)
        return f"{self._prefix}:{part}"

    # --- the sliding window ---------------------------------------------------------------------
    def add(self, failed: bool, slow: bool) -> None:
        """Count one closed-state call of this process (pushed at the next :meth:`sync`)."""
        pending = self._pending
        pending[0] += 1
        if failed:
            pending[1] += 1
        if slow:
            pending[2] += 1

    def totals(self) -> tuple[int, int, int]:
        """Calls, failures and slow calls in the shared window: the last sync's figures plus this process's since."""
        t, p, f = self._totals, self._pending, self._inflight
        return (t[0] + p[0] + f[0], t[1] + p[1] + f[1], t[2] + p[2] + f[2])

    def reset_window(self) -> None:
        """Forget the figures (a state change: a new state starts with an empty window)."""
        self._totals = (0, 0, 0)
        self._pending = [0, 0, 0]
        self._inflight = (0, 0, 0)
        self.figures_changed = False

    # --- exchanges with Redis -------------------------------------------------------------------
    def due(self) -> bool:
        """True when a :meth:`sync` is due and none is running."""
        return not self._syncing and self.clock.now() >= self._next_sync

    def sync(self) -> bool:
        """Push this process's counts, read the shared state and window: one script, one round trip.

        False when Redis did not answer in time (counted in ``fallbacks``; the
        breaker keeps its local view). Call it outside the breaker's lock.
        """
        self._syncing = True
        self._inflight = tuple(self._pending)  # type: ignore[assignment]
        self._pending = [0, 0, 0]
        args = [*self._window_args, self._ttl_ms, *self._inflight]
        try:
            reply = self.link.run_script(self._sync_script, self._keys, args)
        except SharedUnavailable:
            self.fallbacks += 1
            self.fresh = False
            return False
        finally:
            self._inflight = (0, 0, 0)
            self._syncing = False
            self._next_sync = self.clock.now() + self.sync_interval
        self.syncs += 1
        lost = int(reply[1]) < self.epoch  # Redis lost the shared state (restarted empty, flushed)
        changed = self._view(reply[0], reply[1], reply[2], reply[3])
        self._totals = (int(reply[4]), int(reply[5]), int(reply[6]))
        self.figures_changed = True
        self.fresh = True
        if lost:
            self.resets += 1
            if self._state != STATE_CLOSED and self._unpublished is None:
                # Write this process's state again rather than close because Redis forgot.
                self._unpublished = (self._state, self._open_hint if self._state == STATE_OPEN else None)
            changed = self._unpublished is None
        unpublished, self._unpublished = self._unpublished, None
        if unpublished is not None and not changed:
            # A transition made while Redis was away, and nobody changed the shared state since: write it now.
            if not self.publish(*unpublished):
                self.foreign = True
        elif changed:
            self.foreign = True
        return True

    def publish(self, state: str, open_until: Optional[float]) -> bool:
        """Write a transition if the shared state is still what this process last saw.

        ``open_until`` (a time on the breaker's clock) is the end of the open
        duration when ``state`` is open. Returns False when another process
        changed the state first (its state is then in :attr:`seen_state` and
        :attr:`open_until`, for the breaker to adopt). When Redis does not
        answer, returns True (the local transition stands), counts a fallback,
        and writes it at the next successful :meth:`sync`.
        """
        if open_until is not None:
            self._open_hint = open_until
        open_for_ms = 0 if open_until is None else max(1, int(round((open_until - self.clock.now()) * 1000)))
        args = [*self._window_args, self.epoch, self.seen_state, state, open_for_ms]
        try:
            reply = self.link.run_script(self._publish_script, self._keys, args)
        except SharedUnavailable:
            self.fallbacks += 1
            self.fresh = False
            self._unpublished = (state, open_until)
            return True
        self._view(reply[1], reply[2], reply[3], reply[4])
        if int(reply[0]) == 1:
            self.publishes += 1
            return True
        self.conflicts += 1
        return False

    def _view(self, state: Any, epoch: Any, open_until_ms: Any, now_ms: Any) -> bool:
        # Take a reply's shared state; True when it differs from what this process last saw.
        text = _text(state)
        if text not in _STATES:
            self.corrupt += 1
            text = STATE_CLOSED
        epoch = int(epoch)
        changed = epoch != self.epoch or text != self.seen_state
        self.seen_state, self.epoch = text, epoch
        until = int(open_until_ms)
        self.open_until = None if until < 0 else self.clock.now() + (until - int(now_ms)) / 1000.0
        if self.open_until is not None:
            self._open_hint = self.open_until
        return changed

    def stats(self) -> dict[str, Any]:
        """The counters and the shared view, for diagnostics.

        Example::

            >>> from nexus_green.transport.redis import RedisLink
            >>> link = RedisLink("redis://127.0.0.1:1/0")
            >>> s = SharedBreakerStorage(link, "db", window=10.0, bucket_width=1.0, reset_timeout=1.0)
            >>> s.stats()["seen_state"], s.stats()["fallbacks"]
            ('closed', 0)
            >>> link.close()
        """
        calls, failures, slow = self.totals()
        return {
            "seen_state": self.seen_state,
            "epoch": self.epoch,
            "fresh": self.fresh,
            "calls": calls,
            "failures": failures,
            "slow": slow,
            "syncs": self.syncs,
            "publishes": self.publishes,
            "fallbacks": self.fallbacks,
            "adoptions": self.adoptions,
            "conflicts": self.conflicts,
            "corrupt": self.corrupt,
            "resets": self.resets,
        }

    def __repr__(self) -> str:
        return (
            f"<SharedBreakerStorage {self._namespace_name} seen={self.seen_state} epoch={self.epoch}"
            f" syncs={self.syncs} fallbacks={self.fallbacks}>"
        )
