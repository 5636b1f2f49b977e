"""Bulkheads (layer L4): named concurrency limits with a bounded wait queue.

A :class:`Bulkhead` lets at most ``max_concurrent`` calls run at once (a
``gevent.lock.BoundedSemaphore``); up to ``max_queue`` more wait at most
``wait_timeout`` seconds (and never past the overall deadline) for a slot;
anything beyond that fails at once with
:class:`~nexus_green.errors.BulkheadFull`. One slow dependency behind its own
bulkhead then cannot take every greenlet of the app with it.

:meth:`Bulkhead.decide` is the pure admission decision ('run', 'wait',
'reject'); :meth:`Bulkhead.run` carries it out. :func:`bulkhead` decorates a
callable with the bulkhead of a given name (one per name per process).

Events: ``bulkhead.rejected`` [bulkhead, reason, active, waiting]; reason is
'queue_full' or 'wait_timeout'.

Example::

    >>> bh = Bulkhead("db", max_concurrent=2, max_queue=0)
    >>> bh.run(lambda: "ran"), bh.active
    ('ran', 0)
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, overload

import gevent.lock

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import effective_timeout
from ..decorating import check_options, config_fields, is_bare
from ..errors import BulkheadFull, ConfigurationError
from ..events import EventBus, default_bus
from .budget import options_into

__all__ = ["BulkheadConfig", "Bulkhead", "bulkhead", "get_bulkhead"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True, kw_only=True)
class BulkheadConfig:
    """Bulkhead settings (``wait_timeout=None`` waits only as long as the deadline allows).

    Example::

        >>> c = BulkheadConfig()
        >>> c.max_concurrent, c.max_queue, c.wait_timeout
        (10, 10, 1.0)
    """

    name: str = "default"
    max_concurrent: int = 10
    max_queue: int = 10
    wait_timeout: Optional[float] = 1.0

    def __post_init__(self) -> None:
        if self.max_concurrent < 1:
            raise ConfigurationError(f"bulkhead max_concurrent must be >= 1, got {self.max_concurrent}")
        if self.max_queue < 0:
            raise ConfigurationError(f"bulkhead max_queue must be >= 0, got {self.max_queue}")
        if self.wait_timeout is not None and self.wait_timeout < 0:
            raise ConfigurationError(f"bulkhead wait_timeout must be >= 0 s, got {self.wait_timeout}")


class Bulkhead:
    """A named concurrency limit with a bounded wait queue.

    Example::

        >>> bh = Bulkhead("x", max_concurrent=1, max_queue=1)
        >>> bh.decide()
        'run'
    """

    def __init__(
        self,
        name: Optional[str] = None,
        config: Optional[BulkheadConfig] = None,
        *,
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus = default_bus,
        **options: Any,
    ) -> None:
        if name is not None:
            options["name"] = name
        self.config: BulkheadConfig = options_into(config or BulkheadConfig(), options, "bulkhead", ("clock", "bus"))
        self.name = self.config.name
        self._sem = gevent.lock.BoundedSemaphore(self.config.max_concurrent)
        self._clock = clock
        self._bus = bus
        self.waiting = 0
        self.rejected = 0

    @property
    def active(self) -> int:
        """Calls running now."""
        return self.config.max_concurrent - self._sem.counter

    def decide(self) -> str:
        """'run' (a slot is free and nobody queues ahead), 'wait' (room in the queue) or 'reject'."""
        if self._sem.counter > 0 and self.waiting == 0:
            return "run"
        if self.waiting < self.config.max_queue:
            return "wait"
        return "reject"

    def _reject(self, reason: str, message: str) -> BulkheadFull:
        self.rejected += 1
        self._bus.emit("bulkhead.rejected", bulkhead=self.name, reason=reason, active=self.active, waiting=self.waiting)
        return BulkheadFull(f"bulkhead {self.name!r}: {message}")

    def acquire(self) -> None:
        """Take a slot, waiting in the queue if allowed; raise BulkheadFull otherwise."""
        decision = self.decide()
        if decision == "run" and self._sem.acquire(blocking=False):
            return
        if decision == "reject":
            raise self._reject("queue_full", f"{self.active} running and {self.waiting} waiting")
        wait = effective_timeout(self.config.wait_timeout, clock=self._clock)
        self.waiting += 1
        try:
            ok = self._sem.acquire(timeout=max(0.0, wait)) if wait is not None else self._sem.acquire()
        finally:
            self.waiting -= 1
        if not ok:
            raise self._reject("wait_timeout", f"no slot within {wait if wait is not None else 0:.3f}s")

    def release(self) -> None:
        """Give a slot back."""
        self._sem.release()

    def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn()`` in a slot."""
        self.acquire()
        try:
            return fn()
        finally:
            self.release()

    def __call__(self, func: F) -> F:
        """Use the bulkhead as a decorator."""

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.run(lambda: func(*args, **kwargs))

        wrapper.bulkhead = self  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        return (
            f"<Bulkhead {self.name!r} active={self.active}/{self.config.max_concurrent} "
            f"waiting={self.waiting}/{self.config.max_queue} rejected={self.rejected}>"
        )


_REGISTRY: dict[str, Bulkhead] = {}
_REGISTRY_LOCK = threading.Lock()


def get_bulkhead(name: str, **options: Any) -> Bulkhead:
    """The process-wide bulkhead called ``name``, created with ``options`` on first use.

    Asking again with different options is a ConfigurationError (two call
    sites would otherwise silently disagree about the limit).

    Example::

        >>> get_bulkhead("doc-example", max_concurrent=3) is get_bulkhead("doc-example")
        True
    """
    with _REGISTRY_LOCK:
        found = _REGISTRY.get(name)
        if found is None:
            found = _REGISTRY[name] = Bulkhead(name, **options)
            return found
    wanted = options_into(found.config, {k: v for k, v in options.items() if k not in ("clock", "bus")}, "bulkhead")
    if wanted != found.config:
        raise ConfigurationError(f"bulkhead {name!r} already exists with {found.config}, not {wanted}")
    return found


@overload
def bulkhead(name: F, /) -> F: ...


@overload
def bulkhead(name: str = "default", /, **options: Any) -> Bulkhead: ...


def bulkhead(name: Any = "default", /, **options: Any) -> Any:
    """Decorator: run the function inside the named bulkhead (see :func:`get_bulkhead`).

    ``@bulkhead`` alone gives the function a bulkhead of its own, named after
    it, with the defaults (10 concurrent, 10 waiting); ``@bulkhead("name", ...)``
    shares the named one. The bulkhead is ``wrapper.bulkhead``.

    Example::

        >>> @bulkhead("doc-reports", max_concurrent=2)
        ... def report():
        ...     return "ok"
        >>> report(), report.bulkhead.name
        ('ok', 'doc-reports')
    """
    if is_bare(name, options):
        qualname = getattr(name, "__qualname__", "bulkhead")
        return get_bulkhead(f"{getattr(name, '__module__', '')}.{qualname}")(name)
    if not isinstance(name, str):
        raise TypeError(f'bulkhead() takes a name, not {name!r}: write @bulkhead or @bulkhead("db", max_concurrent=10)')
    check_options("bulkhead", options, (*config_fields(BulkheadConfig), "clock", "bus"))
    return get_bulkhead(name, **options)
