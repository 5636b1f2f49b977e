"""Resource faults inside the process: memory pressure, CPU saturation, file-descriptor exhaustion.

Each is bounded, is a context manager (``with MemoryPressure(64):``), and
restores everything on exit (``stop()`` is idempotent). They are what a
:class:`~nexus_green.chaos.scenarios.ChaosScenario` step may hold besides
network faults.

* :class:`MemoryPressure` holds ``mb`` megabytes of touched memory (at most ``max_mb``).
* :class:`CpuSaturation` runs busy *native* threads for a duty cycle. The
  busy work is one PBKDF2 call per slice, which OpenSSL runs with the GIL
  released, so it takes a core from the process without holding the hub: a
  busy greenlet would itself be a hub stall, and a pure-Python busy thread
  would fight the hub for the GIL.
  The threads are real OS threads even after ``gevent.monkey.patch_all()``.
* :class:`FdExhaustion` lowers the soft ``RLIMIT_NOFILE`` to ``limit`` (by
  default the open descriptors plus ``headroom``), opens ``/dev/null`` until
  the limit is hit, and closes ``leave`` of them: the process runs with only
  ``leave`` descriptors to spare. Exit closes them and restores the limit.

Example::

    >>> with MemoryPressure(8) as mem:
    ...     mem.held_bytes
    8388608
    >>> mem.held_bytes
    0
"""

from __future__ import annotations

import hashlib
import mmap
import os
import resource
import time
from typing import Any, Optional

import gevent
from gevent import monkey

__all__ = ["ResourceFault", "MemoryPressure", "CpuSaturation", "FdExhaustion", "open_fds"]

_MB = 1024 * 1024


def open_fds() -> int:
    """How many file descriptors this process has open (``/proc/self/fd``).

    >>> open_fds() > 2
    True
    """
    return len(os.listdir("/proc/self/fd"))


class ResourceFault:
    """Base: ``start()`` takes the resource, ``stop()`` gives it back (idempotent); a ``with`` block does both.

    Example::

        >>> class Noop(ResourceFault):
        ...     def _start(self): pass
        ...     def _stop(self): pass
        >>> with Noop() as n:
        ...     n.active
        True
        >>> n.active
        False
    """

    active = False

    def start(self) -> ResourceFault:
        """Take the resource (no-op while active); returns self."""
        if not self.active:
            self._start()
            self.active = True
        return self

    def stop(self) -> None:
        """Give the resource back (no-op unless active)."""
        if self.active:
            self.active = False
            self._stop()

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> str:
        """One line for reports."""
        return type(self).__name__


class MemoryPressure(ResourceFault):
    """Hold ``mb`` megabytes, every page written so the memory is really resident; ``max_mb`` bounds it.

    Example::

        >>> MemoryPressure(4096)
        Traceback (most recent call last):
        ...
        ValueError: mb must be within 0..1024 (max_mb), got 4096
    """

    def __init__(self, mb: int, *, max_mb: int = 1024) -> None:
        if not 0 <= mb <= max_mb:
            raise ValueError(f"mb must be within 0..{max_mb} (max_mb), got {mb}")
        self.mb = mb
        # Anonymous mappings, not bytearrays: malloc may hand back memory the process
        # already holds (RSS would not grow), and may keep freed memory (RSS would not fall).
        self._blocks: list[mmap.mmap] = []

    @property
    def held_bytes(self) -> int:
        """Bytes held now."""
        return sum(len(b) for b in self._blocks)

    def _start(self) -> None:
        ones = b"\x01" * _MB
        for _ in range(self.mb):
            block = mmap.mmap(-1, _MB)
            block.write(ones)  # touch each page: a fresh mapping is not resident yet
            self._blocks.append(block)
            gevent.sleep(1e-6)  # a megabyte at a time: taking the memory must not hold the hub

    def _stop(self) -> None:
        blocks, self._blocks = self._blocks, []
        for block in blocks:
            block.close()  # munmap: the pages go back to the system at once

    def describe(self) -> str:
        """``memory pressure N MB``."""
        return f"memory pressure {self.mb} MB"


def _rounds_for(seconds: float) -> int:
    """PBKDF2-SHA256 rounds that take about ``seconds`` of CPU here (measured on 20 000 rounds)."""
    t0 = time.thread_time()
    hashlib.pbkdf2_hmac("sha256", b"nexus_green", b"chaos", 20_000)
    per_round = max(time.thread_time() - t0, 1e-6) / 20_000
    return max(1000, int(seconds / per_round))


