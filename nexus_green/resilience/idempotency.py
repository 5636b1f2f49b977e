"""Idempotency keys (layer L4): one key per logical request, and the server-side guard.

Client side: :func:`idempotency_key` establishes the key of the logical
request in a context variable (the outermost layer makes it; nested layers,
retries, hedges and failovers reuse it), :func:`current_idempotency_key`
reads it from wrapped code, and the middlewares send it in the frame header
block as ``idempotency-key`` (:data:`HEADER`) on every attempt.

Server side: :class:`IdempotencyGuard` is a pure class that remembers keys for
a window of an injected clock and returns the first result for duplicates.

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

import contextvars
import functools
import itertools
import os
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, Union

from ..clock import SYSTEM_CLOCK, Clock
from ..errors import ConfigurationError, IdempotencyInProgress

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
]

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


class IdempotencyGuard:
    """Server-side duplicate suppression: the first result of a key is returned for its duplicates.

    Keys are remembered for ``window`` seconds after their request completed
    (at most ``max_keys``, oldest evicted first). A request that failed is
    forgotten (:meth:`abandon`) so its retry runs again.

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
    """

    def __init__(self, *, window: float = 300.0, max_keys: int = 100_000, clock: Clock = SYSTEM_CLOCK) -> None:
        if not window > 0:
            raise ConfigurationError(f"idempotency window must be > 0 s, got {window}")
        if max_keys < 1:
            raise ConfigurationError(f"max_keys must be >= 1, got {max_keys}")
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        # key -> (expires_at, result or _RUNNING); ordered by expiry
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def _purge(self) -> None:
        now = self._clock.now()
        while self._entries:
            key, (expires, value) = next(iter(self._entries.items()))
            if expires > now or value is _RUNNING:
                break
            del self._entries[key]

    def begin(self, key: str) -> GuardDecision:
        """Decide about a request carrying ``key``; 'run' marks the key as running."""
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

    def complete(self, key: str, result: Any) -> None:
        """Remember ``result`` as the answer to ``key`` for the window."""
        self._entries[key] = (self._clock.now() + self.window, result)
        self._entries.move_to_end(key)

    def abandon(self, key: str) -> None:
        """Forget a key whose request failed, so a retry runs again."""
        self._entries.pop(key, None)

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
        return f"<IdempotencyGuard keys={len(self._entries)} window={self.window}s>"
