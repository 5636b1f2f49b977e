"""HubWatch: how long the gevent hub was held during a chaos run, told apart from the machine being busy.

The probe is the one of :class:`~nexus_green.monitoring.PerformanceMonitor`
(a greenlet sleeps ``interval``; oversleeping is lag), plus what the kernel
says about each probe (Linux ``/proc/self/task/*/schedstat``: time on a CPU,
time runnable but waiting for one). On a shared machine the OS may leave the
process waiting for a core for tens of milliseconds: the hub's thread itself,
or the thread that holds the GIL the hub's thread waits for (a busy
:class:`~nexus_green.chaos.resources.CpuSaturation` thread between two
hashes). The probe then oversleeps although nothing in the process held the
hub. A *stall* is the lag less the longest such run-queue wait, but never
less than the CPU time the hub's thread used in the probe: a greenlet that
never yields, a blocking call on the hub and a sleep in C all count in full.
``worst_lag`` is the raw figure. Where schedstat is missing, a stall is the
whole lag.

Example::

    >>> import gevent
    >>> with HubWatch(interval=0.005) as watch:
    ...     gevent.sleep(0.05)
    >>> watch.samples > 0, watch.worst_stall < 0.05
    (True, True)
"""

from __future__ import annotations

import os
import time
from typing import Optional

import gevent

from ..greenlets import spawn

__all__ = ["HubWatch", "run_queue_wait"]

_SCHEDSTAT = "/proc/thread-self/schedstat"
_TASKS = "/proc/self/task"


def _schedstat(path: str) -> Optional[tuple[float, float]]:
    try:
        with open(path, "rb") as f:
            fields = f.read().split()
        return int(fields[0]) / 1e9, int(fields[1]) / 1e9
    except (OSError, IndexError, ValueError):  # the thread ended, or a kernel without CONFIG_SCHED_INFO
        return None


def _waits() -> dict[str, float]:
    """Run-queue wait so far of every thread of the process, by thread id."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir(_TASKS)
    except OSError:  # pragma: no cover - Linux has /proc/self/task
        return out
    for tid in tids:
        stat = _schedstat(f"{_TASKS}/{tid}/schedstat")
        if stat is not None:
            out[tid] = stat[1]
    return out


def run_queue_wait() -> Optional[float]:
    """Seconds the calling thread has spent runnable but waiting for a CPU (None where the kernel does not say).

    >>> w = run_queue_wait()
    >>> w is None or w >= 0
    True
    """
    try:
        with open(_SCHEDSTAT, "rb") as f:
            return int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):  # pragma: no cover - a kernel without CONFIG_SCHED_INFO
        return None


class HubWatch:
    """Probe the hub every ``interval`` seconds from :meth:`start` to :meth:`stop` (or a ``with`` block).

    Figures: ``samples``, ``worst_lag`` (seconds the probe overslept, worst
    case), ``worst_stall`` (a lag less the thread's wait for a CPU, worst
    case) and when it ended (``worst_stall_at``, monotonic), and
    ``stalls_over(threshold)`` from the kept samples.

    Example::

        >>> watch = HubWatch(interval=0.005).start()
        >>> gevent.sleep(0.01); time.sleep(0.06)  # a blocking call on the hub: every greenlet waits
        >>> gevent.sleep(0.02); watch.stop()
        >>> watch.worst_stall >= 0.05, watch.stalls_over(0.05) >= 1
        (True, True)
    """

    def __init__(self, *, interval: float = 0.005, keep: int = 100_000) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be positive, got {interval!r}")
        self.interval = interval
        self.keep = keep
        self.samples = 0
        self.worst_lag = 0.0
        self.worst_stall = 0.0
        self.worst_stall_at = 0.0  # monotonic time when the worst stall ended
        self._stalls: list[float] = []
        self._greenlet: Optional[gevent.Greenlet] = None

    def start(self) -> HubWatch:
        """Start probing (idempotent); returns self."""
        if self._greenlet is None:
            self._greenlet = spawn(self._run, name="chaos.hubwatch")
        return self

    def stop(self) -> None:
        """Stop probing (idempotent); the figures stay."""
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None:
            greenlet.kill(block=True, timeout=1)

    def _run(self) -> None:
        interval = self.interval
        while True:
            t0, own0, all0 = time.monotonic(), _schedstat(_SCHEDSTAT), _waits()
            gevent.sleep(interval)
            lag = max(0.0, time.monotonic() - t0 - interval)
            own1, all1 = _schedstat(_SCHEDSTAT), _waits()
            waited = max((w - all0[tid] for tid, w in all1.items() if tid in all0), default=0.0)
            ran = own1[0] - own0[0] if own0 is not None and own1 is not None else lag
            stall = max(0.0, min(lag, ran), lag - waited)
            self.samples += 1
            self.worst_lag = max(self.worst_lag, lag)
            if stall > self.worst_stall:
                self.worst_stall, self.worst_stall_at = stall, time.monotonic()
            if stall > 0.001 and len(self._stalls) < self.keep:
                self._stalls.append(stall)

    def stalls_over(self, threshold: float) -> int:
        """How many probes saw a stall longer than ``threshold`` seconds."""
        return sum(1 for s in self._stalls if s > threshold)

    def __enter__(self) -> HubWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"<HubWatch samples={self.samples} worst_lag={self.worst_lag * 1000:.1f}ms "
            f"worst_stall={self.worst_stall * 1000:.1f}ms>"
        )
