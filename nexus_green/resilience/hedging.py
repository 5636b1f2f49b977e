"""Hedged requests (layer L4): a second attempt after a delay, first success wins.

For idempotent calls only. :class:`Hedge` starts the call; if it has not
finished after ``delay`` seconds (fixed, or the current P95 of the latencies
it has seen once ``min_samples`` are known), it starts another attempt, up to
``max_hedges``, and returns the first success. The losers are killed. Each
hedge spends one retry from the request's
:class:`~nexus_green.resilience.retrying.RetryScope` and its
:class:`~nexus_green.resilience.budget.RetryBudget`, so hedging and retries
together stay inside the same budget. If every attempt sent has failed, the
last error is raised (a first attempt that fails before the delay is not
hedged: that is a retry's job).

Attempts run in greenlets started by :func:`nexus_green.greenlets.spawn`, so
they see the caller's deadline, retry scope and idempotency key. The delay is
slept on the injected clock, so tests drive it with a FakeClock.

Events: ``hedge.sent`` [attempt, delay]; ``hedge.won`` [attempt, hedged].

Example::

    >>> import gevent
    >>> calls = []
    >>> @hedge(delay=0.01)
    ... def lookup():
    ...     calls.append(1)
    ...     if len(calls) == 1:
    ...         gevent.sleep(5)        # the first attempt is stuck
    ...     return "fast answer"
    >>> lookup(), len(calls)
    ('fast answer', 2)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional, TypeVar, overload

import gevent
from gevent.queue import Empty, Queue

from ..clock import SYSTEM_CLOCK, Clock
from ..deadlines import remaining
from ..decorating import is_bare
from ..errors import ConfigurationError, DeadlineExceeded
from ..events import EventBus, default_bus
from ..greenlets import spawn
from .budget import RetryBudget, options_into
from .retrying import retry_scope
from .timeouts import LatencySource, LatencyWindow

__all__ = ["HedgeConfig", "Hedge", "hedge"]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

_FIRE = object()


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeConfig:
    """Hedging settings (``delay=None``: the current ``percentile`` of seen latencies).

    Example::

        >>> c = HedgeConfig()
        >>> c.delay, c.percentile, c.min_samples, c.max_hedges
        (None, 0.95, 20, 1)
    """

    delay: Optional[float] = None
    percentile: float = 0.95
    min_samples: int = 20
    max_hedges: int = 1

    def __post_init__(self) -> None:
        if self.delay is not None and self.delay < 0:
            raise ConfigurationError(f"hedge delay must be >= 0 s, got {self.delay}")
        if self.max_hedges < 1:
            raise ConfigurationError(f"max_hedges must be >= 1, got {self.max_hedges}")
        if not 0 < self.percentile <= 1:
            raise ConfigurationError(f"hedge percentile must be in (0, 1], got {self.percentile}")


class Hedge:
    """Runs idempotent calls with hedged attempts.

    Example::

        >>> h = Hedge(delay=None, min_samples=1)
        >>> h.hedge_delay() is None          # no latency known yet: no hedging
        True
        >>> h.run(lambda: 7, idempotent=True)
        7
    """

    def __init__(
        self,
        config: Optional[HedgeConfig] = None,
        *,
        latency: Optional[LatencySource] = None,
        budget: Optional[RetryBudget] = None,
        use_budget: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        bus: EventBus = default_bus,
        **options: Any,
    ) -> None:
        self.config: HedgeConfig = options_into(
            config or HedgeConfig(), options, "hedge", ("latency", "budget", "use_budget", "clock", "bus")
        )
        self.latency: LatencySource = latency if latency is not None else LatencyWindow(clock=clock)
        self.budget: Optional[RetryBudget] = (budget or RetryBudget(clock=clock)) if use_budget else None
        self._clock = clock
        self._bus = bus

    def hedge_delay(self) -> Optional[float]:
        """Seconds to wait before hedging, or None to not hedge (latency still unknown)."""
        if self.config.delay is not None:
            return self.config.delay
        if len(self.latency) < self.config.min_samples:
            return None
        return self.latency.percentile(self.config.percentile)

    def _record(self, seconds: float) -> None:
        rec = getattr(self.latency, "record", None)
        if rec is not None:
            rec(seconds)

    def run(self, fn: Callable[[], T], *, idempotent: bool) -> T:
        """Call ``fn()``, hedging it if ``idempotent`` and a delay is known."""
        delay = self.hedge_delay() if idempotent else None
        if delay is None:
            started = self._clock.now()
            result = fn()
            self._record(self._clock.now() - started)
            return result
        with retry_scope(self.budget, self.config.max_hedges) as scope:
            return self._hedged(fn, delay, scope)

    def _hedged(self, fn: Callable[[], T], delay: float, scope: Any) -> T:
        results: Queue = Queue()
        clock = self._clock

        def attempt(index: int) -> None:
            started = clock.now()
            try:
                value = fn()
            except Exception as exc:
                results.put((index, False, exc))
                return
            self._record(clock.now() - started)
            results.put((index, True, value))

        def fire() -> None:
            clock.sleep(delay)
            results.put(_FIRE)

        greenlets: list[gevent.Greenlet] = [spawn(attempt, 0, name="hedge-attempt")]
        greenlets.append(spawn(fire, name="hedge-timer"))
        sent, pending = 1, 1
        try:
            while True:
                left = remaining(clock=clock)
                try:
                    item = results.get(timeout=None if left is None else max(0.0, left))
                except Empty:
                    raise DeadlineExceeded(f"hedged call: overall deadline reached after {sent} attempt(s)") from None
                if item is _FIRE:
                    if sent <= self.config.max_hedges and not scope.take():
                        self._bus.emit("hedge.sent", attempt=sent, delay=delay)
                        greenlets.append(spawn(attempt, sent, name="hedge-attempt"))
                        sent += 1
                        pending += 1
                        if sent <= self.config.max_hedges:
                            greenlets.append(spawn(fire, name="hedge-timer"))
                    continue
                index, ok, value = item
                pending -= 1
                if ok:
                    self._bus.emit("hedge.won", attempt=index, hedged=sent > 1)
                    return value
                if pending == 0:
                    raise value
        finally:
            alive = [g for g in greenlets if not g.dead]
            if alive:
                gevent.killall(alive, block=True, timeout=1.0)

    def __repr__(self) -> str:
        return f"<Hedge delay={self.hedge_delay()} max_hedges={self.config.max_hedges}>"


@overload
def hedge(policy: F, /) -> F: ...


@overload
def hedge(policy: Optional[Hedge] = None, /, *, idempotent: Any = True, **options: Any) -> Callable[[F], F]: ...


def hedge(policy: Any = None, /, *, idempotent: Any = True, **options: Any) -> Any:
    """Decorator: hedge the function's calls (they must be idempotent; ``idempotent`` may be a predicate).

    ``@hedge`` alone hedges at the 95th percentile of the latencies it has
    seen (after 20 calls). The runner is ``wrapper.hedge``.

    Example::

        >>> @hedge(delay=0.5)
        ... def lookup(key):
        ...     return key.upper()
        >>> lookup("k"), lookup.hedge.config.delay
        ('K', 0.5)
    """
    if policy is not None and not isinstance(policy, Hedge):
        if is_bare(policy, options) and idempotent is True:
            return hedge()(policy)
        raise TypeError(f"hedge() takes a Hedge or keyword options, not {policy!r}: write @hedge(delay=0.05)")
    runner = policy if policy is not None else Hedge(**options)

    def decorate(func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            idem = idempotent(*args, **kwargs) if callable(idempotent) else bool(idempotent)
            return runner.run(lambda: func(*args, **kwargs), idempotent=idem)

        wrapper.hedge = runner  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
