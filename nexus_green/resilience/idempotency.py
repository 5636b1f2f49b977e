"""Idempotency keys (layer L4): one key per logical request, and the server-side guard.

Client side: :func:`idempotency_key` establishes the key of the logical
request in a context variable (the outermost layer makes it; nested layers,
retries, hedges and failovers reuse it), :func:`current_idempotency_key`
reads it from wrapped code, and the middlewares send it in the frame header
block as ``idempotency-key`` (:data:`HEADER`) on every attempt.

Server side: :class:`IdempotencyGuard` is a pure class that remembers keys for
a window of an injected clock and returns the first result for duplicates.
With ``shared=`` (a Redis URL, client or link) the window lives in Redis, so a
retry that lands on another worker process is still applied once
(docs/shared-state.md): begin is one atomic ``SET NX PX`` of an in-progress
marker with an owner token, complete stores the result for the window, abandon
deletes the key only while it is still ours. Shared results are plain data
(see :func:`dump_shared_result`): nothing read from Redis is unpickled.

Example::

    >>> import random
    >>> with idempotency_key(rng=random.Random(1)) as key:
    ...     with idempotency_key() as inner:          # a nested layer: same key
    ...         inner == key == current_idempotency_key()
    True
    >>> current_idempotency_key() is None
    True
"""

from __future__ import annotations

import base64
import contextvars
import functools
import itertools
import json
import logging
import os
import random
import secrets
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, Union

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError, IdempotencyInProgress
from ..logs import RepeatedLog

__all__ = [
    "HEADER",
    "IdempotencyGuard",
    "IdempotencyInProgress",
    "GuardDecision",
    "current_idempotency_key",
    "idempotency_key",
    "idempotent",
    "new_idempotency_key",
    "enter_logical_request",
    "exit_logical_request",
    "dump_shared_result",
    "load_shared_result",
    "SharedGuardStats",
]

log = logging.getLogger("nexus_green.resilience.idempotency")
_rlog = RepeatedLog(log)

HEADER = "idempotency-key"

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# The key in force: a str, or an int standing for a key not yet spelled out
# (made lazily from a per-process random prefix and a sequence number, so a
# logical request whose key nobody reads costs no random bits and no formatting).
_KEY: contextvars.ContextVar[Union[str, int, None]] = contextvars.ContextVar(
    "nexus_green_idempotency_key", default=None
)
_SEQ = itertools.count(1)
_PREFIX = [f"{random.getrandbits(64):016x}"]


def _new_prefix() -> None:
    _PREFIX[0] = f"{random.getrandbits(64):016x}"


if hasattr(os, "register_at_fork"):  # a forked child must not repeat the parent's keys
    os.register_at_fork(after_in_child=_new_prefix)


def new_idempotency_key(rng: Optional[random.Random] = None) -> str:
    """A fresh 128-bit key as 32 hex digits, from ``rng`` or the ``random`` module.

    Keys must be unique, not secret; the ``random`` module's generator is
    reseeded in a forked child, so two processes do not share a sequence.

    Example::

        >>> new_idempotency_key(random.Random(0))
        'e3e70682c2094cac629f6fbed82c07cd'
    """
    return "%032x" % (rng.getrandbits(128) if rng is not None else random.getrandbits(128))


def current_idempotency_key() -> Optional[str]:
    """The idempotency key of the logical request in progress, or None."""
    key = _KEY.get()
    if key.__class__ is int:
        return f"{_PREFIX[0]}{key:016x}"
    return key  # type: ignore[return-value]


def enter_logical_request() -> Optional[contextvars.Token[Union[str, int, None]]]:
    """Start a logical request unless one is in progress; pass the result to :func:`exit_logical_request`.

    The fast form of ``with idempotency_key():`` for hot paths: the key is
    spelled out only when someone reads it.

    Example::

        >>> token = enter_logical_request()
        >>> k = current_idempotency_key(); len(k), k == current_idempotency_key()
        (32, True)
        >>> enter_logical_request() is None         # nested: the outer key stays
        True
        >>> exit_logical_request(token); current_idempotency_key() is None
        True
    """
    if _KEY.get() is not None:
        return None
    return _KEY.set(next(_SEQ))


