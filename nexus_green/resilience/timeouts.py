"""Timeouts and deadlines (layer L4): levels, enforcement, adaptive limits.

* Levels with defaults: connect 10 s (:class:`~nexus_green.errors.ConnectTimeout`),
  request 30 s (:class:`~nexus_green.errors.RequestTimeout`), overall 60 s
  (:class:`~nexus_green.errors.DeadlineExceeded`).
* :func:`run_with_timeout` enforces a limit with a timer armed on the call's
  clock (:func:`nexus_green.timers.arm`: on the hub's one
  :class:`~nexus_green.timers.TimerScheduler` for the real clock, so there is
  one hub timer for all calls instead of a ``gevent.Timeout`` each; a
  :class:`~nexus_green.clock.FakeClock` drives it in tests). On expiry an
  :class:`~nexus_green.timers.Interrupt`, a ``gevent.Timeout`` subclass, is
  thrown into the call, which catches only its own Interrupt (a
  BaseException: an outer one, or anyone's ``gevent.Timeout``, passes
  through untouched). The limit is
  ``min(own timeout, remaining overall deadline)`` and the call runs with that
  deadline in force (:mod:`nexus_green.deadlines`), so nested calls and retries
  never outlive it. When the outer deadline is what ran out, the error is
  DeadlineExceeded. Either error has ``phase="call"``.
* :class:`AdaptiveTimeout`: ``P95(recent latencies) * 2 + buffer`` clamped to
  [5 s, 300 s], from any :class:`LatencySource`; :class:`LatencyWindow` is the
  small built-in one. Samples taken while the hub was blocked are dropped
  (pass ``hub_blocked=True`` or a predicate).

A blocking call can only be interrupted where it yields to the hub: in an app
that has not monkey-patched, plain stdlib socket I/O cannot be cut short.

Example::

    >>> import gevent
    >>> try:
    ...     run_with_timeout(lambda: gevent.sleep(1), 0.01)
    ... except RequestTimeout as e:
    ...     print(e)
    call timed out after 0.010s
"""

from __future__ import annotations

import functools
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, Protocol, TypeVar, overload, runtime_checkable

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import deadline_var
from ..errors import ConfigurationError, ConnectTimeout, DeadlineExceeded, NexusTimeout, RequestTimeout
from ..timers import Interrupt, arm

