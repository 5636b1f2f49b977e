"""L3: the cache level in Redis, under L1 and L2, shared by every process that names it (layer L4).

:class:`RedisCache` is what ``TwoLevelCache(l3=...)`` and
``CacheMiddleware(l3=...)`` take (docs/shared-state.md). It keeps the same
keys, TTLs and invalidation rules as L1 and L2; what it adds:

* **Signed values.** A value read from a shared server is a pickle, and
  unpickling runs code: every value is signed with HMAC-SHA256 under the
  ``secret`` the application provides (L3 refuses to start without one), over
  its Redis key and its bytes. A value whose signature fails (tampered, moved
  to another key, written by an application with another secret) is a miss,
  counted in ``rejected`` and never unpickled.
* **Namespaced keys.** ``<namespace>:cache:<name>:v:<key>`` for values (with
  a ``PX`` expiry at the end of the entry's life),
  ``<namespace>:cache:<name>:tags`` (a hash: tag -> generation) and the
  pub/sub channel ``<namespace>:cache:<name>:inval``. ``namespace`` is the
  link's (``nexus_green`` by default): give each application its own.
* **Tag invalidation everywhere.** A tag's generation lives in the Redis
  hash, raised atomically (Lua) and published. Each process folds the
  generations into the entries it stores (as L1/L2 always did), listens on
  the channel, and after every (re)subscription re-reads the whole hash, so
  a process that was down or lost its subscription cannot keep serving
  entries of a tag invalidated meanwhile: until it is listening again it
  re-reads the hash at most every ``resync_interval`` seconds on lookups.
  Generations only grow (merges take the larger), and a generation this
  process raised while Redis was down is pushed up (and published) at the
  next re-read.
* **Bounded, counted fallback.** Every Redis call goes through a
  :class:`~nexus_green.transport.redis.RedisLink` (a short timeout clipped
  to the caller's budget; while Redis is down, calls fall back at once
  without I/O). A failed read is a miss, a failed write is dropped (both
  counted); L1 and L2 go on serving, and L3 resumes when the link does.

Writes are inline, not written behind: the miss that stores a value has just
paid an origin round trip, a Redis ``SET`` on the same network costs a small
fraction of it (bench/bench_shared_state.py), is bounded by the link's
timeout, and another process can read the value as soon as the caller has
its answer.

Example (no Redis on port 1: L3 falls back and the levels above serve)::

    >>> from nexus_green.middleware.cache import TwoLevelCache
    >>> l3 = RedisCache("redis://127.0.0.1:1/0", secret=b"0123456789abcdef0123456789abcdef", listen=False)
    >>> with TwoLevelCache(l2=None, l3=l3) as cache:
    ...     cache.set("k", "v")
    ...     cache.get("k"), l3.stats().dropped, l3.stats().errors
    ('v', 1, 1)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import pickle
from collections.abc import Callable
from typing import Any, Optional, Union

import gevent
import gevent.lock

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError
from ..greenlets import spawn
from ..logs import RepeatedLog
from .cache import CacheEntry, CacheStats, _Counters, _pack, _safe_name, _unpack

__all__ = ["RedisCache", "MIN_SECRET_BYTES"]

log = logging.getLogger("nexus_green.middleware.cache")
_rlog = RepeatedLog(log)

#: The shortest HMAC key L3 accepts (bytes).
MIN_SECRET_BYTES = 16
_MAGIC = b"NGL3"  # format 1: magic, 32-byte HMAC-SHA256, pickle of the entry's builtin tuple
_MAC = 32

# Raise a tag's generation to max(stored + 1, wanted) and tell every process.
_BUMP_LUA = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local g = math.max(cur + 1, tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], ARGV[1], g)
redis.call('PUBLISH', KEYS[2], ARGV[1] .. '=' .. g)
return g
"""
# Push up the generations this process knows better (raised while Redis was down, or lost by a
# Redis restart), publish them, and return the whole hash.
_MERGE_LUA = """
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  local want = tonumber(ARGV[i + 1])
  if want > cur then
    redis.call('HSET', KEYS[1], ARGV[i], want)
    redis.call('PUBLISH', KEYS[2], ARGV[i] .. '=' .. want)
  end
end
return redis.call('HGETALL', KEYS[1])
"""

_LISTEN_POLL = 1.0  # seconds a listener waits for a message before looking at its state again
_LISTEN_BACKOFF = (0.05, 1.0)  # first and longest pause before a listener subscribes again