def exit_logical_request(token: Optional[contextvars.Token[Union[str, int, None]]]) -> None:
    """End the logical request started by :func:`enter_logical_request` (None: it was nested)."""
    if token is not None:
        _KEY.reset(token)


class idempotency_key:  # noqa: N801 - used like a function: ``with idempotency_key():``
    """Run the block as one logical request with one idempotency key.

    An explicit ``key`` always applies; without one, an enclosing key is
    reused, or a new one is made. (A small class rather than a generator
    context manager: it runs on every resilient call.)

    Example::

        >>> with idempotency_key("abc") as k:
        ...     k, current_idempotency_key()
        ('abc', 'abc')
    """

    __slots__ = ("_key", "_rng", "_token")

    def __init__(self, key: Optional[str] = None, *, rng: Optional[random.Random] = None) -> None:
        self._key = key
        self._rng = rng
        self._token: Optional[contextvars.Token[Union[str, int, None]]] = None

    def __enter__(self) -> str:
        key = self._key
        if key is None:
            if _KEY.get() is not None:
                return current_idempotency_key()  # type: ignore[return-value]
            key = new_idempotency_key(self._rng)
        self._token = _KEY.set(key)
        return key

    def __exit__(self, *exc_info: object) -> None:
        if self._token is not None:
            _KEY.reset(self._token)
            self._token = None


def idempotent(func: Optional[F] = None, *, rng: Optional[random.Random] = None) -> Any:
    """Decorator: each call of the function is one logical request with its own key.

    Example::

        >>> @idempotent(rng=random.Random(0))
        ... def charge():
        ...     return current_idempotency_key()
        >>> charge()
        'e3e70682c2094cac629f6fbed82c07cd'
    """

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with idempotency_key(rng=rng):
                return f(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate(func) if func is not None else decorate


@dataclass(frozen=True, slots=True, kw_only=True)
class GuardDecision:
    """What the server should do with a request: 'run' it, 'replay' ``result``, or report 'in_progress'."""

    action: str
    result: Any = None


_RUNNING = object()

# --- results kept in a shared store: plain data, never a pickle ---------------------------------
# A result read from Redis was written by whoever can write there; unpickling it would run their
# code. Shared results are JSON with three tagged forms, so nothing read back can execute.


def _to_data(value: Any) -> Any:
    if value is None or value.__class__ in (bool, int, float, str):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"b": base64.b64encode(bytes(value)).decode("ascii")}
    if value.__class__ is tuple:
        return {"t": [_to_data(v) for v in value]}
    if value.__class__ is list:
        return [_to_data(v) for v in value]
    if value.__class__ is dict:
        return {"d": [[_to_data(k), _to_data(v)] for k, v in value.items()]}
    raise TypeError(
        f"a shared idempotency result must be plain data (None, bool, int, float, str, bytes, tuple, list, dict),"
        f" got {type(value).__name__}"
    )


def _from_data(data: Any) -> Any:
    if data is None or data.__class__ in (bool, int, float, str):
        return data
    if data.__class__ is list:
        return [_from_data(v) for v in data]
    if data.__class__ is dict and len(data) == 1:
        ((tag, inner),) = data.items()
        if tag == "b" and inner.__class__ is str:
            return base64.b64decode(inner.encode("ascii"), validate=True)
        if tag == "t" and inner.__class__ is list:
            return tuple(_from_data(v) for v in inner)
        if tag == "d" and inner.__class__ is list:
            return {_from_data(k): _from_data(v) for k, v in inner}
    raise ValueError(f"not a shared idempotency result: {data!r:.80}")