class CpuSaturation(ResourceFault):
    """``threads`` native threads each busy ``duty`` of every ``period`` seconds, for at most ``max_seconds``.

    ``busy_seconds`` is the CPU time the threads burnt (from
    ``time.thread_time``), so a test can check the fault really ran.

    Example::

        >>> with CpuSaturation(duty=0.5, period=0.02) as cpu:
        ...     time.sleep(0.1)
        >>> cpu.busy_seconds > 0, cpu.threads_running
        (True, 0)
    """

    def __init__(self, *, duty: float = 0.8, period: float = 0.05, threads: int = 1, max_seconds: float = 60.0) -> None:
        if not 0.0 < duty <= 1.0 or period <= 0 or not 1 <= threads <= 8 or max_seconds <= 0:
            raise ValueError(
                f"need 0 < duty <= 1, period > 0, 1 <= threads <= 8, max_seconds > 0; got {duty}, {period}, {threads}"
            )
        self.duty = duty
        self.period = period
        self.threads = threads
        self.max_seconds = max_seconds
        self.busy_seconds = 0.0
        self.threads_running = 0
        self._stop_flag = False
        self._lock: Any = None
        self._done: list[Any] = []

    def _start(self) -> None:
        # Real OS threads and real sleeps even in a monkey-patched process.
        start_new_thread = monkey.get_original("_thread", "start_new_thread")
        allocate_lock = monkey.get_original("_thread", "allocate_lock")
        self._stop_flag = False
        self._lock = allocate_lock()
        self._done = []
        for _ in range(self.threads):
            done = allocate_lock()
            done.acquire()
            self._done.append(done)
            with self._lock:
                self.threads_running += 1
            start_new_thread(self._burn, (done,))

    def _burn(self, done: Any) -> None:
        sleep = monkey.get_original("time", "sleep")
        cpu0 = time.thread_time()
        end = time.monotonic() + self.max_seconds
        try:
            # One PBKDF2 call is one busy slice: OpenSSL runs it with the GIL released, so the
            # thread takes the GIL back only twice a period (after the slice and after the rest).
            # Many short hashes would take it back hundreds of times a second, and on a busy
            # machine each time is a chance for the hub's thread to wait for it.
            rounds = _rounds_for(self.period * self.duty)
            while not self._stop_flag and time.monotonic() < end:
                hashlib.pbkdf2_hmac("sha256", b"nexus_green", b"chaos", rounds)
                rest = self.period * (1.0 - self.duty)
                if rest > 0:
                    sleep(rest)
        finally:
            with self._lock:
                self.busy_seconds += time.thread_time() - cpu0
                self.threads_running -= 1
            done.release()

    def _stop(self) -> None:
        self._stop_flag = True
        # A thread finishes its current slice (duty x period) and sees the flag. Wait for it
        # cooperatively and with a bound: a blocking acquire here would hold the hub that long.
        deadline = time.monotonic() + 5.0
        for done in self._done:
            while not done.acquire(False) and time.monotonic() < deadline:
                gevent.sleep(0.005)
        self._done = []

    def describe(self) -> str:
        """``CPU saturation: T thread(s) busy D% of P ms``."""
        return f"CPU saturation: {self.threads} thread(s) busy {self.duty:.0%} of {self.period * 1000:g} ms"


class FdExhaustion(ResourceFault):
    """Leave the process only ``leave`` free file descriptors under a lowered soft limit (restored on exit).

    ``limit`` defaults to the descriptors open at start plus ``headroom``
    (never above the hard limit); ``max_open`` bounds how many descriptors
    it opens.

    Example::

        >>> before = open_fds()
        >>> with FdExhaustion(leave=4) as fds:
        ...     fds.opened > 0, open_fds() >= fds.limit - 4 - 1
        (True, True)
        >>> open_fds() == before
        True
    """

    def __init__(self, *, leave: int = 16, limit: Optional[int] = None, headroom: int = 256, max_open: int = 4096):
        if leave < 0 or headroom <= leave or max_open < 1:
            raise ValueError(
                f"need leave >= 0, headroom > leave and max_open >= 1; got {leave}, {headroom}, {max_open}"
            )
        self.leave = leave
        self.headroom = headroom
        self.max_open = max_open
        self.requested_limit = limit
        self.limit = 0
        self._saved: Optional[tuple[int, int]] = None
        self._fds: list[int] = []

    @property
    def opened(self) -> int:
        """Descriptors held now."""
        return len(self._fds)

    def _start(self) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        limit = self.requested_limit or open_fds() + self.headroom
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        self._saved = (soft, hard)
        self.limit = limit
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            while len(self._fds) < self.max_open:
                self._fds.append(os.open(os.devnull, os.O_RDONLY))
        except OSError:  # EMFILE: the limit is reached
            pass
        for _ in range(min(self.leave, len(self._fds))):
            os.close(self._fds.pop())

    def _stop(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self._saved is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, self._saved)
            self._saved = None

    def describe(self) -> str:
        """``fd exhaustion: L free under a limit of N``."""
        return f"fd exhaustion: {self.leave} free under a limit of {self.limit or 'open + ' + str(self.headroom)}"
