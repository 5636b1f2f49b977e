"""Log hygiene (layer L0): a warning that repeats is logged once per interval, with a count.

This module owns :class:`RepeatedLog`. A background loop that fails the same
way every second (a StatsD host that does not resolve, a gauge whose function
raises, a collector that breaks) would otherwise write one line per attempt
and bury everything else. Each distinct ``key`` is logged the first time it
happens; repeats within ``interval`` seconds are counted, not written; the
first repeat after the interval is written with how many were held back::

    statsd: cannot use statsd.invalid:8125 (no such host); will retry (repeated 59 times in the last 60s)

Memory is bounded: at most ``max_keys`` keys are remembered (the oldest is
forgotten first). Time comes from an injected :class:`~nexus_green.clock.Clock`.

Example::

    >>> import logging
    >>> from nexus_green.clock import FakeClock
    >>> clock = FakeClock()
    >>> seen = []
    >>> class Catch(logging.Handler):
    ...     def emit(self, record): seen.append(record.getMessage())
    >>> logger = logging.getLogger("doctest.logs"); logger.addHandler(Catch()); logger.propagate = False
    >>> rlog = RepeatedLog(logger, interval=60, clock=clock)
    >>> for _ in range(5):
    ...     _ = rlog.warning("dns", "cannot resolve %s", "statsd.invalid")
    ...     clock.advance(1)
    >>> clock.advance(60); rlog.warning("dns", "cannot resolve %s", "statsd.invalid")
    True
    >>> seen
    ['cannot resolve statsd.invalid', 'cannot resolve statsd.invalid (repeated 4 times in the last 65s)']
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import Any

from .clock import SYSTEM_CLOCK, Clock

__all__ = ["RepeatedLog"]


class RepeatedLog:
    """Log each ``key`` at most once per ``interval`` seconds (default 60), counting the repeats held back.

    ``warning``, ``error`` and ``exception`` take a ``key`` (what makes two
    messages "the same warning") and then the usual ``msg, *args``.
    :meth:`suppressed` tells how many repeats of a key wait to be reported.
    """

    def __init__(
        self, logger: logging.Logger, *, interval: float = 60.0, clock: Clock = SYSTEM_CLOCK, max_keys: int = 256
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.clock = clock
        self.max_keys = max_keys
        # key -> [time of the last line written, repeats held back since]
        self._seen: OrderedDict[Any, list[float]] = OrderedDict()

    def suppressed(self, key: Any) -> int:
        """Repeats of ``key`` held back since its last line (0 for an unknown key)."""
        entry = self._seen.get(key)
        return int(entry[1]) if entry is not None else 0

    def log(self, level: int, key: Any, msg: str, *args: Any, exc_info: Any = None) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged less than ``interval`` ago; True if written."""
        now = self.clock.now()
        entry = self._seen.get(key)
        if entry is not None and now - entry[0] < self.interval:
            entry[1] += 1
            return False
        if entry is not None and entry[1]:
            msg = f"{msg} (repeated {int(entry[1])} times in the last {now - entry[0]:.0f}s)"
        self._seen[key] = [now, 0]
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, key: Any, msg: str, *args: Any) -> bool:
        """A rate-limited ``logger.warning``."""
        return self.log(logging.WARNING, key, msg, *args)

    def error(self, key: Any, msg: str, *args: Any) -> bool:
        """A rate-limited ``logger.error``."""
        return self.log(logging.ERROR, key, msg, *args)

    def exception(self, key: Any, msg: str, *args: Any) -> bool:
        """A rate-limited ``logger.exception`` (call it from an ``except`` block)."""
        return self.log(logging.ERROR, key, msg, *args, exc_info=True)

    def __repr__(self) -> str:
        return f"<RepeatedLog {self.logger.name} interval={self.interval:g}s keys={len(self._seen)}>"