def dump_shared_result(value: Any) -> bytes:
    """The bytes a shared guard stores for ``value``: JSON of plain data (TypeError for anything else).

    Plain data is None, bool, int, float, str, bytes, and tuples, lists and
    dicts of them; the form keeps bytes and tuples apart from str and lists.

    Example::

        >>> dump_shared_result((b"ok", 200))
        b'{"t":[{"b":"b2s="},200]}'
        >>> load_shared_result(dump_shared_result({"n": (1, b"x")}))
        {'n': (1, b'x')}
    """
    return json.dumps(_to_data(value), separators=(",", ":")).encode()


def load_shared_result(data: bytes) -> Any:
    """The value :func:`dump_shared_result` stored (ValueError for bytes that are not one)."""
    try:
        return _from_data(json.loads(data))
    except (ValueError, TypeError, RecursionError) as exc:
        raise ValueError(f"not a shared idempotency result: {exc}") from exc


# Atomic steps on a key ``<namespace>:idem:<key>`` whose value is b"r" + owner token (running)
# or b"d" + the result (done). One round trip each.
_BEGIN_LUA = """
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return false
end
return v
"""
_COMPLETE_LUA = """
local v = redis.call('GET', KEYS[1])
if v and v ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
_ABANDON_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

_LOCAL = "local"  # a begin that fell back to the local window


@dataclass(frozen=True, slots=True, kw_only=True)
class SharedGuardStats:
    """A shared guard's figures.

    ``shared`` begins were decided in Redis, ``fallbacks`` fell back to the
    local window (Redis down or slow), ``lost`` completes or abandons could not
    reach Redis (the key then expires with its in-progress marker),
    ``unshareable`` results were not plain data and were kept locally only,
    ``corrupt`` values read from Redis were not results this guard wrote.

    Example::

        >>> SharedGuardStats(shared=1, fallbacks=0, lost=0, unshareable=0, corrupt=0).shared
        1
    """

    shared: int
    fallbacks: int
    lost: int
    unshareable: int
    corrupt: int


class IdempotencyGuard:
    """Server-side duplicate suppression: the first result of a key is returned for its duplicates.

    Keys are remembered for ``window`` seconds after their request completed
    (at most ``max_keys``, oldest evicted first). A request that failed is
    forgotten (:meth:`abandon`) so its retry runs again.

    ``shared=`` (a ``redis://`` URL, a ``redis.Redis`` client or a
    :class:`~nexus_green.transport.redis.RedisLink`) keeps the window in Redis
    under ``<namespace>:idem:<key>`` (``namespace`` defaults to the link's,
    ``nexus_green``), so every worker process sharing it applies a key once:
    :meth:`begin` is one atomic step (set an in-progress marker with an owner
    token unless the key exists, which expires after ``running_ttl`` seconds
    if its worker dies: set it above your slowest handler), :meth:`complete`
    stores the result for ``window`` seconds, :meth:`abandon` deletes the key
    only while it is still ours. Results must be plain data
    (:func:`dump_shared_result`), so nothing read back from Redis executes.
    Each call has the link's short timeout, clipped to the caller's budget;
    when Redis is down or slow the local window decides (counted in
    :meth:`stats`), which only stops duplicates that reach *this* worker.
    Completed results are kept locally too, for that case.

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> clock = FakeClock()
        >>> guard = IdempotencyGuard(window=60.0, clock=clock)
        >>> runs = []
        >>> def apply():
        ...     runs.append(1)
        ...     return f"applied #{len(runs)}"
        >>> guard.call("k1", apply), guard.call("k1", apply)
        ('applied #1', 'applied #1')
        >>> clock.advance(61); guard.call("k1", apply)
        'applied #2'

    With Redis unreachable (nothing listens on port 1), a shared guard falls
    back to its local window and counts it::

        >>> shared = IdempotencyGuard(shared="redis://127.0.0.1:1/0", namespace="shop")
        >>> shared.call("k1", apply), shared.call("k1", apply), shared.stats().fallbacks
        ('applied #3', 'applied #3', 2)
        >>> shared.close()
    """

    def __init__(
        self,
        *,
        window: float = 300.0,
        max_keys: int = 100_000,
        clock: Clock = SYSTEM_CLOCK,
        shared: Any = None,
        namespace: Optional[str] = None,
        running_ttl: float = 60.0,
    ) -> None:
        if not window > 0:
            raise ConfigurationError(f"idempotency window must be > 0 s, got {window}")
        if max_keys < 1:
            raise ConfigurationError(f"max_keys must be >= 1, got {max_keys}")
        if not running_ttl > 0:
            raise ConfigurationError(f"running_ttl must be > 0 s, got {running_ttl}")
        self.window = window
        self.max_keys = max_keys
        self.running_ttl = running_ttl
        self._clock = clock
        # key -> (expires_at, result or _RUNNING); ordered by expiry
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self.link: Any = None
        self._owns_link = False
        self._scripts: dict[str, Any] = {}
        if shared is not None:
            from ..transport.redis import RedisLink, redis_link  # redis-py is an optional extra: imported when asked

            if isinstance(shared, RedisLink):
                if namespace is not None and namespace != shared.namespace:
                    raise ConfigurationError(
                        f"namespace {namespace!r} differs from the link's {shared.namespace!r}: set it on the link"
                    )
                self.link = shared
            else:
                self.link = redis_link(shared, **({"namespace": namespace} if namespace is not None else {}))
                self._owns_link = True
            for name, lua in (("begin", _BEGIN_LUA), ("complete", _COMPLETE_LUA), ("abandon", _ABANDON_LUA)):
                self._scripts[name] = self.link.script(lua)
        elif namespace is not None:
            raise ConfigurationError("namespace= names the Redis keys of a shared guard: pass shared= too")
        # key -> the owner token of a shared begin (or _LOCAL), for its complete/abandon; bounded by max_keys
        self._owned: OrderedDict[str, Any] = OrderedDict()
        self._shared_begins = self._fallbacks = self._lost = self._unshareable = self._corrupt = 0

    @property
    def shared(self) -> bool:
        """True when the key window lives in Redis (``shared=`` was given)."""
        return self.link is not None

    def stats(self) -> SharedGuardStats:
        """Figures of the shared window (all 0 for a local guard)."""
        return SharedGuardStats(
            shared=self._shared_begins,
            fallbacks=self._fallbacks,
            lost=self._lost,
            unshareable=self._unshareable,
            corrupt=self._corrupt,
        )

    # -- the shared window
    def _redis_key(self, key: str) -> str:
        return self.link.key("idem", key)

    def _script(self, name: str, keys: list[str], args: list[Any]) -> tuple[bool, Any]:
        """``(True, result)``, or ``(False, None)`` when the link fell back (Redis down, slow, no budget)."""
        from ..transport.redis import SharedUnavailable

        try:
            return True, self.link.run_script(self._scripts[name], keys, args)
        except SharedUnavailable:
            return False, None

    def close(self) -> None:
        """Close the Redis link if the guard made it (from a URL or client); a link passed in stays open."""
        if self._owns_link:
            self.link.close()

    def _purge(self) -> None:
        now = self._clock.now()
        while self._entries:
            key, (expires, value) = next(iter(self._entries.items()))
            if expires > now or value is _RUNNING:
                break
            del self._entries[key]

    def begin(self, key: str) -> GuardDecision:
        """Decide about a request carrying ``key``; 'run' marks the key as running.

        Shared: one atomic step in Redis; when Redis is down or slow (the
        link's bounded timeout), the local window decides and the fallback is
        counted.
        """
        if self.link is not None:
            return self._shared_begin(key)
        return self._local_begin(key)

    def _local_begin(self, key: str) -> GuardDecision:
        self._purge()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock.now():
            if entry[1] is _RUNNING:
                return GuardDecision(action="in_progress")
            return GuardDecision(action="replay", result=entry[1])
        self._entries[key] = (float("inf"), _RUNNING)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
        return GuardDecision(action="run")

    def _own(self, key: str, owner: Any) -> None:
        self._owned[key] = owner
        self._owned.move_to_end(key)
        while len(self._owned) > self.max_keys:
            self._owned.popitem(last=False)

    def _shared_begin(self, key: str) -> GuardDecision:
        token = b"r" + secrets.token_hex(8).encode()
        ok, stored = self._script("begin", [self._redis_key(key)], [token, max(1, int(self.running_ttl * 1000))])
        if not ok:
            self._fallbacks += 1
            decision = self._local_begin(key)
            if decision.action == "run":
                self._own(key, _LOCAL)
            return decision
        self._shared_begins += 1
        if stored is None:
            self._own(key, token)
            self._local_begin(key)  # running here too: a duplicate while Redis is away still waits for us
            return GuardDecision(action="run")
        if isinstance(stored, bytes) and stored[:1] == b"d":
            try:
                return GuardDecision(action="replay", result=load_shared_result(stored[1:]))
            except ValueError as exc:
                self._corrupt += 1
                _rlog.warning(("corrupt", id(self)), "idempotency key %r holds %s: not replayed", key, exc)
                return GuardDecision(action="in_progress")  # never run twice; the key expires with its window
        if not (isinstance(stored, bytes) and stored[:1] == b"r"):
            self._corrupt += 1
            _rlog.warning(("corrupt", id(self)), "idempotency key %r holds %r: not ours", key, stored)
        return GuardDecision(action="in_progress")

    def complete(self, key: str, result: Any) -> None:
        """Remember ``result`` as the answer to ``key`` for the window.

        Shared: stored in Redis (while the key is still ours) and kept in the
        local window too, so this worker still replays it while Redis is down.
        """
        self._entries[key] = (self._clock.now() + self.window, result)
        self._entries.move_to_end(key)
        if self.link is None:
            return
        owner = self._owned.pop(key, None)
        if owner is None or owner is _LOCAL:
            return
        try:
            data = b"d" + dump_shared_result(result)
        except TypeError as exc:
            self._unshareable += 1
            _rlog.warning(("unshareable", id(self)), "idempotency result kept locally only: %s", exc)
            if not self._script("abandon", [self._redis_key(key)], [owner])[0]:
                self._lost += 1
            return
        ok, _ = self._script("complete", [self._redis_key(key)], [owner, data, max(1, int(self.window * 1000))])
        if not ok:
            self._lost += 1

    def abandon(self, key: str) -> None:
        """Forget a key whose request failed, so a retry runs again (shared: only while the key is ours)."""
        self._entries.pop(key, None)
        if self.link is None:
            return
        owner = self._owned.pop(key, None)
        if owner is None or owner is _LOCAL:
            return
        if not self._script("abandon", [self._redis_key(key)], [owner])[0]:
            self._lost += 1

    def call(self, key: Optional[str], fn: Callable[[], T]) -> T:
        """Run ``fn()`` once per key; duplicates get the first result.

        Raises :class:`IdempotencyInProgress` while the first request runs.
        ``key=None`` (the client sent no key) just runs ``fn()``.
        """
        if key is None:
            return fn()
        decision = self.begin(key)
        if decision.action == "replay":
            return decision.result
        if decision.action == "in_progress":
            raise IdempotencyInProgress(f"request with idempotency key {key!r} is still in progress")
        try:
            result = fn()
        except BaseException:
            self.abandon(key)
            raise
        self.complete(key, result)
        return result

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        where = f" shared={self._redis_key('*')}" if self.link is not None else ""
        return f"<IdempotencyGuard keys={len(self._entries)} window={self.window}s{where}>"
