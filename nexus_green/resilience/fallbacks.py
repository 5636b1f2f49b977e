"""Fallback (layer L4): degrade step by step instead of failing.

Levels: a cached value (from any object with ``get(key)``, or a callable
``cache(key)``; None or KeyError is a miss), a default value, a backup
callable (or, in the middleware, a backup endpoint), and finally fail fast
(the original error is raised).

**What a fallback covers.** Every failure and every rejection: by default
every ``Exception`` except :class:`~nexus_green.errors.UsageError` (and so
ConfigurationError, ClientClosed: mistakes to fix, not outages to ride out).
That includes CircuitOpen, BulkheadFull, RateLimited, PoolExhausted,
Overloaded, RemoteError and any foreign exception. ``on=`` narrows it: an
exception class, a tuple of them, or a predicate on the exception. A
``gevent.Timeout``, ``GreenletExit`` or ``KeyboardInterrupt`` (not
``Exception``) is never covered.

**Which level first.** The error's class picks the first level tried; the
levels after it are tried in order, then the ones before it, so whatever is
configured serves; a level that is not configured or misses passes on:

=================================================  ==========================
error                                              levels, in order
=================================================  ==========================
service unavailable: CircuitOpen, BulkheadFull,    backup, cache, default
Overloaded, anything with ``code == 503``
a timeout: NexusTimeout, TimeoutError              default, backup, cache
anything else covered                              cache, default, backup
=================================================  ==========================

:meth:`Fallback.plan` is the pure routing decision; :meth:`Fallback.run`
carries it out. Pass your own ``routes`` (pairs of an exception class or a
predicate, and a level name; ``"fail"`` raises) to change the table.

Events: ``fallback.used`` [fallback, level, error].

Example::

    >>> cache = {("user", 7): "cached profile"}
    >>> @fallback(cache=cache, key=lambda kind, uid: (kind, uid), default="anonymous")
    ... def profile(kind, uid):
    ...     raise ConnectionResetError("peer reset")
    >>> profile("user", 7), profile("user", 8)
    ('cached profile', 'anonymous')
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, Union, overload

from ..decorating import bare_refused, is_bare
from ..errors import BulkheadFull, CircuitOpen, ConfigurationError, NexusTimeout, Overloaded, UsageError
from ..events import EventBus, default_bus
from .budget import options_into

__all__ = [
    "CACHE",
    "DEFAULT",
    "BACKUP",
    "FAIL",
    "LEVELS",
    "MISSING",
    "DEFAULT_ROUTES",
    "Covered",
    "FallbackConfig",
    "Fallback",
    "fallback",
    "is_service_unavailable",
    "covers",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

CACHE, DEFAULT, BACKUP, FAIL = "cache", "default", "backup", "fail"
LEVELS: tuple[str, ...] = (CACHE, DEFAULT, BACKUP, FAIL)


class _Missing:
    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


def is_service_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "the service is unavailable right now".

    Example::

        >>> from nexus_green.errors import RemoteError
        >>> is_service_unavailable(RemoteError(code=503)), is_service_unavailable(RemoteError(code=500))
        (True, False)
    """
    return isinstance(exc, (CircuitOpen, BulkheadFull, Overloaded)) or getattr(exc, "code", None) == 503


Route = tuple[Union[type, Callable[[BaseException], bool]], str]

DEFAULT_ROUTES: tuple[Route, ...] = (
    (is_service_unavailable, BACKUP),
    (NexusTimeout, DEFAULT),
    (TimeoutError, DEFAULT),
)

#: What ``on=`` accepts: an exception class, a tuple of them, or a predicate (None: the default coverage).
Covered = Union[type, tuple[type, ...], Callable[[BaseException], bool], None]


def covers(on: Covered, exc: BaseException) -> bool:
    """Whether a fallback with ``on=on`` covers ``exc``.

    None (the default) covers every ``Exception`` except usage and
    configuration errors.

    Example::

        >>> from nexus_green.errors import CircuitOpen, ConfigurationError, RateLimited
        >>> covers(None, CircuitOpen()), covers(None, RateLimited()), covers(None, ValueError())
        (True, True, True)
        >>> covers(None, ConfigurationError()), covers(None, KeyboardInterrupt())
        (False, False)
        >>> covers((TimeoutError,), CircuitOpen()), covers(lambda e: "503" in str(e), OSError("HTTP 503"))
        (False, True)
    """
    if not isinstance(exc, Exception):
        return False
    if on is None:
        return not isinstance(exc, UsageError)
    if isinstance(on, (type, tuple)):
        return isinstance(exc, on)
    return bool(on(exc))