def _get(client: Any, key: str) -> Any:
    return client.get(key)


def _set(client: Any, key: str, blob: bytes, ms: int) -> Any:
    return client.set(key, blob, px=ms)


def _delete(client: Any, key: str) -> Any:
    return client.delete(key)


def _clear(client: Any, pattern: str) -> int:
    gone = 0
    batch: list[Any] = []
    for key in client.scan_iter(match=pattern, count=500):
        batch.append(key)
        if len(batch) >= 500:
            gone += client.delete(*batch)
            batch = []
    if batch:
        gone += client.delete(*batch)
    return gone


class RedisCache:
    """L3: a cache level in Redis shared between processes and machines (see the module docstring).

    ``shared`` is a ``redis://`` URL, a ``redis.Redis`` client or a
    :class:`~nexus_green.transport.redis.RedisLink` (share one link between
    policies to share its pool). ``secret`` (bytes or str, at least 16 bytes)
    is the HMAC key: the same on every process of the application, and
    secret. ``ttl`` caps an entry's life in L3 (default 300 s; a shorter
    per-call ``ttl`` wins, as in L1/L2). Values whose pickle is larger than
    ``max_value_bytes`` are not stored in L3 (counted in ``dropped``).
    ``listen=False`` skips the pub/sub listener: tag invalidations from other
    processes are then seen within ``resync_interval`` seconds (a re-read of
    the tag hash on lookup) instead of at once.

    Example::

        >>> RedisCache("redis://127.0.0.1:1/0", secret=b"")
        Traceback (most recent call last):
        ...
        nexus_green.errors.ConfigurationError: L3 needs secret=: the HMAC-SHA256 key (at least 16 bytes, the same on every process) that signs its values, since a pickle read from a shared server is code that runs
    """

    level = "l3"

    def __init__(
        self,
        shared: Any,
        *,
        secret: Union[bytes, str, None] = None,
        namespace: Optional[str] = None,
        name: str = "cache",
        ttl: float = 300.0,
        max_value_bytes: int = 1024 * 1024,
        resync_interval: float = 0.25,
        listen: bool = True,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        key = secret.encode() if isinstance(secret, str) else secret
        if not key:
            raise ConfigurationError(
                "L3 needs secret=: the HMAC-SHA256 key (at least 16 bytes, the same on every process) that signs"
                " its values, since a pickle read from a shared server is code that runs"
            )
        if not isinstance(key, bytes) or len(key) < MIN_SECRET_BYTES:
            raise ConfigurationError(f"L3 secret= must be at least {MIN_SECRET_BYTES} bytes")
        if not ttl > 0:
            raise ConfigurationError(f"L3 ttl must be positive, got {ttl!r}")
        if max_value_bytes < 1:
            raise ConfigurationError(f"L3 max_value_bytes must be >= 1, got {max_value_bytes!r}")
        if not resync_interval > 0:
            raise ConfigurationError(f"L3 resync_interval must be positive, got {resync_interval!r}")
        from ..transport.redis import RedisLink, SharedUnavailable, redis_link  # redis-py: an optional extra

        self._unavailable = SharedUnavailable
        if isinstance(shared, RedisLink):
            if namespace is not None and namespace != shared.namespace:
                raise ConfigurationError(
                    f"namespace {namespace!r} differs from the link's {shared.namespace!r}: set it on the link"
                )
            self.link = shared
            self._owns_link = False
        else:
            self.link = redis_link(shared, **({"namespace": namespace} if namespace is not None else {}))
            self._owns_link = True
        self._secret = key
        self.name = name
        self.ttl = float(ttl)
        self.max_value_bytes = max_value_bytes
        self.resync_interval = float(resync_interval)
        self.clock = clock
        self.prefix = self.link.key("cache", _safe_name(name))
        self.tags_key = f"{self.prefix}:tags"
        self.channel = f"{self.prefix}:inval"
        self._bump = self.link.script(_BUMP_LUA)
        self._merge = self.link.script(_MERGE_LUA)
        self.counters = _Counters()
        self.rejected = 0
        self.resyncs = 0
        self.listening = False
        self._listen = listen
        self._listener: Optional[gevent.Greenlet] = None
        # Held while the listener connects, subscribes and re-reads: close() waits for it rather than kill a
        # greenlet inside a connect (a socket being made when its greenlet dies would never be closed).
        self._connecting = gevent.lock.Semaphore()
        self._gens: dict[str, int] = {}
        self._on_change: Callable[[], None] = lambda: None
        self._synced_at: Optional[float] = None
        self._closed = False
        self._attached = False

    # -- wiring to the cache above
    def attach(self, gens: dict[str, int], on_change: Callable[[], None]) -> None:
        """Share the cache's tag generations (merged in place) and start listening for invalidations.

        :class:`~nexus_green.middleware.cache.TwoLevelCache` calls it; ``on_change`` runs when a
        generation was raised by another process.
        """
        if self._attached:
            raise ConfigurationError("this RedisCache already serves a cache: give each TwoLevelCache its own")
        self._attached = True
        self._gens = gens
        self._on_change = on_change
        if self._listen and self._listener is None and not self._closed:
            self._listener = spawn(self._run_listener, name="cache-l3-listener")

    def vkey(self, key: str) -> str:
        """The Redis key of a cache key: ``<namespace>:cache:<name>:v:<key>``."""
        return f"{self.prefix}:v:{key}"

    # -- values
    def _sign(self, rkey: str, payload: bytes) -> bytes:
        return hmac.new(self._secret, rkey.encode() + b"\x00" + payload, hashlib.sha256).digest()

    def _reject(self, rkey: str, why: str) -> None:
        self.rejected += 1
        _rlog.warning(("l3-rejected", self.prefix), "L3 value at %s rejected (%s): treated as a miss", rkey, why)

    def get(self, key: str) -> Optional[CacheEntry]:
        """The entry stored for ``key`` if its signature holds, else None (a miss; a failed call is counted)."""
        c = self.counters
        if not self.link.available:  # down, in its backoff: a miss at once (no exception, no I/O)
            c.errors += 1
            return None
        rkey = self.vkey(key)
        t0 = self.clock.now()
        try:
            blob = self.link.call(_get, rkey)
        except self._unavailable:
            c.errors += 1
            return None
        c.reads += 1
        c.read_time += self.clock.now() - t0
        if blob is None:
            return None
        if not isinstance(blob, bytes) or len(blob) < len(_MAGIC) + _MAC or not blob.startswith(_MAGIC):
            self._reject(rkey, "not an L3 value")
            return None
        mac = blob[len(_MAGIC) : len(_MAGIC) + _MAC]
        payload = blob[len(_MAGIC) + _MAC :]
        if not hmac.compare_digest(mac, self._sign(rkey, payload)):
            self._reject(rkey, "bad signature")
            return None
        try:
            entry = _unpack(pickle.loads(payload))  # signed by a holder of the secret: ours to trust
        except Exception as exc:  # signed but unreadable here (another version of the application)
            self._reject(rkey, f"unreadable: {type(exc).__name__}")
            return None
        if entry is None:
            self._reject(rkey, "not an entry")
        return entry

    def set(self, key: str, entry: CacheEntry) -> bool:
        """Store ``entry`` until its ``stale_until`` (inline, bounded by the link); False when not stored."""
        c = self.counters
        ms = int((entry.stale_until - self.clock.wall()) * 1000)
        if ms <= 0:
            return False
        if not self.link.available:  # down: dropped before paying for the pickle and the signature
            c.errors += 1
            c.dropped += 1
            return False
        rkey = self.vkey(key)
        try:
            payload = pickle.dumps(_pack(entry), protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # a value pickle cannot store: L1/L2 keep it
            c.dropped += 1
            _rlog.warning(("l3-pickle", type(exc)), "L3 cannot store %s: %s: %s", key, type(exc).__name__, exc)
            return False
        if len(payload) > self.max_value_bytes:
            c.dropped += 1
            return False
        try:
            self.link.call(_set, rkey, _MAGIC + self._sign(rkey, payload) + payload, ms)
        except self._unavailable:
            c.errors += 1
            c.dropped += 1
            return False
        c.written += 1
        return True

    def delete(self, key: str) -> bool:
        """Drop ``key``; False when Redis could not be reached (counted)."""
        try:
            self.link.call(_delete, self.vkey(key))
        except self._unavailable:
            self.counters.errors += 1
            return False
        return True

    def clear(self) -> bool:
        """Drop every value of this cache (tag generations are kept); False when Redis could not finish it."""
        try:
            self.link.call(_clear, f"{self.prefix}:v:*")
        except self._unavailable:
            self.counters.errors += 1
            return False
        return True

    # -- tag generations
    def _adopt(self, tag: str, gen: int) -> bool:
        if gen > self._gens.get(tag, 0):
            self._gens[tag] = gen
            return True
        return False

    def bump(self, tag: str, want: int) -> Optional[int]:
        """Raise ``tag``'s generation in Redis to at least ``want`` and publish it; the new one, or None."""
        try:
            got = int(self.link.run_script(self._bump, [self.tags_key, self.channel], [tag, want]))
        except self._unavailable:
            self.counters.errors += 1
            return None  # raised locally only: the next resync pushes it up
        self._adopt(tag, got)
        return got

    def resync(self) -> bool:
        """Merge generations both ways with the Redis hash (ours pushed up, theirs adopted); True when done."""
        args: list[Any] = []
        for tag, gen in list(self._gens.items()):
            args += (tag, gen)
        try:
            flat = self.link.run_script(self._merge, [self.tags_key, self.channel], args)
        except self._unavailable:
            self.counters.errors += 1
            return False
        changed = False
        for i in range(0, len(flat) - 1, 2):
            tag = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
            changed |= self._adopt(tag, int(flat[i + 1]))
        self.resyncs += 1
        self._synced_at = self.clock.now()
        if changed:
            self._on_change()
        return True

    def sync_if_due(self) -> None:
        """Called on lookups while not listening: re-read the generations at most every ``resync_interval``."""
        now = self.clock.now()
        if self._synced_at is not None and now - self._synced_at < self.resync_interval:
            return
        if not self.link.available:
            return  # down: lookups must not wait, and the listener resyncs when it comes back
        self._synced_at = now
        self.resync()

    def adopt_entry_tags(self, entry: CacheEntry) -> bool:
        """Fold a read entry's generations in: True when it is current (none of its tags is older than known).

        An entry stored under a newer generation than this process knows was
        stored by one that saw a later invalidation: the newer one is adopted.
        """
        current, changed = True, False
        for tag, gen in entry.tags:
            known = self._gens.get(tag, 0)
            if gen > known:
                self._gens[tag] = gen
                changed = True
            elif gen < known:
                current = False
        if changed:
            self._on_change()
        return current

    def _on_message(self, data: Any) -> None:
        text = data.decode() if isinstance(data, bytes) else str(data)
        tag, sep, gen = text.rpartition("=")
        if sep and gen.isdigit() and self._adopt(tag, int(gen)):
            self._on_change()

    def _run_listener(self) -> None:
        delay = _LISTEN_BACKOFF[0]
        while not self._closed:
            pubsub = None
            try:
                with self._connecting:
                    if self._closed:
                        break
                    pubsub = self.link.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.channel)
                    # Subscribed first, then read the hash: an invalidation is seen by one or the other.
                    synced = self.resync()
                if synced:
                    self.listening = True
                    delay = _LISTEN_BACKOFF[0]
                    handled = 0
                    while not self._closed:
                        message = pubsub.get_message(timeout=_LISTEN_POLL)
                        if message is not None and message.get("type") == "message":
                            self._on_message(message.get("data"))
                            handled += 1
                            if not handled & 63:
                                # Buffered messages return without a wait: a flood of invalidations
                                # must not hold the hub (DESIGN principle 14).
                                gevent.sleep(0)
            except Exception as exc:  # Redis gone or unreachable: resubscribe after a pause
                self.counters.errors += 1
                _rlog.warning(("l3-listen", self.prefix), "L3 invalidation listener lost Redis: %s", exc)
            finally:
                self.listening = False
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # pragma: no cover - closing a broken connection
                        pass
            if not self._closed:
                gevent.sleep(delay)
                delay = min(delay * 2, _LISTEN_BACKOFF[1])

    # -- figures and life
    def stats(self) -> CacheStats:
        """This level's figures: ``errors`` are operations that fell back (or were skipped while the link was
        down), ``rejected`` values whose signature failed, ``dropped`` values not stored."""
        return self.counters.snapshot(self.level, 0, rejected=self.rejected)

    def close(self) -> None:
        """Stop listening and close the link if this level made it (a link passed in stays open)."""
        self._closed = True
        if self._listener is not None:
            if self._connecting.acquire(timeout=5):  # bounded by the connect and the link's timeouts
                self._connecting.release()
            self._listener.kill(block=True, timeout=2)
            self._listener = None
        if self._owns_link:
            self.link.close()

    def __repr__(self) -> str:
        state = "listening" if self.listening else "not listening"
        return f"<RedisCache {self.prefix}:* ttl={self.ttl:g}s {state} link={'up' if self.link.up else 'down'}>"