__all__ = [
    "LEVELS",
    "TimeoutConfig",
    "LatencySource",
    "LatencyWindow",
    "AdaptiveTimeout",
    "TimeoutPolicy",
    "run_with_timeout",
    "timed_call",
    "timeout",
    "timeout_from_config",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

#: level -> (default seconds, error raised)
LEVELS: dict[str, tuple[float, type[NexusTimeout]]] = {
    "connect": (10.0, ConnectTimeout),
    "request": (30.0, RequestTimeout),
    "overall": (60.0, DeadlineExceeded),
}


_NO_KWARGS: dict[str, Any] = {}
_monotonic = time.monotonic  # SYSTEM_CLOCK.now(), one frame less on the hot path
_DEADLINE = deadline_var()


def run_with_timeout(
    fn: Callable[..., T],
    seconds: Optional[float],
    *,
    clock: Clock = SYSTEM_CLOCK,
    error: type[NexusTimeout] = RequestTimeout,
    what: str = "call",
    args: tuple[Any, ...] = (),
    kwargs: Optional[dict[str, Any]] = None,
) -> T:
    """Run ``fn(*args, **kwargs)`` for at most ``min(seconds, remaining deadline)``; raise ``error`` on expiry.

    ``seconds=None`` means only the deadline in force (if any) limits it. The
    limit is a timer on ``clock`` (:func:`nexus_green.timers.arm`; on the real
    clock, two dict operations when the call finishes in time), and only our
    own :class:`~nexus_green.timers.Interrupt` is caught. The error raised has
    ``phase="call"``.

    Example::

        >>> from nexus_green.deadlines import deadline
        >>> with deadline(0.0):
        ...     run_with_timeout(lambda: 1, 5.0)
        Traceback (most recent call last):
        ...
        nexus_green.errors.DeadlineExceeded: call: overall deadline already passed
    """
    return timed_call(fn, seconds, clock, error, what, args, kwargs or _NO_KWARGS)


def timed_call(
    fn: Callable[..., T],
    seconds: Optional[float],
    clock: Clock,
    error: type[NexusTimeout],
    what: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    now: Optional[float] = None,
) -> T:
    """:func:`run_with_timeout` with every argument positional (for ``functools.partial`` on hot paths).

    ``now`` is ``clock.now()`` when the caller has just read it.

    Example::

        >>> timed_call(divmod, 1.0, SYSTEM_CLOCK, RequestTimeout, "call", (7, 2), {})
        (3, 1)
    """
    outer = _DEADLINE.get()
    if now is None:
        now = _monotonic() if clock is SYSTEM_CLOCK else clock.now()
    if outer is None:
        if seconds is None:
            return fn(*args, **kwargs)
        limit: float = seconds
        by_deadline = False
    else:
        limit = outer - now
        by_deadline = seconds is None or limit <= seconds
        if not by_deadline:
            limit = seconds  # type: ignore[assignment]
    if limit <= 0:
        if by_deadline:
            raise DeadlineExceeded(f"{what}: overall deadline already passed", phase="call")
        raise error(f"{what}: timeout {limit}s leaves no time", phase="call")
    mine = arm(clock, now + limit)
    # The limit flows down (nested calls see it); when the outer deadline is
    # the limit, it is already in force.
    token = None if by_deadline else _DEADLINE.set(now + limit)
    try:
        return fn(*args, **kwargs)
    except Interrupt as caught:
        if caught.timer is not mine:
            raise
        if by_deadline:
            raise DeadlineExceeded(f"{what}: overall deadline reached after {limit:.3f}s", phase="call") from None
        raise error(f"{what} timed out after {limit:.3f}s", phase="call") from None
    finally:
        mine.cancel()
        if token is not None:
            _DEADLINE.reset(token)


@runtime_checkable
class LatencySource(Protocol):
    """Where adaptive policies read latencies: a sample count and percentiles (seconds)."""

    def __len__(self) -> int: ...

    def percentile(self, q: float) -> Optional[float]: ...


class LatencyWindow:
    """The last ``size`` latency samples, with nearest-rank percentiles.

    Samples taken while the hub was blocked (``record(..., hub_blocked=True)``
    or ``hub_blocked()`` returning True) are not kept: a frozen hub inflates
    every latency measured across it. The sorted view is rebuilt at most every
    ``refresh`` seconds of the clock (0: on every read after a change).

    Example::

        >>> w = LatencyWindow(size=100, refresh=0)
        >>> for ms in range(1, 101):
        ...     _ = w.record(ms / 1000)
        >>> w.record(9.0, hub_blocked=True)
        False
        >>> len(w), w.percentile(0.95)
        (100, 0.095)
    """

    def __init__(
        self,
        *,
        size: int = 500,
        refresh: float = 1.0,
        clock: Clock = SYSTEM_CLOCK,
        hub_blocked: Optional[Callable[[], bool]] = None,
    ) -> None:
        if size < 1:
            raise ConfigurationError(f"latency window size must be >= 1, got {size}")
        self._samples: deque[float] = deque(maxlen=size)
        self._refresh = refresh
        self._clock = clock
        self._hub_blocked = hub_blocked
        self._sorted: list[float] = []
        self._sorted_at = -math.inf
        self._dirty = False
        self.excluded = 0

    def record(self, seconds: float, *, hub_blocked: bool = False) -> bool:
        """Add one sample; return False if it was excluded (hub blocked, or negative)."""
        if hub_blocked or seconds < 0 or (self._hub_blocked is not None and self._hub_blocked()):
            self.excluded += 1
            return False
        self._samples.append(seconds)
        self._dirty = True
        return True

    def __len__(self) -> int:
        return len(self._samples)

    def percentile(self, q: float) -> Optional[float]:
        """The nearest-rank ``q`` quantile (0 < q <= 1), or None with no samples."""
        if not 0 < q <= 1:
            raise ConfigurationError(f"percentile must be in (0, 1], got {q}")
        now = self._clock.now()
        if self._dirty and (not self._sorted or now - self._sorted_at >= self._refresh):
            self._sorted = sorted(self._samples)
            self._sorted_at = now
            self._dirty = False
        if not self._sorted:
            return None
        rank = max(1, math.ceil(q * len(self._sorted)))
        return self._sorted[rank - 1]

    def __repr__(self) -> str:
        return f"<LatencyWindow samples={len(self._samples)} excluded={self.excluded}>"


@dataclass(frozen=True, slots=True, kw_only=True)
class TimeoutConfig:
    """Timeout levels and the adaptive timeout's settings.

    ``request`` is the per-call limit used by ``@resilient``; ``overall`` is the
    deadline set around the whole resilient call (retries included);
    ``connect`` is for connect-level use (``@timeout(level="connect")``).
    With ``adaptive=True`` the request limit follows
    ``P95 * multiplier + buffer`` clamped to [minimum, maximum], and is
    ``request`` until ``min_samples`` latencies are known.

    Example::

        >>> c = TimeoutConfig()
        >>> c.connect, c.request, c.overall, c.minimum, c.maximum
        (10.0, 30.0, 60.0, 5.0, 300.0)
    """

    connect: float = 10.0
    request: float = 30.0
    overall: Optional[float] = 60.0
    adaptive: bool = False
    percentile: float = 0.95
    multiplier: float = 2.0
    buffer: float = 1.0
    minimum: float = 5.0
    maximum: float = 300.0
    min_samples: int = 20

    def __post_init__(self) -> None:
        for name in ("connect", "request"):
            if not getattr(self, name) > 0:
                raise ConfigurationError(f"{name} timeout must be > 0 s, got {getattr(self, name)}")
        if self.overall is not None and not self.overall > 0:
            raise ConfigurationError(f"overall timeout must be > 0 s or None, got {self.overall}")
        if not 0 < self.minimum <= self.maximum:
            raise ConfigurationError(
                f"adaptive bounds must satisfy 0 < minimum ({self.minimum}) <= maximum ({self.maximum})"
            )
        if not 0 < self.percentile <= 1:
            raise ConfigurationError(f"percentile must be in (0, 1], got {self.percentile}")


class AdaptiveTimeout:
    """``clamp(P95 * multiplier + buffer, minimum, maximum)`` from a latency source.

    Until the source holds ``min_samples`` samples, :meth:`current` returns ``default``.
    ``record()`` feeds the source when it is a :class:`LatencyWindow` (a
    monitoring histogram feeds itself).

    Example::

        >>> a = AdaptiveTimeout(LatencyWindow(refresh=0), min_samples=1)
        >>> a.current()
        30.0
        >>> _ = a.record(4.0)
        >>> a.current()          # 4 * 2 + 1
        9.0
        >>> _ = a.record(400.0); a.current()
        300.0
    """

    def __init__(
        self,
        source: Optional[LatencySource] = None,
        *,
        percentile: float = 0.95,
        multiplier: float = 2.0,
        buffer: float = 1.0,
        minimum: float = 5.0,
        maximum: float = 300.0,
        default: float = 30.0,
        min_samples: int = 20,
    ) -> None:
        if not 0 < minimum <= maximum:
            raise ConfigurationError(f"adaptive bounds must satisfy 0 < minimum ({minimum}) <= maximum ({maximum})")
        self.source: LatencySource = source if source is not None else LatencyWindow()
        self.percentile = percentile
        self.multiplier = multiplier
        self.buffer = buffer
        self.minimum = minimum
        self.maximum = maximum
        self.default = default
        self.min_samples = min_samples

    @classmethod
    def from_config(cls, config: TimeoutConfig, *, clock: Clock = SYSTEM_CLOCK) -> AdaptiveTimeout:
        """An adaptive timeout with its own :class:`LatencyWindow`, set up from a :class:`TimeoutConfig`."""
        return cls(
            LatencyWindow(clock=clock),
            percentile=config.percentile,
            multiplier=config.multiplier,
            buffer=config.buffer,
            minimum=config.minimum,
            maximum=config.maximum,
            default=config.request,
            min_samples=config.min_samples,
        )

    def current(self) -> float:
        """The timeout to use now, in seconds."""
        if len(self.source) < self.min_samples:
            return self.default
        p = self.source.percentile(self.percentile)
        if p is None:
            return self.default
        return min(self.maximum, max(self.minimum, p * self.multiplier + self.buffer))

    def record(self, seconds: float, *, hub_blocked: bool = False) -> bool:
        """Feed one latency to the source if it accepts samples; return whether it was kept."""
        rec = getattr(self.source, "record", None)
        if rec is None:
            return False
        return bool(rec(seconds, hub_blocked=hub_blocked))

    def __repr__(self) -> str:
        return f"<AdaptiveTimeout current={self.current():g}s samples={len(self.source)}>"


class TimeoutPolicy:
    """A timeout level with a fixed or adaptive limit; :meth:`run` enforces it.

    Example::

        >>> p = TimeoutPolicy(level="connect")
        >>> p.current(), p.error.__name__
        (10.0, 'ConnectTimeout')
        >>> p.run(lambda: "done")
        'done'
    """

    def __init__(
        self,
        seconds: Optional[float] = None,
        *,
        level: str = "request",
        adaptive: Optional[AdaptiveTimeout] = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        if level not in LEVELS:
            raise ConfigurationError(f"unknown timeout level {level!r}; expected one of {sorted(LEVELS)}")
        default, self.error = LEVELS[level]
        if seconds is not None and not seconds > 0:
            raise ConfigurationError(f"timeout must be > 0 s, got {seconds}")
        self.level = level
        self.seconds = default if seconds is None else float(seconds)
        self.adaptive = adaptive
        self._clock = clock
        self.what = f"{level} call"  # names the call in the timeout's message

    def current(self) -> float:
        """The limit a call started now gets."""
        return self.adaptive.current() if self.adaptive is not None else self.seconds

    def run(self, fn: Callable[..., T], *args: Any, seconds: Optional[float] = None) -> T:
        """Run ``fn(*args)`` within ``seconds`` (default :meth:`current`) and the deadline in force."""
        adaptive = self.adaptive
        if adaptive is None:
            return run_with_timeout(
                fn,
                self.seconds if seconds is None else seconds,
                clock=self._clock,
                error=self.error,
                what=self.what,
                args=args,
            )
        limit = adaptive.current() if seconds is None else seconds
        started = self._clock.now()
        try:
            result = run_with_timeout(fn, limit, clock=self._clock, error=self.error, what=self.what, args=args)
        except NexusTimeout:
            # A censored sample: the call took at least this long.
            adaptive.record(self._clock.now() - started)
            raise
        adaptive.record(self._clock.now() - started)
        return result

    def __repr__(self) -> str:
        return f"<TimeoutPolicy level={self.level} current={self.current():g}s>"


@overload
def timeout(seconds: F, /) -> F: ...


@overload
def timeout(
    seconds: Optional[float] = None,
    /,
    *,
    level: str = "request",
    adaptive: Optional[AdaptiveTimeout] = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Callable[[F], F]: ...


def timeout(
    seconds: Any = None,
    /,
    *,
    level: str = "request",
    adaptive: Optional[AdaptiveTimeout] = None,
    clock: Clock = SYSTEM_CLOCK,
) -> Any:
    """Decorator: run the function under a timeout level (and the deadline in force).

    ``@timeout`` alone applies the level's default (request: 30 s);
    ``@timeout(2.5)`` a limit of its own. The policy is ``wrapper.timeout_policy``.

    Example::

        >>> import gevent
        >>> @timeout(0.01)
        ... def slow():
        ...     gevent.sleep(1)
        >>> try: slow()
        ... except RequestTimeout: print("timed out")
        timed out
    """
    if callable(seconds):
        return timeout(level=level, adaptive=adaptive, clock=clock)(seconds)
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, (int, float))):
        raise TypeError(f"timeout() takes the limit in seconds, not {seconds!r}: write @timeout(2.5)")
    policy = TimeoutPolicy(seconds, level=level, adaptive=adaptive, clock=clock)

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if policy.adaptive is None:  # the common case, without the policy's layers
                return timed_call(func, policy.seconds, clock, policy.error, policy.what, args, kwargs)
            if kwargs:
                return policy.run(lambda: func(*args, **kwargs))
            return policy.run(func, *args)

        wrapper.timeout_policy = policy  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def timeout_from_config(config: TimeoutConfig, *, clock: Clock = SYSTEM_CLOCK) -> TimeoutPolicy:
    """The request-level policy described by a :class:`TimeoutConfig`.

    Example::

        >>> timeout_from_config(TimeoutConfig(request=2.0)).current()
        2.0
    """
    adaptive = AdaptiveTimeout.from_config(config, clock=clock) if config.adaptive else None
    return TimeoutPolicy(config.request, level="request", adaptive=adaptive, clock=clock)