def _check_on(on: Covered) -> None:
    if on is None or callable(on) and not isinstance(on, type):
        return
    classes = on if isinstance(on, tuple) else (on,)
    for cls in classes:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise ConfigurationError(
                f"fallback on= takes an exception class, a tuple of them or a predicate, got {on!r}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackConfig:
    """Fallback settings.

    ``key`` turns the call's arguments into a cache key (default: the
    positional arguments, plus sorted keyword items when there are any);
    ``remember=True`` stores successful results in the cache (``cache[key] = value``).
    ``backup`` is a callable taking the call's arguments (or, in the
    middleware, the Request), or an endpoint name for the middleware.
    ``on`` narrows which errors the fallback covers (see :func:`covers`).

    Example::

        >>> FallbackConfig(default=0).default
        0
    """

    cache: Any = None
    key: Optional[Callable[..., Hashable]] = None
    default: Any = MISSING
    backup: Union[Callable[..., Any], str, None] = None
    routes: Sequence[Route] = DEFAULT_ROUTES
    remember: bool = False
    on: Covered = None

    def __post_init__(self) -> None:
        _check_on(self.on)
        for _, level in self.routes:
            if level not in LEVELS:
                raise ConfigurationError(f"unknown fallback level {level!r}; expected one of {LEVELS}")
        if self.cache is not None and not (hasattr(self.cache, "get") or callable(self.cache)):
            raise ConfigurationError(f"fallback cache {self.cache!r} has no get(key) and is not callable")


class Fallback:
    """Routes a covered failure to the first fallback level for its error class, then to the others.

    Example::

        >>> from nexus_green.errors import ConfigurationError
        >>> fb = Fallback(default="d")
        >>> fb.plan(TimeoutError()), fb.plan(ValueError()), fb.plan(ConfigurationError())
        (('default', 'backup', 'cache'), ('cache', 'default', 'backup'), ())
    """

    def __init__(self, config: Optional[FallbackConfig] = None, *, bus: EventBus = default_bus, **options: Any) -> None:
        self.config: FallbackConfig = options_into(config or FallbackConfig(), options, "fallback", ("bus",))
        self._bus = bus
        self.name = "fallback"

    def plan(self, exc: BaseException) -> tuple[str, ...]:
        """The levels to try, in order, for a call that failed with ``exc`` (empty: raise).

        Nothing for an error the fallback does not cover (``on``); else the
        first matching route's level, the levels after it, then the ones
        before it (a route to ``"fail"`` raises).
        """
        if not covers(self.config.on, exc):
            return ()
        first = CACHE
        for match, level in self.config.routes:
            hit = isinstance(exc, match) if isinstance(match, type) else match(exc)
            if hit:
                first = level
                break
        if first == FAIL:
            return ()
        at = LEVELS.index(first)
        return LEVELS[at:-1] + LEVELS[:at]

    def lookup(self, key: Hashable) -> Any:
        """The cached value for ``key``, or MISSING."""
        cache = self.config.cache
        if cache is None:
            return MISSING
        try:
            value = cache.get(key) if hasattr(cache, "get") else cache(key)
        except (KeyError, TypeError):  # a miss, or an unhashable key
            return MISSING
        return MISSING if value is None else value

    def _remember(self, key: Hashable, value: Any) -> None:
        cache = self.config.cache
        if self.config.remember and cache is not None and hasattr(cache, "__setitem__"):
            cache[key] = value

    def run(
        self,
        fn: Callable[[], T],
        *,
        key: Hashable = None,
        backup: Optional[Callable[[], T]] = None,
        adapt: Optional[Callable[[str, Any], T]] = None,
    ) -> T:
        """Call ``fn()``; on failure walk the planned levels; raise the original error if none serves.

        ``backup`` is the zero-argument form of the backup level;
        ``adapt(level, value)`` may convert a fallback value (the middleware
        turns it into a Response).
        """
        try:
            result = fn()
        except Exception as exc:
            for level in self.plan(exc):
                if level == CACHE:
                    value = self.lookup(key)
                elif level == DEFAULT:
                    value = self.config.default
                else:
                    if backup is None:
                        continue
                    self._bus.emit("fallback.used", fallback=self.name, level=level, error=exc)
                    value = backup()
                    return adapt(level, value) if adapt is not None else value
                if value is not MISSING:
                    self._bus.emit("fallback.used", fallback=self.name, level=level, error=exc)
                    return adapt(level, value) if adapt is not None else value
            raise
        self._remember(key, result)
        return result

    def __repr__(self) -> str:
        c = self.config
        return (
            f"<Fallback cache={c.cache is not None} default={c.default is not MISSING} backup={c.backup is not None}>"
        )


def default_key(*args: Any, **kwargs: Any) -> Hashable:
    """The default cache key: the positional arguments, plus sorted keyword items if any.

    Example::

        >>> default_key(1, 2), default_key(1, b=2)
        ((1, 2), ((1,), (('b', 2),)))
    """
    if kwargs:
        return (args, tuple(sorted(kwargs.items())))
    return args


@overload
def fallback(policy: F, /) -> F: ...


@overload
def fallback(policy: Optional[Fallback] = None, /, **options: Any) -> Callable[[F], F]: ...


def fallback(policy: Any = None, /, **options: Any) -> Any:
    """Decorator: apply a :class:`Fallback` (given, or built from ``options``) to a function.

    The backup callable, when given, is called with the same arguments.
    Something to fall back to is required: ``@fallback`` alone, or with none
    of ``default=``, ``cache=`` or ``backup=``, is a TypeError at decoration.

    Example::

        >>> @fallback(backup=lambda x: f"backup({x})")
        ... def primary(x):
        ...     from nexus_green.errors import RemoteError
        ...     raise RemoteError("down", code=503)
        >>> primary(1)
        'backup(1)'
    """
    if policy is not None and not isinstance(policy, Fallback):
        if is_bare(policy, options):
            raise bare_refused("fallback", "@fallback(default=...), @fallback(cache=...) or @fallback(backup=...)")
        raise TypeError(f"fallback() takes a Fallback or keyword options, not {policy!r}: write @fallback(default=...)")
    fb = policy if policy is not None else Fallback(**options)
    c = fb.config
    if c.cache is None and c.default is MISSING and c.backup is None:
        raise TypeError("@fallback needs something to fall back to: pass default=, cache= or backup=")
    if isinstance(c.backup, str):
        raise ConfigurationError("a backup endpoint name only works in FallbackMiddleware; give a callable")

    def decorate(func: F) -> F:
        keyfn = fb.config.key or default_key
        backup = fb.config.backup

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return fb.run(
                lambda: func(*args, **kwargs),
                key=keyfn(*args, **kwargs),
                backup=(lambda: backup(*args, **kwargs)) if callable(backup) else None,
            )

        wrapper.fallback = fb  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
