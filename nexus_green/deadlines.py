"""Deadlines that flow down the call stack (layer L0).

An overall deadline set by an outer call (``@timeout``, ``@resilient``, or
this module's :func:`deadline` directly) is kept in a context variable, so
nested decorated calls, retries and ``Client.request`` underneath never plan
beyond it: each takes ``min(its own timeout, remaining())``.

The context variable holds an absolute monotonic time on the clock that set
it. This module only records and reads deadlines; enforcing them (interrupting
a blocked call) is the job of ``nexus_green.resilience.timeout``, and of
``Client.request`` for its own wait.

Example::

    >>> from nexus_green.clock import FakeClock
    >>> clock = FakeClock()
    >>> with deadline(5.0, clock=clock):
    ...     clock.advance(2)
    ...     with deadline(10.0, clock=clock):   # cannot extend the outer one
    ...         remaining(clock=clock)
    3.0
    >>> remaining(clock=clock) is None
    True
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any, Optional

from .clock import SYSTEM_CLOCK, Clock
from .errors import DeadlineExceeded, NexusTimeout, RequestTimeout

__all__ = [
    "DEFAULT",
    "budget",
    "timeout_error",
    "deadline",
    "remaining",
    "current_deadline",
    "effective_timeout",
    "check_deadline",
    "deadline_var",
]

_DEADLINE: contextvars.ContextVar[Optional[float]] = contextvars.ContextVar("nexus_green_deadline", default=None)


class _Default:
    """The type of :data:`DEFAULT` (one instance)."""

    __slots__ = ()
    _instance: Optional[_Default] = None

    def __new__(cls) -> _Default:
        if cls._instance is None:
            cls._instance = object.__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DEFAULT"

    def __reduce__(self) -> str:
        return "DEFAULT"

    def __bool__(self) -> bool:
        return False


#: "Use the configured default": the one marker for every ``timeout=`` of
#: Client, ConnectionPool and Connection. ``None`` always means "no limit of
#: my own" (the deadline in force, if any, still applies); a number is seconds.
DEFAULT: Any = _Default()


def budget(timeout: Optional[float], *, clock: Clock = SYSTEM_CLOCK) -> tuple[Optional[float], bool]:
    """One call's time budget: ``(until, by_deadline)``.

    ``until`` is the absolute time on ``clock`` when the call must be over:
    the smaller of ``now + timeout`` and the deadline in force (None when
    neither exists). ``by_deadline`` is True when the deadline in force is
    the limit, so running out raises :class:`DeadlineExceeded` rather than
    the call's own timeout. Every phase of the call (DNS, TCP, SOCKS5, TLS,
    pool checkout, waiting for a reconnect, writing, waiting for the answer)
    draws on this one budget; phase timeouts only shorten it.

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> clock = FakeClock(start=100.0)
        >>> budget(2.0, clock=clock)
        (102.0, False)
        >>> with deadline(1.0, clock=clock):
        ...     budget(2.0, clock=clock), budget(None, clock=clock)
        ((101.0, True), (101.0, True))
        >>> budget(None, clock=clock)
        (None, False)
    """
    d = _DEADLINE.get()
    if timeout is None:
        return (d, d is not None)
    until = clock.now() + timeout
    if d is not None and d <= until:
        return (d, True)
    return (until, False)


def timeout_error(
    by_deadline: bool, message: str, *, phase: str, error: type[NexusTimeout] = RequestTimeout
) -> NexusTimeout:
    """The error for a call that ran out of its budget in ``phase``.

    :class:`DeadlineExceeded` when the deadline in force was the limit, else
    ``error`` (RequestTimeout by default, ConnectTimeout for connect phases).

    Example::

        >>> e = timeout_error(True, "fid=1: no time left", phase="checkout")
        >>> type(e).__name__, e.phase
        ('DeadlineExceeded', 'checkout')
    """
    if by_deadline:
        return DeadlineExceeded(f"{message} (the overall deadline in force was the limit)", phase=phase)
    return error(message, phase=phase)


def current_deadline() -> Optional[float]:
    """The absolute monotonic deadline in force, or None."""
    return _DEADLINE.get()


def deadline_var() -> contextvars.ContextVar[Optional[float]]:
    """The context variable itself, for hot paths that get/set/reset it without a Python frame.

    Its value is the absolute deadline in force on the clock that set it, or
    None; keep the rule of :func:`deadline` (never later than the outer one).

    Example::

        >>> deadline_var().get() is current_deadline()
        True
    """
    return _DEADLINE


def remaining(*, clock: Clock = SYSTEM_CLOCK) -> Optional[float]:
    """Seconds left before the deadline in force (may be negative), or None."""
    d = _DEADLINE.get()
    return None if d is None else d - clock.now()


def effective_timeout(timeout: Optional[float], *, clock: Clock = SYSTEM_CLOCK) -> Optional[float]:
    """``min(timeout, remaining())`` with None meaning unbounded.

    Example::

        >>> effective_timeout(2.0), effective_timeout(None)
        (2.0, None)
    """
    d = _DEADLINE.get()
    if d is None:
        return timeout
    left = d - clock.now()
    return left if timeout is None or left < timeout else timeout


def check_deadline(what: str = "call", *, clock: Clock = SYSTEM_CLOCK) -> None:
    """Raise :class:`DeadlineExceeded` if the deadline in force has passed."""
    d = _DEADLINE.get()
    if d is not None and clock.now() >= d:
        raise DeadlineExceeded(f"{what}: overall deadline passed {clock.now() - d:.3f}s ago")


@contextlib.contextmanager
def deadline(seconds: Optional[float], *, clock: Clock = SYSTEM_CLOCK) -> Iterator[Optional[float]]:
    """Set a deadline ``seconds`` from now for the block (never later than an outer one).

    Yields the absolute deadline in force. ``seconds=None`` leaves the outer
    deadline unchanged.
    """
    outer = _DEADLINE.get()
    if seconds is None:
        yield outer
        return
    mine = clock.now() + seconds
    new = mine if outer is None or mine < outer else outer
    token = _DEADLINE.set(new)
    try:
        yield new
    finally:
        _DEADLINE.reset(token)
