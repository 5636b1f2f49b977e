"""Reconnect strategies: how long to wait before each reconnect attempt (layer L3).

A strategy is a pure policy: ``next_delay(attempt)`` returns the seconds to
wait before attempt number ``attempt`` (1 for the first reconnect), or None to
give up; ``reset()`` forgets state after a successful connect. It never sleeps
and never reads the time: the connection sleeps on its injected Clock. Jitter
comes from an injected ``random.Random`` so tests are exact.

* :class:`ExponentialBackoff` -- ``base * 2**(attempt-1)`` capped at ``cap``,
  with ``jitter="full"`` (uniform in [0, that]), ``"decorrelated"``
  (``min(cap, uniform(base, previous * 3))``, from the AWS architecture blog
  "Exponential Backoff And Jitter") or ``"none"``.
* :class:`FixedInterval` -- the same delay every time.
* :class:`CallableStrategy` -- any function ``attempt -> delay | None``.

Example::

    >>> import random
    >>> b = ExponentialBackoff(base=0.5, cap=4.0, jitter="none", max_attempts=5)
    >>> [b.next_delay(n) for n in range(1, 7)]
    [0.5, 1.0, 2.0, 4.0, 4.0, None]
    >>> full = ExponentialBackoff(rng=random.Random(7))
    >>> 0 <= full.next_delay(3) <= 2.0
    True
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Optional, Protocol, runtime_checkable

from ..errors import ConfigurationError

__all__ = ["ReconnectStrategy", "ExponentialBackoff", "FixedInterval", "CallableStrategy", "JITTER_MODES"]

JITTER_MODES = ("full", "decorrelated", "none")
_MAX_EXPONENT = 1023  # 2.0 ** 1024 overflows a float


_SHARED_RNG = random.Random()


@runtime_checkable
class ReconnectStrategy(Protocol):
    """What the connection needs from a reconnect strategy.

    Example::

        >>> isinstance(FixedInterval(1.0), ReconnectStrategy)
        True
    """

    def next_delay(self, attempt: int) -> Optional[float]: ...

    def reset(self) -> None: ...


def _check_attempt(attempt: int) -> None:
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ConfigurationError(f"reconnect attempt numbers start at 1, not {attempt!r}")


def _check_seconds(name: str, value: float, *, allow_zero: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        bound = "a non-negative" if allow_zero else "a positive"
        raise ConfigurationError(f"{name} must be {bound} finite number of seconds, not {value!r}")
    return float(value)


def _check_max_attempts(max_attempts: Optional[int]) -> Optional[int]:
    if max_attempts is None:
        return None
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 0:
        raise ConfigurationError(f"max_attempts must be None or an integer >= 0, not {max_attempts!r}")
    return max_attempts


class ExponentialBackoff:
    """Exponential backoff with jitter: the default reconnect strategy.

    Defaults: ``base=0.5`` s, ``cap=30.0`` s, ``max_attempts=None`` (never
    give up), ``jitter="full"``, ``rng`` (default: one ``random.Random`` shared by every backoff). ``max_attempts=0``
    means "never reconnect".

    * ``"none"``: ``min(cap, base * 2**(attempt-1))``
    * ``"full"``: ``uniform(0, min(cap, base * 2**(attempt-1)))``
    * ``"decorrelated"``: ``min(cap, uniform(base, 3 * previous))``, where
      ``previous`` starts at ``base`` and :meth:`reset` sets it back.

    Example (exact with a seeded random source)::

        >>> import random
        >>> b = ExponentialBackoff(base=1.0, cap=10.0, jitter="decorrelated", rng=random.Random(1))
        >>> [round(b.next_delay(n), 3) for n in (1, 2, 3)]
        [1.269, 3.378, 7.976]
        >>> b.reset(); round(b.next_delay(1), 3)
        1.51
    """

    __slots__ = ("base", "cap", "max_attempts", "jitter", "rng", "_previous")

    def __init__(
        self,
        base: float = 0.5,
        cap: float = 30.0,
        max_attempts: Optional[int] = None,
        jitter: str = "full",
        *,
        rng: Optional[random.Random] = None,
    ) -> None:
        self.base = _check_seconds("backoff base", base, allow_zero=False)
        self.cap = _check_seconds("backoff cap", cap, allow_zero=False)
        if self.cap < self.base:
            raise ConfigurationError(f"backoff cap ({cap}) must not be below its base ({base})")
        self.max_attempts = _check_max_attempts(max_attempts)
        if jitter not in JITTER_MODES:
            raise ConfigurationError(f"backoff jitter must be one of {', '.join(JITTER_MODES)}; not {jitter!r}")
        self.jitter = jitter
        self.rng = rng if rng is not None else _SHARED_RNG  # a Random is 2.5 KB: one serves every backoff
        self._previous = self.base

    def next_delay(self, attempt: int) -> Optional[float]:
        """Seconds to wait before reconnect attempt ``attempt`` (1-based), or None to give up.

        Example::

            >>> ExponentialBackoff(jitter="none", max_attempts=1).next_delay(2) is None
            True
        """
        _check_attempt(attempt)
        if self.max_attempts is not None and attempt > self.max_attempts:
            return None
        if self.jitter == "decorrelated":
            delay = min(self.cap, self.rng.uniform(self.base, self._previous * 3))
            self._previous = delay
            return delay
        ceiling = min(self.cap, self.base * 2.0 ** min(attempt - 1, _MAX_EXPONENT))
        if self.jitter == "full":
            return self.rng.uniform(0.0, ceiling)
        return ceiling

    def reset(self) -> None:
        """Forget the previous delay (decorrelated jitter starts again from ``base``).

        Example::

            >>> ExponentialBackoff().reset()
        """
        self._previous = self.base

    def __repr__(self) -> str:
        return (
            f"ExponentialBackoff(base={self.base}, cap={self.cap}, max_attempts={self.max_attempts}, "
            f"jitter={self.jitter!r})"
        )


class FixedInterval:
    """The same ``interval`` before every attempt; None after ``max_attempts`` (None: never give up).

    Example::

        >>> f = FixedInterval(2.0, max_attempts=2)
        >>> [f.next_delay(n) for n in (1, 2, 3)]
        [2.0, 2.0, None]
    """

    __slots__ = ("interval", "max_attempts")

    def __init__(self, interval: float, max_attempts: Optional[int] = None) -> None:
        self.interval = _check_seconds("reconnect interval", interval, allow_zero=True)
        self.max_attempts = _check_max_attempts(max_attempts)

    def next_delay(self, attempt: int) -> Optional[float]:
        """``interval``, or None once ``attempt`` exceeds ``max_attempts``.

        Example::

            >>> FixedInterval(0.0).next_delay(10**6)
            0.0
        """
        _check_attempt(attempt)
        if self.max_attempts is not None and attempt > self.max_attempts:
            return None
        return self.interval

    def reset(self) -> None:
        """Nothing to forget: a fixed interval has no state.

        Example::

            >>> FixedInterval(1.0).reset()
        """

    def __repr__(self) -> str:
        return f"FixedInterval({self.interval}, max_attempts={self.max_attempts})"


class CallableStrategy:
    """Any function ``fn(attempt) -> delay | None`` as a strategy.

    The returned delay must be a finite number >= 0 (or None to give up);
    anything else raises :class:`~nexus_green.errors.ConfigurationError` naming
    the function. ``on_reset`` (optional) is called by :meth:`reset`.

    Example::

        >>> s = CallableStrategy(lambda n: None if n > 3 else n * 0.1)
        >>> [s.next_delay(n) for n in (1, 4)]
        [0.1, None]
    """

    __slots__ = ("fn", "on_reset")

    def __init__(self, fn: Callable[[int], Optional[float]], *, on_reset: Optional[Callable[[], None]] = None) -> None:
        if not callable(fn):
            raise ConfigurationError(f"CallableStrategy needs a callable, not {fn!r}")
        self.fn = fn
        self.on_reset = on_reset

    def next_delay(self, attempt: int) -> Optional[float]:
        """Call ``fn(attempt)`` and check its answer.

        Example::

            >>> CallableStrategy(lambda n: -1).next_delay(1)
            Traceback (most recent call last):
            ...
            nexus_green.errors.ConfigurationError: reconnect strategy <lambda> returned -1 for attempt 1; expected None or seconds >= 0
        """
        _check_attempt(attempt)
        delay = self.fn(attempt)
        if delay is None:
            return None
        ok = isinstance(delay, (int, float)) and not isinstance(delay, bool) and math.isfinite(delay)
        if not ok or delay < 0:
            name = getattr(self.fn, "__name__", repr(self.fn))
            raise ConfigurationError(
                f"reconnect strategy {name} returned {delay!r} for attempt {attempt}; expected None or seconds >= 0"
            )
        return float(delay)

    def reset(self) -> None:
        """Call ``on_reset`` if one was given.

        Example::

            >>> calls = []
            >>> CallableStrategy(lambda n: 0, on_reset=lambda: calls.append(1)).reset(); calls
            [1]
        """
        if self.on_reset is not None:
            self.on_reset()

    def __repr__(self) -> str:
        return f"CallableStrategy({getattr(self.fn, '__name__', repr(self.fn))})"
