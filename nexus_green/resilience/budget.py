"""The retry budget (layer L4): retries may add only a bounded share of load.

Modelled on Finagle's ``RetryBudget``: over a sliding window (default 60 s,
per-second buckets) the retries spent may not exceed ``ratio`` (default 10%)
of the first attempts seen, plus a small reserve of ``min_per_second`` retries
per second of window so that a quiet client can still retry at all. Only the
first attempt of a logical request counts as a request; retries and hedges
spend from the budget.

A budget is a pure object on an injected clock: ``record_request()``,
``can_retry()`` and ``try_spend()`` decide, and the retry and hedge runners act
on the answer.

Example::

    >>> from nexus_green.clock import FakeClock
    >>> b = RetryBudget(window=60.0, ratio=0.1, min_per_second=0.0, clock=FakeClock())
    >>> for _ in range(20):
    ...     b.record_request()
    >>> [b.try_spend() for _ in range(3)]     # 10% of 20 requests = 2 retries
    [True, True, False]
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields, replace
from typing import Any, Optional

from ..clock import SYSTEM_CLOCK, Clock
from ..decorating import check_options
from ..errors import ConfigurationError
from .window import BucketedCounts

__all__ = ["BudgetConfig", "BudgetFigures", "RetryBudget", "options_into"]

_REQUESTS, _RETRIES = 0, 1


def options_into(config: Any, options: dict[str, Any], what: str, extra: Iterable[str] = ()) -> Any:
    """``dataclasses.replace(config, **options)``; unknown options are an :class:`~nexus_green.decorating.UnknownOption`.

    The error lists the valid names (the config's fields and ``extra``, the
    keywords the caller takes besides them) and points names from other
    libraries to ours.

    Example::

        >>> options_into(BudgetConfig(), {"ratio": 0.2}, "retry budget").ratio
        0.2
        >>> options_into(BudgetConfig(), {"percent": 1}, "retry budget")
        Traceback (most recent call last):
        ...
        nexus_green.decorating.UnknownOption: unknown retry budget option(s): percent; valid options: bucket_width, min_per_second, ratio, window
    """
    if not options:
        return config
    check_options(what, options, (*(f.name for f in fields(config)), *extra))
    return replace(config, **options)


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetConfig:
    """Retry budget settings.

    Example::

        >>> BudgetConfig().window, BudgetConfig().ratio, BudgetConfig().min_per_second
        (60.0, 0.1, 1.0)
    """

    window: float = 60.0
    ratio: float = 0.1
    min_per_second: float = 1.0
    bucket_width: float = 1.0

    def __post_init__(self) -> None:
        if not self.window > 0:
            raise ConfigurationError(f"retry budget window must be > 0 s, got {self.window}")
        if self.ratio < 0:
            raise ConfigurationError(f"retry budget ratio must be >= 0, got {self.ratio}")
        if self.min_per_second < 0:
            raise ConfigurationError(f"retry budget min_per_second must be >= 0, got {self.min_per_second}")


@dataclass(frozen=True, slots=True, kw_only=True)
class BudgetFigures:
    """What the budget saw in its window: requests, retries spent, retries allowed."""

    requests: int
    retries: int
    allowed: float


class RetryBudget:
    """Retries allowed = ``min_per_second * window + ratio * requests`` in the window.

    Example::

        >>> from nexus_green.clock import FakeClock
        >>> b = RetryBudget(min_per_second=0.05, ratio=0.0, clock=FakeClock())
        >>> [b.try_spend() for _ in range(4)]    # reserve: 0.05/s * 60 s = 3
        [True, True, True, False]
    """

    def __init__(self, config: Optional[BudgetConfig] = None, *, clock: Clock = SYSTEM_CLOCK, **options: Any) -> None:
        self.config: BudgetConfig = options_into(config or BudgetConfig(), options, "retry budget")
        self._clock = clock
        self._counts = BucketedCounts(window=self.config.window, width=self.config.bucket_width, fields=2, clock=clock)
        self._reserve = self.config.min_per_second * self.config.window

    def record_request(self, now: Optional[float] = None) -> None:
        """Count one first attempt of a logical request (``now``: the budget clock's time, if just read)."""
        self._counts.add(_REQUESTS, 1, now)

    def figures(self) -> BudgetFigures:
        """Requests and retries in the window, and how many retries it allows."""
        requests, retries = self._counts.totals()
        return BudgetFigures(requests=requests, retries=retries, allowed=self._reserve + self.config.ratio * requests)

    def can_retry(self) -> bool:
        """True when one more retry fits in the budget (spends nothing)."""
        f = self.figures()
        return f.retries + 1 <= f.allowed

    def try_spend(self) -> bool:
        """Spend one retry if the budget allows it; return whether it did."""
        if not self.can_retry():
            return False
        self._counts.add(_RETRIES)
        return True

    def __repr__(self) -> str:
        f = self.figures()
        return f"<RetryBudget requests={f.requests} retries={f.retries} allowed={f.allowed:g}>"
